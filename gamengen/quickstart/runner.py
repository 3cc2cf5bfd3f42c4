"""Running one quickstart stage: its scripts with this interpreter, the output to the terminal and to
``logs/<stage>.log``, an interrupted stage resumed (the trainers) or started again, and the time it took
recorded in the run folder's state."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gamengen.quickstart.stages import HELDOUT, STAGES
from gamengen.quickstart.state import QuickstartError, move_aside, save_state

REPO = Path(__file__).resolve().parents[2]


def fmt_seconds(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def run_stage(
    run: Path,
    stage: str,
    commands: list[list[str]],
    outputs: dict[str, list[Path]],
    state: dict[str, Any],
    expected: float,
    threads: int | None,
) -> None:
    """Run the stage's commands (after an interruption: resumed or started again), then record it as finished."""
    number = STAGES.index(stage) + 1
    if stage == "generate" and "ppo" not in state["stages"]:
        raise QuickstartError("the generate stage needs the ppo stage's agent")
    resume = prepare_interrupted(run, stage, outputs)
    log = run / "logs" / f"{stage}.log"
    print(f"\n[quickstart] {number}/{len(STAGES)} {stage}: estimated {fmt_seconds(expected)} (log: {log})", flush=True)
    started = time.perf_counter()
    ran = []
    for command in commands:
        full = resolve_heldout(run, command) + resume
        ran.append(shlex.join(full))
        print(f"[quickstart] $ python {shlex.join(full)}", flush=True)
        code = run_logged(full, log, threads)
        if code != 0:
            raise QuickstartError(
                f"stage '{stage}' failed (exit {code}): see {log}; rerun the quickstart to continue from there"
            )
    seconds = time.perf_counter() - started
    state["stages"][stage] = {
        "seconds": seconds,
        "estimate": expected,
        "commands": [shlex.join(c) for c in commands],
        "ran": ran,
    }
    save_state(run, state)
    print(f"[quickstart] {stage} finished in {fmt_seconds(seconds)} (estimated {fmt_seconds(expected)})", flush=True)


def prepare_interrupted(run: Path, stage: str, outputs: dict[str, list[Path]]) -> list[str]:
    """An interrupted stage: the trainers resume from their last checkpoint (the options returned); the others
    start again with their partial output moved aside (generate only adds shards: none are lost)."""
    if stage in ("vae", "world", "distill") and outputs[stage][1].exists():
        return ["--resume_from_checkpoint", "latest"]
    if stage == "ppo":
        for path in (run / "dataset", run / "agent"):
            if path.exists():
                print(f"[quickstart] moved the interrupted {path} aside to {move_aside(path)}")
    elif stage != "generate" and outputs[stage][1].exists():
        print(f"[quickstart] moved the interrupted {outputs[stage][1]} aside to {move_aside(outputs[stage][1])}")
    return []


def resolve_heldout(run: Path, command: list[str]) -> list[str]:
    """The command with HELDOUT replaced by ``--episodes <the world model's longest held-out episode>``."""
    command = list(command)
    if HELDOUT in command:
        at = command.index(HELDOUT)
        command[at : at + 1] = ["--episodes", heldout_episode(run)]
    return command


def heldout_episode(run: Path) -> str:
    """The longest of the world model's held-out episodes (never trained on): the rollouts start there."""
    from gamengen.episodes import open_dataset

    config = json.loads((run / "world_model" / "gamengen_config.json").read_text())
    heldout = config.get("dataset", {}).get("heldout_episodes") or []
    if not heldout:
        raise QuickstartError(f"{run / 'world_model'} records no held-out episode")
    dataset = open_dataset(run / "dataset")
    return max(heldout, key=lambda e: dataset.episodes[dataset.episode_ids.index(e)].length)


def run_logged(command: list[str], log: Path, threads: int | None = None) -> int:
    """Run a script with this interpreter; its output goes to the terminal and to the log file."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        **({"OMP_NUM_THREADS": str(threads)} if threads and threads > 0 else {}),
    }
    with open(log, "ab") as sink:
        sink.write(f"\n$ {shlex.join(command)}\n".encode())
        process = subprocess.Popen(
            [sys.executable, *command], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            while chunk := os.read(process.stdout.fileno(), 4096):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                sink.write(chunk)
            return process.wait()
        except KeyboardInterrupt:
            process.wait()  # the child got the same Ctrl-C and saves what it has
            raise
