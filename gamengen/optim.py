"""Optimisers and weight averages for the trainers (the world model's and the distillation's)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch

OPTIMIZERS = ("adafactor", "adafactor_torch", "adamw")


def make_optimizer(
    name: str, parameters: Iterable[torch.nn.Parameter], learning_rate: float, weight_decay: float
) -> torch.optim.Optimizer:
    """``adafactor``: transformers' Adafactor at a fixed learning rate (the paper's optimizer; it loops over the
    tensors in Python, ~20 operations each, so an sd14 step issues ~14k small operations). It factors the
    second moment over a tensor's LAST TWO dimensions (a conv kernel's 3x3), where the paper's JAX Adafactor
    factors over its two largest. ``adafactor_torch``: torch.optim.Adafactor, the same idea with a multi-tensor
    (foreach) step and its own beta2 schedule. ``adamw``: torch's AdamW, fused (one kernel for all the tensors'
    updates) when every parameter is on a CUDA device, so put the model on its device before making it; elsewhere
    torch's default step. Measured over sd14's 860M parameters on an H200 (docs/gpu.md): transformers' Adafactor
    115 ms per step, torch's Adafactor 240 ms, AdamW 21 ms."""
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            parameters,
            lr=learning_rate,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
            weight_decay=weight_decay,
        )
    if name == "adafactor_torch":
        return torch.optim.Adafactor(parameters, lr=learning_rate, weight_decay=weight_decay, foreach=True)
    if name == "adamw":
        # Tensors, or parameter groups (dicts whose "params" may be generators: listed once, then read twice).
        parameters = [{**p, "params": list(p["params"])} if isinstance(p, dict) else p for p in parameters]
        tensors = [t for item in parameters for t in (item["params"] if isinstance(item, dict) else [item])]
        fused = bool(tensors) and all(tensor.device.type == "cuda" for tensor in tensors)
        return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay, fused=fused or None)
    raise ValueError(f"unknown optimizer {name!r}: one of {', '.join(OPTIMIZERS)}")


def make_ema(decay: float | None, accelerator: Any, model: torch.nn.Module) -> Any:
    """An EMA of the prepared model's weights, saved in every checkpoint (None without a decay)."""
    if decay is None:
        return None
    from diffusers.training_utils import EMAModel

    # On a GPU the average is updated by multi-tensor operations (foreach): a few kernels a step, not a few per tensor.
    foreach = accelerator.device.type == "cuda"
    parameters = accelerator.unwrap_model(model).parameters()
    ema = EMAModel(parameters, decay=decay, use_ema_warmup=True, power=0.75, foreach=foreach)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    return ema


@contextlib.contextmanager
def ema_weights(ema: Any, model: torch.nn.Module) -> Iterator[None]:
    """Swap the EMA weights into ``model`` for the ``with`` block (nothing when there is no EMA)."""
    if ema is None:
        yield
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield
    finally:
        ema.restore(model.parameters())
