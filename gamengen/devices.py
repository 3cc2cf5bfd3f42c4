"""The device and precision names the engine and the scripts share (``--device``, ``--dtype``)."""

from __future__ import annotations

import torch

from gamengen.errors import EngineError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"fp32" | "fp16" | "bf16"`` (or a torch dtype) -> torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise EngineError(f"unknown dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_computes_bf16() -> bool:
    """Whether this CPU runs bf16 arithmetic in hardware, as torch uses it: x86 with AVX512-BF16 or AMX and
    torch's AVX512 kernels. Elsewhere torch emulates bf16, and bf16 autocast is far slower than fp32: the tiny
    world model's training step ran 13x slower with AVX2 kernels on this repository's development machine
    (docs/training.md#bf16-on-a-cpu), against 1.25x faster with its bf16 instructions."""
    try:
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512") and (
            torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        )
    except (AttributeError, RuntimeError):  # a torch without these queries (they are private): assume emulation
        return False
