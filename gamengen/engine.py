"""The neural game engine (docs/engine.md): the one implementation of generation.

Training validation, ``run_inference.py``, ``run_autoregressive.py``, evaluation and live play all
generate frames through ``GameEngine``:

    engine = GameEngine.from_pretrained("/tmp/wm", dtype="fp32")
    engine.reset(frames, actions)   # frames f_{t-k} .. f_{t-1} (uint8, oldest first), actions a_{t-k} .. a_{t-2}
    frame = engine.step("FORWARD")  # a_{t-1}: the action pressed at the newest frame -> f_t (uint8 HxWx3)

The window semantics are training's: a short context is padded by ``gamengen.context.pad_context``, and a
generated frame's latent is pushed into the context without being re-encoded by the VAE. How a frame is
sampled (DDIM steps of ``gamengen.ddim``, classifier-free guidance on the context, the inference noise
bucket, residual checkpoints) is described in docs/engine.md, section "Sampling" and those after it.
``reset`` with a leading batch axis (``(B, k, ...)``) runs B rollouts side by side.

Around the engine: ``gamengen.actions`` (action ids and scripts), ``gamengen.context`` (recorded
episodes as context), ``gamengen.cli`` (the scripts' engine options), ``gamengen.media`` (gifs, videos).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gamengen.actions import EngineError, action_id, context_action_ids
from gamengen.carry_over import CARRY_MOTIONS, DetailCarryOver
from gamengen.checkpoint import WorldModelBundle, load_world_model
from gamengen.context import context_input, pad_context
from gamengen.ddim import TIMESTEP_SCHEDULES, ddim_schedule, ddim_update, guidance_conditioning, guided_prediction
from gamengen.devices import default_device, parse_dtype
from gamengen.diffusion import corrupt_context, residual_base
from gamengen.timing import FrameTiming, timing_summary
from gamengen.vae import decode_latents, encode_frames, frames_to_tensor, tensor_to_frames, unpad_frames


class GameEngine:
    """A world-model checkpoint played as a game: ``reset`` with a real context, then ``step(action)``.

    Args:
        bundle: what ``gamengen.checkpoint.load_world_model`` returns (model, vae, scheduler, config); the
            engine uses the model's device and dtype as they are (``from_pretrained`` sets them).
        guidance_scale: CFG scale on the context (default: the checkpoint's, 1.5 as the paper); 1.0
            turns guidance off (one UNet branch).
        num_inference_steps: DDIM steps per frame (default: the checkpoint's, 4 as the paper).
        timesteps: the sampler's timesteps: "trailing", "karras" or a comma-separated list (default: the
            checkpoint's ``sampler_timesteps``; ``gamengen.ddim.ddim_schedule``).
        eta: DDIM eta, 0 deterministic .. 1 ancestral (default: the checkpoint's ``sampler_eta``).
        noise_bucket: noise-augmentation bucket of the context at inference (default: the
            checkpoint's ``inference_noise_bucket``, 0 = clean; see the module docstring).
        seed: seed of the engine's random generator (initial noise, context noise); ``reset`` can reseed.
        compile: run the world model (UNet + action embedding) and the VAE decoder through ``torch.compile``.
        compile_mode: ``torch.compile`` mode (e.g. "reduce-overhead" for CUDA graphs on a GPU).
        pad_short_context: pad a context shorter than the model's as training does (True) or refuse it.
        sync_timing: on CUDA, synchronise before reading each stage's clock, so that the per-stage
            timings are real (costs a little overlap).
        encode_batch_size: most frames ``reset`` sends through the VAE encoder at once. A batch of B
            contexts of 64 frames at 320x256 is B*64 frames: unbounded, 16 contexts took ~80-100 GB of
            activations, more than a GPU has.
        carry_detail: an optional post-process, off by default (None or 0: the model's own frames, the paper's
            decoding): add back the detail the VAE loses from the newest real context frame, fading it per pixel
            where the generated frames change (``gamengen.carry_over``; docs/engine.md#detail-carry-over).
        carry_motion: with ``carry_detail``: "turns" (default) turns the carried detail with the view; "none"
            only fades it.
    """

    def __init__(
        self,
        bundle: WorldModelBundle,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        noise_bucket: int | None = None,
        seed: int | None = 0,
        compile: bool = False,
        timesteps: str | None = None,
        eta: float | None = None,
        compile_mode: str | None = None,
        compile_backend: str = "inductor",
        pad_short_context: bool = True,
        sync_timing: bool = True,
        encode_batch_size: int = 16,
        carry_detail: float | None = None,
        carry_motion: str = "turns",
    ) -> None:
        self.model = bundle.model
        self.vae = bundle.vae
        self.config = bundle.config
        self.scheduler = bundle.scheduler
        parameter = next(self.model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.guidance_scale = float(self.config.guidance_scale if guidance_scale is None else guidance_scale)
        self.noise_bucket = int(self.config.inference_noise_bucket if noise_bucket is None else noise_bucket)
        if not 0 <= self.noise_bucket < self.config.noise_buckets:
            raise EngineError(
                f"noise bucket {self.noise_bucket} is out of range: the model has buckets "
                f"0..{self.config.noise_buckets - 1} (0 = clean context)"
            )
        self.pad_short_context = pad_short_context
        if encode_batch_size < 1:
            raise EngineError(f"encode_batch_size must be at least 1, got {encode_batch_size}")
        self.encode_batch_size = int(encode_batch_size)
        if carry_detail is not None and carry_detail < 0:
            raise EngineError(f"carry_detail is a fading scale in 0-255 levels (> 0; 0 = off), got {carry_detail}")
        metadata = self.config.dataset.get("metadata") or {}
        self.carry_over = (
            DetailCarryOver(carry_detail, carry_motion, self.config.action_names, metadata) if carry_detail else None
        )
        if carry_motion not in CARRY_MOTIONS:
            raise EngineError(f"carry_motion is one of {', '.join(CARRY_MOTIONS)}, got {carry_motion!r}")
        self.carry_detail = float(carry_detail) if carry_detail else None
        self.carry_motion = carry_motion
        self.sync_timing = sync_timing and self.device.type == "cuda"
        self.num_inference_steps = int(
            self.config.num_inference_steps if num_inference_steps is None else num_inference_steps
        )
        self.timesteps = str(self.config.sampler_timesteps if timesteps is None else timesteps)
        self.eta = float(self.config.sampler_eta if eta is None else eta)
        if not 0.0 <= self.eta <= 1.0:
            raise EngineError(f"eta must be in [0, 1] (0 = deterministic DDIM, 1 = ancestral), got {self.eta}")
        self._prediction_type, self._schedule = ddim_schedule(
            self.scheduler, self.num_inference_steps, self.device, self.timesteps
        )
        explicit = self.timesteps.strip() not in TIMESTEP_SCHEDULES  # a list: its length is the step count
        if explicit and num_inference_steps is not None and len(self._schedule) != num_inference_steps:
            raise EngineError(
                f"the timesteps {self.timesteps!r} are {len(self._schedule)} steps but {num_inference_steps} were "
                "asked for: drop --num_inference_steps, or pass --timesteps trailing or karras with it"
            )
        self.num_inference_steps = len(self._schedule)
        self._denoiser = (
            torch.compile(self.model, mode=compile_mode, backend=compile_backend) if compile else self.model
        )
        self._compiled_decode = (
            torch.compile(self.vae.decode, mode=compile_mode, backend=compile_backend) if compile else None
        )
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0 if seed is None else int(seed))
        self.timings: list[FrameTiming] = []
        self._latents: torch.Tensor | None = None  # (B, N, C, h, w) float32, oldest first
        self._actions: torch.Tensor | None = None  # (B, N) int64; the last slot is the newest frame's (set by step)
        self._batched = False
        self._unet_calls = 0
        self.frame_index = 0

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "fp32",
        revision: str | None = None,
        **engine_options: Any,
    ) -> GameEngine:
        """Load a checkpoint folder or Hub id through the shared loader and build an engine on it."""
        device = torch.device(device or default_device())
        dtype = parse_dtype(dtype)
        if device.type == "cpu" and dtype == torch.float16:
            warnings.warn(
                "fp16 on a CPU has no fast kernels (measured ~60x slower than fp32 here): use fp32 or bf16 on a CPU",
                stacklevel=2,
            )
        bundle = load_world_model(name_or_path, device=device, dtype=dtype, revision=revision)
        return cls(bundle, **engine_options)

    # -- properties -----------------------------------------------------------------------------
    @property
    def action_names(self) -> list[str]:
        return list(self.config.action_names)

    @property
    def context_length(self) -> int:
        return self.config.context_length

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the frames ``step`` returns (the dataset's, without padding)."""
        return self.config.model.frame_width, self.config.model.frame_height

    @property
    def context_latents(self) -> torch.Tensor:
        """A copy of the context buffer: latents ``(N, C, h, w)`` (``(B, N, ...)`` batched), oldest first."""
        return self._squeeze(self._require_reset()[0].clone())

    @property
    def context_actions(self) -> torch.Tensor:
        """The action slots ``(N,)`` aligned with ``context_latents``; the last slot (the newest frame's
        action) holds a placeholder until ``step`` fills it."""
        return self._squeeze(self._require_reset()[1].clone())

    @property
    def last_timing(self) -> FrameTiming | None:
        return self.timings[-1] if self.timings else None

    def timing_summary(self, skip_first: int = 1) -> dict[str, float]:
        """Mean ms per ``step`` for each stage and frames/s (``gamengen.timing.timing_summary``)."""
        return timing_summary(self.timings, skip_first)

    # -- reset ----------------------------------------------------------------------------------
    def reset(
        self,
        frames: np.ndarray | torch.Tensor | None = None,
        actions: Sequence[int | str] | np.ndarray | torch.Tensor | None = None,
        *,
        latents: torch.Tensor | None = None,
        seed: int | None = None,
        pad_short_context: bool | None = None,
    ) -> None:
        """Fill the context: k >= 1 frames ``f_{t-k} .. f_{t-1}`` (oldest first) and the k-1 actions
        ``a_{t-k} .. a_{t-2}`` taken at all of them but the newest (whose action ``step`` takes).

        ``frames``: uint8 ``(k, H, W, 3)`` at the checkpoint's frame size (encoded once by the VAE),
        or ``latents``: ``(k, C, h, w)`` scaled latents as the latent cache stores them; with a leading
        batch axis (``(B, k, ...)``, actions ``(B, k-1)``) for B rollouts at once. Actions are ids or
        names. ``seed`` reseeds the generator (same seed + same inputs -> the same rollout).
        """
        context = context_input(frames, latents, self.frame_size, self.config.model.latent_shape)
        batched = context.ndim == 5
        if not batched:
            context = context[None]
        batch, count = context.shape[:2]
        action_ids = self._action_tensor(actions, batch, count, batched)
        pad = self.pad_short_context if pad_short_context is None else pad_short_context
        if count < self.context_length and not pad:
            raise EngineError(
                f"the context has {count} frames, the model's context is {self.context_length}: give at least "
                f"{self.context_length} frames, "
                "or allow padding (it repeats the first frame and uses action 0, NOOP, for the missing slots, as "
                "training does)"
            )
        # Frames are encoded once, here (the VAE encoder's only use); latents are taken as they are.
        context = self._encode(context) if frames is not None else context.to(self.device, torch.float32)
        # The newest frame's action slot is a placeholder (PAD) until step() fills it.
        with_pending = torch.cat([action_ids, torch.zeros(batch, 1, dtype=torch.int64)], dim=1)
        padded = [pad_context(context[b], with_pending[b], self.context_length) for b in range(batch)]
        self._latents = torch.stack([p[0] for p in padded]).to(self.device)
        self._actions = torch.stack([p[1] for p in padded]).to(self.device)
        self._batched = batched
        if self.carry_over is not None:
            self.carry_over.stop()
            if frames is not None:
                newest = frames if isinstance(frames, torch.Tensor) else torch.as_tensor(np.asarray(frames))
                newest = (newest if batched else newest[None])[:, -1].cpu().numpy()
                self.carry_over.start(newest, self.decode(self._latents[:, -1]), action_ids.tolist())
        if seed is not None:
            self.generator.manual_seed(int(seed))
        self.timings = []
        self.frame_index = 0

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames ``(B, k, H, W, 3)`` -> scaled latents ``(B, k, C, h, w)`` float32, in VAE batches
        of at most ``encode_batch_size`` frames."""
        batch, count = frames.shape[:2]
        chunks = []
        with torch.inference_mode():
            for chunk in frames.flatten(0, 1).split(self.encode_batch_size):
                pixels = frames_to_tensor(chunk).to(self.device, self.vae.dtype)
                chunks.append(encode_frames(self.vae, pixels, self.config.model).float())
        return torch.cat(chunks).unflatten(0, (batch, count))

    def _action_tensor(self, actions: Any, batch: int, count: int, batched: bool) -> torch.Tensor:
        if isinstance(actions, torch.Tensor):
            actions = actions.cpu().numpy()
        ids = context_action_ids(actions, self.config.action_names, batch, count, batched)
        return torch.tensor(ids, dtype=torch.int64).reshape(batch, count - 1)

    # -- step -----------------------------------------------------------------------------------
    def step(self, action: int | str | Sequence[int | str]) -> np.ndarray:
        """Press ``action`` at the newest frame; generate, remember and return the next frame:
        uint8 ``(H, W, 3)`` at the dataset's frame size (``(B, H, W, 3)`` for a batch)."""
        started = time.perf_counter()
        latent, unet_ms = self._generate(action)
        decode_started = time.perf_counter()
        frames = self.decode(latent)
        if self.carry_over is not None:
            frames = self.carry_over.apply(frames)
        finished = time.perf_counter()
        self.timings.append(
            FrameTiming(
                unet_ms,
                1000 * (finished - decode_started),
                1000 * (finished - started),
                self._unet_calls,
                latent.shape[0],
            )
        )
        return frames if self._batched else frames[0]

    def step_latent(self, action: int | str | Sequence[int | str]) -> torch.Tensor:
        """``step`` without decoding: the next frame's latent ``(C, h, w)`` (``(B, C, h, w)``), float32.
        It ends any detail carry-over (that needs every decoded frame) until the next ``reset``."""
        if self.carry_over is not None:
            self.carry_over.stop()
        started = time.perf_counter()
        latent, unet_ms = self._generate(action)
        self.timings.append(
            FrameTiming(unet_ms, 0.0, 1000 * (time.perf_counter() - started), self._unet_calls, latent.shape[0])
        )
        return self._squeeze(latent.clone())

    def rollout(self, actions: Sequence[int | str] | Sequence[Sequence[int | str]]) -> np.ndarray:
        """``step`` through a sequence of actions: frames ``(T, H, W, 3)`` (``(B, T, H, W, 3)`` for a
        batch, actions ``(T, B)``)."""
        frames = [self.step(action) for action in actions]
        return np.stack(frames, axis=1 if self._batched else 0)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled latents ``(B, C, h, w)`` -> uint8 frames ``(B, H, W, 3)`` without the padding."""
        latents = latents.to(self.device, self.vae.dtype)
        if self._compiled_decode is None:
            pixels = decode_latents(self.vae, latents, self.config.model)
        else:  # decode_latents, through the compiled decoder
            pixels = unpad_frames(
                self._compiled_decode(latents / self.vae.config.scaling_factor).sample, self.config.model
            )
        return tensor_to_frames(pixels)

    @torch.inference_mode()
    def predict(
        self,
        noisy_latents: torch.Tensor,
        timestep: torch.Tensor,
        context_latents: torch.Tensor,
        context_actions: torch.Tensor,
    ) -> torch.Tensor:
        """The guided v-prediction (float32) for noisy latents ``(B, C, h, w)``: with CFG, one UNet call
        on a batch of 2B, the real context first and the all-zero context (dropped as in training)
        second, same actions and noise bucket; ``v_uncond + scale * (v_cond - v_uncond)``."""
        return self._guided(noisy_latents, timestep, self._conditioning(context_latents, context_actions))

    def _conditioning(
        self, context_latents: torch.Tensor, context_actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The UNet's context inputs for a frame (the same at every DDIM step): see ``guidance_conditioning``."""
        guided = self.guidance_scale != 1.0
        return guidance_conditioning(
            context_latents, context_actions, self.noise_bucket, guided, self.device, self.dtype
        )

    def _guided(
        self, noisy_latents: torch.Tensor, timestep: torch.Tensor, conditioning: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        prediction = guided_prediction(self._denoiser, noisy_latents, timestep, conditioning, self.guidance_scale)
        self._unet_calls += 1
        return prediction

    @torch.inference_mode()
    def _generate(self, action: Any) -> tuple[torch.Tensor, float]:
        latents, actions = self._require_reset()
        batch = latents.shape[0]
        self._unet_calls = 0
        pressed = self._step_actions(action, batch)
        actions = actions.clone()
        actions[:, -1] = pressed
        if self.carry_over is not None:
            self.carry_over.press(pressed.tolist())
        started = time.perf_counter()
        context = latents
        if self.noise_bucket > 0:
            buckets = torch.full((batch,), self.noise_bucket, dtype=torch.int64, device=self.device)
            context = corrupt_context(context, buckets, self.config, generator=self.generator)
        shape = (batch, *self.config.model.latent_shape)
        sample = torch.randn(shape, generator=self.generator, device=self.device, dtype=torch.float32) * float(
            self.scheduler.init_noise_sigma
        )
        conditioning = self._conditioning(context, actions)
        for step in self._schedule:
            prediction = self._guided(sample, step.timestep_tensor, conditioning)
            sample = ddim_update(sample, prediction, step, self._prediction_type, self.eta, self.generator)
        if self.config.residual:  # the sample is the change from the last context latent the model saw
            base = latents if self.config.clean_residual_base else context  # before / after the context noise
            sample = sample + residual_base(base, self.config).float()
        if self.sync_timing:
            torch.cuda.synchronize(self.device)
        unet_ms = 1000 * (time.perf_counter() - started)
        # Slide the window: the generated latent becomes the newest frame, its action slot pending.
        self._latents = torch.cat([latents[:, 1:], sample[:, None]], dim=1)
        self._actions = torch.cat([actions[:, 1:], torch.zeros(batch, 1, dtype=torch.int64, device=self.device)], dim=1)
        self.frame_index += 1
        return sample, unet_ms

    def _step_actions(self, action: Any, batch: int) -> torch.Tensor:
        if self._batched:
            if isinstance(action, (str, int, np.integer)) or len(action) != batch:
                raise EngineError(f"a batch of {batch} rollouts takes {batch} actions per step, got {action!r}")
            ids = [
                action_id(a.item() if isinstance(a, (torch.Tensor, np.ndarray)) else a, self.config.action_names)
                for a in action
            ]
        else:
            if isinstance(action, torch.Tensor):
                action = action.item()
            ids = [action_id(action, self.config.action_names)]
        return torch.tensor(ids, dtype=torch.int64, device=self.device)

    # -- helpers --------------------------------------------------------------------------------
    def _require_reset(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._latents is None or self._actions is None:
            raise EngineError(
                "the engine has no context yet: call reset(frames, actions) (or reset(latents=..., actions=...)) first"
            )
        return self._latents, self._actions

    def _squeeze(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self._batched else tensor[0]

    def describe(self) -> dict[str, Any]:
        """The sampling settings, for logs and result files."""
        return {
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "num_inference_steps": self.num_inference_steps,
            "sampler_timesteps": self.timesteps,
            "eta": self.eta,
            "guidance_scale": self.guidance_scale,
            "noise_bucket": self.noise_bucket,
            **(self.carry_over.describe() if self.carry_over else {"carry_detail": None, "carry_motion": None}),
            "context_length": self.context_length,
            "compiled": self._denoiser is not self.model,
            "timesteps": [step.timestep for step in self._schedule],
        }
