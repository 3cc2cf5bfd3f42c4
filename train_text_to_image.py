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
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from PIL import Image
from tqdm.auto import tqdm

from gamengen.config import DEFAULT_CONTEXT_LENGTH, PRESETS, WorldModelConfig, get_config, get_world_model_config
from gamengen.episodes import DatasetError, add_column_arguments, columns_from_args, open_dataset, split_episode_ids
from gamengen.latent_cache import open_latent_cache
from gamengen.metrics import psnr
from gamengen.model import (
    ModelLoadError,
    WorldModel,
    build_world_model,
    check_vae,
    corrupt_context,
    drop_context,
    load_pretrained_unet,
    load_vae,
    make_scheduler,
    residual_base,
    save_world_model,
)
from gamengen.training import UsageError, add_run_arguments, check_output_dir, checkpoint_step, find_checkpoint, make_accelerator, save_checkpoint, write_json
from gamengen.windows import LatentWindowDataset, PixelWindowDataset, encode_pixel_windows

SUMMARY_FILE = "training_summary.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=sorted(PRESETS), default="sd14", help="sd14 (the paper) or tiny (a laptop CPU); gamengen/config.py")
    model.add_argument(
        "--pretrained_model_name_or_path",
        default=None,
        help="sd14: Hub id or folder whose unet/ is widened (default CompVis/stable-diffusion-v1-4); tiny: none (random init)",
    )
    model.add_argument(
        "--pretrained_vae_model_name_or_path",
        default=None,
        help="folder or Hub id with vae/ (finetune_autoencoder.py's --output_dir); default: --pretrained_model_name_or_path (sd14). Required for tiny",
    )
    model.add_argument("--revision", default=None, help="revision of Hub models")
    model.add_argument("--context_length", type=int, default=None, help=f"past frames/actions in the context (default: {DEFAULT_CONTEXT_LENGTH})")
    model.add_argument("--noise_buckets", type=int, default=10, help="context noise-augmentation levels (paper: 10)")
    model.add_argument("--max_noise_level", type=float, default=0.7, help="largest context noise std (paper: 0.7); 0 disables noise augmentation")
    model.add_argument("--context_dropout", type=float, default=0.1, help="probability of dropping ALL context frames (paper: 0.1; CFG needs it)")
    model.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="CFG scale on the context stored in the checkpoint (default: sd14 1.5 as the paper; tiny 1.0, which measured 0.2-0.4 dB better; docs/tiny_learning.md)",
    )
    model.add_argument("--num_inference_steps", type=int, default=4, help="DDIM steps stored in the checkpoint (paper: 4)")
    model.add_argument(
        "--action_positions",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add a learned embedding of each action's context slot to its token, so the newest action is distinguishable (default: off for sd14, on for tiny)",
    )
    model.add_argument(
        "--action_class",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also feed the newest action through the UNet's class embedding (with the noise bucket), reaching every ResNet block (default: off for sd14, on for tiny)",
    )
    model.add_argument(
        "--residual",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="generate the change from the last context latent instead of the frame (default: off for sd14, the paper; on for tiny; docs/tiny_learning.md)",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", required=True, help="dataset folder of parquet shards, or a Hub dataset id (USER/NAME)")
    data.add_argument("--latents_dir", default=None, help="latents cached by encode_latents.py: training then never runs the VAE encoder")
    data.add_argument("--cache_dir", default=None, help="where Hub datasets and models are cached")
    add_column_arguments(data)
    data.add_argument("--holdout_fraction", type=float, default=0.1, help="fraction of episodes held out for validation (at least one)")
    data.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes")
    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", default="outputs/world_model", help="the checkpoint folder (unet/, vae/, scheduler/, ...) plus checkpoints and samples")
    train.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and noise")
    train.add_argument("--train_batch_size", type=int, default=None, help="windows per device per step (default: sd14 8, tiny 32; paper: 128 in total)")
    train.add_argument("--max_train_steps", type=int, default=700_000, help="total optimisation steps (paper: 700k); a resumed run counts from its checkpoint")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1, help="batches accumulated into one optimisation step")
    train.add_argument("--gradient_checkpointing", action="store_true", help="recompute UNet activations in the backward pass to save memory")
    train.add_argument("--optimizer", choices=["adafactor", "adamw"], default=None, help="default: adafactor for sd14 (paper), adamw for tiny")
    train.add_argument("--learning_rate", type=float, default=None, help="default: 2e-5 for sd14 (paper), 5e-4 for tiny")
    train.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping norm (paper: 1.0)")
    train.add_argument(
        "--snr_gamma",
        type=float,
        default=None,
        help="min-SNR loss weighting over timesteps with this gamma (e.g. 5; Hang et al. 2023); default: uniform (paper)",
    )
    train.add_argument(
        "--num_threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 for tiny, torch's for sd14). Measured on 2 busy cores: default threads 2.3-4.9 samples/s, 1 thread 50 (spin-waiting)",
    )
    train.add_argument(
        "--ema_decay", type=float, default=None, help="keep an EMA of the weights with this decay (e.g. 0.999) and save it; default: none (paper)"
    )
    train.add_argument("--validation_steps", type=int, default=500, help="sample held-out next frames (engine, CFG) every this many steps")
    train.add_argument("--num_validation_samples", type=int, default=4, help="held-out windows sampled at each validation")
    add_run_arguments(train, parser.add_argument_group("logging and hub"), checkpointing_steps=1000, pushed="the checkpoint folder")
    args = parser.parse_args(argv)
    for name in ("max_train_steps", "gradient_accumulation_steps", "checkpointing_steps", "validation_steps", "noise_buckets"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if not 0.0 <= args.context_dropout < 1.0:
        parser.error("--context_dropout must be in [0, 1)")
    sd14 = args.preset == "sd14"
    args.train_batch_size = args.train_batch_size or (8 if sd14 else 32)
    args.optimizer = args.optimizer or ("adafactor" if sd14 else "adamw")
    args.learning_rate = args.learning_rate or (2e-5 if sd14 else 5e-4)
    if args.guidance_scale is None:
        args.guidance_scale = 1.5 if sd14 else 1.0
    if args.residual is None:
        args.residual = not sd14
    if args.action_positions is None:
        args.action_positions = not sd14
    if args.action_class is None:
        args.action_class = not sd14
    if args.num_threads is None and not sd14:
        args.num_threads = 1
    if args.ema_decay is not None and not 0.0 < args.ema_decay < 1.0:
        parser.error("--ema_decay must be in (0, 1)")
    if sd14:
        args.pretrained_model_name_or_path = args.pretrained_model_name_or_path or "CompVis/stable-diffusion-v1-4"
        args.pretrained_vae_model_name_or_path = args.pretrained_vae_model_name_or_path or args.pretrained_model_name_or_path
    elif args.pretrained_vae_model_name_or_path is None:
        parser.error("--preset tiny needs --pretrained_vae_model_name_or_path: train its VAE first with finetune_autoencoder.py --preset tiny --train_encoder")
    return args


def make_optimizer(name: str, parameters, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(parameters, lr=learning_rate, scale_parameter=False, relative_step=False, warmup_init=False, weight_decay=weight_decay)
    return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)


def diffusion_loss(
    model: WorldModel,
    batch: dict[str, torch.Tensor],
    config: WorldModelConfig,
    scheduler,
    generator: torch.Generator | None = None,
    snr_gamma: float | None = None,
):
    """The training objective on a batch of cached (or freshly encoded) latent windows.

    v-prediction MSE on the next frame's latent (or, with ``config.residual``, on its change from the
    last context latent), with the context noise-augmented (a uniformly drawn bucket per sample) and
    dropped entirely with probability ``config.context_dropout``. ``snr_gamma``: min-SNR weighting
    of the timesteps (``min(SNR, gamma) / (SNR + 1)`` for v-prediction), uniform when None."""
    target, context, actions = batch["target"], batch["context"], batch["actions"]
    device = target.device
    size = target.shape[0]
    noise = torch.randn(target.shape, generator=generator, device=device, dtype=target.dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (size,), generator=generator, device=device)
    buckets = torch.randint(0, config.noise_buckets, (size,), generator=generator, device=device)
    context = corrupt_context(context, buckets, config, generator)
    target = target - residual_base(context, config)  # residual parameterisation: the change (else unchanged)
    noisy = scheduler.add_noise(target, noise, timesteps)
    velocity = scheduler.get_velocity(target, noise, timesteps)
    dropped = torch.rand(size, generator=generator, device=device) < config.context_dropout
    context = drop_context(context, dropped)
    prediction = model(noisy, timesteps, context, actions, buckets)
    if snr_gamma is None:
        return F.mse_loss(prediction.float(), velocity.float())
    alphas = scheduler.alphas_cumprod.to(device)[timesteps].float()
    snr = alphas / (1 - alphas)
    weights = snr.clamp(max=snr_gamma) / (snr + 1)
    per_sample = F.mse_loss(prediction.float(), velocity.float(), reduction="none").flatten(1).mean(1)
    return (per_sample * weights).mean()


def load_windows(args: argparse.Namespace, vae) -> tuple[list[str], torch.utils.data.Dataset, torch.utils.data.Dataset, dict[str, Any]]:
    """(action names, training windows, held-out windows, dataset provenance) for the preset.

    With ``--latents_dir`` the windows are read from the latent cache (checked against this dataset,
    preset and VAE); otherwise they are decoded from the parquet frames and encoded each step."""
    columns = columns_from_args(args)
    dataset = open_dataset(args.dataset_name, columns=columns, cache_dir=args.cache_dir, cache_row_groups=16)
    model_config = get_config(args.preset)
    context_length = args.context_length or DEFAULT_CONTEXT_LENGTH[args.preset]
    action_names = dataset.action_names
    if not action_names:  # a dataset of another layout, without our metadata: name the ids
        largest = max(int(dataset.actions(i).max()) for i in range(len(dataset.episodes)))
        action_names = [f"ACTION_{i}" for i in range(largest + 1)]
    train_ids, heldout_ids = split_episode_ids(dataset.episode_ids, args.holdout_fraction)
    if args.latents_dir:
        cache = open_latent_cache(args.latents_dir, dataset=dataset, config=model_config, vae=vae)
        make = lambda ids: LatentWindowDataset(cache, context_length, num_actions=len(action_names), episode_ids=ids)  # noqa: E731
    else:
        make = lambda ids: PixelWindowDataset(dataset.subset(ids), context_length, num_actions=len(action_names), config=model_config)  # noqa: E731
    provenance = {
        "name": str(args.dataset_name),
        "episodes": len(dataset.episode_ids),
        "heldout_episodes": heldout_ids,
        "latents_dir": args.latents_dir,
        "metadata": {k: v for k, v in (dataset.metadata or {}).items() if k != "env_config"},
    }
    return action_names, make(train_ids), make(heldout_ids), provenance


@torch.no_grad()
def validate(model: WorldModel, vae, scheduler, config: WorldModelConfig, windows: list[dict[str, torch.Tensor]], seed: int) -> tuple[float, Image.Image]:
    """Sample the next frame of held-out windows through the engine (4 DDIM steps, CFG on the
    context) and return the mean PSNR against the truth and a prediction | truth grid."""
    from gamengen.engine import GameEngine
    from gamengen.model import WorldModelBundle, decode_latents, tensor_to_frames

    was_training = model.training
    model.eval()
    engine = GameEngine(WorldModelBundle(model=model, vae=vae, scheduler=scheduler, config=config), seed=seed)
    predictions, truths = [], []
    for window in windows:
        engine.reset(latents=window["context"], actions=window["actions"][:-1])
        predictions.append(engine.step(int(window["actions"][-1])))
        truths.append(tensor_to_frames(decode_latents(vae, window["target"][None].to(vae.device, vae.dtype), config.model))[0])
    model.train(was_training)
    prediction_tensor = torch.from_numpy(np.stack(predictions)).movedim(-1, 1).float() / 127.5 - 1
    truth_tensor = torch.from_numpy(np.stack(truths)).movedim(-1, 1).float() / 127.5 - 1
    score = float(psnr(prediction_tensor, truth_tensor).mean())
    rows = [np.concatenate([p, t], axis=1) for p, t in zip(predictions, truths, strict=True)]
    return score, Image.fromarray(np.concatenate(rows, axis=0))


def main(args: argparse.Namespace) -> dict[str, Any]:
    output_dir = Path(args.output_dir)
    resuming = args.resume_from_checkpoint is not None
    check_output_dir(output_dir, resuming=resuming, results=["unet", "gamengen_config.json"])
    if args.num_threads is not None and args.num_threads >= 1:
        torch.set_num_threads(args.num_threads)
    accelerator = make_accelerator(args, output_dir)
    set_seed(args.seed)

    # The VAE: decodes validation samples, and encodes the frames when there is no latent cache.
    vae = load_vae(args.pretrained_vae_model_name_or_path, revision=args.revision, cache_dir=args.cache_dir)
    check_vae(vae, get_config(args.preset))
    vae.requires_grad_(False).eval().to(accelerator.device)

    # Data: recorded episodes -> context windows (cached latents, or pixels encoded on the fly).
    action_names, train_windows, heldout_windows, provenance = load_windows(args, vae)
    config = get_world_model_config(
        args.preset,
        action_names,
        context_length=args.context_length,
        noise_buckets=args.noise_buckets,
        max_noise_level=args.max_noise_level,
        context_dropout=args.context_dropout,
        guidance_scale=args.guidance_scale,
        num_inference_steps=args.num_inference_steps,
        residual=args.residual,
        action_positions=args.action_positions,
        action_class=args.action_class,
        dataset=provenance,
    )
    accelerator.print(
        f"data: {len(train_windows)} training windows, {len(heldout_windows)} held out; context {config.context_length}; {config.num_actions} actions"
    )

    # The UNet: widened from a pretrained one (sd14) or new (tiny).
    pretrained_unet = load_pretrained_unet(args.pretrained_model_name_or_path, args.revision) if args.pretrained_model_name_or_path else None
    model = build_world_model(config, pretrained_unet)
    del pretrained_unet
    if args.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    scheduler = make_scheduler(config)
    accelerator.print(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters ({'widened ' + str(args.pretrained_model_name_or_path) if args.pretrained_model_name_or_path else 'new ' + args.preset + ' UNet'})"
    )

    optimizer = make_optimizer(args.optimizer, model.parameters(), args.learning_rate, args.adam_weight_decay)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    train_dataloader = torch.utils.data.DataLoader(
        train_windows,
        batch_size=args.train_batch_size,
        shuffle=True,
        num_workers=args.dataloader_num_workers,
        drop_last=len(train_windows) >= args.train_batch_size,
        generator=torch.Generator().manual_seed(args.seed),
    )
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(model, optimizer, train_dataloader, lr_scheduler)
    ema = None
    if args.ema_decay is not None:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(accelerator.unwrap_model(model).parameters(), decay=args.ema_decay, use_ema_warmup=True, power=0.75)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    global_step = 0
    if resuming:
        checkpoint = find_checkpoint(output_dir, args.resume_from_checkpoint)
        if checkpoint is None:
            accelerator.print(f"no checkpoint in {output_dir}: starting a new run")
        else:
            check_resumable(checkpoint, config)
            accelerator.load_state(str(checkpoint))
            global_step = checkpoint_step(checkpoint)
            accelerator.print(f"resumed from {checkpoint} at step {global_step}")
    start_step = global_step
    if accelerator.is_main_process:
        tracker_config = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in vars(args).items()}
        accelerator.init_trackers("train_world_model", config=tracker_config)

    picks = np.unique(np.linspace(0, len(heldout_windows) - 1, min(args.num_validation_samples, len(heldout_windows))).round().astype(int))
    validation_windows = [heldout_windows[int(i)] for i in picks]
    if args.latents_dir is None:
        validation_windows = [
            {k: v[0] for k, v in encode_pixel_windows(vae, {k: v[None] for k, v in w.items()}, config.model).items()} for w in validation_windows
        ]

    steps_per_epoch = max(1, math.ceil(len(train_dataloader) / args.gradient_accumulation_steps))
    first_epoch = global_step // steps_per_epoch
    batches_to_skip = (global_step % steps_per_epoch) * args.gradient_accumulation_steps
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="steps", disable=not accelerator.is_local_main_process)
    generator = torch.Generator(device=accelerator.device).manual_seed(args.seed + global_step)
    train_seconds, samples_seen = 0.0, 0
    last_checkpoint = global_step if global_step > 0 else None
    losses: list[float] = []
    validation_psnr: float | None = None
    model.train()
    epoch = first_epoch
    while global_step < args.max_train_steps:
        loader = accelerator.skip_first_batches(train_dataloader, batches_to_skip) if epoch == first_epoch and batches_to_skip else train_dataloader
        step_started = time.perf_counter()
        for batch in loader:
            if args.latents_dir is None:
                batch = encode_pixel_windows(vae, batch, config.model)
            with accelerator.accumulate(model):
                loss = diffusion_loss(model, batch, config, scheduler, generator, args.snr_gamma)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            samples_seen += batch["target"].shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(accelerator.unwrap_model(model).parameters())
            global_step += 1
            train_seconds += time.perf_counter() - step_started
            losses.append(loss.detach().item())
            logs = {"loss": losses[-1], "lr": lr_scheduler.get_last_lr()[0], "samples_per_second": samples_seen / max(train_seconds, 1e-9)}
            progress.update(1)
            progress.set_postfix(loss=f"{logs['loss']:.4f}", samples_s=f"{logs['samples_per_second']:.1f}")
            accelerator.log(logs, step=global_step)
            if global_step % args.checkpointing_steps == 0:
                if accelerator.is_main_process:
                    save_run_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit, config)
                last_checkpoint = global_step
            if global_step % args.validation_steps == 0 and accelerator.is_main_process:
                with ema_weights(ema, accelerator.unwrap_model(model)):
                    validation_psnr = log_validation(accelerator, model, vae, scheduler, config, validation_windows, output_dir, global_step, args.seed)
            if global_step >= args.max_train_steps:
                break
            step_started = time.perf_counter()
        epoch += 1
    progress.close()
    accelerator.wait_for_everyone()

    summary: dict[str, Any] = {}
    if accelerator.is_main_process:
        if last_checkpoint != global_step:
            save_run_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit, config)
        unwrapped = accelerator.unwrap_model(model)
        with ema_weights(ema, unwrapped):  # the EMA weights are the model (when --ema_decay)
            if global_step % args.validation_steps != 0:
                validation_psnr = log_validation(accelerator, unwrapped, vae, scheduler, config, validation_windows, output_dir, global_step, args.seed)
            save_world_model(output_dir, unwrapped, vae, config, scheduler)
        steps_this_run = global_step - start_step
        window = max(1, min(50, len(losses) // 4))
        summary = {
            "preset": args.preset,
            "dataset_name": str(args.dataset_name),
            "latents_dir": args.latents_dir,
            "global_step": global_step,
            "steps_this_run": steps_this_run,
            "train_batch_size": args.train_batch_size,
            "samples_per_second": samples_seen / train_seconds if train_seconds > 0 else None,
            "loss_first": float(np.mean(losses[:window])) if losses else None,
            "loss_last": float(np.mean(losses[-window:])) if losses else None,
            "validation_psnr": validation_psnr,
            "device": str(accelerator.device),
        }
        write_json(output_dir / SUMMARY_FILE, summary)
        if losses:
            print(
                f"trained {steps_this_run} steps (step {start_step} -> {global_step}, {summary['samples_per_second']:.1f} samples/s); loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f}"
            )
        print(
            f"held-out next-frame PSNR ({config.num_inference_steps} DDIM steps, CFG {config.guidance_scale}, up to {args.num_validation_samples} windows, "
            f"against the VAE-decoded target latents): {validation_psnr:.2f} dB; evaluate.py measures against the real frames, with baselines"
        )
        print(f"saved the world model to {output_dir} (load it with gamengen.model.load_world_model)")
        if args.push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            repo_id = create_repo(args.hub_model_id or output_dir.resolve().name, exist_ok=True).repo_id
            upload_folder(
                repo_id=repo_id,
                folder_path=str(output_dir),
                allow_patterns=[
                    "unet/*",
                    "vae/*",
                    "scheduler/*",
                    "action_embedding.safetensors",
                    "gamengen_config.json",
                    "README.md",
                    "samples/*",
                    SUMMARY_FILE,
                ],
                commit_message=f"world model after {global_step} steps",
            )
            print(f"pushed to https://huggingface.co/{repo_id}")
    accelerator.end_training()
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


def save_run_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, limit: int | None, config: WorldModelConfig) -> None:
    """The accelerate training state, with the model config it belongs to (checked on resume)."""
    save_checkpoint(accelerator, output_dir, step, limit)
    write_json(output_dir / f"checkpoint-{step}" / "gamengen_config.json", config.to_dict())


def check_resumable(checkpoint: Path, config: WorldModelConfig) -> None:
    """Refuse to resume a checkpoint of a model with another context length or action set."""
    saved_path = checkpoint / "gamengen_config.json"
    if not saved_path.is_file():
        return
    saved = WorldModelConfig.from_dict(json.loads(saved_path.read_text()))
    if saved.context_length != config.context_length:
        raise UsageError(
            f"{checkpoint} has context length {saved.context_length}, this run {config.context_length}: pass --context_length {saved.context_length}"
        )
    if saved.action_names != config.action_names:
        raise UsageError(
            f"{checkpoint} was trained with {saved.num_actions} actions {saved.action_names[:4]}..., this dataset has {config.num_actions} {config.action_names[:4]}...: "
            "resume on a dataset with the same action set, or start a new --output_dir"
        )
    if saved.model.preset != config.model.preset:
        raise UsageError(f"{checkpoint} is a {saved.model.preset!r} model, this run uses --preset {config.model.preset}")
    for name in ("residual", "action_positions", "action_class"):
        if getattr(saved, name) != getattr(config, name):
            flag = name if getattr(saved, name) else f"no-{name}"
            raise UsageError(f"{checkpoint} was trained with {name}={getattr(saved, name)}: pass --{flag} to resume it")


def log_validation(accelerator, model, vae, scheduler, config, windows, output_dir: Path, step: int, seed: int) -> float:
    score, grid = validate(accelerator.unwrap_model(model), vae, scheduler, config, windows, seed)
    samples = output_dir / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    path = samples / f"validation-{step:07d}.png"
    tmp = path.with_name(f".{path.name}.tmp")
    grid.save(tmp, format="PNG")
    tmp.replace(path)
    accelerator.log({"validation_psnr": score}, step=step)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation/prediction|truth", np.asarray(grid), step, dataformats="HWC")
    return score


if __name__ == "__main__":
    try:
        main(parse_args())
    except (DatasetError, ModelLoadError, UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
