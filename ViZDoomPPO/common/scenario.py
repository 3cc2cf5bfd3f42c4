"""The game a ``DoomEnv`` plays: its settings (``DoomConfig``), and the scenario, wad and map they name, found and
checked before any game starts (``resolve_game``).

A game is ``freedoom1.wad`` map ``E1M1`` (the free counterpart of the paper's DOOM E1M1), any shipped scenario
(``basic``, ``deathmatch``, ...), or any wad/map pair. The map is checked against the wad's lump directory BEFORE the
game starts: ViZDoom blocks forever in ``new_episode()`` otherwise. Also the screen resolution a frame size is
rendered at, and the game options the agent-side scripts share (``add_env_args``, ``config_from_args``).
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import vizdoom as vzd

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
