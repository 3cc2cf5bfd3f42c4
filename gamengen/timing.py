"""What a frame of the engine costs: the per-stage timing of each ``GameEngine.step`` and its summary."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FrameTiming:
    """Wall-clock cost of one ``step`` (all rollouts of a batch together), in milliseconds."""

    unet_ms: float  # the denoising loop: every UNet call and DDIM update of the frame
    decode_ms: float  # VAE decode and the copy to uint8 numpy frames (0 for step_latent)
    total_ms: float  # the whole step, including context noise and the buffer update
    unet_calls: int
    batch_size: int


def timing_summary(timings: list[FrameTiming], skip_first: int = 1) -> dict[str, float]:
    """Mean ms per ``step`` for each stage (the first ``skip_first`` steps, warm-up, left out when there are more),
    and frames/s over the steps counted (times the batch size)."""
    timings = timings[skip_first:] if len(timings) > skip_first else timings
    if not timings:
        return {}
    mean = {key: float(np.mean([getattr(t, key) for t in timings])) for key in ("unet_ms", "decode_ms", "total_ms")}
    frames = sum(t.batch_size for t in timings)
    mean["fps"] = 1000.0 * frames / max(sum(t.total_ms for t in timings), 1e-9)
    mean["frames"] = float(frames)
    return mean
