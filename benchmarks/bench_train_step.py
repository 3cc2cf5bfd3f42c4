"""Benchmark: training samples/s of the tiny world model on the CPU, per way of running the step.

One optimisation step is what ``train_text_to_image.py`` runs: ``diffusion_loss`` (noise augmentation,
residual base, context dropout, v-prediction MSE) on a batch of cached latent windows, backward, gradient
clipping and an AdamW step, on the tiny preset's UNet (random init; speed does not depend on the weights).
Configurations: fp32; bf16 autocast (``--mixed_precision bf16``); channels_last weights and inputs; both;
optionally ``torch.compile`` of the model (``--compile``, a minute or more of compilation on a CPU).

    python benchmarks/bench_train_step.py [--steps 30] [--threads 1] [--compile]

Results: benchmarks/results/train_step.json and a markdown table on stdout. Times are medians over the
measured steps (after warm-up steps); the load average before and after each run is recorded, since another
process on the cores changes everything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gamengen.config import get_world_model_config  # noqa: E402
from gamengen.diffusion import diffusion_loss  # noqa: E402
from gamengen.model import build_world_model, make_scheduler  # noqa: E402

ACTIONS = [f"A{i}" for i in range(15)]  # the recorder's 15 actions; names do not matter for speed
CONFIGURATIONS = {
    "fp32": {"bf16": False, "channels_last": False},
    "bf16 autocast": {"bf16": True, "channels_last": False},
    "channels_last": {"bf16": False, "channels_last": True},
    "bf16 + channels_last": {"bf16": True, "channels_last": True},
}


def measure(batch_size: int, steps: int, warmup: int, bf16: bool, channels_last: bool, compile: bool) -> dict:
    torch.manual_seed(0)
    config = get_world_model_config("tiny", ACTIONS)
    model = build_world_model(config).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    forward = torch.compile(model) if compile else model
    scheduler = make_scheduler(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    shape = config.model.latent_shape
    generator = torch.Generator().manual_seed(0)
    batch = {
        "target": torch.randn(batch_size, *shape).contiguous(memory_format=memory_format),
        "context": torch.randn(batch_size, config.context_length, *shape),
        "actions": torch.randint(0, len(ACTIONS), (batch_size, config.context_length)),
    }
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    times = []
    load_before = os.getloadavg()[0]
    for index in range(warmup + steps):
        started = time.perf_counter()
        with autocast:
            loss = diffusion_loss(forward, batch, config, scheduler, generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= warmup:
            times.append(time.perf_counter() - started)
    seconds = float(np.median(times))
    return {
        "step_ms": 1000 * seconds,
        "samples_per_s": batch_size / seconds,
        "steps": steps,
        "warmup_steps": warmup,
        "load_average": [load_before, os.getloadavg()[0]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="measured optimisation steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="steps run before measuring")
    parser.add_argument("--batch_size", type=int, default=32, help="the tiny preset's batch (32)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the tiny preset trains on 1)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile'd fp32 and bf16 steps")
    parser.add_argument("--output", default=str(REPO / "benchmarks/results/train_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configurations = dict(CONFIGURATIONS)
    if args.compile:
        configurations["compiled fp32"] = {"bf16": False, "channels_last": False, "compile": True}
        configurations["compiled bf16"] = {"bf16": True, "channels_last": False, "compile": True}
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "threads": args.threads,
        "batch_size": args.batch_size,
        "configurations": {},
    }
    print(f"| tiny world model, batch {args.batch_size}, {args.threads} thread(s) | ms per step | samples/s |")
    print("|---|---|---|")
    for name, options in configurations.items():
        result = measure(
            args.batch_size,
            args.steps,
            args.warmup,
            compile=options.get("compile", False),
            **{key: options[key] for key in ("bf16", "channels_last")},
        )
        results["configurations"][name] = result
        print(f"| {name} | {result['step_ms']:.0f} | **{result['samples_per_s']:.1f}** |", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(args.output).with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=1))
    os.replace(temporary, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
