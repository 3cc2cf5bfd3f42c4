"""The world model's frames as the ViZDoomPPO agent sees the game (docs/world_model_env.md#the-ppo-agent-inside).

The agent (``ViZDoomPPO/common/envs.py``) does not look at the recorded frame itself. Its observation is a dict:

* ``frame``: uint8 ``(C, 120, 160)`` (its ``obs_height`` x ``obs_width``, channels first): the recorded frame
  resized to the observation size (an exact 2x2 mean when the frame is twice the size, else a box filter; the
  quickstart's 64x48 frames are box-upscaled to 160x120), plus, when ``C == 4``, the game's automap as a 4th
  channel;
* ``actions``: the last K actions played (K = 32), oldest first, NOOP (0) before the episode's first.

``AgentObservation`` wraps a ``WorldModelEnv`` so that it gives exactly that: the generated frame resized the way
the game resizes its own frame (a test compares the two on a real ViZDoom frame), and the action history of the
actions the agent took. A world model generates no automap: the 4th channel is all zeros, as if the automap were
blank (``run_agent_in_world_model.py --blank_real_automap`` shows the agent the same blank channel in the real
game, to measure what the missing automap alone changes).

The agent's observation space is read from the agent itself (``PPO.load(...).observation_space``), so this
module imports nothing from ``ViZDoomPPO/``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image


class AgentObservationError(ValueError):
    """An agent whose observations this wrapper cannot produce (the message says what it expects)."""


def agent_frame(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 frame at ``width`` x ``height``, resized as the agent's game resizes its frames."""
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    if w == 2 * width and h == 2 * height:  # the game's exact 2x2 mean, rounded half up
        wide = frame.astype(np.uint16)
        total = wide[0::2, 0::2] + wide[1::2, 0::2] + wide[0::2, 1::2] + wide[1::2, 1::2]
        return ((total + 2) >> 2).astype(np.uint8)
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BOX))


def check_agent_space(agent_space: spaces.Space, num_actions: int) -> tuple[int, int, int, int]:
    """(channels, height, width, history length) of a ViZDoomPPO agent's observation space, or an error."""
    expected = "Dict(frame: Box uint8 (3 or 4, H, W), actions: MultiDiscrete of the model's actions)"
    if not isinstance(agent_space, spaces.Dict) or set(agent_space.spaces) != {"frame", "actions"}:
        raise AgentObservationError(
            f"the agent's observations are {agent_space}, not the ViZDoomPPO agent's {expected}"
        )
    frame, actions = agent_space["frame"], agent_space["actions"]
    if (
        not isinstance(frame, spaces.Box)
        or frame.dtype != np.uint8
        or len(frame.shape) != 3
        or frame.shape[0] not in (3, 4)
    ):
        raise AgentObservationError(f"the agent's frame is {frame}, not {expected}")
    if not isinstance(actions, spaces.MultiDiscrete) or len(actions.shape) != 1 or np.any(actions.nvec != num_actions):
        raise AgentObservationError(
            f"the agent's action history is {actions}, but the world model has {num_actions} actions: the agent was "
            "trained on another action set"
        )
    channels, height, width = (int(v) for v in frame.shape)
    return channels, height, width, int(actions.shape[0])


class AgentObservation(gym.Wrapper):
    """A ``WorldModelEnv`` (frames ``(H, W, 3)``) seen through the ViZDoomPPO agent's eyes: ``agent_space``."""

    def __init__(self, env: gym.Env, agent_space: spaces.Dict) -> None:
        super().__init__(env)
        self.channels, self.height, self.width, self.history_length = check_agent_space(
            agent_space, int(env.action_space.n)
        )
        self.observation_space = agent_space
        self._history = np.zeros(self.history_length, dtype=np.int64)

    def observe(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        image = agent_frame(frame, self.width, self.height).transpose(2, 0, 1)
        if self.channels == 4:  # the automap: the world model has none
            image = np.concatenate([image, np.zeros((1, self.height, self.width), dtype=np.uint8)])
        return {"frame": np.ascontiguousarray(image), "actions": self._history.copy()}

    def reset(self, **kwargs: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        frame, info = self.env.reset(**kwargs)
        self._history[:] = 0
        return self.observe(frame), {**info, "frame": frame}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        frame, reward, terminated, truncated, info = self.env.step(action)
        self._history = np.roll(self._history, -1)
        self._history[-1] = int(action)
        return self.observe(frame), reward, terminated, truncated, {**info, "frame": frame}
