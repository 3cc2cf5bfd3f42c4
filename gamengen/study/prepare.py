"""Generate a study's clip pairs (the first run of ``run_human_study.py``, docs/human_study.md#preparing-the-clips).

``plan_study`` checks the request before any frame is generated (a new folder, the model's own frames, episodes
long enough for every clip length) and draws the starts; ``prepare_study`` generates each pair, the real clip from
the dataset and the generated one through the engine (``GameEngine``, batched by length), and writes the study
folder of ``gamengen.study.clips`` atomically.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gamengen.context import episode_context, episode_frames
from gamengen.engine import GameEngine
from gamengen.episodes import EpisodeDataset
from gamengen.files import atomic_path, write_json_atomic
from gamengen.starts import RecordedStart, dataset_fps, heldout_episodes, require_room
from gamengen.study.clips import CLIPS_FOLDER, PAPER_LENGTHS, STUDY_FILE, Clip, Study, StudyError, frames_for


def check_new_study_dir(study_dir: Path) -> None:
    """Refuse to prepare over a study (its answers belong to its clips) or into an unrelated folder."""
    if (study_dir / STUDY_FILE).exists():
        raise StudyError(
            f"{study_dir} already holds a study: its answers belong to its clips, so it is never replaced. Choose "
            "another --study_dir (or resume this one: python run_human_study.py --study_dir ...)"
        )
    if study_dir.exists() and (not study_dir.is_dir() or any(study_dir.iterdir())):
        raise StudyError(f"{study_dir} exists and is not an empty folder: choose a new --study_dir")


def choose_starts(
    dataset: EpisodeDataset,
    episodes: Sequence[int],
    context_length: int,
    frames: int,
    count: int,
    seconds: float,
    rng: np.random.Generator,
) -> list[RecordedStart]:
    """``count`` distinct random starts with room for a clip of ``frames`` frames (all there are when fewer)."""
    fix = (
        "Record longer episodes (load_model_generate_dataset.py --max_steps_per_episode), use a dataset with "
        "longer held-out episodes, or pass shorter --lengths."
    )
    starts = require_room(dataset, episodes, context_length, frames, f"a {seconds:g} s clip", fix)
    if len(starts) < count:
        print(f"note: only {len(starts)} distinct starts have room for a {seconds:g} s clip: using all of them")
    picks = np.sort(rng.choice(len(starts), size=min(count, len(starts)), replace=False))
    return [starts[i] for i in picks]


def strip_image(frames: np.ndarray) -> Image.Image:
    """Frames ``(T, H, W, 3)`` as one image, stacked top to bottom (the page draws one band at a time)."""
    return Image.fromarray(np.ascontiguousarray(frames.reshape(-1, *frames.shape[2:])))


def generate_pair(
    engine: GameEngine, dataset: EpisodeDataset, starts: Sequence[RecordedStart], frames: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(real, generated) clips ``(B, frames, H, W, 3)`` of a batch of starts, generated in one engine batch."""
    contexts = [episode_context(dataset, s.episode, s.step, engine.context_length) for s in starts]
    engine.reset(np.stack([c[0] for c in contexts]), np.stack([c[1] for c in contexts]), seed=seed)
    recorded = [dataset.actions(s.episode) for s in starts]
    generated = [
        engine.step([int(a[s.step - 1 + t]) for a, s in zip(recorded, starts, strict=True)]) for t in range(frames)
    ]
    real = np.stack([episode_frames(dataset, s.episode, s.step, s.step + frames) for s in starts])
    return real, np.stack(generated, axis=1)


@dataclass
class StudyPlan:
    """What ``prepare_study`` will generate: per clip length, the starts (checked before any frame is made)."""

    study_dir: Path
    fps: float
    episodes_source: str
    lengths: list[tuple[float, int, list[RecordedStart]]]  # (seconds, frames, starts)

    @property
    def pairs(self) -> int:
        return sum(len(starts) for _, _, starts in self.lengths)


def plan_study(
    engine: GameEngine,
    dataset: EpisodeDataset,
    study_dir: str | Path,
    lengths: Sequence[float] = PAPER_LENGTHS,
    clips_per_length: int = 20,
    episodes: Sequence[int | str] | None = None,
    seed: int = 0,
) -> StudyPlan:
    """Check the request (a new folder, the model's own frames, room in the episodes) and choose the starts."""
    study_dir = Path(study_dir)
    check_new_study_dir(study_dir)
    if engine.carry_detail:
        raise StudyError("the generated clips must be the model's own frames: build the engine without carry_detail")
    if not lengths:
        raise StudyError("give at least one clip length (--lengths 1.6,3.2: the paper's)")
    if clips_per_length < 1:
        raise StudyError("--clips_per_length must be at least 1")
    fps, _ = dataset_fps(dataset)
    chosen, source = heldout_episodes(dataset, engine.config, episodes)
    rng = np.random.default_rng(seed)
    plan = []
    for seconds in lengths:
        if not seconds > 0:
            raise StudyError(f"clip lengths are seconds > 0, got {seconds}")
        frames = frames_for(seconds, fps)
        starts = choose_starts(dataset, chosen, engine.context_length, frames, clips_per_length, seconds, rng)
        plan.append((float(seconds), frames, starts))
    return StudyPlan(study_dir, fps, source, plan)


def prepare_study(
    engine: GameEngine,
    dataset: EpisodeDataset,
    plan: StudyPlan,
    seed: int = 0,
    batch_size: int = 8,
    provenance: dict[str, Any] | None = None,
    progress: Callable[[int], Any] | None = None,
) -> Study:
    """Generate every clip pair of ``plan`` and write the study folder (see the module docstring)."""
    if batch_size < 1:
        raise StudyError("--batch_size must be at least 1")
    check_new_study_dir(plan.study_dir)
    clips: list[Clip] = []
    with atomic_path(plan.study_dir) as staging:
        (staging / CLIPS_FOLDER).mkdir(parents=True)
        for seconds, frames, starts in plan.lengths:
            for first in range(0, len(starts), batch_size):
                batch = starts[first : first + batch_size]
                ids = [f"c{len(clips) + i:03d}" for i in range(len(batch))]
                batch_seed = seed * 100_003 + len(clips)
                real, generated = generate_pair(engine, dataset, batch, frames, batch_seed)
                for index, start in enumerate(batch):
                    taken = dataset.actions(start.episode)[start.step - 1 : start.step - 1 + frames]
                    names = [engine.action_names[int(a)] for a in taken]
                    clip = Clip(ids[index], seconds, frames, start.episode_id, start.step, names, batch_seed, ids)
                    strip_image(real[index]).save(staging / clip.image("real"))
                    strip_image(generated[index]).save(staging / clip.image("model"))
                    clips.append(clip)
                if progress is not None:
                    progress(len(batch))
        width, height = engine.frame_size
        created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        study = Study(
            clips,
            plan.fps,
            width,
            height,
            seed,
            episodes_source=plan.episodes_source,
            engine=engine.describe(),
            created=created,
            **(provenance or {}),
        )
        write_json_atomic(staging / STUDY_FILE, study.to_dict())
    return study
