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

The data split, the objective and the held-out reconstructions live in ``gamengen/autoencoder_training.py``, the
training loop in ``gamengen.training.train``.

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

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import AutoencoderKL

from gamengen.autoencoder_training import (
    Adversary,
    HeldOutReconstructions,
    PatchDiscriminator,
    Reconstruction,
    grid_path,
    load_episodes,
    load_or_build_vae,
    measure_scaling_factor,
    perceptual_loss_network,
    reconstruction_loss,
    set_trainable,
)
from gamengen.config import PRESETS, ModelConfig, get_config
from gamengen.episodes import EpisodeDataset
from gamengen.files import write_json_atomic
from gamengen.help_format import HelpFormatter
from gamengen.layout import DatasetError, add_dataset_arguments
from gamengen.model import ModelLoadError
from gamengen.run_folder import check_run_dir
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
from gamengen.vae import build_vae, is_lossless, save_vae

SUMMARY_FILE = "vae_training.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_model_arguments(parser.add_argument_group("model"))
    add_data_arguments(parser.add_argument_group("data"))
    train = parser.add_argument_group("training")
    add_training_arguments(train)
    add_objective_arguments(train)
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
    return checked_args(parser, parser.parse_args(argv))


def add_model_arguments(model: argparse._ArgumentGroup) -> None:
    """Which autoencoder: the preset, the pretrained weights, and whether the encoder trains too."""
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


def add_data_arguments(data: argparse._ArgumentGroup) -> None:
    """The recorded dataset, its held-out split and the frames measured on it."""
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


def add_training_arguments(train: argparse._ArgumentGroup) -> None:
    """Where the run goes, its length, batch and optimiser."""
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


def add_objective_arguments(train: argparse._ArgumentGroup) -> None:
    """The loss terms beside the MSE (KL, LPIPS, edges, the adversarial term) and the decoder's input noise."""
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


def checked_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Refuse values out of range (as argparse errors) and fill in the learning rate's default."""
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
    trainable = make_trainable(args, vae, config, pretrained, accelerator)

    # Before any training (and before a checkpoint is loaded): the reference for PSNR and images.
    validation = HeldOutReconstructions(args, heldout_episodes, vae, config, accelerator, pretrained is not None)
    accelerator.print(
        f"held-out PSNR before training: {validation.psnr_before:.2f} dB ({len(validation.pixels)} frames)"
    )

    # The objective's parts, the optimiser and the data order, prepared by accelerate.
    perceptual = perceptual_loss_network(args.lpips_weight, accelerator.device)
    model, optimizer, lr_scheduler, train_dataloader = prepare_training(
        args, vae, config, trainable, train_episodes, accelerator
    )
    vae = accelerator.unwrap_model(model).vae
    adversary = make_adversary(args, accelerator)

    def loss_of_batch(pixels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = (args.kl_weight, args.lpips_weight, perceptual, args.edge_weight, adversary)
        return reconstruction_loss(model, pixels, *terms)

    options = LoopOptions.from_args(args, project="finetune_autoencoder")
    hooks = Hooks(validate=validation, after_step=adversary.after_step if adversary is not None else None)
    run = train(accelerator, options, model, optimizer, lr_scheduler, train_dataloader, loss_of_batch, hooks)

    summary: dict[str, Any] = {}
    if accelerator.is_main_process:
        summary = save_results(
            args, run, vae, config, validation, (train_episodes, heldout_episodes), pretrained, accelerator
        )
    accelerator.end_training()
    return summary


def make_trainable(
    args: argparse.Namespace, vae: AutoencoderKL, config: ModelConfig, pretrained: str | None, accelerator: Accelerator
) -> list[torch.nn.Parameter]:
    """The VAE loaded or built (a Hub id or a local folder, one code path; or a fresh one) on the device, the
    parameters that train (the decoder's, or all with --train_encoder)."""
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
    return trainable


def prepare_training(
    args: argparse.Namespace,
    vae: AutoencoderKL,
    config: ModelConfig,
    trainable: list[torch.nn.Parameter],
    train_episodes: EpisodeDataset,
    accelerator: Accelerator,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any, torch.utils.data.DataLoader]:
    """(the trained module, its optimiser, the learning-rate schedule, the training frames), prepared by accelerate."""
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
    return model, optimizer, lr_scheduler, train_dataloader


def make_adversary(args: argparse.Namespace, accelerator: Accelerator) -> Adversary | None:
    """The --adversarial_weight term's discriminator and its optimiser (None without the term)."""
    if args.adversarial_weight <= 0:
        return None
    # prepared too, so checkpoints hold the discriminator and its optimizer
    discriminator = PatchDiscriminator()
    discriminator_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=args.learning_rate)
    discriminator, discriminator_optimizer = accelerator.prepare(discriminator, discriminator_optimizer)
    return Adversary(
        discriminator, discriminator_optimizer, accelerator, args.adversarial_weight, args.adversarial_start
    )


def save_results(
    args: argparse.Namespace,
    run: TrainingRun,
    vae: AutoencoderKL,
    config: ModelConfig,
    validation: HeldOutReconstructions,
    episodes: tuple[EpisodeDataset, EpisodeDataset],
    pretrained: str | None,
    accelerator: Accelerator,
) -> dict[str, Any]:
    """After training (main process): the scaling factor measured (--train_encoder), the held-out PSNR, output_dir/vae
    and the run summary written, printed and pushed."""
    output_dir = Path(args.output_dir)
    train_episodes, heldout_episodes = episodes
    if args.train_encoder:
        vae.register_to_config(scaling_factor=measure_scaling_factor(vae, train_episodes, config, accelerator.device))
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
