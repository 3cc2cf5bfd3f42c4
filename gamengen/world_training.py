"""What the world-model trainer does around its loop, shared with the distillation (``distill.py``): the
training and held-out windows of a dataset (cached latents or pixels), the model config a run trains, held-out
validation through the engine, the check that a checkpoint can be resumed by this run, and the run's summary.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image

from gamengen.config import WorldModelConfig, context_length_of, get_config, get_world_model_config
from gamengen.context import check_action_ids
from gamengen.episodes import open_dataset, split_episode_ids
from gamengen.errors import DatasetError, UsageError
from gamengen.files import atomic_path, write_json_atomic
from gamengen.latent_cache import open_latent_cache
from gamengen.layout import PEER_COLUMNS, columns_from_args
from gamengen.metrics import psnr
from gamengen.model import WorldModel, build_world_model, load_pretrained_unet
from gamengen.peer import PEER_ACTION_NAMES
from gamengen.run_folder import find_checkpoint
from gamengen.throughput import compile_blocks, peak_memory_gib, use_channels_last
from gamengen.training import TrainingRun
from gamengen.windows import LatentWindowDataset, PixelWindowDataset, encode_pixel_windows

SUMMARY_FILE = "training_summary.json"


def load_windows(
    args: argparse.Namespace, vae, heldout_episodes: list[str] | None = None
) -> tuple[list[str], torch.utils.data.Dataset, torch.utils.data.Dataset, dict[str, Any]]:
    """(action names, training windows, held-out windows, dataset provenance) for the preset.

    With ``--latents_dir`` the windows are read from the latent cache (checked against this dataset,
    preset and VAE); otherwise they are decoded from the parquet frames and encoded each step. The held-out
    episodes are ``--holdout_fraction`` of them, or ``heldout_episodes`` (a model's own, which a run that
    continues it must not train on)."""
    columns = columns_from_args(args)
    dataset = open_dataset(args.dataset_name, columns=columns, cache_dir=args.cache_dir, cache_row_groups=16)
    model_config = get_config(args.preset)
    context_length = context_length_of(args.preset, args.context_length)
    cache = (
        open_latent_cache(args.latents_dir, dataset=dataset, config=model_config, vae=vae) if args.latents_dir else None
    )
    action_names = dataset_action_names(args, dataset, cache)
    if heldout_episodes is None:
        train_ids, heldout_ids = split_episode_ids(dataset.episode_ids, args.holdout_fraction)
    else:
        missing = sorted(set(heldout_episodes) - set(dataset.episode_ids))
        if missing:
            raise DatasetError(
                f"the model's held-out episodes {missing[:3]} are not in {args.dataset_name}: use the dataset it "
                "was trained on"
            )
        heldout_ids = list(heldout_episodes)
        train_ids = [episode for episode in dataset.episode_ids if episode not in set(heldout_ids)]
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
        "train_batch_size": args.train_batch_size,  # per device and micro-batch
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "total_batch_size": args.train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes,
        "optimizer": args.optimizer,
        "samples_per_second": run.samples_per_second,
        "train_seconds": run.train_seconds,
        "out_of_time": run.out_of_time,  # stopped by --max_train_seconds before --max_train_steps
        "peak_memory_gib": peak_memory_gib(accelerator.device),  # CUDA only (None elsewhere)
        "loss_first": float(np.mean(run.losses[:window])) if run.losses else None,
        "loss_last": float(np.mean(run.losses[-window:])) if run.losses else None,
        "validation_psnr": run.validation,
        # the loss function's other scalars (distill.py: each network's objective), first and last like the loss
        **{
            f"{name}_{end}": float(np.mean(values[:window] if end == "first" else values[-window:]))
            for name, values in run.metrics.items()
            if values
            for end in ("first", "last")
        },
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
    if summary["peak_memory_gib"] is not None:
        print(f"peak GPU memory {summary['peak_memory_gib']:.1f} GiB ({summary['total_batch_size']} windows per step)")
    if run.out_of_time:
        print(f"stopped at step {run.step} of {args.max_train_steps}: --max_train_seconds {args.max_train_seconds:g}")
    print(
        f"held-out next-frame PSNR ({config.num_inference_steps} DDIM steps, CFG {config.guidance_scale}, "
        f"up to {args.num_validation_samples} windows, against the VAE-decoded target latents): "
        f"{run.validation:.2f} dB; "
        "evaluate.py measures against the real frames, with baselines"
    )
    print(f"saved the world model to {output_dir} (load it with gamengen.checkpoint.load_world_model)")
    return summary


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


def launched_processes() -> int:
    """The processes of this run, as ``accelerate launch`` (or torchrun) announces them; 1 for a plain launch."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def make_model(args: argparse.Namespace, config: WorldModelConfig, accelerator: Accelerator) -> WorldModel:
    """The world model on the run's device: its UNet widened from a pretrained one (sd14) or new (tiny), with
    gradient checkpointing, channels-last weights and compiled blocks as asked."""
    pretrained_unet = None
    if args.pretrained_model_name_or_path:
        with accelerator.main_process_first():
            pretrained_unet = load_pretrained_unet(args.pretrained_model_name_or_path, args.revision, args.cache_dir)
    model = build_world_model(config, pretrained_unet)
    del pretrained_unet
    if args.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    model.to(accelerator.device)
    if args.channels_last:
        use_channels_last(model)
    pretrained = args.pretrained_model_name_or_path
    origin = f"widened {pretrained}" if pretrained else f"new {args.preset} UNet"
    if args.resume_from_checkpoint and find_checkpoint(Path(args.output_dir), args.resume_from_checkpoint) is not None:
        origin = "its weights come from the checkpoint it resumes"
    accelerator.print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters ({origin})")
    if args.compile_blocks:
        blocks = compile_blocks(model, backend=args.compile_backend)
        accelerator.print(f"compiling the UNet's {blocks} blocks ({args.compile_backend}): the first steps wait for it")
    return model
