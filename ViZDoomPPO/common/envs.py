"""The ViZDoom gymnasium environment of the agent phase (GameNGen section 4.1 / appendix A.5).

``DoomEnv`` wraps a ``vizdoom.DoomGame`` configured in code (no .cfg needed for the default game):

* game: ``freedoom1.wad`` map ``E1M1`` (the free counterpart of the paper's DOOM E1M1), or any shipped
  scenario (``basic``, ``deathmatch``, ...), or any wad/map pair. The map is checked against the
  wad's lump directory BEFORE the game starts: ViZDoom blocks forever in ``new_episode()`` otherwise.
* observation (the paper's agent input): the 160x120 RGB frame plus the automap as a 4th channel,
  and the last 32 executed actions.
* recorded frame (the world model's data): the screen at 320x240 RGB by default, in ``info["frame"]``.
* actions: a discrete set of button combinations (``ACTIONS``), frame skip 4, and with probability
  ``repeat_action_prob`` the previous action is repeated instead of the chosen one (the paper's
  "increased probability of repeating the previous action", for smoother, more human play).
* reward: the paper's shaped reward, computed from game variables (``reward_terms``).

The parts live by concept: the game's settings, scenario, wad and map checks in ``common.scenario``, the shaped
reward in ``common.rewards``, the clean-up of the engine's processes in ``common.processes``. This module
re-exports their names, so ``from common.envs import X`` works for all of them.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
import vizdoom as vzd
from gymnasium import spaces
from PIL import Image

from common.processes import (
    RUN_TAG_VARIABLE,
    kill_games_of_run,
    kill_pids,
    kill_vizdoom_descendants,
    tag_games_with_run,
    vizdoom_children,
)
from common.rewards import GAME_VARIABLES, REWARD_WEIGHTS, ExplorationTracker, GameVars, reward_terms
from common.scenario import (
    BUILTIN_SCENARIOS,
    DEFAULT_SCENARIO,
    SCENARIOS_DIR,
    VIZDOOM_DIR,
    DoomConfig,
    ResolvedGame,
    ScenarioError,
    add_env_args,
    available_scenarios,
    config_from_args,
    read_cfg,
    render_resolution,
    resolve_game,
    resolve_wad,
    wad_info,
)

__all__ = [
    "ACTIONS",
    "ACTION_NAMES",
    "BUILTIN_SCENARIOS",
    "BUTTONS",
    "DEFAULT_SCENARIO",
    "GAME_VARIABLES",
    "NOOP_ACTION",
    "REWARD_WEIGHTS",
    "RUN_TAG_VARIABLE",
    "SCENARIOS_DIR",
    "VIZDOOM_DIR",
    "DoomConfig",
    "DoomEnv",
    "ExplorationTracker",
    "GameVars",
    "RecordEpisodes",
    "ResolvedGame",
    "ScenarioError",
    "action_buttons",
    "add_env_args",
    "available_scenarios",
    "config_from_args",
    "dataset_metadata",
    "kill_games_of_run",
    "kill_pids",
    "kill_vizdoom_descendants",
    "observation_space",
    "read_cfg",
    "render_resolution",
    "resize",
    "resolve_game",
    "resolve_wad",
    "reward_terms",
    "tag_games_with_run",
    "wad_info",
]

# ------------------------------------------------------------------------------------------------
# Action set: index = action id in the dataset. Button combinations, not single buttons, because
# the recorded action must describe everything the player did in that step.
# ------------------------------------------------------------------------------------------------
BUTTONS: tuple[str, ...] = (
    "MOVE_FORWARD",
    "MOVE_BACKWARD",
    "TURN_LEFT",
    "TURN_RIGHT",
    "MOVE_LEFT",
    "MOVE_RIGHT",
    "ATTACK",
    "USE",
)
ACTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("NOOP", ()),
    ("FORWARD", ("MOVE_FORWARD",)),
    ("BACKWARD", ("MOVE_BACKWARD",)),
    ("TURN_LEFT", ("TURN_LEFT",)),
    ("TURN_RIGHT", ("TURN_RIGHT",)),
    ("STRAFE_LEFT", ("MOVE_LEFT",)),
    ("STRAFE_RIGHT", ("MOVE_RIGHT",)),
    ("ATTACK", ("ATTACK",)),
    ("USE", ("USE",)),
    ("FORWARD_TURN_LEFT", ("MOVE_FORWARD", "TURN_LEFT")),
    ("FORWARD_TURN_RIGHT", ("MOVE_FORWARD", "TURN_RIGHT")),
    ("FORWARD_ATTACK", ("MOVE_FORWARD", "ATTACK")),
    ("TURN_LEFT_ATTACK", ("TURN_LEFT", "ATTACK")),
    ("TURN_RIGHT_ATTACK", ("TURN_RIGHT", "ATTACK")),
    ("FORWARD_USE", ("MOVE_FORWARD", "USE")),
)
ACTION_NAMES: tuple[str, ...] = tuple(name for name, _ in ACTIONS)
NOOP_ACTION = 0


def action_buttons(action: int) -> list[int]:
    """The 0/1 button vector that ``action`` presses, in ``BUTTONS`` order."""
    pressed = ACTIONS[action][1]
    return [int(button in pressed) for button in BUTTONS]


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-average resize of an HxW(xC) uint8 image (exact 2x2 mean for the common halving)."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    if w == 2 * width and h == 2 * height:
        # Strided integer sums are ~10x faster than a float mean over reshaped axes.
        wide = image.astype(np.uint16)
        total = wide[0::2, 0::2] + wide[1::2, 0::2] + wide[0::2, 1::2] + wide[1::2, 1::2]
        return ((total + 2) >> 2).astype(np.uint8)
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BOX))


class DoomEnv(gym.Env):
    """ViZDoom as a gymnasium env: Dict(frame, actions) observations, Discrete(len(ACTIONS)) actions.

    ``info["frame"]`` holds the recorded-size RGB screen after the step (None when the episode
    ended), ``info["executed_action"]`` the action actually played (differs from the chosen one when
    the previous action was repeated), ``info["reward_terms"]`` the shaped reward by term and
    ``info["game_vars"]`` the GameVars snapshot.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 35}

    def __init__(self, config: DoomConfig | None = None, render_mode: str | None = None) -> None:
        self.config = config = config or DoomConfig()
        if config.reward not in ("paper", "scenario"):
            raise ValueError(f"reward must be 'paper' or 'scenario', not {config.reward!r}")
        self.resolved = resolve_game(config)  # fails fast, before any game process starts
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(len(ACTIONS))
        self.observation_space = observation_space(config)
        self.game: vzd.DoomGame | None = None
        self.vizdoom_pids: list[int] = []
        self._prev_action = NOOP_ACTION
        self._history = np.zeros(config.action_history, dtype=np.int64)
        self._vars = GameVars()
        self._frame: np.ndarray | None = None
        self._obs: dict[str, np.ndarray] | None = None
        self._explore = ExplorationTracker(config.exploration_cell)

    # -- game lifetime ----------------------------------------------------------------------
    def _start_game(self) -> None:
        c, r = self.config, self.resolved
        game = vzd.DoomGame()
        if r.cfg is not None:
            game.load_config(str(r.cfg))
        game.set_doom_game_path(str(r.iwad))
        if r.pwad is not None:
            game.set_doom_scenario_path(str(r.pwad))
        game.set_doom_map(r.map)
        game.set_doom_skill(c.skill)
        _, _, resolution = render_resolution(c.frame_width, c.frame_height)
        game.set_screen_resolution(resolution)
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        game.set_render_hud(c.render_hud)
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_audio_buffer_enabled(False)
        game.set_automap_buffer_enabled(c.use_automap)
        if c.use_automap:
            game.set_automap_mode(vzd.AutomapMode.OBJECTS_WITH_SIZE)
            game.set_automap_rotate(False)
            game.set_automap_render_textures(False)
        game.set_available_buttons([getattr(vzd.Button, b) for b in BUTTONS])
        game.set_available_game_variables([getattr(vzd.GameVariable, v) for v in GAME_VARIABLES])
        game.set_episode_timeout(r.episode_timeout)
        game.set_episode_start_time(1)
        game.set_mode(vzd.Mode.PLAYER)
        # The engine creates ./_vizdoom/ (its user folder) when missing, checking first and then calling mkdir; a game
        # that loses that race to another one started at the same moment (the generator's workers, PPO's vector
        # envs, on a fresh clone) dies with "Failed to create ./_vizdoom/ directory: File exists" and SIGSEGV.
        # Creating it here, where "already there" is fine, closes the race.
        os.makedirs("_vizdoom", mode=0o700, exist_ok=True)
        before = set(vizdoom_children())
        game.init()
        self.game = game
        # Only the engine process this game started (other envs of this process have their own).
        self.vizdoom_pids = [pid for pid in vizdoom_children() if pid not in before]

    def close(self) -> None:
        if self.game is not None:
            try:
                self.game.close()
            finally:
                self.game = None
                kill_pids(self.vizdoom_pids)
                self.vizdoom_pids = []

    # -- observations -------------------------------------------------------------------------
    def _read_vars(self) -> GameVars:
        game = self.game
        return GameVars.from_values([game.get_game_variable(getattr(vzd.GameVariable, v)) for v in GAME_VARIABLES])

    def _observe(self) -> None:
        c = self.config
        state = self.game.get_state()
        screen = state.screen_buffer
        self._frame = resize(screen, c.frame_width, c.frame_height)
        channels = [resize(self._frame, c.obs_width, c.obs_height).transpose(2, 0, 1)]
        if c.use_automap:
            rgb = state.automap_buffer.astype(np.uint16)
            automap = ((rgb[..., 0] + rgb[..., 1] + rgb[..., 2]) // 3).astype(np.uint8)
            channels.append(resize(automap, c.obs_width, c.obs_height)[None])
        self._obs = {"frame": np.concatenate(channels, axis=0), "actions": self._history.copy()}

    @property
    def frame(self) -> np.ndarray | None:
        """The current recorded-size RGB frame (the screen before the next action)."""
        return self._frame

    # -- gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self.game is None:
            self._start_game()
        # ViZDoom's own randomness (monster behaviour, damage rolls) follows the env's seed.
        self.game.set_seed(int(self.np_random.integers(0, 2**31 - 1)))
        self.game.new_episode()
        self._prev_action = NOOP_ACTION
        self._history[:] = NOOP_ACTION
        self._vars = self._read_vars()
        self._explore.reset(self._vars.pos_x, self._vars.pos_y)
        self._observe()
        return self._obs, {"frame": self._frame, "game_vars": self._vars}

    def step(self, action: int):
        if self.game is None or self._obs is None:
            raise RuntimeError("call reset() before step()")
        action = int(action)
        if not 0 <= action < len(ACTIONS):
            raise ValueError(
                f"action {action} out of range: this env has {len(ACTIONS)} actions (0..{len(ACTIONS) - 1})"
            )
        executed = action
        if self.config.repeat_action_prob > 0 and self.np_random.random() < self.config.repeat_action_prob:
            executed = self._prev_action
        game_reward = self.game.make_action(action_buttons(executed), self.config.frame_skip)
        finished = self.game.is_episode_finished()
        new_vars = self._read_vars()
        terms = reward_terms(self._vars, new_vars)
        terms["new_area"] = 0.0 if new_vars.dead else self._explore.update(new_vars.pos_x, new_vars.pos_y)
        self._vars = new_vars
        reward = float(sum(terms.values())) if self.config.reward == "paper" else float(game_reward)
        self._history = np.roll(self._history, -1)
        self._history[-1] = executed
        self._prev_action = executed
        truncated = finished and self.game.is_episode_timeout_reached() and not new_vars.dead
        terminated = finished and not truncated
        if finished:
            self._obs = {"frame": self._obs["frame"], "actions": self._history.copy()}
            self._frame = None
        else:
            self._observe()
        info = {"frame": self._frame, "executed_action": executed, "reward_terms": terms, "game_vars": new_vars}
        return self._obs, reward, terminated, truncated, info

    def render(self):
        return self._frame


def observation_space(config: DoomConfig) -> spaces.Dict:
    """The agent's observation space for ``config`` (computed without starting a game)."""
    channels = 3 + int(config.use_automap)
    return spaces.Dict(
        {
            "frame": spaces.Box(0, 255, (channels, config.obs_height, config.obs_width), dtype=np.uint8),
            "actions": spaces.MultiDiscrete([len(ACTIONS)] * config.action_history),
        }
    )


def dataset_metadata(config: DoomConfig, policy: str, seed: int | None) -> dict[str, Any]:
    """The file-level metadata the recorder writes into every shard (docs/data.md#the-dataset-format)."""
    resolved = resolve_game(config)
    return {
        "scenario": config.scenario,
        "wad": (resolved.pwad or resolved.iwad).name,
        "map": resolved.map,
        "frame_width": config.frame_width,
        "frame_height": config.frame_height,
        "frame_skip": config.frame_skip,
        "repeat_action_prob": config.repeat_action_prob,
        "action_names": list(ACTION_NAMES),
        "action_buttons": [list(buttons) for _, buttons in ACTIONS],
        "reward": config.reward,
        "policy": policy,
        "seed": seed,
        "vizdoom_version": vzd.__version__,
        "env_config": config.to_dict(),
    }


class RecordEpisodes(gym.Wrapper):
    """Records every step of every episode into a ShardWriter (or GifWriter).

    A row holds the frame BEFORE the step and the action actually executed; the episode's last row
    gets ``done=True`` when the game ended the episode (death, exit, game timeout). An episode cut
    short by the caller (a new ``reset()`` or ``close()`` mid-episode) is kept with ``done=False``.
    """

    def __init__(self, env: DoomEnv, writer) -> None:
        super().__init__(env)
        self.writer = writer
        self._frame: np.ndarray | None = None
        self._vars: GameVars | None = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.writer.start_episode()
        self._frame, self._vars = info["frame"], info["game_vars"]
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.writer.add_step(self._frame, info["executed_action"], reward, self._vars.analysis_columns())
        self._frame, self._vars = info["frame"], info["game_vars"]
        if terminated or truncated:
            self.writer.end_episode(done=True)
            self._frame = None
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        try:
            self.writer.close()
        finally:
            self.env.close()
