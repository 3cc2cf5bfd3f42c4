"""Distribution-matching distillation of a world model to ONE sampling step (the paper's appendix; ``distill.py``).

The paper distils its 4-step model into a 1-step one with distribution matching (DMD, Yin et al. 2024): a
generator (the student) starts as a copy of the teacher; the frozen teacher, with CFG on the context, is the
score of the real distribution; a second copy (the "fake" score) is trained online, with the ordinary diffusion
loss, on the student's own samples only. The student is moved along the difference of the two scores at a
random noise level: where the teacher's denoised guess differs from the fake score's, the student's frame moves
toward the teacher's. No regression loss. DMD2 (Yin et al. 2024b) adds an adversarial term on real frames, which
lets a student be sharper than its teacher; here it is optional (``adversarial_weight``, a small latent
discriminator, measured on and off in docs/research_log.md). So is the first DMD paper's regression term
(``regression_weight``): the student's frame against the teacher's own multi-step frame from the same noise, which
ties each condition's sample to the teacher's where distribution matching alone only matches the distributions.

All three networks see what the engine gives the student at play time: the context at the checkpoint's inference
noise bucket (0: clean), the actions, and, under the residual parameterisation, the same base. The student's frame
is made exactly as the engine makes it at one step (``gamengen.ddim``), so a student is an ordinary checkpoint that
every engine script plays at one step.

The three trainable networks form one module (``DistillationModels``) whose ``forward`` returns the summed loss:
their gradients never mix (the student's term reads the scores under ``no_grad``; the fake score trains on
detached samples; the discriminator's term on the student reads detached discriminator weights), so one optimizer
step updates each by its own objective, and the project's one training loop (``gamengen.training.train``:
resuming, accumulation, multi-process DDP, checkpoints) runs it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gamengen.config import WorldModelConfig
from gamengen.context import PAD_ACTION
from gamengen.ddim import DDIMStep, ddim_update
from gamengen.diffusion import corrupt_context, drop_context, objective_of, predicted_original, residual_base
from gamengen.model import WorldModel


@dataclass(frozen=True)
class DistillSettings:
    """What the distillation objective reads besides the models (``distill.py``'s options)."""

    guidance_scale: float  # the teacher's CFG on the context (the paper: 1.5)
    min_timestep: int  # the DMD term's noise levels: uniform timesteps in [min, max] (DMD2: 2% .. 98% of T)
    max_timestep: int
    adversarial_weight: float = 0.0  # DMD2's GAN term on real frames; 0: off (the paper)
    # The context every network sees: at the checkpoint's inference noise bucket ("inference", what the engine gives
    # the student) or noise-augmented at a uniformly drawn bucket per window ("random", as the teacher trained).
    context_noise: str = "inference"
    # The fraction of windows whose newest context frame is the student's own 1-step frame (made from the frames
    # before it, without gradient): at play time the student continues its own frames, not the recorded ones.
    own_context_fraction: float = 0.0
    # DMD's (first paper's) regression term: the student's frame against the teacher's own frame sampled from the
    # same noise along ``teacher_steps`` (its DDIM schedule, eta 0, with the CFG above); 0: off (the paper).
    regression_weight: float = 0.0
    teacher_steps: tuple[DDIMStep, ...] = ()


class LatentDiscriminator(nn.Module):
    """Real or generated? A small convolutional classifier of a next-frame latent ``(B, C, h, w)``, given the newest
    context latent beside it (so it judges the frame as a continuation, not alone). Returns logits ``(B,)``."""

    def __init__(self, latent_channels: int, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(2 * latent_channels, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, 1),
        )

    def forward(self, latent: torch.Tensor, newest_context: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([latent, newest_context], dim=1).float()).squeeze(1)


class DistillationModels(nn.Module):
    """The student (generator), the fake score and, optionally, the discriminator: trained together by one
    optimizer through ``forward``, which returns ``(loss, metrics)`` for a batch of latent windows."""

    def __init__(self, student: WorldModel, fake_score: WorldModel, discriminator: LatentDiscriminator | None) -> None:
        super().__init__()
        self.student, self.fake_score, self.discriminator = student, fake_score, discriminator

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator,
        teacher: WorldModel,
        scheduler: Any,
        config: WorldModelConfig,
        settings: DistillSettings,
        one_step: DDIMStep,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        context, actions = batch["context"], batch["actions"]  # (B, N, C, h, w), (B, N)
        if settings.own_context_fraction > 0:
            context = with_own_newest_frame(
                self.student, context, actions, config, settings, one_step, scheduler, generator
            )
        seen, base, conditioning = conditioning_of(context, actions, config, settings, generator)

        # The student's frame, made as the engine makes it at one step (in the diffusion's variable: the change
        # from the base under the residual parameterisation).
        noise = None
        if settings.regression_weight > 0:
            noise = torch.randn(base.shape, generator=generator, device=base.device, dtype=torch.float32)
        sample = one_step_sample(self.student, conditioning, base, one_step, scheduler, generator, noise)

        matching = distribution_matching_loss(
            sample, conditioning, generator, teacher, self.fake_score, scheduler, settings
        )
        fake_loss = fake_score_loss(sample.detach(), conditioning, generator, self.fake_score, scheduler)
        loss = matching + fake_loss
        metrics = {"dmd_loss": matching.detach(), "fake_score_loss": fake_loss.detach()}
        if noise is not None:
            target = teacher_sample(teacher, noise, conditioning, settings.teacher_steps, scheduler, settings)
            regression = F.mse_loss(sample, target)
            loss = loss + settings.regression_weight * regression
            metrics["regression_loss"] = regression.detach()
        if self.discriminator is not None:
            newest = seen[:, -1]
            real, fake = batch["target"].float(), (sample + base).float()  # absolute next-frame latents
            real_logits = self.discriminator(real, newest)
            fake_logits = self.discriminator(fake.detach(), newest)
            critic = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
            frozen = {name: weight.detach() for name, weight in self.discriminator.named_parameters()}
            fooled = torch.func.functional_call(self.discriminator, frozen, (fake, newest))
            adversarial = F.softplus(-fooled).mean()
            loss = loss + critic + settings.adversarial_weight * adversarial
            metrics.update(discriminator_loss=critic.detach(), adversarial_loss=adversarial.detach())
        return loss, metrics


def conditioning_of(
    context: torch.Tensor,
    actions: torch.Tensor,
    config: WorldModelConfig,
    settings: DistillSettings,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The context as the networks see it (noised at the chosen buckets), the residual base the student's frame is
    added to (as the engine adds it), and the ``(context, actions, buckets)`` every network is called with."""
    size, device = context.shape[0], context.device
    if settings.context_noise == "random":
        buckets = torch.randint(0, config.noise_buckets, (size,), generator=generator, device=device)
    else:
        buckets = torch.full((size,), config.inference_noise_bucket, dtype=torch.int64, device=device)
    seen = corrupt_context(context, buckets, config, generator) if bool(buckets.any()) else context
    base = residual_base(context if config.clean_residual_base else seen, config)
    return seen, base, (seen, actions, buckets)


def one_step_sample(
    student: nn.Module,
    conditioning: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    base: torch.Tensor,
    one_step: DDIMStep,
    scheduler: Any,
    generator: torch.Generator,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """The student's frame from ``noise`` (default: fresh) in one DDIM step, as the engine makes it (float32, in the
    diffusion's variable: the change from ``base`` under the residual parameterisation)."""
    context = conditioning[0]
    if noise is None:
        noise = torch.randn(base.shape, generator=generator, device=context.device, dtype=torch.float32)
    timestep = one_step.timestep_tensor.to(context.device).expand(context.shape[0])
    output = student(noise.to(context.dtype), timestep, *conditioning).float()
    return ddim_update(noise, output, one_step, scheduler.config.prediction_type)


def with_own_newest_frame(
    student: nn.Module,
    context: torch.Tensor,
    actions: torch.Tensor,
    config: WorldModelConfig,
    settings: DistillSettings,
    one_step: DDIMStep,
    scheduler: Any,
    generator: torch.Generator,
) -> torch.Tensor:
    """The context with its newest frame replaced, in a ``settings.own_context_fraction`` of the windows, by the
    student's own frame made (without gradient) from the frames and actions before it: the window one frame
    earlier, its oldest slot padded as ``gamengen.context.pad_context`` pads. The other frames stay recorded."""
    earlier = torch.cat([context[:, :1], context[:, :-1]], dim=1)
    earlier_actions = torch.cat([torch.full_like(actions[:, :1], PAD_ACTION), actions[:, :-1]], dim=1)
    with torch.no_grad():
        _, base, conditioning = conditioning_of(earlier, earlier_actions, config, settings, generator)
        made = (one_step_sample(student, conditioning, base, one_step, scheduler, generator) + base).to(context.dtype)
    own = torch.rand(context.shape[0], generator=generator, device=context.device) < settings.own_context_fraction
    newest = torch.where(own.view(-1, 1, 1, 1), made, context[:, -1])
    return torch.cat([context[:, :-1], newest[:, None]], dim=1)


def distribution_matching_loss(
    sample: torch.Tensor,
    conditioning: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    generator: torch.Generator,
    teacher: WorldModel,
    fake_score: WorldModel,
    scheduler: Any,
    settings: DistillSettings,
) -> torch.Tensor:
    """DMD's generator term: noise the student's sample to a random level, denoise it with the teacher (guided) and
    with the fake score, and pull the sample along their difference, normalised per sample by how far the teacher's
    guess lies from it. Its gradient with respect to the sample is exactly that difference (a surrogate loss: its
    value, half the squared step, is what is logged)."""
    size, device = sample.shape[0], sample.device
    timesteps = torch.randint(
        settings.min_timestep, settings.max_timestep + 1, (size,), generator=generator, device=device
    )
    noise = torch.randn(sample.shape, generator=generator, device=device, dtype=torch.float32)
    noisy = scheduler.add_noise(sample.detach(), noise, timesteps)
    alphas = scheduler.alphas_cumprod.to(device)[timesteps]
    prediction_type = scheduler.config.prediction_type
    with torch.no_grad():
        real = predicted_original(
            noisy,
            guided_output(teacher, noisy, timesteps, conditioning, settings.guidance_scale),
            alphas,
            prediction_type,
        )
        fake = predicted_original(noisy, fake_score(noisy, timesteps, *conditioning), alphas, prediction_type)
        weight = (sample.detach() - real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-4)
        step = torch.nan_to_num((fake - real) / weight)
    return 0.5 * F.mse_loss(sample, (sample - step).detach())


def teacher_sample(
    teacher: WorldModel,
    noise: torch.Tensor,
    conditioning: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    steps: tuple[DDIMStep, ...],
    scheduler: Any,
    settings: DistillSettings,
) -> torch.Tensor:
    """The teacher's own frame from ``noise``, sampled as its engine samples it (DDIM at eta 0 along ``steps``,
    with the distillation's CFG), without gradient: the regression term's target, float32."""
    if not steps:
        raise ValueError("the regression term needs the teacher's sampling steps (DistillSettings.teacher_steps)")
    sample = noise
    with torch.no_grad():
        for step in steps:
            timestep = step.timestep_tensor.to(noise.device).expand(noise.shape[0])
            output = guided_output(teacher, sample, timestep, conditioning, settings.guidance_scale)
            sample = ddim_update(sample, output, step, scheduler.config.prediction_type)
    return sample


def guided_output(
    model: WorldModel,
    noisy: torch.Tensor,
    timesteps: torch.Tensor,
    conditioning: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    guidance_scale: float,
) -> torch.Tensor:
    """The model's output with classifier-free guidance on the context (the unconditional branch sees every context
    frame dropped, as training drops them), as one batch of 2B like the engine."""
    context, actions, buckets = conditioning
    if guidance_scale == 1.0:
        return model(noisy.to(context.dtype), timesteps, context, actions, buckets).float()
    every = torch.ones(context.shape[0], dtype=torch.bool, device=context.device)
    both = model(
        torch.cat([noisy, noisy]).to(context.dtype),
        torch.cat([timesteps, timesteps]),
        torch.cat([context, drop_context(context, every)]),
        torch.cat([actions, actions]),
        torch.cat([buckets, buckets]),
    ).float()
    conditional, unconditional = both.chunk(2)
    return unconditional + guidance_scale * (conditional - unconditional)


def fake_score_loss(
    sample: torch.Tensor,
    conditioning: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    generator: torch.Generator,
    fake_score: WorldModel,
    scheduler: Any,
) -> torch.Tensor:
    """The fake score's diffusion loss on the student's (detached) samples, with the teacher's objective and the
    same conditioning: it learns the distribution the student generates, never the real frames."""
    size, device = sample.shape[0], sample.device
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (size,), generator=generator, device=device)
    noise = torch.randn(sample.shape, generator=generator, device=device, dtype=torch.float32)
    noisy = scheduler.add_noise(sample, noise, timesteps)
    objective = objective_of(sample, noise, timesteps, scheduler, scheduler.config.prediction_type)
    context = conditioning[0]
    prediction = fake_score(noisy.to(context.dtype), timesteps, *conditioning)
    return F.mse_loss(prediction.float(), objective.float())


def student_config(teacher: WorldModelConfig, provenance: dict[str, Any]) -> WorldModelConfig:
    """The student's checkpoint config: the teacher's, sampled at one step without guidance (the teacher's
    guidance is distilled into it), with the distillation's provenance."""
    values = teacher.to_dict()
    values.update(num_inference_steps=1, sampler_timesteps="trailing", sampler_eta=0.0, guidance_scale=1.0)
    values["distillation"] = provenance
    return WorldModelConfig.from_dict(values)
