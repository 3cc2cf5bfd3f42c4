"""Build, load and save the models of the checkpoint contract (docs/training.md): the VAE and the world model.

Conventions every script shares:

- pixels are float tensors ``(..., 3, H, W)`` in [-1, 1] (``frames_to_tensor`` / ``tensor_to_frames``
  convert from/to uint8 ``(..., H, W, 3)`` frames as recorded);
- frames are padded to the preset's padded size with black rows at the bottom (and black columns at
  the right) before the VAE sees them, and cropped back after decoding (``pad_frames`` /
  ``unpad_frames``);
- latents given to the diffusion model are the VAE posterior times ``vae.config.scaling_factor``
  (``encode_frames`` / ``decode_latents`` apply padding and scaling in one place);
- a checkpoint is a folder (or Hub repo) with a ``vae/`` subfolder written by
  ``AutoencoderKL.save_pretrained``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from gamengen.config import ModelConfig, WorldModelConfig
from gamengen.files import atomic_path, temporary_path

T = TypeVar("T")

VAE_SUBFOLDER = "vae"
# Padding value in [-1, 1] pixel space: black.
PAD_VALUE = -1.0


class ModelLoadError(ValueError):
    """A model path or checkpoint that does not hold what was asked for."""


# ----------------------------------------------------------------------------------------------
# VAE


def build_vae(config: ModelConfig) -> AutoencoderKL:
    """An untrained AutoencoderKL of the preset's size (random init; seed torch first)."""
    return AutoencoderKL(**config.vae, scaling_factor=config.latent_scaling_factor)


def _is_local(name_or_path: str | os.PathLike) -> bool:
    text = str(name_or_path)
    return Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or text.count("/") != 1


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
            f"could not read the weights in {named} ({reason[:300]}): the file is damaged or incomplete (an interrupted "
            "copy, download or save?). Copy or download it again, or save the model again from a training checkpoint."
        ) from error


def load_vae(
    pretrained_model_name_or_path: str | os.PathLike,
    subfolder: str = VAE_SUBFOLDER,
    revision: str | None = None,
    torch_dtype: torch.dtype | None = None,
    cache_dir: str | None = None,
) -> AutoencoderKL:
    """Load the ``vae/`` of a checkpoint: a local folder or a Hub repo id (e.g. CompVis/stable-diffusion-v1-4)."""
    if _is_local(pretrained_model_name_or_path):
        root = Path(pretrained_model_name_or_path).expanduser()
        if not root.is_dir():
            raise ModelLoadError(f"model folder {root} does not exist (a Hub model id looks like USER/NAME)")
        if not (root / subfolder / "config.json").is_file():
            hint = ""
            if (root / "config.json").is_file():
                hint = f" It looks like a {subfolder}/ folder itself: pass its parent folder."
            raise ModelLoadError(
                f"{root} has no {subfolder}/ folder with a config.json. A model folder holds {subfolder}/ as written by "
                f"AutoencoderKL.save_pretrained (e.g. the --output_dir of finetune_autoencoder.py, or a diffusers Stable Diffusion folder).{hint}"
            )
        return read_weights(root / subfolder, lambda: AutoencoderKL.from_pretrained(root, subfolder=subfolder, torch_dtype=torch_dtype))
    try:
        return AutoencoderKL.from_pretrained(
            str(pretrained_model_name_or_path), subfolder=subfolder, revision=revision, torch_dtype=torch_dtype, cache_dir=cache_dir
        )
    except OSError as error:
        raise ModelLoadError(
            f"could not load {subfolder}/ of the Hub model {pretrained_model_name_or_path!r} ({error}). "
            "Check the id, your network (HF_HUB_OFFLINE=1 allows only cached models), or pass a local folder."
        ) from error


def save_vae(vae: AutoencoderKL, output_dir: str | os.PathLike) -> Path:
    """Write ``output_dir/vae`` atomically: a complete new folder replaces the old one, or nothing changes."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / VAE_SUBFOLDER
    with atomic_path(final) as tmp:
        vae.save_pretrained(tmp)
    return final


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent cell of a VAE (8 for Stable Diffusion's)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def check_vae(vae: AutoencoderKL, config: ModelConfig) -> None:
    """Refuse a VAE whose latent space does not have the preset's shape."""
    problems = []
    if vae.config.in_channels != 3 or vae.config.out_channels != 3:
        problems.append(f"it maps {vae.config.in_channels} to {vae.config.out_channels} channels, not RGB (3)")
    if vae.config.latent_channels != config.latent_channels:
        problems.append(f"{vae.config.latent_channels} latent channels, the preset has {config.latent_channels}")
    if vae_scale_factor(vae) != config.vae_scale_factor:
        problems.append(f"downsampling factor {vae_scale_factor(vae)}, the preset has {config.vae_scale_factor}")
    if problems:
        raise ModelLoadError(f"the VAE does not fit the {config.preset!r} preset: {'; '.join(problems)}")


# ----------------------------------------------------------------------------------------------
# Pixels, padding, latents


def frames_to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 frames ``(..., H, W, 3)`` -> float pixels ``(..., 3, H, W)`` in [-1, 1]."""
    frames = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    if frames.dtype != torch.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames of shape (..., H, W, 3), got {tuple(frames.shape)} {frames.dtype}")
    return frames.movedim(-1, -3).float().div(127.5).sub(1.0)


def tensor_to_frames(pixels: torch.Tensor) -> np.ndarray:
    """Float pixels ``(..., 3, H, W)`` in [-1, 1] -> uint8 frames ``(..., H, W, 3)`` (clamped, rounded)."""
    pixels = pixels.detach().float().clamp(-1.0, 1.0).add(1.0).mul(127.5).round()
    return pixels.to(torch.uint8).movedim(-3, -1).cpu().numpy()


def pad_frames(pixels: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """``(..., 3, frame_height, frame_width)`` -> ``(..., 3, padded_height, padded_width)``: black
    rows added at the bottom, black columns at the right (``unpad_frames`` crops them off)."""
    height, width = pixels.shape[-2:]
    if (height, width) != (config.frame_height, config.frame_width):
        raise ValueError(f"frames are {width}x{height}, the {config.preset!r} preset expects {config.frame_width}x{config.frame_height}")
    pad_right, pad_bottom = config.padded_width - width, config.padded_height - height
    if pad_right == 0 and pad_bottom == 0:
        return pixels
    return F.pad(pixels, (0, pad_right, 0, pad_bottom), value=PAD_VALUE)


def unpad_frames(pixels: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Crop padded pixels back to the frame size (the inverse of ``pad_frames``)."""
    height, width = pixels.shape[-2:]
    if (height, width) != (config.padded_height, config.padded_width):
        raise ValueError(f"pixels are {width}x{height}, the {config.preset!r} preset pads to {config.padded_width}x{config.padded_height}")
    return pixels[..., : config.frame_height, : config.frame_width]


def encode_frames(
    vae: AutoencoderKL, pixels: torch.Tensor, config: ModelConfig, sample: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Unpadded pixels ``(N, 3, H, W)`` -> scaled latents ``(N, C, h, w)`` (posterior mean, or a sample)."""
    posterior = vae.encode(pad_frames(pixels, config).to(vae.dtype)).latent_dist
    latents = posterior.sample(generator=generator) if sample else posterior.mode()
    return latents * vae.config.scaling_factor


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Scaled latents -> unpadded pixels in [-1, 1] (not clamped)."""
    pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return unpad_frames(pixels, config)


# ----------------------------------------------------------------------------------------------
# The world model: UNet + action embedding (one module, so DDP synchronises both)

UNET_SUBFOLDER = "unet"
SCHEDULER_SUBFOLDER = "scheduler"
ACTION_EMBEDDING_FILE = "action_embedding.safetensors"
CONFIG_FILE = "gamengen_config.json"


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
        raise ModelLoadError(f"the {config.model.preset!r} preset has no from-scratch UNet config: it starts from a pretrained UNet (widen_pretrained_unet)")
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
        raise ModelLoadError(f"the pretrained UNet takes {pretrained.config.in_channels} input channels, the latents have {channels}")
    arguments = {**dict(pretrained.config), "in_channels": config.unet_in_channels, "num_class_embeds": config.num_class_embeds}
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
    return WorldModel(unet, config.num_actions, config.context_length if config.action_positions else None, config.action_class)


def load_pretrained_unet(
    pretrained_model_name_or_path: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None
):
    """The ``unet/`` of a Stable Diffusion checkpoint (Hub id or local folder), for widening."""
    try:
        return _unet_class().from_pretrained(
            str(pretrained_model_name_or_path), subfolder=UNET_SUBFOLDER, revision=revision, cache_dir=cache_dir
        )
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load unet/ of {pretrained_model_name_or_path!r} ({error}); pass a Hub id or a folder with unet/") from error


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


# ----------------------------------------------------------------------------------------------
# Context conditioning shared by training and the engine


def noise_level(buckets: torch.Tensor, config: WorldModelConfig) -> torch.Tensor:
    """Standard deviation of the Gaussian noise added to the context for each bucket: bucket 0 is
    clean, the last bucket is ``max_noise_level``, evenly spaced between."""
    return buckets.float() * (config.max_noise_level / max(config.noise_buckets - 1, 1))


def corrupt_context(context_latents: torch.Tensor, buckets: torch.Tensor, config: WorldModelConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise augmentation (paper section 3.2.1): ``context + sigma(bucket) * eps``, per sample."""
    sigma = noise_level(buckets, config).to(context_latents.device, context_latents.dtype).view(-1, *([1] * (context_latents.ndim - 1)))
    noise = torch.randn(context_latents.shape, generator=generator, device=context_latents.device, dtype=context_latents.dtype)
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
# The checkpoint folder (docs/training.md)


@dataclass
class WorldModelBundle:
    """What a consumer needs: the model, the VAE, the scheduler and the config."""

    model: WorldModel
    vae: AutoencoderKL
    scheduler: Any
    config: WorldModelConfig


def save_world_model(
    output_dir: str | os.PathLike, model: WorldModel, vae: AutoencoderKL, config: WorldModelConfig, scheduler=None, model_card: str | None = None
) -> Path:
    """Write the checkpoint parts into ``output_dir`` (other contents, such as training checkpoints,
    are left alone). The parts are written to a hidden temporary folder first and each is then
    renamed into place, the config last, so a reader never sees a half-written part."""
    from safetensors.torch import save_file

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = temporary_path(output_dir / "checkpoint")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        config.unet = {k: v for k, v in dict(model.unet.config).items() if not k.startswith("_")}
        model.unet.save_pretrained(staging / UNET_SUBFOLDER)
        vae.save_pretrained(staging / VAE_SUBFOLDER)
        (scheduler or make_scheduler(config)).save_pretrained(staging / SCHEDULER_SUBFOLDER)
        embeddings = {"weight": model.action_embedding.weight}
        if model.action_position is not None:
            embeddings["position"] = model.action_position
        embeddings = {k: v.detach().float().cpu().contiguous() for k, v in embeddings.items()}
        save_file(embeddings, str(staging / ACTION_EMBEDDING_FILE))
        (staging / "README.md").write_text(model_card or default_model_card(config))
        (staging / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
        # Every part is complete before the first one replaces its predecessor; the config goes last.
        for name in (UNET_SUBFOLDER, VAE_SUBFOLDER, SCHEDULER_SUBFOLDER, ACTION_EMBEDDING_FILE, "README.md", CONFIG_FILE):
            with atomic_path(output_dir / name) as part:
                os.replace(staging / name, part)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def default_model_card(config: WorldModelConfig) -> str:
    return (
        "---\ntags:\n- gamengen\n- world-model\n- vizdoom\n---\n\n"
        f"# GameNGen world model ({config.model.preset})\n\n"
        f"Predicts the next {config.model.frame_width}x{config.model.frame_height} DOOM frame from the last "
        f"{config.context_length} frames and actions ({config.num_actions} actions: {', '.join(config.action_names)}). "
        f"Sampling: {config.num_inference_steps} DDIM steps, v-prediction, CFG {config.guidance_scale} on the context.\n\n"
        f"Dataset: {config.dataset.get('name', 'unknown')}\n"
    )


def resolve_checkpoint(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local checkpoint folder, or a Hub model id downloaded to the local cache."""
    if _is_local(name_or_path):
        root = Path(name_or_path).expanduser()
        if not root.is_dir():
            raise ModelLoadError(f"checkpoint folder {root} does not exist (a Hub model id looks like USER/NAME)")
        return root
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), revision=revision))
    except Exception as error:
        raise ModelLoadError(f"could not fetch the checkpoint {name_or_path!r} from the Hub ({error}); check the id or pass a local folder") from error


def _peer():
    """gamengen.peer, imported when first needed (it imports this module)."""
    from gamengen import peer

    return peer


def read_world_model_config(name_or_path: str | os.PathLike, revision: str | None = None) -> WorldModelConfig:
    """A checkpoint's ``gamengen_config.json`` (folder or Hub id), without loading any weights."""
    root = resolve_checkpoint(name_or_path, revision)
    path = root / CONFIG_FILE
    if not path.is_file() and _peer().is_peer_checkpoint(root):
        return _peer().read_peer_config(root)
    if not path.is_file():
        raise ModelLoadError(f"{root} is not a world-model checkpoint: missing {CONFIG_FILE} (written by train_text_to_image.py)")
    try:
        return WorldModelConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"{path} is not a valid world-model config: {error}") from error


def load_world_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    num_actions: int | None = None,
    revision: str | None = None,
) -> WorldModelBundle:
    """THE loader of every consumer: a checkpoint folder or Hub id -> WorldModelBundle.

    Refuses a folder with a missing part, or whose parts disagree with its config (or with
    ``num_actions`` when the caller knows how many actions its data has)."""
    from diffusers import DDIMScheduler
    from safetensors.torch import load_file

    root = resolve_checkpoint(name_or_path, revision)
    if _peer().is_peer_checkpoint(root):  # the seed repository's layout, converted on load
        return _peer().load_peer_checkpoint(root, device=device, dtype=dtype, num_actions=num_actions)
    parts = [
        CONFIG_FILE,
        f"{UNET_SUBFOLDER}/config.json",
        f"{VAE_SUBFOLDER}/config.json",
        f"{SCHEDULER_SUBFOLDER}/scheduler_config.json",
        ACTION_EMBEDDING_FILE,
    ]
    missing = [part for part in parts if not (root / part).is_file()]
    if missing:
        raise ModelLoadError(f"{root} is not a complete world-model checkpoint: missing {', '.join(missing)} (written by train_text_to_image.py)")
    config = read_world_model_config(root)
    if num_actions is not None and num_actions != config.num_actions:
        raise ModelLoadError(f"the checkpoint was trained with {config.num_actions} actions, the data has {num_actions}")
    unet = read_weights(root / UNET_SUBFOLDER, lambda: _unet_class().from_pretrained(root, subfolder=UNET_SUBFOLDER))
    problems = []
    if unet.config.in_channels != config.unet_in_channels:
        problems.append(f"unet takes {unet.config.in_channels} input channels, the config needs {config.unet_in_channels} (context {config.context_length})")
    if unet.config.num_class_embeds != config.num_class_embeds:
        problems.append(
            f"unet has {unet.config.num_class_embeds} class labels, the config {config.num_class_embeds} (noise buckets x actions when action_class)"
        )
    embeddings = read_weights(root / ACTION_EMBEDDING_FILE, lambda: load_file(str(root / ACTION_EMBEDDING_FILE)))
    embedding, position = embeddings["weight"], embeddings.get("position")
    if tuple(embedding.shape) != (config.num_actions, unet.config.cross_attention_dim):
        problems.append(f"action embedding is {tuple(embedding.shape)}, expected ({config.num_actions}, {unet.config.cross_attention_dim})")
    if config.action_positions and (position is None or tuple(position.shape) != (config.context_length, unet.config.cross_attention_dim)):
        found = "none" if position is None else tuple(position.shape)
        problems.append(f"action position embedding is {found}, expected ({config.context_length}, {unet.config.cross_attention_dim})")
    vae = read_weights(root / VAE_SUBFOLDER, lambda: AutoencoderKL.from_pretrained(root, subfolder=VAE_SUBFOLDER, torch_dtype=dtype))
    try:
        check_vae(vae, config.model)
    except ModelLoadError as error:
        problems.append(str(error))
    if problems:
        raise ModelLoadError(f"{root} does not match its {CONFIG_FILE}: " + "; ".join(problems))
    model = make_world_model(unet, config)
    with torch.no_grad():
        model.action_embedding.weight.copy_(embedding)
        if model.action_position is not None:
            model.action_position.copy_(position)
    scheduler = DDIMScheduler.from_pretrained(root, subfolder=SCHEDULER_SUBFOLDER)
    model.to(device=device, dtype=dtype).eval()
    vae.to(device=device).eval()
    return WorldModelBundle(model=model, vae=vae, scheduler=scheduler, config=config)
