"""train_ppo_parallel.py: a real PPO run on 2 parallel games that records its episodes, resumes,
and whose model drives the dataset generator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_script, script_env

from common.envs import DoomConfig, observation_space
from common.utils import METADATA_KEY, list_shards

TRAIN = "ViZDoomPPO/train_ppo_parallel.py"
# Short episodes (120 tics = 30 agent steps) so that the game finishes several during the smoke run.
SMALL_RUN = [
    "--n_envs",
    "2",
    "--n_steps",
    "64",
    "--batch_size",
    "64",
    "--n_epochs",
    "1",
    "--episode_timeout",
    "120",
    "--frame_size",
    "160x120",
]


def train_smoke_run(root: Path, total_timesteps: int, *more: object) -> subprocess.CompletedProcess:
    """The small run named smoke, logged under root/logs with a checkpoint every 128 steps."""
    return run_script(
        TRAIN,
        *("--total_timesteps", total_timesteps, *SMALL_RUN, "--checkpoint_freq", 128),
        *("--log_dir", root / "logs", "--run_name", "smoke", *more),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo")
    record = root / "rec"
    result = train_smoke_run(root, 256, "--record_dir", record)
    return root, record, result


def test_smoke_run_writes_loadable_models(trained):
    from stable_baselines3 import PPO

    root, _, result = trained
    run_dir = root / "logs" / "models" / "smoke"
    for name in ("best_model.zip", "final_model.zip"):
        model = PPO.load(run_dir / name, device="cpu")
        assert model.action_space.n == 15
    assert PPO.load(run_dir / "final_model.zip", device="cpu").num_timesteps == 256
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.zip")) == ["ppo_128_steps.zip", "ppo_256_steps.zip"]
    config = DoomConfig.from_dict(json.loads((run_dir / "env_config.json").read_text()))
    assert config.episode_timeout == 120 and config.frame_width == 160
    assert list((root / "logs" / "tensorboard").glob("smoke*/events.out.tfevents.*"))
    assert "trained 256 steps" in result.stdout


def test_a_saved_agent_loads_with_plain_ppo_load_from_outside_the_agent_folder(trained, tmp_path):
    """Its policy used to name the package `common`, which only imports with ViZDoomPPO/ on sys.path."""
    root, _, _ = trained
    model = root / "logs" / "models" / "smoke" / "best_model.zip"
    code = f"from stable_baselines3 import PPO; print(PPO.load({str(model)!r}, device='cpu').action_space.n)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=script_env()
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "15"


def test_every_training_episode_is_recorded(trained):
    _, record, _ = trained
    shards = list_shards(record)
    table = pq.read_table(shards).to_pandas()
    assert len(table) == 256  # every agent step of both games is a row
    workers = {e.split("-w")[1][:2] for e in table.episode_id.unique()}
    assert workers == {"00", "01"}
    finished = table[table.done]
    assert len(finished) >= 4  # 30-step episodes over 128 steps per game
    for _, rows in table.groupby("episode_id"):
        assert list(rows.step_id) == list(range(len(rows)))
        assert rows.done.sum() <= 1 and (not rows.done.any() or rows.done.iloc[-1])
    meta = json.loads(pq.read_schema(shards[0]).metadata[METADATA_KEY])
    assert meta["policy"] == "ppo-training:smoke" and (meta["frame_width"], meta["frame_height"]) == (160, 120)


def test_resume_continues_the_step_count(trained):
    from stable_baselines3 import PPO

    root, _, _ = trained
    result = train_smoke_run(root, 384, "--resume", "latest")
    assert "resumed from" in result.stdout and "at step 256" in result.stdout
    assert PPO.load(root / "logs" / "models" / "smoke" / "final_model.zip", device="cpu").num_timesteps == 384


def test_trained_agent_generates_a_dataset_with_its_own_game_settings(trained, tmp_path):
    root, _, _ = trained
    model = root / "logs" / "models" / "smoke" / "best_model.zip"
    run_script(
        "ViZDoomPPO/load_model_generate_dataset.py",
        "--model_path",
        model,
        "--episodes",
        "2",
        "--num_workers",
        "2",
        "--out_dir",
        tmp_path,
    )
    table = pq.read_table(list_shards(tmp_path)).to_pandas()
    assert table.episode_id.nunique() == 2
    meta = json.loads(pq.read_schema(list_shards(tmp_path)[0]).metadata[METADATA_KEY])
    assert meta["policy"].endswith("best_model.zip")
    assert meta["frame_width"] == 160  # env_config.json of the run was applied
    # the episode timeout of the training run (30 steps) ended both episodes
    assert table.groupby("episode_id").size().max() <= 31 and table.done.sum() == 2


def test_without_a_policy_option_the_newest_trained_agent_records(trained, tmp_path):
    """The seed repository's command names no policy: it used the trained agent."""
    root, _, _ = trained
    result = run_script(
        "ViZDoomPPO/load_model_generate_dataset.py",
        "--log_dir",
        root / "logs",
        "--episodes",
        "1",
        "--out_dir",
        tmp_path,
    )
    assert f"using the newest trained agent: {root / 'logs' / 'models' / 'smoke' / 'best_model.zip'}" in result.stdout
    meta = json.loads(pq.read_schema(list_shards(tmp_path)[0]).metadata[METADATA_KEY])
    assert meta["policy"].endswith("best_model.zip")

    nothing = run_script("ViZDoomPPO/load_model_generate_dataset.py", "--log_dir", tmp_path / "no_logs", check=False)
    assert nothing.returncode == 2 and "no trained agent found" in nothing.stderr
    assert "--model_path" in nothing.stderr and "--random_policy" in nothing.stderr


def test_observation_mismatch_is_refused(trained, tmp_path):
    root, _, _ = trained
    model = root / "logs" / "models" / "smoke" / "best_model.zip"
    result = run_script(
        "ViZDoomPPO/load_model_generate_dataset.py",
        "--model_path",
        model,
        "--no_automap",
        "--out_dir",
        tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert (
        "expects observations" in result.stderr
        and str(tuple(observation_space(DoomConfig(use_automap=False))["frame"].shape)) in result.stderr
    )
