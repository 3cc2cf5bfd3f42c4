"""Training-run plumbing shared by the training scripts: output folders that are never
overwritten, atomic accelerate checkpoints (``checkpoint-<step>``) and their resumption."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

CHECKPOINT_PREFIX = "checkpoint-"


class UsageError(ValueError):
    """Arguments or an output folder that this run cannot use as given."""


# ----------------------------------------------------------------------------------------------
# Output folder and checkpoints


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (folders being written are hidden, see save_checkpoint)."""
    found = [p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def check_output_dir(output_dir: Path, resuming: bool, results: list[str]) -> None:
    """A new run never overwrites the results of an earlier one (``results``: names of its final
    outputs inside ``output_dir``, plus any checkpoint); a resumed run continues it."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output_dir {output_dir} exists and is not a folder")
    candidates = [output_dir / name for name in results] + list_checkpoints(output_dir) if output_dir.exists() else []
    earlier = [p.name for p in candidates if p.exists()]
    if earlier and not resuming:
        raise UsageError(
            f"--output_dir {output_dir} already holds the results of an earlier run ({', '.join(earlier[:3])}). "
            "Continue it with --resume_from_checkpoint latest, or choose another --output_dir."
        )


def find_checkpoint(output_dir: Path, resume_from_checkpoint: str) -> Path | None:
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        path = output_dir / resume_from_checkpoint
    if not path.is_dir() or not path.name[len(CHECKPOINT_PREFIX) :].isdigit():
        raise UsageError(f"--resume_from_checkpoint {resume_from_checkpoint}: no such checkpoint folder (expected 'latest' or .../{CHECKPOINT_PREFIX}<step>)")
    return path


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, limit: int | None) -> None:
    """Save the training state to a hidden folder, then rename it: a checkpoint that exists is complete."""
    if limit is not None:
        existing = list_checkpoints(output_dir)
        for old in existing[: max(0, len(existing) - limit + 1)]:  # make room for the new one
            shutil.rmtree(old)
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = output_dir / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp))
    (tmp / "training_state.json").write_text(json.dumps({"global_step": step}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_json(path: Path, values: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(values, indent=2) + "\n")
    os.replace(tmp, path)


def checkpoint_step(checkpoint: Path) -> int:
    """The global step a ``checkpoint-<step>`` folder was saved at."""
    return int(checkpoint.name[len(CHECKPOINT_PREFIX) :])


def add_run_arguments(train: Any, logging: Any, checkpointing_steps: int, pushed: str) -> None:
    """The options every accelerate training script shares (diffusers' names): learning-rate schedule,
    mixed precision, checkpointing and resumption, trackers and the Hub."""
    train.add_argument("--lr_scheduler", default="constant", help="diffusers scheduler: constant, constant_with_warmup, linear, cosine, ...")
    train.add_argument("--lr_warmup_steps", type=int, default=0, help="warm-up steps of the learning-rate schedule")
    train.add_argument("--adam_weight_decay", type=float, default=0.0, help="AdamW weight decay")
    train.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="default: the accelerate config's")
    train.add_argument(
        "--checkpointing_steps", type=int, default=checkpointing_steps, help="save the training state to output_dir/checkpoint-<step> every this many steps"
    )
    train.add_argument("--checkpoints_total_limit", type=int, default=None, help="keep at most this many checkpoints (default: all)")
    train.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder; continues its step count")
    logging.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, all, or none")
    logging.add_argument("--logging_dir", default="logs", help="tracker folder, relative to output_dir")
    logging.add_argument("--push_to_hub", action="store_true", help=f"upload {pushed} to the Hub")
    logging.add_argument("--hub_model_id", default=None, help="Hub repo for --push_to_hub (default: the output_dir's name)")


def make_accelerator(args: Any, output_dir: Path) -> Accelerator:
    """The Accelerator of a run from the options of ``add_run_arguments``."""
    return Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)),
    )
