"""How a dataset's files are laid out: which columns hold what, when a row's frame was taken, and the
file-level metadata (schema key ``gamengen``) every shard of one dataset must agree on (docs/data.md).

``gamengen.episodes`` reads the episodes through these; the scripts that read a dataset share the column
options (``add_column_arguments`` / ``columns_from_args``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from gamengen.errors import DatasetError

METADATA_KEY = b"gamengen"
# Metadata keys every shard of one dataset must agree on: the recorder enforces the same list
# (ViZDoomPPO/common/utils.py CONTRACT_KEYS; tests/test_data.py keeps the two equal).
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


@dataclass(frozen=True)
class ColumnNames:
    """Which columns hold what (defaults: this project's recorder), and when each row's frame was taken.

    ``frame_timing``: ``before_action`` (ours: a row's frame is the screen its action was taken at, so action
    ``t`` produced frame ``t + 1``) or ``after_action`` (the seed repository's layout: a row's frame is the
    screen captured after its action, so action ``t`` produced frame ``t``). Such datasets are read with the
    actions moved one row earlier, which gives this project's timing: the last frame's action is unknown
    (stored as 0) and never shown to the model, since a window for frame ``t`` uses actions up to ``t - 1``.
    None (not stated) is settled by ``settle_frame_timing`` when the dataset is opened.
    """

    frame: str = "frame"
    action: str = "action"
    episode: str = "episode_id"
    step: str = "step_id"
    frame_timing: str | None = None


FRAME_TIMINGS = ("before_action", "after_action")
# The seed repository's layout (github.com/arnaudstiegler/gameNgen-repro): one parquet file per episode, JPEG
# frames captured after each row's action, no schema metadata. Recognised by its columns.
PEER_COLUMNS = ColumnNames(
    frame="frames", action="actions", episode="episode_id", step="step_ids", frame_timing="after_action"
)


def add_dataset_arguments(group: Any, cached: str = "datasets and models") -> None:
    """``--dataset_name`` (required), ``--cache_dir`` (where Hub ``cached`` go) and the column options of
    ``add_column_arguments``: the dataset options of every script that trains on or encodes a dataset."""
    group.add_argument(
        "--dataset_name", required=True, help="dataset folder of parquet shards, or a Hub dataset id (USER/NAME)"
    )
    group.add_argument("--cache_dir", default=None, help=f"where Hub {cached} are cached")
    add_column_arguments(group)


def add_column_arguments(group: Any) -> None:
    """The ``--frame_column/--action_column/--episode_column/--step_column`` options of every script
    that reads a dataset (for datasets of another layout, e.g. public ``frames``/``actions`` ones)."""
    group.add_argument(
        "--frame_column",
        default=None,
        help="column of encoded frames (default 'frame'); naming any column accepts datasets without gamengen metadata",
    )
    group.add_argument("--action_column", default=None, help="column of actions (default 'action')")
    group.add_argument("--episode_column", default=None, help="column of episode ids (default 'episode_id')")
    group.add_argument(
        "--step_column", default=None, help="column of step indices within an episode (default 'step_id')"
    )
    group.add_argument(
        "--frame_timing",
        choices=FRAME_TIMINGS,
        default=None,
        help="before_action (this project: a row's action produced the next row's frame) or after_action (a row's "
        "frame was captured after its action, as in the seed repository's datasets). Default: before_action for a "
        "dataset with this project's metadata, after_action for the seed layout's columns; any other dataset must "
        "name it",
    )


def columns_from_args(args: Any) -> ColumnNames | None:
    """The ``ColumnNames`` the options of ``add_column_arguments`` name (None: this project's layout, or a
    layout ``open_dataset`` recognises)."""
    names = (args.frame_column, args.action_column, args.episode_column, args.step_column)
    explicit = dict(zip(("frame", "action", "episode", "step"), names, strict=True))
    explicit["frame_timing"] = getattr(args, "frame_timing", None)
    if all(value is None for value in explicit.values()):
        return None
    return ColumnNames(**{key: value for key, value in explicit.items() if value is not None})


def settle_frame_timing(columns: ColumnNames, metadata: dict[str, Any] | None, path: Path) -> ColumnNames:
    """``columns`` with a frame timing: the one stated, else this project's for a dataset with its metadata (its
    recorder wrote it), else the seed repository's for the seed layout's column names; otherwise nothing says
    when the frames were taken, and a guess would pair every target frame with the wrong action silently."""
    if columns.frame_timing is not None:
        return columns
    if metadata is not None:
        return replace(columns, frame_timing="before_action")
    if replace(columns, frame_timing=PEER_COLUMNS.frame_timing) == PEER_COLUMNS:
        print(
            f"note: columns {columns.frame}, {columns.action}, {columns.episode}, {columns.step} are the seed "
            "repository's layout: read with its timing, frames captured after their action (--frame_timing "
            "after_action; pass --frame_timing before_action if this dataset's frames come before their action)",
            flush=True,
        )
        return PEER_COLUMNS
    raise DatasetError(
        f"{path} has no '{METADATA_KEY.decode()}' metadata, so nothing says when its frames were taken relative to "
        "their actions: pass --frame_timing before_action if a row's action produced the next row's frame (a row "
        "holds the screen its action was taken at, as this project records), or --frame_timing after_action if a "
        "row's frame was captured after its action (as the seed repository's datasets); in Python, "
        "ColumnNames(frame_timing=...). Read with the wrong one, every target frame is paired with the action "
        "before the one that produced it"
    )


def recognise_layout(path: Path) -> ColumnNames | None:
    """The seed repository's layout (by its columns, in a shard without this project's metadata), else None."""
    schema = pq.read_schema(path)
    peer = {PEER_COLUMNS.frame, PEER_COLUMNS.action, PEER_COLUMNS.episode, PEER_COLUMNS.step}
    if (schema.metadata or {}).get(METADATA_KEY) is None and peer <= set(schema.names) and "frame" not in schema.names:
        return PEER_COLUMNS
    return None


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
        raise DatasetError(
            f"{len(missing)} of {len(found)} shards have no '{METADATA_KEY.decode()}' metadata (e.g. {missing[0]}): "
            "the folder mixes datasets"
        )
    if missing:
        if require_metadata:
            raise DatasetError(
                f"{missing[0]} has no '{METADATA_KEY.decode()}' metadata, "
                "so it was not written by this project's recorder. "
                "If it is a dataset of another layout, pass its column names explicitly "
                "(--frame_column, --action_column, --episode_column, --step_column)."
            )
        return None
    first_path, first = found[0]
    for key in ("frame_width", "frame_height"):
        if not isinstance(first.get(key), int):
            raise DatasetError(f"{first_path}: the metadata has no integer '{key}'")
    for path, metadata in found[1:]:
        diffs = [key for key in CONTRACT_KEYS if metadata.get(key) != first.get(key)]
        if diffs:
            details = "; ".join(
                f"{key}: {first.get(key)!r} in {first_path.name} vs {metadata.get(key)!r} in {path.name}"
                for key in diffs
            )
            raise DatasetError(f"the shards do not belong to one dataset ({details})")
    return first
