"""The world model: widened UNet, action tokens, noise augmentation, context dropout, checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import UNet2DConditionModel

from gamengen.checkpoint import load_world_model, save_world_model
from gamengen.config import TINY_UNET_CONFIG, get_world_model_config
from gamengen.diffusion import corrupt_context, diffusion_loss, drop_context, noise_level, residual_base
from gamengen.model import ModelLoadError, build_world_model, load_pretrained_unet, make_scheduler
from gamengen.optim import make_optimizer
from gamengen.vae import build_vae

ACTIONS = ["NOOP", "FORWARD", "TURN_LEFT", "ATTACK"]


def window_batch(config, size=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    channels, height, width = config.model.latent_shape
    return {
        "noisy": torch.randn(size, channels, height, width, generator=generator),
        "timesteps": torch.randint(0, 1000, (size,), generator=generator),
        "context": torch.randn(size, config.context_length, channels, height, width, generator=generator),
        "actions": torch.randint(0, len(ACTIONS), (size, config.context_length), generator=generator),
        "buckets": torch.randint(0, config.noise_buckets, (size,), generator=generator),
    }


@pytest.fixture
def config():
    return get_world_model_config("tiny", ACTIONS)


def test_unet_input_is_noisy_latent_then_context_oldest_first(config):
    torch.manual_seed(0)
    model = build_world_model(config).eval()
    assert model.unet.config.in_channels == 4 * (config.context_length + 1)
    seen = {}
    model.unet.conv_in.register_forward_hook(lambda module, inputs, output: seen.update(x=inputs[0]))
    batch = window_batch(config)
    with torch.no_grad():
        out = model(batch["noisy"], batch["timesteps"], batch["context"], batch["actions"], batch["buckets"])
    assert out.shape == batch["noisy"].shape
    assert torch.equal(seen["x"][:, :4], batch["noisy"])
    for k in range(config.context_length):
        assert torch.equal(seen["x"][:, 4 * (k + 1) : 4 * (k + 2)], batch["context"][:, k])


def test_actions_and_noise_bucket_change_the_prediction(config):
    torch.manual_seed(0)
    model = build_world_model(config).eval()
    torch.nn.init.normal_(model.unet.class_embedding.weight)
    batch = window_batch(config)
    args = [batch["noisy"], batch["timesteps"], batch["context"]]
    with torch.no_grad():
        base = model(*args, batch["actions"], batch["buckets"])
        other_actions = model(*args, (batch["actions"] + 1) % len(ACTIONS), batch["buckets"])
        other_bucket = model(*args, batch["actions"], (batch["buckets"] + 1) % config.noise_buckets)
    assert (base - other_actions).abs().max() > 1e-4
    assert (base - other_bucket).abs().max() > 1e-4


def test_widened_pretrained_unet_reproduces_the_pretrained_output(config, tmp_path):
    """The sd14 path on a tiny 'pretrained' UNet saved with save_pretrained: context channels start at
    zero and the bucket embedding at zero, so the widened UNet computes exactly what the original did."""
    torch.manual_seed(1)
    pretrained = UNet2DConditionModel(**{**TINY_UNET_CONFIG, "in_channels": 4})
    pretrained.save_pretrained(tmp_path / "sd" / "unet")
    loaded = load_pretrained_unet(tmp_path / "sd")  # the same loader a Hub id goes through
    model = build_world_model(config, pretrained_unet=loaded).eval()
    batch = window_batch(config)
    with torch.no_grad():
        tokens = model.action_embedding(batch["actions"])
        expected = pretrained(batch["noisy"], batch["timesteps"], encoder_hidden_states=tokens).sample
        got = model(batch["noisy"], batch["timesteps"], batch["context"], batch["actions"], batch["buckets"])
    assert torch.allclose(got, expected, atol=1e-5)


def test_context_dropout_zeroes_every_context_frame():
    context = torch.randn(4, 3, 4, 6, 8) + 5
    drop = torch.tensor([True, False, True, False])
    dropped = drop_context(context, drop)
    assert not dropped[drop].any()  # all frames of the dropped samples
    assert torch.equal(dropped[~drop], context[~drop])


def test_noise_augmentation_levels(config):
    buckets = torch.arange(config.noise_buckets)
    levels = noise_level(buckets, config)
    assert levels[0] == 0 and torch.isclose(levels[-1], torch.tensor(0.7))
    clean = torch.zeros(config.noise_buckets, 2, 4, 12, 16)
    corrupted = corrupt_context(clean, buckets, config, torch.Generator().manual_seed(0))
    assert torch.equal(corrupted[0], clean[0])  # bucket 0: untouched
    stds = corrupted.flatten(1).std(dim=1)
    assert torch.allclose(stds[1:], levels[1:], rtol=0.15)


def test_training_loss_applies_dropout_to_the_whole_context(config):
    torch.manual_seed(0)
    model = build_world_model(config)
    seen = []
    model.unet.conv_in.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
    batch = window_batch(config, size=64)
    batch = {"target": batch["noisy"], "context": batch["context"], "actions": batch["actions"]}
    config.context_dropout = 0.5
    loss = diffusion_loss(model, batch, config, make_scheduler(config), torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    context_part = seen[0][:, 4:].flatten(1)
    zeroed = (context_part == 0).all(dim=1)
    assert 10 < zeroed.sum() < 54  # about half the samples lost ALL their context frames
    assert ((context_part != 0).all(dim=1) | zeroed).all()  # never only some frames


def test_checkpoint_round_trip_through_the_shared_loader(config, tmp_path):
    torch.manual_seed(0)
    model = build_world_model(config).eval()
    vae = build_vae(config.model)
    config.dataset = {"name": "unit-test"}
    save_world_model(tmp_path / "wm", model, vae, config)
    assert {p.name for p in (tmp_path / "wm").iterdir()} >= {
        "unet",
        "vae",
        "scheduler",
        "action_embedding.safetensors",
        "gamengen_config.json",
        "README.md",
    }
    bundle = load_world_model(tmp_path / "wm")
    assert bundle.config.action_names == ACTIONS and bundle.config.dataset == {"name": "unit-test"}
    assert bundle.scheduler.config.prediction_type == "v_prediction"
    batch = window_batch(config)
    with torch.no_grad():
        expected = model(batch["noisy"], batch["timesteps"], batch["context"], batch["actions"], batch["buckets"])
        got = bundle.model(batch["noisy"], batch["timesteps"], batch["context"], batch["actions"], batch["buckets"])
    assert torch.allclose(expected, got, atol=1e-6)


def test_loader_refuses_broken_checkpoints(config, tmp_path):
    torch.manual_seed(0)
    save_world_model(tmp_path / "wm", build_world_model(config), build_vae(config.model), config)
    with pytest.raises(ModelLoadError, match="trained with 4 actions, the data has 7"):
        load_world_model(tmp_path / "wm", num_actions=7)

    shutil.copytree(tmp_path / "wm", tmp_path / "other_context")
    saved = json.loads((tmp_path / "other_context" / "gamengen_config.json").read_text())
    saved["context_length"] = 8
    (tmp_path / "other_context" / "gamengen_config.json").write_text(json.dumps(saved))
    with pytest.raises(ModelLoadError, match="input channels"):
        load_world_model(tmp_path / "other_context")

    shutil.rmtree(tmp_path / "wm" / "vae")
    with pytest.raises(ModelLoadError, match="missing vae/config.json"):
        load_world_model(tmp_path / "wm")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_world_model(tmp_path / "nowhere")


def test_a_misspelled_checkpoint_or_vae_folder_is_named_as_neither_a_folder_nor_a_hub_id(config, tmp_path, monkeypatch):
    """runs/wrld looks like a Hub id (USER/NAME): the error said only that the Hub fetch failed, never that no such
    folder exists, nor which folder was meant. Checkpoints and VAEs now say so, as datasets do."""
    from gamengen.vae import load_vae

    save_world_model(tmp_path / "runs" / "world", build_world_model(config), build_vae(config.model), config)
    monkeypatch.chdir(tmp_path)
    for load, what in ((load_world_model, "checkpoint"), (load_vae, "model (vae/)")):
        with pytest.raises(ModelLoadError) as refused:
            load("runs/wrld")  # HF_HUB_OFFLINE=1: the Hub half fails without touching the network
        message = str(refused.value)
        assert message.startswith(f"no folder runs/wrld (in {tmp_path})") and "did you mean runs/world?" in message
        assert f"could not fetch the {what} 'runs/wrld' from the Hub" in message
        with pytest.raises(ModelLoadError, match=r"folder ./runs/wrld does not exist \(did you mean runs/world\?\)"):
            load("./runs/wrld")


def test_residual_is_saved_with_the_checkpoint_and_old_configs_load_without_it(config, tmp_path):
    from gamengen.config import WorldModelConfig

    assert config.residual is False  # the paper's parameterisation unless asked
    config.residual = True
    assert WorldModelConfig.from_dict(config.to_dict()).residual is True
    old = config.to_dict()
    del old["residual"]  # a checkpoint written before the option existed
    assert WorldModelConfig.from_dict(old).residual is False
    save_world_model(tmp_path / "wm", build_world_model(config), build_vae(config.model), config)
    assert json.loads((tmp_path / "wm" / "gamengen_config.json").read_text())["residual"] is True
    assert load_world_model(tmp_path / "wm").config.residual is True


def test_residual_base_is_the_last_context_latent_only_under_residual(config):
    context = window_batch(config)["context"]
    assert torch.equal(residual_base(context, config), torch.zeros_like(context[:, -1]))
    config.residual = True
    assert torch.equal(residual_base(context, config), context[:, -1])


def test_residual_training_target_is_the_change_from_the_noised_last_context_frame(config):
    """Under residual, the velocity target is that of ``target - (noised last context frame)``, also
    for samples whose context is dropped (the unconditional branch predicts the change from the same base)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("trainer", Path(__file__).parent.parent / "train_text_to_image.py")
    trainer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trainer)
    scheduler = make_scheduler(config)
    batch = window_batch(config, size=4)
    target = batch["context"][:, -1] + 0.1 * torch.randn(4, *config.model.latent_shape)
    windows = {"target": target, "context": batch["context"], "actions": batch["actions"]}
    config.context_dropout = 0.5
    captured = {}

    def spy(noisy, timesteps, context, actions, buckets):
        captured.update(noisy=noisy, timesteps=timesteps, context=context, buckets=buckets)
        return torch.zeros_like(noisy)

    for residual in (False, True):
        config.residual = residual
        generator = torch.Generator().manual_seed(0)
        loss = diffusion_loss(spy, windows, config, scheduler, generator)
        # replay the draws: noise, timesteps, buckets, context noise
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn(target.shape, generator=generator)
        timesteps = torch.randint(0, 1000, (4,), generator=generator)
        buckets = torch.randint(0, config.noise_buckets, (4,), generator=generator)
        noised = corrupt_context(batch["context"], buckets, config, generator)
        base = noised[:, -1] if residual else torch.zeros_like(target)
        velocity = scheduler.get_velocity(target - base, noise, timesteps)
        torch.testing.assert_close(loss, velocity.pow(2).mean())
        torch.testing.assert_close(captured["noisy"], scheduler.add_noise(target - base, noise, timesteps))


@pytest.mark.parametrize(
    ("prediction_type", "clean_base", "lognormal"),
    [("sample", False, None), ("sample", True, None), ("epsilon", False, None), ("v_prediction", False, (-0.4, 1.2))],
)
def test_the_training_objective_of_each_prediction_type_base_and_noise_sampling(
    config, prediction_type, clean_base, lognormal
):
    """The loss is the MSE to x0 - base ("sample"), the noise ("epsilon") or v; the base is the clean or the
    noised last context latent; with ``lognormal_noise`` the timesteps are those of log-normal noise levels."""
    scheduler = make_scheduler(config)
    batch = window_batch(config, size=8)
    target = batch["context"][:, -1] + 0.1 * torch.randn(8, *config.model.latent_shape)
    windows = {"target": target, "context": batch["context"], "actions": batch["actions"]}
    config.residual, config.prediction_type, config.clean_residual_base = True, prediction_type, clean_base
    captured = {}

    def spy(noisy, timesteps, context, actions, buckets):
        captured.update(timesteps=timesteps)
        return torch.zeros_like(noisy)

    loss = diffusion_loss(spy, windows, config, scheduler, torch.Generator().manual_seed(0), None, lognormal)
    generator = torch.Generator().manual_seed(0)  # replay: noise, timesteps, buckets, context noise
    noise = torch.randn(target.shape, generator=generator)
    if lognormal is None:
        timesteps = torch.randint(0, 1000, (8,), generator=generator)
    else:
        sigmas = torch.exp(lognormal[0] + lognormal[1] * torch.randn(8, generator=generator))
        table = ((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod).sqrt()
        timesteps = torch.tensor([int((table >= sigma).nonzero()[0]) for sigma in sigmas])
    buckets = torch.randint(0, config.noise_buckets, (8,), generator=generator)
    noised = corrupt_context(batch["context"], buckets, config, generator)
    change = target - (batch["context"] if clean_base else noised)[:, -1]
    objective = {
        "sample": change,
        "epsilon": noise,
        "v_prediction": scheduler.get_velocity(change, noise, timesteps),
    }[prediction_type]
    torch.testing.assert_close(captured["timesteps"], timesteps)
    torch.testing.assert_close(loss, objective.pow(2).mean())
    if clean_base:  # the context noise differs between the bases: the two objectives are not the same
        assert not torch.allclose(change, target - noised[:, -1])


def test_action_positions_tell_the_newest_action_from_older_ones(config, tmp_path):
    """Without slot embeddings the action tokens are an unordered set for cross-attention: reordering
    the context actions cannot change the prediction. With them (tiny default) it does, and the slot
    embeddings survive a checkpoint round trip."""
    batch = window_batch(config)
    reordered = batch["actions"].flip(1)
    assert not torch.equal(reordered, batch["actions"])
    for positions in (False, True):
        config.action_positions = positions
        torch.manual_seed(0)
        model = build_world_model(config).eval()
        with torch.no_grad():
            model.unet.conv_out.weight.normal_(0, 0.1)  # random init leaves the output layer small
            outputs = [
                model(batch["noisy"], batch["timesteps"], batch["context"], a, batch["buckets"])
                for a in (batch["actions"], reordered)
            ]
        assert torch.allclose(outputs[0], outputs[1], atol=1e-5) is not positions
    save_world_model(tmp_path / "wm", model, build_vae(config.model), config)
    loaded = load_world_model(tmp_path / "wm").model
    torch.testing.assert_close(loaded.action_position, model.action_position)
    config.action_positions = False  # a checkpoint without slot embeddings whose config asks for them is refused
    save_world_model(tmp_path / "old", build_world_model(config), build_vae(config.model), config)
    saved = json.loads((tmp_path / "old" / "gamengen_config.json").read_text())
    (tmp_path / "old" / "gamengen_config.json").write_text(json.dumps({**saved, "action_positions": True}))
    with pytest.raises(ModelLoadError, match="action position embedding is none"):
        load_world_model(tmp_path / "old")


def test_action_class_feeds_the_newest_action_with_the_noise_bucket_as_the_class_label(config, tmp_path):
    """With action_class (tiny default) the UNet's class label is bucket * num_actions + newest action:
    changing only the newest action changes the class embedding input; the checkpoint round-trips."""
    config.action_class = True
    assert config.num_class_embeds == config.noise_buckets * len(ACTIONS)
    torch.manual_seed(0)
    model = build_world_model(config).eval()
    assert model.unet.class_embedding.num_embeddings == config.num_class_embeds
    batch = window_batch(config)
    labels = []
    handle = model.unet.class_embedding.register_forward_pre_hook(lambda _m, args: labels.append(args[0].clone()))
    with torch.no_grad():
        model(batch["noisy"], batch["timesteps"], batch["context"], batch["actions"], batch["buckets"])
    handle.remove()
    assert torch.equal(labels[0], batch["buckets"] * len(ACTIONS) + batch["actions"][:, -1])
    save_world_model(tmp_path / "wm", model, build_vae(config.model), config)
    loaded = load_world_model(tmp_path / "wm")
    assert loaded.config.action_class and loaded.model.action_class
    with torch.no_grad():
        expected = model(batch["noisy"], batch["timesteps"], batch["context"], batch["actions"], batch["buckets"])
        got = loaded.model(batch["noisy"], batch["timesteps"], batch["context"], batch["actions"], batch["buckets"])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", ["adafactor", "adafactor_torch", "adamw"])
def test_every_optimizer_choice_lowers_the_loss_of_a_world_model(config, name):
    torch.manual_seed(0)
    model = build_world_model(config)
    optimizer = make_optimizer(name, model.parameters(), 1e-3, 0.0)
    batch = window_batch(config, size=8)
    batch = {"target": batch["noisy"], "context": batch["context"], "actions": batch["actions"]}
    losses = []
    for _ in range(6):
        generator = torch.Generator().manual_seed(0)  # the same draws: the loss falls only by learning
        loss = diffusion_loss(model, batch, config, make_scheduler(config), generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_the_small_gpu_preset_maps_128x96_frames_to_24x32_latents_and_predicts_them():
    """The GPU quickstart's preset (between tiny and sd14): its VAE and UNet as the scripts build them, one frame
    through the VAE and one noisy latent through the world model, at the sizes gamengen/config.py promises."""
    config = get_world_model_config("small", ACTIONS, action_positions=True, action_class=True, residual=True)
    assert (config.model.frame_width, config.model.frame_height, config.context_length) == (128, 96, 8)
    torch.manual_seed(0)
    vae = build_vae(config.model).eval()
    frames = torch.rand(1, 3, 96, 128) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(frames).latent_dist.mode()
        assert tuple(latents.shape) == (1, *config.model.latent_shape) == (1, 4, 24, 32)
        assert tuple(vae.decode(latents).sample.shape) == (1, 3, 96, 128)
    model = build_world_model(config).eval()
    assert 90e6 < sum(p.numel() for p in model.parameters()) < 110e6  # between tiny's 4M and sd14's 860M
    batch = window_batch(config, size=1)
    with torch.no_grad():
        output = model(batch["noisy"], batch["timesteps"], batch["context"], batch["actions"], batch["buckets"])
    assert output.shape == batch["noisy"].shape and torch.isfinite(output).all()
