"""Benchmark: frames/s of the game engine (gamengen/engine.py), per stage (UNet, decode, total).

What the paper reports (section 5): 4 DDIM steps, 10 ms per UNet step + 10 ms decode on a TPU-v5 =
20 FPS. Here, every measurement is the engine's own ``step``: context noise, 4 DDIM steps with
classifier-free guidance (both branches in one UNet batch of 2), VAE decode, uint8 frame on the host.

* ``tiny`` preset (random init; speed does not depend on the weights), on the CPU: torch threads
  1 and 2, fp32 and bf16, with and without CFG, optionally ``torch.compile`` (``--compile``, ~1 min of
  compilation per configuration). Goal: >= 10 FPS on 2 CPU cores, so the tiny model plays on a laptop.
* ``sd14`` (``--sd14``): the paper's architecture (SD v1.4's UNet config, conv_in widened to
  4 x 65 channels for context 64, random init) at 320x256 with SD v1.4's VAE. On a CUDA machine:
  bf16 and fp16, eager and ``torch.compile`` (goal >= 20 FPS, aiming for 50); on a CPU only a
  one-frame smoke measurement (the GPU numbers are then "not measured here").

    python benchmarks/bench_engine.py [--frames 40] [--compile] [--sd14]

Results: benchmarks/results/engine.json and a markdown table on stdout. Times are medians over the
measured frames (after warm-up frames), so a short burst of other work on the machine does not
decide them; the load average before and after each run is recorded.
"""

from __future__ import annotations

import argparse
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

from gamengen.checkpoint import WorldModelBundle  # noqa: E402
from gamengen.config import get_world_model_config  # noqa: E402
from gamengen.engine import GameEngine  # noqa: E402
from gamengen.model import WorldModel, build_world_model, make_scheduler  # noqa: E402
from gamengen.vae import build_vae  # noqa: E402

ACTIONS = ["NOOP", "FORWARD", "BACKWARD", "TURN_LEFT", "TURN_RIGHT", "STRAFE_LEFT", "STRAFE_RIGHT", "ATTACK", "USE"]

# Stable Diffusion v1.4's UNet (CompVis/stable-diffusion-v1-4, unet/config.json): built with random
# weights, since only its size matters for speed.
SD14_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}


def tiny_bundle() -> WorldModelBundle:
    torch.manual_seed(0)
    config = get_world_model_config("tiny", ACTIONS)
    config.dataset = {"metadata": {"frame_skip": 4}}  # as a quickstart checkpoint: the carry-over turns the detail
    return WorldModelBundle(
        build_world_model(config).eval(), build_vae(config.model).eval(), make_scheduler(config), config
    )


def sd14_bundle() -> WorldModelBundle:
    """The paper's architecture with random weights: SD v1.4's UNet widened to context 64, SD v1.4's VAE."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    config = get_world_model_config("sd14", ACTIONS)
    unet = UNet2DConditionModel(
        **{**SD14_UNET_CONFIG, "in_channels": config.unet_in_channels, "num_class_embeds": config.noise_buckets}
    )
    return WorldModelBundle(
        WorldModel(unet, config.num_actions).eval(), build_vae(config.model).eval(), make_scheduler(config), config
    )


def on(bundle: WorldModelBundle, device: str, dtype: torch.dtype) -> WorldModelBundle:
    bundle.model.to(device=device, dtype=dtype)
    bundle.vae.to(device=device, dtype=dtype)
    return bundle


def measure(bundle: WorldModelBundle, frames: int, warmup: int, **engine_options: Any) -> dict[str, Any]:
    """ms per frame (median over ``frames`` steps after ``warmup`` steps) of an engine rolling out."""
    engine = GameEngine(bundle, seed=0, **engine_options)
    width, height = engine.frame_size
    context = np.random.default_rng(0).integers(0, 256, (engine.context_length, height, width, 3), dtype=np.uint8)
    engine.reset(context, [1] * (engine.context_length - 1))
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    for _ in range(warmup):
        engine.step(1)
    warmup_seconds = time.perf_counter() - started
    engine.timings.clear()
    for index in range(frames):
        engine.step(ACTIONS[index % len(ACTIONS)])
    median = {
        key: float(np.median([getattr(t, key) for t in engine.timings])) for key in ("unet_ms", "decode_ms", "total_ms")
    }
    return {
        **median,
        "fps": 1000.0 / median["total_ms"],
        "mean_fps": 1000.0 * len(engine.timings) / sum(t.total_ms for t in engine.timings),
        "unet_ms_per_ddim_step": median["unet_ms"] / engine.num_inference_steps,
        "frames": frames,
        "warmup_frames": warmup,
        "warmup_seconds": warmup_seconds,
        "load_average": [load_before, os.getloadavg()[0]],
        **{k: v for k, v in engine.describe().items() if k != "timesteps"},
    }


def row(name: str, result: dict[str, Any]) -> str:
    return (
        f"| {name} | {result['unet_ms']:.1f} ({result['unet_ms_per_ddim_step']:.1f} per step) | "
        f"{result['decode_ms']:.1f} | "
        f"{result['total_ms']:.1f} | **{result['fps']:.3g}** |"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=40, help="measured frames per configuration (tiny)")
    parser.add_argument("--warmup", type=int, default=3, help="frames generated before measuring")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also measure torch.compile'd tiny engines (CPU: ~1 min of compilation each)",
    )
    parser.add_argument(
        "--sd14", action="store_true", help="also measure the paper-sized model (CUDA: full matrix; CPU: one frame)"
    )
    parser.add_argument("--sd14_frames", type=int, default=30, help="measured frames per sd14 configuration on a GPU")
    parser.add_argument("--skip_tiny", action="store_true", help="only the sd14 part")
    parser.add_argument("--output", default=str(REPO / "benchmarks/results/engine.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # casting the VAE to bf16 warns once per configuration

    results: dict[str, Any] = {"machine": machine_info(), "tiny_cpu": {}, "sd14": {}}
    table = ["| configuration | UNet ms/frame | decode ms | total ms | FPS |", "|---|---|---|---|---|"]
    if not args.skip_tiny:
        measure_tiny(args, results, table)
    if args.sd14:
        measure_sd14(args, results, table)
    write_results(Path(args.output), results, table)


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def measure_tiny(args: argparse.Namespace, results: dict[str, Any], table: list[str]) -> None:
    """The tiny preset on the CPU: 1 and 2 threads, fp32 and bf16, with and without CFG, the quickstart's settings,
    its 1-step student, and with --compile the compiled engines; into ``results["tiny_cpu"]`` and a table row each."""
    bundle = tiny_bundle()
    configurations = []  # (threads, dtype, CFG scale, compiled, carry-over, DDIM steps)
    for threads in (1, 2):
        for dtype in ("fp32", "bf16"):
            configurations.append((threads, dtype, 1.5, False, None, 4))
        configurations.append((threads, "fp32", 1.0, False, None, 4))
    # the quickstart's settings: the tiny preset's CFG 1.0 and the detail carry-over of its play command
    configurations.append((1, "fp32", 1.0, False, 8.0, 4))
    # the quickstart's 1-step student (distill.py): one UNet call per frame, no CFG
    configurations.append((1, "fp32", 1.0, False, None, 1))
    if args.compile:
        configurations += [(1, "fp32", 1.5, True, None, 4), (1, "bf16", 1.5, True, None, 4)]
        configurations.append((2, "bf16", 1.5, True, None, 4))
    for threads, dtype, scale, compiled, carry, steps in configurations:
        torch.set_num_threads(threads)
        torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        result = measure(
            on(bundle, "cpu", torch_dtype),
            args.frames,
            args.warmup,
            guidance_scale=scale,
            num_inference_steps=steps,
            compile=compiled,
            carry_detail=carry,
        )
        name = (
            f"tiny, CPU {threads} thread{'s' if threads > 1 else ''}, {dtype}, "
            f"{'CFG 1.5' if scale != 1 else 'no CFG'}{', compiled' if compiled else ''}"
            f"{f', --carry_detail {carry:g}' if carry else ''}"
            f"{', 1 step (the distilled student)' if steps == 1 else ''}"
        )
        results["tiny_cpu"][name] = {**result, "threads": threads}
        table.append(row(name, result))
        print(table[-1], flush=True)


def measure_sd14(args: argparse.Namespace, results: dict[str, Any], table: list[str]) -> None:
    """The paper-sized model: on CUDA bf16 and fp16, eager and compiled; on a CPU one frame (a smoke measurement);
    into ``results["sd14"]`` and a table row each."""
    if torch.cuda.is_available():
        for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            bundle = on(sd14_bundle(), "cuda", dtype)
            for compiled, mode in ((False, None), (True, None), (True, "max-autotune-no-cudagraphs")):
                result = measure(bundle, args.sd14_frames, 10 if compiled else 3, compile=compiled, compile_mode=mode)
                name = (
                    f"sd14 320x256 ctx 64, {results['machine']['cuda']}, {dtype_name}"
                    f"{', compiled' if compiled else ''}{f' ({mode})' if mode else ''}"
                )
                results["sd14"][name] = result
                table.append(row(name, result))
                print(table[-1], flush=True)
            del bundle
            torch.cuda.empty_cache()
    else:
        torch.set_num_threads(os.cpu_count() or 1)
        bundle = on(sd14_bundle(), "cpu", torch.float32)
        result = measure(bundle, frames=1, warmup=0)
        name = f"sd14 320x256 ctx 64, CPU {torch.get_num_threads()} threads, fp32 (1 frame, smoke)"
        results["sd14"][name] = result
        results["sd14"]["gpu"] = "not measured here (no CUDA device): run this script with --sd14 on a GPU machine"
        table.append(row(name, result))
        print(table[-1], flush=True)


def write_results(output: Path, results: dict[str, Any], table: list[str]) -> None:
    """Write the results (keeping the sections of ``output`` this run did not measure) and print the table."""
    if output.exists():  # keep the sections this run did not measure
        previous = json.loads(output.read_text())
        for key in ("tiny_cpu", "sd14"):
            if not results[key]:
                results[key] = previous.get(key, {})
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(table))
    print(f"-> {output}")


if __name__ == "__main__":
    main()
