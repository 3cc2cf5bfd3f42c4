"""What ``finetune_autoencoder.py`` trains and measures (GameNGen section 3.3.1): the recorded episodes split into
training and held-out ones, the VAE to train, the objective (MSE, and the optional KL, LPIPS, edge and adversarial
terms), and the held-out reconstructions (PSNR and the truth | reference | current grid).

The paper fine-tunes only the decoder, so the latent space the world model predicts does not move
(``set_trainable``); training the whole VAE is how a preset without a pretrained one gets its VAE.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL
from PIL import Image, ImageDraw

from gamengen.config import ModelConfig
from gamengen.episodes import EpisodeDataset, open_dataset
from gamengen.errors import DatasetError, UsageError
from gamengen.files import atomic_path
from gamengen.layout import columns_from_args
from gamengen.metrics import psnr
from gamengen.samplers import FrameDataset
from gamengen.vae import (
    build_vae,
    check_vae,
    decode_latents,
    encode_frames,
    load_vae,
    pad_frames,
    tensor_to_frames,
    unpad_frames,
)

# ----------------------------------------------------------------------------------------------
# Data and the model to train


def load_episodes(
    args: argparse.Namespace, config: ModelConfig, accelerator: Accelerator
) -> tuple[EpisodeDataset, EpisodeDataset]:
    """The recorded episodes, split by episode id into (training, held out)."""
    columns = columns_from_args(args)
    dataset = open_dataset(args.dataset_name, columns=columns, cache_dir=args.cache_dir, cache_row_groups=16)
    if (dataset.frame_width, dataset.frame_height) != (config.frame_width, config.frame_height):
        size = f"{config.frame_width}x{config.frame_height}"
        raise DatasetError(
            f"the dataset's frames are {dataset.frame_width}x{dataset.frame_height}, the {config.preset!r} preset "
            f"expects {size}: record with --frame_size {size} or pick the matching --preset"
        )
    train_episodes, heldout_episodes = dataset.split(args.holdout_fraction)
    accelerator.print(
        f"dataset: {dataset}; training on {len(train_episodes.episodes)} episodes ({len(train_episodes)} frames), "
        f"{len(heldout_episodes.episodes)} held out"
    )
    return train_episodes, heldout_episodes


def load_or_build_vae(args: argparse.Namespace, config: ModelConfig) -> tuple[AutoencoderKL, str | None]:
    """(the VAE to train, where its weights came from: None for a new one)."""
    pretrained = args.pretrained_model_name_or_path or config.pretrained_model_name_or_path
    if pretrained:
        vae = load_vae(pretrained, revision=args.revision, cache_dir=args.cache_dir)
    elif args.train_encoder:
        vae = build_vae(config)
    else:
        raise UsageError(
            f"the {config.preset!r} preset has no pretrained VAE: train one with --train_encoder, "
            "or pass --pretrained_model_name_or_path (a folder with vae/)"
        )
    check_vae(vae, config)
    return vae, pretrained


# ----------------------------------------------------------------------------------------------
# The trained module and its objective


class Reconstruction(torch.nn.Module):
    """The trained module: frames -> (reconstruction, KL per frame). With the encoder frozen the
    latents are computed without a graph. The decoder sees ``mean + posterior_noise x std x eps``: at 1 (the
    default) a posterior sample, so it learns to decode the neighbourhood of each latent, not only its mean
    (the world model's predictions are not exact); at 0 the mean, which the world model is trained on."""

    def __init__(
        self, vae: AutoencoderKL, config: ModelConfig, train_encoder: bool, posterior_noise: float = 1.0
    ) -> None:
        super().__init__()
        self.vae = vae
        self.config = config
        self.train_encoder = train_encoder
        self.posterior_noise = posterior_noise

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(self.train_encoder and torch.is_grad_enabled()):
            posterior = self.vae.encode(pad_frames(pixels, self.config)).latent_dist
            latents = posterior.mean
            if self.posterior_noise > 0:
                noise = torch.randn_like(posterior.std)
                latents = latents + self.posterior_noise * posterior.std * noise
        reconstruction = unpad_frames(self.vae.decode(latents).sample, self.config)
        kl = posterior.kl() if self.train_encoder else torch.zeros(len(pixels), device=pixels.device)
        return reconstruction, kl


def set_trainable(vae: AutoencoderKL, train_encoder: bool) -> list[torch.nn.Parameter]:
    """Decoder-only (paper): everything that defines the latent space (encoder, quant_conv) is frozen."""
    vae.requires_grad_(train_encoder)
    if not train_encoder:
        vae.decoder.requires_grad_(True)
        if vae.post_quant_conv is not None:
            vae.post_quant_conv.requires_grad_(True)
    return [p for p in vae.parameters() if p.requires_grad]


def perceptual_loss_network(weight: float, device: torch.device) -> torch.nn.Module | None:
    """The LPIPS network of the ``--lpips_weight`` loss term (None when the weight is 0)."""
    if weight <= 0:
        return None
    try:
        import lpips  # optional: not in the requirements, and it fetches VGG weights on first use
    except ImportError as error:
        raise UsageError(
            "--lpips_weight needs the lpips package (pip install lpips) and access to its pretrained weights"
        ) from error
    model = lpips.LPIPS(net="vgg", verbose=False).to(device).eval()
    model.requires_grad_(False)
    return model


def edge_loss(reconstruction: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance between the horizontal and the vertical neighbour differences of two images: zero only
    when every edge has the frame's height, so unlike MSE it does not let a blur pass for the mean of the sharp
    frames it could be."""
    loss = reconstruction.new_zeros(())
    for axis in (-1, -2):
        loss = loss + F.l1_loss(reconstruction.diff(dim=axis), pixels.diff(dim=axis))
    return loss


class PatchDiscriminator(torch.nn.Module):
    """Tells real frames from reconstructions patch by patch: one logit per cell of a quarter-resolution grid,
    each seeing about 14x14 pixels (a small PatchGAN). Texture a blurred decoder leaves out is what it sees."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        wide = 2 * channels
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(3, channels, 4, stride=2, padding=1),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(channels, wide, 4, stride=2, padding=1),
            torch.nn.GroupNorm(8, wide),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(wide, wide, 3, padding=1),
            torch.nn.GroupNorm(8, wide),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(wide, 1, 3, padding=1),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.layers(pixels)


class Adversary:
    """The ``--adversarial_weight`` term, hinge losses: from ``start`` on, every micro-batch first takes one
    discriminator step on (real frames, detached reconstructions), then charges the reconstruction
    ``weight x -D(reconstruction)``. ``step`` follows the training loop (Hooks.after_step)."""

    def __init__(self, discriminator, optimizer, accelerator: Accelerator, weight: float, start: int) -> None:
        self.discriminator, self.optimizer, self.accelerator = discriminator, optimizer, accelerator
        self.weight, self.start, self.step = weight, start, 0

    def after_step(self, step: int) -> None:
        self.step = step

    def generator_loss(self, reconstruction: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor | None:
        if self.step < self.start:
            return None
        self.discriminator.requires_grad_(True)
        real, fake = self.discriminator(pixels), self.discriminator(reconstruction.detach())
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
        self.optimizer.step()
        self.discriminator.requires_grad_(False)  # the generator's term trains the VAE only
        return -self.weight * self.discriminator(reconstruction).float().mean()


def reconstruction_loss(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    kl_weight: float,
    lpips_weight: float,
    perceptual: torch.nn.Module | None,
    edge_weight: float = 0.0,
    adversary: Adversary | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The objective on a batch of frames: MSE (+ ``kl_weight`` x KL, + ``lpips_weight`` x LPIPS, +
    ``edge_weight`` x the edge term, + the adversarial term), and the MSE alone (logged)."""
    reconstruction, kl = model(pixels)
    reconstruction, pixels = reconstruction.float(), pixels.float()
    mse = F.mse_loss(reconstruction, pixels)
    loss = mse + kl_weight * kl.float().mean()
    if perceptual is not None:
        loss = loss + lpips_weight * perceptual(reconstruction, pixels).mean()
    if edge_weight > 0:
        loss = loss + edge_weight * edge_loss(reconstruction, pixels)
    adversarial = adversary.generator_loss(reconstruction, pixels) if adversary is not None else None
    if adversarial is not None:
        loss = loss + adversarial
    return loss, {"mse": mse}


# ----------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def reconstruct(
    vae: AutoencoderKL, pixels: torch.Tensor, config: ModelConfig, accelerator: Accelerator, batch_size: int
) -> torch.Tensor:
    """Deterministic reconstructions (posterior mean) of unpadded pixels, clamped to [-1, 1], on the CPU."""
    was_training = vae.training
    vae.eval()
    outputs = []
    with accelerator.autocast():
        for batch in pixels.split(batch_size):
            latents = encode_frames(vae, batch.to(accelerator.device), config)
            outputs.append(decode_latents(vae, latents, config).float().clamp(-1, 1).cpu())
    vae.train(was_training)
    return torch.cat(outputs)


@torch.no_grad()
def measure_scaling_factor(
    vae: AutoencoderKL, dataset: EpisodeDataset, config: ModelConfig, device: torch.device, num_frames: int = 256
) -> float:
    """1 / std of the (unscaled) latents of training frames, so the diffusion model sees unit variance."""
    indices = np.unique(np.linspace(0, len(dataset) - 1, min(num_frames, len(dataset))).round().astype(int))
    frames = FrameDataset(dataset)
    pixels = torch.stack([frames[int(i)] for i in indices])
    latents = [vae.encode(pad_frames(batch.to(device), config)).latent_dist.mode() for batch in pixels.split(32)]
    return float(1.0 / torch.cat(latents).float().std())


def reconstruction_grid(columns: list[torch.Tensor], titles: list[str]) -> Image.Image:
    """One row per frame, one column per version (pixels in [-1, 1]), a title above each column."""
    frames = [tensor_to_frames(column) for column in columns]
    count, height, width = frames[0].shape[:3]
    scale = max(1, 192 // width)  # blow tiny frames up (nearest) so details stay visible
    tile_w, tile_h, header = width * scale, height * scale, 14
    grid = Image.new("RGB", (tile_w * len(columns), header + tile_h * count))
    draw = ImageDraw.Draw(grid)
    for col, (title, column) in enumerate(zip(titles, frames, strict=True)):
        draw.text((col * tile_w + 3, 1), title, fill=(255, 255, 0))
        for row in range(count):
            tile = Image.fromarray(column[row]).resize((tile_w, tile_h), Image.NEAREST)
            grid.paste(tile, (col * tile_w, header + row * tile_h))
    return grid


class HeldOutReconstructions:
    """Held-out frames (``--num_validation_frames``, evenly spaced) and their reconstructions before training:
    calling it with a step logs the current held-out PSNR and a truth | reference | current grid."""

    def __init__(
        self,
        args: argparse.Namespace,
        heldout: EpisodeDataset,
        vae: AutoencoderKL,
        config: ModelConfig,
        accelerator: Accelerator,
        pretrained: bool,
    ) -> None:
        frames = FrameDataset(heldout)
        self.pixels = torch.stack([frames[i] for i in evenly_spaced(len(frames), args.num_validation_frames)])
        self.shown = evenly_spaced(len(self.pixels), args.num_validation_images)  # rows of the grid
        self.vae, self.config, self.accelerator, self.batch_size = vae, config, accelerator, args.train_batch_size
        self.output_dir = Path(args.output_dir)
        self.reference = reconstruct(vae, self.pixels, config, accelerator, self.batch_size)
        self.psnr_before = float(psnr(self.reference, self.pixels).mean())
        self.titles = ["truth", *(("stock decoder", "fine-tuned") if pretrained else ("initial", "trained"))]

    def __call__(self, step: int) -> float:
        current = reconstruct(self.vae, self.pixels, self.config, self.accelerator, self.batch_size)
        score = float(psnr(current, self.pixels).mean())
        self.accelerator.log({"heldout_psnr": score}, step=step)
        columns = [self.pixels[self.shown], self.reference[self.shown], current[self.shown]]
        log_grid(self.accelerator, reconstruction_grid(columns, self.titles), self.output_dir, step)
        return score


def grid_path(output_dir: Path, step: int) -> Path:
    return output_dir / "samples" / f"reconstructions-{step:06d}.png"


def log_grid(accelerator: Accelerator, grid: Image.Image, output_dir: Path, step: int) -> Path:
    """Save a reconstruction grid to output_dir/samples and show it in the trackers."""
    path = grid_path(output_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("reconstructions", np.asarray(grid), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"reconstructions": wandb.Image(grid, caption="truth | reference | current")}, step=step)
    return path


def evenly_spaced(length: int, count: int) -> list[int]:
    """Up to ``count`` indices spread evenly over ``range(length)``, first and last included."""
    return [int(i) for i in np.unique(np.linspace(0, length - 1, min(count, length)).round().astype(int))]
