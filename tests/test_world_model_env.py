"""gamengen.WorldModelEnv: the world model as a gymnasium environment, on real 64x48 ViZDoom recordings and a tiny
random-init checkpoint; and the ViZDoomPPO agent's view of it (gamengen.agent_observation) against the real game."""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import save_tiny_checkpoint
from gymnasium.utils.env_checker import check_env

import gamengen
from gamengen.agent_observation import AgentObservation, AgentObservationError, agent_frame
from gamengen.context import episode_context
from gamengen.engine import EngineError, GameEngine
from gamengen.episodes import open_dataset
from gamengen.layout import DatasetError
from gamengen.play import doom_env_module
from gamengen.world_model_env import ENV_ID, WorldModelEnv


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def heldout(tiny_checkpoint, tiny_dataset, tmp_path_factory) -> tuple[Path, str]:
    """The tiny checkpoint as a trainer leaves it: its config names the held-out episode (the dataset's second)."""
    folder = tmp_path_factory.mktemp("heldout") / "wm"
    shutil.copytree(tiny_checkpoint, folder)
    episode_id = open_dataset(tiny_dataset).episode_ids[1]
    config_path = folder / "gamengen_config.json"
    config = json.loads(config_path.read_text())
    config["dataset"] = {**config.get("dataset", {}), "heldout_episodes": [episode_id]}
    config_path.write_text(json.dumps(config))
    return folder, episode_id


def test_gymnasiums_own_checker_passes_without_a_warning(tiny_checkpoint, tiny_dataset):
    assert gamengen.WorldModelEnv is WorldModelEnv
    env = gym.make(ENV_ID, model=str(tiny_checkpoint), dataset=str(tiny_dataset))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)  # also makes fresh ones from the spec, for the render mode and close
    assert [str(w.message) for w in caught] == []
    assert env.observation_space.shape == (48, 64, 3) and env.action_space.n == 15
    env.close()


def test_reset_starts_from_a_recorded_held_out_frame_and_the_seed_repeats_the_episode(heldout, tiny_dataset):
    folder, heldout_id = heldout
    env = WorldModelEnv(folder, tiny_dataset)
    dataset = env.dataset
    assert env.episodes_source.startswith("held out by the trainer")
    starts = set()
    for seed in range(6):
        frame, info = env.reset(seed=seed)
        assert info["episode_id"] == heldout_id  # never a training episode
        episode = dataset.episode_ids.index(heldout_id)
        recorded = dataset.frame(dataset.row_index(episode, info["start_step"] - 1))
        np.testing.assert_array_equal(frame, recorded)  # the first observation is the recorded frame itself
        starts.add(info["start_step"])
    assert len(starts) > 1  # the seed chooses where in the episode

    def episode(seed: int) -> list[np.ndarray]:
        frames = [env.reset(seed=seed)[0]]
        return frames + [env.step(action)[0] for action in (1, 1, 3, 4)]

    first, again = episode(11), episode(11)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_every_observation_is_the_engines_own_frame_for_the_action_taken(tiny_checkpoint, tiny_dataset):
    """No detail carried over and nothing else added: the environment's frames are GameEngine.step's."""
    env = WorldModelEnv(tiny_checkpoint, tiny_dataset)
    _, info = env.reset(seed=4, options={"episode": 0, "start_step": 10})
    actions = [1, 1, 3, 3, 9, 0]
    observed = [env.step(a)[0] for a in actions]
    engine = GameEngine.from_pretrained(tiny_checkpoint, dtype="fp32")
    frames, context_actions, _ = episode_context(env.dataset, 0, 10, engine.context_length)
    engine.reset(frames, context_actions, seed=info["engine_seed"])
    np.testing.assert_array_equal(np.stack(observed), engine.rollout(actions))
    assert env.engine.carry_detail is None


def test_a_200_step_episode_runs_at_the_engines_own_frames_per_second(tiny_checkpoint, tiny_dataset):
    env = WorldModelEnv(tiny_checkpoint, tiny_dataset, max_episode_steps=200)
    env.reset(seed=0)
    env.step(0)  # warm-up, as the engine's own figure leaves its first frame out
    env.reset(seed=0)
    engine_ms, truncated, steps = 0.0, False, 0
    began = time.perf_counter()
    while not truncated:
        _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        engine_ms += env.last_step_ms
        steps += 1
        assert reward == 0.0 and not terminated  # a world model predicts neither reward nor the episode's end
    wall_ms = 1000 * (time.perf_counter() - began)
    assert steps == 200  # truncated exactly at max_episode_steps
    assert engine_ms / wall_ms > 0.9, f"the environment ran at {engine_ms / wall_ms:.1%} of the engine's speed"


def test_bad_input_is_refused_with_the_problem_and_the_fix(tiny_checkpoint, tiny_dataset, tmp_path):
    other = save_tiny_checkpoint(tmp_path / "other", ["NOOP", "JUMP", "CROUCH"])
    with pytest.raises(DatasetError, match=r"the dataset's actions \(NOOP, FORWARD.*are not the checkpoint's"):
        WorldModelEnv(other, tiny_dataset)
    with pytest.raises(EngineError, match="model's own frames"):
        WorldModelEnv(tiny_checkpoint, tiny_dataset, carry_detail=8)
    with pytest.raises(DatasetError, match="start step 39 is not a start .* choose a step from 4"):
        WorldModelEnv(tiny_checkpoint, tiny_dataset, start_step=39, start_room=5)
    env = WorldModelEnv(tiny_checkpoint, tiny_dataset)
    with pytest.raises(EngineError, match=r"call reset\(\) before step\(\)"):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action 15 is not one of the model's 15 actions \(0..14: NOOP, FORWARD"):
        env.step(15)
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"map": "E1M2"})


# -- the ViZDoomPPO agent's view ------------------------------------------------------------------------


@pytest.mark.parametrize("frame_size", [(64, 48), (320, 240)])  # box-upscaled, and the exact 2x2 mean
def test_the_agent_sees_a_frame_as_the_real_game_shows_it(frame_size):
    envs = doom_env_module()
    game = envs.DoomEnv(envs.DoomConfig(frame_width=frame_size[0], frame_height=frame_size[1]))
    try:
        observations = [game.reset(seed=1)]
        observations += [game.step(a)[::4] for a in (1, 3, 3)]  # (obs, info) after each step
    finally:
        game.close()
    for obs, info in observations:
        converted = agent_frame(info["frame"], 160, 120).transpose(2, 0, 1)
        np.testing.assert_array_equal(converted, obs["frame"][:3])  # the game's own RGB channels, exactly


def test_the_world_model_gives_the_agent_its_observation_with_a_blank_automap(tiny_checkpoint, tiny_dataset):
    envs = doom_env_module()
    agent_space = envs.observation_space(envs.DoomConfig())  # (4, 120, 160) frame + automap, 32 actions
    env = AgentObservation(WorldModelEnv(tiny_checkpoint, tiny_dataset), agent_space)
    obs, info = env.reset(seed=0)
    assert obs in agent_space and not obs["actions"].any()
    for action in (1, 3, 9):
        obs, _, _, _, info = env.step(action)
        assert obs in agent_space
    assert obs["actions"][-3:].tolist() == [1, 3, 9] and not obs["actions"][:-3].any()
    np.testing.assert_array_equal(obs["frame"][:3], agent_frame(info["frame"], 160, 120).transpose(2, 0, 1))
    assert not obs["frame"][3].any()  # the world model draws no automap
    small = gym.spaces.Dict({"frame": agent_space["frame"], "actions": gym.spaces.MultiDiscrete([3] * 32)})
    with pytest.raises(AgentObservationError, match="trained on another action set"):
        AgentObservation(WorldModelEnv(tiny_checkpoint, tiny_dataset), small)
