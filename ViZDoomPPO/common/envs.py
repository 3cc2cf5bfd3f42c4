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
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import vizdoom as vzd
from gymnasium import spaces
from PIL import Image

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


# ------------------------------------------------------------------------------------------------
# Reward shaping (paper appendix A.5). Pure functions of two game-variable snapshots, so every term
# can be unit-tested on a constructed transition.
# ------------------------------------------------------------------------------------------------
REWARD_WEIGHTS = {
    "player_hit": -100.0,  # per hit taken
    "death": -5000.0,
    "enemy_hit": 300.0,  # per hit dealt
    "kill": 1000.0,
    "pickup": 100.0,  # per item or weapon picked up
    "secret": 500.0,
    "new_area": 20.0,  # * (1 + 0.5 * L1 distance), see ExplorationTracker
    "health": 10.0,  # * delta
    "armor": 10.0,  # * delta
    "ammo": 10.0,  # * max(0, delta) + min(0, delta)
}

# The ViZDoom variables the reward and the recorded analysis columns read, in GameVars field order.
GAME_VARIABLES = (
    "HEALTH",
    "ARMOR",
    "AMMO2",  # bullets (pistol / chaingun share them)
    "AMMO3",  # shells
    "AMMO5",  # rockets
    "AMMO6",  # cells
    "KILLCOUNT",
    "HITCOUNT",
    "HITS_TAKEN",
    "ITEMCOUNT",
    "SECRETCOUNT",
    "WEAPON1",
    "WEAPON2",
    "WEAPON3",
    "WEAPON4",
    "WEAPON5",
    "WEAPON6",
    "WEAPON7",
    "DEAD",
    "POSITION_X",
    "POSITION_Y",
    "ANGLE",
    "SELECTED_WEAPON_AMMO",
)


@dataclass(frozen=True)
class GameVars:
    """A snapshot of the game variables the reward needs."""

    health: float = 100.0
    armor: float = 0.0
    ammo: float = 50.0  # sum of the distinct ammo pools (bullets, shells, rockets, cells)
    kills: float = 0.0
    hits_dealt: float = 0.0
    hits_taken: float = 0.0
    items: float = 0.0
    secrets: float = 0.0
    weapons: float = 2.0  # number of weapon slots owned (fist + pistol at start)
    dead: bool = False
    pos_x: float = 0.0
    pos_y: float = 0.0
    angle: float = 0.0
    selected_ammo: float = 0.0

    @classmethod
    def from_values(cls, values: list[float] | np.ndarray) -> GameVars:
        v = dict(zip(GAME_VARIABLES, (float(x) for x in values), strict=True))
        return cls(
            health=v["HEALTH"],
            armor=v["ARMOR"],
            ammo=v["AMMO2"] + v["AMMO3"] + v["AMMO5"] + v["AMMO6"],
            kills=v["KILLCOUNT"],
            hits_dealt=v["HITCOUNT"],
            hits_taken=v["HITS_TAKEN"],
            items=v["ITEMCOUNT"],
            secrets=v["SECRETCOUNT"],
            weapons=sum(v[f"WEAPON{i}"] > 0 for i in range(1, 8)),
            dead=v["DEAD"] > 0,
            pos_x=v["POSITION_X"],
            pos_y=v["POSITION_Y"],
            angle=v["ANGLE"],
            selected_ammo=v["SELECTED_WEAPON_AMMO"],
        )

    def analysis_columns(self) -> tuple[float, ...]:
        """Values of the dataset's optional columns (health, armor, ammo, kills, pos_x, pos_y, angle)."""
        return (self.health, self.armor, self.selected_ammo, self.kills, self.pos_x, self.pos_y, self.angle)


def reward_terms(prev: GameVars, cur: GameVars) -> dict[str, float]:
    """The paper's shaped reward for the transition ``prev -> cur``, term by term (before new_area).

    Health is clamped at 0 so that dying costs the death penalty plus the health that was left.
    """
    w = REWARD_WEIGHTS
    d_ammo = cur.ammo - prev.ammo
    return {
        "player_hit": w["player_hit"] * max(0.0, cur.hits_taken - prev.hits_taken),
        "death": w["death"] if (cur.dead and not prev.dead) else 0.0,
        "enemy_hit": w["enemy_hit"] * max(0.0, cur.hits_dealt - prev.hits_dealt),
        "kill": w["kill"] * max(0.0, cur.kills - prev.kills),
        "pickup": w["pickup"] * (max(0.0, cur.items - prev.items) + max(0.0, cur.weapons - prev.weapons)),
        "secret": w["secret"] * max(0.0, cur.secrets - prev.secrets),
        "health": w["health"] * (max(cur.health, 0.0) - max(prev.health, 0.0)),
        "armor": w["armor"] * (cur.armor - prev.armor),
        "ammo": w["ammo"] * max(0.0, d_ammo) + min(0.0, d_ammo),
    }


class ExplorationTracker:
    """The paper's "new area" term: entering a grid cell not yet visited in this episode gives
    ``20 * (1 + 0.5 * L1)``, where L1 is the cell distance (in cells) from the episode's start cell,
    so reaching far-away parts of the map pays more than circling the start."""

    def __init__(self, cell_size: float = 64.0) -> None:
        self.cell_size = cell_size
        self.visited: set[tuple[int, int]] = set()
        self.start = (0, 0)

    def cell(self, x: float, y: float) -> tuple[int, int]:
        return (math.floor(x / self.cell_size), math.floor(y / self.cell_size))

    def reset(self, x: float, y: float) -> None:
        self.start = self.cell(x, y)
        self.visited = {self.start}

    def update(self, x: float, y: float) -> float:
        cell = self.cell(x, y)
        if cell in self.visited:
            return 0.0
        self.visited.add(cell)
        distance = abs(cell[0] - self.start[0]) + abs(cell[1] - self.start[1])
        return REWARD_WEIGHTS["new_area"] * (1.0 + 0.5 * distance)


# ------------------------------------------------------------------------------------------------
# Scenarios, wads and maps
# ------------------------------------------------------------------------------------------------
VIZDOOM_DIR = Path(vzd.__file__).parent
SCENARIOS_DIR = Path(vzd.scenarios_path)
DEFAULT_SCENARIO = "e1m1"
# Scenarios configured entirely in code: name -> (IWAD, default map).
BUILTIN_SCENARIOS = {
    "e1m1": ("freedoom1.wad", "E1M1"),
    "freedoom1": ("freedoom1.wad", "E1M1"),
    "freedoom2": ("freedoom2.wad", "MAP01"),
}


class ScenarioError(ValueError):
    """An unknown scenario, a missing wad, or a map that is not in its wad."""


def available_scenarios() -> list[str]:
    """Names accepted by ``--scenario``: the built-in games plus every .cfg shipped with ViZDoom."""
    shipped = sorted(p.stem for p in SCENARIOS_DIR.glob("*.cfg") if p.stem not in BUILTIN_SCENARIOS)
    return sorted(BUILTIN_SCENARIOS) + shipped


def read_cfg(path: Path) -> dict[str, str]:
    """The simple ``key = value`` entries of a ViZDoom .cfg file (lists such as buttons are skipped)."""
    entries: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            if value and not value.startswith("{"):
                entries[key.lower()] = value
    return entries


def resolve_wad(name: str, relative_to: Path | None = None) -> Path:
    """A wad given as a path, or by name from ViZDoom's package or scenarios folder."""
    candidates = [Path(name)]
    if relative_to is not None:
        candidates.append(relative_to / name)
    candidates += [VIZDOOM_DIR / name, SCENARIOS_DIR / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = list(dict.fromkeys(str(c.resolve()) for c in candidates))  # an absolute name is tried once, not thrice
    shipped = sorted(p.name for p in VIZDOOM_DIR.glob("*.wad"))
    raise ScenarioError(
        f"wad {name!r} not found (tried {', '.join(tried)}): give the path of an existing .wad file"
        + (f", or the name of one that ships with vizdoom ({', '.join(shipped)})" if shipped else "")
    )


def wad_info(path: Path) -> tuple[str, list[str]]:
    """(``IWAD`` or ``PWAD``, map names) read from a wad's lump directory.

    A map is a marker lump followed by ``THINGS`` (Doom format) or ``TEXTMAP`` (UDMF)."""
    with open(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12 or header[:4] not in (b"IWAD", b"PWAD"):
            raise ScenarioError(f"{path} is not a Doom wad file")
        kind, num_lumps, directory_offset = header[:4].decode(), *struct.unpack("<ii", header[4:])
        f.seek(directory_offset)
        directory = f.read(16 * num_lumps)
    names = [
        directory[i + 8 : i + 16].rstrip(b"\0").decode("ascii", "replace").upper() for i in range(0, len(directory), 16)
    ]
    maps = [names[i] for i in range(len(names) - 1) if names[i + 1] in ("THINGS", "TEXTMAP")]
    return kind, maps


@dataclass
class DoomConfig:
    """Everything that defines the game, the observation and the recorded frames."""

    scenario: str = DEFAULT_SCENARIO
    wad: str | None = None  # override the scenario's wad (path or a name shipped with ViZDoom)
    map: str | None = None  # override the scenario's map, e.g. E1M2 or MAP01
    frame_width: int = 320  # recorded frame (world-model data)
    frame_height: int = 240
    obs_width: int = 160  # agent observation
    obs_height: int = 120
    use_automap: bool = True  # paper: the agent also sees the automap
    action_history: int = 32  # paper: the last 32 actions
    frame_skip: int = 4
    repeat_action_prob: float = 0.25
    episode_timeout: int | None = None  # in game tics (35/s); None = scenario default (E1M1: 8400)
    skill: int = 3
    reward: str = "paper"  # "paper" (shaped, appendix A.5) or "scenario" (the .cfg's own reward)
    render_hud: bool = True
    exploration_cell: float = 64.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DoomConfig:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class ResolvedGame:
    """Where the game's files are: filled by ``resolve_game`` (checked, before any game starts)."""

    iwad: Path
    pwad: Path | None
    map: str
    cfg: Path | None
    episode_timeout: int
    maps_available: list[str] = field(default_factory=list)


def resolve_game(config: DoomConfig) -> ResolvedGame:
    """Find the wad(s) and map of ``config`` and check that the map exists in them.

    Raises ScenarioError with the fix instead of letting ViZDoom hang on a missing map."""
    name = config.scenario
    cfg_path: Path | None = None
    if name.endswith(".cfg"):
        cfg_path = Path(name)
    elif name not in BUILTIN_SCENARIOS:
        cfg_path = SCENARIOS_DIR / f"{name}.cfg"
    if name in BUILTIN_SCENARIOS:
        iwad_name, default_map = BUILTIN_SCENARIOS[name]
        iwad, pwad, game_map, timeout = resolve_wad(iwad_name), None, default_map, 8400
    elif cfg_path is not None and cfg_path.is_file():
        entries = read_cfg(cfg_path)
        iwad = resolve_wad(entries.get("doom_game_path", "freedoom2.wad"), cfg_path.parent)
        pwad = resolve_wad(entries["doom_scenario_path"], cfg_path.parent) if "doom_scenario_path" in entries else None
        game_map = entries.get("doom_map", "MAP01")  # ViZDoom's own default when a cfg names none
        timeout = int(entries.get("episode_timeout", 8400))
    else:
        raise ScenarioError(
            f"unknown scenario {name!r}: choose one of {', '.join(available_scenarios())} or pass a .cfg path"
        )

    if config.wad is not None:
        wad = resolve_wad(config.wad)
        if wad_info(wad)[0] == "IWAD":
            iwad, pwad = wad, None
        else:
            pwad = wad
    if config.map is not None:
        game_map = config.map
    game_map = game_map.upper()
    map_wad = pwad or iwad
    maps = wad_info(map_wad)[1]
    if pwad is not None:
        maps = maps + wad_info(iwad)[1]
    if game_map not in maps:
        shown = ", ".join(maps[:12]) + (" ..." if len(maps) > 12 else "")
        raise ScenarioError(
            f"map {game_map!r} is not in {map_wad.name} (it has: {shown or 'no maps'}). "
            f"Pass --map with one of those (ViZDoom would wait forever for a missing map)."
        )
    if config.episode_timeout is not None:
        timeout = config.episode_timeout
    return ResolvedGame(iwad, pwad, game_map, cfg_path, timeout, maps)


_RESOLUTIONS = sorted(
    (int(w), int(h), getattr(vzd.ScreenResolution, name))
    for name in dir(vzd.ScreenResolution)
    if name.startswith("RES_")
    for w, h in [name[4:].split("X")]
)


def render_resolution(width: int, height: int) -> tuple[int, int, Any]:
    """The smallest ViZDoom resolution at least ``width`` x ``height`` with the same aspect ratio
    (frames are downscaled from it when the size is not native)."""
    for w, h, res in _RESOLUTIONS:
        if w >= width and h >= height and abs(w * height - h * width) <= max(w, h):
            return w, h, res
    for w, h, res in _RESOLUTIONS:
        if w >= width and h >= height:
            return w, h, res
    raise ScenarioError(f"frame size {width}x{height} is larger than any ViZDoom resolution")


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
        before = set(_vizdoom_children())
        game.init()
        self.game = game
        # Only the engine process this game started (other envs of this process have their own).
        self.vizdoom_pids = [pid for pid in _vizdoom_children() if pid not in before]

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


# ------------------------------------------------------------------------------------------------
# Process hygiene: ViZDoom runs the engine as a child process named "vizdoom"; make sure none
# outlives us even when close() is skipped by a crash.
# ------------------------------------------------------------------------------------------------
def _vizdoom_children() -> list[int]:
    try:
        import psutil

        return [p.pid for p in psutil.Process(os.getpid()).children(recursive=True) if p.name() == "vizdoom"]
    except Exception:  # psutil missing or the process vanished: nothing to track
        return []


def kill_pids(pids: list[int]) -> None:
    """Kill the listed processes that are still ViZDoom games (a reused pid is left alone)."""
    if not pids:
        return
    import psutil

    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.name() == "vizdoom":
                process.kill()
        except psutil.Error:
            pass


RUN_TAG_VARIABLE = "GAMENGEN_RUN_ID"


def tag_games_with_run(run_id: str) -> None:
    """Mark every game started from now on by this process and its children (they inherit the
    environment), so ``kill_games_of_run`` finds them even after their parent died."""
    os.environ[RUN_TAG_VARIABLE] = run_id


def kill_games_of_run(run_id: str) -> int:
    """Kill every ``vizdoom`` process tagged with ``run_id``, wherever it was reparented. Returns how many."""
    import psutil

    killed = 0
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "vizdoom":
            continue
        try:
            if process.environ().get(RUN_TAG_VARIABLE) == run_id:
                process.kill()
                killed += 1
        except psutil.Error:
            pass
    return killed


def kill_vizdoom_descendants(pid: int | None = None) -> int:
    """Kill every ``vizdoom`` process below ``pid`` (default: this process). Returns how many."""
    import psutil

    try:
        children = psutil.Process(pid or os.getpid()).children(recursive=True)
    except psutil.Error:
        return 0
    victims = [p for p in children if _safe_name(p) == "vizdoom"]
    for process in victims:
        try:
            process.kill()
        except psutil.Error:
            pass
    return len(victims)


def _safe_name(process) -> str:
    try:
        return process.name()
    except Exception:
        return ""


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


# ------------------------------------------------------------------------------------------------
# Command-line options shared by the agent-side scripts.
# ------------------------------------------------------------------------------------------------
def add_env_args(parser) -> None:
    """Add the game options to an argparse parser (defaults None = keep the base config's value)."""
    group = parser.add_argument_group("game")
    group.add_argument(
        "--scenario",
        default=None,
        help=f"game to play (default {DEFAULT_SCENARIO}: freedoom1.wad E1M1); one of "
        f"{', '.join(available_scenarios())}, or a .cfg path",
    )
    group.add_argument(
        "--wad", default=None, help="override the scenario's wad (path, or freedoom1.wad / freedoom2.wad)"
    )
    group.add_argument(
        "--map",
        default=None,
        help="override the scenario's map (E1M1..E4M9 in freedoom1.wad, MAP01.. in freedoom2.wad)",
    )
    group.add_argument("--frame_size", default=None, help="recorded frame size WxH (default 320x240)")
    group.add_argument(
        "--frame_skip", type=int, default=None, help="game tics per agent step (default 4, as the paper)"
    )
    group.add_argument(
        "--repeat_action_prob",
        type=float,
        default=None,
        help="probability of repeating the previous action instead of the chosen one (default 0.25)",
    )
    group.add_argument(
        "--episode_timeout",
        type=int,
        default=None,
        help="episode length limit in game tics, 35 per second (default: the scenario's; E1M1 8400)",
    )
    group.add_argument("--skill", type=int, default=None, help="Doom skill level 1-5 (default 3)")
    group.add_argument("--no_automap", action="store_true", help="do not give the agent the automap channel")
    group.add_argument(
        "--reward",
        choices=["paper", "scenario"],
        default=None,
        help="paper: shaped reward of appendix A.5 (default); scenario: the .cfg's own reward",
    )


def config_from_args(args, base: DoomConfig | None = None) -> DoomConfig:
    """A DoomConfig from ``base`` (e.g. the one a model was trained with) with the CLI overrides."""
    values = (base or DoomConfig()).to_dict()
    for key in ("scenario", "wad", "map", "frame_skip", "repeat_action_prob", "episode_timeout", "skill", "reward"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    if getattr(args, "frame_size", None):
        try:
            width, height = (int(v) for v in args.frame_size.lower().split("x"))
        except ValueError:
            raise ScenarioError(f"--frame_size {args.frame_size!r} is not WIDTHxHEIGHT, e.g. 320x240") from None
        values["frame_width"], values["frame_height"] = width, height
    if getattr(args, "no_automap", False):
        values["use_automap"] = False
    config = DoomConfig.from_dict(values)
    if not 0.0 <= config.repeat_action_prob < 1.0:
        raise ScenarioError(f"--repeat_action_prob must be in [0, 1), got {config.repeat_action_prob}")
    if config.frame_skip < 1:
        raise ScenarioError(f"--frame_skip must be >= 1, got {config.frame_skip}")
    resolve_game(config)
    render_resolution(config.frame_width, config.frame_height)
    return config
