"""Image quality metrics shared by training validation, inference and evaluation.

Every metric takes batches of frames as float tensors ``(B, 3, H, W)`` with pixels in [-1, 1] (what
``gamengen.vae.frames_to_tensor`` returns) and gives one value per frame:

- ``psnr``: dB, peak = the full pixel range (identical frames: 100 dB, the cap);
- ``ssim``: structural similarity (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5) on
  pixels scaled to [0, 1], averaged over channels and positions: 1 for identical frames, lower is worse;
- ``gmsd``: gradient magnitude similarity deviation (Xue et al. 2014): 0 for identical frames, higher
  is worse; it penalises blur (gradients missing) and misplaced edges (gradients in the wrong place);
- ``gradient_energy`` / ``sharpness``: how much edge the 3D view has, without a reference (the
  status bar excluded); ``sharpness`` is that of generated frames relative to the real ones;
- ``LpipsMetric``: LPIPS (Zhang et al. 2018; the paper's 0.249), only when the ``lpips`` package and
  its AlexNet weights are available locally; ``load_lpips`` returns why not otherwise.

PSNR and SSIM reward blur: a model unsure of the next frame that predicts the average of the
possible frames scores better than one that commits to a sharp, slightly wrong frame. Sharpness and
GMSD are the measures that blur cannot fool.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

PSNR_CAP_DB = 100.0
# DOOM's status bar is 32 of the 200 rows of its native 320x200 screen.
DOOM_STATUS_BAR_ROWS, DOOM_SCREEN_ROWS = 32, 200
GMSD_STABILITY = 170.0  # Xue et al.'s constant c for gradients of luminance in [0, 255]
# BT.601 luma: what "gray" means to the gradient measures
_LUMA = (0.299, 0.587, 0.114)
# torchvision's ImageNet AlexNet, the backbone LPIPS(net="alex") loads (LPIPS's own linear layers ship in the package)
ALEXNET_WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR in dB of pixels in [-1, 1] (peak = full range), capped at 100 dB for identical frames."""
    mse = ((prediction.float().clamp(-1, 1) - target.float()) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(10 ** (-PSNR_CAP_DB / 10)))


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    return (kernel[:, None] * kernel[None, :]).expand(channels, 1, size, size).contiguous()


def _check_pair(name: str, prediction: torch.Tensor, target: torch.Tensor) -> None:
    if prediction.shape != target.shape or prediction.ndim != 4:
        shapes = f"{tuple(prediction.shape)} and {tuple(target.shape)}"
        raise ValueError(f"{name} needs two batches of the same shape (B, C, H, W), got {shapes}")


def ssim(prediction: torch.Tensor, target: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-frame SSIM of pixels in [-1, 1]: Gaussian-weighted local statistics over the valid area
    (no padding), constants K1 = 0.01, K2 = 0.03 of a [0, 1] data range. Frames smaller than the
    window use a window of their smaller side."""
    # float64: local variances are differences of nearly equal sums, which float32 gets wrong by ~1e-7
    x = (prediction.double().clamp(-1, 1) + 1) / 2
    y = (target.double() + 1) / 2
    _check_pair("ssim", x, y)
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


# ----------------------------------------------------------------------------------------------
# Gradient measures: sharpness (no reference) and GMSD (full reference)


def status_bar_rows(height: int) -> int:
    """Rows at the bottom of a ``height``-row DOOM frame that hold the status bar (ammo, health, face):
    DOOM's 32 of 200 rows scaled to the frame height, rounded up.

    Checked on recorded E1M1 frames: at 64x48 (rendered at 160x120, where the bar is stretched to
    32/200 of the height, then downscaled) the bar is exactly the bottom 8 rows (rows 40-47, the ones
    that stay still while the view moves); at 320x240 ViZDoom draws it unscaled, 32 rows (208-239),
    and this rule drops 39, i.e. 7 rows of the view too: a few view rows lost, no bar row kept.
    """
    return math.ceil(height * DOOM_STATUS_BAR_ROWS / DOOM_SCREEN_ROWS)


def _luminance(frames: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` pixels in [-1, 1] -> ``(B, 1, H, W)`` luma in [0, 255] (float64)."""
    pixels = (frames.double().clamp(-1, 1) + 1) * 127.5
    weights = torch.tensor(_LUMA, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels * weights).sum(1, keepdim=True)


def _gradient_magnitude(luma: torch.Tensor) -> torch.Tensor:
    """Prewitt gradient magnitude (the filters of GMSD, 1/3 per tap) over the valid area: (B, 1, H-2, W-2)."""
    prewitt = torch.tensor([[1.0, 0.0, -1.0]] * 3, dtype=luma.dtype, device=luma.device) / 3
    kernels = torch.stack([prewitt, prewitt.T])[:, None]  # (2, 1, 3, 3): horizontal, vertical
    gradients = F.conv2d(luma, kernels)
    return gradients.pow(2).sum(1, keepdim=True).sqrt()


def _view(frames: torch.Tensor, hud_rows: int | None) -> torch.Tensor:
    rows = status_bar_rows(frames.shape[-2]) if hud_rows is None else hud_rows
    if frames.shape[-2] - rows < 3 or frames.shape[-1] < 3:
        size = f"{frames.shape[-1]}x{frames.shape[-2]}"
        raise ValueError(f"frames of {size} less {rows} status-bar rows leave no 3x3 area to measure")
    return frames[..., : frames.shape[-2] - rows, :]


def gradient_energy(frames: torch.Tensor, hud_rows: int | None = None) -> torch.Tensor:
    """Per-frame mean squared gradient magnitude of the 3D view (luma in [0, 255], Prewitt), the bottom
    ``hud_rows`` rows left out (default: ``status_bar_rows`` of the frame height; 0 for frames
    recorded without the status bar). Blur lowers it, noise raises it; it needs no reference."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"gradient_energy needs RGB frames (B, 3, H, W), got {tuple(frames.shape)}")
    # the view is cut before the gradient, so the edge between view and status bar does not count
    return _gradient_magnitude(_luminance(_view(frames, hud_rows))).pow(2).flatten(1).mean(1).float()


def sharpness(prediction: torch.Tensor, reference: torch.Tensor, hud_rows: int | None = None) -> torch.Tensor:
    """Per-frame gradient energy of ``prediction`` relative to the real ``reference`` frames of the same
    steps: 1.0 = as sharp as the game, below 1 = blurred, above 1 = noisier than the game. (Over many
    frames, evaluate.py takes the ratio of the mean energies, so a nearly flat real frame does not
    dominate.)"""
    _check_pair("sharpness", prediction, reference)
    return gradient_energy(prediction, hud_rows) / gradient_energy(reference, hud_rows).clamp_min(1e-6)


def gmsd(prediction: torch.Tensor, target: torch.Tensor, stability: float = GMSD_STABILITY) -> torch.Tensor:
    """Per-frame gradient magnitude similarity deviation (Xue et al. 2014), lower is better: the
    standard deviation over positions of ``(2 g_p g_t + c) / (g_p^2 + g_t^2 + c)``, where ``g`` is the
    Prewitt gradient magnitude of the luma in [0, 255] and ``c`` = 170. Identical frames score 0; a
    blurred frame loses gradients where the real one has them, a misplaced edge has them in the
    wrong place, and either spreads the similarity map. The whole frame is used (the status bar is
    part of what a model must draw), without the paper's 2x downsampling: our frames are small."""
    _check_pair("gmsd", prediction, target)
    predicted, real = _gradient_magnitude(_luminance(prediction)), _gradient_magnitude(_luminance(target))
    similarity = (2 * predicted * real + stability) / (predicted**2 + real**2 + stability)
    return similarity.flatten(1).std(1, unbiased=False).float()


# ----------------------------------------------------------------------------------------------
# LPIPS (optional) and the untrained stand-in that tests its plumbing


class LpipsMetric:
    """A learned perceptual distance (lower is better) on pixels in [-1, 1], computed on the device of
    its network (the GPU when evaluate.py uses one). ``name`` is the field it is reported under:
    ``lpips`` for the real LPIPS, ``random_backbone_distance`` for the untrained stand-in."""

    def __init__(self, model: torch.nn.Module, name: str = "lpips") -> None:
        self.model = model
        self.name = name

    @torch.no_grad()
    def __call__(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model(prediction.float().clamp(-1, 1).to(device), target.float().to(device)).flatten().cpu()


def alexnet_weights_path() -> Path:
    """Where torchvision keeps (and LPIPS looks for) the ImageNet AlexNet weights: the torch hub cache
    (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS_FILE


def load_lpips(device: str | torch.device = "cpu") -> tuple[LpipsMetric | None, str]:
    """``(metric, "")`` when LPIPS can run here, else ``(None, why not)``: the ``lpips`` package (with
    a torchvision that matches the installed torch) and the AlexNet weights in the local torch hub
    cache are needed, because nothing is downloaded at evaluation time."""
    missing = []
    try:
        import lpips
    except ImportError as error:
        lpips = None
        missing.append(f"the lpips package is not installed ({error})")
    weights = alexnet_weights_path()
    if not weights.is_file():
        missing.append(f"the AlexNet weights are not at {weights}")
    if missing:
        return None, "; ".join(missing) + " (see how to install LPIPS in the evaluation docs)"
    try:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            model = lpips.LPIPS(net="alex", verbose=False).eval().to(device)
    except Exception as error:  # a torchvision that does not match torch, corrupt weights, ...
        return None, f"LPIPS could not be loaded: {type(error).__name__}: {error}"
    return LpipsMetric(model), ""


class RandomBackboneDistance(torch.nn.Module):
    """LPIPS's recipe (unit-normalised features of each layer, squared differences, averaged over
    positions, summed over layers) on an UNTRAINED three-layer network with equal layer weights. It
    is NOT LPIPS and means nothing perceptually: it exists so that tests (offline, without the lpips
    package) exercise the optional-metric plumbing of evaluate.py, under its own name."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        widths = (3, 16, 32, 32)
        pairs = zip(widths, widths[1:], strict=False)
        self.layers = torch.nn.ModuleList(torch.nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in pairs)
        with torch.no_grad():
            for layer in self.layers:
                fan_in = layer.weight[0].numel()
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / math.sqrt(fan_in))
                layer.bias.zero_()

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        distance = torch.zeros(prediction.shape[0], device=prediction.device)
        x, y = prediction, target
        for layer in self.layers:
            x, y = F.relu(layer(x)), F.relu(layer(y))
            unit_x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            unit_y = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            distance = distance + (unit_x - unit_y).pow(2).sum(1).flatten(1).mean(1)
        return distance


def random_backbone_distance(device: str | torch.device = "cpu") -> LpipsMetric:
    """The untrained stand-in for LPIPS (see ``RandomBackboneDistance``), reported as ``random_backbone_distance``."""
    return LpipsMetric(RandomBackboneDistance().eval().to(device), name="random_backbone_distance")
