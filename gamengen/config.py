"""The model/data contract as dataclasses, with the two presets (docs/training.md) and their training defaults.

``sd14`` is the paper's setting: Stable Diffusion v1.4's VAE on 320x240 frames padded to 320x256
(latents 4x32x40). ``tiny`` uses the same diffusers classes with a small, randomly initialised
config on 64x48 frames (latents 4x12x16), so that the whole pipeline trains on a laptop CPU. ``small``, between
them, is the GPU quickstart's (``quickstart.py --budget gpu``): 128x96 frames (latents 4x24x32), a 14M-parameter
VAE and a 97M-parameter UNet trained from scratch in minutes on one GPU.

Padding (both presets): frames sit in the top-left corner of the padded canvas; the extra rows at
the bottom (and columns at the right) are black. Cropping ``[:frame_height, :frame_width]`` undoes
it exactly. ``tiny`` needs no padding (48 and 64 are multiples of its downsampling factor 4).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

# The paper's Stable Diffusion checkpoint: the sd14 preset's VAE and the UNet its world model is widened from.
SD14_MODEL_ID = "CompVis/stable-diffusion-v1-4"

# Stable Diffusion v1.4's VAE (subfolder ``vae`` of CompVis/stable-diffusion-v1-4), as an
# AutoencoderKL config: used to build an untrained model of that size (benchmarks, shape checks);
# real runs load the pretrained weights.
SD14_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}

# The tiny preset's VAE: three resolution levels (downsampling factor 4), one ResNet block per
# level, mid-block attention kept as in SD (192 tokens at 12x16, cheap). ~0.7M parameters,
# ~4.5 training steps/s at batch 16 on a 2-core CPU.
TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 64],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": 64,
}


def autoencoder_scale_factor(vae_config: Any) -> int:
    """Pixels per latent cell along each axis of an autoencoder config (a dict or a diffusers config): every
    AutoencoderKL level but the last halves the size; the space-to-depth autoencoder has its ``factor``."""
    if "factor" in vae_config:
        return int(vae_config["factor"])
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


@dataclass
class ModelConfig:
    """Frame geometry and latent space shared by every script (VAE part of the model contract)."""

    preset: str
    frame_width: int
    frame_height: int
    padded_width: int
    padded_height: int
    # Multiplies the VAE's latents before the diffusion model sees them (SD v1.4: 0.18215). A
    # loaded VAE carries its own value in ``vae.config.scaling_factor``, which takes precedence;
    # finetune_autoencoder.py --train_encoder measures it for a VAE trained from scratch.
    latent_scaling_factor: float
    # Default weights (Hub id or local folder with a ``vae/`` subfolder); None: no pretrained VAE.
    pretrained_model_name_or_path: str | None
    # AutoencoderKL constructor arguments for an untrained VAE (``scaling_factor`` comes from above).
    vae: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.padded_width < self.frame_width or self.padded_height < self.frame_height:
            raise ValueError(
                f"padded size {self.padded_width}x{self.padded_height} is smaller than the frame size "
                f"{self.frame_width}x{self.frame_height}"
            )
        factor = self.vae_scale_factor
        if self.padded_width % factor or self.padded_height % factor:
            raise ValueError(
                f"padded size {self.padded_width}x{self.padded_height} is not a multiple of the VAE's downsampling "
                f"factor {factor}"
            )

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each axis (``autoencoder_scale_factor`` of the preset's VAE config)."""
        return autoencoder_scale_factor(self.vae)

    @property
    def latent_channels(self) -> int:
        return int(self.vae["latent_channels"])

    @property
    def latent_height(self) -> int:
        return self.padded_height // self.vae_scale_factor

    @property
    def latent_width(self) -> int:
        return self.padded_width // self.vae_scale_factor

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one frame's latent."""
        return (self.latent_channels, self.latent_height, self.latent_width)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict``; unknown keys (written by newer versions) are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}")
        return cls(**copy.deepcopy(values))


def _sd14() -> ModelConfig:
    return ModelConfig(
        preset="sd14",
        frame_width=320,
        frame_height=240,
        padded_width=320,
        padded_height=256,
        latent_scaling_factor=0.18215,
        pretrained_model_name_or_path=SD14_MODEL_ID,
        vae=copy.deepcopy(SD14_VAE_CONFIG),
    )


def _tiny() -> ModelConfig:
    return ModelConfig(
        preset="tiny",
        frame_width=64,
        frame_height=48,
        padded_width=64,
        padded_height=48,
        latent_scaling_factor=1.0,
        pretrained_model_name_or_path=None,
        vae=copy.deepcopy(TINY_VAE_CONFIG),
    )


# The tiny preset with the lossless space-to-depth "autoencoder" (gamengen.vae.SpaceToDepthAutoencoder): each 4x4
# patch of a 64x48 frame becomes 48 channels of a 12x16 latent, the tiny UNet's grid; decoding is exact, so the
# frames are as sharp as the world model makes them. The scaling factor is measured on the dataset.
TINY_S2D_VAE_CONFIG: dict[str, Any] = {"_class_name": "SpaceToDepthAutoencoder", "factor": 4, "latent_channels": 48}


def _tiny_s2d() -> ModelConfig:
    config = _tiny()
    config.preset, config.vae = "tiny-s2d", copy.deepcopy(TINY_S2D_VAE_CONFIG)
    return config


# The small preset's VAE: the tiny one's three levels (factor 4: 128x96 -> 24x32 latents, SD's 4 channels), with SD's
# two ResNet blocks per level and four times the tiny one's channels. ~14M parameters; 15 GFLOP to encode a frame,
# 30 to decode it.
SMALL_VAE_CONFIG: dict[str, Any] = {
    **TINY_VAE_CONFIG,
    "block_out_channels": [64, 128, 256],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 128,
}


def _small() -> ModelConfig:  # tiny's at 128x96 (no padding), with its own VAE (scaling factor: measured)
    size = {"frame_width": 128, "frame_height": 96, "padded_width": 128, "padded_height": 96}
    return replace(_tiny(), preset="small", vae=copy.deepcopy(SMALL_VAE_CONFIG), **size)


PRESETS = {"sd14": _sd14, "small": _small, "tiny": _tiny, "tiny-s2d": _tiny_s2d}


def get_config(preset: str) -> ModelConfig:
    """A fresh copy of a preset's config ("sd14", "small", "tiny" or "tiny-s2d")."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {sorted(PRESETS)}")
    return PRESETS[preset]()


# ----------------------------------------------------------------------------------------------
# The world model (docs/training.md): the UNet conditioned on past latents and actions.

# The tiny preset's UNet: two resolution levels over the 12x16 latents, cross-attention to the
# action tokens at the lower level only, noise-augmentation buckets as a class embedding.
TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": [12, 16],
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [64, 128],
    "layers_per_block": 1,
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
    "norm_num_groups": 16,
}

# The small preset's UNet: three levels over the 24x32 latents (24x32, 12x16, 6x8), SD's two ResNet blocks per level,
# cross-attention to the action tokens at the two lower levels (192 and 48 positions; none at 768), SD's 8 heads.
# 97M parameters; a training sample is 53 GFLOP forward and backward (sd14's: 686).
SMALL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": [24, 32],
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [128, 256, 512],
    "layers_per_block": 2,
    "cross_attention_dim": 256,
    "attention_head_dim": 8,  # diffusers' name for the number of heads in this UNet
    "norm_num_groups": 32,
}
UNET_CONFIGS = {"tiny": TINY_UNET_CONFIG, "tiny-s2d": TINY_UNET_CONFIG, "small": SMALL_UNET_CONFIG}  # sd14: pretrained

# Context length per preset: the paper's 64 frames; a short context for the CPU preset (the
# paper's context ablation: 1 frame is clearly worse than 2+, beyond 4 gains are small) and twice that on a GPU.
DEFAULT_CONTEXT_LENGTH = {"sd14": 64, "small": 8, "tiny": 4, "tiny-s2d": 4}
PREDICTION_TYPES = ("v_prediction", "epsilon", "sample")  # what the UNet predicts (diffusers' names)


def context_length_of(preset: str, context_length: int | None = None) -> int:
    """A run's context length: the one asked for, else the preset's (``DEFAULT_CONTEXT_LENGTH``)."""
    return int(context_length or DEFAULT_CONTEXT_LENGTH[preset])


@dataclass
class WorldModelConfig:
    """Everything a consumer needs to run a checkpoint: written as ``gamengen_config.json``.

    Channel layout of the UNet input: ``[noisy target latent, context latent t-N, ..., t-1]``
    (``latent_channels * (context_length + 1)`` channels). One cross-attention token per context
    action, oldest first. The noise-augmentation bucket of the context is the UNet's class label.
    """

    model: ModelConfig
    context_length: int
    action_names: list[str]
    # UNet2DConditionModel arguments for a from-scratch build (tiny). sd14 starts from the
    # pretrained UNet of ``model.pretrained_model_name_or_path`` and stores its config here on save.
    unet: dict[str, Any] = field(default_factory=dict)
    noise_buckets: int = 10  # paper: noise level in [0, max_noise_level] discretised into 10 buckets
    max_noise_level: float = 0.7  # paper
    context_dropout: float = 0.1  # paper: all context frames dropped 10% of the time (for CFG)
    guidance_scale: float = 1.5  # paper: CFG on the context only
    num_inference_steps: int = 4  # paper: 4 DDIM steps
    # Which timesteps the sampler calls the model at (``gamengen.ddim.ddim_schedule``): "trailing" (the
    # scheduler's, 4 steps: 999, 749, 499, 249), "karras", or a comma-separated list; and the DDIM eta
    # (0 = deterministic, 1 = DDPM's ancestral noise). The engine's defaults; its options override them.
    sampler_timesteps: str = "trailing"
    sampler_eta: float = 0.0
    # Bucket of the noise added to the context at inference. 0 (no noise): generated frames already
    # carry the model's own small errors, and the paper's noise augmentation exists so that the
    # model tolerates such corrupted context; a higher bucket trades sharpness for stability.
    inference_noise_bucket: int = 0
    prediction_type: str = "v_prediction"  # or "epsilon", "sample" (x0; the change under ``residual``)
    # Residual parameterisation (off for the paper): the diffusion model generates the CHANGE from the
    # last context latent (``target - base``, base = the last context latent as the model sees it,
    # noise augmentation included, before context dropout), and the base is added back after
    # sampling (``gamengen.diffusion.residual_base``). A model whose output is zero then predicts the
    # last frame again: training starts at copy-last quality instead of noise.
    residual: bool = False
    # Under ``residual``: training takes the change from the CLEAN last context latent instead of the
    # noise-augmented one the UNet sees (the engine's base is then the context before its inference noise).
    # Off: the model learns to remove its base's corruption (docs/research_log.md).
    clean_residual_base: bool = False
    # A learned embedding of each action's slot in the context (oldest .. newest) added to its token.
    # Without it the UNet's cross-attention sees the N action tokens as an unordered set and cannot
    # tell the action that produced the target (the newest) from older ones. Off for the paper
    # (which does not describe one); on for tiny
    # (docs/research_log.md#what-the-tiny-preset-does-now-and-sd14-does-not-unless-asked).
    action_positions: bool = False
    # The newest action (the one that produced the target) also goes through the UNet's class
    # embedding, which is added to the timestep embedding and so reaches every ResNet block: the class
    # label becomes ``noise_bucket * num_actions + action`` (noise_buckets * num_actions labels). Off
    # for the paper (actions only through cross-attention); on for tiny
    # (docs/research_log.md#what-the-tiny-preset-does-now-and-sd14-does-not-unless-asked).
    action_class: bool = False
    dataset: dict[str, Any] = field(default_factory=dict)  # provenance: name, fingerprint, metadata
    # A student distilled by distill.py: its teacher, the method and its settings (empty for a trained model).
    distillation: dict[str, Any] = field(default_factory=dict)
    format_version: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if self.context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {self.context_length}")
        if not self.action_names:
            raise ValueError("action_names is empty: a world model needs the dataset's action list")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {self.prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
        if not 0 <= self.inference_noise_bucket < self.noise_buckets:
            raise ValueError(
                f"inference_noise_bucket {self.inference_noise_bucket} is not in 0..{self.noise_buckets - 1}"
            )

    @property
    def num_actions(self) -> int:
        return len(self.action_names)

    @property
    def num_class_embeds(self) -> int:
        """Class labels of the UNet: the noise buckets, times the actions under ``action_class``."""
        return self.noise_buckets * (self.num_actions if self.action_class else 1)

    @property
    def unet_in_channels(self) -> int:
        return self.model.latent_channels * (self.context_length + 1)

    def to_dict(self) -> dict[str, Any]:
        values = copy.deepcopy(asdict(self))
        values["model"] = self.model.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> WorldModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown world model config keys {unknown}")
        values = copy.deepcopy(values)
        values["model"] = ModelConfig.from_dict(values["model"])
        return cls(**values)


def get_world_model_config(
    preset: str, action_names: list[str], context_length: int | None = None, **overrides: Any
) -> WorldModelConfig:
    """The world-model config of a preset for a dataset's action list (fields overridable)."""
    model = get_config(preset)
    unet = copy.deepcopy(UNET_CONFIGS.get(preset, {}))
    return WorldModelConfig(
        model=model,
        context_length=context_length_of(preset, context_length),
        action_names=list(action_names),
        unet=unet,
        **overrides,
    )


# ----------------------------------------------------------------------------------------------
# World-model training defaults per preset: train_text_to_image.py fills each of these options (the keys
# are its option names) that the command line leaves unset. sd14 follows the paper's model and batch, at the speed
# measured on an H200 (docs/gpu.md#training-speed); tiny's choices were measured on a CPU
# (docs/research_log.md#what-the-tiny-preset-does-now-and-sd14-does-not-unless-asked).
WORLD_MODEL_TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {
    "sd14": {
        "pretrained_model_name_or_path": SD14_MODEL_ID,  # the UNet to widen (and, by default, the VAE)
        # The paper's 128 windows per step, in micro-batches of at most 64 per device (gradient accumulation makes
        # up the rest): on an H200 64 ran 307 samples/s, 128 344 in 59 GiB, the old default 8 28.
        "total_batch_size": 128,
        "train_batch_size": 64,
        # Fused AdamW: 21 ms per step over sd14's parameters, where transformers' Adafactor (the paper's optimizer,
        # --optimizer adafactor) took 115 ms and more than half of a batch-8 step.
        "optimizer": "adamw",
        "channels_last": True,
        "learning_rate": 2e-5,
        "guidance_scale": 1.5,
        "residual": False,
        "action_positions": False,
        "action_class": False,
        "num_threads": None,  # torch's default
    },
    "tiny": {
        "pretrained_model_name_or_path": None,  # a new UNet; the VAE comes from finetune_autoencoder.py
        "total_batch_size": None,  # --train_batch_size per device and step
        "train_batch_size": 32,
        "optimizer": "adamw",
        "channels_last": False,
        "learning_rate": 5e-4,
        "guidance_scale": 1.0,  # measured 0.2-0.4 dB better than the paper's 1.5
        "residual": True,
        "action_positions": True,
        "action_class": True,
        # On 2 busy cores torch's default threads gave 2.3-4.9 samples/s (spin-waiting), 1 thread 50.
        "num_threads": 1,
    },
}
WORLD_MODEL_TRAINING_DEFAULTS["tiny-s2d"] = dict(WORLD_MODEL_TRAINING_DEFAULTS["tiny"])
# small, a new model trained on a GPU for minutes: tiny's choices (not measured at this size), a batch of 128 on one
# device, a learning rate for a 97M-parameter UNet, channels-last weights.
WORLD_MODEL_TRAINING_DEFAULTS["small"] = {
    **WORLD_MODEL_TRAINING_DEFAULTS["tiny"],
    "train_batch_size": 128,
    "learning_rate": 3e-4,
    "channels_last": True,
    "num_threads": None,
}
