"""Where a human-study clip or a ``WorldModelEnv`` episode starts: a recorded frame of a held-out episode.

A start is ``(episode, step)``: the model's context is the recorded frames ``step - N .. step - 1`` (N = the
model's context length) with their actions, and the first frame the model generates is ``step``. The real game
at the same start is the recorded frames ``step, step + 1, ...``. Both the study (docs/human_study.md) and the
environment (docs/world_model_env.md) start from the episodes the trainer held out (recorded in the checkpoint),
so the model has never seen the frames it is compared with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gamengen.config import WorldModelConfig
from gamengen.context import find_episode
from gamengen.episodes import EpisodeDataset
from gamengen.layout import DatasetError
from gamengen.media import realtime_fps

DEFAULT_FRAME_SKIP = 4  # the paper's and the recorder's, for datasets that do not say


@dataclass(frozen=True)
class RecordedStart:
    """A start in a recorded episode: the context ends at ``step - 1``; the first generated frame is ``step``."""

    episode: int  # index into dataset.episodes
    episode_id: str
    step: int


def heldout_episodes(
    dataset: EpisodeDataset, config: WorldModelConfig, episodes: Sequence[int | str] | None = None
) -> tuple[list[int], str]:
    """(episode indices, where they come from): ``episodes`` when given (indices or ids), else the episodes the
    checkpoint's trainer held out that are in ``dataset``, else every episode (with a note saying so)."""
    if episodes:
        return list(dict.fromkeys(find_episode(dataset, e) for e in episodes)), "chosen explicitly"
    ids = dataset.episode_ids
    heldout = [e for e in config.dataset.get("heldout_episodes", []) if e in set(ids)]
    if heldout:
        return [ids.index(e) for e in heldout], "held out by the trainer (never trained on)"
    return list(range(len(ids))), (
        "ALL episodes of the dataset: the checkpoint records no held-out episode of it, so the model may have "
        "trained on some of these frames"
    )


def start_candidates(
    dataset: EpisodeDataset, episodes: Sequence[int], context_length: int, frames_after: int
) -> list[RecordedStart]:
    """Every start of ``episodes`` with a full context (``step >= context_length``) and ``frames_after``
    recorded frames from ``step`` on (``step + frames_after <= episode length``)."""
    starts = []
    for episode in episodes:
        length = dataset.episodes[episode].length
        episode_id = dataset.episode_ids[episode]
        starts += [
            RecordedStart(episode, episode_id, step) for step in range(context_length, length - frames_after + 1)
        ]
    return starts


def require_room(
    dataset: EpisodeDataset,
    episodes: Sequence[int],
    context_length: int,
    frames_after: int,
    what: str,
    fix: str,
) -> list[RecordedStart]:
    """``start_candidates``, or a DatasetError naming the longest episode and ``fix`` when there is none."""
    starts = start_candidates(dataset, episodes, context_length, frames_after)
    if not starts:
        longest = max(dataset.episodes[e].length for e in episodes) if episodes else 0
        raise DatasetError(
            f"{what} is {frames_after} frames: after the model's {context_length}-frame context it needs an episode "
            f"of at least {context_length + frames_after} steps, but the longest of the {len(episodes)} episodes "
            f"used has {longest}. {fix}"
        )
    return starts


def dataset_fps(dataset: EpisodeDataset) -> tuple[float, int]:
    """(frames/s at the game's own speed, frame skip) of a dataset: 35 tics/s over its recorded frame skip."""
    frame_skip = int((dataset.metadata or {}).get("frame_skip") or DEFAULT_FRAME_SKIP)
    return realtime_fps(frame_skip), frame_skip
