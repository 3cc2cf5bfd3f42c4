"""Image quality metrics shared by training validation, inference and evaluation.

Every metric takes batches of frames as float tensors ``(B, 3, H, W)`` with pixels in [-1, 1] (what
``gamengen.model.frames_to_tensor`` returns) and gives one value per frame:

- ``psnr``: dB, peak = the full pixel range (identical frames: 100 dB, the cap);
- ``ssim``: structural similarity (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5) on
  pixels scaled to [0, 1], averaged over channels and positions: 1 for identical frames, lower is worse;
- ``LpipsMetric``: LPIPS (Zhang et al. 2018; the paper's 0.249), only when the ``lpips`` package and
  its AlexNet weights are available locally; ``load_lpips`` returns why not otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PSNR_CAP_DB = 100.0


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR in dB of pixels in [-1, 1] (peak = full range), capped at 100 dB for identical frames."""
    mse = ((prediction.float().clamp(-1, 1) - target.float()) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(10 ** (-PSNR_CAP_DB / 10)))


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    return (kernel[:, None] * kernel[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(prediction: torch.Tensor, target: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-frame SSIM of pixels in [-1, 1]: Gaussian-weighted local statistics over the valid area
    (no padding), constants K1 = 0.01, K2 = 0.03 of a [0, 1] data range. Frames smaller than the
    window use a window of their smaller side."""
    # float64: local variances are differences of nearly equal sums, which float32 gets wrong by ~1e-7
    x = (prediction.double().clamp(-1, 1) + 1) / 2
    y = (target.double() + 1) / 2
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two batches of the same shape (B, C, H, W), got {tuple(x.shape)} and {tuple(y.shape)}")
    size = min(window_size, x.shape[-1], x.shape[-2])
    channels = x.shape[1]
    window = _gaussian_window(size, sigma, channels, x.device).double()
    blur = lambda image: F.conv2d(image, window, groups=channels)  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(1).float()


class LpipsMetric:
    """LPIPS with the AlexNet backbone (the usual choice, lower is better), on pixels in [-1, 1]."""

    def __init__(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def __call__(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model(prediction.float().clamp(-1, 1).to(device), target.float().to(device)).flatten().cpu()


def load_lpips(device: str | torch.device = "cpu") -> tuple[LpipsMetric | None, str]:
    """``(metric, "")`` when LPIPS can run here, else ``(None, why not)``: the ``lpips`` package (with
    torchvision) must be installed and its AlexNet weights in the local torch cache, because
    nothing is downloaded at evaluation time when the Hub is offline."""
    try:
        import lpips  # noqa: F401
    except ImportError as error:
        return None, f"the lpips package is not installed ({error}); `pip install lpips` (it needs torchvision and AlexNet weights)"
    try:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            model = lpips.LPIPS(net="alex", verbose=False).eval().to(device)
    except Exception as error:  # no weights offline, a torchvision mismatch, ...
        return None, f"LPIPS could not be loaded: {type(error).__name__}: {error}"
    return LpipsMetric(model), ""
