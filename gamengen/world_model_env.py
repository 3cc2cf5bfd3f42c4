"""``WorldModelEnv``: the world model as a gymnasium environment that an agent can act in (docs/world_model_env.md).

The observation is the frame the model generates (uint8 ``(H, W, 3)`` at the dataset's frame size), the action
one of the dataset's discrete actions (``Discrete(len(action_names))``), and every step is one
``GameEngine.step``: the model's own frames, nothing pasted from the real game (no detail carry-over). A world
model predicts no reward and no episode end, so the reward is always 0.0 and an episode is cut only by
``max_episode_steps`` (or gymnasium's ``TimeLimit``).

``reset(seed=...)`` starts from a recorded frame of a held-out episode (``gamengen.starts``): the engine's
context is the recorded frames and actions before it, the first observation is that recorded frame, and the
seed chooses the episode, the start and the sampler's noise, so the same seed gives the same episode.

    from gamengen.world_model_env import WorldModelEnv
    env = WorldModelEnv("runs/quickstart/world_model", "runs/quickstart/dataset", max_episode_steps=200)
    frame, info = env.reset(seed=0)               # a recorded frame of a held-out episode
    frame, reward, terminated, truncated, info = env.step(env.action_space.sample())

Importing this module registers it as ``gamengen/WorldModel-v0`` for ``gymnasium.make``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from gamengen.context import check_dataset_fits_model, episode_context, find_episode
from gamengen.engine import EngineError, GameEngine
from gamengen.episodes import EpisodeDataset, open_dataset
from gamengen.layout import DatasetError
from gamengen.starts import RecordedStart, dataset_fps, heldout_episodes, require_room

ENV_ID = "gamengen/WorldModel-v0"


class WorldModelEnv(gym.Env):
    """A world model played as a gymnasium environment, starting from held-out recorded frames.

    Args:
        model: a world-model checkpoint folder or Hub id, or a ``GameEngine`` built on one (without detail
            carry-over: the observations are the model's own frames).
        dataset: the dataset folder or Hub id (or an open ``EpisodeDataset``) whose recorded frames start episodes;
            it must be of the model's game (frame size, actions).
        episodes: the episodes to start from (indices or ids); default: those the trainer held out.
        start_step: the first generated frame's step in the episode (default: a random step with a full context
            before it and ``start_room`` recorded frames after it).
        start_room: recorded frames a random start leaves after it (1: any step with a full context).
        max_episode_steps: steps after which an episode is truncated (default: never).
        render_mode: "rgb_array" (``render()`` returns the last frame) or None.
        device, dtype, engine_options: for loading ``model`` by path (``GameEngine.from_pretrained``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 8.75}

    def __init__(
        self,
        model: str | os.PathLike | GameEngine,
        dataset: str | os.PathLike | EpisodeDataset,
        *,
        episodes: Sequence[int | str] | None = None,
        start_step: int | None = None,
        start_room: int = 1,
        max_episode_steps: int | None = None,
        render_mode: str | None = "rgb_array",
        device: str | None = None,
        dtype: str = "fp32",
        **engine_options: Any,
    ) -> None:
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode {render_mode!r} is not supported: use 'rgb_array' or None")
        if engine_options.get("carry_detail"):
            raise EngineError(
                "the environment's observations are the model's own frames: leave carry_detail off (it adds the real "
                "start frame's detail back)"
            )
        if isinstance(model, GameEngine):
            if engine_options or device is not None:
                raise EngineError("engine options go to GameEngine.from_pretrained: pass a path, or set them on it")
            self.engine = model
        else:
            self.engine = GameEngine.from_pretrained(model, device=device, dtype=dtype, **engine_options)
        if self.engine.carry_detail:
            raise EngineError(
                "the environment's observations are the model's own frames: build the engine with carry_detail=None"
            )
        self.dataset = dataset if isinstance(dataset, EpisodeDataset) else open_dataset(dataset)
        check_dataset_fits_model(self.dataset, self.engine.config)
        self.episodes, self.episodes_source = heldout_episodes(self.dataset, self.engine.config, episodes)
        self.context_length = self.engine.context_length
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be at least 1 (or None: never truncate), got {max_episode_steps}")
        self.max_episode_steps = max_episode_steps
        self.start_step = start_step
        self._starts = self._find_starts(start_step, max(1, start_room))
        width, height = self.engine.frame_size
        self.observation_space = spaces.Box(0, 255, (height, width, 3), dtype=np.uint8)
        self.action_space = spaces.Discrete(len(self.engine.action_names))
        self.action_names = list(self.engine.action_names)
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": dataset_fps(self.dataset)[0]}
        self.start: RecordedStart | None = None
        self._frame: np.ndarray | None = None
        self._steps = 0

    def _find_starts(self, start_step: int | None, room: int) -> list[RecordedStart]:
        what = "a start" if start_step is None else f"start step {start_step}"
        fix = (
            "Record longer episodes (load_model_generate_dataset.py --max_steps_per_episode), or choose other episodes."
        )
        starts = require_room(self.dataset, self.episodes, self.context_length, room, f"{what} with its room", fix)
        if start_step is None:
            return starts
        fixed = [s for s in starts if s.step == start_step]
        if not fixed:
            raise DatasetError(
                f"start step {start_step} is not a start with a full context in any of the episodes used: choose a "
                f"step from {self.context_length} (the context length) to {max(s.step for s in starts)}"
            )
        return fixed

    # -- gymnasium API ----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start from a recorded frame. ``options``: ``{"episode": index or id, "start_step": step}`` (either)."""
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"episode", "start_step"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}: the options are 'episode' and 'start_step'")
        starts = self._starts
        if "episode" in options:
            wanted = find_episode(self.dataset, options["episode"])
            starts = [s for s in starts if s.episode == wanted]
        if "start_step" in options:
            starts = [s for s in starts if s.step == int(options["start_step"])]
        if not starts:
            raise DatasetError(
                f"no start with a full context matches {options}: a start step is between the context length "
                f"({self.context_length}) and the episode's last step, in one of the episodes used"
            )
        start = starts[int(self.np_random.integers(len(starts)))]
        frames, actions, _ = episode_context(self.dataset, start.episode, start.step, self.context_length)
        engine_seed = int(self.np_random.integers(2**31 - 1))
        self.engine.reset(frames, actions, seed=engine_seed)
        self.start, self._steps = start, 0
        self._frame = frames[-1].copy()
        info = {"episode_id": start.episode_id, "start_step": start.step, "frame_index": 0, "engine_seed": engine_seed}
        return self._frame.copy(), info

    def step(self, action: int | np.integer) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.start is None:
            raise EngineError("call reset() before step(): the environment has no start yet")
        value = np.asarray(action)
        if value.shape != () or not np.issubdtype(value.dtype, np.integer) or not 0 <= int(value) < self.action_space.n:
            raise ValueError(
                f"action {action!r} is not one of the model's {self.action_space.n} actions "
                f"(0..{self.action_space.n - 1}: {', '.join(self.action_names)})"
            )
        self._frame = self.engine.step(int(value))
        self._steps += 1
        truncated = self.max_episode_steps is not None and self._steps >= self.max_episode_steps
        info = {"frame_index": self._steps, "action": self.action_names[int(value)]}
        return self._frame.copy(), 0.0, False, bool(truncated), info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or self._frame is None:
            return None
        return self._frame.copy()

    @property
    def last_step_ms(self) -> float | None:
        """The engine's own time for the last step, in ms (kept out of ``info``: it differs from run to run)."""
        timing = self.engine.last_timing
        return None if timing is None else timing.total_ms


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="gamengen.world_model_env:WorldModelEnv")
