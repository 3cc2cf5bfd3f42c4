"""The detail carry-over: an optional post-process of the engine's decoded frames, off by default
(docs/engine.md#detail-carry-over). It is not the world model: the numbers that describe the model are measured
without it, and the ones with it are reported apart.

The VAE loses fine texture. The carry-over keeps what it loses of the newest REAL context frame,
``detail = x - D(E(x))``, and adds it to each generated frame, fading it per pixel where the generated frames
change: ``detail *= exp(-|D(z_t) - D(z_t-1)| / scale)`` (0-255 levels). With ``motion="turns"`` the carried detail
first turns with the view on the steps whose action turns, by DOOM's exact turn (``gamengen.view_motion``), so it
does not stay behind as a ghost. Nothing goes back into the model: the engine's context holds the model's own
latents either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gamengen.errors import EngineError
from gamengen.view_motion import trailing_turns, turn_degrees, turn_directions, turn_view

CARRY_MOTIONS = ("turns", "none")  # how the carried detail moves before it fades


class DetailCarryOver:
    """Per rollout of a batch: the real detail still carried, and the last decoded frame it is compared with."""

    def __init__(self, scale: float, motion: str, action_names: Sequence[str], metadata: dict[str, Any]) -> None:
        if not scale > 0:
            raise EngineError(f"carry_detail is a fading scale in 0-255 levels (> 0; 0 = off), got {scale}")
        if motion not in CARRY_MOTIONS:
            raise EngineError(f"carry_motion is one of {', '.join(CARRY_MOTIONS)}, got {motion!r}")
        self.scale, self.motion = float(scale), motion
        # +1 / -1 / 0 per action (turns left / right / not), when the checkpoint says how far a step turns.
        self._turns = turn_directions(action_names, metadata) if motion == "turns" else None
        self._frame_skip = int(metadata.get("frame_skip") or 0)
        self._turning_steps: list[int] = []  # per rollout: steps in a row with a turn button held
        self._turn_now: list[float] = []  # per rollout: degrees the view turned on this step (+ = left)
        self._detail: np.ndarray | None = None  # (B, H, W, 3) float32: the real detail still carried
        self._decoded: np.ndarray | None = None  # (B, H, W, 3) float32: the last decoded frame, before the detail

    @property
    def active(self) -> bool:
        return self._detail is not None

    def start(self, real_newest: np.ndarray, decoded_newest: np.ndarray, context_actions: list[list[int]]) -> None:
        """A new rollout from real frames: ``real_newest`` ``(B, H, W, 3)`` uint8, what the VAE keeps of it
        (``decoded_newest``), and each rollout's context actions (their trailing turns set the next turn's speed)."""
        self._decoded = decoded_newest.astype(np.float32)
        self._detail = real_newest.astype(np.float32) - self._decoded
        self._turn_now = []
        if self._turns is not None:
            self._turning_steps = [trailing_turns(row, self._turns) for row in context_actions]

    def stop(self) -> None:
        """Carry nothing until the next ``start`` (a context of latents, or a step that is not decoded)."""
        self._detail = self._decoded = None

    def press(self, actions: Sequence[int]) -> None:
        """The actions of this step: how far each rollout's view turns."""
        if self._detail is None or self._turns is None:
            return
        self._turn_now = []
        for b, action in enumerate(actions):
            direction = self._turns[action]
            self._turning_steps[b] = self._turning_steps[b] + 1 if direction else 0
            turned = turn_degrees(self._turning_steps[b], self._frame_skip) if direction else 0.0
            self._turn_now.append(direction * turned)

    def apply(self, frames: np.ndarray) -> np.ndarray:
        """Decoded uint8 frames ``(B, H, W, 3)`` plus the carried detail, which first turns with the view and
        then fades where the frames changed since the last (after turning the last with the view)."""
        if self._detail is None or self._decoded is None:
            return frames
        decoded = frames.astype(np.float32)
        for b, degrees in enumerate(self._turn_now):
            if degrees:
                self._detail[b] = turn_view(self._detail[b], degrees, np.zeros_like(self._detail[b]))
                self._decoded[b] = turn_view(self._decoded[b], degrees, decoded[b])
        self._turn_now = []
        change = np.abs(decoded - self._decoded).mean(axis=-1, keepdims=True)
        self._detail *= np.exp(-change / self.scale)
        self._decoded = decoded
        return np.clip(decoded + self._detail, 0, 255).round().astype(np.uint8)

    def describe(self) -> dict[str, Any]:
        return {"carry_detail": self.scale, "carry_motion": self.motion if self._turns is not None else "none"}
