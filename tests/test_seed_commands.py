"""The seed repository's README commands (github.com/arnaudstiegler/gameNgen-repro) run here as written, apart from
the sizes, on offline stand-ins for its Hub artifacts: a tiny dataset in its layout and a tiny checkpoint in its
layout. (`load_model_generate_dataset.py` without a policy option: tests/test_ppo.py; the Hub pushes and
downloads cannot be reached from tests.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_script
from test_peer import write_peer_checkpoint
from test_seed_layout import write_seed_layout

from gamengen.checkpoint import load_world_model
from gamengen.config import get_config
from gamengen.vae import build_vae, load_vae, save_vae

pytestmark = pytest.mark.slow
TINY = ("--preset", "tiny")  # the sizes: the seed trains SD v1.4 on a GPU


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seed")
    write_seed_layout(root / "dataset", episodes=4, length=10)
    torch.manual_seed(0)
    save_vae(build_vae(get_config("tiny")), root / "vae")
    write_seed_layout(root / "dataset320", episodes=1, length=12, width=320, height=240)
    write_peer_checkpoint(root / "checkpoint")
    return {"root": root, "dataset": root / "dataset", "vae": root / "vae", "dataset320": root / "dataset320",
            "checkpoint": root / "checkpoint"}  # fmt: skip


def test_the_seeds_debug_training_command(stand_ins, tmp_path):
    result = run_script(
        "train_text_to_image.py", "--dataset_name", stand_ins["dataset"], "--gradient_checkpointing",
        "--train_batch_size", 2, "--learning_rate", "5e-5", "--num_train_epochs", 3, "--validation_steps", 250,
        "--dataloader_num_workers", 0, "--max_train_samples", 2, "--use_cfg", "--report_to", "wandb",
        *TINY, "--pretrained_vae_model_name_or_path", stand_ins["vae"], cwd=tmp_path, WANDB_MODE="disabled",
    )  # fmt: skip
    assert "seed repository's layout" in result.stdout and "3 epochs of 2 windows: 3 steps" in result.stdout
    config = load_world_model(tmp_path / "outputs" / "world_model").config  # the default --output_dir
    assert config.num_actions == 18 and config.action_names[:2] == ["TURN_LEFT", "TURN_RIGHT"]
    assert config.context_dropout == pytest.approx(0.1)


def test_the_seeds_full_training_command(stand_ins, tmp_path):
    run_script(
        "train_text_to_image.py",
        "--dataset_name",
        stand_ins["dataset"],
        "--gradient_checkpointing",
        "--learning_rate",
        "5e-5",
        "--train_batch_size",
        4,
        "--dataloader_num_workers",
        0,
        "--num_train_epochs",
        1,
        "--validation_steps",
        1000,
        "--use_cfg",
        "--output_dir",
        "sd-model-finetuned",
        "--lr_scheduler",
        "cosine",
        "--report_to",
        "wandb",
        *TINY,
        "--pretrained_vae_model_name_or_path",
        stand_ins["vae"],
        cwd=tmp_path,
        WANDB_MODE="disabled",
    )  # fmt: skip  (--push_to_hub needs the network)
    assert load_world_model(tmp_path / "sd-model-finetuned").config.num_actions == 18


def test_the_seeds_decoder_fine_tuning_command(stand_ins, tmp_path):
    result = run_script(
        "finetune_autoencoder.py", "--hf_model_folder", stand_ins["vae"], "--dataset_name", stand_ins["dataset"],
        *TINY, "--max_train_steps", 2, "--train_batch_size", 4, "--report_to", "none", "--output_dir", tmp_path / "vae",
    )  # fmt: skip
    assert "decoder" in result.stdout
    tuned, stock = load_vae(tmp_path / "vae"), load_vae(stand_ins["vae"])
    assert torch.equal(tuned.encoder.conv_in.weight, stock.encoder.conv_in.weight)  # encoder frozen
    assert not torch.equal(tuned.decoder.conv_out.weight, stock.decoder.conv_out.weight)


def test_the_seeds_inference_commands_on_a_seed_checkpoint(stand_ins, tmp_path):
    common = ("--model_folder", stand_ins["checkpoint"], "--dataset_name", stand_ins["dataset320"])
    one = run_script("run_inference.py", *common, "--output", tmp_path / "one.png", "--step", 5)
    assert "PSNR" in one.stdout and (tmp_path / "one.png").is_file()
    rollout = run_script(
        "run_autoregressive.py", *common, "--num_frames", 2, "--no_mp4", "--output_dir", tmp_path / "ar"
    )
    assert "FPS" in rollout.stdout and list((tmp_path / "ar").glob("*.gif"))
    # As the seed wrote them, without a dataset: the checkpoint records none, so the error says what to pass.
    bare = run_script(
        "run_inference.py", "--model_folder", stand_ins["checkpoint"], "--output", tmp_path / "x.png", check=False
    )
    assert bare.returncode != 0 and "records no dataset" in bare.stderr and "Traceback" not in bare.stderr
