"""Live play of a world model (``run_playable_env.py``): the parts every UI shares.

* ``KeyMap``: held keys -> the checkpoint's action. Every action name is read as a set of controls
  (``FORWARD_TURN_LEFT`` = FORWARD + TURN_LEFT, ``NOOP`` = none) and each control has default keys
  (``DEFAULT_CONTROL_KEYS``, browser ``KeyboardEvent.code`` names); the held controls pick the action
  whose controls match them exactly, else the largest action contained in them, else the no-op.
  Actions whose names are not made of known controls are bound to digit keys.
* ``StartContext``: where a game starts: frames of a recorded episode, or the first frame of a
  fresh ViZDoom game (padded to the model's context as training pads episode starts).
* ``PlaySession``: the engine plus that start: ``reset``, ``step(action)`` with frames/s and ms per
  frame, pause, recording (gif, mp4 when imageio-ffmpeg is there, and an action log that
  ``run_autoregressive.py --actions_file`` replays), and optionally the real game stepped in lockstep
  (``RealGame``) with the PSNR of every model frame against the real one.
* ``write_gif`` / ``write_video``: every frame of a rollout, none merged.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gamengen.engine import EngineError, GameEngine, action_id, captioned_row, display_scale, episode_context, find_episode, upscale
from gamengen.episodes import DatasetError, EpisodeDataset
from gamengen.metrics import psnr
from gamengen.model import frames_to_tensor

REPO = Path(__file__).resolve().parents[2]
DOOM_TICS_PER_SECOND = 35

# Controls, and the keys that hold them by default (KeyboardEvent.code names; pygame keys are
# translated to these by ``pygame_key_code``).
DEFAULT_CONTROL_KEYS: dict[str, tuple[str, ...]] = {
    "FORWARD": ("KeyW", "ArrowUp"),
    "BACKWARD": ("KeyS", "ArrowDown"),
    "TURN_LEFT": ("KeyA", "ArrowLeft"),
    "TURN_RIGHT": ("KeyD", "ArrowRight"),
    "STRAFE_LEFT": ("KeyZ", "Comma"),
    "STRAFE_RIGHT": ("KeyX", "Period"),
    "ATTACK": ("Space", "ControlLeft", "ControlRight"),
    "USE": ("KeyE", "Enter"),
}
# Other spellings of the controls in action names (ViZDoom button names, common synonyms).
CONTROL_ALIASES = {
    "MOVE_FORWARD": "FORWARD",
    "MOVE_BACKWARD": "BACKWARD",
    "BACK": "BACKWARD",
    "MOVE_LEFT": "STRAFE_LEFT",
    "MOVE_RIGHT": "STRAFE_RIGHT",
    "LEFT": "TURN_LEFT",
    "RIGHT": "TURN_RIGHT",
    "FIRE": "ATTACK",
    "SHOOT": "ATTACK",
}
NO_CONTROL_NAMES = ("NOOP", "NO_OP", "NONE", "IDLE", "NOTHING")
COMMAND_KEYS: dict[str, str] = {"KeyP": "pause", "KeyR": "reset", "KeyN": "step", "KeyC": "record"}
COMMAND_HELP = {"pause": "pause / resume", "reset": "back to the start", "step": "one frame (while paused)", "record": "start / stop recording"}
DIGIT_KEYS = tuple(f"Digit{d}" for d in "1234567890")


class PortError(OSError):
    """The web server's port cannot be used (the message says what to do)."""


def action_controls(name: str) -> frozenset[str] | None:
    """The controls an action name holds (``FORWARD_TURN_LEFT`` -> {FORWARD, TURN_LEFT}; ``NOOP`` ->
    {}), or None when the name is not made of known controls."""
    name = name.strip().upper().replace("-", "_").replace("+", "_").replace(" ", "_")
    if name in NO_CONTROL_NAMES:
        return frozenset()
    vocabulary = {**{c: c for c in DEFAULT_CONTROL_KEYS}, **CONTROL_ALIASES}
    tokens, controls, i = name.split("_"), set(), 0
    while i < len(tokens):
        for width in (2, 1):  # longest spelling first: TURN_LEFT before LEFT
            word = "_".join(tokens[i : i + width])
            if len(tokens[i : i + width]) == width and word in vocabulary:
                controls.add(vocabulary[word])
                i += width
                break
        else:
            return None
    return frozenset(controls)


class KeyMap:
    """Held keys -> the checkpoint's action, derived from its action names (see the module docstring)."""

    def __init__(self, action_names: Sequence[str], control_keys: dict[str, Sequence[str]] | None = None) -> None:
        self.action_names = list(action_names)
        self.control_keys = {control: tuple(keys) for control, keys in (control_keys or DEFAULT_CONTROL_KEYS).items()}
        self.key_controls = {key: control for control, keys in self.control_keys.items() for key in keys}
        self.controls = [action_controls(name) for name in self.action_names]
        empty = [i for i, controls in enumerate(self.controls) if controls == frozenset()]
        self.noop = empty[0] if empty else 0
        # Actions no control combination reaches get a digit key of their own.
        unreachable = [i for i, controls in enumerate(self.controls) if controls is None or (not controls and i != self.noop)]
        self.digit_actions = dict(zip(DIGIT_KEYS, unreachable, strict=False))
        for key in self.digit_actions:
            self.key_controls.pop(key, None)

    @property
    def bound_keys(self) -> list[str]:
        """Every key the game listens to (controls, digits, commands): the page stops their default action."""
        return sorted({*self.key_controls, *self.digit_actions, *COMMAND_KEYS})

    def action_for(self, held: Iterable[str]) -> int:
        """The action the held keys (codes, in the order they were pressed) ask for."""
        held = list(held)
        for key in reversed(held):  # a digit key selects its action directly (the latest pressed wins)
            if key in self.digit_actions:
                return self.digit_actions[key]
        wanted = {self.key_controls[key] for key in held if key in self.key_controls}
        best, best_size = self.noop, 0
        for index, controls in enumerate(self.controls):
            if not controls:
                continue
            if controls == wanted:
                return index
            if controls <= wanted and len(controls) > best_size:
                best, best_size = index, len(controls)
        return best

    def action_keys(self, index: int) -> str:
        """The keys of an action, as shown on screen (``W/Up + A/Left``)."""
        for key, action in self.digit_actions.items():
            if action == index:
                return key.removeprefix("Digit")
        controls = self.controls[index]
        if not controls:
            return "(no key)"
        return " + ".join("/".join(short_key(k) for k in self.control_keys.get(c, ())) or f"({c}: unbound)" for c in sorted(controls, key=_control_order))

    def describe(self) -> list[dict[str, Any]]:
        """One row per action: id, name, keys (what the UIs show)."""
        return [{"id": i, "name": name, "keys": self.action_keys(i)} for i, name in enumerate(self.action_names)]

    def help_lines(self) -> list[str]:
        lines = [f"{row['name']}: {row['keys']}" for row in self.describe()]
        lines += [f"{short_key(key)}: {COMMAND_HELP[command]}" for key, command in COMMAND_KEYS.items()]
        return lines


def _control_order(control: str) -> int:
    order = list(DEFAULT_CONTROL_KEYS)
    return order.index(control) if control in order else len(order)


def short_key(code: str) -> str:
    """``KeyW`` -> ``W``, ``ArrowUp`` -> ``Up``, ``Digit1`` -> ``1``, ``ControlLeft`` -> ``Ctrl``."""
    for prefix in ("Key", "Digit", "Arrow"):
        if code.startswith(prefix) and len(code) > len(prefix):
            return code[len(prefix) :]
    return {"ControlLeft": "Ctrl", "ControlRight": "RCtrl", "Comma": ",", "Period": "."}.get(code, code)


def pygame_key_code(name: str) -> str | None:
    """A pygame key name (``pygame.key.name``) -> the browser code the key map uses."""
    name = name.lower()
    if len(name) == 1 and name.isalpha():
        return f"Key{name.upper()}"
    if len(name) == 1 and name.isdigit():
        return f"Digit{name}"
    return {
        "up": "ArrowUp",
        "down": "ArrowDown",
        "left": "ArrowLeft",
        "right": "ArrowRight",
        "space": "Space",
        "left ctrl": "ControlLeft",
        "right ctrl": "ControlRight",
        "return": "Enter",
        ",": "Comma",
        ".": "Period",
    }.get(name)


# ----------------------------------------------------------------------------------------------
# Action logs: the format of ``--actions`` (and of ``--actions_file``)


def action_script(actions: Sequence[int], action_names: Sequence[str]) -> str:
    """Action ids -> the compact script ``parse_action_script`` reads back (``FORWARD*3,TURN_LEFT``)."""
    parts: list[str] = []
    for action in actions:
        name = action_names[action]
        if parts and parts[-1].split("*")[0] == name:
            head, _, count = parts[-1].partition("*")
            parts[-1] = f"{head}*{int(count or 1) + 1}"
        else:
            parts.append(name)
    return ",".join(parts)


def read_actions_file(path: str | Path) -> str:
    """An action script from a file: names (``NAME*COUNT``) separated by commas or new lines; ``#`` starts a comment."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"--actions_file {path} does not exist (write action names like FORWARD*16,TURN_LEFT*8, or record one with the C key)")
    items = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            items += [item.strip() for item in line.split(",") if item.strip()]
    if not items:
        raise EngineError(f"--actions_file {path} names no action (example content: FORWARD*16,TURN_LEFT*8,ATTACK)")
    return ",".join(items)


# ----------------------------------------------------------------------------------------------
# Videos


def write_gif(frames: list[np.ndarray], path: Path, fps: float) -> Path:
    """Every frame in order (each carries its own caption, so none is merged with its neighbour)."""
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(20, round(1000 / fps)), loop=0, optimize=False)
    return path


def write_video(frames: list[np.ndarray], path: Path, fps: float) -> Path | None:
    """An mp4 of the frames when an ffmpeg backend (imageio-ffmpeg) is installed; None otherwise."""
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (imageio's ffmpeg plugin needs it)
    except ImportError:
        return None
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1, ffmpeg_log_level="error") as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


# ----------------------------------------------------------------------------------------------
# The real game (side by side)


def doom_env_module():
    """``ViZDoomPPO/common/envs.py`` (the agent side's environment), importable from the root scripts."""
    agent_dir = str(REPO / "ViZDoomPPO")
    if agent_dir not in sys.path:
        sys.path.insert(0, agent_dir)
    from common import envs

    return envs


def game_settings(frame_size: tuple[int, int], dataset: EpisodeDataset | None = None, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ViZDoom settings of the data the model was trained on (the dataset's ``env_config``, else the
    checkpoint's dataset provenance), at the model's frame size, with no random action repeats: the
    action pressed is the action played."""
    metadata = (dataset.metadata if dataset is not None else None) or (provenance or {}).get("metadata") or {}
    settings = dict(metadata.get("env_config") or {})
    for key in ("scenario", "wad", "map", "frame_skip"):
        if key not in settings and metadata.get(key) is not None:
            settings[key] = metadata[key]
    settings.update(frame_width=frame_size[0], frame_height=frame_size[1], repeat_action_prob=0.0)
    return settings


class RealGame:
    """ViZDoom (``DoomEnv``) driven by the same actions as the model, for the side-by-side view."""

    def __init__(self, settings: dict[str, Any], action_names: Sequence[str], seed: int = 0) -> None:
        envs = doom_env_module()
        if list(action_names) != list(envs.ACTION_NAMES):
            raise EngineError(
                f"--side_by_side drives ViZDoom with the model's actions, but the model's actions ({', '.join(action_names)}) are not the game's "
                f"({', '.join(envs.ACTION_NAMES)}): side by side needs a model trained on ViZDoomPPO data"
            )
        self.config = envs.DoomConfig.from_dict(settings)
        try:
            self.env = envs.DoomEnv(self.config)  # checks the map before any game starts
        except envs.ScenarioError as error:
            raise EngineError(f"the real game cannot start: {error}") from None
        self.seed = seed
        self.episodes = 0
        self.frame: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        """A new episode with the same seed: the same start, and the same answers to the same actions."""
        _, info = self.env.reset(seed=self.seed)
        self.episodes += 1
        self.frame = np.array(info["frame"])
        return self.frame

    def step(self, action: int) -> tuple[np.ndarray | None, bool]:
        """Play ``action``; the frame after it (None when the episode ended) and whether it ended."""
        _, _, terminated, truncated, info = self.env.step(action)
        self.frame = None if info["frame"] is None else np.array(info["frame"])
        return self.frame, bool(terminated or truncated)

    def close(self) -> None:
        self.env.close()


# ----------------------------------------------------------------------------------------------
# Where a game starts


@dataclass
class StartContext:
    """The engine's start: frames (oldest first), the actions taken at all but the newest, and where they come from."""

    frames: np.ndarray
    actions: list[int]
    description: str
    episode: int | None = None
    episode_id: str | None = None
    start_step: int | None = None

    @classmethod
    def from_dataset(cls, dataset: EpisodeDataset, episode: int | str, start_step: int | None, context_length: int) -> StartContext:
        index = find_episode(dataset, episode)
        length = dataset.episodes[index].length
        start = start_step if start_step is not None else min(context_length, length - 1)
        frames, actions, _ = episode_context(dataset, index, start, context_length)
        episode_id = dataset.episode_ids[index]
        return cls(frames, [int(a) for a in actions], f"episode {episode_id!r}, steps {start - len(frames)}..{start - 1}", index, episode_id, start)

    @classmethod
    def from_frame(cls, frame: np.ndarray, description: str) -> StartContext:
        """One frame: the engine pads it to the model's context (first frame repeated, NOOP), as training pads episode starts."""
        return cls(np.array(frame)[None], [], description)  # a copy: the game may reuse its buffer


def first_game_frame(settings: dict[str, Any], seed: int = 0) -> np.ndarray:
    """The first frame of a fresh ViZDoom game with these settings (the default start without a dataset)."""
    envs = doom_env_module()
    try:
        env = envs.DoomEnv(envs.DoomConfig.from_dict(settings))
    except envs.ScenarioError as error:
        raise EngineError(f"the default start (the first frame of a fresh game) cannot be made: {error}; or pass --dataset_name") from None
    try:
        _, info = env.reset(seed=seed)
        return info["frame"]
    finally:
        env.close()


# ----------------------------------------------------------------------------------------------
# A session: the engine, its start, the clock, recording, the real game


@dataclass
class Recording:
    frames: list[np.ndarray] = field(default_factory=list)  # every frame generated while recording, captioned
    actions: list[int] = field(default_factory=list)
    model_frames: list[np.ndarray] = field(default_factory=list)  # the model's frames as generated (uint8 HxWx3)
    real_frames: list[np.ndarray] = field(default_factory=list)  # the real game's, side by side
    psnr: list[float] = field(default_factory=list)  # model vs real game, dB, side by side
    first_frame: int = 0  # engine frame index (since the last reset) of the first recorded frame


class PlaySession:
    """One player's game: an engine restarted from ``start``, stepped one action at a time.

    Not thread-safe: the web UI calls it from one worker thread only.
    """

    def __init__(
        self,
        engine: GameEngine,
        start: StartContext,
        seed: int = 0,
        real_game: RealGame | None = None,
        record_dir: str | Path = "outputs/play",
        replay: dict[str, Any] | None = None,
        gif_fps: float = DOOM_TICS_PER_SECOND / 4,
    ) -> None:
        self.engine = engine
        self.start = start
        self.seed = seed
        self.real_game = real_game
        self.record_dir = Path(record_dir)
        self.replay = replay or {}  # model/dataset paths for the replay command in the action log
        self.gif_fps = gif_fps
        self.keymap = KeyMap(engine.action_names)
        self.scale = display_scale(engine.frame_size[0])
        self.paused = False
        self.recording: Recording | None = None
        self.saved: list[dict[str, Any]] = []
        self.wall_ms: deque[float] = deque(maxlen=20)
        self._last_end: float | None = None
        self.reset()

    # -- state ----------------------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        """Back to the start context (same seed: the same keys replay the same frames)."""
        if self.real_game is not None:
            self.start = StartContext.from_frame(self.real_game.reset(), self.start.description)
        self.engine.reset(self.start.frames, self.start.actions, seed=self.seed)
        self.frame = self.start.frames[-1]
        self.real_frame = self.frame if self.real_game is not None else None
        self.actions: list[int] = []  # every action since the reset (the action log)
        self.last_action = self.keymap.noop
        self.last_psnr: float | None = None
        self.game_over = False
        self.wall_ms.clear()
        self._last_end = None
        if self.recording is not None:
            self.recording = Recording(first_frame=0)
        return self.frame

    @property
    def frame_index(self) -> int:
        return len(self.actions)

    def step(self, action: int | str) -> np.ndarray:
        """Press ``action`` for one frame; the model's next frame (the real game's is ``real_frame``)."""
        action = action_id(action, self.engine.action_names)
        if self.game_over:  # the real game's episode ended (death, exit, timeout): both start again
            self.reset()
        began = time.perf_counter()
        self.frame = self.engine.step(int(action))
        self.actions.append(int(action))
        self.last_action = int(action)
        if self.real_game is not None:
            real, ended = self.real_game.step(int(action))
            if real is not None:
                self.real_frame = real
                self.last_psnr = float(psnr(frames_to_tensor(self.frame[None]), frames_to_tensor(real[None]))[0])
            self.game_over = ended
        end = time.perf_counter()
        # Frames/s as the player sees it: wall time between consecutive frames while playing.
        self.wall_ms.append(1000 * (end - (self._last_end if self._last_end is not None and end - self._last_end < 5 else began)))
        self._last_end = end
        if self.recording is not None:
            self.recording.frames.append(self.view())
            self.recording.actions.append(int(action))
            self.recording.model_frames.append(self.frame)
            if self.real_game is not None:
                self.recording.real_frames.append(self.real_frame)
                self.recording.psnr.append(self.last_psnr)
        return self.frame

    def mark_idle(self) -> None:
        """The player paused or waited: the next frame's time counts from its own start."""
        self._last_end = None

    def stats(self) -> dict[str, Any]:
        """What the overlay shows: frames/s, ms per frame (model step), the action, frame number."""
        timing = self.engine.last_timing
        mean_ms = float(np.mean(self.wall_ms)) if self.wall_ms else None
        return {
            "frame": self.frame_index,
            "action": self.keymap.action_names[self.last_action],
            "fps": round(1000 / mean_ms, 2) if mean_ms else None,
            "ms": round(timing.total_ms, 1) if timing and self.frame_index else None,
            "unet_ms": round(timing.unet_ms, 1) if timing and self.frame_index else None,
            "decode_ms": round(timing.decode_ms, 1) if timing and self.frame_index else None,
            "psnr": round(self.last_psnr, 2) if self.last_psnr is not None else None,
            "paused": self.paused,
            "recording": self.recording is not None,
            "game_over": self.game_over,
        }

    # -- display --------------------------------------------------------------------------------
    def tiles(self) -> tuple[list[np.ndarray], list[str]]:
        if self.real_game is None:
            return [self.frame], ["model"]
        real = self.real_frame if self.real_frame is not None else np.zeros_like(self.frame)
        return [self.frame, real], ["model", "ViZDoom"]

    def raw_view(self, gap: int = 4) -> np.ndarray:
        """The model's frame (and the real one beside it, ``gap`` black columns apart) at frame size."""
        tiles, _ = self.tiles()
        if len(tiles) == 1:
            return tiles[0]
        spacer = np.zeros((tiles[0].shape[0], gap, 3), dtype=np.uint8)
        return np.concatenate([tiles[0], spacer, tiles[1]], axis=1)

    def scaled_view(self) -> np.ndarray:
        """``raw_view`` upscaled for a window (pixels stay blocks)."""
        return upscale(self.raw_view(), self.scale)

    def caption(self) -> str:
        stats = self.stats()
        text = f"frame {stats['frame']} {stats['action']}"
        if stats["psnr"] is not None:
            text += f" PSNR {stats['psnr']:.1f} dB"
        return text

    def view(self) -> np.ndarray:
        """The captioned display frame (what gifs show)."""
        tiles, titles = self.tiles()
        return captioned_row(tiles, titles, self.caption(), self.scale)

    # -- recording ------------------------------------------------------------------------------
    def toggle_recording(self) -> dict[str, Any] | None:
        """Start recording, or stop and save it (returns what was written)."""
        if self.recording is None:
            self.recording = Recording(first_frame=self.frame_index)
            return None
        return self.save_recording()

    def save_recording(self, name: str | None = None) -> dict[str, Any] | None:
        """Write the recording: ``<name>.gif`` (+ ``.mp4``), ``<name>.npz`` (the raw frames and actions),
        ``<name>.actions.txt`` (every action since the start context, for ``--actions``/``--actions_file``)
        and ``<name>.json`` (start, seed, the replay command)."""
        recording, self.recording = self.recording, None
        if recording is None or not recording.frames:
            return None
        self.record_dir.mkdir(parents=True, exist_ok=True)
        name = name or time.strftime("play-%Y%m%d-%H%M%S")
        base = self.record_dir / name
        gif = write_gif(recording.frames, base.with_suffix(".gif"), self.gif_fps)
        mp4 = write_video(recording.frames, base.with_suffix(".mp4"), self.gif_fps)
        arrays = {"generated": np.stack(recording.model_frames), "actions": np.asarray(recording.actions)}
        if recording.real_frames:
            arrays["real"] = np.stack(recording.real_frames)
        np.savez_compressed(base.with_suffix(".npz"), **arrays)
        script = action_script(self.actions, self.engine.action_names)
        actions_path = base.with_suffix(".actions.txt")
        actions_path.write_text((script or "# no action was played since the start") + "\n")
        log = {
            "gif": str(gif),
            "mp4": str(mp4) if mp4 else None,
            "gif_frames": len(recording.frames),
            "gif_first_frame": recording.first_frame,
            "actions_file": str(actions_path),
            "actions": [self.engine.action_names[a] for a in self.actions],
            "start": self.start.description,
            "episode_id": self.start.episode_id,
            "start_step": self.start.start_step,
            "seed": self.seed,
            "psnr": recording.psnr or None,
            "engine": self.engine.describe(),
            "replay": self.replay_command(actions_path),
        }
        base.with_suffix(".json").write_text(json.dumps(log, indent=1) + "\n")
        self.saved.append(log)
        return log

    def replay_command(self, actions_path: Path) -> str | None:
        """The ``run_autoregressive.py`` call that regenerates these frames (a dataset start only)."""
        if self.start.episode_id is None or not self.actions or "dataset_name" not in self.replay:
            return None
        return (
            f"python run_autoregressive.py --model_folder {self.replay['model_folder']} --dataset_name {self.replay['dataset_name']} "
            f"--episodes {self.start.episode_id} --start_step {self.start.start_step} --seed {self.seed} --actions_file {actions_path}"
        )

    def close(self) -> None:
        if self.recording is not None:
            self.save_recording()
        if self.real_game is not None:
            self.real_game.close()


__all__ = [
    "COMMAND_KEYS",
    "DEFAULT_CONTROL_KEYS",
    "DatasetError",
    "KeyMap",
    "PlaySession",
    "PortError",
    "RealGame",
    "StartContext",
    "action_controls",
    "action_script",
    "first_game_frame",
    "game_settings",
    "pygame_key_code",
    "read_actions_file",
    "write_gif",
    "write_video",
]
