"""The engine's sampler (docs/engine.md, section "Sampling"): DDIM (eta 0), with the timesteps and alphas of a
checkpoint's scheduler computed once and one deterministic update per step, and classifier-free guidance on the
context, whose unconditional branch sees every context latent zeroed, as training's context dropout
(``gamengen.model.drop_context``) shows the model. ``gamengen.engine`` runs it; a test
checks it frame by frame against diffusers' ``DDIMScheduler.step``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gamengen.actions import EngineError


@dataclass
class DDIMStep:
    timestep: int
    alpha: float  # alpha_cumprod at this timestep
    alpha_prev: float  # alpha_cumprod of the step it lands on
    timestep_tensor: torch.Tensor  # (1,) on the engine's device, made once


def ddim_schedule(scheduler: Any, num_steps: int, device: torch.device) -> tuple[str, list[DDIMStep]]:
    """The scheduler's prediction type and its DDIM timesteps with their alphas, computed once (the
    scheduler's own rules: its timestep spacing, ``prev = t - T // k``, the final alpha below timestep 0)."""
    if num_steps < 1:
        raise EngineError(f"num_inference_steps must be >= 1, got {num_steps}")
    prediction_type = scheduler.config.prediction_type
    if prediction_type not in ("v_prediction", "epsilon"):
        raise EngineError(
            f"the scheduler predicts {prediction_type!r}; the engine samples v_prediction (or epsilon) models"
        )
    scheduler = copy.deepcopy(scheduler)  # set_timesteps mutates it; the caller's stays as it was
    scheduler.set_timesteps(num_steps)
    alphas = scheduler.alphas_cumprod.double()
    final_alpha = float(scheduler.final_alpha_cumprod)
    stride = scheduler.config.num_train_timesteps // num_steps
    schedule = []
    for timestep in scheduler.timesteps.tolist():
        previous = timestep - stride
        alpha_prev = float(alphas[previous]) if previous >= 0 else final_alpha
        schedule.append(
            DDIMStep(int(timestep), float(alphas[timestep]), alpha_prev, torch.tensor([int(timestep)], device=device))
        )
    return prediction_type, schedule


def ddim_update(sample: torch.Tensor, prediction: torch.Tensor, step: DDIMStep, prediction_type: str) -> torch.Tensor:
    """One deterministic DDIM step (eta 0) from the model output at ``step.timestep``."""
    sqrt_alpha, sqrt_one_minus = math.sqrt(step.alpha), math.sqrt(1.0 - step.alpha)
    if prediction_type == "v_prediction":
        original = sqrt_alpha * sample - sqrt_one_minus * prediction
        noise = sqrt_alpha * prediction + sqrt_one_minus * sample
    else:
        noise = prediction
        original = (sample - sqrt_one_minus * noise) / sqrt_alpha
    return math.sqrt(step.alpha_prev) * original + math.sqrt(1.0 - step.alpha_prev) * noise


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
        context_latents = torch.cat([context_latents, torch.zeros_like(context_latents)])
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
