"""How long do an episode's frames keep the game's look? (``run_agent_in_world_model.py``, docs/world_model_env.md)

An agent playing inside a world model sees the model's frames drift: they blur, turn to noise, or stop showing
the actions taken. Two of evaluation's measures judge that without a real frame to compare with, so they work on
episodes that never happened in the real game:

* **sharpness**: each frame's gradient energy (``gamengen.metrics.gradient_energy``, the 3D view without the
  status bar) over the median energy of the real game's frames; 1 = the game's typical detail, below = blur, above =
  noise;
* **action following**: whether the inverse-dynamics model (``gamengen.idm``) reads the category of the action
  taken (turn left / right, move, strafe, attack or use, still) from each transition.

The game itself varies a lot: on E1M1 one stretch of 8 frames can hold several times the detail of another (a wall
close up, a lit room), and a weak IDM misses many real actions. So the judge is calibrated on the real game: a
window of W steps keeps the game's look while its mean sharpness lies within the range the real game's own W-step
windows span (widened by ``margin``) and its IDM rate is at least the lowest rate of those windows. An episode
leaves the game's look at the first window that does not; its length in the look is the number of steps before that
window (all of them when none fails). A real episode is judged against the range of the OTHER real episodes, so the
report also shows how often the judge stops the real game itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from gamengen.idm import IDM
from gamengen.metrics import gradient_energy
from gamengen.vae import frames_to_tensor


@dataclass(frozen=True)
class LookJudge:
    """The window the measures are averaged over, and how far beyond the real game's range a window may go."""

    window: int = 8
    margin: float = 1.0  # the allowed sharpness range is [real low / margin, real high * margin]

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"the window is at least 1 step, got {self.window}")
        if self.margin < 1:
            raise ValueError(f"the margin widens the real game's range: at least 1, got {self.margin}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LookRange:
    """What the real game's windows show: their mean sharpness from ``low`` to ``high``, their IDM rate from
    ``idm_low`` (None: no IDM)."""

    low: float
    high: float
    idm_low: float | None

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


def window_means(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of every full window of ``window`` consecutive values (none when there are fewer values)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < window:
        return np.zeros(0)
    sums = np.cumsum(np.concatenate([[0.0], values]))
    return (sums[window:] - sums[:-window]) / window


def look_range(
    sharpness: Sequence[np.ndarray], hits: Sequence[np.ndarray | None], judge: LookJudge
) -> LookRange | None:
    """The range the real game's windows span over the given episodes (None: no episode has a full window)."""
    means = [window_means(s, judge.window) for s in sharpness]
    means = np.concatenate(means) if means else np.zeros(0)
    if not len(means):
        return None
    rates = [window_means(h, judge.window) for h in hits if h is not None]
    rates = np.concatenate(rates) if rates else np.zeros(0)
    idm_low = float(rates.min()) if len(rates) else None
    return LookRange(float(means.min()) / judge.margin, float(means.max()) * judge.margin, idm_low)


@dataclass
class LookVerdict:
    """One episode judged: how many of its steps kept the game's look, and why it left it (if it did)."""

    steps: int  # steps played
    steps_in_look: int
    left_because: str | None  # None: never left (or too short to judge, see ``judged``)
    judged: bool = True  # False: shorter than one window, or no real range to judge it by

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def steps_in_look(
    sharpness: np.ndarray, hits: np.ndarray | None, judge: LookJudge, allowed: LookRange | None
) -> LookVerdict:
    """Judge one episode from its per-step sharpness and IDM hits (``hits`` None: sharpness only)."""
    steps = len(sharpness)
    if allowed is None or steps < judge.window:
        return LookVerdict(steps, steps, None, judged=False)
    rates = window_means(hits, judge.window) if hits is not None and allowed.idm_low is not None else None
    for begin, mean in enumerate(window_means(sharpness, judge.window)):
        where = f"at steps {begin + 1}-{begin + judge.window}"
        if mean < allowed.low:
            return LookVerdict(steps, begin, f"blurred (sharpness {mean:.3g} < the game's {allowed.low:.3g}) {where}")
        if mean > allowed.high:
            return LookVerdict(steps, begin, f"noisy (sharpness {mean:.3g} > the game's {allowed.high:.3g}) {where}")
        if rates is not None and rates[begin] < allowed.idm_low:
            reason = f"actions unreadable (IDM {rates[begin]:.2f} < the game's {allowed.idm_low:.2f}) {where}"
            return LookVerdict(steps, begin, reason)
    return LookVerdict(steps, steps, None)
