"""The engine's sampler (docs/engine.md, section "Sampling"): DDIM (eta 0 by default), with the timesteps (the
scheduler's trailing ones, Karras-spaced ones, or a given list) and their alphas computed once and one update per
step, and classifier-free guidance on the context, whose unconditional branch sees every context latent zeroed, as
training's context dropout (``gamengen.diffusion.drop_context``) shows the model. ``gamengen.engine`` runs it; tests
check it frame by frame against diffusers' ``DDIMScheduler.step`` (deterministic and with eta).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gamengen.config import PREDICTION_TYPES
from gamengen.diffusion import drop_context
from gamengen.errors import EngineError

# Named timestep schedules (``--timesteps``): "trailing" is the scheduler's own (4 steps: 999, 749, 499, 249, the
# last model call at noise sigma 0.69); "karras" spaces the noise levels as Karras et al. (2022, rho = 7) between the
# scheduler's largest and smallest sigma, so the last calls sit at lower noise (4 steps: 999, 786, 427, 59). A list of
# integers ("999,500,150,30") gives the timesteps themselves, high to low.
TIMESTEP_SCHEDULES = ("trailing", "karras")
KARRAS_RHO = 7.0


@dataclass
class DDIMStep:
    timestep: int
    alpha: float  # alpha_cumprod at this timestep
    alpha_prev: float  # alpha_cumprod of the step it lands on
    timestep_tensor: torch.Tensor  # (1,) on the engine's device, made once


def karras_timesteps(alphas: torch.Tensor, num_steps: int, rho: float = KARRAS_RHO) -> list[int]:
    """``num_steps`` timesteps whose noise levels ``sigma = sqrt((1 - a) / a)`` follow Karras et al.'s spacing
    ``(s_max^(1/rho) + i / n (s_min^(1/rho) - s_max^(1/rho)))^rho``, i = 0 .. n - 1, from the schedule's last
    timestep towards its first (the n-th level, s_min, is where the last step lands), each rounded to the nearest
    timestep (duplicates, possible at many steps, are dropped)."""
    sigmas = ((1 - alphas) / alphas).sqrt()
    high, low = float(sigmas[-1]) ** (1 / rho), float(sigmas[0]) ** (1 / rho)
    chosen: list[int] = []
    for index in range(num_steps):
        fraction = index / num_steps
        sigma = (high + fraction * (low - high)) ** rho
        timestep = int((sigmas - sigma).abs().argmin())
        if not chosen or timestep < chosen[-1]:
            chosen.append(timestep)
    return chosen


def parse_timesteps(spec: str, num_train_timesteps: int) -> str | list[int]:
    """A ``--timesteps`` value: one of ``TIMESTEP_SCHEDULES``, or integers from high to low, comma-separated."""
    spec = spec.strip()
    if spec in TIMESTEP_SCHEDULES:
        return spec
    try:
        timesteps = [int(part) for part in spec.split(",")]
    except ValueError:
        raise EngineError(
            f"timesteps {spec!r} is neither a schedule ({', '.join(TIMESTEP_SCHEDULES)}) nor a comma-separated list "
            "of integers, for example 999,500,150,30"
        ) from None
    if any(t < 0 or t >= num_train_timesteps for t in timesteps) or any(
        a <= b for a, b in zip(timesteps, timesteps[1:], strict=False)
    ):
        raise EngineError(
            f"timesteps {spec!r} must be strictly decreasing integers in 0..{num_train_timesteps - 1}, "
            "for example 999,500,150,30"
        )
    return timesteps


def ddim_schedule(
    scheduler: Any, num_steps: int, device: torch.device, timesteps: str | list[int] = "trailing"
) -> tuple[str, list[DDIMStep]]:
    """The scheduler's prediction type and the DDIM timesteps with their alphas, computed once. ``timesteps``:
    "trailing", the scheduler's own rules (its timestep spacing, ``prev = t - T // k``, the final alpha below
    timestep 0); "karras" (``karras_timesteps``); or an explicit list (``num_steps`` is then its length), each
    step landing on the next one's alpha and the last on the final alpha."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type not in PREDICTION_TYPES:
        raise EngineError(
            f"the scheduler predicts {prediction_type!r}; the engine samples v_prediction, epsilon or sample models"
        )
    if isinstance(timesteps, str):
        timesteps = parse_timesteps(timesteps, scheduler.config.num_train_timesteps)
    if not isinstance(timesteps, str):
        num_steps = len(timesteps)
    if num_steps < 1:
        raise EngineError(f"num_inference_steps must be >= 1, got {num_steps}")
    alphas = scheduler.alphas_cumprod.double()
    final_alpha = float(scheduler.final_alpha_cumprod)
    if timesteps == "trailing":
        scheduler = copy.deepcopy(scheduler)  # set_timesteps mutates it; the caller's stays as it was
        scheduler.set_timesteps(num_steps)
        stride = scheduler.config.num_train_timesteps // num_steps
        chosen = scheduler.timesteps.tolist()
        landing = [t - stride for t in chosen]
    else:
        chosen = karras_timesteps(alphas, num_steps) if timesteps == "karras" else list(timesteps)
        landing = chosen[1:] + [-1]
    schedule = []
    for timestep, previous in zip(chosen, landing, strict=True):
        alpha_prev = float(alphas[previous]) if previous >= 0 else final_alpha
        schedule.append(
            DDIMStep(int(timestep), float(alphas[timestep]), alpha_prev, torch.tensor([int(timestep)], device=device))
        )
    return prediction_type, schedule


def ddim_update(
    sample: torch.Tensor,
    prediction: torch.Tensor,
    step: DDIMStep,
    prediction_type: str,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One DDIM step from the model output at ``step.timestep``: deterministic at ``eta`` 0; with ``eta`` > 0
    part of the predicted noise is replaced by fresh noise from ``generator`` (``eta`` 1 is DDPM's ancestral
    step), as diffusers' ``DDIMScheduler.step(eta=...)``."""
    sqrt_alpha, sqrt_one_minus = math.sqrt(step.alpha), math.sqrt(1.0 - step.alpha)
    if prediction_type == "v_prediction":
        original = sqrt_alpha * sample - sqrt_one_minus * prediction
        noise = sqrt_alpha * prediction + sqrt_one_minus * sample
    elif prediction_type == "sample":
        original = prediction
        noise = (sample - sqrt_alpha * original) / sqrt_one_minus
    else:
        noise = prediction
        original = (sample - sqrt_one_minus * noise) / sqrt_alpha
    if eta <= 0:
        return math.sqrt(step.alpha_prev) * original + math.sqrt(1.0 - step.alpha_prev) * noise
    variance = (1 - step.alpha_prev) / (1 - step.alpha) * (1 - step.alpha / step.alpha_prev)
    sigma = eta * math.sqrt(max(variance, 0.0))
    fresh = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
    direction = math.sqrt(max(1.0 - step.alpha_prev - sigma**2, 0.0)) * noise
    return math.sqrt(step.alpha_prev) * original + direction + sigma * fresh


def guidance_conditioning(
    context_latents: torch.Tensor,
    context_actions: torch.Tensor,
    noise_bucket: int,
    guided: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The UNet's context inputs for a frame (the same at every DDIM step): with CFG (``guided``), the real
    context then the all-zero one, the actions twice, the noise bucket for all."""
    context_latents = context_latents.to(device, dtype)
    context_actions = context_actions.to(device)
    if guided:
        every = torch.ones(context_latents.shape[0], dtype=torch.bool, device=device)
        context_latents = torch.cat([context_latents, drop_context(context_latents, every)])
        context_actions = torch.cat([context_actions, context_actions])
    buckets = torch.full((context_latents.shape[0],), noise_bucket, dtype=torch.int64, device=device)
    return context_latents, context_actions, buckets


def guided_prediction(
    denoiser: Callable[..., torch.Tensor],
    noisy_latents: torch.Tensor,
    timestep: torch.Tensor,
    conditioning: tuple[torch.Tensor, ...],
    guidance_scale: float,
) -> torch.Tensor:
    """The guided model output (float32) from one call of ``denoiser`` on the inputs of
    ``guidance_conditioning``: a batch of 2B with CFG, ``v_uncond + scale * (v_cond - v_uncond)``."""
    context_latents, context_actions, buckets = conditioning
    batch, guided = noisy_latents.shape[0], guidance_scale != 1.0
    unet_input = noisy_latents.to(context_latents.dtype)
    if guided:
        unet_input = torch.cat([unet_input, unet_input])
    timesteps = timestep.to(context_latents.device).expand(unet_input.shape[0])
    prediction = denoiser(unet_input, timesteps, context_latents, context_actions, buckets).float()
    if not guided:
        return prediction
    conditional, unconditional = prediction[:batch], prediction[batch:]
    return unconditional + guidance_scale * (conditional - unconditional)
