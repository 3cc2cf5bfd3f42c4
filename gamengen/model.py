"""The world model (paper section 3.2): the UNet widened to take the context latents, the action embedding and
the DDIM scheduler of the checkpoint contract. The conditioning that training and the engine share (noise
augmentation, the residual base, context dropout) is the diffusion objective's, in ``gamengen.diffusion``.

The VAE and the pixel conventions are in ``gamengen.vae``; the checkpoint folder that holds both models is
written and read by ``gamengen.checkpoint``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from gamengen.config import WorldModelConfig
from gamengen.errors import ModelLoadError

T = TypeVar("T")


def read_weights(folder: Path, load: Callable[[], T]) -> T:
    """Run ``load`` (reading the weights in ``folder``, a file or a folder); a damaged file gets a clear
    ModelLoadError naming it instead of the loader's deep traceback."""
    try:
        return load()
    except ModelLoadError:
        raise
    except Exception as error:
        files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) if folder.is_dir() else [folder]
        named = ", ".join(str(f) for f in files) or str(folder)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(
            f"could not read the weights in {named} ({reason[:300]}): the file is damaged or incomplete (an "
            "interrupted "
            "copy, download or save?). Copy or download it again, or save the model again from a training checkpoint."
        ) from error


# ----------------------------------------------------------------------------------------------
# The world model: UNet + action embedding (one module, so DDP synchronises both)

UNET_SUBFOLDER = "unet"


class WorldModel(torch.nn.Module):
    """Predicts the next frame's latent (as v) from noisy latents, past latents and past actions.

    ``forward(noisy_latents (B,C,h,w), timesteps (B,), context_latents (B,N,C,h,w),
    context_actions (B,N) int, noise_buckets (B,) int) -> (B,C,h,w)``. The context latents are
    concatenated after the noisy latent on the channel axis; the actions become the
    cross-attention tokens (in place of the text); the context noise bucket is the UNet's class
    label, whose embedding is added to the timestep embedding. With ``context_length`` given
    (``config.action_positions``), a learned embedding of each action's slot is added to its token.
    With ``action_class`` (``config.action_class``) the class label is ``bucket * num_actions + newest
    action``, so the action that produced the target reaches every ResNet block.
    """

    def __init__(self, unet, num_actions: int, context_length: int | None = None, action_class: bool = False) -> None:
        super().__init__()
        self.unet = unet
        self.num_actions = num_actions
        self.action_class = action_class
        self.action_embedding = torch.nn.Embedding(num_actions, unet.config.cross_attention_dim)
        self.action_position = None
        if context_length is not None:
            self.action_position = torch.nn.Parameter(torch.randn(context_length, unet.config.cross_attention_dim))

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        context_latents: torch.Tensor,
        context_actions: torch.Tensor,
        noise_buckets: torch.Tensor,
    ) -> torch.Tensor:
        batch, frames, channels, height, width = context_latents.shape
        unet_input = torch.cat([noisy_latents, context_latents.reshape(batch, frames * channels, height, width)], dim=1)
        tokens = self.action_embedding(context_actions)
        if self.action_position is not None:
            tokens = tokens + self.action_position[-tokens.shape[1] :].to(tokens.dtype)
        labels = noise_buckets * self.num_actions + context_actions[:, -1] if self.action_class else noise_buckets
        return self.unet(unet_input, timesteps, encoder_hidden_states=tokens, class_labels=labels).sample


def _unet_class():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel


def build_unet(config: WorldModelConfig):
    """An untrained UNet of the preset's size (tiny), with the widened input and the bucket embedding."""
    if not config.unet:
        raise ModelLoadError(
            f"the {config.model.preset!r} preset has no from-scratch UNet config: it starts from a pretrained UNet "
            "(widen_pretrained_unet)"
        )
    arguments = {**config.unet, "in_channels": config.unet_in_channels, "num_class_embeds": config.num_class_embeds}
    arguments["out_channels"] = config.model.latent_channels
    return _unet_class()(**arguments)


def widen_pretrained_unet(pretrained, config: WorldModelConfig):
    """A text-to-image UNet turned into the world model's UNet (paper section 3.2).

    ``conv_in`` gets ``latent_channels * (N + 1)`` input channels: the pretrained weights stay on
    the noisy-latent channels and the new context channels start at zero; the noise-bucket
    embedding starts at zero. So the widened network initially computes exactly what the
    pretrained one computed on the noisy latent, whatever the context.
    """
    channels = config.model.latent_channels
    if pretrained.config.in_channels != channels:
        raise ModelLoadError(
            f"the pretrained UNet takes {pretrained.config.in_channels} input channels, the latents have {channels}"
        )
    arguments = {
        **dict(pretrained.config),
        "in_channels": config.unet_in_channels,
        "num_class_embeds": config.num_class_embeds,
    }
    arguments = {k: v for k, v in arguments.items() if not k.startswith("_")}
    unet = _unet_class().from_config(arguments)
    state = pretrained.state_dict()
    weight = state["conv_in.weight"]
    widened = torch.zeros(weight.shape[0], config.unet_in_channels, *weight.shape[2:], dtype=weight.dtype)
    widened[:, :channels] = weight
    state["conv_in.weight"] = widened
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if unexpected or any(not name.startswith("class_embedding") for name in missing):
        raise ModelLoadError(f"the pretrained UNet does not fit: missing {missing}, unexpected {unexpected}")
    torch.nn.init.zeros_(unet.class_embedding.weight)
    return unet


def build_world_model(config: WorldModelConfig, pretrained_unet=None) -> WorldModel:
    """A new world model: from scratch (tiny) or from a pretrained text-to-image UNet (sd14)."""
    unet = widen_pretrained_unet(pretrained_unet, config) if pretrained_unet is not None else build_unet(config)
    return make_world_model(unet, config)


def make_world_model(unet, config: WorldModelConfig) -> WorldModel:
    """The world model around a UNet, with the action conditioning the config asks for."""
    return WorldModel(
        unet, config.num_actions, config.context_length if config.action_positions else None, config.action_class
    )


def load_pretrained_unet(
    pretrained_model_name_or_path: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None
):
    """The ``unet/`` of a Stable Diffusion checkpoint (Hub id or local folder), for widening."""
    try:
        return _unet_class().from_pretrained(
            str(pretrained_model_name_or_path), subfolder=UNET_SUBFOLDER, revision=revision, cache_dir=cache_dir
        )
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"could not load unet/ of {pretrained_model_name_or_path!r} ({error}); pass a Hub id or a folder with unet/"
        ) from error


def make_scheduler(config: WorldModelConfig):
    """The DDIM scheduler of the checkpoint: SD v1.4's noise schedule, v-prediction, and
    "trailing" timestep spacing so that a 4-step sampler starts from pure noise (t = 999)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=config.prediction_type,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="trailing",
    )
