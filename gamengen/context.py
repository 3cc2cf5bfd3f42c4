"""Recorded episodes as the engine's context: which episode, which frames, which actions.

To predict frame ``t`` of a recorded episode the engine is reset with frames ``t-k .. t-1`` and the
actions ``t-k .. t-2``, then stepped with action ``t-1`` (the window semantics of docs/engine.md).
``check_dataset_fits_model`` refuses a dataset a checkpoint cannot continue before any frame is read.
"""

from __future__ import annotations

import numpy as np

from gamengen.config import WorldModelConfig
from gamengen.episodes import EpisodeDataset
from gamengen.layout import DatasetError
from gamengen.windows import check_action_ids, check_frame_size


def check_dataset_fits_model(dataset: EpisodeDataset, config: WorldModelConfig) -> None:
    """Refuse a dataset the checkpoint cannot continue: another frame size, or another action list
    (by name when the dataset has names, else by the range of its action ids)."""
    try:
        check_frame_size(dataset, config.model)
    except DatasetError as error:
        model = config.model
        trained_size = f"{model.frame_width}x{model.frame_height}"
        raise DatasetError(f"{error} (the checkpoint was trained on {trained_size} frames)") from None
    names = dataset.action_names
    if names is not None and list(names) != list(config.action_names):
        raise DatasetError(
            f"the dataset's actions ({', '.join(names)}) are not the checkpoint's ({', '.join(config.action_names)}): "
            "use a dataset recorded with the action set the model was trained on"
        )
    episode_actions = [dataset.actions(i) for i in range(len(dataset.episodes))]
    fixed = f"train a model with more actions: this checkpoint's {config.num_actions} are fixed"
    check_action_ids(dataset.episode_ids, episode_actions, config.num_actions, config.action_names, too_few_fix=fixed)


def find_episode(dataset: EpisodeDataset, episode: int | str) -> int:
    """An episode given by index into ``dataset.episodes`` or by id -> its index."""
    ids = dataset.episode_ids
    if isinstance(episode, str) and not episode.lstrip("-").isdigit():
        if episode not in ids:
            raise DatasetError(
                f"episode {episode!r} is not in the dataset ({len(ids)} episodes, e.g. {', '.join(ids[:3])})"
            )
        return ids.index(episode)
    index = int(episode)
    if not 0 <= index < len(ids):
        raise DatasetError(
            f"episode index {index} is out of range: the dataset has {len(ids)} episodes (0..{len(ids) - 1})"
        )
    return index


def episode_frames(dataset: EpisodeDataset, episode: int, start: int, stop: int) -> np.ndarray:
    """Frames ``start .. stop - 1`` of an episode as uint8 ``(stop - start, H, W, 3)``."""
    first = dataset.row_index(episode, 0)
    return np.stack([dataset.frame(first + step) for step in range(start, stop)])


def episode_context(
    dataset: EpisodeDataset, episode: int, target_step: int, context_length: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """What the engine needs to predict frame ``target_step`` of a recorded episode:
    ``(frames, actions, next_action)`` for ``engine.reset(frames, actions)`` then ``engine.step(next_action)``.

    frames ``t-k .. t-1`` with ``k = min(N, t)``, the actions ``t-k .. t-2`` and action ``t-1``.
    """
    length = dataset.episodes[episode].length
    if not 1 <= target_step < length:
        raise DatasetError(
            f"episode {dataset.episode_ids[episode]!r} has {length} steps: "
            f"the target step must be in 1..{length - 1} (step 0 has no frame before it)"
        )
    first = max(0, target_step - context_length)
    actions = dataset.actions(episode)
    frames = episode_frames(dataset, episode, first, target_step)
    return frames, np.asarray(actions[first : target_step - 1]), int(actions[target_step - 1])
