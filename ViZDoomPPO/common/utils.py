"""Episode recording for the agent side: the parquet dataset contract of docs/data.md#the-dataset-format.

One row per recorded step, the rows of an episode contiguous and ordered by ``step_id``:

    episode_id (string)  step_id (int32)  frame (binary, PNG)  action (int16)
    reward (float32)  done (bool)  + game variables (health, armor, ammo, kills, pos_x, pos_y, angle)

``frame`` is the screen *before* ``action`` was taken; ``action`` produced the frame of row
``step_id + 1``. File-level metadata (schema metadata key ``gamengen``, JSON) names the game,
frame size, frame skip, ordered ``action_names`` and the policy. Shards are written to a hidden
temporary name and renamed, so a shard that exists is complete; episodes are never split across
shards, and shard and episode names carry a per-invocation run id, so reruns never overwrite.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

FORMAT_VERSION = 1
METADATA_KEY = b"gamengen"
# Keys that must agree between every shard of one dataset (readers refuse a mix).
CONTRACT_KEYS = (
    "format_version",
    "scenario",
    "wad",
    "map",
    "frame_width",
    "frame_height",
    "frame_skip",
    "action_names",
    "frame_codec",
)
# Game variables recorded beside each frame, for analysis (not used by the world model).
GAME_VARIABLE_COLUMNS = ("health", "armor", "ammo", "kills", "pos_x", "pos_y", "angle")

SCHEMA = pa.schema(
    [
        ("episode_id", pa.string()),
        ("step_id", pa.int32()),
        ("frame", pa.binary()),
        ("action", pa.int16()),
        ("reward", pa.float32()),
        ("done", pa.bool_()),
        *[(name, pa.float32()) for name in GAME_VARIABLE_COLUMNS],
    ]
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each default said once: argparse's ``(default: X)`` is appended only to help that does not
    say its default in words already (as gamengen/help_format.py does for the diffusion side)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if re.search(r"\bdefault\b", action.help or "", re.IGNORECASE):
            return action.help
        return super()._get_help_string(action)


class DatasetError(ValueError):
    """A dataset folder or shard that does not satisfy the contract."""


def new_run_id() -> str:
    """A name unique to one invocation: time stamp plus random suffix (no coordination needed)."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def encode_frame(frame: np.ndarray, codec: str = "png", png_level: int = 1, jpeg_quality: int = 95) -> bytes:
    """Encode an HxWx3 uint8 frame. PNG (lossless) is the default; level 1 is fast and ~25% bigger than 6."""
    buffer = io.BytesIO()
    image = Image.fromarray(frame)
    if codec == "png":
        image.save(buffer, format="PNG", compress_level=png_level)
    elif codec == "jpeg":
        image.save(buffer, format="JPEG", quality=jpeg_quality)
    else:
        raise ValueError(f"unknown frame codec {codec!r}: use 'png' or 'jpeg'")
    return buffer.getvalue()


def decode_frame(data: bytes) -> np.ndarray:
    """Decode a recorded frame back to an HxWx3 uint8 array."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a hidden temporary file next to ``path``, then rename (complete or absent, never half)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_shard_metadata(path: Path) -> dict[str, Any]:
    """The ``gamengen`` metadata of one parquet shard, with a clear error when it is missing."""
    try:
        schema = pq.read_schema(path)
    except Exception as error:  # pyarrow raises several types for corrupt files
        raise DatasetError(f"{path} is not a readable parquet shard ({error}); delete or re-record it") from error
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise DatasetError(
            f"{path} has no '{METADATA_KEY.decode()}' metadata: it was not written by this project's "
            "recorder. Pass its column names explicitly or re-record it."
        )
    return json.loads(raw)


def check_compatible(existing: dict[str, Any], new: dict[str, Any], where: str) -> None:
    """Refuse to mix shards whose contract keys differ (frame size, actions, game...)."""
    diffs = [key for key in CONTRACT_KEYS if existing.get(key) != new.get(key)]
    if diffs:
        details = "; ".join(f"{key}: {existing.get(key)!r} there vs {new.get(key)!r} now" for key in diffs)
        raise DatasetError(
            f"{where} already holds shards of a different dataset ({details}). Use another --out_dir / --record_dir, "
            "or the same game settings as those shards."
        )


def list_shards(directory: Path) -> list[Path]:
    """The complete shards of a dataset folder, in name order (temporary files are hidden and skipped)."""
    return sorted(p for p in Path(directory).glob("*.parquet") if not p.name.startswith("."))


def check_output_dir(directory: Path, metadata: dict[str, Any]) -> int:
    """Make sure new shards can join ``directory``; return how many shards it already holds."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise DatasetError(f"{directory} exists and is not a directory")
    shards = list_shards(directory) if directory.exists() else []
    if shards:
        check_compatible(read_shard_metadata(shards[0]), metadata, str(directory))
    return len(shards)


@dataclass
class EpisodeBuffer:
    """The rows of one episode while it is being played."""

    episode_id: str
    frames: list[bytes] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    variables: list[tuple[float, ...]] = field(default_factory=list)
    done: bool = False

    def __len__(self) -> int:
        return len(self.actions)


class ShardWriter:
    """Buffers finished episodes of one worker and writes them as atomic parquet shards.

    Shard names: ``<run_id>-w<worker>-<k>.parquet``; episode ids: ``<run_id>-w<worker>-<n>``.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        metadata: dict[str, Any],
        run_id: str,
        worker_id: int = 0,
        rows_per_shard: int = 2048,
        codec: str = "png",
        png_level: int = 1,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.metadata = {**metadata, "format_version": FORMAT_VERSION, "frame_codec": codec}
        self.run_id = run_id
        self.worker_id = worker_id
        self.rows_per_shard = rows_per_shard
        self.codec = codec
        self.png_level = png_level
        self.episodes_started = 0
        self.shards_written: list[Path] = []
        self.episodes_written = 0
        self.rows_written = 0
        self._pending: list[EpisodeBuffer] = []
        self._current: EpisodeBuffer | None = None

    # -- per-step API -------------------------------------------------------------------------
    def start_episode(self) -> str:
        """Begin a new episode (an unfinished previous one is kept, with done=False)."""
        self.end_episode(done=False)
        episode_id = f"{self.run_id}-w{self.worker_id:02d}-{self.episodes_started:05d}"
        self.episodes_started += 1
        self._current = EpisodeBuffer(episode_id)
        return episode_id

    def add_step(self, frame: np.ndarray, action: int, reward: float, variables: tuple[float, ...] = ()) -> None:
        """Record one step: ``frame`` is the screen before ``action``."""
        if self._current is None:
            self.start_episode()
        if len(variables) not in (0, len(GAME_VARIABLE_COLUMNS)):
            raise ValueError(f"expected {len(GAME_VARIABLE_COLUMNS)} game variables, got {len(variables)}")
        width, height = self.metadata["frame_width"], self.metadata["frame_height"]
        if frame.shape != (height, width, 3):
            raise ValueError(f"frame of shape {frame.shape} does not match the dataset's {height}x{width}x3")
        self._current.frames.append(encode_frame(frame, self.codec, self.png_level))
        self._current.actions.append(int(action))
        self._current.rewards.append(float(reward))
        self._current.variables.append(tuple(variables) or (float("nan"),) * len(GAME_VARIABLE_COLUMNS))

    def end_episode(self, done: bool) -> None:
        """Close the current episode; ``done`` is true when the game ended it (death, exit, timeout)."""
        episode, self._current = self._current, None
        if episode is None or len(episode) == 0:
            return
        episode.done = done
        self._pending.append(episode)
        if sum(len(e) for e in self._pending) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> Path | None:
        """Write every finished episode held in memory to one new shard."""
        if not self._pending:
            return None
        episodes, self._pending = self._pending, []
        columns: dict[str, list] = {name: [] for name in SCHEMA.names}
        for episode in episodes:
            n = len(episode)
            columns["episode_id"] += [episode.episode_id] * n
            columns["step_id"] += list(range(n))
            columns["frame"] += episode.frames
            columns["action"] += episode.actions
            columns["reward"] += episode.rewards
            columns["done"] += [False] * (n - 1) + [episode.done]
            for index, name in enumerate(GAME_VARIABLE_COLUMNS):
                columns[name] += [values[index] for values in episode.variables]
        schema = SCHEMA.with_metadata({METADATA_KEY: json.dumps(self.metadata).encode()})
        table = pa.Table.from_pydict(columns, schema=schema)
        path = self.out_dir / f"{self.run_id}-w{self.worker_id:02d}-{len(self.shards_written):05d}.parquet"
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp, row_group_size=256, compression="zstd")
        os.replace(tmp, path)
        self.shards_written.append(path)
        self.episodes_written += len(episodes)
        self.rows_written += table.num_rows
        return path

    def close(self) -> None:
        """Keep the episode in progress (done=False) and write everything still in memory."""
        self.end_episode(done=False)
        self.flush()

    def discard_current(self) -> None:
        """Drop the episode in progress (used when a run is interrupted mid-episode)."""
        self._current = None


class GifWriter:
    """Same interface as ShardWriter, but writes one QA gif per episode: every step is one gif
    frame, captioned with the step number and the action name (so the frames are all distinct and
    no gif encoder can merge them)."""

    def __init__(
        self, out_dir: str | os.PathLike, action_names: list[str], run_id: str, worker_id: int = 0, fps: float = 35 / 4
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.action_names = list(action_names)
        self.run_id = run_id
        self.worker_id = worker_id
        self.frame_ms = int(round(1000 / fps))
        self.episodes_started = 0
        self.episodes_written = 0
        self.rows_written = 0
        self.files_written: list[Path] = []
        self._frames: list[Image.Image] = []
        self._episode_id: str | None = None

    def start_episode(self) -> str:
        self.end_episode(done=False)
        self._episode_id = f"{self.run_id}-w{self.worker_id:02d}-{self.episodes_started:05d}"
        self.episodes_started += 1
        self._frames = []
        return self._episode_id

    def add_step(self, frame: np.ndarray, action: int, reward: float, variables: tuple[float, ...] = ()) -> None:
        if self._episode_id is None:
            self.start_episode()
        self._frames.append(caption_frame(frame, f"{len(self._frames):4d} {self.action_names[action]}"))

    def end_episode(self, done: bool) -> None:
        frames, self._frames = self._frames, []
        if self._episode_id is None or not frames:
            return
        path = self.out_dir / f"{self._episode_id}.gif"
        self._episode_id = None
        tmp = path.with_name(f".{path.name}.tmp")
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=self.frame_ms, loop=0)
        os.replace(tmp, path)
        self.files_written.append(path)
        self.episodes_written += 1
        self.rows_written += len(frames)

    def flush(self) -> None:
        """Gifs are written at the end of each episode; nothing is held back."""

    def close(self) -> None:
        self.end_episode(done=False)

    def discard_current(self) -> None:
        self._frames, self._episode_id = [], None


def caption_frame(frame: np.ndarray, text: str) -> Image.Image:
    """The frame with a black caption strip below it."""
    from PIL import ImageDraw

    height, width = frame.shape[:2]
    strip = 14
    canvas = Image.new("RGB", (width, height + strip))
    canvas.paste(Image.fromarray(frame), (0, 0))
    ImageDraw.Draw(canvas).text((3, height + 1), text, fill=(255, 255, 0))
    return canvas
