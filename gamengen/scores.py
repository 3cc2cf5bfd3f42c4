"""Scores of generated frames against the real frames of the same steps, as evaluate.py reports them.

``FrameScores`` holds one value per frame of every measure of ``gamengen/metrics.py`` (PSNR, SSIM, GMSD,
the gradient energies behind sharpness, and LPIPS or its untrained stand-in when one is measured);
``Scores`` is their means over a set of frames; ``Scorer`` is how every pass of an evaluation is scored
(the optional perceptual metric, the status-bar rows left out of sharpness); ``perceptual_metric``
chooses that metric and says, in ``LpipsStatus``, whether LPIPS was computed and why not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from gamengen.episodes import EpisodeDataset
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


def without_none(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` less the entries that are None (what metrics.json leaves out rather than writes as null)."""
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
        return without_none({**values, "sharpness": self.sharpness()})

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
        return without_none(asdict(self))


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
        return without_none(asdict(self))


@dataclass
class Scorer:
    """How every pass is scored: the optional perceptual metric and the status-bar rows that the
    gradient energy leaves out (None: DOOM's status bar at the frame height; 0: frames without it)."""

    perceptual: LpipsMetric | None = None
    hud_rows: int | None = None

    @classmethod
    def for_dataset(cls, dataset: EpisodeDataset, perceptual: LpipsMetric | None) -> Scorer:
        """The scorer of ``dataset``'s frames: its status bar left out, none when it was recorded without one."""
        return cls(perceptual, hud_rows=0 if recorded_without_status_bar(dataset) else None)

    def __call__(self, prediction: torch.Tensor, truth: torch.Tensor) -> FrameScores:
        return FrameScores.measure(prediction, truth, self.perceptual, self.hud_rows)

    def left_out_rows(self, frame_height: int) -> int:
        """How many bottom rows of a frame ``frame_height`` rows high the gradient energy leaves out."""
        return status_bar_rows(frame_height) if self.hud_rows is None else self.hud_rows


def recorded_without_status_bar(dataset: EpisodeDataset) -> bool:
    """True when the dataset's shards say the game was rendered without the status bar (render_hud off)."""
    env_config = (dataset.metadata or {}).get("env_config") or {}
    return env_config.get("render_hud") is False


def perceptual_metric(
    device: str, no_lpips: bool = False, random_backbone: bool = False
) -> tuple[LpipsMetric | None, LpipsStatus]:
    """LPIPS on the evaluation's device when it can run here; the untrained stand-in under
    --lpips_random_backbone (``random_backbone``: never reported as LPIPS); nothing under --no_lpips."""
    if random_backbone:
        reason = "replaced by an untrained network's distance (--lpips_random_backbone, for testing the plumbing)"
        status = LpipsStatus(computed=False, reason=reason, stand_in="random_backbone_distance")
        return random_backbone_distance(device), status
    if no_lpips:
        return None, LpipsStatus(computed=False, reason="skipped (--no_lpips)")
    metric, reason = load_lpips(device)
    return metric, LpipsStatus(computed=metric is not None, reason=reason)
