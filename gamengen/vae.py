"""The VAE of the checkpoint contract: build, load, save and check it, and the conventions every script shares.

- pixels are float tensors ``(..., 3, H, W)`` in [-1, 1] (``frames_to_tensor`` / ``tensor_to_frames``
  convert from/to uint8 ``(..., H, W, 3)`` frames as recorded);
- frames are padded to the preset's padded size with black rows at the bottom (and black columns at
  the right) before the VAE sees them, and cropped back after decoding (``pad_frames`` /
  ``unpad_frames``);
- latents given to the diffusion model are the VAE posterior times ``vae.config.scaling_factor``
  (``encode_frames`` / ``decode_latents`` apply padding and scaling in one place);
- a checkpoint is a folder (or Hub repo) with a ``vae/`` subfolder written by ``save_pretrained`` of an
  ``AutoencoderKL`` or, for the ``tiny-s2d`` preset, of a ``SpaceToDepthAutoencoder``: the lossless "autoencoder"
  that moves each 4x4 patch of pixels into 48 channels of one latent cell (nothing to train, nothing lost;
  docs/research_log.md#a-lossless-autoencoder-for-the-tiny-preset).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_outputs import AutoencoderKLOutput

from gamengen.config import ModelConfig, autoencoder_scale_factor
from gamengen.files import atomic_path
from gamengen.locations import looks_local, missing_folder, neither_folder_nor_hub
from gamengen.model import ModelLoadError, read_weights

VAE_SUBFOLDER = "vae"
# Padding value in [-1, 1] pixel space: black.
PAD_VALUE = -1.0


class ExactLatent:
    """The "posterior" of a lossless autoencoder: one point, so its mode and its samples are the latent itself."""

    def __init__(self, latent: torch.Tensor) -> None:
        self.latent = latent

    def mode(self) -> torch.Tensor:
        return self.latent

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.latent


class SpaceToDepthAutoencoder(ModelMixin, ConfigMixin):
    """A lossless "autoencoder" with the AutoencoderKL interface the scripts use: ``encode`` moves each
    ``factor x factor`` patch of pixels into ``3 * factor**2`` channels of one latent cell (``pixel_unshuffle``),
    ``decode`` puts them back (``pixel_shuffle``), exactly. It has no weights to train; ``scaling_factor``
    (1 / std of the encoded frames, measured on the dataset) gives the diffusion model unit-variance latents.
    Latents of a 64x48 frame at factor 4: 48x12x16, the tiny UNet's grid."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        factor: int = 4,
        in_channels: int = 3,
        out_channels: int = 3,
        latent_channels: int = 48,
        scaling_factor: float = 1.0,
    ) -> None:
        super().__init__()
        if in_channels != out_channels or latent_channels != in_channels * factor**2:
            raise ValueError(
                f"a space-to-depth autoencoder of factor {factor} maps {in_channels} channels to "
                f"{in_channels * factor**2} latent channels and back, not {latent_channels} -> {out_channels}"
            )
        # Holds the module's dtype and device (it has no parameters); saved so that a vae/ folder has weights.
        self.register_buffer("unit", torch.ones(()))

    def encode(self, pixels: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput:
        latent = F.pixel_unshuffle(pixels.to(self.unit.dtype), self.config.factor)
        return AutoencoderKLOutput(latent_dist=ExactLatent(latent)) if return_dict else (ExactLatent(latent),)

    def decode(self, latents: torch.Tensor, return_dict: bool = True) -> DecoderOutput:
        pixels = F.pixel_shuffle(latents.to(self.unit.dtype), self.config.factor)
        return DecoderOutput(sample=pixels) if return_dict else (pixels,)

    def forward(self, pixels: torch.Tensor) -> DecoderOutput:
        return self.decode(self.encode(pixels).latent_dist.mode())


AUTOENCODER_CLASSES = {cls.__name__: cls for cls in (AutoencoderKL, SpaceToDepthAutoencoder)}


def is_lossless(config: ModelConfig) -> bool:
    """Whether the preset's autoencoder is the space-to-depth one (nothing to train)."""
    return config.vae.get("_class_name") == SpaceToDepthAutoencoder.__name__


def build_vae(config: ModelConfig) -> AutoencoderKL | SpaceToDepthAutoencoder:
    """An untrained autoencoder of the preset's kind and size (random init for AutoencoderKL; seed torch first)."""
    arguments = {k: v for k, v in config.vae.items() if k != "_class_name"}
    cls = AUTOENCODER_CLASSES[config.vae.get("_class_name", AutoencoderKL.__name__)]
    return cls(**arguments, scaling_factor=config.latent_scaling_factor)


def autoencoder_class(
    name_or_path: str | os.PathLike, subfolder: str = VAE_SUBFOLDER, **hub: str | None
) -> type[AutoencoderKL | SpaceToDepthAutoencoder]:
    """The class that wrote a ``vae/`` folder (its ``_class_name``): AutoencoderKL or SpaceToDepthAutoencoder."""
    name = AutoencoderKL.load_config(str(name_or_path), subfolder=subfolder, **hub).get("_class_name")
    return AUTOENCODER_CLASSES.get(name, AutoencoderKL)


def read_autoencoder(
    root: str | os.PathLike, subfolder: str = VAE_SUBFOLDER, torch_dtype: torch.dtype | None = None, **hub: str | None
) -> AutoencoderKL | SpaceToDepthAutoencoder:
    """``from_pretrained`` of the class that wrote ``root/subfolder``."""
    cls = autoencoder_class(root, subfolder, **hub)
    return cls.from_pretrained(str(root), subfolder=subfolder, torch_dtype=torch_dtype, **hub)


def load_vae(
    pretrained_model_name_or_path: str | os.PathLike,
    subfolder: str = VAE_SUBFOLDER,
    revision: str | None = None,
    torch_dtype: torch.dtype | None = None,
    cache_dir: str | None = None,
) -> AutoencoderKL:
    """Load the ``vae/`` of a checkpoint: a local folder or a Hub repo id (e.g. CompVis/stable-diffusion-v1-4)."""
    if looks_local(pretrained_model_name_or_path):
        root = Path(pretrained_model_name_or_path).expanduser()
        if not root.is_dir():
            raise ModelLoadError(missing_folder("model folder", pretrained_model_name_or_path, "model"))
        if not (root / subfolder / "config.json").is_file():
            hint = ""
            if (root / "config.json").is_file():
                hint = f" It looks like a {subfolder}/ folder itself: pass its parent folder."
            raise ModelLoadError(
                f"{root} has no {subfolder}/ folder with a config.json. A model folder holds {subfolder}/ as written "
                "by "
                "AutoencoderKL.save_pretrained (e.g. the --output_dir of finetune_autoencoder.py, or a diffusers "
                f"Stable Diffusion folder).{hint}"
            )
        return read_weights(root / subfolder, lambda: read_autoencoder(root, subfolder, torch_dtype))
    try:
        return read_autoencoder(
            pretrained_model_name_or_path, subfolder, torch_dtype, revision=revision, cache_dir=cache_dir
        )
    except OSError as error:
        message = neither_folder_nor_hub(pretrained_model_name_or_path, f"model ({subfolder}/)", error)
        raise ModelLoadError(message) from error


def save_vae(vae: AutoencoderKL, output_dir: str | os.PathLike) -> Path:
    """Write ``output_dir/vae`` atomically: a complete new folder replaces the old one, or nothing changes."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / VAE_SUBFOLDER
    with atomic_path(final) as tmp:
        vae.save_pretrained(tmp)
    return final


def vae_scale_factor(vae: AutoencoderKL | SpaceToDepthAutoencoder) -> int:
    """Pixels per latent cell of a VAE (8 for Stable Diffusion's, 4 for the tiny presets')."""
    return autoencoder_scale_factor(vae.config)


def check_vae(vae: AutoencoderKL, config: ModelConfig) -> None:
    """Refuse a VAE whose latent space does not have the preset's shape."""
    problems = []
    kind, wanted = type(vae).__name__, config.vae.get("_class_name", AutoencoderKL.__name__)
    if kind != wanted:
        problems.append(f"it is a {kind}, the preset uses a {wanted}")
    if vae.config.in_channels != 3 or vae.config.out_channels != 3:
        problems.append(f"it maps {vae.config.in_channels} to {vae.config.out_channels} channels, not RGB (3)")
    if vae.config.latent_channels != config.latent_channels:
        problems.append(f"{vae.config.latent_channels} latent channels, the preset has {config.latent_channels}")
    if vae_scale_factor(vae) != config.vae_scale_factor:
        problems.append(f"downsampling factor {vae_scale_factor(vae)}, the preset has {config.vae_scale_factor}")
    if problems:
        raise ModelLoadError(f"the VAE does not fit the {config.preset!r} preset: {'; '.join(problems)}")


# ----------------------------------------------------------------------------------------------
# Pixels, padding, latents


def frames_to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 frames ``(..., H, W, 3)`` -> float pixels ``(..., 3, H, W)`` in [-1, 1]."""
    frames = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    if frames.dtype != torch.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames of shape (..., H, W, 3), got {tuple(frames.shape)} {frames.dtype}")
    return frames.movedim(-1, -3).float().div(127.5).sub(1.0)


def tensor_to_frames(pixels: torch.Tensor) -> np.ndarray:
    """Float pixels ``(..., 3, H, W)`` in [-1, 1] -> uint8 frames ``(..., H, W, 3)`` (clamped, rounded)."""
    pixels = pixels.detach().float().clamp(-1.0, 1.0).add(1.0).mul(127.5).round()
    return pixels.to(torch.uint8).movedim(-3, -1).cpu().numpy()


def pad_frames(pixels: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """``(..., 3, frame_height, frame_width)`` -> ``(..., 3, padded_height, padded_width)``: black
    rows added at the bottom, black columns at the right (``unpad_frames`` crops them off)."""
    height, width = pixels.shape[-2:]
    if (height, width) != (config.frame_height, config.frame_width):
        raise ValueError(
            f"frames are {width}x{height}, the {config.preset!r} preset expects "
            f"{config.frame_width}x{config.frame_height}"
        )
    pad_right, pad_bottom = config.padded_width - width, config.padded_height - height
    if pad_right == 0 and pad_bottom == 0:
        return pixels
    return F.pad(pixels, (0, pad_right, 0, pad_bottom), value=PAD_VALUE)


def unpad_frames(pixels: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Crop padded pixels back to the frame size (the inverse of ``pad_frames``)."""
    height, width = pixels.shape[-2:]
    if (height, width) != (config.padded_height, config.padded_width):
        raise ValueError(
            f"pixels are {width}x{height}, the {config.preset!r} preset pads to "
            f"{config.padded_width}x{config.padded_height}"
        )
    return pixels[..., : config.frame_height, : config.frame_width]


def encode_frames(
    vae: AutoencoderKL,
    pixels: torch.Tensor,
    config: ModelConfig,
    sample: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Unpadded pixels ``(N, 3, H, W)`` -> scaled latents ``(N, C, h, w)`` (posterior mean, or a sample)."""
    posterior = vae.encode(pad_frames(pixels, config).to(vae.dtype)).latent_dist
    latents = posterior.sample(generator=generator) if sample else posterior.mode()
    return latents * vae.config.scaling_factor


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Scaled latents -> unpadded pixels in [-1, 1] (not clamped)."""
    pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return unpad_frames(pixels, config)
