"""Train the GameNGen world model: a diffusion UNet that predicts the next frame from past frames and actions.

GameNGen section 3.2: Stable Diffusion v1.4's UNet, its ``conv_in`` widened so that the latents of the
last N frames are concatenated (channel axis) to the noisy latent of the next frame, the text replaced
by one learned embedding token per past action (cross-attention), v-prediction. Two tricks make
autoregressive rollouts stable and guidable (section 3.2.1): the context latents are corrupted with
Gaussian noise of a random level (uniform over 10 buckets in [0, 0.7]; the bucket is embedded and
added to the timestep embedding), and the whole context is dropped 10% of the time, which is the
unconditional branch of classifier-free guidance at inference. Paper settings (``--preset sd14``):
context 64, Adafactor lr 2e-5, batch 128, grad clip 1.0, 700k steps.

Example (tiny preset on a CPU, with latents cached by encode_latents.py):

    python train_text_to_image.py --preset tiny --dataset_name /tmp/ds --latents_dir /tmp/lat \
        --pretrained_vae_model_name_or_path /tmp/vae --max_train_steps 200 --output_dir /tmp/wm

The name follows diffusers' ``examples/text_to_image`` script, whose argument names it keeps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from PIL import Image

from gamengen.actions import EngineError
from gamengen.checkpoint import CONFIG_FILE, save_world_model
from gamengen.config import (
    DEFAULT_CONTEXT_LENGTH,
    PREDICTION_TYPES,
    PRESETS,
    WORLD_MODEL_TRAINING_DEFAULTS,
    WorldModelConfig,
    get_config,
    get_world_model_config,
)
from gamengen.ddim import parse_timesteps
from gamengen.episodes import open_dataset, split_episode_ids
from gamengen.files import atomic_path, write_json_atomic
from gamengen.help_format import HelpFormatter
from gamengen.latent_cache import open_latent_cache
from gamengen.layout import PEER_COLUMNS, DatasetError, add_dataset_arguments, columns_from_args
from gamengen.metrics import psnr
from gamengen.model import (
    ModelLoadError,
    WorldModel,
    build_world_model,
    corrupt_context,
    drop_context,
    load_pretrained_unet,
    make_scheduler,
    residual_base,
)
from gamengen.peer import PEER_ACTION_NAMES
from gamengen.run_folder import UsageError, check_run_dir, find_checkpoint
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
from gamengen.vae import check_vae, load_vae
from gamengen.windows import LatentWindowDataset, PixelWindowDataset, check_action_ids, encode_pixel_windows

SUMMARY_FILE = "training_summary.json"
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
    model = parser.add_argument_group("model")
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
    data = parser.add_argument_group("data")
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
    train = parser.add_argument_group("training")
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
        help=f"windows per device per step (default: {by_preset('train_batch_size')}; paper: 128 in total)",
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
    optimizer_help = f"default: {by_preset('optimizer')} {paper}"
    train.add_argument(
        "--optimizer", choices=["adafactor", "adafactor_torch", "adamw"], default=None, help=optimizer_help
    )
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
    add_run_arguments(
        train, parser.add_argument_group("logging and hub"), checkpointing_steps=1000, pushed="the checkpoint folder"
    )
    args = parser.parse_args(argv)
    preset_defaults = WORLD_MODEL_TRAINING_DEFAULTS[args.preset]
    for name, value in preset_defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.max_train_steps is None and args.num_train_epochs is None:
        args.max_train_steps = 700_000
    counts = [
        "train_batch_size",
        "gradient_accumulation_steps",
        "checkpointing_steps",
        "validation_steps",
        "noise_buckets",
    ]
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


def make_optimizer(name: str, parameters, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    """``adafactor``: transformers' Adafactor at a fixed learning rate (the paper's optimizer; it loops over the
    tensors in Python, ~20 operations each, so an sd14 step issues ~14k small operations). It factors the
    second moment over a tensor's LAST TWO dimensions (a conv kernel's 3x3), where the paper's JAX Adafactor
    factors over its two largest. ``adafactor_torch``: torch.optim.Adafactor, the same idea with a multi-tensor
    (foreach) step and its own beta2 schedule. ``adamw``: torch's AdamW (foreach on GPUs)."""
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            parameters,
            lr=learning_rate,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
            weight_decay=weight_decay,
        )
    if name == "adafactor_torch":
        return torch.optim.Adafactor(parameters, lr=learning_rate, weight_decay=weight_decay, foreach=True)
    return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)


def diffusion_loss(
    model: WorldModel,
    batch: dict[str, torch.Tensor],
    config: WorldModelConfig,
    scheduler,
    generator: torch.Generator | None = None,
    snr_gamma: float | None = None,
    lognormal_noise: tuple[float, float] | None = None,
):
    """The training objective on a batch of cached (or freshly encoded) latent windows.

    v-prediction MSE on the next frame's latent (or, with ``config.residual``, on its change from the
    last context latent), with the context noise-augmented (a uniformly drawn bucket per sample) and
    dropped entirely with probability ``config.context_dropout``. ``snr_gamma``: min-SNR weighting
    of the timesteps (``min(SNR, gamma) / (SNR + 1)`` for v-prediction), uniform when None.
    ``lognormal_noise`` (mean, std): the timesteps are those nearest to noise levels ``sigma = sqrt((1 - a) / a)``
    drawn log-normally, as EDM trains, instead of uniform timesteps."""
    target, context, actions = batch["target"], batch["context"], batch["actions"]
    device = target.device
    size = target.shape[0]
    noise = torch.randn(target.shape, generator=generator, device=device, dtype=target.dtype)
    if lognormal_noise is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (size,), generator=generator, device=device)
    else:
        timesteps = lognormal_timesteps(scheduler, size, *lognormal_noise, generator=generator, device=device)
    buckets = torch.randint(0, config.noise_buckets, (size,), generator=generator, device=device)
    clean_context = context
    context = corrupt_context(context, buckets, config, generator)
    # residual parameterisation: the change from the base (else the target unchanged)
    target = target - residual_base(clean_context if config.clean_residual_base else context, config)
    noisy = scheduler.add_noise(target, noise, timesteps)
    if config.prediction_type == "v_prediction":
        objective = scheduler.get_velocity(target, noise, timesteps)
    else:
        objective = noise if config.prediction_type == "epsilon" else target  # "sample": x0 (the change)
    dropped = torch.rand(size, generator=generator, device=device) < config.context_dropout
    context = drop_context(context, dropped)
    prediction = model(noisy, timesteps, context, actions, buckets)
    if snr_gamma is None:
        return F.mse_loss(prediction.float(), objective.float())
    alphas = scheduler.alphas_cumprod.to(device)[timesteps].float()
    snr = alphas / (1 - alphas)
    # min-SNR-gamma (Hang et al. 2023): the x0 loss weighted by min(SNR, gamma), in each objective's units
    to_objective = {"v_prediction": snr + 1, "epsilon": snr, "sample": torch.ones_like(snr)}[config.prediction_type]
    weights = snr.clamp(max=snr_gamma) / to_objective
    per_sample = F.mse_loss(prediction.float(), objective.float(), reduction="none").flatten(1).mean(1)
    return (per_sample * weights).mean()


def lognormal_timesteps(
    scheduler, size: int, mean: float, std: float, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """``size`` timesteps whose noise levels ``sigma = sqrt((1 - a) / a)`` are the nearest (from above) to
    ``exp(N(mean, std))`` draws, clamped to the schedule's range."""
    alphas = scheduler.alphas_cumprod.to(device)
    sigmas = ((1 - alphas) / alphas).sqrt()  # increasing with the timestep
    drawn = torch.exp(mean + std * torch.randn(size, generator=generator, device=device))
    return torch.searchsorted(sigmas, drawn).clamp(max=len(sigmas) - 1)


def load_windows(
    args: argparse.Namespace, vae
) -> tuple[list[str], torch.utils.data.Dataset, torch.utils.data.Dataset, dict[str, Any]]:
    """(action names, training windows, held-out windows, dataset provenance) for the preset.

    With ``--latents_dir`` the windows are read from the latent cache (checked against this dataset,
    preset and VAE); otherwise they are decoded from the parquet frames and encoded each step."""
    columns = columns_from_args(args)
    dataset = open_dataset(args.dataset_name, columns=columns, cache_dir=args.cache_dir, cache_row_groups=16)
    model_config = get_config(args.preset)
    context_length = args.context_length or DEFAULT_CONTEXT_LENGTH[args.preset]
    cache = (
        open_latent_cache(args.latents_dir, dataset=dataset, config=model_config, vae=vae) if args.latents_dir else None
    )
    action_names = dataset_action_names(args, dataset, cache)
    train_ids, heldout_ids = split_episode_ids(dataset.episode_ids, args.holdout_fraction)
    if cache is not None:
        make = lambda ids: LatentWindowDataset(cache, context_length, num_actions=len(action_names), episode_ids=ids)  # noqa: E731
    else:
        make = lambda ids: PixelWindowDataset(  # noqa: E731
            dataset.subset(ids), context_length, num_actions=len(action_names), config=model_config
        )
    provenance = {
        "name": str(args.dataset_name),
        "episodes": len(dataset.episode_ids),
        "heldout_episodes": heldout_ids,
        "latents_dir": args.latents_dir,
        "metadata": {k: v for k, v in (dataset.metadata or {}).items() if k != "env_config"},
    }
    return action_names, make(train_ids), make(heldout_ids), provenance


def dataset_action_names(args: argparse.Namespace, dataset, cache) -> list[str]:
    """The model's action list: the dataset's names; for a dataset without them (another layout), as many as
    --num_actions, the latent cache (encode_latents.py --num_actions) or the layout says, else the largest id
    + 1, named ACTION_<i> (the seed repository's layout: its 18 actions' names). Every id must fit."""
    if dataset.action_names:
        if args.num_actions is not None and args.num_actions != len(dataset.action_names):
            raise UsageError(
                f"--num_actions {args.num_actions}, but the dataset names {len(dataset.action_names)} actions "
                "in its metadata: leave --num_actions out"
            )
        names = list(dataset.action_names)
    else:
        largest = max(int(dataset.actions(i).max()) for i in range(len(dataset.episodes)))
        seed_layout = dataset.columns == PEER_COLUMNS
        cached = cache.manifest.get("num_actions") if cache is not None else None
        count = args.num_actions or cached or (len(PEER_ACTION_NAMES) if seed_layout else largest + 1)
        names = (
            list(PEER_ACTION_NAMES[:count])
            if seed_layout and count <= len(PEER_ACTION_NAMES)
            else [f"ACTION_{i}" for i in range(count)]
        )
        if args.num_actions is None and cached is None and not seed_layout:
            print(
                f"note: the dataset names no actions: {count} actions (its largest id + 1); pass --num_actions to "
                "reserve more"
            )
    episode_actions = [dataset.actions(i) for i in range(len(dataset.episodes))]
    fix = "pass --num_actions N to give the model N actions"
    check_action_ids(dataset.episode_ids, episode_actions, len(names), dataset.action_names or names, too_few_fix=fix)
    return names


@torch.no_grad()
def validate(
    model: WorldModel, vae, scheduler, config: WorldModelConfig, windows: list[dict[str, torch.Tensor]], seed: int
) -> tuple[float, Image.Image]:
    """Sample the next frame of held-out windows through the engine (4 DDIM steps, CFG on the
    context) and return the mean PSNR against the truth and a prediction | truth grid."""
    from gamengen.checkpoint import WorldModelBundle
    from gamengen.engine import GameEngine
    from gamengen.vae import decode_latents, tensor_to_frames

    was_training = model.training
    model.eval()
    engine = GameEngine(WorldModelBundle(model=model, vae=vae, scheduler=scheduler, config=config), seed=seed)
    predictions, truths = [], []
    for window in windows:
        engine.reset(latents=window["context"], actions=window["actions"][:-1])
        predictions.append(engine.step(int(window["actions"][-1])))
        truths.append(
            tensor_to_frames(decode_latents(vae, window["target"][None].to(vae.device, vae.dtype), config.model))[0]
        )
    model.train(was_training)
    prediction_tensor = torch.from_numpy(np.stack(predictions)).movedim(-1, 1).float() / 127.5 - 1
    truth_tensor = torch.from_numpy(np.stack(truths)).movedim(-1, 1).float() / 127.5 - 1
    score = float(psnr(prediction_tensor, truth_tensor).mean())
    rows = [np.concatenate([p, t], axis=1) for p, t in zip(predictions, truths, strict=True)]
    return score, Image.fromarray(np.concatenate(rows, axis=0))


def main(args: argparse.Namespace) -> dict[str, Any]:
    output_dir = Path(args.output_dir)
    check_run_dir(output_dir, resuming=args.resume_from_checkpoint is not None, results=["unet", CONFIG_FILE])
    if args.num_threads is not None and args.num_threads >= 1:
        torch.set_num_threads(args.num_threads)
    accelerator = make_accelerator(args, output_dir)
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

    # The UNet: widened from a pretrained one (sd14) or new (tiny).
    pretrained_unet = None
    if args.pretrained_model_name_or_path:
        with accelerator.main_process_first():
            pretrained_unet = load_pretrained_unet(args.pretrained_model_name_or_path, args.revision, args.cache_dir)
    model = build_world_model(config, pretrained_unet)
    del pretrained_unet
    if args.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    scheduler = make_scheduler(config)
    pretrained = args.pretrained_model_name_or_path
    origin = f"widened {pretrained}" if pretrained else f"new {args.preset} UNet"
    if args.resume_from_checkpoint and find_checkpoint(output_dir, args.resume_from_checkpoint) is not None:
        origin = "its weights come from the checkpoint it resumes"
    accelerator.print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters ({origin})")

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
        with ema_weights(ema, accelerator.unwrap_model(model)):
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


def world_model_config(args: argparse.Namespace, action_names: list[str], provenance: dict) -> WorldModelConfig:
    """The preset's world-model config with this run's options, for the dataset's actions."""
    return get_world_model_config(
        args.preset,
        action_names,
        context_length=args.context_length,
        noise_buckets=args.noise_buckets,
        max_noise_level=args.max_noise_level,
        context_dropout=args.context_dropout,
        guidance_scale=args.guidance_scale,
        num_inference_steps=args.num_inference_steps,
        sampler_timesteps=args.sampler_timesteps,
        sampler_eta=args.sampler_eta,
        prediction_type=args.prediction_type,
        clean_residual_base=args.clean_residual_base,
        residual=args.residual,
        action_positions=args.action_positions,
        action_class=args.action_class,
        dataset=provenance,
    )


def pick_validation_windows(
    args: argparse.Namespace, heldout_windows: torch.utils.data.Dataset, vae, config: WorldModelConfig
) -> list[dict[str, torch.Tensor]]:
    """Up to ``--num_validation_samples`` evenly spaced held-out windows, as latents."""
    count = min(args.num_validation_samples, len(heldout_windows))
    picks = np.unique(np.linspace(0, len(heldout_windows) - 1, count).round().astype(int))
    windows = [heldout_windows[int(i)] for i in picks]
    if args.latents_dir is None:
        batches = [encode_pixel_windows(vae, {k: v[None] for k, v in w.items()}, config.model) for w in windows]
        windows = [{k: v[0] for k, v in batch.items()} for batch in batches]
    return windows


def make_ema(decay: float | None, accelerator: Accelerator, model: torch.nn.Module):
    """An EMA of the prepared model's weights, saved in every checkpoint (None without ``--ema_decay``)."""
    if decay is None:
        return None
    from diffusers.training_utils import EMAModel

    ema = EMAModel(accelerator.unwrap_model(model).parameters(), decay=decay, use_ema_warmup=True, power=0.75)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    return ema


def write_summary(
    args: argparse.Namespace, run: TrainingRun, config: WorldModelConfig, accelerator: Accelerator
) -> dict[str, Any]:
    """Write ``training_summary.json`` and print what the run did."""
    window = max(1, min(50, len(run.losses) // 4))  # steps averaged for the first and last loss
    summary = {
        "preset": args.preset,
        "dataset_name": str(args.dataset_name),
        "latents_dir": args.latents_dir,
        "global_step": run.step,
        "steps_this_run": run.steps_this_run,
        "train_batch_size": args.train_batch_size,
        "samples_per_second": run.samples_per_second,
        "loss_first": float(np.mean(run.losses[:window])) if run.losses else None,
        "loss_last": float(np.mean(run.losses[-window:])) if run.losses else None,
        "validation_psnr": run.validation,
        "ema_decay": args.ema_decay,  # not None: the saved weights are this average, not the last step's
        "device": str(accelerator.device),
    }
    output_dir = Path(args.output_dir)
    write_json_atomic(output_dir / SUMMARY_FILE, summary, indent=2)
    if run.losses:
        print(
            f"trained {run.steps_this_run} steps (step {run.start_step} -> {run.step}, "
            f"{summary['samples_per_second']:.1f} samples/s); "
            f"loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f}"
        )
    print(
        f"held-out next-frame PSNR ({config.num_inference_steps} DDIM steps, CFG {config.guidance_scale}, "
        f"up to {args.num_validation_samples} windows, against the VAE-decoded target latents): "
        f"{run.validation:.2f} dB; "
        "evaluate.py measures against the real frames, with baselines"
    )
    print(f"saved the world model to {output_dir} (load it with gamengen.checkpoint.load_world_model)")
    return summary


@contextlib.contextmanager
def ema_weights(ema, model: torch.nn.Module):
    """Swap the EMA weights into ``model`` for the ``with`` block (nothing when there is no EMA)."""
    if ema is None:
        yield
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield
    finally:
        ema.restore(model.parameters())


def check_resumable(checkpoint: Path, config: WorldModelConfig) -> None:
    """Refuse to resume a checkpoint of a model with another context length or action set."""
    saved_path = checkpoint / "gamengen_config.json"
    if not saved_path.is_file():
        return
    saved = WorldModelConfig.from_dict(json.loads(saved_path.read_text()))
    if saved.context_length != config.context_length:
        raise UsageError(
            f"{checkpoint} has context length {saved.context_length}, this run {config.context_length}: pass "
            f"--context_length {saved.context_length}"
        )
    if saved.action_names != config.action_names:
        raise UsageError(
            f"{checkpoint} was trained with {saved.num_actions} actions {saved.action_names[:4]}..., this dataset has "
            f"{config.num_actions} {config.action_names[:4]}...: "
            "resume on a dataset with the same action set, or start a new --output_dir"
        )
    if saved.model.preset != config.model.preset:
        raise UsageError(
            f"{checkpoint} is a {saved.model.preset!r} model, this run uses --preset {config.model.preset}"
        )
    for name in ("residual", "action_positions", "action_class"):
        if getattr(saved, name) != getattr(config, name):
            flag = name if getattr(saved, name) else f"no-{name}"
            raise UsageError(f"{checkpoint} was trained with {name}={getattr(saved, name)}: pass --{flag} to resume it")


def log_validation(
    accelerator, model, vae, scheduler, config, windows, output_dir: Path, step: int, seed: int
) -> float:
    score, grid = validate(accelerator.unwrap_model(model), vae, scheduler, config, windows, seed)
    samples = output_dir / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    with atomic_path(samples / f"validation-{step:07d}.png") as tmp:
        grid.save(tmp, format="PNG")
    accelerator.log({"validation_psnr": score}, step=step)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation/prediction|truth", np.asarray(grid), step, dataformats="HWC")
    return score


if __name__ == "__main__":
    run_trainer(main, parse_args, (DatasetError, ModelLoadError), error_code=2)
