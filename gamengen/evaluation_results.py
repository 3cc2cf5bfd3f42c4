"""The results of an evaluation (evaluate.py), what metrics.json and report.md are written from.

A ``Window`` is one teacher-forced target; a ``PassSummary`` the mean scores of one pass over the windows,
overall and per kind of action; ``TeacherForced`` one model's predictions of every window; a ``DriftCurve``
the scores of autoregressive rollouts per step; ``ModelResult`` everything measured of one checkpoint,
``CopyLastBaseline`` the baseline that predicts no change, and ``Evaluation`` the whole run. Every
``to_dict`` is part of metrics.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np

from gamengen.actions import MOTION_KINDS
from gamengen.episodes import EpisodeDataset
from gamengen.scores import FrameScores, LpipsStatus, Scores, without_none

# docs/evaluation.md#reference-numbers-the-paper: what the paper reports (SD v1.4 at 320x240, context 64, 4 DDIM steps,
# TPU-v5).
PAPER = {
    "teacher_forced_psnr": 29.43,
    "teacher_forced_lpips": 0.249,
    "fps": 20.0,
    "drift_psnr_after_3s": 19.02,
    "note": "SD v1.4 at 320x240, context 64, agent data, 4 DDIM steps on a TPU-v5; drift: PSNR after 3 s of "
    "autoregressive play",
}
CATEGORIES = MOTION_KINDS  # what gamengen.actions.motion_kind tells apart


@dataclass
class Window:
    """Predict frame ``step`` of episode ``episode`` (an index) from the frames and actions before it."""

    episode: int
    episode_id: str
    step: int
    action: int  # action step - 1: the one that produced the target
    action_name: str
    category: str


@dataclass
class PassSummary:
    """One pass over the teacher-forced windows (the model, shuffled actions, copy-last, VAE
    reconstruction): the means over all windows and over the windows of each action category."""

    overall: Scores
    by_category: dict[str, Scores]
    windows_by_category: dict[str, int]

    @classmethod
    def of(cls, per_window: FrameScores, windows: list[Window]) -> PassSummary:
        by_category, counts = {}, {}
        for category in CATEGORIES:
            chosen = [i for i, w in enumerate(windows) if w.category == category]
            if chosen:
                by_category[category], counts[category] = per_window.subset(chosen).mean(), len(chosen)
        return cls(per_window.mean(), by_category, counts)

    def category_value(self, category: str, metric: str) -> float | None:
        return getattr(self.by_category[category], metric) if category in self.by_category else None

    def to_dict(self) -> dict[str, Any]:
        by_category = {c: {"windows": self.windows_by_category[c], **s.to_dict()} for c, s in self.by_category.items()}
        return {**self.overall.to_dict(), "by_category": by_category}


@dataclass
class TeacherForced:
    """One model's teacher-forced predictions of every window, with true and shuffled actions, and the
    VAE reconstructions of the targets: the scores per window and the frames (for examples.png)."""

    model: FrameScores
    shuffled_actions: FrameScores
    vae_reconstruction: FrameScores
    predictions: np.ndarray  # (windows, H, W, 3) uint8, true actions
    shuffled_predictions: np.ndarray  # the same windows with another window's actions
    last_context: np.ndarray  # the real frame before each target (the start of each window's transition)
    truth: np.ndarray  # the real target frames


@dataclass
class DriftCurve:
    """Autoregressive rollouts from step ``start_step`` of each episode: the mean scores of every step
    over the rollouts that are that long (``count`` of them)."""

    start_step: int
    episodes: int
    steps: list[Scores] = field(default_factory=list)
    count: list[int] | None = None
    # generated frame t -> generated frame t+1 and the action between them (for the IDM; not written out)
    transitions: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def curve(self, metric: str) -> list[float]:
        values = [getattr(step, metric) for step in self.steps]
        return [] if any(v is None for v in values) else values

    def to_dict(self) -> dict[str, Any]:
        curves = {f.name: self.curve(f.name) for f in fields(Scores)}
        always = ("psnr", "ssim", "gmsd", "sharpness")  # the optional perceptual curve only when measured
        curves = {name: values for name, values in curves.items() if values or name in always}
        return without_none({"start_step": self.start_step, "episodes": self.episodes, "count": self.count, **curves})


@dataclass
class Timing:
    """Speed of a batch-1 rollout (how the game is played), from ``GameEngine.timing_summary``."""

    fps: float | None = None
    unet_ms: float | None = None
    decode_ms: float | None = None
    total_ms: float | None = None
    frames: float | None = None

    def to_dict(self) -> dict[str, float]:
        return without_none(asdict(self))


@dataclass
class CopyLastBaseline:
    """The last context frame repeated: teacher-forced, and for every step of the drift rollouts."""

    teacher_forced: PassSummary
    drift: DriftCurve

    def to_dict(self) -> dict[str, Any]:
        return {"teacher_forced": self.teacher_forced.to_dict(), "drift": self.drift.to_dict()}


@dataclass
class ModelResult:
    """Everything measured of one checkpoint on the evaluation's windows and episodes."""

    name: str
    model_folder: str
    engine: dict[str, Any]  # the sampling settings (GameEngine.describe)
    config: dict[str, Any]  # the checkpoint's world-model settings that shape its quality
    training_dataset: dict[str, Any]
    forced: TeacherForced
    teacher_forced: PassSummary
    shuffled_actions: PassSummary
    vae_reconstruction: PassSummary
    drift: DriftCurve
    drift_steps_above_copy_last: int  # from the first frame on, until the first frame that is not
    drift_frames_above_copy_last: int  # in all
    timing: Timing
    seconds: float
    # Action following measured by an inverse-dynamics model (gamengen/idm.py), one block per pass
    # (real transitions, teacher-forced, drift, shuffled actions); None until an IDM is given.
    action_following: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        values = {
            "name": self.name,
            "model_folder": self.model_folder,
            "engine": self.engine,
            "config": self.config,
            "training_dataset": self.training_dataset,
            "teacher_forced": self.teacher_forced.to_dict(),
            "shuffled_actions": self.shuffled_actions.to_dict(),
            "vae_reconstruction": self.vae_reconstruction.to_dict(),
            "per_window": {
                "model": self.forced.model.to_dict(),
                "shuffled_actions": self.forced.shuffled_actions.to_dict(),
            },
            "drift": self.drift.to_dict(),
            "drift_steps_above_copy_last": self.drift_steps_above_copy_last,
            "drift_frames_above_copy_last": self.drift_frames_above_copy_last,
            "timing": self.timing.to_dict(),
            "seconds": self.seconds,
        }
        if self.action_following is not None:
            values["action_following"] = {
                name: asdict(block) if is_dataclass(block) else block for name, block in self.action_following.items()
            }
        return values


@dataclass
class Evaluation:
    """One run of evaluate.py: the settings, the windows and episodes, the baselines and every model.
    ``to_dict`` is the content of metrics.json."""

    settings: dict[str, Any]
    dataset: dict[str, Any]  # name, episodes_total, and the provenance recorded in its shards
    episodes: list[str]
    episode_source: str
    windows: list[Window]
    shuffled_from: list[int]
    lpips: LpipsStatus
    copy_last: CopyLastBaseline
    models: list[ModelResult]
    seconds: float
    paper: dict[str, Any] = field(default_factory=lambda: dict(PAPER))

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "dataset": self.dataset,
            "episodes": self.episodes,
            "episode_source": self.episode_source,
            "windows": [
                {"episode_id": w.episode_id, "step": w.step, "action": w.action_name, "category": w.category}
                for w in self.windows
            ],
            "shuffled_from": self.shuffled_from,
            "lpips": self.lpips.to_dict(),
            "paper": self.paper,
            "baselines": {"copy_last": self.copy_last.to_dict()},
            "models": [model.to_dict() for model in self.models],
            "seconds": self.seconds,
        }


def dataset_record(name: str, dataset: EpisodeDataset) -> dict[str, Any]:
    """metrics.json's ``dataset``: its name, its number of episodes, and what its shards record about how they
    were made (the policy, the generator, the game settings), less the full environment config (``metadata``)."""
    provenance = {k: v for k, v in (dataset.metadata or {}).items() if k != "env_config"}
    return {"name": name, "episodes_total": len(dataset.episode_ids), "metadata": provenance}
