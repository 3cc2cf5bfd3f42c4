"""What the two trainers (train_text_to_image.py, finetune_autoencoder.py) share: the accelerate options and the
Accelerator (its launch checked by ``gamengen.launch``), and THE training loop (``train``). docs/training.md
describes a run; its folder and ``checkpoint-<step>`` subfolders are handled by ``gamengen.run_folder``.

A trainer builds its model(s), optimizer, learning-rate schedule and DataLoader, passes them through
``accelerator.prepare``, and hands them to ``train`` with a loss function for one batch and ``Hooks``
(validation, an EMA update, a check of the checkpoint it resumes). ``train`` owns everything between:
resumption, skipping the batches a resumed epoch already consumed, ``set_epoch``, gradient
accumulation, clipping, the progress bar, logging, and the periodic and final checkpoints.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration
from tqdm.auto import tqdm

from gamengen.devices import cpu_computes_bf16
from gamengen.launch import check_launch
from gamengen.run_folder import CHECKPOINT_PREFIX, DEFAULT_CHECKPOINTS_KEPT, UsageError, resume, save_checkpoint


class TrainingInterrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped the run; the training state of ``step`` was saved to ``checkpoint``."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        self.step, self.checkpoint = step, checkpoint
        where = f"saved {checkpoint}" if checkpoint is not None else "nothing to save (no step done)"
        super().__init__(f"interrupted at step {step}: {where}; continue with --resume_from_checkpoint latest")


EXIT_INTERRUPTED = 130  # what a shell reports for a program stopped by Ctrl-C


def run_trainer(
    main: Callable[[argparse.Namespace], Any],
    parse_args: Callable[[], argparse.Namespace],
    user_errors: tuple[type[Exception], ...],
    error_code: int = 2,
) -> None:
    """A trainer's command line: user errors as one line (exit ``error_code``); Ctrl-C or SIGTERM (a job
    scheduler's stop) saves the training state and exits 130 with how to continue, never a traceback."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        main(parse_args())
    except (*user_errors, UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error_code)
    except TrainingInterrupted as stop:
        print(stop, file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:  # before training started: nothing to save
        print("interrupted before training started: nothing saved", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


# ----------------------------------------------------------------------------------------------
# The shared options and run set-up


def add_run_arguments(train: Any, logging: Any, checkpointing_steps: int, pushed: str) -> None:
    """The options every accelerate training script shares (diffusers' names): learning-rate schedule,
    gradient accumulation, mixed precision, checkpointing and resumption, trackers and the Hub."""
    train.add_argument(
        "--gradient_accumulation_steps", type=int, default=1, help="batches accumulated into one optimisation step"
    )
    train.add_argument(
        "--lr_scheduler",
        default="constant",
        help="diffusers scheduler: constant, constant_with_warmup, linear, cosine, ...",
    )
    train.add_argument("--lr_warmup_steps", type=int, default=0, help="warm-up steps of the learning-rate schedule")
    train.add_argument("--adam_weight_decay", type=float, default=0.0, help="AdamW weight decay")
    train.add_argument(
        "--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="default: the accelerate config's"
    )
    train.add_argument(
        "--checkpointing_steps",
        type=int,
        default=checkpointing_steps,
        help="save the training state to output_dir/checkpoint-<step> every this many steps",
    )
    train.add_argument(
        "--checkpoints_total_limit",
        type=int,
        default=DEFAULT_CHECKPOINTS_KEPT,
        help="keep only the newest this many checkpoints (0: keep all; one sd14 checkpoint is ~5.3 GB)",
    )
    train.add_argument(
        "--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder; continues its step count"
    )
    train.add_argument(
        "--max_train_seconds",
        type=float,
        default=None,
        help="also stop at the first logging step after this many seconds of training (validation included): "
        "a run of a fixed time, ending with its checkpoint",
    )
    logging.add_argument(
        "--logging_steps",
        type=int,
        default=10,
        help="steps between two reads of the loss from the device (each read waits for the GPU to finish)",
    )
    logging.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, all, or none")
    logging.add_argument("--logging_dir", default="logs", help="tracker folder, relative to output_dir")
    logging.add_argument("--push_to_hub", action="store_true", help=f"upload {pushed} to the Hub")
    logging.add_argument(
        "--hub_model_id", default=None, help="Hub repo for --push_to_hub (default: the output_dir's name)"
    )


def make_accelerator(args: Any, output_dir: Path) -> Accelerator:
    """The Accelerator of a run from the options of ``add_run_arguments``, after checking the launch."""
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
        # A shuffle seeded by (seed, epoch): a resumed run continues its epoch's order, not the first epoch's.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    check_launch(accelerator)
    if accelerator.device.type == "cpu" and accelerator.mixed_precision == "bf16" and not cpu_computes_bf16():
        accelerator.print(
            "warning: --mixed_precision bf16 on a CPU without bf16 instructions: torch emulates bf16, and the tiny "
            "world model's training steps ran 13x slower than in fp32 that way (docs/training.md#bf16-on-a-cpu). "
            "Pass --mixed_precision no on this machine."
        )
    return accelerator


def make_lr_scheduler(args: Any, optimizer: torch.optim.Optimizer, accelerator: Accelerator) -> Any:
    """The diffusers learning-rate schedule of ``--lr_scheduler`` (steps counted on every process, as
    accelerate steps a prepared scheduler once per process)."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )


def push_to_hub(args: Any, output_dir: Path, allow_patterns: list[str], commit_message: str) -> None:
    """Upload the run's results (``allow_patterns`` inside ``output_dir``) to ``--hub_model_id``."""
    from huggingface_hub import create_repo, upload_folder

    repo_id = create_repo(args.hub_model_id or output_dir.resolve().name, exist_ok=True).repo_id
    upload_folder(
        repo_id=repo_id, folder_path=str(output_dir), allow_patterns=allow_patterns, commit_message=commit_message
    )
    print(f"pushed to https://huggingface.co/{repo_id}")


# ----------------------------------------------------------------------------------------------
# The training loop

# One batch -> (the loss to minimise, other scalar tensors to log). The generator is the run's source of
# randomness for the loss (noise, timesteps), seeded by ``loss_seed``.
LossFunction = Callable[[Any, torch.Generator], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class LoopOptions:
    """What ``train`` reads of a trainer's arguments (``from_args``)."""

    output_dir: Path
    project: str  # the trackers' project name
    max_train_steps: int
    gradient_accumulation_steps: int
    max_grad_norm: float
    checkpointing_steps: int
    checkpoints_total_limit: int | None
    validation_steps: int
    resume_from_checkpoint: str | None
    seed: int
    logging_steps: int = 10
    max_train_seconds: float | None = None
    tracker_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace, project: str) -> LoopOptions:
        names = {f.name for f in fields(cls)} - {"output_dir", "project", "tracker_config"}
        tracker_config = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in vars(args).items()}
        return cls(
            output_dir=Path(args.output_dir),
            project=project,
            tracker_config=tracker_config,
            **{name: getattr(args, name) for name in names},
        )


@dataclass
class Hooks:
    """What a trainer adds to the loop; every hook is optional."""

    # Refuse a checkpoint this run cannot continue (a UsageError), before it is loaded.
    check_checkpoint: Callable[[Path], None] | None = None
    # JSON files written into every checkpoint (name -> values), e.g. the model config check_checkpoint reads.
    checkpoint_files: dict[str, Any] = field(default_factory=dict)
    # After each optimisation step, with the new step number (e.g. an EMA update).
    after_step: Callable[[int], None] | None = None
    # Every ``validation_steps`` steps, on the main process: log held-out results, return their score.
    validate: Callable[[int], float] | None = None


@dataclass
class TrainingRun:
    """What ``train`` did, for the trainer's summary."""

    start_step: int  # the resumed checkpoint's step, or 0
    step: int  # the step reached
    train_seconds: float = 0.0  # in optimisation steps (validation and checkpoints not counted)
    samples_seen: int = 0  # training samples over all processes
    losses: list[float] = field(default_factory=list)  # one per optimisation step of this run
    metrics: dict[str, list[float]] = field(default_factory=dict)  # the loss function's other scalars, per step
    validation: float | None = None  # the newest score of Hooks.validate
    validated_step: int | None = None  # ... and the step it was measured at
    out_of_time: bool = False  # stopped by --max_train_seconds before --max_train_steps

    @property
    def steps_this_run(self) -> int:
        return self.step - self.start_step

    @property
    def samples_per_second(self) -> float | None:
        return self.samples_seen / self.train_seconds if self.train_seconds > 0 else None

    @property
    def steps_per_second(self) -> float | None:
        return self.steps_this_run / self.train_seconds if self.train_seconds > 0 else None


def loss_seed(seed: int, step: int, micro_batch: int, process_index: int) -> int:
    """The seed of the randomness of one micro-batch (noise, timesteps, noise buckets, context dropout, VAE
    posterior samples): independent streams for every (seed, step, micro-batch, process), so the processes
    of a multi-GPU run draw differently, and a resumed run draws what an uninterrupted one would have."""
    return int(np.random.SeedSequence([seed, step, micro_batch, process_index]).generate_state(1)[0])


def batch_length(batch: Any) -> int:
    """Samples in a batch: a tensor, or a dict / sequence of tensors."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    return batch_length(next(iter(batch.values())) if isinstance(batch, dict) else batch[0])


def train(
    accelerator: Accelerator,
    options: LoopOptions,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    dataloader: Any,
    loss_of_batch: LossFunction,
    hooks: Hooks | None = None,
) -> TrainingRun:
    """Train the prepared ``model`` to ``options.max_train_steps`` steps, resuming a checkpoint first
    (``--resume_from_checkpoint``), and end with a checkpoint of the final step."""
    hooks = hooks or Hooks()
    step = resume(accelerator, options.output_dir, options.resume_from_checkpoint, hooks.check_checkpoint)
    run = TrainingRun(start_step=step, step=step)
    if accelerator.is_main_process:
        accelerator.init_trackers(options.project, config=options.tracker_config)

    # A resumed run starts in the epoch of its step, after the batches that epoch already consumed.
    steps_per_epoch = max(1, math.ceil(len(dataloader) / options.gradient_accumulation_steps))
    first_epoch = run.step // steps_per_epoch
    batches_to_skip = (run.step % steps_per_epoch) * options.gradient_accumulation_steps
    generator = torch.Generator(device=accelerator.device)
    progress = tqdm(
        range(options.max_train_steps), initial=run.step, desc="steps", disable=not accelerator.is_local_main_process
    )
    model.train()
    bookkeeping = StepBookkeeping(accelerator, options, run, hooks, lr_scheduler, progress)
    epoch = first_epoch
    micro_batch = 0
    try:
        while run.step < options.max_train_steps and not run.out_of_time:
            skip = batches_to_skip if epoch == first_epoch else 0
            loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
            loader.set_epoch(epoch)
            for batch in loader:
                seed = loss_seed(options.seed, run.step, micro_batch, accelerator.process_index)
                generator.manual_seed(seed)
                torch.manual_seed(seed)  # what draws from the global generator (dropout, posterior samples)
                with accelerator.accumulate(model):
                    loss, metrics = loss_of_batch(batch, generator)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), options.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                run.samples_seen += batch_length(batch) * accelerator.num_processes
                micro_batch += 1
                if not accelerator.sync_gradients:
                    continue  # a micro-batch of an accumulated step
                run.step += 1
                micro_batch = 0
                bookkeeping.step_done(model, loss, metrics)
                if run.step >= options.max_train_steps or run.out_of_time:
                    break
            epoch += 1
        bookkeeping.flush()
    except KeyboardInterrupt:
        raise bookkeeping.interrupted() from None
    progress.close()
    accelerator.wait_for_everyone()
    # The final state, so that a later run with a larger --max_train_steps can continue this one.
    if accelerator.is_main_process and bookkeeping.last_checkpoint != run.step:
        bookkeeping.save_checkpoint()
    return run


class StepBookkeeping:
    """``train``'s bookkeeping after each optimisation step: the losses still on the device (read every
    ``logging_steps``, one wait), the clock of training time (validation and checkpoints not counted), the
    periodic checkpoints and validation, and the newest checkpoint."""

    def __init__(
        self, accelerator: Accelerator, options: LoopOptions, run: TrainingRun, hooks: Hooks, lr_scheduler, progress
    ) -> None:
        self.accelerator, self.options, self.run, self.hooks = accelerator, options, run, hooks
        self.lr_scheduler, self.progress = lr_scheduler, progress
        self.last_checkpoint = run.step if run.step > 0 else None
        self.limit = options.checkpoints_total_limit or None  # 0: keep all
        self.unlogged: list[dict[str, torch.Tensor]] = []  # per step, still on the device
        self.window_started = time.perf_counter()  # training time is read after the device has finished (flush)
        self.started = self.window_started  # --max_train_seconds counts from here

    def step_done(self, model: torch.nn.Module, loss: torch.Tensor, metrics: dict[str, torch.Tensor]) -> None:
        """After optimisation step ``run.step``: the hook, the loss kept for the next log, and every
        ``logging_steps``, ``checkpointing_steps`` and ``validation_steps`` the log, checkpoint and validation."""
        run, options, hooks, accelerator = self.run, self.options, self.hooks, self.accelerator
        if hooks.after_step is not None:
            hooks.after_step(run.step)
        self.unlogged.append({"loss": loss.detach(), **{name: value.detach() for name, value in metrics.items()}})
        self.progress.update(1)
        checkpoint_now = run.step % options.checkpointing_steps == 0
        validate_now = run.step % options.validation_steps == 0 and hooks.validate is not None
        if run.step % options.logging_steps == 0 or checkpoint_now or validate_now:
            self.flush()
        if checkpoint_now:
            if accelerator.is_main_process:
                self.save_checkpoint()
            self.last_checkpoint = run.step
        if validate_now and accelerator.is_main_process:
            run.validation, run.validated_step = hooks.validate(run.step), run.step
            model.train()
        if checkpoint_now or validate_now:
            self.window_started = time.perf_counter()  # checkpoints and validation are not training time
        if run.step % options.logging_steps == 0 and self.out_of_time():
            run.out_of_time = True

    def out_of_time(self) -> bool:
        """Whether ``--max_train_seconds`` have passed, on any process (all stop at the same step)."""
        if self.options.max_train_seconds is None:
            return False
        late = float(time.perf_counter() - self.started >= self.options.max_train_seconds)
        flag = torch.tensor(late, device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def flush(self) -> None:
        """Stop the clock once the queued steps have run, read the losses of the steps not yet logged from the
        device, log their mean at the current step, and show it in the progress bar."""
        accelerator, run, unlogged = self.accelerator, self.run, self.unlogged
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize(accelerator.device)  # the clock is read once the queued steps have run
        run.train_seconds += time.perf_counter() - self.window_started
        if unlogged:
            values = {name: torch.stack([step[name].float() for step in unlogged]).tolist() for name in unlogged[0]}
            run.losses.extend(values["loss"])
            for name, steps in values.items():
                if name != "loss":
                    run.metrics.setdefault(name, []).extend(steps)
            logs = {name: sum(v) / len(v) for name, v in values.items()}
            logs.update(lr=self.lr_scheduler.get_last_lr()[0], samples_per_second=run.samples_per_second or 0.0)
            unlogged.clear()
            self.progress.set_postfix(loss=f"{logs['loss']:.4f}", samples_s=f"{logs['samples_per_second']:.1f}")
            accelerator.log(logs, step=run.step)
        self.window_started = time.perf_counter()

    def interrupted(self) -> TrainingInterrupted:
        """Ctrl-C: keep what was trained since the last checkpoint, then tell the trainer to stop."""
        self.progress.close()
        saved = None
        if self.run.step > (self.last_checkpoint or 0) and self.accelerator.is_main_process:
            saved = self.save_checkpoint()
        elif self.last_checkpoint is not None:
            saved = self.options.output_dir / f"{CHECKPOINT_PREFIX}{self.last_checkpoint}"
        return TrainingInterrupted(self.run.step, saved)

    def save_checkpoint(self) -> Path:
        """The training state at the current step, in output_dir/checkpoint-<step> (main process)."""
        args = (self.accelerator, self.options.output_dir, self.run.step, self.limit, self.hooks.checkpoint_files)
        return save_checkpoint(*args)
