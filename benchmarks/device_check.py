"""The prepared GPU check (issue 15): what the paper-sized world model costs on one accelerator.

Usually run through ``benchmarks/device_check.sh``, which first installs the wheels the GPU machine lacks
and runs the CUDA tests (``pytest -m cuda``); directly:

    python benchmarks/device_check.py [--dry_run] [--output_dir DIR] [--parts a,b] [--part_timeout NAME=SECONDS]
                                      [--time_budget SECONDS]

Each part runs in its own process under a time bound; a part that fails or runs out of time records why
("error: ..." or "not measured: ...") and the next part goes on. ``--time_budget`` bounds the parts
together: each part's bound shrinks to what is left, and the parts that no longer fit are recorded as not
measured (the order below is the priority):

* ``device``: GPU name, torch and CUDA versions, the dense bf16 peak that MFU is taken over, and a
  measured bf16 matrix-product rate (8192^3) for comparison;
* ``train_sd14``: one training step of the sd14 world model (SD v1.4's UNet config with conv_in widened
  to 4 x 65 channels, random weights) on random latent windows at the trainer's GPU defaults (fused AdamW,
  channels-last weights) at batch 32, 64 and 128: the trainer's loss (``gamengen.diffusion.diffusion_loss``)
  under bf16 autocast, gradient clipping and the optimizer as ``train_text_to_image.py``. Samples/s, ms per
  step, forward+backward and optimizer ms apart, peak memory, FLOPs per step
  (``torch.utils.flop_counter.FlopCounterMode`` on one eager step: model FLOPs, forward and backward) and
  MFU = FLOPs / step time / the dense bf16 peak;
* ``train_sd14_variants``: the same at batch 64 with one default changed: channels-first weights,
  transformers' Adafactor (the paper's), torch's Adafactor;
* ``optimizer_sd14``: the optimizer phase alone (clipping, step, zero_grad) over sd14's parameters with
  random gradients, for each of the trainer's ``--optimizer`` choices (transformers' Adafactor, torch's
  multi-tensor Adafactor, AdamW, fused on a GPU) and AdamW's multi-tensor step: ms per step and peak memory;
* ``engine_sd14_eager`` / ``engine_sd14_reduce_overhead`` / ``engine_sd14_compile``: ``GameEngine``
  frames at 320x256, context 64, 4 and 1 DDIM steps, CFG 1.5, bf16, SD v1.4's VAE (random weights),
  uncompiled, with CUDA graphs and with torch.compile's default mode: frames/s, UNet / decode / total ms per
  frame (the engine's own per-stage timing) and p50 / p99 frame latency;
* ``train_sd14_compile_blocks``: the GPU defaults at batch 64 with ``--compile_blocks`` (each UNet block
  compiled; the compilation is the warm-up);
* ``train_tiny``: the tiny preset's training samples/s (AdamW, fp32 and bf16 autocast).

Timing: warm-up iterations (compilation included) are excluded, and ``torch.cuda.synchronize`` runs
before every clock read. ``--dry_run`` runs every part on the CPU with tiny-preset models in place of
sd14, 1-2 iterations each and ``torch.compile`` through the ``eager`` backend (graph capture without
code generation), all in this process: it tests the script, its numbers are no sd14 measurement.

Writes ``DIR/device_check.json`` and ``DIR/device_check.md`` (a dry run: ``device_check_dry_run.*``, so
it never replaces a GPU result), rewritten after every part: an interrupted run keeps what it measured.
DIR defaults to ``$OUT`` when set, else ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gamengen.files import write_bytes_atomic, write_json_atomic  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s: MFU is taken over these.
# Matched against torch.cuda.get_device_name in this order (the first substring found wins).
BF16_DENSE_PEAK_TFLOPS: list[tuple[str, float, str]] = [
    ("H200", 989.0, "H200 datasheet: 1,979 TFLOP/s bf16 with sparsity, 989 dense (same tensor cores as H100 SXM)"),
    ("H100 PCIe", 756.0, "H100 PCIe datasheet: 1,513 TFLOP/s bf16 with sparsity, 756 dense"),
    ("H100", 989.0, "H100 SXM datasheet: 1,979 TFLOP/s bf16 with sparsity, 989 dense"),
    ("A100", 312.0, "A100 datasheet: 312 TFLOP/s bf16 dense"),
]
MAX_GRAD_NORM = 1.0  # the trainer's default (paper: 1.0)
ENGINE_GUIDANCE_SCALE = 1.5  # paper
ENGINE_DDIM_STEPS = [4, 1]  # the paper's 4, and the distilled student's 1
MATMUL_SIZE = 8192
MIN_PART_SECONDS = 10.0  # under --time_budget, a part with less time than this left is not started


class NotMeasured(Exception):
    """A measurement that cannot be taken here (the message says why): recorded as "not measured"."""


# ----------------------------------------------------------------------------------------------
# Options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry_run", action="store_true", help="CPU, tiny models, 1-2 iterations: tests the script")
    parser.add_argument("--output_dir", default=None, help="default: $OUT, else benchmarks/results")
    parser.add_argument("--parts", default=",".join(PART_NAMES), help="comma-separated parts to run, in this order")
    parser.add_argument(
        "--part_timeout", action="append", default=[], metavar="NAME=SECONDS", help="a part's time bound (repeatable)"
    )
    parser.add_argument(
        "--time_budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="the parts together stop within this: each part's bound shrinks to what is left, and a part with less "
        f"than {MIN_PART_SECONDS:g} s left is not run (default: no budget, each part its own bound)",
    )
    parser.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run each part in its own process under its time bound (default: yes, except in a dry run)",
    )
    parser.add_argument(
        "--train_batch_sizes", type=int, nargs="+", default=None, help="sd14 training batches (32 64 128)"
    )
    parser.add_argument(
        "--variant_batch_size", type=int, default=None, help="sd14 batch of the variants and compiled blocks (64)"
    )
    parser.add_argument("--engine_steps", type=int, nargs="+", default=None, help="DDIM steps of the engine (4 1)")
    parser.add_argument("--tiny_batch_sizes", type=int, nargs="+", default=None, help="tiny training batches (32)")
    parser.add_argument("--train_steps", type=int, default=None, help="measured training steps per configuration (10)")
    parser.add_argument("--engine_frames", type=int, default=None, help="measured frames per engine mode (100)")
    parser.add_argument("--compile_backend", default=None, help="torch.compile backend (inductor; a dry run: eager)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="dense bf16 peak for MFU (default: known GPUs)")
    results = parser.add_argument_group("CUDA test results (passed by device_check.sh)")
    results.add_argument("--pytest_log", default=None, help="output of pytest -m cuda")
    results.add_argument("--pytest_status", type=int, default=None, help="its exit status (124: timed out)")
    results.add_argument("--pytest_timeout", type=float, default=None, help="its time bound in seconds")
    parser.add_argument("--run_part", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--part_output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    dry = args.dry_run
    defaults = {
        "train_batch_sizes": [2, 4] if dry else [32, 64, 128],
        "variant_batch_size": 2 if dry else 64,
        "engine_steps": list(ENGINE_DDIM_STEPS),
        "tiny_batch_sizes": [4] if dry else [32],
        "train_steps": 1 if dry else 10,
        "engine_frames": 2 if dry else 100,
        "compile_backend": "eager" if dry else "inductor",
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.isolate is None:
        args.isolate = not dry
    sizes = args.train_batch_sizes + args.tiny_batch_sizes + args.engine_steps
    if min([*sizes, args.variant_batch_size, args.train_steps, args.engine_frames]) < 1:
        parser.error("batch sizes, --train_steps and --engine_frames must be >= 1")
    args.parts = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = [name for name in args.parts + ([args.run_part] if args.run_part else []) if name not in PART_NAMES]
    if unknown:
        parser.error(f"unknown part(s) {unknown}: choose from {', '.join(PART_NAMES)}")
    args.timeouts = {part.name: part.timeout_s for part in PARTS}
    for item in args.part_timeout:
        name, _, seconds = item.partition("=")
        if name not in args.timeouts:
            parser.error(f"--part_timeout {item}: unknown part {name!r} (choose from {', '.join(PART_NAMES)})")
        try:
            args.timeouts[name] = float(seconds)
        except ValueError:
            parser.error(f"--part_timeout {item}: SECONDS must be a number")
    if args.time_budget is not None and args.time_budget < 0:
        parser.error("--time_budget must be >= 0 seconds")
    if args.output_dir is None:
        args.output_dir = os.environ.get("OUT") or str(REPO / "benchmarks" / "results")
    return args


# ----------------------------------------------------------------------------------------------
# Shared helpers (torch is imported inside them: the orchestrating process never needs it)


def compute_device(options: argparse.Namespace):
    """The CPU in a dry run; otherwise the GPU, or NotMeasured when there is none."""
    import torch

    if options.dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise NotMeasured("no CUDA device visible to torch: run on a GPU machine, or --dry_run for the CPU smoke run")
    return torch.device("cuda")


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device) -> float | str:
    import torch

    if device.type != "cuda":
        return "not measured: CPU (no CUDA memory statistics)"
    return torch.cuda.max_memory_allocated(device) / 2**30


def bf16_peak(options: argparse.Namespace, device) -> tuple[float | None, str]:
    """(dense bf16 peak in TFLOP/s, where it comes from); None when no peak is known for the device."""
    import torch

    if options.peak_tflops is not None:
        return options.peak_tflops, "--peak_tflops"
    if device.type != "cuda":
        return None, "no bf16 peak for a CPU (dry run)"
    name = torch.cuda.get_device_name(device)
    for key, tflops, source in BF16_DENSE_PEAK_TFLOPS:
        if key in name:
            return tflops, source
    return None, f"no dense bf16 peak known for {name}: pass --peak_tflops"


def world_model_config(preset: str, **overrides: Any):
    """The preset's world-model config for the benchmark's action list; sd14 gets SD v1.4's UNet config."""
    from bench_engine import ACTIONS, SD14_UNET_CONFIG

    from gamengen.config import get_world_model_config

    config = get_world_model_config(preset, ACTIONS, **overrides)
    if preset == "sd14":
        config.unet = dict(SD14_UNET_CONFIG)  # build_unet widens conv_in to the context and adds the bucket labels
    return config


def build_models(preset: str, device, with_vae: bool, **overrides: Any):
    """(world model, VAE or None, scheduler, config) with random weights, created on ``device`` directly."""
    import torch

    from gamengen.model import build_world_model, make_scheduler
    from gamengen.vae import build_vae

    config = world_model_config(preset, **overrides)
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: far faster than an 860M-parameter CPU init
        model = build_world_model(config)
        vae = build_vae(config.model) if with_vae else None
    return model, vae, make_scheduler(config), config


def sd14_stand_in(options: argparse.Namespace) -> str:
    """The preset that plays sd14: sd14 itself, or tiny in a dry run."""
    return "tiny" if options.dry_run else "sd14"


def model_label(options: argparse.Namespace) -> str:
    return "tiny preset standing in for sd14 (dry run)" if options.dry_run else "sd14 (random weights)"


def random_windows(config, batch_size: int, device) -> dict[str, Any]:
    """A batch of training windows as the latent cache yields them, with random contents."""
    import torch

    generator = torch.Generator().manual_seed(batch_size)
    latent, context = config.model.latent_shape, config.context_length
    return {
        "target": torch.randn((batch_size, *latent), generator=generator).to(device),
        "context": torch.randn((batch_size, context, *latent), generator=generator).to(device),
        "actions": torch.randint(0, config.num_actions, (batch_size, context), generator=generator).to(device),
    }


def error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return text if len(text) <= 400 else text[:397] + "..."


def guarded(measure: Callable[..., dict[str, Any]], device, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """One measurement: its numbers, or its error recorded so the next one runs; its GPU memory is freed either way."""
    try:
        return measure(*args, **kwargs)
    except NotMeasured as reason:
        return {"not_measured": str(reason)}
    except Exception as error:
        traceback.print_exc()
        return {"error": error_text(error)}
    finally:
        if device is not None and device.type == "cuda":
            import torch

            gc.collect()  # the measurement's model and optimizer state go before the next one is built
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# Measurements


def measure_matmul(device) -> float:
    """bf16 TFLOP/s of an 8192^3 matrix product (mean of 10 after 3 warm-ups): what the chip delivers here."""
    import torch

    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, dtype=torch.bfloat16)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    synchronize(device)
    return 10 * 2 * MATMUL_SIZE**3 / (time.perf_counter() - started) / 1e12


def count_flops(step: Callable[[], Any]) -> int:
    """FLOPs of one call of ``step`` (matrix products, convolutions, attention; forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def measure_training(
    options: argparse.Namespace,
    preset: str,
    label: str,
    batch_size: int,
    optimizer_name: str,
    learning_rate: float,
    autocast_bf16: bool,
    device,
    channels_last: bool = False,
    compiled: bool = False,
    **config_overrides: Any,
) -> dict[str, Any]:
    """One training step of a fresh world model on random windows: throughput, phase times, memory, MFU. The
    model is made as train_text_to_image.py makes it: on the device, channels-last weights when asked, then the
    optimizer (AdamW fused on a GPU), then its blocks compiled (``--compile_blocks``) when asked."""
    import torch

    from gamengen.diffusion import diffusion_loss
    from gamengen.optim import make_optimizer
    from gamengen.throughput import compile_blocks, use_channels_last

    setup_started = time.perf_counter()
    model, _, scheduler, config = build_models(preset, device, with_vae=False, **config_overrides)
    model.train()
    if channels_last:
        use_channels_last(model)
    optimizer = make_optimizer(optimizer_name, model.parameters(), learning_rate, 0.0)
    network = model
    batch = random_windows(config, batch_size, device)
    generator = torch.Generator(device=device).manual_seed(0)

    def forward_backward(net) -> Any:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            loss = diffusion_loss(net, batch, config, scheduler, generator)
        loss.backward()
        return loss

    def optimizer_step() -> None:  # the trainer's: clip, step, clear
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    flops = count_flops(lambda: forward_backward(model))  # counted eagerly: compilation changes kernels, not FLOPs
    model.zero_grad(set_to_none=True)
    if compiled:
        torch._dynamo.reset()  # a fresh compilation, never an earlier part's cache entries
        compile_blocks(model, backend=options.compile_backend)  # in place: the warm-up steps compile them
    setup_seconds = time.perf_counter() - setup_started
    warmup = 3 if compiled else 2
    started = time.perf_counter()
    for _ in range(warmup):
        forward_backward(network)
        optimizer_step()
    synchronize(device)
    warmup_seconds = time.perf_counter() - started
    reset_peak_memory(device)

    # Throughput: steps back to back, one synchronisation at the end (what a training run sees).
    started = time.perf_counter()
    for _ in range(options.train_steps):
        loss = forward_backward(network)
        optimizer_step()
    synchronize(device)
    step_seconds = (time.perf_counter() - started) / options.train_steps

    # Breakdown: synchronised between the phases, so each phase's time is its own.
    forward_backward_ms, optimizer_ms = [], []
    for _ in range(options.train_steps):
        synchronize(device)
        started = time.perf_counter()
        loss = forward_backward(network)
        synchronize(device)
        middle = time.perf_counter()
        optimizer_step()
        synchronize(device)
        forward_backward_ms.append(1000 * (middle - started))
        optimizer_ms.append(1000 * (time.perf_counter() - middle))

    peak_tflops, peak_source = bf16_peak(options, device)
    achieved = flops / step_seconds / 1e12
    loss_value = float(loss.detach())
    if not torch.isfinite(loss.detach()):
        raise FloatingPointError(f"the training loss is {loss_value}")
    return {
        "model": label,
        "batch_size": batch_size,
        "samples_per_s": batch_size / step_seconds,
        "step_ms": 1000 * step_seconds,
        "forward_backward_ms": float(sum(forward_backward_ms) / len(forward_backward_ms)),
        "optimizer_ms": float(sum(optimizer_ms) / len(optimizer_ms)),
        "peak_memory_gib": peak_memory_gib(device),
        "flops_per_step": flops,
        "achieved_tflops": achieved,
        "mfu": achieved / peak_tflops if peak_tflops else f"not measured: {peak_source}",
        "peak_tflops": peak_tflops if peak_tflops else f"not measured: {peak_source}",
        "loss": loss_value,
        "optimizer": f"{optimizer_label(optimizer_name, optimizer)} (+ clip_grad_norm {MAX_GRAD_NORM}, zero_grad)",
        "precision": "bf16 autocast, fp32 weights" if autocast_bf16 else "fp32",
        "layout": "channels-last" if channels_last else "channels-first",
        "compiled": f"UNet blocks compiled ({options.compile_backend})" if compiled else "eager",
        "setup_s": setup_seconds,
        "warmup_steps": warmup,
        "warmup_s": warmup_seconds,
        "measured_steps": options.train_steps,
        "device": str(device),
    }


OPTIMIZERS = ("adafactor", "adafactor_torch", "adamw", "adamw_foreach")  # the trainer's --optimizer, and AdamW's
# multi-tensor step beside its fused one


def optimizer_label(name: str, optimizer: Any) -> str:
    """The optimizer's name, with how AdamW steps (fused on a GPU)."""
    if name == "adamw":
        return "adamw (fused)" if optimizer.defaults.get("fused") else "adamw (not fused)"
    return name


def make_measured_optimizer(name: str, parameters: list[Any]) -> Any:
    """The trainer's optimizer of that name (lr 2e-5, sd14's), or AdamW's multi-tensor step for ``adamw_foreach``."""
    import torch

    from gamengen.optim import make_optimizer

    if name == "adamw_foreach":
        return torch.optim.AdamW(parameters, lr=2e-5, weight_decay=0.0, foreach=True)
    return make_optimizer(name, parameters, 2e-5, 0.0)


def measure_optimizer(options: argparse.Namespace, optimizer_name: str, device) -> dict[str, Any]:
    """The trainer's optimizer phase (clip, step, clear) alone over sd14's parameters with random gradients:
    which optimizer keeps a GPU step short (transformers' Adafactor loops over the tensors in Python)."""
    import torch

    setup_started = time.perf_counter()
    model, _, _, _ = build_models(sd14_stand_in(options), device, with_vae=False)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    generator = torch.Generator(device=device).manual_seed(0)
    gradients = [torch.randn(p.shape, generator=generator, device=device, dtype=p.dtype) * 1e-3 for p in parameters]
    optimizer = make_measured_optimizer(optimizer_name, parameters)

    def optimizer_step() -> None:
        for parameter, gradient in zip(parameters, gradients, strict=True):
            parameter.grad = gradient  # the same tensor each time: no copy inside the timed phase
        torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    setup_seconds = time.perf_counter() - setup_started
    for _ in range(2):
        optimizer_step()
    synchronize(device)
    reset_peak_memory(device)
    started = time.perf_counter()
    for _ in range(options.train_steps):
        optimizer_step()
    synchronize(device)
    return {
        "model": model_label(options),
        "optimizer": optimizer_label(optimizer_name, optimizer),
        "optimizer_ms": 1000 * (time.perf_counter() - started) / options.train_steps,
        "tensors": len(parameters),
        "parameters_millions": sum(p.numel() for p in parameters) / 1e6,
        "peak_memory_gib": peak_memory_gib(device),
        "setup_s": setup_seconds,
        "measured_steps": options.train_steps,
        "device": str(device),
    }


def engine_bundle(options: argparse.Namespace) -> Any:
    """The sd14 models (random weights) in bf16 on the device, for the engine."""
    import torch
    from diffusers.utils import logging as diffusers_logging

    from gamengen.checkpoint import WorldModelBundle

    diffusers_logging.set_verbosity_error()  # casting the VAE to bf16 warns, as intended here
    device = compute_device(options)
    model, vae, scheduler, config = build_models(sd14_stand_in(options), device, with_vae=True)
    model, vae = model.to(dtype=torch.bfloat16).eval(), vae.to(dtype=torch.bfloat16).eval()
    return WorldModelBundle(model, vae, scheduler, config)


def measure_engine(
    options: argparse.Namespace, bundle: Any, compiled: bool, compile_mode: str | None, steps: int
) -> dict[str, Any]:
    """Frames of the GameEngine over the sd14 models in bf16 at ``steps`` DDIM steps: frames/s, per-stage ms, p50 /
    p99 latency. The engines of one part share the bundle (a second one reuses the first one's compiled code)."""
    import numpy as np
    import torch

    from gamengen.engine import GameEngine

    device, config = next(bundle.model.parameters()).device, bundle.config
    setup_started = time.perf_counter()
    engine = GameEngine(
        bundle,
        guidance_scale=ENGINE_GUIDANCE_SCALE,
        num_inference_steps=steps,
        seed=0,
        compile=compiled,
        compile_mode=compile_mode,
        compile_backend=options.compile_backend,
    )
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn((config.context_length, *config.model.latent_shape), generator=generator)
    actions = torch.randint(0, config.num_actions, (config.context_length - 1,), generator=generator).tolist()
    engine.reset(latents=latents, actions=actions)
    reset_peak_memory(device)
    setup_seconds = time.perf_counter() - setup_started
    warmup = 1 if options.dry_run else (3 if not compiled else 6)  # CUDA graphs are recorded on the first calls
    started = time.perf_counter()
    for index in range(warmup):
        engine.step(index % config.num_actions)
    warmup_seconds = time.perf_counter() - started
    engine.timings.clear()
    for index in range(options.engine_frames):
        engine.step(index % config.num_actions)  # returns uint8 frames on the host: the frame is complete
    timings = engine.timings
    total_ms = np.array([timing.total_ms for timing in timings])
    unet_ms = float(np.mean([timing.unet_ms for timing in timings]))
    settings = engine.describe()
    return {
        "model": model_label(options),
        "frames_per_s": 1000.0 * len(timings) / float(total_ms.sum()),
        "unet_ms": unet_ms,
        "unet_ms_per_ddim_step": unet_ms / engine.num_inference_steps,
        "decode_ms": float(np.mean([timing.decode_ms for timing in timings])),
        "total_ms": float(total_ms.mean()),
        "p50_ms": float(np.percentile(total_ms, 50)),
        "p99_ms": float(np.percentile(total_ms, 99)),
        "peak_memory_gib": peak_memory_gib(device),
        "frames": len(timings),
        "setup_s": setup_seconds,
        "warmup_frames": warmup,
        "warmup_s": warmup_seconds,
        "compiled": f"torch.compile ({options.compile_backend}, {compile_mode or 'default'})" if compiled else "eager",
        "frame_size": f"{config.model.padded_width}x{config.model.padded_height} (padded)",
        **{key: settings[key] for key in ("dtype", "num_inference_steps", "guidance_scale", "context_length")},
        "device": str(device),
    }


# ----------------------------------------------------------------------------------------------
# Parts: each yields (key, measurement) pairs; key None: the measurement is the part's whole result.


def part_device(options: argparse.Namespace) -> Iterator[tuple[str | None, Any]]:
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "dry_run": options.dry_run,
    }
    for package in ("diffusers", "transformers", "accelerate", "huggingface_hub"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:  # recorded; the parts that need it record their own error
            info[package] = "not installed"
    device = torch.device("cpu")
    if options.dry_run or not torch.cuda.is_available():
        info["name"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        info["cuda"] = "not measured: no CUDA device used" + (" (dry run)" if options.dry_run else "")
        info["bf16_matmul_tflops"] = "not measured: CPU"
    else:
        device = torch.device("cuda")
        properties = torch.cuda.get_device_properties(device)
        info.update(
            name=torch.cuda.get_device_name(device),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            capability=".".join(map(str, torch.cuda.get_device_capability(device))),
            memory_gib=properties.total_memory / 2**30,
            multiprocessors=properties.multi_processor_count,
        )
        matmul = guarded(lambda: {"tflops": measure_matmul(device)}, device)
        info["bf16_matmul_tflops"] = matmul.get("tflops", f"not measured: {outcome(matmul)}")
    peak, source = bf16_peak(options, device)
    info["bf16_peak_tflops"] = peak if peak else f"not measured: {source}"
    info["bf16_peak_source"] = source
    yield None, info


# The sd14 trainer's GPU defaults (train_text_to_image.py, gamengen/config.py): fused AdamW, channels-last weights;
# each variant changes one of them (or compiles the UNet's blocks). lr 2e-5 and bf16 autocast throughout.
TRAIN_VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {"optimizer_name": "adamw", "channels_last": True},
    "channels_first": {"optimizer_name": "adamw", "channels_last": False},
    "adafactor": {"optimizer_name": "adafactor", "channels_last": True},
    "adafactor_torch": {"optimizer_name": "adafactor_torch", "channels_last": True},
    "compile_blocks": {"optimizer_name": "adamw", "channels_last": True, "compiled": True},
}


def part_train_sd14(
    variants: list[str], batches: Callable[[argparse.Namespace], list[int]]
) -> Callable[[argparse.Namespace], Iterator[tuple[str | None, Any]]]:
    """The sd14 training step of each variant at each of its batches: keys ``variant/batch_<b>``."""

    def run(options: argparse.Namespace) -> Iterator[tuple[str | None, Any]]:
        device = compute_device(options)
        preset, label = sd14_stand_in(options), model_label(options)
        for variant in variants:
            settings = dict(TRAIN_VARIANTS[variant])
            optimizer_name = settings.pop("optimizer_name")
            for batch_size in batches(options):
                arguments = (options, preset, label, batch_size, optimizer_name, 2e-5, True, device)
                yield f"{variant}/batch_{batch_size}", guarded(measure_training, device, *arguments, **settings)

    return run


def part_optimizer_sd14(options: argparse.Namespace) -> Iterator[tuple[str | None, Any]]:
    device = compute_device(options)
    for name in OPTIMIZERS:
        yield name, guarded(measure_optimizer, device, options, name, device)


def part_engine(compiled: bool, mode: str | None) -> Callable[[argparse.Namespace], Iterator[tuple[str | None, Any]]]:
    """The engine at each of ``--engine_steps`` DDIM steps, one bundle for all: keys ``steps_<n>``."""

    def run(options: argparse.Namespace) -> Iterator[tuple[str | None, Any]]:
        import torch

        if compiled:
            torch._dynamo.reset()
        bundle = engine_bundle(options)
        for steps in options.engine_steps:
            yield f"steps_{steps}", measure_engine(options, bundle, compiled, mode, steps)

    return run


def part_train_tiny(options: argparse.Namespace) -> Iterator[tuple[str | None, Any]]:
    device = compute_device(options)
    # The tiny trainer's settings (train_text_to_image.py): AdamW lr 5e-4, residual, action positions and class.
    tiny = {"residual": True, "action_positions": True, "action_class": True}
    for batch_size in options.tiny_batch_sizes:
        for name, bf16 in (("fp32", False), ("bf16", True)):
            settings = ("tiny", "tiny preset", batch_size, "adamw", 5e-4, bf16, device)
            yield f"batch_{batch_size}_{name}", guarded(measure_training, device, options, *settings, **tiny)


@dataclass(frozen=True)
class Part:
    name: str
    section: str  # top-level key of the report
    key: str | None  # key inside the section (None: the part's result is the whole section)
    run: Callable[[argparse.Namespace], Iterator[tuple[str | None, Any]]]
    timeout_s: float  # default time bound on a GPU machine (see PARTS)

    def expected_keys(self, options: argparse.Namespace) -> list[str | None]:
        if self.name == "train_sd14":
            return [f"defaults/batch_{b}" for b in options.train_batch_sizes]
        if self.name == "train_sd14_variants":
            return [f"{variant}/batch_{options.variant_batch_size}" for variant in VARIANTS_COMPARED]
        if self.name == "train_sd14_compile_blocks":
            return [f"compile_blocks/batch_{options.variant_batch_size}"]
        if self.name == "optimizer_sd14":
            return list(OPTIMIZERS)
        if self.name == "train_tiny":
            return [f"batch_{b}_{dtype}" for b in options.tiny_batch_sizes for dtype in ("fp32", "bf16")]
        if self.name.startswith("engine_"):
            return [f"steps_{steps}" for steps in options.engine_steps]
        return [None]


VARIANTS_COMPARED = ["channels_first", "adafactor", "adafactor_torch"]  # each against the defaults at its batch

# What the trainer's defaults rest on first (training at its defaults and the one-change variants, the optimizers),
# then the engine (CUDA graphs are what it plays with on a GPU), the compiled blocks, the tiny preset, and last
# torch.compile's default mode (measured: between eager and CUDA graphs). The bounds are sized from the H200 runs
# (docs/gpu.md): a part's start (imports, CUDA, building sd14 on the GPU) took 10-30 s, a batch-128 step 0.37 s,
# the engine's CUDA-graph warm-up 63 s. Together they exceed one device call: --time_budget (device_check.sh
# passes one) cuts the last parts short rather than the whole run.
PARTS = [
    Part("device", "device", None, part_device, 30),
    Part("train_sd14", "train_sd14", None, part_train_sd14(["defaults"], lambda o: o.train_batch_sizes), 110),
    Part(
        "train_sd14_variants",
        "train_sd14",
        None,
        part_train_sd14(VARIANTS_COMPARED, lambda o: [o.variant_batch_size]),
        110,
    ),
    Part("optimizer_sd14", "optimizer_sd14", None, part_optimizer_sd14, 60),
    Part("engine_sd14_eager", "engine_sd14", "eager", part_engine(False, None), 60),
    Part("engine_sd14_reduce_overhead", "engine_sd14", "reduce-overhead", part_engine(True, "reduce-overhead"), 150),
    Part(
        "train_sd14_compile_blocks",
        "train_sd14",
        None,
        part_train_sd14(["compile_blocks"], lambda o: [o.variant_batch_size]),
        180,
    ),
    Part("train_tiny", "train_tiny", None, part_train_tiny, 40),
    Part("engine_sd14_compile", "engine_sd14", "compile", part_engine(True, None), 150),
]
PART_NAMES = [part.name for part in PARTS]


# ----------------------------------------------------------------------------------------------
# Running the parts


def collect(part: Part, options: argparse.Namespace, on_update: Callable[[dict], None]) -> tuple[dict[Any, Any], str]:
    """Run a part here: ({key: measurement}, status). A failure ends the part; what it measured stays."""
    values: dict[Any, Any] = {}
    try:
        for key, value in part.run(options):
            values[key] = value
            print(f"[{part.name}] {key or 'result'}: {summary_line(value)}", flush=True)
            on_update(values)
        return values, "ok"
    except NotMeasured as reason:
        return values, f"not measured: {reason}"
    except Exception as error:
        traceback.print_exc()
        return values, f"error: {error_text(error)}"


def run_isolated(part: Part, options: argparse.Namespace, timeout: float) -> tuple[dict[Any, Any], str]:
    """Run a part in a child process (its own process group) and kill the group when its time is up."""
    import json

    with tempfile.TemporaryDirectory(prefix="device_check_") as folder:
        output = Path(folder) / f"{part.name}.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--run_part", part.name, "--part_output", str(output)]
        command += forwarded_options(options)
        process = subprocess.Popen(command, start_new_session=True)
        timed_out = False
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            raise
        if timed_out:  # the compile workers of the part go with it
            os.killpg(process.pid, signal.SIGKILL)
            code = process.wait()
        found = json.loads(output.read_text()) if output.is_file() else {"values": [], "status": None}
    values = {key: value for key, value in found["values"]}
    if timed_out:
        return values, f"not measured: timed out after {timeout:g} s"
    if found["status"] is None:
        return values, f"error: the part's process exited with status {code} before finishing (see the log)"
    return values, found["status"]


def forwarded_options(options: argparse.Namespace) -> list[str]:
    arguments = ["--dry_run"] if options.dry_run else []
    arguments += ["--train_batch_sizes", *map(str, options.train_batch_sizes)]
    arguments += ["--variant_batch_size", str(options.variant_batch_size)]
    arguments += ["--engine_steps", *map(str, options.engine_steps)]
    arguments += ["--tiny_batch_sizes", *map(str, options.tiny_batch_sizes)]
    arguments += ["--train_steps", str(options.train_steps), "--engine_frames", str(options.engine_frames)]
    arguments += ["--compile_backend", options.compile_backend]
    if options.peak_tflops is not None:
        arguments += ["--peak_tflops", str(options.peak_tflops)]
    return arguments


def run_child(options: argparse.Namespace) -> None:
    """``--run_part``: run one part, writing what it measured so far after every measurement."""
    part = next(p for p in PARTS if p.name == options.run_part)
    output = Path(options.part_output)

    def write(values: dict[Any, Any], status: str | None) -> None:
        write_json_atomic(output, {"values": [[key, value] for key, value in values.items()], "status": status})

    values, status = collect(part, options, lambda values: write(values, None))
    write(values, status)


def store(results: dict[str, Any], part: Part, options: argparse.Namespace, values: dict, status: str) -> None:
    """Put a part's measurements into the report; every expected one that is missing says why."""
    reason = status if status != "ok" else "error: the part ended without this measurement"
    if reason.startswith("error: "):
        missing = {"error": reason.removeprefix("error: ")}
    else:
        missing = {"not_measured": reason.removeprefix("not measured: ")}
    measurements = {key: values.get(key, missing) for key in part.expected_keys(options)}
    if all(key is not None and "/" in key for key in measurements):  # "variant/batch_b": nested in the section
        for key, measurement in measurements.items():
            outer, inner = key.split("/", 1)
            results.setdefault(part.section, {}).setdefault(outer, {})[inner] = measurement
        return
    section = measurements[None] if list(measurements) == [None] else measurements
    if part.key is None:
        results[part.section] = section
    else:
        results.setdefault(part.section, {})[part.key] = section


def cuda_test_results(options: argparse.Namespace) -> dict[str, Any]:
    """What ``pytest -m cuda -v`` reported (device_check.sh runs it and passes its log and exit status)."""
    if options.pytest_log is None:
        return {"not_measured": "pytest -m cuda runs from benchmarks/device_check.sh, not from this script"}
    log = Path(options.pytest_log)
    text = log.read_text(errors="replace") if log.is_file() else ""
    outcomes = dict(re.findall(r"^\S+::(\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", text, re.MULTILINE))
    result: dict[str, Any] = {"tests": outcomes, "status": options.pytest_status}
    if options.pytest_timeout is not None:
        result["timeout_s"] = options.pytest_timeout
    if options.pytest_status in (124, 137):  # timeout(1)'s statuses: the bound ran out
        finished = len(outcomes)
        result["error"] = f"pytest -m cuda timed out after {options.pytest_timeout:g} s ({finished} tests finished)"
        return result
    for line in reversed(text.splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)\b", line)
        if found:
            counts = {("error" if word.startswith("error") else word): int(number) for number, word in found}
            result.update({word: counts.get(word, 0) for word in ("passed", "failed", "skipped", "error")})
            result["summary"] = line.strip(" =")
            return result
    result["error"] = f"pytest -m cuda exited with status {options.pytest_status} and no result line (see the log)"
    return result


def run_all(options: argparse.Namespace) -> Path:
    output_dir = Path(options.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = "device_check_dry_run" if options.dry_run else "device_check"
    json_path, markdown_path = output_dir / f"{stem}.json", output_dir / f"{stem}.md"
    results: dict[str, Any] = {
        "format_version": 1,
        "dry_run": options.dry_run,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "options": {k: v for k, v in vars(options).items() if k not in ("run_part", "part_output", "part_timeout")},
        "cuda_tests": cuda_test_results(options),
    }
    part_status = {}
    for part in PARTS:  # every section present from the start, in the parts' order
        status = "not measured: " + ("not run yet" if part.name in options.parts else "not selected (--parts)")
        store(results, part, options, {}, status)
        part_status[part.name] = {"status": status}
    results["parts"] = part_status

    def write() -> None:
        write_json_atomic(json_path, results)
        write_bytes_atomic(markdown_path, render_markdown(results))

    write()
    budget_started = time.perf_counter()
    for name in options.parts:
        part = next(p for p in PARTS if p.name == name)
        timeout = options.timeouts[name]
        if options.time_budget is not None:
            left = options.time_budget - (time.perf_counter() - budget_started)
            if left < MIN_PART_SECONDS:
                status = f"not measured: the --time_budget of {options.time_budget:g} s was used up"
                store(results, part, options, {}, status)
                results["parts"][name] = {"status": status}
                write()
                print(f"== {name}: {status}", flush=True)
                continue
            timeout = min(timeout, round(left, 1))
        print(f"== {name}" + (f" (bound {timeout:g} s)" if options.isolate else " (in this process)"), flush=True)
        started = time.perf_counter()
        if options.isolate:
            values, status = run_isolated(part, options, timeout)
        else:
            values, status = collect(part, options, lambda values: None)
        store(results, part, options, values, status)
        results["parts"][name] = {"status": status, "seconds": time.perf_counter() - started}
        if options.isolate:
            results["parts"][name]["timeout_s"] = timeout
        results["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        write()
        print(f"== {name}: {status} in {results['parts'][name]['seconds']:.1f} s", flush=True)
    print(markdown_path.read_text())
    print(f"-> {json_path}\n-> {markdown_path}")
    return json_path


# ----------------------------------------------------------------------------------------------
# The markdown report


def number(value: Any, digits: int = 3) -> str:
    """A table cell: a number to ``digits`` significant digits; a reason in a cell shortened (the JSON keeps it)."""
    if isinstance(value, str) and value.startswith("not measured"):
        return "not measured"
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:,.0f}"
    return str(value)


def outcome(measurement: Any) -> str | None:
    """ "error: ..." or "not measured: ..." for a measurement that has no numbers, else None."""
    if isinstance(measurement, dict):
        if isinstance(measurement.get("error"), str):  # (the CUDA tests' "error" is a count of errored tests)
            return f"error: {measurement['error']}"
        if "not_measured" in measurement:
            return f"not measured: {measurement['not_measured']}"
    return None


def summary_line(measurement: Any) -> str:
    if outcome(measurement):
        return str(outcome(measurement))
    if not isinstance(measurement, dict):
        return str(measurement)
    keys = (
        *("name", "samples_per_s", "step_ms", "optimizer_ms", "frames_per_s", "total_ms", "p99_ms"),
        *("peak_memory_gib", "mfu"),
    )
    return ", ".join(f"{key} {number(measurement[key])}" for key in keys if key in measurement)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/").replace("\n", " ") for cell in row) + " |" for row in rows]
    return lines


def rows_of(measurement: Any, label: list[str], columns: list[tuple[str, int]], width: int) -> list[str]:
    """A table row: the label cells, then the columns' numbers, or the measurement's error across them."""
    text = outcome(measurement)
    if text is not None or not isinstance(measurement, dict):
        return label + [text or str(measurement)] + [""] * (width - len(label) - 1)
    return label + [number(measurement.get(key, "—"), digits) for key, digits in columns]


def percent(value: Any) -> Any:
    return f"{100 * value:.1f}%" if isinstance(value, float) else value


def render_markdown(results: dict[str, Any]) -> str:
    device = results.get("device", {})
    name = device.get("name") if isinstance(device, dict) and "name" in device else None
    title = name or f"unknown device ({outcome(device) or 'the device part has not run'})"
    lines = [f"# Device check: {title}", ""]
    stand_in = " (dry run: tiny models stand in)" if results.get("dry_run") else ""
    if results.get("dry_run"):
        lines += [
            "**Dry run on the CPU**: tiny-preset models stand in for sd14, 1-2 iterations per configuration,",
            "torch.compile through the eager backend. These numbers test the script; they are no sd14 measurement.",
            "",
        ]
    lines.append(f"Started {results.get('started')}, last part finished {results.get('finished', 'not yet')}.")
    lines.append("")
    if isinstance(device, dict) and outcome(device) is None:
        keys = ("name", "torch", "cuda", "cudnn", "diffusers", "memory_gib")
        rows = [[key, number(device.get(key, "—"))] for key in keys]
        peak = device.get("bf16_peak_tflops")
        peak = f"{number(peak)} ({device.get('bf16_peak_source')})" if isinstance(peak, float) else str(peak)
        rows.append(["dense bf16 peak used for MFU (TFLOP/s)", peak])
        rows.append(["bf16 matmul 8192^3, measured (TFLOP/s)", str(number(device.get("bf16_matmul_tflops")))])
        lines += table(["device", ""], rows)
    else:
        lines.append(f"Device: {outcome(device) or device}")
    tests = results.get("cuda_tests", {})
    lines += ["", f"**CUDA tests** (pytest -m cuda): {outcome(tests) or tests.get('summary')}", ""]
    if tests.get("tests"):
        lines += table(["test", "outcome"], [[name, result] for name, result in tests["tests"].items()]) + [""]

    train_columns = [
        ("samples_per_s", 3),
        ("step_ms", 3),
        ("forward_backward_ms", 3),
        ("optimizer_ms", 3),
        ("peak_memory_gib", 3),
        ("achieved_tflops", 3),
        ("mfu", 3),
        ("setup_s", 3),
    ]
    train_header = ["mode", "batch", "samples/s", "step ms", "fwd+bwd ms", "optimizer ms", "peak GiB", "TFLOP/s", "MFU"]
    train_header.append("setup s")
    lines += [f"## Training step: sd14 world model, bf16 autocast, clipping{stand_in}", ""]
    lines += [
        "defaults: the trainer's GPU defaults (fused AdamW, channels-last weights); each other mode changes one.",
        "",
    ]
    rows = []
    for mode, measurements in results.get("train_sd14", {}).items():
        for key, measurement in measurements.items() if outcome(measurements) is None else [("", measurements)]:
            if outcome(measurement) is None:
                measurement = {**measurement, "mfu": percent(measurement.get("mfu"))}
            rows.append(rows_of(measurement, [mode, key.removeprefix("batch_")], train_columns, len(train_header)))
    lines += table(train_header, rows)

    optimizers = results.get("optimizer_sd14", {})
    lines += ["", f"## Optimizer phase alone: sd14 parameters, clipping + step + zero_grad{stand_in}", ""]
    optimizer_header = ["optimizer", "ms per step", "tensors", "parameters (M)", "peak GiB", "setup s"]
    optimizer_columns = [("optimizer_ms", 3), ("tensors", 4), ("parameters_millions", 4)]
    optimizer_columns += [("peak_memory_gib", 3), ("setup_s", 3)]
    optimizer_rows = optimizers.items() if outcome(optimizers) is None else [("all", optimizers)]
    width = len(optimizer_header)
    lines += table(optimizer_header, [rows_of(m, [name], optimizer_columns, width) for name, m in optimizer_rows])

    engine_columns = [
        ("frames_per_s", 3),
        ("unet_ms", 3),
        ("decode_ms", 3),
        ("total_ms", 3),
        ("p50_ms", 3),
        ("p99_ms", 3),
        ("peak_memory_gib", 3),
        ("setup_s", 3),
        ("warmup_s", 3),
    ]
    engine_header = ["mode", "DDIM steps", "frames/s", "UNet ms", "decode ms", "total ms", "p50 ms", "p99 ms"]
    engine_header += ["peak GiB", "setup s", "warm-up s"]
    lines += ["", f"## Engine: sd14 320x256, context 64, CFG 1.5, bf16{stand_in}", ""]
    rows = []
    for mode, measurements in results.get("engine_sd14", {}).items():
        for key, measurement in measurements.items() if outcome(measurements) is None else [("", measurements)]:
            rows.append(rows_of(measurement, [mode, key.removeprefix("steps_")], engine_columns, len(engine_header)))
    lines += table(engine_header, rows)

    tiny = results.get("train_tiny", {})
    lines += ["", "## Training step: tiny preset, AdamW", ""]
    tiny_header = ["configuration", "samples/s", "step ms", "fwd+bwd ms", "optimizer ms", "peak GiB"]
    tiny_rows = tiny.items() if outcome(tiny) is None else [("tiny", tiny)]
    width = len(tiny_header)
    rows = [rows_of(measurement, [key.replace("_", " ")], train_columns[:5], width) for key, measurement in tiny_rows]
    lines += table(tiny_header, rows)

    lines += ["", "## Parts", ""]
    rows = [
        [part, str(info.get("status")), number(info.get("seconds", "—")), number(info.get("timeout_s", "—"))]
        for part, info in results.get("parts", {}).items()
    ]
    lines += table(["part", "status", "seconds", "bound s"], rows)
    return "\n".join(lines) + "\n"


def main() -> None:
    options = parse_args()
    if options.run_part:
        run_child(options)
    else:
        run_all(options)


if __name__ == "__main__":
    main()
