"""CUDA checks: reduced precision, a bf16 training step and torch.compile on the GPU (``pytest -m cuda``).

Skipped without a CUDA device; ``benchmarks/device_check.sh`` runs them on a GPU machine. They use the
tiny preset with random weights (nothing to download) and need neither vizdoom nor a dataset.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from gamengen.checkpoint import WorldModelBundle
from gamengen.config import get_world_model_config
from gamengen.engine import GameEngine
from gamengen.model import build_world_model, make_scheduler
from gamengen.vae import build_vae

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)"),
]

ACTIONS = ["NOOP", "FORWARD", "TURN_LEFT", "TURN_RIGHT"]
PRESSED = ["FORWARD", "TURN_LEFT", "NOOP", "TURN_RIGHT"]
# Mean absolute difference, in 0..255 levels, allowed between a frame and its fp32 eager counterpart. Measured
# on the CPU with this model: bf16 0.8, fp16 0.1; another sampling seed changes frames by about 40.
PRECISION_TOLERANCE = 3.0
COMPILE_TOLERANCE = 1.0


@pytest.fixture(scope="module")
def tiny_models() -> tuple[torch.nn.Module, torch.nn.Module, object]:
    torch.manual_seed(0)
    config = get_world_model_config("tiny", ACTIONS, guidance_scale=1.5)  # CFG on: both branches run
    return build_world_model(config).eval(), build_vae(config.model).eval(), config


def bundle_in(tiny_models, dtype: torch.dtype) -> WorldModelBundle:
    model, vae, config = tiny_models
    model = copy.deepcopy(model).to("cuda", dtype)
    vae = copy.deepcopy(vae).to("cuda", dtype)
    return WorldModelBundle(model, vae, make_scheduler(config), config)


def rollout(bundle: WorldModelBundle, seed: int = 0, **engine_options) -> np.ndarray:
    """Frames ``(4, H, W, 3)`` from a fixed random context, pressing PRESSED."""
    engine = GameEngine(bundle, seed=seed, **engine_options)
    width, height = engine.frame_size
    context = np.random.default_rng(0).integers(0, 256, (engine.context_length, height, width, 3), dtype=np.uint8)
    engine.reset(context, [1] * (engine.context_length - 1))
    return engine.rollout(PRESSED)


def mean_abs_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per frame, in 0..255 levels."""
    return np.abs(a.astype(np.float64) - b.astype(np.float64)).reshape(len(a), -1).mean(axis=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_reduced_precision_frames_are_close_to_fp32_ones(tiny_models, dtype):
    reference = rollout(bundle_in(tiny_models, torch.float32))
    frames = rollout(bundle_in(tiny_models, dtype))
    assert frames.shape == reference.shape and frames.dtype == np.uint8
    difference = mean_abs_difference(frames, reference)
    assert difference.max() <= PRECISION_TOLERANCE, f"{dtype} frames differ from fp32 by {difference} levels"
    # The tolerance means something: another sampling seed moves frames far more.
    other_seed = mean_abs_difference(rollout(bundle_in(tiny_models, torch.float32), seed=1), reference)
    assert other_seed.min() > 4 * PRECISION_TOLERANCE, f"another seed changed frames by only {other_seed} levels"


@pytest.mark.parametrize("optimizer_name", ["adamw", "adafactor"])  # sd14's default (fused on a GPU), the paper's
def test_bf16_training_step_gives_a_finite_loss_and_moves_the_weights(tiny_models, optimizer_name):
    from gamengen.diffusion import diffusion_loss
    from gamengen.optim import make_optimizer
    from gamengen.throughput import use_channels_last

    model, _, config = tiny_models
    model = copy.deepcopy(model).to("cuda").train()  # fp32 weights, bf16 autocast: --mixed_precision bf16
    use_channels_last(model)  # as the sd14 trainer does
    optimizer = make_optimizer(optimizer_name, model.parameters(), 1e-3, 0.0)
    assert optimizer_name != "adamw" or optimizer.defaults["fused"], "AdamW over CUDA parameters must be fused"
    generator = torch.Generator(device="cuda").manual_seed(0)
    latent, context = config.model.latent_shape, config.context_length
    batch = {
        "target": torch.randn((4, *latent), device="cuda", generator=generator),
        "context": torch.randn((4, context, *latent), device="cuda", generator=generator),
        "actions": torch.randint(0, len(ACTIONS), (4, context), device="cuda", generator=generator),
    }
    before = [parameter.detach().clone() for parameter in model.parameters()]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = diffusion_loss(model, batch, config, make_scheduler(config), generator)
    loss.backward()
    gradients = [parameter.grad for parameter in model.parameters() if parameter.grad is not None]
    assert torch.isfinite(loss), f"the bf16 training loss is {loss.item()}"
    assert gradients and all(torch.isfinite(gradient).all() for gradient in gradients), "a gradient is not finite"
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    after = list(model.parameters())
    assert all(torch.isfinite(parameter).all() for parameter in after), "the optimizer step made a weight non-finite"
    moved = sum(not torch.equal(old, new) for old, new in zip(before, after, strict=True))
    assert moved > len(before) // 2, f"only {moved} of {len(before)} weight tensors changed"


def test_compiled_engine_gives_the_eager_frames(tiny_models):
    bundle = bundle_in(tiny_models, torch.float32)
    eager = rollout(bundle)
    compiled = rollout(bundle, compile=True)
    difference = mean_abs_difference(compiled, eager)
    assert difference.max() <= COMPILE_TOLERANCE, f"torch.compile frames differ from eager ones by {difference} levels"
