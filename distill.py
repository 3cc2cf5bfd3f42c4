"""Distil a GameNGen world model into a 1-step student by distribution matching (the paper's appendix).

The paper's 1-step model: a generator initialised from the teacher, the frozen teacher with CFG 1.5 on the context
as the "real" score, a "fake" score trained online on the generator's own samples, no regression loss (DMD, Yin et
al. 2024). ``--adversarial_weight`` adds DMD2's adversarial term on real frames (off by default, as the paper).
The method: ``gamengen/distillation.py``; docs/training.md#distillation-distillpy.

The output folder is an ordinary world-model checkpoint (its config samples one step without guidance), which
every engine script (evaluate.py, run_autoregressive.py, run_playable_env.py) plays at one step with no option.

Example (the quickstart's model and latent cache, on a CPU):

    python distill.py --teacher_model runs/quickstart/world_model --dataset_name runs/quickstart/dataset \
        --latents_dir runs/quickstart/latents --max_train_steps 300 --output_dir runs/quickstart/student
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from gamengen.checkpoint import CONFIG_FILE, load_world_model, save_world_model
from gamengen.ddim import ddim_schedule
from gamengen.distillation import DistillationModels, DistillSettings, LatentDiscriminator, student_config
from gamengen.errors import DatasetError, ModelLoadError, UsageError
from gamengen.help_format import HelpFormatter
from gamengen.layout import add_dataset_arguments
from gamengen.optim import OPTIMIZERS, ema_weights, make_ema, make_optimizer
from gamengen.run_folder import check_run_dir
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
from gamengen.world_training import (
    SUMMARY_FILE,
    check_resumable,
    load_windows,
    log_validation,
    pick_validation_windows,
    write_summary,
)

HUB_FILES = ["unet/*", "vae/*", "scheduler/*", "action_embedding.safetensors", CONFIG_FILE, "README.md", SUMMARY_FILE]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_method_arguments(parser.add_argument_group("distillation"))
    data = parser.add_argument_group("data")
    add_dataset_arguments(data)
    data.add_argument("--latents_dir", default=None, help="the teacher's latent cache (encode_latents.py)")
    data.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes")
    train_group = parser.add_argument_group("training")
    add_training_arguments(train_group)
    add_run_arguments(
        train_group, parser.add_argument_group("logging and hub"), checkpointing_steps=500, pushed="the student"
    )
    args = parser.parse_args(argv)
    for name in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "validation_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if not 0.0 <= args.min_timestep_fraction < args.max_timestep_fraction <= 1.0:
        parser.error("need 0 <= --min_timestep_fraction < --max_timestep_fraction <= 1")
    if args.adversarial_weight < 0 or (args.guidance_scale is not None and args.guidance_scale < 1.0):
        parser.error("--adversarial_weight must be >= 0 and --guidance_scale >= 1")
    if not 0.0 <= args.own_context_fraction <= 1.0:
        parser.error("--own_context_fraction must be in [0, 1]")
    if args.regression_weight < 0:
        parser.error("--regression_weight must be 0 (off) or positive")
    if args.ema_decay is not None and not 0.0 < args.ema_decay < 1.0:
        parser.error("--ema_decay must be in (0, 1)")
    return args


def add_method_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--teacher_model", required=True, help="the world model to distil (a checkpoint folder or Hub id)"
    )
    group.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="the teacher's CFG scale on the context (default: the teacher's own, 1.5 for the paper's)",
    )
    group.add_argument(
        "--min_timestep_fraction",
        type=float,
        default=0.02,
        help="the distribution-matching term's noise levels: timesteps uniform in [min, max] x T (DMD2's range)",
    )
    group.add_argument("--max_timestep_fraction", type=float, default=0.98, help="see --min_timestep_fraction")
    group.add_argument(
        "--adversarial_weight",
        type=float,
        default=0.0,
        help="DMD2's adversarial term on real frames (a latent discriminator); 0: off, the paper's distillation",
    )
    group.add_argument(
        "--context_noise",
        choices=("inference", "random"),
        default="inference",
        help="the context the networks see: at the teacher's inference noise bucket (what the engine gives the "
        "student), or noise-augmented at a random bucket per window, as the teacher trained",
    )
    group.add_argument(
        "--own_context_fraction",
        type=float,
        default=0.0,
        help="in this fraction of the windows the newest context frame is the student's own 1-step frame (made "
        "from the frames before it), as in a rollout; 0: recorded frames only",
    )
    group.add_argument(
        "--regression_weight",
        type=float,
        default=0.0,
        help="DMD's regression term: the student's frame against the teacher's own frame from the same noise "
        "(its sampler, eta 0, with the CFG above; costs the teacher's steps per window); 0: off, the paper",
    )


def add_training_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--output_dir", default="outputs/student", help="the student's checkpoint folder")
    group.add_argument("--seed", type=int, default=0, help="seed of data order and noise")
    group.add_argument("--max_train_steps", type=int, default=1000, help="optimisation steps (the paper: 1,000)")
    group.add_argument(
        "--train_batch_size", type=int, default=16, help="windows per device per step (the paper: 128 in total)"
    )
    group.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="optimizer of all three networks")
    group.add_argument(
        "--learning_rate", type=float, default=1e-4, help="the student's learning rate (docs/research_log.md)"
    )
    group.add_argument(
        "--fake_score_learning_rate", type=float, default=None, help="the fake score's (default: --learning_rate)"
    )
    group.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping norm")
    group.add_argument(
        "--ema_decay", type=float, default=None, help="save an average of the student's weights with this decay"
    )
    group.add_argument(
        "--validation_steps", type=int, default=100, help="sample held-out next frames with the student this often"
    )
    group.add_argument("--num_validation_samples", type=int, default=4, help="held-out windows per validation")
    group.add_argument(
        "--num_threads", type=int, default=None, help="torch CPU threads (default: 1 on a CPU, torch's on a GPU)"
    )


def main(args: argparse.Namespace) -> dict[str, Any]:
    output_dir = Path(args.output_dir)
    check_run_dir(output_dir, resuming=args.resume_from_checkpoint is not None, results=["unet", CONFIG_FILE])
    accelerator = make_accelerator(args, output_dir)
    if accelerator.device.type == "cpu":
        torch.set_num_threads(args.num_threads or 1)
    set_seed(args.seed)

    # The teacher: frozen, in evaluation mode; the student and the fake score start as copies of it.
    with accelerator.main_process_first():
        teacher = load_world_model(args.teacher_model, device=accelerator.device)
    teacher.model.requires_grad_(False).eval()
    vae, scheduler, teacher_config = teacher.vae, teacher.scheduler, teacher.config
    vae.requires_grad_(False)
    args.preset, args.context_length = teacher_config.model.preset, teacher_config.context_length
    args.num_actions, args.holdout_fraction = None, None
    with accelerator.main_process_first():
        action_names, train_windows, heldout_windows, _ = load_windows(
            args, vae, heldout_episodes=teacher_config.dataset.get("heldout_episodes")
        )
    if action_names != teacher_config.action_names:
        raise DatasetError(f"the dataset's actions are not the teacher's ({', '.join(teacher_config.action_names)})")
    settings = distill_settings(args, teacher_config, scheduler, accelerator.device)
    provenance = {"method": "dmd2" if settings.adversarial_weight else "dmd", "teacher": str(args.teacher_model)}
    recorded = ("guidance_scale", "adversarial_weight", "context_noise", "own_context_fraction", "regression_weight")
    provenance.update({name: getattr(settings, name) for name in recorded})
    config = student_config(teacher_config, provenance)
    validation_windows = pick_validation_windows(args, heldout_windows, vae, config)
    accelerator.print(
        f"data: {len(train_windows)} training windows, {len(heldout_windows)} held out; teacher "
        f"{args.teacher_model} ({config.num_actions} actions, context {config.context_length}); CFG "
        f"{settings.guidance_scale}, adversarial weight {settings.adversarial_weight}"
    )

    discriminator = LatentDiscriminator(config.model.latent_channels) if settings.adversarial_weight else None
    models = DistillationModels(copy.deepcopy(teacher.model), copy.deepcopy(teacher.model), discriminator)
    models.requires_grad_(True).train()
    groups = [
        {"params": models.student.parameters(), "lr": args.learning_rate},
        {"params": models.fake_score.parameters(), "lr": args.fake_score_learning_rate or args.learning_rate},
    ]
    if discriminator is not None:
        groups.append({"params": discriminator.parameters(), "lr": args.fake_score_learning_rate or args.learning_rate})
    optimizer = make_optimizer(args.optimizer, groups, args.learning_rate, args.adam_weight_decay)
    lr_scheduler = make_lr_scheduler(args, optimizer, accelerator)
    dataloader = torch.utils.data.DataLoader(
        train_windows,
        batch_size=args.train_batch_size,
        shuffle=True,
        num_workers=args.dataloader_num_workers,
        drop_last=len(train_windows) >= args.train_batch_size,
        generator=torch.Generator().manual_seed(args.seed),
    )
    models, optimizer, dataloader, lr_scheduler = accelerator.prepare(models, optimizer, dataloader, lr_scheduler)
    student = accelerator.unwrap_model(models).student
    ema = make_ema(args.ema_decay, accelerator, student)
    _, (one_step,) = ddim_schedule(scheduler, 1, accelerator.device)

    def loss_of_batch(batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        return models(batch, generator, teacher.model, scheduler, config, settings, one_step)

    def validate_now(step: int) -> float:
        with ema_weights(ema, student):
            return log_validation(
                accelerator, student, vae, scheduler, config, validation_windows, output_dir, step, args.seed
            )

    hooks = Hooks(
        check_checkpoint=lambda checkpoint: check_resumable(checkpoint, config),
        checkpoint_files={CONFIG_FILE: config.to_dict()},
        after_step=None if ema is None else lambda step: ema.step(student.parameters()),
        validate=validate_now,
    )
    run = train(
        accelerator,
        LoopOptions.from_args(args, project="distill"),
        models,
        optimizer,
        lr_scheduler,
        dataloader,
        loss_of_batch,
        hooks,
    )

    summary: dict[str, Any] = {}
    if accelerator.is_main_process:
        if run.validated_step != run.step:
            run.validation, run.validated_step = validate_now(run.step), run.step
        with ema_weights(ema, student):
            save_world_model(output_dir, student, vae, config, scheduler, model_card=model_card(config))
        args.dataset_name = str(args.dataset_name)
        summary = write_summary(args, run, config, accelerator)
        if args.push_to_hub:
            push_to_hub(args, output_dir, HUB_FILES, f"1-step student after {run.step} steps")
    accelerator.end_training()
    return summary


def distill_settings(args: argparse.Namespace, teacher_config, scheduler, device: torch.device) -> DistillSettings:
    steps = scheduler.config.num_train_timesteps
    teacher_steps: tuple = ()
    if args.regression_weight > 0:
        _, schedule = ddim_schedule(
            scheduler, teacher_config.num_inference_steps, device, teacher_config.sampler_timesteps
        )
        teacher_steps = tuple(schedule)
    return DistillSettings(
        guidance_scale=float(args.guidance_scale or teacher_config.guidance_scale),
        min_timestep=int(args.min_timestep_fraction * (steps - 1)),
        max_timestep=int(args.max_timestep_fraction * (steps - 1)),
        adversarial_weight=float(args.adversarial_weight),
        context_noise=args.context_noise,
        own_context_fraction=float(args.own_context_fraction),
        regression_weight=float(args.regression_weight),
        teacher_steps=teacher_steps,
    )


def model_card(config) -> str:
    method = config.distillation
    return (
        "---\ntags:\n- gamengen\n- world-model\n- vizdoom\n- distillation\n---\n\n"
        f"# GameNGen world model, distilled to one step ({config.model.preset})\n\n"
        f"A 1-step student of {method['teacher']} by distribution matching ({method['method']}: teacher CFG "
        f"{method['guidance_scale']}, adversarial weight {method['adversarial_weight']}). Predicts the next "
        f"{config.model.frame_width}x{config.model.frame_height} DOOM frame from the last {config.context_length} "
        f"frames and actions in one UNet call.\n\n```json\n{json.dumps(method, indent=2)}\n```\n"
    )


if __name__ == "__main__":
    run_trainer(main, parse_args, (DatasetError, ModelLoadError, UsageError), error_code=2)
