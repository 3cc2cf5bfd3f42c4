"""The game engine (gamengen/engine.py) on a tiny random-init checkpoint: window semantics, CFG,
the sampler, no re-encoding, reproducibility, timings, and the errors a user can run into."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from gamengen.actions import action_id, parse_action_script
from gamengen.checkpoint import load_world_model, save_world_model
from gamengen.config import get_world_model_config
from gamengen.context import pad_context
from gamengen.engine import EngineError, GameEngine
from gamengen.model import ModelLoadError, build_world_model
from gamengen.vae import build_vae, encode_frames, frames_to_tensor

ACTIONS = ["NOOP", "FORWARD", "TURN_LEFT", "TURN_RIGHT", "ATTACK"]
N = 4  # the tiny preset's context length


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = get_world_model_config("tiny", ACTIONS)
    model = build_world_model(config)
    # Random init leaves the noise-bucket embedding and the last layers small; scale up the
    # class embedding so that the noise bucket visibly changes the prediction.
    with torch.no_grad():
        model.unet.class_embedding.weight.normal_(0, 1)
    return save_world_model(tmp_path_factory.mktemp("engine") / "wm", model, build_vae(config.model), config)


@pytest.fixture(scope="module")
def bundle(checkpoint):
    return load_world_model(checkpoint)


@pytest.fixture
def engine(bundle):
    return GameEngine(bundle, seed=0)


def random_frames(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 48, 64, 3), dtype=np.uint8)


class UNetSpy:
    """Records the inputs of every world-model forward call (a forward pre-hook)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[tuple[torch.Tensor, ...]] = []
        self.handle = model.register_forward_pre_hook(
            lambda _module, args: self.calls.append(tuple(a.clone() for a in args))
        )

    def __enter__(self) -> UNetSpy:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


# -- window semantics ----------------------------------------------------------------------------


def test_step_sees_the_context_frames_and_their_actions_with_the_pressed_one_last(engine, bundle):
    frames = random_frames(N)
    engine.reset(frames, ["FORWARD", "TURN_LEFT", 4])  # actions at f_{t-4}, f_{t-3}, f_{t-2}; a_{t-1} comes with step
    encoded = encode_frames(bundle.vae, frames_to_tensor(frames), bundle.config.model)
    torch.testing.assert_close(engine.context_latents, encoded)
    with UNetSpy(bundle.model) as spy:
        engine.step("TURN_RIGHT")
        first_call = spy.calls[0]
        generated = engine.context_latents[-1].clone()
        spy.calls.clear()
        engine.step("NOOP")
    noisy, _, context, actions, buckets = first_call
    assert context.shape == (2, N, 4, 12, 16) and noisy.shape == (2, 4, 12, 16)
    torch.testing.assert_close(context[0], encoded)
    assert actions[0].tolist() == [1, 2, 4, 3]  # a_{t-4} .. a_{t-1}: the pressed action is the newest token
    # After one step the window slid by one: f_{t-3} .. f_{t-1}, then the generated frame; its action slot got NOOP.
    _, _, context, actions, _ = spy.calls[0]
    torch.testing.assert_close(context[0], torch.cat([encoded[1:], generated[None]]))
    assert actions[0].tolist() == [2, 4, 3, 0]


def test_a_short_context_is_padded_exactly_as_training_pads_it(engine, bundle):
    frames = random_frames(2)
    engine.reset(frames, ["ATTACK"])
    encoded = encode_frames(bundle.vae, frames_to_tensor(frames), bundle.config.model)
    expected_latents, expected_actions, _ = pad_context(encoded, torch.tensor([4, 0]), N)
    torch.testing.assert_close(engine.context_latents, expected_latents)
    assert (
        engine.context_actions.tolist() == expected_actions.tolist() == [0, 0, 4, 0]
    )  # first frame repeated, NOOP padding
    # One frame (an episode's first) is enough: the engine starts like an episode start in training.
    engine.reset(frames[:1])
    torch.testing.assert_close(engine.context_latents, encoded[:1].expand(N, -1, -1, -1))


def test_a_short_context_is_refused_when_padding_is_off(bundle):
    engine = GameEngine(bundle, pad_short_context=False)
    with pytest.raises(
        EngineError, match="the context has 2 frames, the model's context is 4.*repeats the first frame.*NOOP"
    ):
        engine.reset(random_frames(2), [1])
    engine.reset(random_frames(N), [1, 1, 1])  # a full context is fine


def test_a_longer_context_keeps_its_newest_frames(engine, bundle):
    frames = random_frames(N + 3)
    engine.reset(frames, [1, 2, 3, 4, 1, 2])
    encoded = encode_frames(bundle.vae, frames_to_tensor(frames[-N:]), bundle.config.model)
    torch.testing.assert_close(engine.context_latents, encoded)
    assert engine.context_actions.tolist() == [4, 1, 2, 0]  # the actions of the kept frames, then the pending slot


# -- classifier-free guidance on the context -----------------------------------------------------


@pytest.mark.parametrize("noise_bucket", [0, 5])
def test_cfg_unconditional_branch_sees_all_zero_context_and_conditional_the_real_one(bundle, noise_bucket):
    engine = GameEngine(bundle, noise_bucket=noise_bucket, guidance_scale=1.5)
    engine.reset(random_frames(N), [1, 2, 3])
    real = engine.context_latents
    with UNetSpy(bundle.model) as spy:
        engine.step(1)
    assert len(spy.calls) == 4  # one batched UNet call per DDIM step, both branches in it
    for noisy, timesteps, context, actions, buckets in spy.calls:
        assert noisy.shape[0] == context.shape[0] == 2 and torch.equal(noisy[0], noisy[1])
        assert torch.count_nonzero(context[1]) == 0  # EVERY context frame dropped, as training's drop_context
        if noise_bucket == 0:
            torch.testing.assert_close(context[0], real)
        else:  # the conditional branch sees the real context with bucket-5 noise added
            difference = (context[0] - real).std().item()
            assert 0.2 < difference < 0.6  # sigma(5) = 5 * 0.7 / 9 = 0.39
        assert torch.equal(actions[0], actions[1]) and buckets.tolist() == [noise_bucket] * 2
        assert timesteps[0] == timesteps[1]
    assert [int(call[1][0]) for call in spy.calls] == [999, 749, 499, 249]  # trailing spacing: starts from pure noise


def test_batched_cfg_equals_two_separate_unet_calls(engine, bundle):
    engine.reset(random_frames(N), [1, 2, 3])
    generator = torch.Generator().manual_seed(1)
    noisy = torch.randn(1, 4, 12, 16, generator=generator)
    context, actions = engine.context_latents[None], torch.tensor([[1, 2, 3, 4]])
    timestep = torch.tensor([749])
    guided = engine.predict(noisy, timestep, context, actions)
    bucket = torch.tensor([0])
    with torch.no_grad():
        conditional = bundle.model(noisy, timestep, context, actions, bucket)
        unconditional = bundle.model(noisy, timestep, torch.zeros_like(context), actions, bucket)
    torch.testing.assert_close(guided, unconditional + 1.5 * (conditional - unconditional), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(conditional, unconditional)  # the context matters, so the test can fail


def test_guidance_scale_one_runs_only_the_conditional_branch(bundle):
    engine = GameEngine(bundle, guidance_scale=1.0)
    engine.reset(random_frames(N), [1, 2, 3])
    with UNetSpy(bundle.model) as spy:
        engine.step(1)
    assert [call[0].shape[0] for call in spy.calls] == [1, 1, 1, 1]
    assert engine.last_timing.unet_calls == 4


def test_step_equals_a_reference_sampler_built_from_diffusers_ddim(bundle):
    """The engine's precomputed DDIM updates give what DDIMScheduler.step gives, with CFG from two separate calls."""
    engine = GameEngine(bundle, seed=3, guidance_scale=2.0)
    engine.reset(random_frames(N), [1, 2, 3])
    context, actions = engine.context_latents[None], torch.tensor([[1, 2, 3, 1]])
    latent = engine.step_latent("FORWARD")

    scheduler = DDIMScheduler.from_config(bundle.scheduler.config)
    scheduler.set_timesteps(4)
    sample = torch.randn(1, 4, 12, 16, generator=torch.Generator().manual_seed(3))
    bucket = torch.tensor([0])
    with torch.no_grad():
        for t in scheduler.timesteps:
            conditional = bundle.model(sample, t[None], context, actions, bucket)
            unconditional = bundle.model(sample, t[None], torch.zeros_like(context), actions, bucket)
            sample = scheduler.step(unconditional + 2.0 * (conditional - unconditional), t, sample).prev_sample
    torch.testing.assert_close(latent, sample[0], atol=1e-4, rtol=1e-4)


def test_the_noise_bucket_is_the_class_label_and_changes_the_frame(bundle):
    frames = {}
    for bucket in (0, 9):
        engine = GameEngine(bundle, noise_bucket=bucket, seed=0)
        engine.reset(random_frames(N), [1, 2, 3])
        frames[bucket] = engine.step(1)
    assert not np.array_equal(frames[0], frames[9])
    with pytest.raises(EngineError, match="noise bucket 10 is out of range.*0..9"):
        GameEngine(bundle, noise_bucket=10)


# -- the VAE encoder runs only on real context frames --------------------------------------------


def test_generated_frames_are_never_passed_through_the_vae_encoder(bundle, monkeypatch):
    calls = []
    original = bundle.vae.encode
    monkeypatch.setattr(
        bundle.vae, "encode", lambda pixels, *a, **k: calls.append(pixels.shape[0]) or original(pixels, *a, **k)
    )
    engine = GameEngine(bundle)
    engine.reset(random_frames(N), [1, 2, 3])
    assert calls == [N]  # the context, encoded once in one batch
    engine.rollout([1, 2, 3, 4, 0, 1, 2, 3])
    assert calls == [N]
    engine.reset(latents=engine.context_latents, actions=[1, 2, 3])
    engine.rollout([1, 1])
    assert calls == [N]


# -- rollouts ------------------------------------------------------------------------------------


def test_rollouts_have_the_requested_length_and_are_reproducible_with_a_seed(engine):
    frames = random_frames(N)
    engine.reset(frames, [1, 2, 3], seed=7)
    first = engine.rollout(["FORWARD"] * 5 + ["TURN_LEFT"] * 2)
    assert first.shape == (7, 48, 64, 3) and first.dtype == np.uint8
    assert engine.frame_index == 7 and len(engine.timings) == 7
    engine.reset(frames, [1, 2, 3], seed=7)
    assert np.array_equal(engine.rollout(["FORWARD"] * 5 + ["TURN_LEFT"] * 2), first)
    engine.reset(frames, [1, 2, 3], seed=8)
    assert not np.array_equal(engine.rollout(["FORWARD"] * 5 + ["TURN_LEFT"] * 2), first)


def test_a_batch_of_rollouts_runs_side_by_side(engine):
    frames = np.stack([random_frames(N, seed=1), random_frames(N, seed=2)])
    engine.reset(frames, [[1, 2, 3], [4, 4, 4]])
    assert engine.context_latents.shape == (2, N, 4, 12, 16)
    out = engine.rollout([[1, 2], [3, 4], [0, 0]])
    assert out.shape == (2, 3, 48, 64, 3)
    assert engine.last_timing.batch_size == 2
    with pytest.raises(EngineError, match="a batch of 2 rollouts takes 2 actions"):
        engine.step(1)


def test_reset_sends_at_most_encode_batch_size_frames_through_the_vae_encoder_at_once(bundle):
    """B contexts of N frames were one encoder batch of B*N frames: at sd14 size more memory than a GPU has."""
    frames = np.stack([random_frames(N, seed=b) for b in range(3)])  # 3 x 4 = 12 frames
    actions = [[1, 2, 3]] * 3
    reference = GameEngine(bundle, seed=0, encode_batch_size=64)
    reference.reset(frames, actions)
    sizes = []
    handle = bundle.vae.encoder.register_forward_pre_hook(lambda _module, args: sizes.append(args[0].shape[0]))
    try:
        bounded = GameEngine(bundle, seed=0, encode_batch_size=5)
        bounded.reset(frames, actions)
    finally:
        handle.remove()
    assert sizes == [5, 5, 2]
    assert torch.allclose(bounded.context_latents, reference.context_latents, atol=1e-5)
    with pytest.raises(EngineError, match="encode_batch_size must be at least 1"):
        GameEngine(bundle, encode_batch_size=0)


def test_timings_break_a_frame_down_into_unet_and_decode(engine):
    engine.reset(random_frames(N), [1, 2, 3])
    engine.rollout([1, 1, 1])
    timing = engine.last_timing
    assert timing.unet_ms > 0 and timing.decode_ms > 0 and timing.total_ms >= timing.unet_ms + timing.decode_ms
    summary = engine.timing_summary()
    assert summary["frames"] == 2 and summary["fps"] > 0  # the first frame (warm-up) left out
    engine.step_latent(1)
    assert engine.last_timing.decode_ms == 0


def test_a_compiled_engine_generates_the_same_frames(checkpoint, bundle):
    # The "eager" backend exercises the torch.compile wiring (UNet and decoder) without minutes of C++ compilation.
    compiled = GameEngine.from_pretrained(checkpoint, device="cpu", compile=True, compile_backend="eager")
    assert compiled.describe()["compiled"]
    plain = GameEngine(bundle)
    for engine in (compiled, plain):
        engine.reset(random_frames(N), [1, 2, 3], seed=4)
    assert np.array_equal(compiled.rollout([1, 2]), plain.rollout([1, 2]))


def test_a_bf16_engine_generates_frames(checkpoint):
    engine = GameEngine.from_pretrained(checkpoint, device="cpu", dtype="bf16")
    assert engine.describe()["dtype"] == "bfloat16" and engine.model.unet.dtype == torch.bfloat16
    engine.reset(random_frames(N), [1, 2, 3])
    frames = engine.rollout([1, 2])
    assert frames.shape == (2, 48, 64, 3) and frames.std() > 0


# -- errors --------------------------------------------------------------------------------------


def test_unknown_action_names_and_ids_are_refused_with_the_action_list(engine):
    engine.reset(random_frames(N), [1, 2, 3])
    with pytest.raises(
        EngineError, match="unknown action 'JUMP': the model's actions are NOOP, FORWARD, TURN_LEFT, TURN_RIGHT, ATTACK"
    ):
        engine.step("JUMP")
    with pytest.raises(EngineError, match="action id 5 is out of range: the model has 5 actions"):
        engine.step(5)
    with pytest.raises(EngineError, match="unknown action 'JUMP'"):
        engine.reset(random_frames(2), ["JUMP"])
    assert action_id("forward", ACTIONS) == 1  # names are matched case-insensitively


def test_action_scripts_expand_repeats(engine):
    assert parse_action_script("FORWARD*3, TURN_LEFT,ATTACK*2", ACTIONS) == [1, 1, 1, 2, 4, 4]
    with pytest.raises(EngineError, match="unknown action 'STRAFE'"):
        parse_action_script("FORWARD*2,STRAFE", ACTIONS)
    with pytest.raises(EngineError, match="bad repeat count"):
        parse_action_script("FORWARD*x", ACTIONS)


def test_malformed_contexts_are_refused(engine):
    with pytest.raises(EngineError, match="no context yet: call reset"):
        GameEngine(engine_bundle(engine)).step(1)
    with pytest.raises(EngineError, match="context frames are 32x24, the checkpoint's frames are 64x48"):
        engine.reset(np.zeros((N, 24, 32, 3), np.uint8), [1, 2, 3])
    with pytest.raises(
        EngineError, match="4 context frames need 3 actions.*the newest frame's action is the one step\\(\\) takes"
    ):
        engine.reset(random_frames(N), [1, 2, 3, 4])
    with pytest.raises(EngineError, match="exactly one of them"):
        engine.reset(random_frames(N), [1, 2, 3], latents=torch.zeros(N, 4, 12, 16))
    with pytest.raises(EngineError, match=r"context latents must be .* C, h, w = \(4, 12, 16\)"):
        engine.reset(latents=torch.zeros(N, 4, 8, 8), actions=[1, 2, 3])
    # A refused reset leaves the engine as it was.
    engine.reset(random_frames(N), [1, 2, 3])
    before = engine.context_latents
    with pytest.raises(EngineError):
        engine.reset(np.stack([random_frames(N)] * 2), [1, 2, 3])
    torch.testing.assert_close(engine.context_latents, before)
    assert engine.step(1).shape == (48, 64, 3)


def engine_bundle(engine: GameEngine):
    from gamengen.checkpoint import WorldModelBundle

    return WorldModelBundle(engine.model, engine.vae, engine.scheduler, engine.config)


@pytest.mark.parametrize("part", ["action_embedding.safetensors", "vae/config.json", "scheduler/scheduler_config.json"])
def test_a_checkpoint_with_a_missing_part_is_refused(checkpoint, tmp_path, part):
    import shutil

    broken = tmp_path / "wm"
    shutil.copytree(checkpoint, broken)
    (broken / part).unlink()
    with pytest.raises(ModelLoadError, match=f"not a complete world-model checkpoint: missing {part}"):
        GameEngine.from_pretrained(broken, device="cpu")


# -- residual parameterisation (docs/research_log.md#residual-parameterisation-precisely)
# -------------------------------------------


def residual_bundle(bundle, residual: bool = True):
    """The same weights under a config with ``residual`` set."""
    from dataclasses import replace

    from gamengen.checkpoint import WorldModelBundle

    return WorldModelBundle(
        model=bundle.model, vae=bundle.vae, scheduler=bundle.scheduler, config=replace(bundle.config, residual=residual)
    )


@pytest.mark.parametrize("noise_bucket", [0, 5])
def test_a_residual_engine_adds_the_last_context_latent_the_model_saw_to_the_sample(bundle, noise_bucket):
    """Same weights, seed and context: the residual engine's frame is the plain engine's sample plus the
    last context latent, noised exactly as the UNet saw it (so both CFG branches share one base)."""
    latents = torch.randn(N, 4, 12, 16, generator=torch.Generator().manual_seed(5))
    plain = GameEngine(residual_bundle(bundle, False), seed=7, noise_bucket=noise_bucket)
    residual = GameEngine(residual_bundle(bundle, True), seed=7, noise_bucket=noise_bucket)
    plain.reset(latents=latents, actions=[1, 2, 3])
    residual.reset(latents=latents, actions=[1, 2, 3])
    with UNetSpy(bundle.model) as spy:
        got = residual.step_latent("FORWARD")
    seen_last = spy.calls[0][2][0, -1]  # context of the conditional branch, newest frame
    if noise_bucket == 0:
        torch.testing.assert_close(seen_last, latents[-1])
    torch.testing.assert_close(got, plain.step_latent("FORWARD") + seen_last, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(residual.context_latents[-1], got)  # the buffer holds the frame, not the change


def test_a_residual_model_that_predicts_no_change_repeats_the_last_frame(bundle):
    """A residual model whose prediction is a zero change reproduces the last context latent (up to the
    DDIM sampler's final noise level, alpha_cumprod[0] = 0.99915) frame after frame."""
    engine = GameEngine(residual_bundle(bundle, True), seed=0)
    alphas = bundle.scheduler.alphas_cumprod

    def no_change(noisy, timesteps, *_):  # the v of x0 = 0: v = sqrt(a) * eps, eps = x_t / sqrt(1 - a)
        alpha = alphas[timesteps].view(-1, 1, 1, 1)
        return alpha.sqrt() * noisy / (1 - alpha).sqrt()

    engine._denoiser = no_change
    latents = torch.randn(N, 4, 12, 16, generator=torch.Generator().manual_seed(1))
    engine.reset(latents=latents, actions=[0, 0, 0])
    for _ in range(3):
        got = engine.step_latent("NOOP")
        assert (got - latents[-1]).abs().mean() < 0.05
    plain = GameEngine(residual_bundle(bundle, False), seed=0)
    plain._denoiser = no_change
    plain.reset(latents=latents, actions=[0, 0, 0])
    assert (plain.step_latent("NOOP") - latents[-1]).abs().mean() > 0.5  # without the residual: a blank frame


# -- the sampler's options: timesteps, eta, prediction types ---------------------------------------


def test_ancestral_steps_equal_diffusers_ddim_with_the_same_noise(bundle):
    """eta > 0: each update is DDIMScheduler.step(eta=...) given the same fresh noise, which the engine draws
    from its seeded generator after the initial noise; and eta changes the frame."""
    engine = GameEngine(bundle, seed=3, eta=0.7, guidance_scale=1.0)
    engine.reset(random_frames(N), [1, 2, 3])
    context, actions = engine.context_latents[None], torch.tensor([[1, 2, 3, 1]])
    latent = engine.step_latent("FORWARD")

    scheduler = DDIMScheduler.from_config(bundle.scheduler.config)
    scheduler.set_timesteps(4)
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(1, 4, 12, 16, generator=generator)
    with torch.no_grad():
        for t in scheduler.timesteps:
            prediction = bundle.model(sample, t[None], context, actions, torch.tensor([0]))
            fresh = torch.randn(1, 4, 12, 16, generator=generator)
            sample = scheduler.step(prediction, t, sample, eta=0.7, variance_noise=fresh).prev_sample
    torch.testing.assert_close(latent, sample[0], atol=1e-4, rtol=1e-4)

    deterministic = GameEngine(bundle, seed=3, guidance_scale=1.0)
    deterministic.reset(random_frames(N), [1, 2, 3])
    assert (deterministic.step_latent("FORWARD") - latent).abs().mean() > 1e-3


@pytest.mark.parametrize(
    ("timesteps", "called"), [("karras", [999, 786, 427, 59]), ("999,500,150,30", [999, 500, 150, 30]), ("800", [800])]
)
def test_the_sampler_calls_the_model_at_the_chosen_timesteps(bundle, timesteps, called):
    engine = GameEngine(bundle, seed=0, timesteps=timesteps)
    engine.reset(random_frames(N), [1, 2, 3])
    with UNetSpy(bundle.model) as spy:
        engine.step_latent("FORWARD")
    assert [int(call[1][0]) for call in spy.calls] == called
    assert engine.num_inference_steps == len(called) and engine.describe()["timesteps"] == called


def test_bad_sampler_options_are_refused_with_an_example(bundle):
    with pytest.raises(EngineError, match="strictly decreasing.*999,500,150,30"):
        GameEngine(bundle, timesteps="30,150,500")
    with pytest.raises(EngineError, match="strictly decreasing integers in 0..999"):
        GameEngine(bundle, timesteps="1200,100")
    with pytest.raises(EngineError, match="neither a schedule \\(trailing, karras\\)"):
        GameEngine(bundle, timesteps="fast")
    with pytest.raises(EngineError, match="eta must be in \\[0, 1\\]"):
        GameEngine(bundle, eta=2.0)
    with pytest.raises(EngineError, match="are 3 steps but 4 were asked for: drop --num_inference_steps"):
        GameEngine(bundle, timesteps="999,500,100", num_inference_steps=4)
    assert GameEngine(bundle, timesteps="999,500,100", num_inference_steps=3).num_inference_steps == 3


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon"])
def test_a_residual_model_of_each_prediction_type_that_predicts_no_change_repeats_the_last_frame(
    bundle, prediction_type
):
    """The engine reads the model output as the checkpoint's prediction type: x0 (here the change) for
    "sample", the noise for "epsilon"; a zero change repeats the last frame under either."""
    scheduler = DDIMScheduler.from_config(bundle.scheduler.config, prediction_type=prediction_type)
    from dataclasses import replace

    config = replace(bundle.config, residual=True, prediction_type=prediction_type)
    engine = GameEngine(type(bundle)(model=bundle.model, vae=bundle.vae, scheduler=scheduler, config=config), seed=0)
    alphas = bundle.scheduler.alphas_cumprod

    def no_change(noisy, timesteps, *_):  # x0 = 0: the sample itself is all noise, eps = x_t / sqrt(1 - a)
        if prediction_type == "sample":
            return torch.zeros_like(noisy)
        return noisy / (1 - alphas[timesteps].view(-1, 1, 1, 1)).sqrt()

    engine._denoiser = no_change
    latents = torch.randn(N, 4, 12, 16, generator=torch.Generator().manual_seed(1))
    engine.reset(latents=latents, actions=[0, 0, 0])
    for _ in range(2):
        assert (engine.step_latent("NOOP") - latents[-1]).abs().mean() < 0.05


# -- detail carry-over (docs/engine.md#detail-carry-over) -------------------------------------------


def no_change_engine(bundle, **options) -> GameEngine:
    """A residual engine whose model predicts a zero change (its latent repeats the last context latent)."""
    engine = GameEngine(residual_bundle(bundle, True), seed=0, **options)
    alphas = bundle.scheduler.alphas_cumprod

    def no_change(noisy, timesteps, *_):
        alpha = alphas[timesteps].view(-1, 1, 1, 1)
        return alpha.sqrt() * noisy / (1 - alpha).sqrt()

    engine._denoiser = no_change
    return engine


def test_carried_detail_gives_back_the_real_frame_where_nothing_changes(bundle):
    """A model that predicts no change: without the carry-over its frames are the VAE's reconstruction of the last
    real frame (what the VAE keeps), with it they are the real frame, step after step (up to what the sampler's
    last noise level changes in the decoded frame: 8-13 of 255 levels with this random VAE)."""
    frames = random_frames(N, seed=3)
    plain, carried = no_change_engine(bundle), no_change_engine(bundle, carry_detail=float("inf"))
    plain.reset(frames, [0, 0, 0])
    carried.reset(frames, [0, 0, 0])
    assert carried.describe()["carry_detail"] == float("inf") and plain.describe()["carry_detail"] is None
    for _ in range(3):
        blurred, sharp = plain.step("NOOP").astype(int), carried.step("NOOP").astype(int)
        assert np.abs(blurred - frames[-1]).mean() > 50  # a random VAE keeps little of a random frame
        assert np.abs(sharp - frames[-1]).mean() < 20


def test_carried_detail_fades_where_the_generated_frame_changes(bundle):
    """A real model changes every pixel of a random frame by far more than a fading scale of 1e-6 levels: the
    detail is gone after one step, and the frames are the plain engine's. A context given as latents has no
    real frame to take detail from; step_latent ends the carry-over."""
    frames = random_frames(N, seed=4)
    plain, faded = GameEngine(bundle, seed=0), GameEngine(bundle, seed=0, carry_detail=1e-6)
    plain.reset(frames, [1, 2, 3])
    faded.reset(frames, [1, 2, 3])
    np.testing.assert_array_equal(faded.step("FORWARD"), plain.step("FORWARD"))

    latents = torch.randn(N, 4, 12, 16, generator=torch.Generator().manual_seed(2))
    from_latents, kept = no_change_engine(bundle, carry_detail=float("inf")), no_change_engine(bundle)
    from_latents.reset(latents=latents, actions=[0, 0, 0])
    kept.reset(latents=latents, actions=[0, 0, 0])
    np.testing.assert_array_equal(from_latents.step("NOOP"), kept.step("NOOP"))

    ended = no_change_engine(bundle, carry_detail=8)
    ended.reset(frames, [0, 0, 0])
    ended.step_latent("NOOP")
    assert np.abs(ended.step("NOOP").astype(int) - frames[-1]).mean() > 20


@pytest.mark.parametrize("value", [-1.0, float("nan")])
def test_a_bad_fading_scale_is_refused(bundle, value):
    with pytest.raises(EngineError, match="carry_detail"):
        GameEngine(bundle, carry_detail=value)


def turning_bundle(bundle, metadata):
    """The residual bundle under a config whose dataset metadata says how its actions turn (or not)."""
    from dataclasses import replace

    from gamengen.checkpoint import WorldModelBundle

    config = replace(residual_bundle(bundle).config, dataset={"metadata": metadata})
    return WorldModelBundle(model=bundle.model, vae=bundle.vae, scheduler=bundle.scheduler, config=config)


TURNING = {"frame_skip": 4, "action_buttons": [[], ["MOVE_FORWARD"], ["TURN_LEFT"], ["TURN_RIGHT"], ["ATTACK"]]}


@pytest.mark.parametrize(
    ("context_actions", "action", "degrees"),
    [([0, 0, 0], "TURN_LEFT", 7.03125), ([0, 0, 3], "TURN_LEFT", 12.3046875), ([2, 3, 2], "TURN_RIGHT", -14.0625)],
)
def test_carried_detail_turns_with_the_view(bundle, context_actions, action, degrees):
    """With --carry_motion turns (the default) a turning step moves the carried detail as DOOM moves the view: by
    the game's turn for that step (faster after the first steps of a turn in a row, the context's included); the
    status bar's detail stays, and the columns the turn brings into view have none. 'none' leaves it in place."""
    from gamengen.view_motion import turn_view

    frames = np.random.default_rng(5).integers(64, 192, (N, 48, 64, 3), dtype=np.uint8)
    outputs = {}
    for motion in ("turns", "none", "plain"):
        options = {"carry_detail": float("inf"), "carry_motion": motion} if motion != "plain" else {}
        engine = no_change_engine(turning_bundle(bundle, TURNING), **options)
        engine.reset(frames, context_actions)
        outputs[motion] = [engine.step(action).astype(np.float32), engine.step("NOOP").astype(np.float32)]
        if motion == "turns":
            assert engine.describe()["carry_motion"] == "turns"
    for turned, in_place, plain in zip(outputs["turns"], outputs["none"], outputs["plain"], strict=True):
        detail = in_place - plain  # the detail where it was (the same generated frames under it)
        expected = turn_view(detail, degrees, np.zeros_like(detail))
        assert np.abs(detail).mean() > 30
        assert np.abs((turned - plain) - expected).mean() < 3
        assert np.abs((turned - plain) - detail)[:40].mean() > 30
        np.testing.assert_array_equal(turned[40:], in_place[40:])  # the status bar does not turn


def test_carried_detail_stays_where_the_checkpoint_cannot_say_how_far_a_step_turns(bundle):
    """A checkpoint without the dataset's frame skip (a converted seed checkpoint): the detail only fades, and
    describe() says so."""
    frames = random_frames(N, seed=6)
    unknown = no_change_engine(turning_bundle(bundle, {}), carry_detail=float("inf"))
    in_place = no_change_engine(turning_bundle(bundle, TURNING), carry_detail=float("inf"), carry_motion="none")
    for engine in (unknown, in_place):
        engine.reset(frames, [0, 0, 0])
    np.testing.assert_array_equal(unknown.step("TURN_LEFT"), in_place.step("TURN_LEFT"))
    assert unknown.describe()["carry_motion"] == "none" and in_place.describe()["carry_motion"] == "none"
    with pytest.raises(EngineError, match="carry_motion"):
        GameEngine(bundle, carry_detail=8, carry_motion="flow")


def test_the_engine_scripts_use_cuda_graphs_on_a_gpu_unless_told_otherwise():
    """On a GPU the fast engine is the default (CUDA graphs: 40 frames/s against 8 eager on an H200); --eager opts
    out, --compile / --compile_mode choose, and a CPU compiles nothing unless asked."""
    import argparse

    from gamengen.cli import add_engine_arguments, engine_compile_mode

    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)

    def mode(*argv: str) -> str | None:
        return engine_compile_mode(parser.parse_args(["--model_folder", "m", *argv]))

    assert mode("--device", "cuda") == mode("--device", "cuda:1") == "reduce-overhead"
    assert mode("--device", "cuda", "--eager") is None
    assert mode("--device", "cuda", "--compile") == "default"
    assert mode("--device", "cuda", "--compile_mode", "max-autotune") == "max-autotune"
    assert mode("--device", "cpu") is None and mode("--device", "cpu", "--compile") == "default"
