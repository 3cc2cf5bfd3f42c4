"""Training-run plumbing shared by the training scripts: output folders that are never
overwritten, atomic accelerate checkpoints (``checkpoint-<step>``) and their resumption."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

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
