"""Image quality metrics shared by training validation, inference and evaluation."""

from __future__ import annotations

import torch


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR in dB of pixels in [-1, 1] (peak = full range)."""
    mse = ((prediction.float().clamp(-1, 1) - target.float()) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
