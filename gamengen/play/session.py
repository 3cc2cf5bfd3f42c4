"""One player's game (docs/play.md): where it starts (``StartContext``) and the session that steps the
engine from there (``PlaySession``): frames/s and ms per frame, pause, recording (gif, mp4 when
imageio-ffmpeg is there, and an action log that ``run_autoregressive.py --actions_file`` replays), and
optionally the real game stepped in lockstep (``RealGame``) with the PSNR of every model frame against
the real one.
"""

from __future__ import annotations

import glob
import itertools
import shlex
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gamengen.actions import action_id, action_script
from gamengen.context import default_start_step, episode_context, find_episode
from gamengen.engine import GameEngine
from gamengen.episodes import EpisodeDataset
from gamengen.files import atomic_path, write_bytes_atomic, write_json_atomic
from gamengen.media import captioned_row, display_scale, realtime_fps, upscale, write_gif, write_video
from gamengen.metrics import psnr
from gamengen.play.keymap import KeyMap
from gamengen.play.real_game import RealGame
from gamengen.vae import frames_to_tensor


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
    def from_dataset(
        cls, dataset: EpisodeDataset, episode: int | str, start_step: int | None, context_length: int
    ) -> StartContext:
        index = find_episode(dataset, episode)
        length = dataset.episodes[index].length
        start = start_step if start_step is not None else default_start_step(context_length, length)
        frames, actions, _ = episode_context(dataset, index, start, context_length)
        episode_id = dataset.episode_ids[index]
        description = f"episode {episode_id!r}, steps {start - len(frames)}..{start - 1}"
        return cls(frames, [int(a) for a in actions], description, index, episode_id, start)

    @classmethod
    def from_frame(cls, frame: np.ndarray, description: str) -> StartContext:
        """One frame: the engine pads it to the model's context (first frame repeated, NOOP), as training
        pads episode starts."""
        return cls(np.array(frame)[None], [], description)  # a copy: the game may reuse its buffer


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
        gif_fps: float = realtime_fps(4),
        idle_action: str | int | None = None,
    ) -> None:
        self.engine = engine
        self.start = start
        self.seed = seed
        self.real_game = real_game
        self.record_dir = Path(record_dir)
        self.replay = replay or {}  # model/dataset paths for the replay command in the action log
        self.gif_fps = gif_fps
        self.keymap = KeyMap(engine.action_names, idle_action=idle_action)
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
        playing = self._last_end is not None and end - self._last_end < 5
        self.wall_ms.append(1000 * (end - (self._last_end if playing else began)))
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
        base = self.record_dir / (name or self.unused_name(time.strftime("play-%Y%m%d-%H%M%S")))
        # Each file is written whole to a hidden name, then renamed: a file that exists is complete.
        gif = write_gif(recording.frames, base.with_suffix(".gif"), self.gif_fps)
        mp4 = write_video(recording.frames, base.with_suffix(".mp4"), self.gif_fps)
        arrays = {"generated": np.stack(recording.model_frames), "actions": np.asarray(recording.actions)}
        if recording.real_frames:
            arrays["real"] = np.stack(recording.real_frames)
        with atomic_path(base.with_suffix(".npz"), suffix=".npz") as tmp:
            np.savez_compressed(tmp, **arrays)
        script = action_script(self.actions, self.engine.action_names)
        actions_path = write_bytes_atomic(
            base.with_suffix(".actions.txt"), (script or "# no action was played since the start") + "\n"
        )
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
        write_json_atomic(base.with_suffix(".json"), log)
        self.saved.append(log)
        return log

    def unused_name(self, stem: str) -> str:
        """``stem``, or ``stem-2``, ``stem-3``, ...: the first name no file in the recording folder has and this
        session has not used. (Names are to the second: recordings stopped within one second would otherwise
        overwrite each other, every one reported as saved.)"""
        used = {Path(saved["gif"]).stem for saved in self.saved}
        names = (stem if number == 1 else f"{stem}-{number}" for number in itertools.count(1))
        return next(n for n in names if n not in used and not any(self.record_dir.glob(f"{glob.escape(n)}.*")))

    def replay_command(self, actions_path: Path) -> str | None:
        """The ``run_autoregressive.py`` call that regenerates these frames (a dataset start only)."""
        if self.start.episode_id is None or not self.actions or "dataset_name" not in self.replay:
            return None
        return (
            f"python run_autoregressive.py --model_folder {self.replay['model_folder']} "
            f"--dataset_name {self.replay['dataset_name']} --episodes {self.start.episode_id} "
            f"--start_step {self.start.start_step} --seed {self.seed} --actions_file {actions_path}"
            + "".join(f" --{name} {shlex.quote(value)}" for name, value in self.sampling_options().items())
        )

    def sampling_options(self) -> dict[str, str]:
        """The engine options this game was played with that differ from the checkpoint's defaults."""
        engine, config = self.engine, self.engine.config
        chosen = {
            "guidance_scale": (engine.guidance_scale, config.guidance_scale),
            "num_inference_steps": (engine.num_inference_steps, config.num_inference_steps),
            "timesteps": (engine.timesteps, config.sampler_timesteps),
            "eta": (engine.eta, config.sampler_eta),
            "noise_bucket": (engine.noise_bucket, config.inference_noise_bucket),
            "carry_detail": (engine.carry_detail, None),
            "carry_motion": (engine.carry_motion if engine.carry_detail else "turns", "turns"),
        }
        return {
            name: f"{value:g}" if isinstance(value, float) else str(value)
            for name, (value, default) in chosen.items()
            if value != default
        }

    def close(self) -> None:
        if self.recording is not None:
            self.save_recording()
        if self.real_game is not None:
            self.real_game.close()
