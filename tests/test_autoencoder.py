"""finetune_autoencoder.py and the VAE side of gamengen/: real diffusers models on real recorded frames."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import record_random_episodes, run_script, sd_shaped_vae
from diffusers import AutoencoderKL

from gamengen.config import get_config
from gamengen.episodes import open_dataset
from gamengen.model import ModelLoadError
from gamengen.vae import (
    build_vae,
    check_vae,
    decode_latents,
    encode_frames,
    frames_to_tensor,
    load_vae,
    pad_frames,
    save_vae,
    tensor_to_frames,
    unpad_frames,
)

SCRIPT = "finetune_autoencoder.py"


def record(out: Path, episodes: int, steps: int, frame_size: str | None = None) -> Path:
    """Real E1M1 frames from the agent side's generator (random policy)."""
    size = ["--frame_size", frame_size] if frame_size else []
    record_random_episodes(out, episodes, steps, "--seed", 3, *size)
    return out


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """4 episodes x 48 steps of 64x48 frames (the tiny preset's size)."""
    return record(tmp_path_factory.mktemp("tiny_ds"), episodes=4, steps=48, frame_size="64x48")


@pytest.fixture(scope="session")
def sd14_dataset(tmp_path_factory) -> Path:
    """2 short episodes of 320x240 frames (the paper's size)."""
    return record(tmp_path_factory.mktemp("sd14_ds"), episodes=2, steps=8)


def finetune(*args, check: bool = True):
    return run_script(SCRIPT, "--report_to", "none", *args, check=check)


def summary(output_dir: Path) -> dict:
    return json.loads((output_dir / "vae_training.json").read_text())


def train_tiny_vae(dataset: Path, max_train_steps: int, output_dir: Path, check: bool = True):
    """The README's command: a tiny VAE, encoder too, trained from scratch."""
    return finetune(
        *("--preset", "tiny", "--train_encoder", "--dataset_name", dataset),
        *("--max_train_steps", max_train_steps, "--output_dir", output_dir),
        check=check,
    )


@pytest.fixture(scope="session")
def tiny_vae(tiny_dataset, tmp_path_factory) -> Path:
    """The README's command: a tiny VAE trained from scratch (encoder too) for 40 steps."""
    out = tmp_path_factory.mktemp("tiny_vae") / "run"
    result = train_tiny_vae(tiny_dataset, 40, out)
    assert "held-out PSNR: before" in result.stdout
    return out


def state(vae: AutoencoderKL, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in vae.state_dict().items() if k.startswith(prefixes)}


# -- training runs -----------------------------------------------------------------------------


def test_training_the_tiny_vae_from_scratch_raises_heldout_psnr(tiny_vae):
    numbers = summary(tiny_vae)
    assert numbers["global_step"] == 40 and numbers["mode"] == "train_encoder"
    assert numbers["heldout_psnr_after"] > numbers["heldout_psnr_before"] + 8  # random init ~8 dB -> ~20 dB
    assert len(numbers["heldout_episodes"]) == 1 and numbers["train_episodes"] == 3
    vae = AutoencoderKL.from_pretrained(tiny_vae, subfolder="vae")
    check_vae(vae, get_config("tiny"))
    # The latent scaling factor was measured (1 / std of the latents), not left at the preset's 1.0.
    assert vae.config.scaling_factor == pytest.approx(numbers["scaling_factor"]) and vae.config.scaling_factor != 1.0
    assert (tiny_vae / "samples" / "reconstructions-000040.png").is_file()


def test_decoder_only_keeps_the_encoder_bit_identical_and_improves_the_decoder(tiny_vae, tiny_dataset, tmp_path):
    out = tmp_path / "decoder"
    decoder_only = ("--preset", "tiny", "--pretrained_model_name_or_path", tiny_vae, "--dataset_name", tiny_dataset)
    decoder_only += ("--checkpointing_steps", 20, "--output_dir", out)
    finetune(*decoder_only, "--max_train_steps", 30)
    before, after = load_vae(tiny_vae), load_vae(out)
    frozen = ("encoder.", "quant_conv.")
    for name, weight in state(before, frozen).items():
        assert torch.equal(weight, state(after, frozen)[name]), f"{name} changed in decoder-only mode"
    changed = [k for k, v in state(before, ("decoder.",)).items() if not torch.equal(v, after.state_dict()[k])]
    assert len(changed) > 10
    numbers = summary(out)
    assert numbers["mode"] == "decoder_only"
    assert numbers["heldout_psnr_after"] > numbers["heldout_psnr_before"]
    assert after.config.scaling_factor == before.config.scaling_factor  # the latent space did not move

    # Resume: a longer run continues from the latest checkpoint (30) and its step count.
    resumed = finetune(*decoder_only, "--max_train_steps", 35, "--resume_from_checkpoint", "latest")
    assert "at step 30" in resumed.stdout
    numbers = summary(out)
    assert (numbers["global_step"], numbers["steps_this_run"]) == (35, 5)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-30", "checkpoint-35"]
    assert not list(out.glob(".*")), "temporary folders left behind"


def test_a_rerun_never_overwrites_an_earlier_run(tiny_vae, tiny_dataset, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny_vae, out)
    weights = (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    result = train_tiny_vae(tiny_dataset, 2, out, check=False)
    assert result.returncode != 0 and "--resume_from_checkpoint latest" in result.stderr
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == weights


def test_sd14_path_loads_a_local_pretrained_folder_and_pads_frames(sd14_dataset, tmp_path):
    """A small "pretrained" VAE with SD's latent geometry (factor 8, 4 channels), saved with
    save_pretrained, goes through the same loader a Hub id does, on 320x240 frames padded to 320x256."""
    torch.manual_seed(0)
    stock = sd_shaped_vae()
    stock.save_pretrained(tmp_path / "stock" / "vae")
    out = tmp_path / "out"
    result = finetune(
        "--preset",
        "sd14",
        "--pretrained_model_name_or_path",
        tmp_path / "stock",
        "--dataset_name",
        sd14_dataset,
        "--max_train_steps",
        3,
        "--train_batch_size",
        2,
        "--num_validation_frames",
        4,
        "--output_dir",
        out,
    )
    assert "pretrained" in result.stdout and "decoder only" in result.stdout
    tuned = load_vae(out)
    assert torch.equal(
        state(stock, ("encoder.",))["encoder.conv_in.weight"], tuned.state_dict()["encoder.conv_in.weight"]
    )
    assert tuned.config.scaling_factor == pytest.approx(0.18215)

    config = get_config("sd14")
    dataset = open_dataset(sd14_dataset)
    pixels = frames_to_tensor(np.stack([dataset.frame(0), dataset.frame(1)]))
    with torch.no_grad():
        latents = encode_frames(tuned, pixels, config)
        assert latents.shape == (2, *config.latent_shape) == (2, 4, 32, 40)
        assert decode_latents(tuned, latents, config).shape == (2, 3, 240, 320)


def test_script_errors_say_what_to_change(tiny_dataset, tmp_path):
    # The sd14 preset on 64x48 frames: the message names both sizes and the fix.
    result = finetune(
        "--preset",
        "sd14",
        "--pretrained_model_name_or_path",
        tmp_path,
        "--dataset_name",
        tiny_dataset,
        "--output_dir",
        tmp_path / "o",
        check=False,
    )
    assert result.returncode != 0
    assert "64x48" in result.stderr and "320x240" in result.stderr and "Traceback" not in result.stderr


# -- gamengen.vae ------------------------------------------------------------------------------


def test_load_vae_refuses_a_folder_without_vae(tmp_path):
    with pytest.raises(ModelLoadError, match="no vae/ folder"):
        load_vae(tmp_path)
    build_vae(get_config("tiny")).save_pretrained(tmp_path / "vae")
    with pytest.raises(ModelLoadError, match="pass its parent folder"):
        load_vae(tmp_path / "vae")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_vae(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match=r"could not fetch the model \(vae/\) 'nobody/no-such-model' from the Hub"):
        load_vae("nobody/no-such-model")  # HF_HUB_OFFLINE=1: the Hub path fails without the network


def test_save_vae_round_trips_and_replaces_atomically(tmp_path):
    config = get_config("tiny")
    torch.manual_seed(1)
    first, second = build_vae(config), build_vae(config)
    save_vae(first, tmp_path)
    save_vae(second, tmp_path)  # replaces the first, leaves no temporary folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]
    loaded = load_vae(tmp_path)
    for name, weight in second.state_dict().items():
        assert torch.equal(weight, loaded.state_dict()[name])
    assert loaded.config.scaling_factor == config.latent_scaling_factor


def test_check_vae_refuses_a_vae_of_another_geometry():
    with pytest.raises(ModelLoadError, match="downsampling factor 4, the preset has 8"):
        check_vae(build_vae(get_config("tiny")), get_config("sd14"))


def test_padding_is_black_rows_at_the_bottom_and_crops_back():
    config = get_config("sd14")
    frames = np.random.default_rng(0).integers(0, 256, (2, 240, 320, 3), dtype=np.uint8)
    pixels = frames_to_tensor(frames)
    assert pixels.shape == (2, 3, 240, 320) and pixels.min() >= -1 and pixels.max() <= 1
    padded = pad_frames(pixels, config)
    assert padded.shape == (2, 3, 256, 320)
    assert torch.equal(padded[..., :240, :], pixels) and bool((padded[..., 240:, :] == -1).all())
    assert np.array_equal(tensor_to_frames(unpad_frames(padded, config)), frames)
    with pytest.raises(ValueError, match="expects 320x240"):
        pad_frames(pixels[..., :200, :], config)


def test_presets_have_the_documented_latent_shapes():
    assert get_config("sd14").latent_shape == (4, 32, 40)
    tiny = get_config("tiny")
    assert (tiny.frame_width, tiny.frame_height, tiny.latent_shape) == (64, 48, (4, 12, 16))
    assert type(tiny).from_dict(tiny.to_dict()) == tiny
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("sd15")


def test_the_edge_term_charges_blur_that_mse_lets_pass(tiny_dataset, tmp_path):
    from gamengen.autoencoder_training import edge_loss

    frames = frames_to_tensor(np.stack([open_dataset(tiny_dataset).frame(i) for i in (0, 20)]))
    blurred = torch.nn.functional.avg_pool2d(frames, 3, stride=1, padding=1, count_include_pad=False)
    mse = torch.nn.functional.mse_loss(blurred, frames)
    shifted = frames + mse.sqrt()  # a uniform brightness error of the same MSE: no edge moved
    assert torch.nn.functional.mse_loss(shifted, frames) == pytest.approx(float(mse), rel=1e-4)
    assert float(edge_loss(frames, frames)) == 0.0
    assert float(edge_loss(shifted, frames)) < 1e-6 < float(edge_loss(blurred, frames))

    out = tmp_path / "edges"
    train = ("--preset", "tiny", "--train_encoder", "--dataset_name", tiny_dataset, "--max_train_steps", 3)
    finetune(*train, "--edge_weight", 0.5, "--output_dir", out)
    assert summary(out)["global_step"] == 3


def test_the_adversarial_term_trains_a_discriminator_that_checkpoints_and_resumes(tiny_dataset, tmp_path):
    out = tmp_path / "adversarial"
    train = ("--preset", "tiny", "--train_encoder", "--dataset_name", tiny_dataset, "--output_dir", out)
    train += ("--adversarial_weight", 0.05, "--adversarial_start", 2, "--checkpointing_steps", 3)
    finetune(*train, "--max_train_steps", 3)
    # the discriminator and its optimizer are saved beside the VAE's, so a resumed run continues both
    assert {"model_1.safetensors", "optimizer_1.bin"} <= {p.name for p in (out / "checkpoint-3").iterdir()}
    resumed = finetune(*train, "--max_train_steps", 5, "--resume_from_checkpoint", "latest")
    assert "at step 3" in resumed.stdout and summary(out)["global_step"] == 5


def test_posterior_noise_zero_trains_the_decoder_on_the_latent_the_world_model_sees(tiny_dataset):
    from gamengen.autoencoder_training import Reconstruction

    config = get_config("tiny")
    torch.manual_seed(0)
    vae = build_vae(config)
    pixels = frames_to_tensor(np.stack([open_dataset(tiny_dataset).frame(i) for i in (0, 9)]))
    with torch.no_grad():
        mean = decode_latents(vae, encode_frames(vae, pixels, config), config)
        sampled = [Reconstruction(vae, config, True)(pixels)[0] for _ in range(2)]
        exact = [Reconstruction(vae, config, True, posterior_noise=0.0)(pixels)[0] for _ in range(2)]
    assert not torch.equal(sampled[0], sampled[1])  # a posterior sample each time
    assert torch.equal(exact[0], exact[1]) and torch.allclose(exact[0], mean, atol=1e-5)
