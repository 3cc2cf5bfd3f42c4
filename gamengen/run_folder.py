"""A training run's folder: never overwritten by a new run, with atomic accelerate checkpoints
(``checkpoint-<step>``, the newest few kept) that a run resumes from (docs/training.md#checkpoints-and-resuming).
Both trainers use it through ``gamengen.training.train``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from gamengen.errors import UsageError
from gamengen.files import atomic_path, write_json_atomic

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE_FILE = "training_state.json"
# Checkpoints kept by default: one sd14 checkpoint (fp32 weights + Adafactor state) is ~5.3 GB.
DEFAULT_CHECKPOINTS_KEPT = 3


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (folders being written are hidden, see save_checkpoint)."""
    found = output_dir.glob(f"{CHECKPOINT_PREFIX}*")
    found = [p for p in found if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(checkpoint: Path) -> int:
    """The global step a ``checkpoint-<step>`` folder was saved at."""
    return int(checkpoint.name[len(CHECKPOINT_PREFIX) :])


def check_run_dir(output_dir: Path, resuming: bool, results: list[str]) -> None:
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
    """The checkpoint ``--resume_from_checkpoint`` names ('latest': the newest, None when there is none)."""
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        path = output_dir / resume_from_checkpoint
    if not path.is_dir() or not path.name[len(CHECKPOINT_PREFIX) :].isdigit():
        raise UsageError(
            f"--resume_from_checkpoint {resume_from_checkpoint}: no such checkpoint folder "
            f"(expected 'latest' or .../{CHECKPOINT_PREFIX}<step>)"
        )
    return path


def prune_checkpoints(output_dir: Path, keep: int | None) -> None:
    """Remove all but the newest ``keep`` checkpoints (None: keep all)."""
    if keep is None:
        return
    existing = list_checkpoints(output_dir)
    for old in existing[: max(0, len(existing) - keep)]:
        shutil.rmtree(old)


def save_checkpoint(
    accelerator: Accelerator, output_dir: Path, step: int, limit: int | None, files: dict[str, Any] | None = None
) -> Path:
    """Save the training state (plus ``files``: name -> JSON values) to a hidden folder, then rename it:
    a checkpoint that exists is complete. ``limit``: at most this many checkpoints, this one included."""
    prune_checkpoints(output_dir, None if limit is None else limit - 1)  # make room for the new one
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    with atomic_path(final) as tmp:
        accelerator.save_state(str(tmp))
        for name, values in {TRAINING_STATE_FILE: {"global_step": step}, **(files or {})}.items():
            write_json_atomic(tmp / name, values, indent=2)
    return final


def resume(
    accelerator: Accelerator,
    output_dir: Path,
    resume_from_checkpoint: str | None,
    check: Callable[[Path], None] | None = None,
) -> int:
    """Load the checkpoint ``--resume_from_checkpoint`` names (after ``check`` accepts it); its step, or 0.

    Every process must find the same checkpoint: only the main process saves them, so on nodes that do not
    share the output folder another process would start from step 0 with other weights (and the run would
    hang at its end). They compare what they found and all refuse when they differ."""
    if resume_from_checkpoint is None:
        return 0
    checkpoint = find_checkpoint(output_dir, resume_from_checkpoint)
    if accelerator.num_processes > 1:
        found = torch.tensor([checkpoint_step(checkpoint) if checkpoint is not None else -1], device=accelerator.device)
        steps = accelerator.gather(found).tolist()
        if len(set(steps)) > 1:
            seen = ", ".join(f"process {i}: {'none' if s < 0 else f'checkpoint-{s}'}" for i, s in enumerate(steps))
            raise UsageError(
                f"the processes found different checkpoints to resume in {output_dir} ({seen}). Only the main "
                "process saves checkpoints: put --output_dir on storage every node sees, or copy the checkpoint "
                "folder to the same path on every node, then resume again"
            )
    if checkpoint is None:
        accelerator.print(f"no checkpoint in {output_dir}: starting a new run")
        return 0
    if check is not None:
        check(checkpoint)
    accelerator.load_state(str(checkpoint))
    step = checkpoint_step(checkpoint)
    accelerator.print(f"resumed from {checkpoint} at step {step}")
    return step
