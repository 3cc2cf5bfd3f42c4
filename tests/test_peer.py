"""Checkpoints of the seed repository (gameNgen-repro): converted by convert_checkpoint.py, loaded directly by
load_world_model, played by the engine, and refused with a clear message when broken.

The stand-in is a tiny random checkpoint written in the seed's layout (unet/ with in_channels 4 x (N + 1) and 10
class embeddings, vae/, noise_scheduler/ as the seed saves SD v1.4's scheduler with v-prediction,
action_embedding_model.safetensors, embedding_info.json), so nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_script, sd_shaped_vae
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors.torch import save_file

import convert_checkpoint
from gamengen.checkpoint import load_world_model, read_world_model_config
from gamengen.engine import GameEngine
from gamengen.peer import PEER_ACTION_NAMES, PeerCheckpointError, convert_peer_checkpoint

CONTEXT = 3  # the stand-in's context frames (the published checkpoints have 9)
TOKEN_DIM = 32  # the stand-in's action-token size (the published checkpoints: 768)
NUM_ACTIONS = 18  # the seed's action set


def write_peer_checkpoint(folder: Path, num_embeddings: int = NUM_ACTIONS, seed: int = 0) -> Path:
    """A tiny random checkpoint in the seed's layout, written as its save_model writes one."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=(30, 40),
        in_channels=4 * (CONTEXT + 1),
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=TOKEN_DIM,
        attention_head_dim=8,
        norm_num_groups=16,
        num_class_embeds=10,
    )
    with torch.no_grad():  # make every input channel and the class label matter visibly
        unet.conv_in.weight.normal_(0, 0.2)
        unet.class_embedding.weight.normal_(0, 1)
    unet.save_pretrained(folder / "unet")
    sd_shaped_vae().save_pretrained(folder / "vae")
    # The seed loads SD v1.4's scheduler config into a DDIMScheduler and switches it to v-prediction.
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )
    scheduler.save_pretrained(folder / "noise_scheduler")
    embedding = torch.nn.Embedding(num_embeddings, TOKEN_DIM)
    save_file(embedding.state_dict(), str(folder / "action_embedding_model.safetensors"))
    info = {"num_embeddings": num_embeddings, "embedding_dim": TOKEN_DIM}
    (folder / "embedding_info.json").write_text(json.dumps(info))
    return folder


@pytest.fixture(scope="module")
def peer_checkpoint(tmp_path_factory) -> Path:
    return write_peer_checkpoint(tmp_path_factory.mktemp("peer") / "gameNgen-tiny")


@pytest.fixture(scope="module")
def converted(peer_checkpoint, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("converted") / "wm"
    convert("--model_folder", peer_checkpoint, "--output_dir", output)
    return output


def convert(*args: object) -> dict:
    """convert_checkpoint.py in this process, as a user would call it."""
    return convert_checkpoint.main(convert_checkpoint.parse_args([str(a) for a in args]))


def random_frames(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 240, 320, 3), dtype=np.uint8)


def seed_prediction(peer_checkpoint: Path, noisy, timesteps, context, actions, buckets) -> torch.Tensor:
    """What the seed's code computes: context then noisy target on the channel axis, tokens from its embedding."""
    from safetensors.torch import load_file

    unet = UNet2DConditionModel.from_pretrained(peer_checkpoint / "unet").eval()
    embedding = torch.nn.Embedding(NUM_ACTIONS, TOKEN_DIM)
    embedding.load_state_dict(load_file(str(peer_checkpoint / "action_embedding_model.safetensors")))
    stacked = torch.cat([context, noisy[:, None]], dim=1).flatten(1, 2)
    with torch.no_grad():
        return unet(stacked, timesteps, encoder_hidden_states=embedding(actions), class_labels=buckets).sample


# -- conversion -------------------------------------------------------------------------------------


def test_the_converted_checkpoint_predicts_exactly_what_the_seed_model_predicts(peer_checkpoint, converted):
    bundle = load_world_model(converted)
    generator = torch.Generator().manual_seed(1)
    noisy = torch.randn(2, 4, 30, 40, generator=generator)
    context = torch.randn(2, CONTEXT, 4, 30, 40, generator=generator)
    actions = torch.tensor([[8, 9, 17], [0, 1, 2]])
    timesteps, buckets = torch.tensor([901, 301]), torch.tensor([0, 3])
    with torch.no_grad():
        ours = bundle.model(noisy, timesteps, context, actions, buckets)
    expected = seed_prediction(peer_checkpoint, noisy, timesteps, context, actions, buckets)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    # The channel order matters: without the reordering the prediction would be another one.
    unordered = torch.cat([noisy[:, None], context[:, 1:]], 1)
    swapped = seed_prediction(peer_checkpoint, context[:, 0], timesteps, unordered, actions, buckets)
    assert not torch.allclose(ours, swapped, atol=1e-3)


def test_the_converted_config_keeps_the_seeds_frames_context_sampling_and_actions(converted):
    config = read_world_model_config(converted)
    assert config.context_length == CONTEXT
    assert (config.model.frame_width, config.model.frame_height) == (320, 240)
    assert (config.model.padded_width, config.model.padded_height) == (320, 240)  # no padding in the seed
    assert config.model.latent_shape == (4, 30, 40)
    assert (config.noise_buckets, config.inference_noise_bucket, config.max_noise_level) == (10, 0, 0.7)
    assert (config.guidance_scale, config.num_inference_steps) == (1.0, 10)
    assert not (config.residual or config.action_positions or config.action_class)
    assert config.action_names == list(PEER_ACTION_NAMES)
    assert config.action_names[0] == "TURN_LEFT" and config.action_names[17] == "ATTACK"
    scheduler = DDIMScheduler.from_pretrained(converted, subfolder="scheduler")
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.timestep_spacing == "leading"  # as the seed's scheduler samples
    assert "gameNgen-repro" in (converted / "README.md").read_text()


def test_convert_refuses_to_overwrite_an_existing_folder(peer_checkpoint, converted):
    before = sorted(p.name for p in converted.iterdir())
    with pytest.raises(convert_checkpoint.UsageError, match="already exists"):
        convert("--model_folder", peer_checkpoint, "--output_dir", converted)
    assert sorted(p.name for p in converted.iterdir()) == before


def test_action_names_can_be_given_and_are_generic_beyond_the_seeds_action_set(peer_checkpoint, tmp_path):
    names = [f"A{i}" for i in range(NUM_ACTIONS)]
    assert convert_peer_checkpoint(peer_checkpoint, action_names=names).config.action_names == names
    with pytest.raises(PeerCheckpointError, match="3 action names given, the checkpoint's action embedding has 18"):
        convert_peer_checkpoint(peer_checkpoint, action_names=["A", "B", "C"])
    wide = write_peer_checkpoint(tmp_path / "wide", num_embeddings=20)
    assert read_world_model_config(wide).action_names == [f"ACTION_{i}" for i in range(20)]


def test_a_fine_tuned_decoder_replaces_the_decoder_and_keeps_the_encoder(peer_checkpoint, tmp_path):
    torch.manual_seed(3)
    decoder = sd_shaped_vae().decoder.state_dict()
    torch.save(decoder, tmp_path / "trained_vae_decoder.pth")
    original = AutoencoderKL.from_pretrained(peer_checkpoint / "vae")
    output = tmp_path / "wm"
    convert("--model_folder", peer_checkpoint, "--output_dir", output, "--vae", tmp_path / "trained_vae_decoder.pth")
    vae = load_world_model(output).vae
    for name, tensor in decoder.items():
        torch.testing.assert_close(vae.decoder.state_dict()[name], tensor)
    for name, tensor in original.encoder.state_dict().items():
        torch.testing.assert_close(vae.encoder.state_dict()[name], tensor)
    assert not torch.equal(vae.decoder.conv_out.weight, original.decoder.conv_out.weight)


def test_a_decoder_of_another_architecture_is_refused(peer_checkpoint, tmp_path):
    other = AutoencoderKL(
        block_out_channels=[16, 16],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=8,
    )
    torch.save(other.decoder.state_dict(), tmp_path / "decoder.pth")
    with pytest.raises(PeerCheckpointError, match="does not fit the checkpoint's VAE decoder"):
        convert_peer_checkpoint(peer_checkpoint, vae=tmp_path / "decoder.pth")


# -- loading and playing a seed folder directly -------------------------------------------------------


def test_load_world_model_converts_a_seed_folder_on_load(peer_checkpoint, converted):
    direct, written = load_world_model(peer_checkpoint), load_world_model(converted)
    assert direct.config.context_length == written.config.context_length == CONTEXT
    assert direct.config.action_names == written.config.action_names
    for name, tensor in written.model.state_dict().items():
        torch.testing.assert_close(direct.model.state_dict()[name], tensor)
    assert read_world_model_config(peer_checkpoint).model.latent_shape == (4, 30, 40)
    with pytest.raises(PeerCheckpointError, match="the checkpoint has 18 actions"):
        load_world_model(peer_checkpoint, num_actions=5)


def test_the_engine_generates_frames_from_a_seed_checkpoint(peer_checkpoint, converted):
    engine = GameEngine.from_pretrained(peer_checkpoint, device="cpu", num_inference_steps=2, seed=0)
    assert engine.describe()["guidance_scale"] == 1.0
    frames, actions = random_frames(CONTEXT), ["FORWARD", "TURN_LEFT"]
    engine.reset(frames, actions)
    rollout = engine.rollout(["FORWARD", "ATTACK", 9])
    assert rollout.shape == (3, 240, 320, 3) and rollout.dtype == np.uint8
    assert engine.context_actions.tolist() == [17, 9, 0]  # ATTACK, FORWARD_TURN_LEFT (id 9), the pending slot
    # The folder written by convert_checkpoint.py plays the same frames as the seed folder converted on load.
    again = GameEngine.from_pretrained(converted, device="cpu", num_inference_steps=2, seed=0)
    again.reset(frames, actions)
    np.testing.assert_array_equal(again.rollout(["FORWARD", "ATTACK", 9]), rollout)
    # A short context is padded (the first frame repeated) rather than refused.
    engine.reset(frames[:1])
    assert engine.step("STRAFE_LEFT").shape == (240, 320, 3)


# -- broken seed folders ----------------------------------------------------------------------------


def broken_copy(peer_checkpoint: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(peer_checkpoint, tmp_path / "broken"))


def test_a_seed_folder_without_embedding_info_is_refused_by_name(peer_checkpoint, tmp_path):
    folder = broken_copy(peer_checkpoint, tmp_path)
    (folder / "embedding_info.json").unlink()
    with pytest.raises(PeerCheckpointError, match="incomplete: missing embedding_info.json"):
        load_world_model(folder)
    output = tmp_path / "out"
    result = run_script("convert_checkpoint.py", "--model_folder", folder, "--output_dir", output, check=False)
    assert result.returncode != 0
    assert "error:" in result.stderr and "missing embedding_info.json" in result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists()


def test_an_action_embedding_of_the_wrong_size_is_refused(peer_checkpoint, tmp_path):
    folder = broken_copy(peer_checkpoint, tmp_path)
    smaller = torch.nn.Embedding(NUM_ACTIONS - 1, TOKEN_DIM)
    save_file(smaller.state_dict(), str(folder / "action_embedding_model.safetensors"))
    with pytest.raises(PeerCheckpointError, match=r"holds a \(17, 32\) weight, embedding_info.json says \(18, 32\)"):
        convert_peer_checkpoint(folder)


def test_an_embedding_size_that_is_not_the_unets_token_size_is_refused(peer_checkpoint, tmp_path):
    folder = broken_copy(peer_checkpoint, tmp_path)
    (folder / "embedding_info.json").write_text(json.dumps({"num_embeddings": NUM_ACTIONS, "embedding_dim": 768}))
    with pytest.raises(PeerCheckpointError, match="embedding_dim 768, the UNet's cross_attention_dim is 32"):
        read_world_model_config(folder)


def test_a_folder_that_is_neither_layout_is_refused(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(PeerCheckpointError, match="not a gameNgen-repro checkpoint"):
        convert_peer_checkpoint(tmp_path)
