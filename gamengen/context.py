"""The ONE place a model's context is assembled, for training windows (``gamengen.windows``) and the engine alike:
which frames and actions precede a target (``context_start``), how a short context is padded (``pad_context``),
where a rollout of a recorded episode starts by default (``default_start_step``), and the checks that a dataset
fits a model (frame size, action ids) before any frame is read.

To predict frame ``t`` of a recorded episode the engine is reset with frames ``t-k .. t-1`` and the
actions ``t-k .. t-2``, then stepped with action ``t-1`` (the window semantics of docs/engine.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gamengen.config import ModelConfig, WorldModelConfig
from gamengen.episodes import EpisodeDataset
from gamengen.errors import EngineError
from gamengen.layout import DatasetError

# Action id of padded context slots (NOOP in this project's action set).
PAD_ACTION = 0


def pad_context(
    context: torch.Tensor, actions: torch.Tensor, context_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's context from the real frames (or latents) ``(k, ...)`` before a target, oldest first,
    and their actions ``(k,)``.

    Returns ``(context (N, ...), actions (N,) int64, mask (N,) bool)`` with ``N = context_length``:
    with ``k < N`` the first ``N - k`` slots are padding (copies of ``context[0]``, action
    ``PAD_ACTION``, mask False); with ``k > N`` only the last N are kept. Training and inference
    both pad through this function.
    """
    if context.shape[0] != actions.shape[0]:
        raise ValueError(
            f"{context.shape[0]} context frames but {actions.shape[0]} actions: "
            "each context frame comes with the action taken at it"
        )
    if context.shape[0] < 1:
        raise ValueError("the context needs at least one real frame (an episode's first frame): padding repeats it")
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}")
    context, actions = context[-context_length:], torch.as_tensor(actions[-context_length:]).to(torch.int64)
    missing = context_length - context.shape[0]
    mask = torch.ones(context_length, dtype=torch.bool)
    if missing:
        mask[:missing] = False
        context = torch.cat([context[:1].expand(missing, *context.shape[1:]), context])
        actions = torch.cat([torch.full((missing,), PAD_ACTION, dtype=torch.int64), actions])
    return context, actions, mask


def check_frame_size(dataset: EpisodeDataset, config: ModelConfig) -> None:
    """Refuse a dataset whose frames are not the preset's frame size (before any frame is encoded)."""
    if (dataset.frame_width, dataset.frame_height) != (config.frame_width, config.frame_height):
        raise DatasetError(
            f"the dataset's frames are {dataset.frame_width}x{dataset.frame_height}, "
            f"the {config.preset!r} preset expects {config.frame_width}x{config.frame_height}: "
            f"record with --frame_size {config.frame_width}x{config.frame_height} or pick the matching --preset"
        )


def check_action_ids(
    episode_ids: Sequence[str],
    actions: Sequence[np.ndarray],
    num_actions: int | None = None,
    action_names: Sequence[str] | None = None,
    too_few_fix: str | None = None,
) -> int:
    """The number of actions (``num_actions``, else ``len(action_names)``), after checking that every
    action id of every episode is in ``0 .. num_actions - 1`` (the rows of the action embedding).

    ``too_few_fix`` is what the caller's user can do about an id beyond ``num_actions`` (the option of the
    script that asks, or that the model's action count is fixed); by default, the library argument."""
    largest = max((int(a.max()) for a in actions if len(a)), default=0)
    if num_actions is None:
        if not action_names:
            raise DatasetError(
                "the dataset has no action_names metadata, so the number of actions is unknown: "
                f"{too_few_fix or 'pass num_actions'} (its largest action id is {largest}, so at least {largest + 1})"
            )
        num_actions = len(action_names)
    if num_actions < 1:
        raise DatasetError(f"num_actions must be >= 1, got {num_actions}")
    for episode_id, episode_actions in zip(episode_ids, actions, strict=True):
        bad = np.flatnonzero((episode_actions < 0) | (episode_actions >= num_actions))
        if bad.size:
            step, value = int(bad[0]), int(episode_actions[bad[0]])
            names = f": {', '.join(action_names)}" if action_names and len(action_names) <= 32 else ""
            if value < 0:
                fix = (
                    "action ids are indices into the action list and cannot be negative: "
                    "fix the dataset's action column"
                )
            else:
                more = too_few_fix or f"give the model more actions (num_actions >= {largest + 1})"
                fix = (
                    f"record the dataset with the model's action set, or, if the ids are right, {more} "
                    f"(the dataset's largest id is {largest})"
                )
            raise DatasetError(
                f"episode {episode_id!r} step {step} has action id {value}, "
                f"but there are {num_actions} actions (ids 0..{num_actions - 1}{names}): {fix}"
            )
    return int(num_actions)


def context_start(target_step: int, context_length: int) -> int:
    """The first real context frame before ``target_step``: ``max(0, t - N)`` (a window never leaves its
    episode; what is missing near the start is padded by ``pad_context``)."""
    return max(0, target_step - context_length)


def default_start_step(context_length: int, episode_length: int) -> int:
    """Where a rollout of a recorded episode starts when no step is given: after a full context where the
    episode has one, else at its last frame."""
    return min(context_length, episode_length - 1)


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
    first = context_start(target_step, context_length)
    actions = dataset.actions(episode)
    frames = episode_frames(dataset, episode, first, target_step)
    return frames, np.asarray(actions[first : target_step - 1]), int(actions[target_step - 1])


def context_input(
    frames: np.ndarray | torch.Tensor | None,
    latents: torch.Tensor | None,
    frame_size: tuple[int, int],
    latent_shape: tuple[int, int, int],
) -> torch.Tensor:
    """A context given to the engine as uint8 frames ``(k, H, W, 3)`` at ``frame_size`` (width, height) or as latents
    ``(k, C, h, w)`` (either with a leading batch axis), checked, as a tensor."""
    if (frames is None) == (latents is None):
        raise EngineError("reset takes the context as frames (uint8 HxWx3) or as latents, exactly one of them")
    if frames is None:
        context = torch.as_tensor(latents)
        if context.ndim not in (4, 5) or tuple(context.shape[-3:]) != tuple(latent_shape):
            raise EngineError(
                "context latents must be (k, C, h, w) or (B, k, C, h, w) with C, h, w = "
                f"{latent_shape}, got {tuple(context.shape)}"
            )
        return context
    context = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if context.dtype != torch.uint8 or context.ndim not in (4, 5) or context.shape[-1] != 3:
        raise EngineError(
            f"context frames must be uint8 (k, H, W, 3) or (B, k, H, W, 3), got {tuple(context.shape)} {context.dtype}"
        )
    height, width = context.shape[-3:-1]
    if (width, height) != tuple(frame_size):
        raise EngineError(
            f"context frames are {width}x{height}, the checkpoint's frames are {frame_size[0]}x{frame_size[1]}"
        )
    return context
