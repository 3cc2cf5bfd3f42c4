"""Fine-tune the autoencoder on recorded game frames (GameNGen section 3.3.1), or train it from scratch.

The paper keeps Stable Diffusion v1.4's VAE encoder frozen, so the latent space the world model
predicts does not move, and fine-tunes only the decoder with an MSE loss against real frames: the
stock decoder smears small details and the HUD. That is the default here: the encoder and its
``quant_conv`` are frozen, ``post_quant_conv`` and the decoder are trained. ``--train_encoder``
trains the whole AutoencoderKL (reconstruction + a small KL term) and is how the ``tiny`` preset gets
its VAE, since there is no pretrained one; it then also measures the latent scaling factor
(1 / std of the latents) and stores it in the VAE's config.

Held-out episodes (a deterministic split by episode id) give the reconstruction PSNR before and
after training, and every ``--validation_steps`` a grid of held-out frames
(truth | stock or initial decoder | current) in ``output_dir/samples`` and the trackers. The result
is ``output_dir/vae`` (``AutoencoderKL.from_pretrained(output_dir, subfolder="vae")``) and
``output_dir/vae_training.json`` (the numbers of the run).

Example (tiny preset, CPU, on a dataset recorded with --frame_size 64x48):

    python finetune_autoencoder.py --preset tiny --train_encoder --dataset_name /tmp/ds \
        --max_train_steps 50 --output_dir /tmp/vae

Paper setting (GPU):

    accelerate launch finetune_autoencoder.py --preset sd14 \
        --pretrained_model_name_or_path CompVis/stable-diffusion-v1-4 --dataset_name USER/vizdoom-e1m1 \
        --train_batch_size 8 --max_train_steps 20000 --mixed_precision bf16 --output_dir outputs/vae-sd14
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import AutoencoderKL
from PIL import Image, ImageDraw

from gamengen.config import PRESETS, ModelConfig, get_config
from gamengen.episodes import EpisodeDataset, open_dataset
from gamengen.files import atomic_path, write_json_atomic
from gamengen.help_format import HelpFormatter
from gamengen.layout import DatasetError, add_dataset_arguments, columns_from_args
from gamengen.metrics import psnr
from gamengen.model import ModelLoadError
from gamengen.run_folder import UsageError, check_run_dir
from gamengen.samplers import FrameDataset, LocalShuffleSampler
from gamengen.training import (
    Hooks,
    LoopOptions,
    TrainingRun,
    add_run_arguments,
    make_accelerator,
    make_lr_scheduler,
    push_to_hub,
    run_trainer,
    train,
)
from gamengen.vae import (
    build_vae,
    check_vae,
    decode_latents,
    encode_frames,
    is_lossless,
    load_vae,
    pad_frames,
    save_vae,
    tensor_to_frames,
    unpad_frames,
)

SUMMARY_FILE = "vae_training.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument(
        "--preset", choices=sorted(PRESETS), default="sd14", help="frame geometry and VAE size (gamengen/config.py)"
    )
    model.add_argument(
        "--pretrained_model_name_or_path",
        default=None,
        help="Hub id or local folder with a vae/ subfolder (default: the preset's, CompVis/stable-diffusion-v1-4 for "
        "sd14; the tiny preset has none)",
    )
    model.add_argument(
        "--hf_model_folder",
        dest="pretrained_model_name_or_path",
        default=argparse.SUPPRESS,
        help="the same as --pretrained_model_name_or_path (the seed repository's name for it)",
    )
    model.add_argument("--revision", default=None, help="revision of a Hub model")
    model.add_argument(
        "--train_encoder",
        action="store_true",
        help="train the whole VAE (from scratch when there is no pretrained one); default: decoder only",
    )
    data = parser.add_argument_group("data")
    add_dataset_arguments(data)
    data.add_argument(
        "--holdout_fraction",
        type=float,
        default=0.1,
        help="fraction of episodes held out for evaluation (at least one)",
    )
    data.add_argument(
        "--num_validation_frames", type=int, default=64, help="held-out frames (evenly spaced) the PSNR is measured on"
    )
    data.add_argument(
        "--num_validation_images", type=int, default=4, help="held-out frames shown in each reconstruction grid"
    )
    data.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=0,
        help="DataLoader worker processes (0: load in the main process)",
    )
    train = parser.add_argument_group("training")
    train.add_argument(
        "--output_dir", default="outputs/autoencoder", help="where vae/, checkpoints, samples and logs go"
    )
    train.add_argument(
        "--seed", type=int, default=0, help="seed of the initialisation (tiny), data order and posterior samples"
    )
    train.add_argument("--train_batch_size", type=int, default=16, help="frames per device per step")
    train.add_argument(
        "--max_train_steps",
        type=int,
        default=2000,
        help="total optimisation steps (a resumed run counts from its checkpoint)",
    )
    train.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="recompute activations in the backward pass to save memory",
    )
    train.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help="AdamW learning rate (default: 1e-4 decoder-only, 1e-3 with --train_encoder)",
    )
    train.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping norm")
    train.add_argument(
        "--kl_weight",
        type=float,
        default=1e-6,
        help="--train_encoder: weight of the KL term (summed over latent elements, mean over frames)",
    )
    train.add_argument(
        "--lpips_weight",
        type=float,
        default=0.0,
        help="weight of an LPIPS term (needs the lpips package and its weights; the paper uses MSE only)",
    )
    train.add_argument(
        "--edge_weight",
        type=float,
        default=0.0,
        help="weight of an edge term: the L1 distance between the horizontal and vertical pixel differences of the "
        "reconstruction and the frame (MSE alone blurs edges; docs/research_log.md#the-autoencoders-edges)",
    )
    train.add_argument(
        "--posterior_noise",
        type=float,
        default=1.0,
        help="the decoder is trained on mean + this x std x noise of the encoder's posterior (1: a posterior "
        "sample; 0: its mean, the latent the world model sees; docs/research_log.md#the-autoencoders-edges)",
    )
    train.add_argument(
        "--adversarial_weight",
        type=float,
        default=0.0,
        help="weight of a patch discriminator's hinge loss (the adversarial term Stable Diffusion's VAE was trained "
        "with; docs/research_log.md#the-autoencoders-edges); the discriminator trains alongside, with the same "
        "learning rate",
    )
    train.add_argument(
        "--adversarial_start",
        type=int,
        default=0,
        help="the step from which the adversarial term (and the discriminator's training) is on",
    )
    train.add_argument(
        "--validation_steps",
        type=int,
        default=250,
        help="log held-out PSNR and a reconstruction grid every this many steps",
    )
    add_run_arguments(
        train,
        parser.add_argument_group("logging and hub"),
        checkpointing_steps=500,
        pushed="output_dir/vae and the run summary",
    )
    args = parser.parse_args(argv)
    for name in (
        "train_batch_size",
        "max_train_steps",
        "gradient_accumulation_steps",
        "checkpointing_steps",
        "validation_steps",
        "num_validation_frames",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if not 0.0 < args.holdout_fraction < 1.0:
        parser.error("--holdout_fraction must be in (0, 1)")
    if args.learning_rate is None:
        args.learning_rate = 1e-3 if args.train_encoder else 1e-4
    return args


# ----------------------------------------------------------------------------------------------
# Model pieces


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


# ----------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> dict[str, Any]:
    output_dir = Path(args.output_dir)
    check_run_dir(output_dir, resuming=args.resume_from_checkpoint is not None, results=["vae"])
    accelerator = make_accelerator(args, output_dir)
    set_seed(args.seed)
    config = get_config(args.preset)
    if is_lossless(config):
        return write_lossless_autoencoder(args, config, accelerator, output_dir)

    # Data: recorded episodes, a held-out split by episode id, a fixed set of held-out frames; and the model.
    with accelerator.main_process_first():  # a Hub dataset or VAE is downloaded once, by the main process
        train_episodes, heldout_episodes = load_episodes(args, config, accelerator)
        vae, pretrained = load_or_build_vae(args, config)

    # Model (loaded above): the pretrained VAE (a Hub id or a local folder, one code path), or a fresh one.
    vae.to(accelerator.device)
    trainable = set_trainable(vae, args.train_encoder)
    if args.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    accelerator.print(
        f"model: {'pretrained ' + str(pretrained) if pretrained else 'new ' + config.preset + ' VAE'}; "
        f"training {'whole VAE' if args.train_encoder else 'decoder only'} "
        f"({sum(p.numel() for p in trainable) / 1e6:.2f}M of {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M "
        "parameters)"
    )

    # Before any training (and before a checkpoint is loaded): the reference for PSNR and images.
    validation = HeldOutReconstructions(args, heldout_episodes, vae, config, accelerator, pretrained is not None)
    accelerator.print(
        f"held-out PSNR before training: {validation.psnr_before:.2f} dB ({len(validation.pixels)} frames)"
    )

    perceptual = perceptual_loss_network(args.lpips_weight, accelerator.device)
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    lr_scheduler = make_lr_scheduler(args, optimizer, accelerator)
    train_dataloader = torch.utils.data.DataLoader(
        FrameDataset(train_episodes),
        batch_size=args.train_batch_size,
        sampler=LocalShuffleSampler(len(train_episodes), seed=args.seed),
        num_workers=args.dataloader_num_workers,
        drop_last=False,
    )
    model = Reconstruction(vae, config, args.train_encoder, args.posterior_noise)
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, lr_scheduler
    )
    vae = accelerator.unwrap_model(model).vae
    adversary = None
    if args.adversarial_weight > 0:  # prepared too, so checkpoints hold the discriminator and its optimizer
        discriminator = PatchDiscriminator()
        discriminator_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=args.learning_rate)
        discriminator, discriminator_optimizer = accelerator.prepare(discriminator, discriminator_optimizer)
        adversary = Adversary(
            discriminator, discriminator_optimizer, accelerator, args.adversarial_weight, args.adversarial_start
        )

    def loss_of_batch(pixels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = (args.kl_weight, args.lpips_weight, perceptual, args.edge_weight, adversary)
        return reconstruction_loss(model, pixels, *terms)

    options = LoopOptions.from_args(args, project="finetune_autoencoder")
    hooks = Hooks(validate=validation, after_step=adversary.after_step if adversary is not None else None)
    run = train(accelerator, options, model, optimizer, lr_scheduler, train_dataloader, loss_of_batch, hooks)

    summary: dict[str, Any] = {}
    if accelerator.is_main_process:
        if args.train_encoder:
            vae.register_to_config(
                scaling_factor=measure_scaling_factor(vae, train_episodes, config, accelerator.device)
            )
        psnr_after = validation(run.step)  # with the final weights (and scaling factor)
        vae_dir = save_vae(vae, output_dir)
        summary = {
            "preset": config.preset,
            "mode": "train_encoder" if args.train_encoder else "decoder_only",
            "pretrained_model_name_or_path": pretrained,
            "dataset_name": str(args.dataset_name),
            "train_episodes": len(train_episodes.episodes),
            "train_frames": len(train_episodes),
            "heldout_episodes": heldout_episodes.episode_ids,
            "heldout_frames_evaluated": len(validation.pixels),
            "global_step": run.step,
            "steps_this_run": run.steps_this_run,
            "train_batch_size": args.train_batch_size,
            "steps_per_second": run.steps_per_second,
            "heldout_psnr_before": validation.psnr_before,
            "heldout_psnr_after": psnr_after,
            "scaling_factor": float(vae.config.scaling_factor),
            "device": str(accelerator.device),
        }
        write_json_atomic(output_dir / SUMMARY_FILE, summary, indent=2)
        print_summary(summary, run, vae_dir, grid_path(output_dir, run.step))
        if args.push_to_hub:
            push_to_hub(args, output_dir, ["vae/*", SUMMARY_FILE], f"VAE after {run.step} steps")
    accelerator.end_training()
    return summary


def write_lossless_autoencoder(
    args: argparse.Namespace, config: ModelConfig, accelerator: Accelerator, output_dir: Path
) -> dict[str, Any]:
    """The space-to-depth preset's autoencoder: nothing to train (it is exact), only its scaling factor to measure
    on the training frames; written as ``output_dir/vae`` like a trained VAE, so every later step reads it alike."""
    summary: dict[str, Any] = {}
    if accelerator.is_main_process:
        train_episodes, heldout_episodes = load_episodes(args, config, accelerator)
        vae = build_vae(config)
        vae.register_to_config(scaling_factor=measure_scaling_factor(vae, train_episodes, config, torch.device("cpu")))
        vae_dir = save_vae(vae, output_dir)
        summary = {
            "preset": config.preset,
            "mode": "lossless",
            "pretrained_model_name_or_path": None,
            "dataset_name": str(args.dataset_name),
            "train_episodes": len(train_episodes.episodes),
            "train_frames": len(train_episodes),
            "heldout_episodes": heldout_episodes.episode_ids,
            "global_step": 0,
            "heldout_psnr_after": None,  # exact: decoding gives back the frame
            "scaling_factor": float(vae.config.scaling_factor),
        }
        write_json_atomic(output_dir / SUMMARY_FILE, summary, indent=2)
        print(
            f"the {config.preset!r} preset's autoencoder is lossless (space to depth, factor "
            f"{vae.config.factor}, latents {'x'.join(map(str, config.latent_shape))}): nothing to train; "
            f"latent scaling factor {vae.config.scaling_factor:.5f}; saved {vae_dir}"
        )
        if args.push_to_hub:
            push_to_hub(args, output_dir, ["vae/*", SUMMARY_FILE], "lossless space-to-depth autoencoder")
    accelerator.end_training()
    return summary


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


def evenly_spaced(length: int, count: int) -> list[int]:
    """Up to ``count`` indices spread evenly over ``range(length)``, first and last included."""
    return [int(i) for i in np.unique(np.linspace(0, length - 1, min(count, length)).round().astype(int))]


def print_summary(summary: dict[str, Any], run: TrainingRun, vae_dir: Path, grid: Path) -> None:
    rate = f", {summary['steps_per_second']:.2f} steps/s" if summary["steps_per_second"] else ""
    print(
        f"trained {run.steps_this_run} steps (step {run.start_step} -> {run.step}{rate}); "
        f"latent scaling factor {summary['scaling_factor']:.5f}"
    )
    print(
        f"held-out PSNR: before {summary['heldout_psnr_before']:.2f} dB -> "
        f"after {summary['heldout_psnr_after']:.2f} dB "
        f"({summary['heldout_frames_evaluated']} frames of {len(summary['heldout_episodes'])} held-out episodes)"
    )
    loading = f"AutoencoderKL.from_pretrained({str(vae_dir.parent)!r}, subfolder='vae')"
    print(f"saved {vae_dir} ({loading}); reconstructions: {grid}")


if __name__ == "__main__":
    run_trainer(main, parse_args, (DatasetError, ModelLoadError), error_code=1)
