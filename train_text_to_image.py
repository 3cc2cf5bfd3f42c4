"""Train the GameNGen world model: a diffusion UNet that predicts the next frame from past frames and actions.

GameNGen section 3.2: Stable Diffusion v1.4's UNet, its ``conv_in`` widened so that the latents of the
last N frames are concatenated (channel axis) to the noisy latent of the next frame, the text replaced
by one learned embedding token per past action (cross-attention), v-prediction. Two tricks make
autoregressive rollouts stable and guidable (section 3.2.1): the context latents are corrupted with
Gaussian noise of a random level (uniform over 10 buckets in [0, 0.7]; the bucket is embedded and
added to the timestep embedding), and the whole context is dropped 10% of the time, which is the
unconditional branch of classifier-free guidance at inference. Paper settings (``--preset sd14``):
context 64, Adafactor lr 2e-5, batch 128, grad clip 1.0, 700k steps; the preset keeps them but for the optimizer,
fused AdamW on GPUs (``--optimizer adafactor`` is the paper's; docs/gpu.md#training-speed).

Example (tiny preset on a CPU, with latents cached by encode_latents.py):

    python train_text_to_image.py --preset tiny --dataset_name /tmp/ds --latents_dir /tmp/lat \
        --pretrained_vae_model_name_or_path /tmp/vae --max_train_steps 200 --output_dir /tmp/wm

The name follows diffusers' ``examples/text_to_image`` script, whose argument names it keeps.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from gamengen.actions import EngineError
from gamengen.checkpoint import CONFIG_FILE, save_world_model
from gamengen.config import (
    DEFAULT_CONTEXT_LENGTH,
    PREDICTION_TYPES,
    PRESETS,
    WORLD_MODEL_TRAINING_DEFAULTS,
    get_config,
)
from gamengen.ddim import parse_timesteps
from gamengen.diffusion import diffusion_loss
from gamengen.help_format import HelpFormatter
from gamengen.layout import DatasetError, add_dataset_arguments
from gamengen.model import (
    ModelLoadError,
    make_scheduler,
)
from gamengen.optim import OPTIMIZERS, ema_weights, make_ema, make_optimizer
from gamengen.run_folder import check_run_dir
from gamengen.throughput import plan_batches
from gamengen.training import (
    Hooks,
    LoopOptions,
    add_run_arguments,
    make_accelerator,
    make_lr_scheduler,
    push_to_hub,
    run_trainer,
    train,
)
from gamengen.vae import check_vae, load_vae
from gamengen.windows import encode_pixel_windows
from gamengen.world_training import (
    SUMMARY_FILE,
    check_resumable,
    launched_processes,
    load_windows,
    log_validation,
    make_model,
    pick_validation_windows,
    world_model_config,
    write_summary,
)

# What --push_to_hub uploads of output_dir.
HUB_FILES = [
    "unet/*",
    "vae/*",
    "scheduler/*",
    "action_embedding.safetensors",
    CONFIG_FILE,
    "README.md",
    "samples/*",
    SUMMARY_FILE,
]


def by_preset(option: str) -> str:
    """An option's per-preset default, for its help (``gamengen.config.WORLD_MODEL_TRAINING_DEFAULTS``)."""

    def show(value: Any) -> str:
        return {True: "on", False: "off", None: "none"}[value] if isinstance(value, bool | None) else str(value)

    return ", ".join(f"{preset} {show(defaults[option])}" for preset, defaults in WORLD_MODEL_TRAINING_DEFAULTS.items())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_model_arguments(parser.add_argument_group("model"))
    add_sampler_arguments(parser.add_argument_group("sampling stored in the checkpoint"))
    add_data_arguments(parser.add_argument_group("data"))
    train = parser.add_argument_group("training")
    add_training_arguments(train)
    add_run_arguments(
        train, parser.add_argument_group("logging and hub"), checkpointing_steps=1000, pushed="the checkpoint folder"
    )
    add_speed_arguments(parser.add_argument_group("speed (docs/gpu.md#training-speed)"))
    # Left unset, the accumulation is what --total_batch_size needs (plan_batches), so an explicit one is told apart.
    parser.set_defaults(gradient_accumulation_steps=None)
    accumulation = next(a for a in parser._actions if a.dest == "gradient_accumulation_steps")
    accumulation.help = (
        "micro-batches accumulated into one optimisation step (default: as many as --total_batch_size needs, else 1)"
    )
    return checked_args(parser, parser.parse_args(argv))


def add_model_arguments(model: argparse._ArgumentGroup) -> None:
    model.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="sd14",
        help="sd14 (the paper) or tiny (a laptop CPU); gamengen/config.py",
    )
    model.add_argument(
        "--pretrained_model_name_or_path",
        default=None,
        help="Hub id or folder whose unet/ is widened; none: a new UNet "
        f"(default: {by_preset('pretrained_model_name_or_path')})",
    )
    model.add_argument(
        "--pretrained_vae_model_name_or_path",
        default=None,
        help="folder or Hub id with vae/ (finetune_autoencoder.py's --output_dir); default: "
        "--pretrained_model_name_or_path (sd14). Required for tiny",
    )
    model.add_argument("--revision", default=None, help="revision of Hub models")
    model.add_argument(
        "--context_length",
        type=int,
        default=None,
        help=f"past frames/actions in the context (default: {DEFAULT_CONTEXT_LENGTH})",
    )
    model.add_argument("--noise_buckets", type=int, default=10, help="context noise-augmentation levels (paper: 10)")
    model.add_argument(
        "--max_noise_level",
        type=float,
        default=0.7,
        help="largest context noise std (paper: 0.7); 0 disables noise augmentation",
    )
    model.add_argument(
        "--context_dropout",
        type=float,
        default=0.1,
        help="probability of dropping ALL context frames (paper: 0.1; CFG needs it)",
    )
    model.add_argument(
        "--prediction_type",
        choices=PREDICTION_TYPES,
        default="v_prediction",
        help="what the UNet predicts: v_prediction (the paper), epsilon (the noise) or sample (the clean latent, "
        "or its change under --residual)",
    )
    model.add_argument(
        "--clean_residual_base",
        action="store_true",
        help="under --residual, take the change from the CLEAN last context latent at training instead of the "
        "noise-augmented one the UNet sees (docs/research_log.md#residual-parameterisation-precisely)",
    )
    model.add_argument(
        "--action_positions",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add a learned embedding of each action's context slot to its token, so the newest action is "
        f"distinguishable (default: {by_preset('action_positions')})",
    )
    model.add_argument(
        "--action_class",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also feed the newest action through the UNet's class embedding (with the noise bucket), "
        f"reaching every ResNet block (default: {by_preset('action_class')})",
    )
    model.add_argument(
        "--residual",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="generate the change from the last context latent instead of the frame "
        f"(default: {by_preset('residual')}; docs/research_log.md#residual-parameterisation-precisely)",
    )


def add_sampler_arguments(model: argparse._ArgumentGroup) -> None:
    model.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help=f"CFG scale on the context stored in the checkpoint (default: {by_preset('guidance_scale')}; "
        "docs/research_log.md)",
    )
    model.add_argument(
        "--num_inference_steps", type=int, default=4, help="DDIM steps stored in the checkpoint (paper: 4)"
    )
    model.add_argument(
        "--sampler_timesteps",
        default="trailing",
        help="the sampler's timesteps stored in the checkpoint: trailing, karras or a list such as 999,500,150,30 "
        "(gamengen/ddim.py; the engine's --timesteps overrides it)",
    )
    model.add_argument(
        "--sampler_eta",
        type=float,
        default=0.0,
        help="DDIM eta stored in the checkpoint: 0 deterministic, 1 ancestral (the engine's --eta overrides it)",
    )


def add_data_arguments(data: argparse._ArgumentGroup) -> None:
    add_dataset_arguments(data)
    data.add_argument(
        "--latents_dir",
        default=None,
        help="latents cached by encode_latents.py: training then never runs the VAE encoder",
    )
    data.add_argument(
        "--num_actions",
        type=int,
        default=None,
        help="rows of the action embedding, for datasets without action_names metadata (default: the latent cache's, "
        "18 for the seed repository's layout, else the largest action id + 1)",
    )
    data.add_argument(
        "--holdout_fraction",
        type=float,
        default=0.1,
        help="fraction of episodes held out for validation (at least one)",
    )
    data.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes")


def add_training_arguments(train: argparse._ArgumentGroup) -> None:
    train.add_argument(
        "--output_dir",
        default="outputs/world_model",
        help="the checkpoint folder (unet/, vae/, scheduler/, ...) plus checkpoints and samples",
    )
    train.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and noise")
    train.add_argument(
        "--train_batch_size",
        type=int,
        default=None,
        help="windows per device per micro-batch; with --total_batch_size, at most this many (the largest divisor "
        f"of the total's share per device) (default: {by_preset('train_batch_size')})",
    )
    train.add_argument(
        "--max_train_steps",
        type=int,
        default=None,
        help="total optimisation steps (default 700k, the paper's); a resumed run counts from its checkpoint; "
        "wins over --num_train_epochs",
    )
    train.add_argument(
        "--num_train_epochs",
        type=int,
        default=None,
        help="passes over the training windows, when --max_train_steps is not given",
    )
    train.add_argument(
        "--max_train_samples",
        type=int,
        default=None,
        help="train on this many windows only (chosen with --seed; debugging)",
    )
    train.add_argument(
        "--use_cfg",
        action="store_true",
        help="accepted for the seed repository's commands: the context dropout that classifier-free guidance needs "
        "(--context_dropout 0.1, the paper's) is already the default; --context_dropout 0 turns it off",
    )
    train.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="recompute UNet activations in the backward pass to save memory",
    )
    paper = "(sd14: the paper's)"
    optimizer_help = (
        f"default: {by_preset('optimizer')}; adamw is fused when the model is on a GPU; adafactor is the paper's"
    )
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help=optimizer_help)
    learning_rate_help = f"default: {by_preset('learning_rate')} {paper}"
    train.add_argument("--learning_rate", type=float, default=None, help=learning_rate_help)
    train.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping norm (paper: 1.0)")
    train.add_argument(
        "--snr_gamma",
        type=float,
        default=None,
        help="min-SNR loss weighting over timesteps with this gamma (e.g. 5; Hang et al. 2023); default: uniform "
        "(paper)",
    )
    train.add_argument(
        "--lognormal_noise",
        type=float,
        nargs=2,
        default=None,
        metavar=("MEAN", "STD"),
        help="draw the training noise level as EDM does (Karras et al. 2022): log(sigma) ~ N(MEAN, STD), e.g. -1.2 "
        "1.2, mapped to the nearest timestep, instead of uniform timesteps; with v-prediction this is EDM's "
        "preconditioned objective for sigma_data 1 (docs/research_log.md#samplers-and-parameterisations)",
    )
    train.add_argument(
        "--num_threads",
        type=int,
        default=None,
        help=f"torch CPU threads (default: {by_preset('num_threads')}; none: torch's). Measured on 2 busy cores: "
        "default threads 2.3-4.9 samples/s, 1 thread 50 (spin-waiting)",
    )
    train.add_argument(
        "--ema_decay",
        type=float,
        default=None,
        help="keep an exponential moving average of the weights with this decay (diffusers' EMAModel with its "
        "warm-up: the decay at step n is min(D, 1 - (1 + n)^-0.75)), validate and save it instead of the last "
        "weights; the quickstart uses 0.99; default: none (the paper's)",
    )
    train.add_argument(
        "--validation_steps",
        type=int,
        default=500,
        help="sample held-out next frames (engine, CFG) every this many steps",
    )
    train.add_argument(
        "--num_validation_samples", type=int, default=4, help="held-out windows sampled at each validation"
    )


def add_speed_arguments(speed: argparse._ArgumentGroup) -> None:
    speed.add_argument(
        "--total_batch_size",
        type=int,
        default=None,
        help="windows per optimisation step over all devices, reached by gradient accumulation unless "
        "--gradient_accumulation_steps is given; with it, the total is derived, and both given must agree "
        f"(default: {by_preset('total_batch_size')}; paper: 128)",
    )
    speed.add_argument(
        "--channels_last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"store the UNet's convolution weights channels-last (NHWC) (default: {by_preset('channels_last')})",
    )
    speed.add_argument(
        "--compile_blocks",
        action="store_true",
        help="torch.compile the UNet's blocks one by one (its down, middle and up blocks): compilation waits before "
        "the first steps, bounded by the blocks; validation runs them uncompiled",
    )
    speed.add_argument(
        "--compile_backend",
        default="inductor",
        help="torch.compile backend of --compile_blocks (aot_eager: graphs traced, no code generated; for debugging)",
    )


def checked_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """The preset's defaults filled in where an option was left unset; impossible values refused."""
    preset_defaults = WORLD_MODEL_TRAINING_DEFAULTS[args.preset]
    if args.gradient_accumulation_steps is not None and args.total_batch_size is None:
        preset_defaults = {**preset_defaults, "total_batch_size": None}  # the accumulation asked for sets the total
    for name, value in preset_defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.max_train_steps is None and args.num_train_epochs is None:
        args.max_train_steps = 700_000
    counts = ["train_batch_size", "total_batch_size", "gradient_accumulation_steps", "checkpointing_steps"]
    counts += ["validation_steps", "noise_buckets"]
    for name in [*counts, "max_train_steps", "num_train_epochs", "max_train_samples"]:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.use_cfg and args.context_dropout == 0:
        parser.error("--use_cfg asks for context dropout, --context_dropout 0 turns it off: give one of them")
    if not 0.0 <= args.context_dropout < 1.0:
        parser.error("--context_dropout must be in [0, 1)")
    if args.ema_decay is not None and not 0.0 < args.ema_decay < 1.0:
        parser.error("--ema_decay must be in (0, 1)")
    if not 0.0 <= args.sampler_eta <= 1.0:
        parser.error("--sampler_eta must be in [0, 1] (0 = deterministic DDIM, 1 = ancestral)")
    try:  # checked now, not at the first validation or when the checkpoint is played
        parse_timesteps(args.sampler_timesteps, num_train_timesteps=1000)
    except EngineError as error:
        parser.error(f"--sampler_timesteps: {error}")
    if args.pretrained_vae_model_name_or_path is None:
        if preset_defaults["pretrained_model_name_or_path"] is None:
            parser.error(
                f"--preset {args.preset} needs --pretrained_vae_model_name_or_path: "
                f"train its VAE first with finetune_autoencoder.py --preset {args.preset} --train_encoder"
            )
        args.pretrained_vae_model_name_or_path = args.pretrained_model_name_or_path
    return args


def main(args: argparse.Namespace) -> dict[str, Any]:
    output_dir = Path(args.output_dir)
    check_run_dir(output_dir, resuming=args.resume_from_checkpoint is not None, results=["unet", CONFIG_FILE])
    if args.num_threads is not None and args.num_threads >= 1:
        torch.set_num_threads(args.num_threads)
    plan = plan_batches(
        args.total_batch_size, args.train_batch_size, launched_processes(), args.gradient_accumulation_steps
    )
    args.train_batch_size, args.gradient_accumulation_steps = plan.per_device, plan.accumulation
    args.total_batch_size = plan.total
    accelerator = make_accelerator(args, output_dir)
    accelerator.print(f"batch: {plan.describe()}")
    set_seed(args.seed)

    # The VAE: decodes validation samples, and encodes the frames when there is no latent cache. (Downloads
    # happen once: the main process fetches into the cache first, then the others read it.)
    with accelerator.main_process_first():
        vae = load_vae(args.pretrained_vae_model_name_or_path, revision=args.revision, cache_dir=args.cache_dir)
    check_vae(vae, get_config(args.preset))
    vae.requires_grad_(False).eval().to(accelerator.device)

    # Data: recorded episodes -> context windows (cached latents, or pixels encoded on the fly).
    with accelerator.main_process_first():
        action_names, train_windows, heldout_windows, provenance = load_windows(args, vae)
    config = world_model_config(args, action_names, provenance)
    accelerator.print(
        f"data: {len(train_windows)} training windows, {len(heldout_windows)} held out; "
        f"context {config.context_length}; {config.num_actions} actions"
    )
    validation_windows = pick_validation_windows(args, heldout_windows, vae, config)
    if args.max_train_samples is not None and args.max_train_samples < len(train_windows):
        chosen = torch.randperm(len(train_windows), generator=torch.Generator().manual_seed(args.seed))
        train_windows = torch.utils.data.Subset(train_windows, sorted(chosen[: args.max_train_samples].tolist()))
    if args.max_train_steps is None:  # --num_train_epochs: the batches each process gets per epoch
        batches = len(train_windows) // args.train_batch_size if len(train_windows) >= args.train_batch_size else 1
        per_process = math.ceil(batches / accelerator.num_processes)
        args.max_train_steps = args.num_train_epochs * max(1, math.ceil(per_process / args.gradient_accumulation_steps))
        accelerator.print(
            f"{args.num_train_epochs} epochs of {len(train_windows)} windows: {args.max_train_steps} steps"
        )

    model = make_model(args, config, accelerator)
    scheduler = make_scheduler(config)
    # On the device before the optimizer is made: AdamW is fused when the parameters are on a GPU.
    optimizer = make_optimizer(args.optimizer, model.parameters(), args.learning_rate, args.adam_weight_decay)
    lr_scheduler = make_lr_scheduler(args, optimizer, accelerator)
    train_dataloader = torch.utils.data.DataLoader(
        train_windows,
        batch_size=args.train_batch_size,
        shuffle=True,
        num_workers=args.dataloader_num_workers,
        drop_last=len(train_windows) >= args.train_batch_size,
        generator=torch.Generator().manual_seed(args.seed),
    )
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, lr_scheduler
    )
    ema = make_ema(args.ema_decay, accelerator, model)

    def loss_of_batch(batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        if args.latents_dir is None:
            batch = encode_pixel_windows(vae, batch, config.model)
        return diffusion_loss(model, batch, config, scheduler, generator, args.snr_gamma, args.lognormal_noise), {}

    def validate_now(step: int) -> float:
        # The compiled blocks are for the training step: validation's shapes would compile them again.
        stance = torch.compiler.set_stance("force_eager") if args.compile_blocks else contextlib.nullcontext()
        with ema_weights(ema, accelerator.unwrap_model(model)), stance:
            return log_validation(
                accelerator, model, vae, scheduler, config, validation_windows, output_dir, step, args.seed
            )

    hooks = Hooks(
        check_checkpoint=lambda checkpoint: check_resumable(checkpoint, config),
        checkpoint_files={CONFIG_FILE: config.to_dict()},  # the model a checkpoint belongs to, checked on resume
        after_step=None if ema is None else lambda step: ema.step(accelerator.unwrap_model(model).parameters()),
        validate=validate_now,
    )
    options = LoopOptions.from_args(args, project="train_world_model")
    run = train(accelerator, options, model, optimizer, lr_scheduler, train_dataloader, loss_of_batch, hooks)

    summary: dict[str, Any] = {}
    if accelerator.is_main_process:
        if run.validated_step != run.step:
            run.validation, run.validated_step = validate_now(run.step), run.step
        unwrapped = accelerator.unwrap_model(model)
        with ema_weights(ema, unwrapped):  # the EMA weights are the model (when --ema_decay)
            save_world_model(output_dir, unwrapped, vae, config, scheduler)
        summary = write_summary(args, run, config, accelerator)
        if args.push_to_hub:
            push_to_hub(args, output_dir, HUB_FILES, f"world model after {run.step} steps")
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    run_trainer(main, parse_args, (DatasetError, ModelLoadError), error_code=2)
