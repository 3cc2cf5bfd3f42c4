"""The measurements of benchmarks/device_check.py: the shared helpers (device, peak memory, models, random
windows) and each measurement (the bf16 matmul peak, a training step, an optimizer step alone, the engine).
torch is imported inside the functions: the orchestrating process never needs it."""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


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
