"""The ViZDoom env: spaces, actions, the paper's reward terms, scenario and map checks."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import AGENT_DIR, REPO

from common.envs import (
    ACTION_NAMES,
    ACTIONS,
    BUTTONS,
    REWARD_WEIGHTS,
    DoomConfig,
    DoomEnv,
    ExplorationTracker,
    GameVars,
    ScenarioError,
    action_buttons,
    available_scenarios,
    resolve_game,
    reward_terms,
    wad_info,
)

SMALL = {"frame_width": 160, "frame_height": 120}


@pytest.fixture(scope="module")
def env():
    game = DoomEnv(DoomConfig(repeat_action_prob=0.0))
    yield game
    game.close()


def test_reset_and_step_give_the_documented_spaces(env):
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert obs["frame"].shape == (4, 120, 160) and obs["frame"].dtype == np.uint8  # RGB + automap
    assert obs["actions"].shape == (32,) and not obs["actions"].any()  # history starts as NOOPs
    assert info["frame"].shape == (240, 320, 3) and info["frame"].dtype == np.uint8
    obs, reward, terminated, truncated, info = env.step(ACTION_NAMES.index("FORWARD"))
    assert env.observation_space.contains(obs)
    assert isinstance(reward, float) and not terminated and not truncated
    assert info["frame"].shape == (240, 320, 3)
    assert obs["actions"][-1] == ACTION_NAMES.index("FORWARD")


def test_observation_is_the_recorded_frame_downscaled(env):
    obs, info = env.reset(seed=0)
    frame = info["frame"].astype(np.float64)
    pooled = frame.reshape(120, 2, 160, 2, 3).mean(axis=(1, 3)).transpose(2, 0, 1)
    assert np.abs(pooled - obs["frame"][:3]).max() <= 1.0


def test_moving_changes_the_view_and_history_holds_executed_actions(env):
    _, info = env.reset(seed=1)
    first = info["frame"]
    taken = [ACTION_NAMES.index(a) for a in ["TURN_LEFT", "TURN_LEFT", "FORWARD", "STRAFE_RIGHT"]]
    for action in taken:
        obs, *_ = env.step(action)
    assert list(obs["actions"][-4:]) == taken
    assert np.abs(env.frame.astype(int) - first.astype(int)).mean() > 5  # the player really turned


def test_repeat_action_probability_replays_the_previous_action():
    env = DoomEnv(DoomConfig(repeat_action_prob=0.6, use_automap=False, **SMALL))
    try:
        env.reset(seed=5)
        previous, repeats = 0, 0
        chosen = [1, 3] * 40  # alternate, so a repeat is always visible
        for action in chosen:
            *_, info = env.step(action)
            executed = info["executed_action"]
            assert executed in (action, previous)
            repeats += executed != action
            previous = executed
        assert 0.3 < repeats / len(chosen) < 0.9
    finally:
        env.close()


def test_action_table_is_complete_and_documented():
    assert ACTION_NAMES[0] == "NOOP" and action_buttons(0) == [0] * len(BUTTONS)
    for needed in ("FORWARD", "BACKWARD", "TURN_LEFT", "TURN_RIGHT", "STRAFE_LEFT", "STRAFE_RIGHT", "ATTACK", "USE"):
        assert needed in ACTION_NAMES
    vectors = {tuple(action_buttons(i)) for i in range(len(ACTIONS))}
    assert len(vectors) == len(ACTIONS) == len(set(ACTION_NAMES))  # no two actions press the same buttons
    manual = (REPO / "docs" / "agent.md").read_text()
    for index, (name, buttons) in enumerate(ACTIONS):
        row = re.search(rf"^\|\s*{index}\s*\|\s*`{name}`\s*\|([^|]*)\|", manual, re.MULTILINE)
        assert row, f"docs/agent.md action table lacks row {index} {name}"
        assert all(button in row.group(1) for button in buttons)


# ---------------------------------------------------------------------------------------------
# Reward terms on constructed transitions (paper appendix A.5)
# ---------------------------------------------------------------------------------------------
BASE = GameVars(health=100, armor=0, ammo=50, kills=0, hits_dealt=0, hits_taken=0, items=0, secrets=0, weapons=2)


@pytest.mark.parametrize(
    ("change", "term", "expected"),
    [
        ({"hits_taken": 2}, "player_hit", -200.0),
        ({"dead": True, "health": 0}, "death", -5000.0),
        ({"hits_dealt": 1}, "enemy_hit", 300.0),
        ({"kills": 1}, "kill", 1000.0),
        ({"items": 1}, "pickup", 100.0),
        ({"weapons": 3}, "pickup", 100.0),
        ({"secrets": 1}, "secret", 500.0),
        ({"health": 90}, "health", -100.0),
        ({"health": 125}, "health", 250.0),
        ({"armor": 100}, "armor", 1000.0),
        ({"ammo": 70}, "ammo", 200.0),  # 10 * max(0, +20)
        ({"ammo": 49}, "ammo", -1.0),  # min(0, -1): firing costs little
    ],
)
def test_each_reward_term(change, term, expected):
    terms = reward_terms(BASE, GameVars(**{**BASE.__dict__, **change}))
    assert terms[term] == expected
    assert all(v == 0 for k, v in terms.items() if k != term and k != "health")


def test_dying_costs_the_penalty_and_the_remaining_health():
    terms = reward_terms(GameVars(health=30), GameVars(health=-20, dead=True))
    assert terms["death"] == REWARD_WEIGHTS["death"]
    assert terms["health"] == -300.0  # health clamped at 0


def test_new_area_reward_grows_with_distance_and_is_paid_once():
    tracker = ExplorationTracker(cell_size=64)
    tracker.reset(10, 10)
    assert tracker.update(20, 20) == 0  # same cell as the start
    assert tracker.update(70, 10) == 20 * (1 + 0.5 * 1)
    assert tracker.update(70, 10) == 0  # visited
    assert tracker.update(10 + 64 * 3, 10 - 64 * 2) == 20 * (1 + 0.5 * 5)
    tracker.reset(0, 0)
    assert tracker.update(70, 10) == 30.0  # a new episode forgets the visited cells


def test_firing_in_a_real_game_costs_ammo():
    env = DoomEnv(DoomConfig(repeat_action_prob=0.0, use_automap=False, **SMALL))
    try:
        env.reset(seed=2)
        ammo_terms = []
        for _ in range(12):
            *_, info = env.step(ACTION_NAMES.index("ATTACK"))
            ammo_terms.append(info["reward_terms"]["ammo"])
        assert sum(ammo_terms) <= -3  # several pistol shots, -1 each
        assert info["game_vars"].ammo < 50
    finally:
        env.close()


# ---------------------------------------------------------------------------------------------
# Scenarios, wads and maps
# ---------------------------------------------------------------------------------------------
def test_a_missing_wad_names_each_path_tried_once_and_the_shipped_wads(tmp_path):
    missing = tmp_path / "nope.wad"
    with pytest.raises(ScenarioError) as error:
        resolve_game(DoomConfig(wad=str(missing)))
    message = str(error.value)
    assert (
        message.split("tried ", 1)[1].count(str(missing)) == 1
        and "freedoom1.wad" in message
        and "existing .wad" in message
    )


def test_wad_directory_lists_the_maps():
    iwad = resolve_game(DoomConfig()).iwad
    kind, maps = wad_info(iwad)
    assert kind == "IWAD" and "E1M1" in maps and "MAP01" not in maps


def test_missing_map_fails_fast_with_the_fix():
    # ViZDoom itself would block forever in new_episode(); the timeout bounds the test if it regressed.
    command = [
        sys.executable,
        str(AGENT_DIR / "load_model_generate_dataset.py"),
        "--random_policy",
        "--scenario",
        "freedoom1",
        "--map",
        "MAP01",
        "--out_dir",
        "/tmp/never-written",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "map 'MAP01' is not in freedoom1.wad" in result.stderr and "E1M1" in result.stderr


def test_cfg_without_a_map_is_caught(tmp_path):
    cfg = tmp_path / "mine.cfg"
    cfg.write_text("doom_game_path = freedoom1.wad\nepisode_timeout = 100\n")  # names no map -> MAP01
    with pytest.raises(ScenarioError, match="MAP01"):
        DoomEnv(DoomConfig(scenario=str(cfg)))


def test_unknown_scenario_lists_the_choices():
    with pytest.raises(ScenarioError, match="basic"):
        DoomEnv(DoomConfig(scenario="doom4"))
    assert {"e1m1", "basic", "deathmatch", "health_gathering"} <= set(available_scenarios())


def test_shipped_scenario_runs():
    env = DoomEnv(DoomConfig(scenario="basic", use_automap=False, **SMALL))
    try:
        obs, info = env.reset(seed=0)
        assert info["frame"].shape == (120, 160, 3)
        env.step(ACTION_NAMES.index("ATTACK"))
    finally:
        env.close()


def test_recorder_rows_pair_each_frame_with_the_action_taken_at_it(tmp_path):
    """Window semantics: row t holds the frame BEFORE action t; action t produced row t+1's frame."""
    import pyarrow.parquet as pq

    from common.envs import RecordEpisodes, dataset_metadata
    from common.utils import ShardWriter, decode_frame, list_shards

    config = DoomConfig(repeat_action_prob=0.0, use_automap=False, episode_timeout=40, **SMALL)
    writer = ShardWriter(tmp_path, dataset_metadata(config, "test", 0), run_id="t")
    env = RecordEpisodes(DoomEnv(config), writer)
    try:
        _, info = env.reset(seed=4)
        seen, actions = [info["frame"]], []
        for step in range(12):  # 40 tics / frame skip 4 = 10 steps: the game ends the episode
            action = [3, 1, 4, 7][step % 4]
            _, _, terminated, truncated, info = env.step(action)
            actions.append(action)
            if terminated or truncated:
                break
            seen.append(info["frame"])
    finally:
        env.close()
    table = pq.read_table(list_shards(tmp_path)).to_pandas()
    assert list(table.action) == actions
    assert table.done.tolist() == [False] * (len(actions) - 1) + [True]
    for row, frame in enumerate(seen):
        assert np.array_equal(decode_frame(table.frame[row]), frame)


GAME_AT = """
import sys, time
sys.path.insert(0, {agent!r})
from common.envs import DoomConfig, DoomEnv
env = DoomEnv(DoomConfig(frame_width=160, frame_height=120))
time.sleep(max(0.0, {start} - time.time()))
env.reset(seed=0)
env.close()
"""


def test_games_started_together_in_a_fresh_folder_all_start(tmp_path):
    """ViZDoom creates ./_vizdoom/ when missing and crashed (SIGSEGV, "Failed to create ./_vizdoom/ directory: File
    exists") when another game made it first; a fresh clone's generator workers hit that in CI."""
    import time

    start = time.time() + 6  # every process is imported and waiting by then; they start their games together
    code = GAME_AT.format(agent=str(AGENT_DIR), start=start)
    games = [
        subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(4)
    ]
    outputs = [game.communicate(timeout=120)[0].decode(errors="replace") for game in games]
    for game, output in zip(games, outputs, strict=True):
        assert game.returncode == 0, output
        assert "Failed to create" not in output
    assert (tmp_path / "_vizdoom").is_dir()
