"""Evaluate world-model checkpoints on held-out episodes: the paper's metrics, drift curves and baselines.

GameNGen section 5 measures a world model by (1) teacher-forced next-frame quality: the model sees
the REAL frames and actions ``t-N .. t-1`` and predicts frame ``t`` (PSNR 29.43, LPIPS 0.249 in the
paper), and (2) drift: the model plays ``H`` frames autoregressively from a real start, fed the
recorded actions, and the quality of each frame is measured against what the game really showed.

This script measures both with the engine (``gamengen/engine.py``: the checkpoint's sampling, or the
options below) on the held-out episodes the trainer recorded in the checkpoint, beside baselines on
the SAME windows:

- copy-last: the last context frame repeated (a model that predicts no change; for drift, the last
  frame of the real start repeated for every step). A useful model beats it;
- shuffled actions: the same model and noise, fed the action sequences of other windows (a
  derangement: no window keeps its own). The gap to the true actions is how much the model listens
  to the actions; it is reported by the kind of action that produced the target (turning, moving,
  still, other), since pressing nothing or firing changes little of the frame;
- VAE reconstruction: the target encoded and decoded by the checkpoint's autoencoder, the best any
  latent model with this VAE can do.

Every pass is scored with PSNR and SSIM (the paper's), and with two measures blur cannot fool
(``gamengen/metrics.py``): sharpness, the gradient energy of the generated 3D view over that of the
real frames at the same steps (1 = as sharp as the game; a model hedging between futures draws a
blur that PSNR rewards and sharpness exposes), and GMSD (gradient magnitude similarity deviation,
lower is better), which penalises missing and misplaced edges. LPIPS is added when the ``lpips``
package and its AlexNet weights are on the machine (on the evaluation's device); otherwise the
report says why it was not computed. ``--lpips_random_backbone`` puts an untrained network's
distance in its place to test the plumbing offline: reported as ``random_backbone_distance``, never
as LPIPS.

Outputs in ``--output_dir``: ``metrics.json`` (every number, the settings, the windows, the
checkpoints' and the dataset's provenance), ``report.md`` (paper | models | baselines), ``drift.png``
and ``examples.png`` (truth | prediction strips). ``--compare M2 M3 ...`` evaluates more checkpoints
on the same windows, with the same sampling, into one table and one drift plot: how ablations
(noise augmentation on/off, context length, sampling steps, data) are shown.

Example (the tiny checkpoint of the README's quickstart):

    python evaluate.py --model_folder /tmp/wm --dataset_name /tmp/ds --output_dir /tmp/eval
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from gamengen.checkpoint import read_world_model_config
from gamengen.cli import add_engine_arguments, engine_from_args
from gamengen.config import WorldModelConfig
from gamengen.context import check_dataset_fits_model, episode_context, episode_frames, find_episode
from gamengen.devices import default_device
from gamengen.engine import EngineError, GameEngine
from gamengen.episodes import EpisodeDataset, open_dataset
from gamengen.files import atomic_path, write_bytes_atomic, write_json_atomic
from gamengen.help_format import HelpFormatter
from gamengen.idm import IDM, IDMError, action_following, load_idm
from gamengen.layout import DatasetError, columns_from_args
from gamengen.media import captioned_row, display_scale
from gamengen.metrics import (
    LpipsMetric,
    gmsd,
    gradient_energy,
    load_lpips,
    psnr,
    random_backbone_distance,
    ssim,
    status_bar_rows,
)
from gamengen.model import ModelLoadError
from gamengen.vae import decode_latents, encode_frames, frames_to_tensor, tensor_to_frames

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
CATEGORIES = ("turning", "moving", "still", "other")
REPORT_DRIFT_STEPS = (1, 8, 16, 32, 64)
OUTPUTS = ("metrics.json", "report.md", "drift.png", "examples.png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_engine_arguments(parser)
    parser.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="MODEL",
        help="more checkpoints (folders or Hub ids) evaluated on the same windows",
    )
    parser.add_argument(
        "--names",
        nargs="+",
        default=None,
        help="labels of --model_folder and the --compare models in the report (default: folder names)",
    )
    what = parser.add_argument_group("what to evaluate on")
    what.add_argument("--dataset_name", required=True, help="dataset folder of parquet shards, or a Hub dataset id")
    what.add_argument(
        "--episodes",
        nargs="+",
        default=None,
        help="episodes (indices or ids); default: the held-out episodes recorded in --model_folder's checkpoint (all "
        "episodes when it records none)",
    )
    what.add_argument("--num_episodes", type=int, default=8, help="use at most this many of those episodes")
    what.add_argument(
        "--max_windows", type=int, default=128, help="teacher-forced windows, spread evenly over the episodes' steps"
    )
    what.add_argument("--horizon", type=int, default=64, help="frames of each autoregressive (drift) rollout")
    what.add_argument("--batch_size", type=int, default=16, help="windows (or rollouts) generated together")
    what.add_argument(
        "--timing_frames", type=int, default=16, help="frames of the batch-1 rollout that measures frames/s"
    )
    what.add_argument("--num_examples", type=int, default=6, help="rows of examples.png")
    what.add_argument(
        "--idm",
        default=None,
        metavar="PATH",
        help="an inverse-dynamics model from train_idm.py: reports how often it recovers the actions from real, "
        "teacher-forced, shuffled-action and autoregressive transitions (action following)",
    )
    what.add_argument("--no_lpips", action="store_true", help="skip LPIPS even when the lpips package is installed")
    what.add_argument(
        "--lpips_random_backbone",
        action="store_true",
        help="for testing the plumbing offline: an UNTRAINED network's distance in LPIPS's place, "
        "reported as random_backbone_distance (not LPIPS)",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", default="outputs/eval", help="where metrics.json, report.md and the plots go")
    output.add_argument(
        "--overwrite", action="store_true", help="replace the results of an earlier evaluation in --output_dir"
    )
    args = parser.parse_args(argv)
    for name in ("num_episodes", "max_windows", "horizon", "batch_size", "timing_frames"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    models = [args.model_folder, *args.compare]
    if args.names is not None and len(args.names) != len(models):
        parser.error(f"--names gives {len(args.names)} labels for {len(models)} models (--model_folder and --compare)")
    return args


# ----------------------------------------------------------------------------------------------
# Windows, categories and shuffles


@dataclass
class Window:
    """Predict frame ``step`` of episode ``episode`` (an index) from the frames and actions before it."""

    episode: int
    episode_id: str
    step: int
    action: int  # action step - 1: the one that produced the target
    action_name: str
    category: str


def action_category(name: str) -> str:
    """What kind of change an action makes to the next frame: turning (any action with a turn),
    moving (forward/backward/strafe), still (no-op) or other (attack, use, ...)."""
    name = name.upper()
    if "TURN" in name:
        return "turning"
    if any(word in name for word in ("FORWARD", "BACKWARD", "STRAFE", "MOVE")):
        return "moving"
    if name in ("NOOP", "NONE", "IDLE"):
        return "still"
    return "other"


def derangement(count: int, seed: int) -> np.ndarray:
    """A random permutation of ``range(count)`` with no fixed point (Sattolo's algorithm: one cycle),
    so every window gets another window's actions; the identity for fewer than 2."""
    order = np.arange(count)
    rng = np.random.default_rng(seed)
    for i in range(count - 1, 0, -1):
        j = int(rng.integers(0, i))
        order[i], order[j] = order[j], order[i]
    return order


def choose_episodes(
    args: argparse.Namespace, dataset: EpisodeDataset, config: WorldModelConfig
) -> tuple[list[int], str]:
    """(episode indices, where they come from): --episodes, else the checkpoint's held-out episodes."""
    if args.episodes:
        indices, source = [find_episode(dataset, e) for e in args.episodes], "--episodes"
    else:
        heldout = [e for e in config.dataset.get("heldout_episodes", []) if e in set(dataset.episode_ids)]
        if heldout:
            indices, source = (
                [dataset.episode_ids.index(e) for e in heldout],
                "held out by the trainer (never trained on)",
            )
        else:
            indices = list(range(len(dataset.episode_ids)))
            source = (
                "ALL episodes: the checkpoint records no held-out episode of this dataset, "
                "so training episodes may be included"
            )
    indices = list(dict.fromkeys(indices))[: args.num_episodes]
    return indices, source


def choose_windows(
    dataset: EpisodeDataset, episodes: list[int], context_length: int, max_windows: int, action_names: list[str]
) -> list[Window]:
    """Up to ``max_windows`` targets spread evenly over the episodes' steps. Targets with a full
    context (step >= N) are used when an episode has any; a shorter episode gives padded windows."""
    candidates = []
    for episode in episodes:
        length = dataset.episodes[episode].length
        first = context_length if length > context_length else 1
        candidates += [(episode, step) for step in range(first, length)]
    if not candidates:
        raise DatasetError("the chosen episodes have no step with a frame before it: use episodes of at least 2 steps")
    picks = np.unique(np.linspace(0, len(candidates) - 1, min(max_windows, len(candidates))).round().astype(int))
    windows = []
    for pick in picks:
        episode, step = candidates[pick]
        action = int(dataset.actions(episode)[step - 1])
        name = action_names[action]
        windows.append(Window(episode, dataset.episode_ids[episode], step, action, name, action_category(name)))
    return windows


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


# ----------------------------------------------------------------------------------------------
# Results: what metrics.json and report.md are written from


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


@dataclass
class FrameScores:
    """Scores of generated frames against the real frames of the same steps, one value per frame.
    ``lpips`` is the real LPIPS; ``random_backbone_distance`` its untrained stand-in (tests only, NOT
    LPIPS); at most one of them is filled."""

    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    gmsd: list[float] = field(default_factory=list)
    gradient_energy: list[float] = field(default_factory=list)  # of the generated frame's 3D view
    real_gradient_energy: list[float] = field(default_factory=list)  # of the real frame's
    lpips: list[float] | None = None
    random_backbone_distance: list[float] | None = None

    @classmethod
    def measure(
        cls, prediction: torch.Tensor, truth: torch.Tensor, perceptual: LpipsMetric | None, hud_rows: int | None
    ) -> FrameScores:
        """Score ``(B, 3, H, W)`` frames in [-1, 1] against the truth (``hud_rows``: the status-bar rows
        left out of the gradient energy, None for DOOM's at this frame height)."""
        scores = cls(
            psnr=psnr(prediction, truth).tolist(),
            ssim=ssim(prediction, truth).tolist(),
            gmsd=gmsd(prediction, truth).tolist(),
            gradient_energy=gradient_energy(prediction, hud_rows).tolist(),
            real_gradient_energy=gradient_energy(truth, hud_rows).tolist(),
        )
        if perceptual is not None:
            setattr(scores, perceptual.name, perceptual(prediction, truth).tolist())
        return scores

    def __len__(self) -> int:
        return len(self.psnr)

    def subset(self, indices: list[int]) -> FrameScores:
        lists = self._lists()
        chosen = {name: None if values is None else [values[i] for i in indices] for name, values in lists.items()}
        return FrameScores(**chosen)

    def extend(self, other: FrameScores) -> None:
        for name, values in other._lists().items():
            if values is not None:
                setattr(self, name, (getattr(self, name) or []) + values)

    def mean(self) -> Scores:
        means = {name: None if values is None else float(np.mean(values)) for name, values in self._lists().items()}
        generated, real = means.pop("gradient_energy"), means.pop("real_gradient_energy")
        # the ratio of the means, not the mean of per-frame ratios: a nearly flat real frame must not dominate
        return Scores(**means, sharpness=generated / max(real, 1e-6))

    def sharpness(self) -> list[float]:
        pairs = zip(self.gradient_energy, self.real_gradient_energy, strict=True)
        return [generated / max(real, 1e-6) for generated, real in pairs]

    def to_dict(self) -> dict[str, list[float]]:
        values = self._lists()
        del values["gradient_energy"], values["real_gradient_energy"]  # reported as their ratio
        return _without_none({**values, "sharpness": self.sharpness()})

    def _lists(self) -> dict[str, list[float] | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Scores:
    """The mean scores of a set of frames: PSNR (dB, higher is better), SSIM (higher is better), GMSD
    (lower is better), sharpness (1 = as sharp as the game's frames at the same steps, below = blur,
    above = noise) and LPIPS (lower is better; None when it was not computed). ``random_backbone_distance``:
    an untrained network's distance, filled only when the plumbing is tested (--lpips_random_backbone);
    it is NOT LPIPS."""

    psnr: float
    ssim: float
    gmsd: float
    sharpness: float
    lpips: float | None = None
    random_backbone_distance: float | None = None

    def to_dict(self) -> dict[str, float]:
        return _without_none(asdict(self))


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
        return _without_none({"start_step": self.start_step, "episodes": self.episodes, "count": self.count, **curves})


@dataclass
class Timing:
    """Speed of a batch-1 rollout (how the game is played), from ``GameEngine.timing_summary``."""

    fps: float | None = None
    unet_ms: float | None = None
    decode_ms: float | None = None
    total_ms: float | None = None
    frames: float | None = None

    def to_dict(self) -> dict[str, float]:
        return _without_none(asdict(self))


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
class LpipsStatus:
    """Whether LPIPS was computed, why not, and the stand-in measured in its place (if any)."""

    computed: bool
    reason: str  # why not, when it was not computed
    stand_in: str | None = None  # "random_backbone_distance" under --lpips_random_backbone: NOT LPIPS

    def describe(self) -> str:
        if self.computed:
            return "LPIPS computed"
        stand_in = f"; {self.stand_in} measured instead (NOT LPIPS)" if self.stand_in else ""
        return f"LPIPS not computed: {self.reason}{stand_in}"

    def to_dict(self) -> dict[str, Any]:
        return _without_none(asdict(self))


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


@dataclass
class Scorer:
    """How every pass is scored: the optional perceptual metric and the status-bar rows that the
    gradient energy leaves out (None: DOOM's status bar at the frame height; 0: frames without it)."""

    perceptual: LpipsMetric | None = None
    hud_rows: int | None = None

    def __call__(self, prediction: torch.Tensor, truth: torch.Tensor) -> FrameScores:
        return FrameScores.measure(prediction, truth, self.perceptual, self.hud_rows)


def recorded_without_status_bar(dataset: EpisodeDataset) -> bool:
    """True when the dataset's shards say the game was rendered without the status bar (render_hud off)."""
    env_config = (dataset.metadata or {}).get("env_config") or {}
    return env_config.get("render_hud") is False


def perceptual_metric(args: argparse.Namespace) -> tuple[LpipsMetric | None, LpipsStatus]:
    """LPIPS on the evaluation's device when it can run here; the untrained stand-in under
    --lpips_random_backbone (never reported as LPIPS); nothing under --no_lpips."""
    device = args.device or default_device()
    if args.lpips_random_backbone:
        reason = "replaced by an untrained network's distance (--lpips_random_backbone, for testing the plumbing)"
        status = LpipsStatus(computed=False, reason=reason, stand_in="random_backbone_distance")
        return random_backbone_distance(device), status
    if args.no_lpips:
        return None, LpipsStatus(computed=False, reason="skipped (--no_lpips)")
    metric, reason = load_lpips(device)
    return metric, LpipsStatus(computed=metric is not None, reason=reason)


# ----------------------------------------------------------------------------------------------
# One model


def teacher_forced(
    engine: GameEngine,
    dataset: EpisodeDataset,
    windows: list[Window],
    order: np.ndarray,
    args: argparse.Namespace,
    scorer: Scorer,
    label: str,
) -> TeacherForced:
    """Predict every window with its true actions and with the actions of window ``order[i]``; also
    the VAE reconstruction of every target. Windows are batched by context size (the same noise for
    both action sources)."""
    contexts = [episode_context(dataset, w.episode, w.step, engine.context_length) for w in windows]
    action_rows = [np.append(actions, action) for _, actions, action in contexts]
    truth_frames = np.stack([episode_frames(dataset, w.episode, w.step, w.step + 1)[0] for w in windows])
    predictions = {"model": [None] * len(windows), "shuffled": [None] * len(windows)}
    groups: dict[int, list[int]] = {}
    for i, (frames, _, _) in enumerate(contexts):
        groups.setdefault(len(frames), []).append(i)
    batch_number = 0
    with tqdm(total=2 * len(windows), desc=f"{label}: teacher forcing", unit="frame", leave=False) as bar:
        for size, members in sorted(groups.items()):
            for _, chunk in batches(members, args.batch_size):
                frames = np.stack([contexts[i][0] for i in chunk])
                for source in ("model", "shuffled"):
                    rows = [action_rows[i] if source == "model" else action_rows[order[i]][-size:] for i in chunk]
                    # another window's actions, aligned at the end (its last action produced its own target)
                    rows = [
                        np.concatenate([np.zeros(size - len(r), dtype=np.int64), r]) if len(r) < size else r
                        for r in rows
                    ]
                    engine.reset(frames, np.stack([r[:-1] for r in rows]), seed=args.seed + batch_number)
                    generated = engine.step([int(r[-1]) for r in rows])
                    for i, frame in zip(chunk, generated, strict=True):
                        predictions[source][i] = frame
                    bar.update(len(chunk))
                batch_number += 1
    truth = frames_to_tensor(truth_frames)
    reconstruction = []
    with torch.inference_mode():
        for _, chunk in batches(list(truth), args.batch_size):
            latents = encode_frames(
                engine.vae, torch.stack(chunk).to(engine.device, engine.vae.dtype), engine.config.model
            )
            reconstruction.append(
                frames_to_tensor(tensor_to_frames(decode_latents(engine.vae, latents, engine.config.model)))
            )
    model_frames, shuffled_frames = np.stack(predictions["model"]), np.stack(predictions["shuffled"])
    return TeacherForced(
        model=scorer(frames_to_tensor(model_frames), truth),
        shuffled_actions=scorer(frames_to_tensor(shuffled_frames), truth),
        vae_reconstruction=scorer(torch.cat(reconstruction), truth),
        predictions=model_frames,
        shuffled_predictions=shuffled_frames,
        last_context=np.stack([frames[-1] for frames, _, _ in contexts]),
        truth=truth_frames,
    )


def drift(
    engine: GameEngine,
    dataset: EpisodeDataset,
    episodes: list[int],
    start: int,
    args: argparse.Namespace,
    scorer: Scorer,
    label: str,
) -> DriftCurve:
    """Roll every episode out for ``--horizon`` frames from step ``start`` with its recorded actions
    (all episodes in one batch); per step, the mean scores over the episodes that are that long."""
    usable = [e for e in episodes if dataset.episodes[e].length > start]
    if not usable:
        return DriftCurve(start_step=start, episodes=0, count=[])
    horizon = min(args.horizon, max(dataset.episodes[e].length - start for e in usable))
    per_step = [FrameScores() for _ in range(horizon)]
    before, after, taken = [], [], []  # generated transitions, for action following
    with tqdm(total=horizon * len(usable), desc=f"{label}: drift", unit="frame", leave=False) as bar:
        for number, chunk in batches(usable, args.batch_size):
            contexts = [episode_context(dataset, e, start, engine.context_length) for e in chunk]
            engine.reset(
                np.stack([c[0] for c in contexts]), np.stack([c[1] for c in contexts]), seed=args.seed + 1000 + number
            )
            recorded = [dataset.actions(e) for e in chunk]
            lengths = [dataset.episodes[e].length - start for e in chunk]
            previous = None
            for i in range(horizon):
                actions = [
                    int(actions[start - 1 + i]) if i < n else 0 for actions, n in zip(recorded, lengths, strict=True)
                ]
                generated = engine.step(actions)
                alive = [b for b, n in enumerate(lengths) if i < n]
                if previous is not None and alive:
                    before.append(previous[alive])
                    after.append(generated[alive])
                    taken.append(np.asarray(actions)[alive])
                previous = generated
                truth = np.stack([episode_frames(dataset, chunk[b], start + i, start + i + 1)[0] for b in alive])
                per_step[i].extend(scorer(frames_to_tensor(generated[alive]), frames_to_tensor(truth)))
                bar.update(len(chunk))
    means, counts = [s.mean() for s in per_step], [len(s) for s in per_step]
    transitions = (np.concatenate(before), np.concatenate(after), np.concatenate(taken)) if before else None
    return DriftCurve(start_step=start, episodes=len(usable), steps=means, count=counts, transitions=transitions)


def copy_last_drift(
    dataset: EpisodeDataset, episodes: list[int], start: int, horizon: int, scorer: Scorer
) -> DriftCurve:
    """The drift baseline: the last frame of the real start (step ``start - 1``) shown for every step."""
    usable = [e for e in episodes if dataset.episodes[e].length > start]
    length = min(horizon, max((dataset.episodes[e].length - start for e in usable), default=0))
    per_step = [FrameScores() for _ in range(length)]
    for episode in usable:
        steps = min(length, dataset.episodes[episode].length - start)
        frames = frames_to_tensor(episode_frames(dataset, episode, start - 1, start + steps))
        episode_scores = scorer(frames[:1].expand(steps, -1, -1, -1), frames[1:])
        for i in range(steps):
            per_step[i].extend(episode_scores.subset([i]))
    return DriftCurve(start_step=start, episodes=len(usable), steps=[s.mean() for s in per_step])


def measure_speed(engine: GameEngine, dataset: EpisodeDataset, window: Window, frames: int, seed: int) -> Timing:
    """Frames/s and ms per stage of one rollout at batch size 1 (how the game is played)."""
    context, actions, action = episode_context(dataset, window.episode, window.step, engine.context_length)
    engine.reset(context, actions, seed=seed)
    for _ in range(frames + 1):  # the first frame (warm-up) is left out of the summary
        engine.step(action)
    return Timing(**engine.timing_summary(skip_first=1))


def steps_above(curve: list[float], baseline: list[float]) -> tuple[int, int]:
    """(frames above the baseline from the first one on, until the first that is not; frames above it in all)."""
    pairs = list(zip(curve, baseline, strict=False))
    first_run = next((i for i, (value, reference) in enumerate(pairs) if value <= reference), len(pairs))
    return first_run, sum(value > reference for value, reference in pairs)


def evaluate_model(
    folder: str,
    label: str,
    args: argparse.Namespace,
    dataset: EpisodeDataset,
    windows: list[Window],
    order: np.ndarray,
    episodes: list[int],
    drift_start: int,
    copy_last: CopyLastBaseline,
    scorer: Scorer,
    idm: IDM | None = None,
) -> ModelResult:
    engine = engine_from_args(argparse.Namespace(**{**vars(args), "model_folder": folder}))
    started = time.perf_counter()
    forced = teacher_forced(engine, dataset, windows, order, args, scorer, label)
    curve = drift(engine, dataset, episodes, drift_start, args, scorer, label)
    timing = measure_speed(engine, dataset, windows[0], args.timing_frames, args.seed)
    first_run, in_all = steps_above(curve.curve("psnr"), copy_last.drift.curve("psnr"))
    config = engine.config
    return ModelResult(
        name=label,
        model_folder=str(folder),
        engine=engine.describe(),
        config={
            "preset": config.model.preset,
            "context_length": config.context_length,
            "frame_size": list(engine.frame_size),
            "noise_buckets": config.noise_buckets,
            "max_noise_level": config.max_noise_level,
            "context_dropout": config.context_dropout,
            "prediction_type": config.prediction_type,
            **({"residual": config.residual} if hasattr(config, "residual") else {}),
        },
        training_dataset={k: v for k, v in config.dataset.items() if k != "heldout_episodes"},
        forced=forced,
        teacher_forced=PassSummary.of(forced.model, windows),
        shuffled_actions=PassSummary.of(forced.shuffled_actions, windows),
        vae_reconstruction=PassSummary.of(forced.vae_reconstruction, windows),
        drift=curve,
        drift_steps_above_copy_last=first_run,
        drift_frames_above_copy_last=in_all,
        timing=timing,
        seconds=time.perf_counter() - started,
        action_following=measure_action_following(idm, forced, curve, windows, order) if idm is not None else None,
    )


def measure_action_following(
    idm: IDM, forced: TeacherForced, curve: DriftCurve, windows: list[Window], order: np.ndarray
) -> dict[str, Any]:
    """How often the IDM recovers the actions: from the real transitions of the windows (its ceiling), the
    teacher-forced predictions, the predictions made with another window's actions (scored against the actions
    the model was given, and against the recorded ones, which a model that follows actions misses), and the
    autoregressive rollouts (generated frame t -> generated frame t+1)."""
    recorded = np.array([w.action for w in windows])
    given = recorded[order]
    passes = {
        "real": action_following(idm, forced.last_context, forced.truth, recorded),
        "teacher_forced": action_following(idm, forced.last_context, forced.predictions, recorded),
        "shuffled_given": action_following(idm, forced.last_context, forced.shuffled_predictions, given),
        "shuffled_recorded": action_following(idm, forced.last_context, forced.shuffled_predictions, recorded),
    }
    if curve.transitions is not None:
        passes["drift"] = action_following(idm, *curve.transitions)
    real = passes["real"]
    return {
        **{name: result.to_dict() for name, result in passes.items()},
        "relative_accuracy": passes["teacher_forced"].action_accuracy / max(real.action_accuracy, 1e-9),
        "relative_category_accuracy": passes["teacher_forced"].category_accuracy / max(real.category_accuracy, 1e-9),
        "idm": str(idm.info.get("path", "")),
    }


# ----------------------------------------------------------------------------------------------
# Report


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def at_step(curve: list[float], step: int) -> float | None:
    return curve[step - 1] if len(curve) >= step else None


def report_markdown(evaluation: Evaluation) -> str:
    settings, models, copy_last = evaluation.settings, evaluation.models, evaluation.copy_last
    steps = [s for s in REPORT_DRIFT_STEPS if s <= settings["horizon"]]
    if settings["horizon"] not in steps:
        steps.append(settings["horizon"])
    lines = [
        "# World-model evaluation",
        "",
        f"Dataset `{evaluation.dataset['name']}`: {len(evaluation.episodes)} episodes ({evaluation.episode_source}), "
        f"{len(evaluation.windows)} teacher-forced windows, "
        f"drift over {settings['horizon']} frames from step {copy_last.drift.start_step}.",
        f"Sampling: {settings['num_inference_steps']} DDIM steps (timesteps {settings.get('timesteps')}, eta "
        f"{settings.get('eta', 0.0)}), CFG {settings['guidance_scale']}, context noise "
        f"bucket {settings['noise_bucket']}, "
        f"seed {settings['seed']}, {settings['dtype']} on {settings['device']}.",
        "",
        "PSNR in dB (higher is better), SSIM in [0, 1] (higher is better), LPIPS (lower is better). "
        "Turning / moving / still: the windows whose target was produced by that kind of action.",
        "",
    ]
    header = (
        ["", "PSNR", "SSIM", "LPIPS", "PSNR turning", "PSNR moving", "PSNR still"]
        + [f"drift PSNR @{s}" for s in steps]
        + ["frames/s"]
    )
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(name: str, summary: PassSummary, curve: list[float] | None, fps: float | None) -> str:
        overall = summary.overall
        cells = [name, fmt(overall.psnr), fmt(overall.ssim, 3), fmt(overall.lpips, 3)]
        cells += [fmt(summary.category_value(c, "psnr")) for c in ("turning", "moving", "still")]
        cells += [fmt(at_step(curve, s)) if curve else "–" for s in steps]
        cells.append(fmt(fps, 1))
        return "| " + " | ".join(cells) + " |"

    paper = evaluation.paper
    lines.append(
        "| paper (SD v1.4, 320x240, TPU-v5) | "
        + " | ".join(
            [fmt(paper["teacher_forced_psnr"]), "–", fmt(paper["teacher_forced_lpips"], 3), "–", "–", "–"]
            + ["–"] * len(steps)
            + [fmt(paper["fps"], 1)]
        )
        + " |"
    )
    for model in models:
        lines.append(row(f"**{model.name}**", model.teacher_forced, model.drift.curve("psnr"), model.timing.fps))
    for model in models:
        lines.append(row(f"{model.name}, shuffled actions", model.shuffled_actions, None, None))
    lines.append(row("copy last context frame", copy_last.teacher_forced, copy_last.drift.curve("psnr"), None))
    for model in models:
        lines.append(row(f"{model.name}: VAE reconstruction (upper bound)", model.vae_reconstruction, None, None))
    lines += [
        "",
        f"The paper's autoregressive PSNR after 3 s of play: {paper['drift_psnr_after_3s']} dB.",
        "",
        "## Does the model beat the baselines?",
        "",
    ]
    for model in models:
        tf, shuffled, copy = model.teacher_forced, model.shuffled_actions, copy_last.teacher_forced
        gaps = [f"all windows {tf.overall.psnr - shuffled.overall.psnr:+.2f} dB"]
        for category in ("turning", "moving"):
            if category in tf.by_category:
                gap = tf.category_value(category, "psnr") - shuffled.category_value(category, "psnr")
                gaps.append(f"{category} {gap:+.2f} dB")
        timing = model.timing
        lines.append(
            f"- **{model.name}**: {tf.overall.psnr - copy.overall.psnr:+.2f} dB vs copy-last; "
            f"true minus shuffled actions (action sensitivity): {', '.join(gaps)}; "
            f"drift above copy-last on {model.drift_frames_above_copy_last} of {len(model.drift.steps)} frames "
            f"({model.drift_steps_above_copy_last} from the first one on); "
            f"{fmt(timing.fps, 1)} frames/s "
            f"(unet {fmt(timing.unet_ms, 1)} ms, decode {fmt(timing.decode_ms, 1)} ms per frame)."
        )
    lpips_note = "computed" if evaluation.lpips.computed else f"not computed: {evaluation.lpips.reason}"
    lines += ["", f"LPIPS: {lpips_note}.", ""]
    lines += blur_honest_section(evaluation, steps)
    lines += action_following_section(evaluation)
    lines += ["", "![drift](drift.png)", "", "![examples](examples.png)", ""]
    return "\n".join(lines)


def action_following_section(evaluation: Evaluation) -> list[str]:
    """The IDM's accuracies per pass, when an IDM was given (--idm)."""
    measured = [model for model in evaluation.models if model.action_following]
    if not measured:
        return ["", "Action following (inverse-dynamics model): not measured (pass --idm, from train_idm.py)."]
    passes = {
        "real": "real transitions (the IDM's ceiling)",
        "teacher_forced": "teacher-forced predictions",
        "shuffled_given": "shuffled actions, vs the actions given",
        "shuffled_recorded": "shuffled actions, vs the recorded actions",
        "drift": "autoregressive rollouts",
    }
    lines = [
        "",
        "## Action following (inverse-dynamics model)",
        "",
        f"An IDM ({measured[0].action_following['idm']}) reads each transition (frame t-1 -> frame t) and tells "
        "which action made it. Category: turn left / turn right / move / strafe / attack or use / still. A model "
        "that follows its actions scores near the real transitions; one that ignores them falls toward chance "
        "(on shuffled actions it then matches the recorded actions rather than the given ones).",
        "",
        "| model | transitions | action accuracy | category accuracy | chance (action / category) | n |",
        "|---|---|---|---|---|---|",
    ]
    for model in measured:
        blocks = model.action_following
        for key, title in passes.items():
            if key in blocks:
                block = blocks[key]
                lines.append(
                    f"| {model.name} | {title} | {block['action_accuracy']:.3f} | {block['category_accuracy']:.3f} | "
                    f"{block['action_chance']:.3f} / {block['category_chance']:.3f} | {block['num_transitions']} |"
                )
        lines.append(
            f"| {model.name} | teacher-forced / real | {blocks['relative_accuracy']:.2f} | "
            f"{blocks['relative_category_accuracy']:.2f} | | |"
        )
    return lines


def blur_honest_section(evaluation: Evaluation, steps: list[int]) -> list[str]:
    """The measures that blur cannot fool, beside PSNR: a model that hedges between possible next
    frames predicts their blurred average, which PSNR and SSIM reward."""
    models, copy_last, settings = evaluation.models, evaluation.copy_last, evaluation.settings
    stand_in = evaluation.lpips.stand_in
    perceptual_header = "random-backbone distance (NOT LPIPS)" if stand_in else "LPIPS"
    lines = [
        "## Blur-honest measures",
        "",
        "PSNR and SSIM reward blur: a model unsure of the next frame that draws a blur of the possible ones loses "
        "little PSNR. Sharpness (no reference): the gradient energy of the 3D view of the generated frames "
        "over that of the real frames at the same steps; 1.00 = as sharp as the game, below = blurred, above = noisier "
        f"(the bottom {settings['status_bar_rows']} status-bar rows left out). GMSD (gradient magnitude similarity "
        "deviation, lower is better, 0 = the real frame's edges): penalises missing edges (blur) and misplaced ones.",
    ]
    if stand_in:
        lines += [
            "",
            f"**{perceptual_header}**: an untrained network's distance, measured only to test the plumbing "
            "(--lpips_random_backbone). It is not LPIPS and says nothing about perceptual quality.",
        ]
    header = ["", "sharpness", "GMSD", "PSNR", "SSIM", perceptual_header]
    header += [f"drift sharpness @{s}" for s in steps] + [f"drift GMSD @{s}" for s in steps]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(name: str, summary: PassSummary, curve: DriftCurve | None) -> str:
        overall = summary.overall
        perceptual = overall.random_backbone_distance if stand_in else overall.lpips
        cells = [name, fmt(overall.sharpness), fmt(overall.gmsd, 3), fmt(overall.psnr), fmt(overall.ssim, 3)]
        cells.append(fmt(perceptual, 3))
        for metric, digits in (("sharpness", 2), ("gmsd", 3)):
            values = curve.curve(metric) if curve else []
            cells += [fmt(at_step(values, s), digits) if values else "–" for s in steps]
        return "| " + " | ".join(cells) + " |"

    for model in models:
        lines.append(row(f"**{model.name}**", model.teacher_forced, model.drift))
    for model in models:
        lines.append(row(f"{model.name}, shuffled actions", model.shuffled_actions, None))
    lines.append(row("copy last context frame", copy_last.teacher_forced, copy_last.drift))
    for model in models:
        lines.append(row(f"{model.name}: VAE reconstruction", model.vae_reconstruction, None))
    lines.append("")
    for model in models:
        tf, copy = model.teacher_forced.overall, copy_last.teacher_forced.overall
        drift_sharpness = model.drift.curve("sharpness")
        last = f"; at the last drift frame {drift_sharpness[-1]:.2f}" if drift_sharpness else ""
        lines.append(
            f"- **{model.name}**: sharpness {tf.sharpness:.2f} "
            f"(VAE reconstruction {model.vae_reconstruction.overall.sharpness:.2f}{last}); "
            f"GMSD {tf.gmsd:.3f} vs copy-last {copy.gmsd:.3f} ({'better' if tf.gmsd < copy.gmsd else 'not better'})."
        )
    return lines


def plot_drift(evaluation: Evaluation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline = evaluation.copy_last.drift
    labels = {
        "psnr": "PSNR (dB), higher is better",
        "ssim": "SSIM, higher is better",
        "gmsd": "GMSD, lower is better",
        "sharpness": "sharpness (1 = as sharp as the game)",
        "lpips": "LPIPS, lower is better",
        "random_backbone_distance": "random-backbone distance (NOT LPIPS)",
    }
    metrics = [m for m in labels if baseline.curve(m)]
    columns = (len(metrics) + 1) // 2
    figure, axes = plt.subplots(2, columns, figsize=(6 * columns, 8), squeeze=False)
    for axis in axes.flat[len(metrics) :]:
        axis.set_visible(False)
    for axis, metric in zip(axes.flat, metrics, strict=False):
        for model in evaluation.models:
            curve = model.drift.curve(metric)
            axis.plot(range(1, len(curve) + 1), curve, label=model.name, linewidth=2)
        reference = baseline.curve(metric)
        axis.plot(range(1, len(reference) + 1), reference, "--", color="gray", label="copy last real frame")
        if metric == "sharpness":
            axis.axhline(1.0, color="black", linewidth=0.8, linestyle=":", label="the game's sharpness")
        axis.set_xlabel("autoregressive frame")
        axis.set_ylabel(labels[metric])
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    horizon = evaluation.settings["horizon"]
    figure.suptitle(f"Drift over {horizon} frames, {baseline.episodes} episodes, recorded actions")
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=100)
    plt.close(figure)


def examples_image(
    dataset: EpisodeDataset, windows: list[Window], models: list[ModelResult], num_examples: int
) -> np.ndarray:
    """Rows of: last context frame | truth | each model's prediction | the first model with shuffled actions."""
    picks = np.unique(np.linspace(0, len(windows) - 1, min(num_examples, len(windows))).round().astype(int))
    scale = display_scale(dataset.frame(0).shape[1]) if len(dataset) else 1
    rows = []
    for pick in picks:
        window = windows[pick]
        last, truth = episode_frames(dataset, window.episode, window.step - 1, window.step + 1)
        tiles = [last, truth] + [m.forced.predictions[pick] for m in models]
        tiles.append(models[0].forced.shuffled_predictions[pick])
        titles = ["last context", "truth"] + [m.name for m in models] + ["shuffled actions"]
        scores_text = ", ".join(
            f"{m.name} {m.forced.model.psnr[pick]:.1f} dB, sharpness {m.forced.model.sharpness()[pick]:.2f}"
            for m in models
        )
        caption = f"{window.episode_id} step {window.step}, {window.action_name}: {scores_text}"
        rows.append(captioned_row(tiles, titles, caption, scale))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows])


# ----------------------------------------------------------------------------------------------
# Main


def model_label(path: str, taken: set[str]) -> str:
    name = Path(str(path).rstrip("/")).name or str(path)
    label, number = name, 2
    while label in taken:
        label, number = f"{name} ({number})", number + 1
    taken.add(label)
    return label


def dataset_provenance(dataset: EpisodeDataset) -> dict[str, Any]:
    """What the dataset's shards record about how they were made (the policy, the generator, the
    game settings), less the full environment config; written into metrics.json as ``metadata``."""
    return {k: v for k, v in (dataset.metadata or {}).items() if k != "env_config"}


def main(args: argparse.Namespace) -> Evaluation:
    output_dir = Path(args.output_dir)
    earlier = [name for name in OUTPUTS if (output_dir / name).exists()]
    if earlier and not args.overwrite:
        raise EngineError(
            f"--output_dir {output_dir} already holds an evaluation ({', '.join(earlier)}): choose another "
            "--output_dir, or pass --overwrite"
        )
    began = time.perf_counter()
    folders = [args.model_folder, *args.compare]
    configs = [read_world_model_config(folder, args.revision) for folder in folders]
    dataset = open_dataset(args.dataset_name, columns=columns_from_args(args))
    for folder, config in zip(folders, configs, strict=True):
        try:
            check_dataset_fits_model(dataset, config)
        except DatasetError as error:
            raise DatasetError(f"{folder}: {error}") from None
        if list(config.action_names) != list(configs[0].action_names):
            raise ModelLoadError(
                f"{folder} has other actions than {folders[0]}: --compare needs checkpoints of the same game and "
                "action set"
            )
    episodes, episode_source = choose_episodes(args, dataset, configs[0])
    longest_context = max(c.context_length for c in configs)
    windows = choose_windows(dataset, episodes, longest_context, args.max_windows, list(configs[0].action_names))
    order = derangement(len(windows), args.seed)
    drift_start = max(1, min(longest_context, min(dataset.episodes[e].length for e in episodes) - 1))
    idm = None
    if args.idm is not None:
        idm = load_idm(args.idm, device=args.device or default_device())
        idm.info["path"] = str(args.idm)
        if idm.action_names != list(configs[0].action_names):
            raise IDMError(
                f"the IDM {args.idm} knows the actions {idm.action_names}, the model {configs[0].action_names}: "
                "train an IDM on this dataset (train_idm.py)"
            )
    perceptual, lpips_status = perceptual_metric(args)
    scorer = Scorer(perceptual, hud_rows=0 if recorded_without_status_bar(dataset) else None)
    print(
        f"evaluating {len(folders)} model(s) on {len(episodes)} episodes ({episode_source}): {len(windows)} "
        "teacher-forced windows, "
        f"drift over {args.horizon} frames from step {drift_start}; {lpips_status.describe()}"
    )

    copy_last_frames = frames_to_tensor(
        np.stack([episode_frames(dataset, w.episode, w.step - 1, w.step)[0] for w in windows])
    )
    truth_frames = frames_to_tensor(
        np.stack([episode_frames(dataset, w.episode, w.step, w.step + 1)[0] for w in windows])
    )
    copy_last = CopyLastBaseline(
        teacher_forced=PassSummary.of(scorer(copy_last_frames, truth_frames), windows),
        drift=copy_last_drift(dataset, episodes, drift_start, args.horizon, scorer),
    )

    models: list[ModelResult] = []
    taken: set[str] = set()
    for number, folder in enumerate(folders):
        label = args.names[number] if args.names else model_label(folder, taken)
        model = evaluate_model(
            folder, label, args, dataset, windows, order, episodes, drift_start, copy_last, scorer, idm
        )
        models.append(model)
        tf, curve = model.teacher_forced.overall, model.drift.curve("psnr")
        copy_psnr = copy_last.teacher_forced.overall.psnr
        print(
            f"{label}: teacher-forced PSNR {tf.psnr:.2f} dB, SSIM {tf.ssim:.3f} (copy-last {copy_psnr:.2f} dB; "
            f"shuffled actions {model.shuffled_actions.overall.psnr:.2f} dB); "
            f"drift PSNR {curve[0]:.2f} -> {curve[-1]:.2f} dB over "
            f"{len(curve)} frames; {model.timing.fps or 0:.1f} frames/s"
            if curve
            else f"{label}: teacher-forced PSNR {tf.psnr:.2f} dB (copy-last {copy_psnr:.2f} dB)"
        )

    evaluation = Evaluation(
        settings={
            **models[0].engine,
            "seed": args.seed,
            "horizon": args.horizon,
            "max_windows": args.max_windows,
            "batch_size": args.batch_size,
            "status_bar_rows": status_bar_rows(dataset.frame_height) if scorer.hud_rows is None else scorer.hud_rows,
        },
        dataset={
            "name": str(args.dataset_name),
            "episodes_total": len(dataset.episode_ids),
            "metadata": dataset_provenance(dataset),
        },
        episodes=[dataset.episode_ids[e] for e in episodes],
        episode_source=episode_source,
        windows=windows,
        shuffled_from=order.tolist(),
        lpips=lpips_status,
        copy_last=copy_last,
        models=models,
        seconds=time.perf_counter() - began,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_dir / "examples.png", suffix=".png") as tmp:
        Image.fromarray(examples_image(dataset, windows, models, args.num_examples)).save(tmp)
    plot_drift(evaluation, output_dir / "drift.png")
    write_bytes_atomic(output_dir / "report.md", report_markdown(evaluation))
    write_json_atomic(output_dir / "metrics.json", evaluation.to_dict())
    print(f"wrote {output_dir}/metrics.json, report.md, drift.png, examples.png in {evaluation.seconds:.0f} s")
    return evaluation


if __name__ == "__main__":
    try:
        main(parse_args())
    except (DatasetError, ModelLoadError, EngineError, IDMError) as error:
        sys.exit(f"error: {error}")
