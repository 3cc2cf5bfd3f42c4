"""The diffusion objective of the world model, in one place: noise augmentation of the context, the residual base,
context dropout for classifier-free guidance, the training timestep draws and the loss (paper section 3.2).

Training (``train_text_to_image.py``), the distillation (``distill.py``), the benchmarks and the engine import it;
no script is a library. The engine's sampler (``gamengen.ddim``) applies the same conditioning at inference:
the context noised by ``corrupt_context`` at the inference bucket, the unconditional branch of CFG built by
``drop_context``, and the sample added to ``residual_base``.

Shapes: context latents ``(B, N, C, h, w)``, target latents ``(B, C, h, w)``, actions ``(B, N)``, buckets ``(B,)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from gamengen.config import WorldModelConfig

# ----------------------------------------------------------------------------------------------
# Context conditioning shared by training and the engine


def noise_level(buckets: torch.Tensor, config: WorldModelConfig) -> torch.Tensor:
    """Standard deviation of the Gaussian noise added to the context for each bucket: bucket 0 is
    clean, the last bucket is ``max_noise_level``, evenly spaced between."""
    return buckets.float() * (config.max_noise_level / max(config.noise_buckets - 1, 1))


def corrupt_context(
    context_latents: torch.Tensor,
    buckets: torch.Tensor,
    config: WorldModelConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Noise augmentation (paper section 3.2.1): ``context + sigma(bucket) * eps``, per sample."""
    sigma = (
        noise_level(buckets, config)
        .to(context_latents.device, context_latents.dtype)
        .view(-1, *([1] * (context_latents.ndim - 1)))
    )
    noise = torch.randn(
        context_latents.shape, generator=generator, device=context_latents.device, dtype=context_latents.dtype
    )
    return context_latents + sigma * noise


def residual_base(context_latents: torch.Tensor, config: WorldModelConfig) -> torch.Tensor:
    """What the diffusion model's sample is relative to: the last context latent ``(B, C, h, w)``
    under the residual parameterisation (``config.residual``), zeros otherwise.

    Pass the context exactly as the UNet's conditional branch sees it: noise-augmented, NOT dropped.
    Training and the engine both do, so (1) under noise augmentation the model learns to predict
    ``target - noisy last frame``, i.e. to remove the corruption of its base, which is the error
    correction the augmentation is for (at inference the base is the model's own, possibly noised,
    previous output); (2) the unconditional branch of CFG (all context dropped) predicts the change
    from the same base as the conditional one, so both branches parameterise the same variable and
    ``v_uncond + scale * (v_cond - v_uncond)`` stays meaningful."""
    if not config.residual:
        return torch.zeros_like(context_latents[:, -1])
    return context_latents[:, -1]


def drop_context(context_latents: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """Zero EVERY context frame of the samples where ``drop`` is true: the unconditional input that
    classifier-free guidance on the context uses at inference."""
    keep = (~drop).to(context_latents.dtype).view(-1, *([1] * (context_latents.ndim - 1)))
    return context_latents * keep


# ----------------------------------------------------------------------------------------------
# Training draws and the loss


def lognormal_timesteps(
    scheduler: Any, size: int, mean: float, std: float, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """``size`` timesteps whose noise levels ``sigma = sqrt((1 - a) / a)`` are the nearest (from above) to
    ``exp(N(mean, std))`` draws, clamped to the schedule's range."""
    alphas = scheduler.alphas_cumprod.to(device)
    sigmas = ((1 - alphas) / alphas).sqrt()  # increasing with the timestep
    drawn = torch.exp(mean + std * torch.randn(size, generator=generator, device=device))
    return torch.searchsorted(sigmas, drawn).clamp(max=len(sigmas) - 1)


def draw_timesteps(
    scheduler: Any,
    size: int,
    generator: torch.Generator | None,
    device: torch.device,
    lognormal_noise: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Training timesteps: uniform over the schedule (the paper), or log-normal noise levels (EDM)."""
    if lognormal_noise is None:
        return torch.randint(0, scheduler.config.num_train_timesteps, (size,), generator=generator, device=device)
    return lognormal_timesteps(scheduler, size, *lognormal_noise, generator=generator, device=device)


def objective_of(
    target: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, scheduler: Any, prediction_type: str
) -> torch.Tensor:
    """What the UNet is trained to output for ``noisy = add_noise(target, noise, timesteps)``."""
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(target, noise, timesteps)
    return noise if prediction_type == "epsilon" else target  # "sample": x0 (the change, under --residual)


def predicted_original(
    noisy: torch.Tensor, model_output: torch.Tensor, alphas: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The clean sample ``x0`` a model output implies at noise levels ``alphas`` (alpha_cumprod, ``(B,)``)."""
    alphas = alphas.to(noisy.device, torch.float32).view(-1, *([1] * (noisy.ndim - 1)))
    noisy, model_output = noisy.float(), model_output.float()
    if prediction_type == "v_prediction":
        return alphas.sqrt() * noisy - (1 - alphas).sqrt() * model_output
    if prediction_type == "epsilon":
        return (noisy - (1 - alphas).sqrt() * model_output) / alphas.sqrt()
    return model_output


def snr_weights(
    scheduler: Any, timesteps: torch.Tensor, snr_gamma: float, prediction_type: str, device: torch.device
) -> torch.Tensor:
    """min-SNR-gamma (Hang et al. 2023): the x0 loss weighted by ``min(SNR, gamma)``, in each objective's units."""
    alphas = scheduler.alphas_cumprod.to(device)[timesteps].float()
    snr = alphas / (1 - alphas)
    to_objective = {"v_prediction": snr + 1, "epsilon": snr, "sample": torch.ones_like(snr)}[prediction_type]
    return snr.clamp(max=snr_gamma) / to_objective


def diffusion_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    config: WorldModelConfig,
    scheduler: Any,
    generator: torch.Generator | None = None,
    snr_gamma: float | None = None,
    lognormal_noise: tuple[float, float] | None = None,
) -> torch.Tensor:
    """The training objective on a batch of cached (or freshly encoded) latent windows.

    v-prediction MSE on the next frame's latent (or, with ``config.residual``, on its change from the
    last context latent), with the context noise-augmented (a uniformly drawn bucket per sample) and
    dropped entirely with probability ``config.context_dropout``. ``snr_gamma``: min-SNR weighting
    of the timesteps, uniform when None. ``lognormal_noise`` (mean, std): the timesteps are those nearest to
    noise levels drawn log-normally, as EDM trains, instead of uniform timesteps.

    Every random draw comes from ``generator`` in a fixed order (noise, timesteps, buckets, context noise,
    dropout), so a run is reproducible and each process of a multi-process run draws its own."""
    target, context, actions = batch["target"], batch["context"], batch["actions"]
    device, size = target.device, target.shape[0]
    noise = torch.randn(target.shape, generator=generator, device=device, dtype=target.dtype)
    timesteps = draw_timesteps(scheduler, size, generator, device, lognormal_noise)
    buckets = torch.randint(0, config.noise_buckets, (size,), generator=generator, device=device)
    clean_context = context
    context = corrupt_context(context, buckets, config, generator)
    target = target - residual_base(clean_context if config.clean_residual_base else context, config)
    noisy = scheduler.add_noise(target, noise, timesteps)
    objective = objective_of(target, noise, timesteps, scheduler, config.prediction_type)
    dropped = torch.rand(size, generator=generator, device=device) < config.context_dropout
    prediction = model(noisy, timesteps, drop_context(context, dropped), actions, buckets)
    if snr_gamma is None:
        return F.mse_loss(prediction.float(), objective.float())
    per_sample = F.mse_loss(prediction.float(), objective.float(), reduction="none").flatten(1).mean(1)
    return (per_sample * snr_weights(scheduler, timesteps, snr_gamma, config.prediction_type, device)).mean()
