"""Read the recorded episodes (parquet; the format is described in docs/data.md) for the diffusion side.

The agent side writes one row per step: ``episode_id``, ``step_id``, ``frame`` (PNG/JPEG bytes),
``action``, ... with the file-level metadata under the schema key ``gamengen``. This module reads
those files itself (pyarrow only), so the two halves of the project meet only through the files.

``EpisodeDataset`` is an index of (episode, step) rows with random access to decoded frames:
episode ``e``'s step ``t`` is ``dataset.frame(dataset.row_index(e, t))``, its action
``dataset.actions(e)[t]``. Frames are read one parquet row group at a time and the last few row
groups are cached, so scanning or locally shuffled access (``gamengen.samplers``) is cheap.

A dataset is a local folder of ``*.parquet`` shards (searched recursively; hidden files such as
half-written shards are skipped) or a Hugging Face Hub dataset id, whose parquet files are fetched
with ``huggingface_hub.snapshot_download`` (as files, so the per-shard metadata survives).
Datasets of other layouts (e.g. ``frames``/``actions`` columns, or a ``datasets`` Image column)
are read through explicit column names (``gamengen.layout.ColumnNames``) and ``require_metadata=False``.

The world model's training samples are built on top of this: ``gamengen.windows`` (context windows)
and ``gamengen.latent_cache`` (the frames' latents, encoded once by ``encode_latents.py``).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from gamengen.dataset_files import find_parquet_files, resolve_dataset
from gamengen.layout import (
    FRAME_TIMINGS,
    ColumnNames,
    DatasetError,
    check_metadata,
    recognise_layout,
    settle_frame_timing,
)

# The salt of the held-out split: independent of --seed, so runs with different seeds share it.
HOLDOUT_SALT = "gamengen-holdout-v1"


@dataclass(frozen=True)
class Episode:
    """One episode's place in the dataset: rows ``start .. start + length - 1`` of shard ``shard``."""

    episode_id: str
    shard: int
    start: int
    length: int


# ----------------------------------------------------------------------------------------------
# Finding the files


def decode_image(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> HxWx3 uint8 RGB (a writable array: torch warns on read-only ones)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))


def damaged_shard(path: Path, error: BaseException, what: str) -> DatasetError:
    """The error for a parquet file whose bytes are damaged (the footer may still read fine)."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return DatasetError(
        f"{path} is damaged: reading {what} failed ({reason}). The file was cut short or overwritten (an "
        "interrupted copy or download?): download or record it again, or move it out of the dataset folder."
    )


def _frame_bytes_array(column: pa.ChunkedArray | pa.Array, name: str, path: Path) -> pa.Array:
    """The encoded images of a frame column: plain binary, or a ``datasets`` Image struct {bytes, path}."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        column = column.field("bytes")
        kind = column.type
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise DatasetError(
            f"{path}: column '{name}' has type {kind}, "
            "expected encoded images (binary PNG/JPEG, or a datasets Image feature)"
        )
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
            try:
                table = self._file.read_row_group(group, columns=[self.frame_column])
            except (OSError, pa.ArrowException) as error:
                raise damaged_shard(self.path, error, f"the frames of row group {group}") from None
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
        if columns.frame_timing is not None and columns.frame_timing not in FRAME_TIMINGS:
            raise DatasetError(f"frame_timing {columns.frame_timing!r}: one of {', '.join(FRAME_TIMINGS)}")
        self.metadata = check_metadata(files, require_metadata)
        self.columns = settle_frame_timing(columns, self.metadata, files[0])
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
        columns = self.columns
        wanted = {"frame": columns.frame, "action": columns.action, "episode": columns.episode, "step": columns.step}
        absent = [f"{role} column '{name}'" for role, name in wanted.items() if name not in names]
        if absent:
            raise DatasetError(
                f"{path} has no {', '.join(absent)} (its columns: {', '.join(names)}). "
                "Name the right columns with --frame_column, --action_column, --episode_column, --step_column."
            )
        try:
            table = pq.read_table(path, columns=[self.columns.episode, self.columns.step, self.columns.action])
        except (OSError, pa.ArrowException) as error:
            raise damaged_shard(path, error, "the episode, step and action columns") from None
        for position, role in ((1, "step"), (2, "action")):
            if not pa.types.is_integer(table.column(position).type):
                column_type = table.column(position).type
                raise DatasetError(
                    f"{path}: the {role} column '{table.column_names[position]}' has type {column_type}, "
                    "expected integers"
                )
        episode_ids = table.column(0).cast(pa.string()).to_numpy(zero_copy_only=False)
        steps = table.column(1).to_numpy(zero_copy_only=False).astype(np.int64)
        actions = np.array(table.column(2).to_numpy(zero_copy_only=False))  # a writable copy: torch warns on views
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
                raise DatasetError(
                    f"{path}: episode {episode_id!r} appears in more than one place; "
                    "the rows of an episode must be contiguous and in one shard"
                )
            if not np.array_equal(steps[start:end], np.arange(end - start)):
                raise DatasetError(
                    f"{path}: the rows of episode {episode_id!r} are not steps 0..{end - start - 1} in order "
                    f"(column '{self.columns.step}')"
                )
            episode_actions = np.asarray(actions[start:end], dtype=np.int64)
            if self.columns.frame_timing == "after_action":  # action t produced frame t: move it to row t - 1
                episode_actions = np.concatenate([episode_actions[1:], np.zeros(1, dtype=np.int64)])
            self._actions[episode_id] = episode_actions
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
            episode_info = self.episodes[episode]
            raise IndexError(
                f"step {step} out of range for episode {episode_info.episode_id!r} of {episode_info.length} steps"
            )
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
        ranges = [np.arange(first, first + length) for _, first, length in sorted(parts)]
        indices = np.concatenate(ranges) if parts else np.zeros(0, np.int64)
        if len(indices) != self.shard_num_rows(shard):
            raise DatasetError(
                f"{self.files[shard]}: this view holds {len(indices)} of its {self.shard_num_rows(shard)} rows; "
                "use the whole dataset"
            )
        return indices.astype(np.int64)

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` decoded to HxWx3 uint8 RGB (checked against the dataset's frame size)."""
        episode_index, step = self.locate(index)
        episode = self.episodes[episode_index]
        reader = self._readers[episode.shard]
        try:
            frame = decode_image(reader.frame_bytes(episode.start + step))
        except (OSError, ValueError, SyntaxError) as error:  # what PIL raises on damaged image bytes
            if isinstance(error, DatasetError):
                raise
            raise damaged_shard(reader.path, error, f"frame {step} of episode {episode.episode_id!r}") from None
        if frame.shape[:2] != (self.frame_height, self.frame_width):
            raise DatasetError(
                f"{reader.path}: frame {step} of episode {episode.episode_id!r} is {frame.shape[1]}x{frame.shape[0]}, "
                f"but the dataset's frames are {self.frame_width}x{self.frame_height}: frames of inconsistent size"
            )
        return frame

    def __repr__(self) -> str:
        return (
            f"EpisodeDataset({len(self.episodes)} episodes, {len(self)} frames of "
            f"{self.frame_width}x{self.frame_height}, {len(self.files)} files)"
        )


def shard_actions(dataset: EpisodeDataset, shard: int) -> np.ndarray:
    """The actions of every row of one shard, in the shard's row order."""
    parts = sorted((e.start, i) for i, e in enumerate(dataset.episodes) if e.shard == shard)
    return np.concatenate([dataset.actions(i) for _, i in parts])


def split_episode_ids(episode_ids: Sequence[str], holdout_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic held-out split by episode: episodes ordered by a hash of their id, the first
    ``max(1, round(fraction * n))`` held out. The same ids always give the same split, whatever the
    shard order or seed; an episode never has frames on both sides."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {holdout_fraction}")
    ids = list(dict.fromkeys(episode_ids))
    if len(ids) < 2:
        raise DatasetError(
            f"a held-out split needs at least 2 episodes, the dataset has {len(ids)}: record more episodes"
        )
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
    require_metadata = columns is None
    if columns is None and (recognised := recognise_layout(files[0])) is not None:
        print(
            f"note: {name_or_path} has the seed repository's layout (columns {recognised.frame}, {recognised.action}, "
            f"{recognised.episode}, {recognised.step}; frames captured after their action): read as such "
            "(--frame_timing after_action)",
            flush=True,
        )
        columns, require_metadata = recognised, False
    return EpisodeDataset(files, columns or ColumnNames(), require_metadata, cache_row_groups, root=directory)
