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
    (foreach) step and its own beta2 schedule. ``adamw``: torch's AdamW (foreach on GPUs)."""
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
        return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: one of {', '.join(OPTIMIZERS)}")


def make_ema(decay: float | None, accelerator: Any, model: torch.nn.Module) -> Any:
    """An EMA of the prepared model's weights, saved in every checkpoint (None without a decay)."""
    if decay is None:
        return None
    from diffusers.training_utils import EMAModel

    ema = EMAModel(accelerator.unwrap_model(model).parameters(), decay=decay, use_ema_warmup=True, power=0.75)
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
