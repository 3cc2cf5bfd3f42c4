"""Shared test helpers: run the repo's scripts the way a user does, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

REPO = Path(__file__).resolve().parents[1]
AGENT_DIR = REPO / "ViZDoomPPO"

# No test may touch the network; torch must not spin threads against the game processes.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def script_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env


def run_script(
    script: str | Path, *args: str, timeout: float = 300, check: bool = True, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    """Run a repo script with this interpreter; on failure show what it printed."""
    command = [sys.executable, str(REPO / script), *map(str, args)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=script_env(**env), cwd=cwd or REPO
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- "
            f"stderr\n{result.stderr[-4000:]}"
        )
    return result


GENERATOR = "ViZDoomPPO/load_model_generate_dataset.py"


def record_random_episodes(
    out_dir: Path, episodes: int, steps: int, *more: object, check: bool = True
) -> subprocess.CompletedProcess:
    """The agent side's generator with a random policy: ``episodes`` episodes cut at ``steps`` steps, from 2 worker
    processes, into ``out_dir``; ``more`` are further options of load_model_generate_dataset.py."""
    return run_script(
        GENERATOR,
        *("--random_policy", "--episodes", episodes, "--num_workers", 2, "--max_steps_per_episode", steps),
        *("--out_dir", out_dir, *more),
        check=check,
    )


def sd_shaped_vae() -> AutoencoderKL:
    """A random VAE with Stable Diffusion's latent geometry (four levels: downsampling factor 8, 4 latent channels,
    its scaling factor) but few channels: 320x240 frames -> 4x30x40 latents in milliseconds."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 16, 16],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        scaling_factor=0.18215,
    )


def free_port() -> int:
    """A TCP port nobody listens on now (for the rendezvous of multi-process launches)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def random_dataset(tmp_path_factory) -> Path:
    """A small real dataset: 4 random-policy E1M1 episodes of 24 steps from 2 worker processes."""
    out = tmp_path_factory.mktemp("random_ds")
    record_random_episodes(out, 4, 24, "--output", "parquet", "--seed", 7)
    return out


TINY_STEPS = 40  # per episode of the tiny_dataset fixture


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """2 random-policy E1M1 episodes of 40 steps at the tiny preset's 64x48, from 2 worker processes."""
    out = tmp_path_factory.mktemp("tiny_ds")
    record_random_episodes(out, 2, TINY_STEPS, "--frame_size", "64x48", "--seed", 5)
    return out


def save_tiny_checkpoint(folder: Path, action_names: list[str], seed: int = 0, **model_overrides) -> Path:
    """A random-init tiny world model (UNet + VAE + config) saved as a checkpoint folder."""
    import dataclasses

    import torch

    from gamengen.checkpoint import save_world_model
    from gamengen.config import get_world_model_config
    from gamengen.model import build_world_model
    from gamengen.vae import build_vae

    torch.manual_seed(seed)
    config = get_world_model_config("tiny", action_names)
    if model_overrides:
        config.model = dataclasses.replace(config.model, **model_overrides)
    return save_world_model(folder, build_world_model(config), build_vae(config.model), config)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_dataset, tmp_path_factory) -> Path:
    """A random-init tiny checkpoint for the actions of ``tiny_dataset``."""
    from gamengen.episodes import open_dataset

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_wm") / "wm", open_dataset(tiny_dataset).action_names)


@pytest.fixture
def in_process():
    """Run a script's main() here (faster than a subprocess); keep torch's thread count as it was."""
    import torch

    threads = torch.get_num_threads()
    yield lambda module, *args: module.main(module.parse_args([str(a) for a in args]))
    torch.set_num_threads(threads)
