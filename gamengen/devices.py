"""The device and precision names the engine and the scripts share (``--device``, ``--dtype``)."""

from __future__ import annotations

import torch

from gamengen.actions import EngineError

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
