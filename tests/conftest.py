"""Shared test helpers: run the repo's scripts the way a user does, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def run_script(script: str | Path, *args: str, timeout: float = 300, check: bool = True, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run a repo script with this interpreter; on failure show what it printed."""
    command = [sys.executable, str(REPO / script), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=script_env(**env), cwd=cwd or REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="session")
def random_dataset(tmp_path_factory) -> Path:
    """A small real dataset: 4 random-policy E1M1 episodes of 24 steps from 2 worker processes."""
    out = tmp_path_factory.mktemp("random_ds")
    run_script(
        "ViZDoomPPO/load_model_generate_dataset.py",
        "--random_policy",
        "--episodes",
        "4",
        "--num_workers",
        "2",
        "--max_steps_per_episode",
        "24",
        "--output",
        "parquet",
        "--out_dir",
        out,
        "--seed",
        "7",
    )
    return out
