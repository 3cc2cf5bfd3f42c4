"""The tiny-s2d preset: the lossless space-to-depth "autoencoder" (gamengen.vae.SpaceToDepthAutoencoder) through
the whole pipeline on real recorded frames: finetune_autoencoder.py writes it, encode_latents.py caches its
latents, train_text_to_image.py trains on them and run_autoregressive.py plays the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_script

from gamengen.config import get_config
from gamengen.episodes import open_dataset
from gamengen.model import ModelLoadError
from gamengen.vae import (
    SpaceToDepthAutoencoder,
    build_vae,
    check_vae,
    decode_latents,
    encode_frames,
    frames_to_tensor,
    load_vae,
    tensor_to_frames,
)

PRESET = "tiny-s2d"


@pytest.fixture(scope="module")
def lossless(tiny_dataset, tmp_path_factory) -> Path:
    """finetune_autoencoder.py for the tiny-s2d preset: nothing to train, the scaling factor measured."""
    out = tmp_path_factory.mktemp("s2d") / "vae"
    result = run_script(
        "finetune_autoencoder.py", "--preset", PRESET, "--dataset_name", tiny_dataset, "--output_dir", out
    )
    assert "lossless" in result.stdout and "nothing to train" in result.stdout
    return out


def test_the_preset_has_48_channel_latents_on_the_tiny_grid():
    config = get_config(PRESET)
    assert (config.frame_width, config.frame_height, config.latent_shape) == (64, 48, (48, 12, 16))
    assert type(config).from_dict(config.to_dict()) == config


def test_decoding_gives_back_every_recorded_frame_exactly(lossless, tiny_dataset):
    config, vae = get_config(PRESET), load_vae(lossless)
    assert isinstance(vae, SpaceToDepthAutoencoder)
    dataset = open_dataset(tiny_dataset)
    frames = np.stack([dataset.frame(i) for i in range(0, len(dataset), 7)])
    latents = encode_frames(vae, frames_to_tensor(frames), config)
    assert latents.shape[1:] == (48, 12, 16)
    assert np.array_equal(tensor_to_frames(decode_latents(vae, latents, config)), frames)
    # The measured scaling factor gives the diffusion model latents of unit spread (DOOM is dark: std ~0.3 of [-1, 1]).
    assert vae.config.scaling_factor > 2 and float(latents.std()) == pytest.approx(1.0, abs=0.25)
    summary = json.loads((lossless / "vae_training.json").read_text())
    assert summary["mode"] == "lossless" and summary["scaling_factor"] == pytest.approx(vae.config.scaling_factor)


def test_each_preset_refuses_the_other_kind_of_autoencoder(lossless):
    with pytest.raises(ModelLoadError, match="it is a SpaceToDepthAutoencoder, the preset uses a AutoencoderKL"):
        check_vae(load_vae(lossless), get_config("tiny"))
    with pytest.raises(ModelLoadError, match="it is a AutoencoderKL, the preset uses a SpaceToDepthAutoencoder"):
        check_vae(build_vae(get_config("tiny")), get_config(PRESET))


def test_a_world_model_trains_and_plays_on_lossless_latents(lossless, tiny_dataset, tmp_path):
    latents, model = tmp_path / "latents", tmp_path / "wm"
    common = ("--preset", PRESET, "--dataset_name", tiny_dataset, "--pretrained_vae_model_name_or_path", lossless)
    run_script("encode_latents.py", *common, "--output_dir", latents)
    trained = run_script(
        "train_text_to_image.py",
        *common,
        *("--latents_dir", latents, "--output_dir", model, "--max_train_steps", 6, "--train_batch_size", 4),
        *("--report_to", "none", "--validation_steps", 1000, "--num_validation_samples", 2),
    )
    assert "held-out next-frame PSNR" in trained.stdout
    from gamengen.checkpoint import load_world_model

    bundle = load_world_model(model)
    assert isinstance(bundle.vae, SpaceToDepthAutoencoder) and bundle.model.unet.config.out_channels == 48
    played = tmp_path / "played"
    run_script(
        "run_autoregressive.py",
        *("--model_folder", model, "--dataset_name", tiny_dataset, "--num_frames", 4),
        *("--output_dir", played, "--no_mp4", "--seed", 0),
    )
    assert list(played.rglob("*.gif")), "no rollout gif written"
