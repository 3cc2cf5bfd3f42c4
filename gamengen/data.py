"""Read the recorded episodes (parquet, DESIGN.md section 3) for the diffusion side.

The agent side writes one row per step: ``episode_id``, ``step_id``, ``frame`` (PNG/JPEG bytes),
``action``, ... with the file-level metadata under the schema key ``gamengen``. This module reads
those files itself (pyarrow only), so the two halves of the project meet only through the files.

``EpisodeDataset`` is an index of (episode, step) rows with random access to decoded frames:
episode ``e``'s step ``t`` is ``dataset.frame(dataset.row_index(e, t))``, its action
``dataset.actions(e)[t]``. Frames are read one parquet row group at a time and the last few row
groups are cached, so scanning or locally shuffled access (``LocalShuffleSampler``) is cheap.

A dataset is a local folder of ``*.parquet`` shards (searched recursively; hidden files such as
half-written shards are skipped) or a Hugging Face Hub dataset id, whose parquet files are fetched
with ``huggingface_hub.snapshot_download`` (as files, so the per-shard metadata survives).
Datasets of other layouts (e.g. ``frames``/``actions`` columns, or a ``datasets`` Image column)
are read through explicit column names (``ColumnNames``) and ``require_metadata=False``.

The world model trains on context windows (DESIGN.md section 3): ``PixelWindowDataset`` decodes
the frames of each window, ``LatentWindowDataset`` reads them from a latent cache made once by
``encode_latents.py`` (``LatentCache``), with the same samples and the same batch layout.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from gamengen.config import ModelConfig

METADATA_KEY = b"gamengen"
# Metadata keys every shard of one dataset must agree on (the recorder enforces the same list).
CONTRACT_KEYS = ("format_version", "scenario", "wad", "map", "frame_width", "frame_height", "frame_skip", "action_names", "frame_codec")
# The salt of the held-out split: independent of --seed, so runs with different seeds share it.
HOLDOUT_SALT = "gamengen-holdout-v1"


class DatasetError(ValueError):
    """A dataset that cannot be read as recorded episodes (the message says what to change)."""


@dataclass(frozen=True)
class ColumnNames:
    """Which columns hold what (defaults: this project's recorder)."""

    frame: str = "frame"
    action: str = "action"
    episode: str = "episode_id"
    step: str = "step_id"


def add_column_arguments(group: Any) -> None:
    """The ``--frame_column/--action_column/--episode_column/--step_column`` options of every script
    that reads a dataset (for datasets of another layout, e.g. public ``frames``/``actions`` ones)."""
    group.add_argument(
        "--frame_column", default=None, help="column of encoded frames (default 'frame'); naming any column accepts datasets without gamengen metadata"
    )
    group.add_argument("--action_column", default=None, help="column of actions (default 'action')")
    group.add_argument("--episode_column", default=None, help="column of episode ids (default 'episode_id')")
    group.add_argument("--step_column", default=None, help="column of step indices within an episode (default 'step_id')")


def columns_from_args(args: Any) -> ColumnNames | None:
    """The ``ColumnNames`` the options of ``add_column_arguments`` name (None: this project's layout)."""
    explicit = {"frame": args.frame_column, "action": args.action_column, "episode": args.episode_column, "step": args.step_column}
    if all(value is None for value in explicit.values()):
        return None
    return ColumnNames(**{key: value for key, value in explicit.items() if value is not None})


@dataclass(frozen=True)
class Episode:
    """One episode's place in the dataset: rows ``start .. start + length - 1`` of shard ``shard``."""

    episode_id: str
    shard: int
    start: int
    length: int


# ----------------------------------------------------------------------------------------------
# Finding the files


def resolve_dataset(name_or_path: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub dataset id whose parquet files are downloaded (cached)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    text = str(name_or_path)
    looks_local = path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1
    if looks_local:
        raise DatasetError(f"dataset folder {text} does not exist (a Hub dataset id looks like USER/NAME)")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(repo_id=text, repo_type="dataset", revision=revision, cache_dir=cache_dir, allow_patterns=["*.parquet", "**/*.parquet"])
    except Exception as error:  # offline, missing repo, no access: all end the same way for the user
        raise DatasetError(f"could not fetch the Hub dataset {text!r} ({type(error).__name__}: {error})") from error
    return Path(local)


def find_parquet_files(directory: str | os.PathLike) -> list[Path]:
    """The ``*.parquet`` files under ``directory`` in path order, skipping hidden (temporary) ones."""
    directory = Path(directory)
    files = [p for p in directory.rglob("*.parquet") if not any(part.startswith(".") for part in p.relative_to(directory).parts)]
    return sorted(files)


# ----------------------------------------------------------------------------------------------
# Metadata


def read_metadata(path: Path) -> dict[str, Any] | None:
    """The ``gamengen`` metadata of one shard, or None when the shard has none."""
    try:
        schema = pq.read_schema(path)
    except Exception as error:  # pyarrow raises several types for corrupt files
        raise DatasetError(f"{path} is not a readable parquet file ({error})") from error
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: the '{METADATA_KEY.decode()}' metadata is not valid JSON ({error})") from error


def check_metadata(files: Sequence[Path], require_metadata: bool) -> dict[str, Any] | None:
    """The dataset's metadata, after checking that every shard has the same contract keys."""
    found = [(path, read_metadata(path)) for path in files]
    missing = [path for path, metadata in found if metadata is None]
    if missing and len(missing) < len(found):
        raise DatasetError(f"{len(missing)} of {len(found)} shards have no '{METADATA_KEY.decode()}' metadata (e.g. {missing[0]}): the folder mixes datasets")
    if missing:
        if require_metadata:
            raise DatasetError(
                f"{missing[0]} has no '{METADATA_KEY.decode()}' metadata, so it was not written by this project's recorder. "
                "If it is a dataset of another layout, pass its column names explicitly (--frame_column, --action_column, --episode_column, --step_column)."
            )
        return None
    first_path, first = found[0]
    for key in ("frame_width", "frame_height"):
        if not isinstance(first.get(key), int):
            raise DatasetError(f"{first_path}: the metadata has no integer '{key}'")
    for path, metadata in found[1:]:
        diffs = [key for key in CONTRACT_KEYS if metadata.get(key) != first.get(key)]
        if diffs:
            details = "; ".join(f"{key}: {first.get(key)!r} in {first_path.name} vs {metadata.get(key)!r} in {path.name}" for key in diffs)
            raise DatasetError(f"the shards do not belong to one dataset ({details})")
    return first


def decode_image(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> HxWx3 uint8 RGB."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _frame_bytes_array(column: pa.ChunkedArray | pa.Array, name: str, path: Path) -> pa.Array:
    """The encoded images of a frame column: plain binary, or a ``datasets`` Image struct {bytes, path}."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        column = column.field("bytes")
        kind = column.type
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise DatasetError(f"{path}: column '{name}' has type {kind}, expected encoded images (binary PNG/JPEG, or a datasets Image feature)")
    return column


# ----------------------------------------------------------------------------------------------
# The dataset


class _ShardReader:
    """Random access to the encoded frames of one parquet file, one cached row group at a time."""

    def __init__(self, path: Path, frame_column: str, cache_row_groups: int) -> None:
        self.path = path
        self.frame_column = frame_column
        self.cache_row_groups = cache_row_groups
        metadata = pq.ParquetFile(path).metadata
        sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        self.row_group_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._file: pq.ParquetFile | None = None
        self._cache: OrderedDict[int, pa.Array] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        # Open files and caches stay in the process that made them (DataLoader workers reopen).
        return {**self.__dict__, "_file": None, "_cache": OrderedDict()}

    def frame_bytes(self, row: int) -> bytes:
        group = int(np.searchsorted(self.row_group_starts, row, side="right") - 1)
        frames = self._cache.get(group)
        if frames is None:
            if self._file is None:
                self._file = pq.ParquetFile(self.path)
            table = self._file.read_row_group(group, columns=[self.frame_column])
            frames = _frame_bytes_array(table.column(0), self.frame_column, self.path)
            self._cache[group] = frames
            while len(self._cache) > self.cache_row_groups:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(group)
        value = frames[row - int(self.row_group_starts[group])].as_py()
        if value is None:
            raise DatasetError(f"{self.path}: row {row} has no frame")
        return value


class EpisodeDataset:
    """The recorded episodes of a dataset, indexed by (episode, step), with decoded frames on demand.

    ``len(dataset)`` is the number of frames; ``frame(i)`` decodes frame ``i`` of the flat index
    (episodes one after the other, in step order); ``locate(i)`` gives its (episode, step).
    ``subset`` / ``split`` make views over some episodes that share the readers.
    """

    def __init__(
        self,
        files: Sequence[Path],
        columns: ColumnNames = ColumnNames(),
        require_metadata: bool = True,
        cache_row_groups: int = 8,
        root: str | os.PathLike | None = None,
    ) -> None:
        files = [Path(p) for p in files]
        if not files:
            raise DatasetError("the dataset has no parquet files")
        self.files = files
        # Shard names are recorded relative to the root (latent caches match shards by them).
        self.root = Path(root) if root is not None else Path(os.path.commonpath([str(p.parent) for p in files]))
        self.columns = columns
        self.metadata = check_metadata(files, require_metadata)
        self._readers = [_ShardReader(path, columns.frame, cache_row_groups) for path in files]
        episodes: list[Episode] = []
        self._actions: dict[str, np.ndarray] = {}
        for shard, path in enumerate(files):
            episodes += self._index_shard(shard, path)
        if not episodes:
            raise DatasetError(f"the dataset at {files[0].parent} has no rows")
        self._all_episodes = episodes
        if self.metadata is not None:
            self.frame_width, self.frame_height = int(self.metadata["frame_width"]), int(self.metadata["frame_height"])
        else:
            first = episodes[0]
            height, width = decode_image(self._readers[first.shard].frame_bytes(first.start)).shape[:2]
            self.frame_width, self.frame_height = int(width), int(height)
        self._set_episodes(episodes)
        self.frame(0)  # fail now, not mid-training, when the frames do not match the metadata

    def _index_shard(self, shard: int, path: Path) -> list[Episode]:
        names = pq.read_schema(path).names
        wanted = {"frame": self.columns.frame, "action": self.columns.action, "episode": self.columns.episode, "step": self.columns.step}
        absent = [f"{role} column '{name}'" for role, name in wanted.items() if name not in names]
        if absent:
            raise DatasetError(
                f"{path} has no {', '.join(absent)} (its columns: {', '.join(names)}). "
                "Name the right columns with --frame_column, --action_column, --episode_column, --step_column."
            )
        table = pq.read_table(path, columns=[self.columns.episode, self.columns.step, self.columns.action])
        for position, role in ((1, "step"), (2, "action")):
            if not pa.types.is_integer(table.column(position).type):
                raise DatasetError(f"{path}: the {role} column '{table.column_names[position]}' has type {table.column(position).type}, expected integers")
        episode_ids = table.column(0).cast(pa.string()).to_numpy(zero_copy_only=False)
        steps = table.column(1).to_numpy(zero_copy_only=False).astype(np.int64)
        actions = table.column(2).to_numpy(zero_copy_only=False)
        if len(episode_ids) == 0:
            return []
        # Runs of equal episode ids: each must be a whole, ordered episode.
        change = np.flatnonzero(episode_ids[1:] != episode_ids[:-1]) + 1
        starts = np.concatenate([[0], change])
        ends = np.concatenate([change, [len(episode_ids)]])
        result = []
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            episode_id = str(episode_ids[start])
            if episode_id in self._actions:
                raise DatasetError(f"{path}: episode {episode_id!r} appears in more than one place; the rows of an episode must be contiguous and in one shard")
            if not np.array_equal(steps[start:end], np.arange(end - start)):
                raise DatasetError(f"{path}: the rows of episode {episode_id!r} are not steps 0..{end - start - 1} in order (column '{self.columns.step}')")
            self._actions[episode_id] = np.asarray(actions[start:end], dtype=np.int64)
            result.append(Episode(episode_id, shard, start, end - start))
        return result

    def _set_episodes(self, episodes: list[Episode]) -> None:
        self.episodes = episodes
        self._offsets = np.concatenate([[0], np.cumsum([e.length for e in episodes])]).astype(np.int64)

    # -- views ----------------------------------------------------------------------------------
    def subset(self, episode_ids: Sequence[str]) -> EpisodeDataset:
        """A view over the given episodes (in the dataset's order), sharing readers and caches."""
        wanted = set(episode_ids)
        unknown = wanted - {e.episode_id for e in self._all_episodes}
        if unknown:
            raise DatasetError(f"unknown episode ids: {sorted(unknown)[:5]}")
        view = object.__new__(EpisodeDataset)
        view.__dict__.update(self.__dict__)
        view._set_episodes([e for e in self._all_episodes if e.episode_id in wanted])
        return view

    def split(self, holdout_fraction: float) -> tuple[EpisodeDataset, EpisodeDataset]:
        """(train, held-out) views; see ``split_episode_ids``."""
        train_ids, heldout_ids = split_episode_ids([e.episode_id for e in self.episodes], holdout_fraction)
        return self.subset(train_ids), self.subset(heldout_ids)

    # -- access ---------------------------------------------------------------------------------
    @property
    def episode_ids(self) -> list[str]:
        return [e.episode_id for e in self.episodes]

    @property
    def all_episodes(self) -> list[Episode]:
        """Every episode of the dataset, also in a ``subset`` view (views share the files)."""
        return list(self._all_episodes)

    @property
    def action_names(self) -> list[str] | None:
        return None if self.metadata is None else list(self.metadata.get("action_names") or []) or None

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(episode index, step) of frame ``index`` of the flat index."""
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range for a dataset of {len(self)} frames")
        episode = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return episode, index - int(self._offsets[episode])

    def row_index(self, episode: int, step: int) -> int:
        """Flat index of step ``step`` of episode ``episode`` (the inverse of ``locate``)."""
        if not 0 <= step < self.episodes[episode].length:
            raise IndexError(f"step {step} out of range for episode {self.episodes[episode].episode_id!r} of {self.episodes[episode].length} steps")
        return int(self._offsets[episode]) + step

    def actions(self, episode: int) -> np.ndarray:
        """The actions of episode ``episode`` (int64, one per step)."""
        return self._actions[self.episodes[episode].episode_id]

    def shard_num_rows(self, shard: int) -> int:
        """Rows of parquet file ``files[shard]``."""
        return int(self._readers[shard].row_group_starts[-1])

    def shard_frame_indices(self, shard: int) -> np.ndarray:
        """Flat frame indices of every row of ``files[shard]``, in row order (all its episodes must be in this view)."""
        parts = [(e.start, self.row_index(i, 0), e.length) for i, e in enumerate(self.episodes) if e.shard == shard]
        indices = np.concatenate([np.arange(first, first + length) for _, first, length in sorted(parts)]) if parts else np.zeros(0, np.int64)
        if len(indices) != self.shard_num_rows(shard):
            raise DatasetError(f"{self.files[shard]}: this view holds {len(indices)} of its {self.shard_num_rows(shard)} rows; use the whole dataset")
        return indices.astype(np.int64)

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` decoded to HxWx3 uint8 RGB (checked against the dataset's frame size)."""
        episode_index, step = self.locate(index)
        episode = self.episodes[episode_index]
        reader = self._readers[episode.shard]
        frame = decode_image(reader.frame_bytes(episode.start + step))
        if frame.shape[:2] != (self.frame_height, self.frame_width):
            raise DatasetError(
                f"{reader.path}: frame {step} of episode {episode.episode_id!r} is {frame.shape[1]}x{frame.shape[0]}, "
                f"but the dataset's frames are {self.frame_width}x{self.frame_height}: frames of inconsistent size"
            )
        return frame

    def __repr__(self) -> str:
        return f"EpisodeDataset({len(self.episodes)} episodes, {len(self)} frames of {self.frame_width}x{self.frame_height}, {len(self.files)} files)"


def split_episode_ids(episode_ids: Sequence[str], holdout_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic held-out split by episode: episodes ordered by a hash of their id, the first
    ``max(1, round(fraction * n))`` held out. The same ids always give the same split, whatever the
    shard order or seed; an episode never has frames on both sides."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {holdout_fraction}")
    ids = list(dict.fromkeys(episode_ids))
    if len(ids) < 2:
        raise DatasetError(f"a held-out split needs at least 2 episodes, the dataset has {len(ids)}: record more episodes")
    num_heldout = min(len(ids) - 1, max(1, round(holdout_fraction * len(ids))))
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{HOLDOUT_SALT}:{i}".encode()).hexdigest())
    heldout = set(ranked[:num_heldout])
    return [i for i in ids if i not in heldout], [i for i in ids if i in heldout]


def open_dataset(
    name_or_path: str | os.PathLike,
    columns: ColumnNames | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    cache_row_groups: int = 8,
) -> EpisodeDataset:
    """Open a local dataset folder or Hub dataset id. With ``columns`` given explicitly, shards
    without this project's metadata are accepted (other layouts); by default the metadata is required."""
    directory = resolve_dataset(name_or_path, revision=revision, cache_dir=cache_dir)
    files = find_parquet_files(directory)
    if not files:
        raise DatasetError(f"no *.parquet files under {directory}")
    return EpisodeDataset(files, columns or ColumnNames(), require_metadata=columns is None, cache_row_groups=cache_row_groups, root=directory)


# ----------------------------------------------------------------------------------------------
# torch side


class FrameDataset(torch.utils.data.Dataset):
    """Single frames as float tensors 3xHxW in [-1, 1] (unpadded; see gamengen.model.pad_frames)."""

    def __init__(self, episodes: EpisodeDataset) -> None:
        self.episodes = episodes

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, index: int) -> torch.Tensor:
        frame = torch.from_numpy(self.episodes.frame(index).copy())
        return frame.permute(2, 0, 1).float().div(127.5).sub(1.0)


class LocalShuffleSampler(torch.utils.data.Sampler[int]):
    """A shuffle that reads the files in large blocks: the flat index is cut into chunks of
    ``chunk_size`` consecutive frames (about one parquet row group), the chunks are shuffled, and the
    frames of each group of ``chunks_per_buffer`` chunks are shuffled together. With the reader's
    row-group cache at least ``chunks_per_buffer`` large, each row group is read about once per epoch.
    Deterministic given (seed, epoch); call ``set_epoch`` before each epoch."""

    def __init__(self, num_items: int, seed: int = 0, chunk_size: int = 256, chunks_per_buffer: int = 8) -> None:
        self.num_items = num_items
        self.seed = seed
        self.chunk_size = chunk_size
        self.chunks_per_buffer = chunks_per_buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks = np.arange(0, self.num_items, self.chunk_size)
        rng.shuffle(chunks)
        for first in range(0, len(chunks), self.chunks_per_buffer):
            buffer = np.concatenate(
                [np.arange(start, min(start + self.chunk_size, self.num_items)) for start in chunks[first : first + self.chunks_per_buffer]]
            )
            rng.shuffle(buffer)
            yield from buffer.tolist()


# ----------------------------------------------------------------------------------------------
# Checks shared by the window datasets and encode_latents.py


def check_frame_size(dataset: EpisodeDataset, config: ModelConfig) -> None:
    """Refuse a dataset whose frames are not the preset's frame size (before any frame is encoded)."""
    if (dataset.frame_width, dataset.frame_height) != (config.frame_width, config.frame_height):
        raise DatasetError(
            f"the dataset's frames are {dataset.frame_width}x{dataset.frame_height}, the {config.preset!r} preset expects "
            f"{config.frame_width}x{config.frame_height}: record with --frame_size {config.frame_width}x{config.frame_height} or pick the matching --preset"
        )


def check_action_ids(
    episode_ids: Sequence[str], actions: Sequence[np.ndarray], num_actions: int | None = None, action_names: Sequence[str] | None = None
) -> int:
    """The number of actions (``num_actions``, else ``len(action_names)``), after checking that every
    action id of every episode is in ``0 .. num_actions - 1`` (the rows of the action embedding)."""
    largest = max((int(a.max()) for a in actions if len(a)), default=0)
    if num_actions is None:
        if not action_names:
            raise DatasetError(
                f"the dataset has no action_names metadata, so the number of actions is unknown: pass num_actions (--num_actions); "
                f"its largest action id is {largest}, so it needs at least {largest + 1}"
            )
        num_actions = len(action_names)
    if num_actions < 1:
        raise DatasetError(f"num_actions must be >= 1, got {num_actions}")
    for episode_id, episode_actions in zip(episode_ids, actions, strict=True):
        bad = np.flatnonzero((episode_actions < 0) | (episode_actions >= num_actions))
        if bad.size:
            step, value = int(bad[0]), int(episode_actions[bad[0]])
            names = f": {', '.join(action_names)}" if action_names and len(action_names) <= 32 else ""
            if value < 0:
                fix = "action ids are indices into the action list and cannot be negative: fix the dataset's action column"
            else:
                fix = (
                    f"record the dataset with the model's action set, or, if the ids are right, give the model more actions "
                    f"(num_actions / --num_actions >= {largest + 1}; the dataset's largest id is {largest})"
                )
            raise DatasetError(
                f"episode {episode_id!r} step {step} has action id {value}, but there are {num_actions} actions (ids 0..{num_actions - 1}{names}): {fix}"
            )
    return int(num_actions)


# ----------------------------------------------------------------------------------------------
# Context windows (DESIGN.md section 3)
#
# The sample that predicts frame t of an episode holds frames t-N .. t-1 and actions t-N .. t-1
# (action t-1 produced frame t; action t, the agent's reaction to frame t, is never in it), all of
# the same episode. Near the episode start (t < N) the context is left-padded: padded frame slots
# repeat the episode's first frame, padded action slots hold PAD_ACTION (0, NOOP), and
# ``context_mask`` is False on them. Targets start at t = min_context >= 1, so a sample always has
# at least one real frame (at t = 0 there is nothing to predict from: padding with the first frame
# would show the model its target). The engine starts from a real first frame the same way, and
# pads with the same function, ``pad_context``.

# Action id of padded context slots (NOOP in this project's action set).
PAD_ACTION = 0


def pad_context(context: torch.Tensor, actions: torch.Tensor, context_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's context from the real frames (or latents) ``(k, ...)`` before a target, oldest first, and their actions ``(k,)``.

    Returns ``(context (N, ...), actions (N,) int64, mask (N,) bool)`` with ``N = context_length``:
    with ``k < N`` the first ``N - k`` slots are padding (copies of ``context[0]``, action
    ``PAD_ACTION``, mask False); with ``k > N`` only the last N are kept. Training and inference
    both pad through this function.
    """
    if context.shape[0] != actions.shape[0]:
        raise ValueError(f"{context.shape[0]} context frames but {actions.shape[0]} actions: each context frame comes with the action taken at it")
    if context.shape[0] < 1:
        raise ValueError("the context needs at least one real frame (an episode's first frame): padding repeats it")
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}")
    context, actions = context[-context_length:], torch.as_tensor(actions[-context_length:]).to(torch.int64)
    missing = context_length - context.shape[0]
    mask = torch.ones(context_length, dtype=torch.bool)
    if missing:
        mask[:missing] = False
        context = torch.cat([context[:1].expand(missing, *context.shape[1:]), context])
        actions = torch.cat([torch.full((missing,), PAD_ACTION, dtype=torch.int64), actions])
    return context, actions, mask


class _ContextWindows(torch.utils.data.Dataset):
    """Sample ``i`` -> (episode, target step t), episodes one after the other, t = min_context .. length-1.

    Subclasses read frames ``first .. t`` of an episode (``_read``) and its actions (``_episode_actions``).
    """

    episode_ids: list[str]

    def _index_windows(self, episode_ids: Sequence[str], lengths: Sequence[int], context_length: int, min_context: int) -> None:
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {context_length}")
        if not 1 <= min_context <= context_length:
            raise ValueError(f"min_context must be in 1..context_length ({context_length}), got {min_context}: a target needs at least one real context frame")
        self.context_length = int(context_length)
        self.min_context = int(min_context)
        self.episode_ids = list(episode_ids)
        self._lengths = np.asarray(lengths, dtype=np.int64)
        counts = np.maximum(self._lengths - self.min_context, 0)
        self._window_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if self._window_offsets[-1] == 0:
            raise DatasetError(
                f"no window: none of the {len(self.episode_ids)} episodes is longer than min_context={self.min_context} steps (longest: {int(self._lengths.max(initial=0))})"
            )

    def __len__(self) -> int:
        return int(self._window_offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(episode index, target step) of sample ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} windows")
        episode = int(np.searchsorted(self._window_offsets, index, side="right") - 1)
        return episode, self.min_context + index - int(self._window_offsets[episode])

    def window_index(self, episode: int, step: int) -> int:
        """Sample index of the window whose target is step ``step`` of episode ``episode`` (inverse of ``locate``)."""
        if not self.min_context <= step < self._lengths[episode]:
            raise IndexError(f"episode {self.episode_ids[episode]!r} has targets {self.min_context}..{int(self._lengths[episode]) - 1}, not {step}")
        return int(self._window_offsets[episode]) + step - self.min_context

    def _read(self, episode: int, first: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _episode_actions(self, episode: int) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        episode, target_step = self.locate(index)
        first = max(0, target_step - self.context_length)
        real_context, target = self._read(episode, first, target_step)
        real_actions = torch.from_numpy(np.asarray(self._episode_actions(episode)[first:target_step], dtype=np.int64))
        context, actions, mask = pad_context(real_context, real_actions, self.context_length)
        return {
            "context": context,
            "target": target,
            "actions": actions,
            "context_mask": mask,
            "num_padded": torch.tensor(self.context_length - (target_step - first), dtype=torch.int64),
            "episode_index": torch.tensor(episode, dtype=torch.int64),
            "step": torch.tensor(target_step, dtype=torch.int64),
        }


class PixelWindowDataset(_ContextWindows):
    """Context windows of decoded frames (every sample decodes its N+1 frames; see ``LatentWindowDataset`` for training).

    Item: ``context`` (N, 3, H, W), ``target`` (3, H, W): float32 in [-1, 1] (``pixel_format="float"``,
    as ``FrameDataset``) or uint8 (``"uint8"``), unpadded frame size; ``actions`` (N,) int64;
    ``context_mask`` (N,) bool; ``num_padded``, ``episode_index`` (into ``episode_ids``), ``step`` (the
    target step): int64 scalars. ``encode_pixel_windows`` turns a batch into ``LatentWindowDataset``'s.
    """

    def __init__(
        self,
        episodes: EpisodeDataset,
        context_length: int,
        min_context: int = 1,
        num_actions: int | None = None,
        config: ModelConfig | None = None,
        pixel_format: str = "float",
    ) -> None:
        if pixel_format not in ("float", "uint8"):
            raise ValueError(f"pixel_format must be 'float' or 'uint8', got {pixel_format!r}")
        if config is not None:
            check_frame_size(episodes, config)
        self.episodes = episodes
        self.pixel_format = pixel_format
        self.num_actions = check_action_ids(
            episodes.episode_ids, [episodes.actions(i) for i in range(len(episodes.episodes))], num_actions, episodes.action_names
        )
        self._index_windows(episodes.episode_ids, [e.length for e in episodes.episodes], context_length, min_context)

    def _episode_actions(self, episode: int) -> np.ndarray:
        return self.episodes.actions(episode)

    def _read(self, episode: int, first: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.episodes.row_index(episode, 0)
        frames = torch.from_numpy(np.stack([self.episodes.frame(start + step) for step in range(first, target + 1)])).permute(0, 3, 1, 2)
        if self.pixel_format == "float":
            frames = frames.float().div(127.5).sub(1.0)
        return frames[:-1], frames[-1]

    def __repr__(self) -> str:
        return f"PixelWindowDataset({len(self)} windows of context {self.context_length} over {self.episodes!r})"


@torch.no_grad()
def encode_pixel_windows(vae: Any, batch: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """A ``PixelWindowDataset`` batch -> the ``LatentWindowDataset`` layout: ``context`` (B, N, C, h, w) and
    ``target`` (B, C, h, w) become float32 latents (``gamengen.model.encode_frames``: posterior mean, scaled)
    on the VAE's device; the other keys are passed through. This is the encoding a cache saves."""
    from gamengen.model import encode_frames

    context, target = batch["context"], batch["target"]
    batch_size, frames = context.shape[:2]
    pixels = torch.cat([context.flatten(0, 1), target])
    if pixels.dtype == torch.uint8:
        pixels = pixels.float().div(127.5).sub(1.0)
    device = next(vae.parameters()).device
    latents = encode_frames(vae, pixels.to(device), config).float()
    return {
        **batch,
        "context": latents[: batch_size * frames].unflatten(0, (batch_size, frames)),
        "target": latents[batch_size * frames :],
    }


# ----------------------------------------------------------------------------------------------
# Latent cache (written by encode_latents.py)
#
#   <dir>/manifest.json                    what was encoded with what (see encode_latents.py), and the
#                                          index: for each dataset shard its latent file and its
#                                          episodes as [episode_id, first row, length]
#   <dir>/shards/<shard>.safetensors       one per parquet shard, rows in the parquet's order:
#                                          "latents" (rows, C, h, w) float16 (posterior mean x scaling
#                                          factor) and "actions" (rows,) int64
#
# Files are written under a hidden temporary name and renamed, the manifest first: a shard whose
# file exists is complete; a cache whose manifest lists a missing file is unfinished.

LATENT_CACHE_FORMAT = "gamengen-latent-cache"
LATENT_CACHE_VERSION = 1
MANIFEST_FILE = "manifest.json"
LATENT_SHARDS_DIR = "shards"


def encoder_fingerprint(vae: Any) -> str:
    """sha256 of what decides a VAE's latents: its encoder and ``quant_conv`` weights (hashed as float16,
    so fp32 and fp16 loads of one VAE agree) and its scaling factor. A fine-tuned decoder does not
    change it (the paper fine-tunes only the decoder, so latents cached before stay valid)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        if name.startswith(("encoder.", "quant_conv.")):
            digest.update(f"{name}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    digest.update(f"scaling_factor:{float(vae.config.scaling_factor)!r}".encode())
    return digest.hexdigest()


def latent_file_name(source: str) -> str:
    """The cache file of the parquet shard ``source`` (its path relative to the dataset root)."""
    stem = source[: -len(".parquet")] if source.endswith(".parquet") else source
    return f"{LATENT_SHARDS_DIR}/{stem.replace('/', '__')}.safetensors"


def dataset_shards(dataset: EpisodeDataset) -> list[dict[str, Any]]:
    """What identifies each parquet shard of a (whole) dataset: its path relative to the dataset root,
    size in bytes, rows and episodes (``[episode_id, first row, length]``), plus its latent file name."""
    shards = []
    for shard, path in enumerate(dataset.files):
        source = path.relative_to(dataset.root).as_posix()
        episodes = [[e.episode_id, e.start, e.length] for e in dataset.all_episodes if e.shard == shard]
        shards.append(
            {
                "source": source,
                "size": path.stat().st_size,
                "num_rows": dataset.shard_num_rows(shard),
                "episodes": episodes,
                "file": latent_file_name(source),
            }
        )
    return shards


def dataset_fingerprint(dataset: EpisodeDataset) -> str:
    """sha256 of the shard names, sizes and episodes: equal for the same files, whatever the folder they are in."""
    described = [{k: v for k, v in shard.items() if k != "file"} for shard in dataset_shards(dataset)]
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def write_json_atomic(path: Path, values: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(values, indent=1) + "\n")
    os.replace(tmp, path)


def read_latent_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a latent cache folder, or None when there is none."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path} is not valid JSON ({error}): the latent cache is damaged; encode the dataset again into a new folder") from error
    if manifest.get("format") != LATENT_CACHE_FORMAT:
        raise DatasetError(f"{path} is not a latent cache manifest (format {manifest.get('format')!r})")
    if manifest.get("format_version") != LATENT_CACHE_VERSION:
        raise DatasetError(
            f"{path} has latent cache format version {manifest.get('format_version')}, this code reads version {LATENT_CACHE_VERSION}: encode the dataset again"
        )
    return manifest


def write_latent_shard(directory: str | os.PathLike, shard: dict[str, Any], latents: torch.Tensor, actions: np.ndarray, encoder_sha256: str) -> Path:
    """Write one shard's latents (rows, C, h, w) as float16 and its actions, atomically."""
    from safetensors.torch import save_file

    if latents.shape[0] != shard["num_rows"] or len(actions) != shard["num_rows"]:
        raise ValueError(f"{shard['source']} has {shard['num_rows']} rows, got {latents.shape[0]} latents and {len(actions)} actions")
    path = Path(directory) / shard["file"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    metadata = {"source": shard["source"], "source_size": str(shard["size"]), "num_rows": str(shard["num_rows"]), "encoder_sha256": encoder_sha256}
    tensors = {"latents": latents.detach().to("cpu", torch.float16).contiguous(), "actions": torch.as_tensor(np.asarray(actions, dtype=np.int64))}
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


class LatentCache:
    """Read side of an ``encode_latents.py`` folder: per-episode latents and actions, random access by
    (episode, step), without any VAE. The latent files are memory-mapped and opened lazily in each
    process (DataLoader workers reopen them).

    ``open_latent_cache`` also checks it against the dataset, preset and VAE a run uses.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        from safetensors import safe_open

        self.directory = Path(directory)
        manifest = read_latent_manifest(self.directory)
        if manifest is None:
            raise DatasetError(f"{self.directory} is not a latent cache (no {MANIFEST_FILE}): make one with encode_latents.py --output_dir {self.directory}")
        self.manifest = manifest
        shards = manifest["shards"]
        missing = [shard["file"] for shard in shards if not (self.directory / shard["file"]).is_file()]
        if missing:
            raise DatasetError(
                f"the latent cache {self.directory} is unfinished: {len(missing)} of {len(shards)} shards are not encoded yet (e.g. {missing[0]}). "
                "Run encode_latents.py again with the same arguments to finish it."
            )
        self.episode_ids: list[str] = []
        self._locations: list[tuple[int, int, int]] = []  # (shard, first row, length)
        self._actions: list[np.ndarray] = []
        for index, shard in enumerate(shards):
            with safe_open(str(self.directory / shard["file"]), framework="pt") as handle:
                info = handle.metadata() or {}
                if info.get("encoder_sha256") != manifest["vae"]["encoder_sha256"] or info.get("source") != shard["source"]:
                    raise DatasetError(
                        f"{self.directory / shard['file']} does not belong to this cache (it holds {info.get('source')!r} encoded by VAE "
                        f"{str(info.get('encoder_sha256'))[:12]}): delete it and run encode_latents.py again"
                    )
                actions = handle.get_tensor("actions").numpy()
                rows = handle.get_slice("latents").get_shape()[0]
            if rows != shard["num_rows"] or len(actions) != rows:
                raise DatasetError(f"{self.directory / shard['file']} has {rows} rows, the manifest says {shard['num_rows']}: delete it and encode again")
            for episode_id, first, length in shard["episodes"]:
                self.episode_ids.append(episode_id)
                self._locations.append((index, int(first), int(length)))
                self._actions.append(actions[first : first + length])
        self._index = {episode_id: i for i, episode_id in enumerate(self.episode_ids)}
        self._handles: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}

    # -- what was encoded ---------------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["latent_shape"])

    @property
    def scaling_factor(self) -> float:
        return float(self.manifest["vae"]["scaling_factor"])

    @property
    def action_names(self) -> list[str] | None:
        return self.manifest.get("action_names")

    @property
    def lengths(self) -> list[int]:
        return [length for _, _, length in self._locations]

    def episode_index(self, episode_id: str) -> int:
        if episode_id not in self._index:
            raise DatasetError(f"episode {episode_id!r} is not in the latent cache {self.directory}")
        return self._index[episode_id]

    def __len__(self) -> int:
        return sum(self.lengths)

    def actions(self, episode: int) -> np.ndarray:
        """Actions of episode ``episode`` (int64, one per step)."""
        return self._actions[episode]

    def latents(self, episode: int, start: int, stop: int) -> torch.Tensor:
        """Latents of steps ``start .. stop - 1`` of episode ``episode``: float32 (stop - start, C, h, w)."""
        shard, first, length = self._locations[episode]
        if not 0 <= start < stop <= length:
            raise IndexError(f"steps {start}..{stop - 1} out of range for episode {self.episode_ids[episode]!r} of {length} steps")
        handle = self._handles.get(shard)
        if handle is None:
            from safetensors import safe_open

            handle = self._handles[shard] = safe_open(str(self.directory / self.manifest["shards"][shard]["file"]), framework="pt")
        return handle.get_slice("latents")[first + start : first + stop].float()

    # -- checks -------------------------------------------------------------------------------------
    def check_config(self, config: ModelConfig) -> None:
        """Refuse a cache encoded for another frame size or latent shape than the preset's."""
        made = self.manifest
        expected = ((config.frame_width, config.frame_height), tuple(config.latent_shape))
        found = ((made["frame_width"], made["frame_height"]), tuple(made["latent_shape"]))
        if expected != found:
            raise DatasetError(
                f"the latent cache {self.directory} holds {found[0][0]}x{found[0][1]} frames as latents {'x'.join(map(str, found[1]))} "
                f"(preset {made.get('preset')!r}); the {config.preset!r} preset needs {expected[0][0]}x{expected[0][1]} frames as latents "
                f"{'x'.join(map(str, expected[1]))}: train with --preset {made.get('preset')}, or encode the dataset for this preset into a new folder"
            )

    def check_vae(self, vae: Any) -> None:
        """Refuse a VAE other than the one that encoded the cache (its encoder or scaling factor differ)."""
        fingerprint = encoder_fingerprint(vae)
        made = self.manifest["vae"]
        if fingerprint != made["encoder_sha256"]:
            raise DatasetError(
                f"the latent cache {self.directory} was encoded with another VAE ({made.get('name_or_path')!r}, encoder sha256 {made['encoder_sha256'][:12]}, "
                f"scaling factor {made['scaling_factor']}) than this one (encoder sha256 {fingerprint[:12]}, scaling factor {float(vae.config.scaling_factor)}): "
                "use the VAE that encoded it, or encode the dataset with this VAE into a new folder (encode_latents.py)"
            )

    def check_dataset(self, dataset: EpisodeDataset) -> None:
        """Refuse a cache made from other files than ``dataset``'s (shards matched by name, size and episodes)."""
        cached = {shard["source"]: shard for shard in self.manifest["shards"]}
        current = {shard["source"]: shard for shard in dataset_shards(dataset)}
        if not set(cached) & set(current):
            raise DatasetError(
                f"the latent cache {self.directory} was made from another dataset ({self.manifest['dataset'].get('name')!r}, shards "
                f"{', '.join(sorted(cached)[:3])}, ...); {dataset.root} has none of them: encode this dataset into a new folder"
            )
        changed = [
            name
            for name in sorted(set(cached) & set(current))
            if (cached[name]["size"], cached[name]["episodes"]) != (current[name]["size"], current[name]["episodes"])
        ]
        if changed:
            raise DatasetError(
                f"the latent cache {self.directory} was made from other versions of {len(changed)} shards (e.g. {changed[0]}: size or episodes differ): "
                "encode the dataset again into a new folder"
            )
        new = sorted(set(current) - set(cached))
        if new:
            raise DatasetError(
                f"the latent cache {self.directory} lacks {len(new)} of the dataset's shards (e.g. {new[0]}): "
                "run encode_latents.py again on this dataset with the same --output_dir to encode them"
            )
        gone = sorted(set(cached) - set(current))
        if gone:
            raise DatasetError(
                f"the latent cache {self.directory} holds {len(gone)} shards the dataset does not have (e.g. {gone[0]}): it was made from another dataset; "
                "encode this one into a new folder"
            )

    def __repr__(self) -> str:
        return f"LatentCache({len(self.episode_ids)} episodes, {len(self)} latents {'x'.join(map(str, self.latent_shape))}, {self.directory})"


def open_latent_cache(directory: str | os.PathLike, dataset: EpisodeDataset | None = None, config: ModelConfig | None = None, vae: Any = None) -> LatentCache:
    """Open a latent cache and check it against whatever of (dataset, preset config, VAE) is given."""
    cache = LatentCache(directory)
    if config is not None:
        cache.check_config(config)
    if dataset is not None:
        cache.check_dataset(dataset)
    if vae is not None:
        cache.check_vae(vae)
    return cache


class LatentWindowDataset(_ContextWindows):
    """Context windows of cached latents: the same samples and layout as ``PixelWindowDataset`` after
    ``encode_pixel_windows``, read from a ``LatentCache`` without any VAE.

    Item: ``context`` (N, C, h, w) and ``target`` (C, h, w) float32 (scaled latents); ``actions`` (N,)
    int64; ``context_mask`` (N,) bool; ``num_padded``, ``episode_index`` (into ``episode_ids``),
    ``step``: int64 scalars. ``episode_ids`` picks episodes (e.g. one side of ``split_episode_ids``).
    """

    def __init__(
        self,
        cache: LatentCache,
        context_length: int,
        min_context: int = 1,
        num_actions: int | None = None,
        episode_ids: Sequence[str] | None = None,
    ) -> None:
        self.cache = cache
        if episode_ids is None:
            self._episodes = list(range(len(cache.episode_ids)))
        else:
            wanted = set(episode_ids)
            unknown = wanted - set(cache.episode_ids)
            if unknown:
                raise DatasetError(f"episodes not in the latent cache {cache.directory}: {sorted(unknown)[:5]}")
            self._episodes = [i for i, episode_id in enumerate(cache.episode_ids) if episode_id in wanted]
        ids = [cache.episode_ids[i] for i in self._episodes]
        if num_actions is None:
            num_actions = cache.manifest.get("num_actions")  # encode_latents.py --num_actions, or len(action_names)
        self.num_actions = check_action_ids(ids, [cache.actions(i) for i in self._episodes], num_actions, cache.action_names)
        self._index_windows(ids, [cache.lengths[i] for i in self._episodes], context_length, min_context)

    def _episode_actions(self, episode: int) -> np.ndarray:
        return self.cache.actions(self._episodes[episode])

    def _read(self, episode: int, first: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        latents = self.cache.latents(self._episodes[episode], first, target + 1)
        return latents[:-1], latents[-1]

    def __repr__(self) -> str:
        return f"LatentWindowDataset({len(self)} windows of context {self.context_length} over {len(self.episode_ids)} episodes of {self.cache!r})"
