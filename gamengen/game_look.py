"""How long do an episode's frames keep the game's look? (``run_agent_in_world_model.py``, docs/world_model_env.md)

An agent playing inside a world model sees the model's frames drift: they blur, turn to noise, or stop showing
the actions taken. Two of evaluation's measures judge that without a real frame to compare with, so they work on
episodes that never happened in the real game:

* **sharpness**: each frame's gradient energy (``gamengen.metrics.gradient_energy``, the 3D view without the
  status bar) over the mean energy of the real game's frames; 1 = as much detail as the game, below = blur,
  above = noise;
* **action following**: whether the inverse-dynamics model (``gamengen.idm``) reads the category of the action
  the agent took (turn left / right, move, strafe, attack or use, still) from each transition.

``steps_in_look`` slides a window of W steps over an episode: the episode leaves the game's look when a window's
mean sharpness is outside ``[low, high]``, or the IDM reads fewer of its actions than ``idm_fraction`` times the
rate it reads in the real game's episodes. The episode's length in the game's look is the number of steps before
that window began (all of them when no window fails). The real game's own episodes are judged the same way, so
that the comparison shows how often the judge would stop the game itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from gamengen.idm import IDM
from gamengen.metrics import gradient_energy
from gamengen.vae import frames_to_tensor


@dataclass(frozen=True)
class LookJudge:
    """The thresholds of the game's look (see the module docstring)."""

    window: int = 8
    sharpness_low: float = 0.5
    sharpness_high: float = 2.0
    idm_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"the window is at least 1 step, got {self.window}")
        if not 0 <= self.sharpness_low < 1 < self.sharpness_high:
            raise ValueError(
                f"the sharpness range must hold 1 (the game's own): got {self.sharpness_low}..{self.sharpness_high}"
            )
        if not 0 <= self.idm_fraction <= 1:
            raise ValueError(f"idm_fraction is a fraction of the real game's IDM rate, in [0, 1]: {self.idm_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def frame_energy(frames: np.ndarray, hud_rows: int | None = None, batch_size: int = 256) -> np.ndarray:
    """Gradient energy of each uint8 frame ``(T, H, W, 3)`` of the 3D view (float64 ``(T,)``)."""
    parts = [
        gradient_energy(frames_to_tensor(frames[start : start + batch_size]), hud_rows).double().numpy()
        for start in range(0, len(frames), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def idm_hits(idm: IDM, before: np.ndarray, after: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Per transition ``before[i] -> after[i]``: does the IDM read the category of ``actions[i]``? (bool ``(T,)``)"""
    if len(actions) == 0:
        return np.zeros(0, dtype=bool)
    with torch.inference_mode():
        _, categories = idm.predict(before, after)
    return categories == idm.action_categories[np.asarray(actions, dtype=np.int64)]


@dataclass
class LookVerdict:
    """One episode judged: how many of its steps kept the game's look, and why it left it (if it did)."""

    steps: int  # steps played
    steps_in_look: int
    left_because: str | None  # None: never left

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def steps_in_look(
    sharpness: np.ndarray, hits: np.ndarray | None, judge: LookJudge, idm_threshold: float | None
) -> LookVerdict:
    """Judge one episode from its per-step sharpness ratios and IDM hits (``hits`` None: sharpness only)."""
    steps = len(sharpness)
    for end in range(judge.window, steps + 1):
        begin = end - judge.window
        mean_sharpness = float(np.mean(sharpness[begin:end]))
        reason = None
        if mean_sharpness < judge.sharpness_low:
            reason = f"blurred (sharpness {mean_sharpness:.2f} < {judge.sharpness_low}) at steps {begin + 1}-{end}"
        elif mean_sharpness > judge.sharpness_high:
            reason = f"noisy (sharpness {mean_sharpness:.2f} > {judge.sharpness_high}) at steps {begin + 1}-{end}"
        elif hits is not None and idm_threshold is not None:
            rate = float(np.mean(hits[begin:end]))
            if rate < idm_threshold:
                reason = f"actions unreadable (IDM {rate:.2f} < {idm_threshold:.2f}) at steps {begin + 1}-{end}"
        if reason is not None:
            return LookVerdict(steps, begin, reason)
    return LookVerdict(steps, steps, None)
