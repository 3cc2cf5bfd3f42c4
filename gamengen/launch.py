"""Whether the processes of a launch (``accelerate launch``, torchrun) are connected: a trainer refuses a launch whose
processes would each believe they are the only one, all writing the same folder."""

from __future__ import annotations

import os
from pathlib import Path

from accelerate import Accelerator

from gamengen.errors import UsageError

MISLAUNCH_FIX = (
    "on GPUs: accelerate launch --multi_gpu --num_processes N ...; on a CPU (gloo): "
    "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N --num_machines 1 ..."
)


def check_launch(accelerator: Accelerator) -> None:
    """Refuse a launch whose processes are not connected: each would believe it is the only one, and all
    would write the same folder (``--multi_gpu`` without usable GPUs or backend), or a launch that asked for
    several processes and got one (``--num_processes N`` without ``--multi_gpu``)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size > 1 and accelerator.num_processes == 1:
        raise UsageError(
            f"{world_size} processes were launched but they are not connected (no distributed backend: each "
            "believes it is the main one and all would write the same --output_dir). Launch with a backend: "
            f"{MISLAUNCH_FIX}"
        )
    asked = launcher_num_processes()
    if asked is not None and asked > 1 and accelerator.num_processes == 1:
        raise UsageError(
            f"accelerate launch was asked for {asked} processes but started one (--num_processes without "
            f"--multi_gpu runs a single process). {MISLAUNCH_FIX}"
        )


def launcher_num_processes() -> int | None:
    """``--num_processes`` of the ``accelerate launch`` that started this process (None: not launched by it)."""
    try:
        words = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    head = " ".join(words[:4])  # `accelerate launch ...` or `python -m accelerate.commands.launch ...`
    if "accelerate" not in head or "launch" not in head:
        return None
    for index, word in enumerate(words):
        if word.startswith("--num_processes"):
            value = word.split("=", 1)[1] if "=" in word else (words[index + 1] if index + 1 < len(words) else "")
            return int(value) if value.isdigit() else None
    return None
