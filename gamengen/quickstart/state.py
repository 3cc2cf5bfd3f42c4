"""The run folder's record of what is finished (``quickstart.json``): a stage is kept only when it ran with
the same commands; a stage redone has its outputs moved aside, never deleted."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

from gamengen.files import write_json_atomic
from gamengen.quickstart.stages import STAGES

STATE_FILE = "quickstart.json"


class QuickstartError(RuntimeError):
    """A stage failed or the run folder cannot be used as asked (the message says what to do)."""


def load_state(run: Path) -> dict[str, Any]:
    path = run / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


def save_state(run: Path, state: dict[str, Any]) -> None:
    write_json_atomic(run / STATE_FILE, state)


def move_aside(path: Path) -> Path | None:
    """Rename ``path`` to ``<name>.old-<time>`` (None when it does not exist)."""
    if not path.exists():
        return None
    target = path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(target)
    return target


def finished(state: dict[str, Any], outputs: dict[str, list[Path]], stage: str) -> bool:
    """Whether the stage is recorded as finished and the file that says so is still there."""
    return bool(state["stages"].get(stage)) and (not outputs[stage] or outputs[stage][0].exists())


def first_redone(redo: list[str]) -> int:
    """The index of the first stage to run again for ``--redo``: redoing ppo or generate redoes the whole dataset."""
    first = min((STAGES.index(s) for s in redo), default=len(STAGES))
    return 0 if first <= STAGES.index("generate") else first


def check_settings(run: Path, state: dict[str, Any], commands: dict[str, list[list[str]]], first_redo: int) -> None:
    """Refuse a finished stage, not to be redone, that ran with other commands (other sizes) than these."""
    for index, stage in enumerate(STAGES):
        recorded = state["stages"].get(stage)
        if recorded and recorded.get("commands") != [shlex.join(c) for c in commands[stage]] and index < first_redo:
            raise QuickstartError(
                f"{run} holds a '{stage}' stage run with other settings ({recorded['commands'][0][:120]}...): "
                f"choose another --output_dir, or pass --redo {stage} to run it (and the stages after it) again"
            )


def forget_redone(run: Path, state: dict[str, Any], outputs: dict[str, list[Path]], first_redo: int) -> None:
    """Forget the stages from ``first_redo`` on and move their outputs (and, from the start, the dataset) aside."""
    if first_redo >= len(STAGES):
        return
    for stage in STAGES[first_redo:]:
        state["stages"].pop(stage, None)
        for path in outputs[stage][1:]:
            moved = move_aside(path)
            if moved:
                print(f"[quickstart] moved {path} aside to {moved}")
    if first_redo == 0:
        moved = move_aside(run / "dataset")
        if moved:
            print(f"[quickstart] moved {run / 'dataset'} aside to {moved}")
    save_state(run, state)
