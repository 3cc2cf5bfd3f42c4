"""run_agent_in_world_model.py: a real (tiny) PPO agent of ViZDoomPPO/ plays inside a tiny random-init world model
and in the real ViZDoom game, judged by sharpness and a (tiny) inverse-dynamics model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_script, save_tiny_checkpoint
from PIL import Image

from gamengen.game_look import LookJudge, LookRange, look_range, steps_in_look

SCRIPT = "run_agent_in_world_model.py"


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> Path:
    """The smallest PPO run of tests/test_ppo.py (one rollout of 64 steps on 2 games), at the tiny preset's 64x48."""
    root = tmp_path_factory.mktemp("ppo")
    run_script(
        "ViZDoomPPO/train_ppo_parallel.py",
        *("--total_timesteps", 128, "--n_envs", 2, "--n_steps", 64, "--batch_size", 64, "--n_epochs", 1),
        *("--episode_timeout", 120, "--frame_size", "64x48", "--log_dir", root / "logs", "--run_name", "tiny"),
    )
    return root / "logs" / "models" / "tiny" / "best_model.zip"


@pytest.fixture(scope="module")
def idm(tiny_dataset, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("idm") / "idm"
    run_script(
        "train_idm.py",
        "--dataset_name",
        tiny_dataset,
        "--output_dir",
        folder,
        "--max_train_steps",
        5,
        "--train_batch_size",
        8,
    )
    return folder


def model_options(checkpoint: Path, dataset: Path, out: Path) -> list[object]:
    return ["--model_folder", checkpoint, "--dataset_name", dataset, "--output_dir", out]


def test_the_trained_agent_plays_in_the_world_model_and_in_the_game_and_both_are_compared(
    agent, idm, tiny_checkpoint, tiny_dataset, tmp_path
):
    out = tmp_path / "compare"
    result = run_script(
        SCRIPT,
        *model_options(tiny_checkpoint, tiny_dataset, out),
        "--agent",
        agent,
        "--idm",
        idm,
        *("--episodes", 2, "--steps", 12, "--window", 4),
    )
    comparison = json.loads((out / "comparison.json").read_text())
    world, real = comparison["world_model"], comparison["real_game"]
    assert world["steps"] == 24 and 0 < real["steps"] <= 24  # the real game may end an episode (death)
    for side in (world, real):
        assert sum(side["actions"].values()) == pytest.approx(1.0) and len(side["actions"]) == 15
        assert len(side["episodes"]) == 2 and side["fps"] > 0
    assert world["episodes"][0]["start"].endswith("step 4")  # the first full context of an episode
    judged = comparison["judge"]
    allowed = judged["range"]  # what the real game's 4-step windows span
    assert 0 < allowed["low"] < allowed["high"] and 0 <= allowed["idm_low"] <= 1
    assert 0 <= judged["real_game"]["idm_rate"] <= 1 and 0 <= judged["world_model"]["idm_rate"] <= 1
    assert 0 <= comparison["action_tv_distance"] <= 1
    assert comparison["settings"]["automap"] == "blank in the world model, the game's own in the real game"
    assert world["engine_fps"] >= world["fps"]  # the agent's own time comes on top of the model's
    report = (out / "report.md").read_text()
    assert "| steps in the game's look, mean (min-max) |" in report and "| FORWARD |" in report
    assert "# The agent inside the world model" in result.stdout
    with Image.open(out / "episode0.gif") as gif:
        assert gif.n_frames == 13  # the start and every step of the first world-model episode


def test_a_random_world_model_leaves_the_games_look_and_the_real_game_keeps_it(tiny_checkpoint, tiny_dataset, tmp_path):
    """An untrained model draws noise: the judge stops it in the first window, and lets most real episodes (the same
    random policy, the same steps, each judged by the other real episodes' range) run to the end."""
    out = tmp_path / "random"
    run_script(
        SCRIPT,
        *model_options(tiny_checkpoint, tiny_dataset, out),
        "--random_policy",
        *("--episodes", 3, "--steps", 16, "--window", 4, "--no_gif", "--blank_real_automap"),
    )
    comparison = json.loads((out / "comparison.json").read_text())
    world, real = comparison["judge"]["world_model"], comparison["judge"]["real_game"]
    assert world["left_look"] == 3 and world["steps_in_look"] == [0, 0, 0]
    assert all("sharpness" in v["left_because"] for v in world["verdicts"])
    lengths = [e["steps"] for e in comparison["real_game"]["episodes"]]
    assert sum(kept == steps for kept, steps in zip(real["steps_in_look"], lengths, strict=True)) >= 2
    assert comparison["judge"]["range"]["idm_low"] is None  # no --idm: the actions were not judged
    assert comparison["settings"]["automap"] == "blank in both"
    assert not (out / "episode0.gif").exists()


def test_the_judge_counts_the_steps_before_the_first_window_outside_the_real_games_range():
    judge = LookJudge(window=3)
    real = [np.array([1.0, 0.6, 0.8, 1.4, 1.2]), np.array([0.9, 1.1, 1.0])]
    allowed = look_range(real, [None, None], judge)
    assert (allowed.low, allowed.high, allowed.idm_low) == (pytest.approx(0.8), pytest.approx(3.4 / 3), None)
    verdict = steps_in_look(np.array([1.0, 0.9, 1.0, 1.0, 0.9, 0.2, 0.2, 0.2]), None, judge, allowed)
    assert (
        verdict.steps_in_look == 3 and verdict.left_because == "blurred (sharpness 0.7 < the game's 0.8) at steps 4-6"
    )
    wider = look_range(real, [None, None], LookJudge(window=3, margin=2.0))
    assert (wider.low, wider.high) == (pytest.approx(0.4), pytest.approx(6.8 / 3))
    hits = np.array([1, 1, 1, 0, 0, 0, 1, 1], dtype=bool)
    verdict = steps_in_look(np.ones(8), hits, judge, LookRange(0.5, 2.0, idm_low=0.4))
    assert verdict.steps_in_look == 2 and verdict.left_because == (
        "actions unreadable (IDM 0.33 < the game's 0.40) at steps 3-5"
    )
    short = steps_in_look(np.ones(2), None, judge, allowed)  # shorter than a window: not judged
    assert short.steps_in_look == 2 and short.left_because is None and not short.judged


def test_a_model_of_another_game_and_a_pasted_detail_are_refused(tiny_dataset, tmp_path):
    other = save_tiny_checkpoint(tmp_path / "other", ["NOOP", "JUMP", "CROUCH"])
    result = run_script(SCRIPT, *model_options(other, tiny_dataset, tmp_path / "o"), "--random_policy", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "are not the checkpoint's" in result.stderr and "use a dataset recorded with the action set" in result.stderr
    pasted = run_script(
        SCRIPT,
        *model_options(other, tiny_dataset, tmp_path / "p"),
        "--random_policy",
        "--carry_detail",
        8,
        check=False,
    )
    assert pasted.returncode == 2 and "the agent must see the model's own frames" in pasted.stderr
