"""Where a dataset is: a local folder of parquet shards, or a Hub dataset id fetched into the local cache; a
misspelled folder is named as neither (docs/data.md)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from gamengen.errors import DatasetError


def resolve_dataset(name_or_path: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub dataset id whose parquet files are downloaded (cached)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    text = str(name_or_path)
    looks_local = path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1
    if looks_local:
        raise DatasetError(
            f"dataset folder {text} does not exist{_near_misses(path)} (a Hub dataset id looks like USER/NAME)"
        )
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            repo_id=text,
            repo_type="dataset",
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=["*.parquet", "**/*.parquet"],
        )
    except Exception as error:  # offline, missing repo, no access: all end the same way for the user
        # USER/NAME is also how a local folder one level down is written (runs/dataset): a misspelled folder
        # lands here, so say that it is neither.
        reason = (str(error).strip().splitlines() or [""])[0]
        raise DatasetError(
            f"no folder {text} (in {Path.cwd()}){_near_misses(path)}, and could not fetch the Hub dataset {text!r} "
            f"({type(error).__name__}: {reason}): check the folder's path, or the Hub id and the network"
        ) from error
    return Path(local)


def _near_misses(path: Path) -> str:
    """' (did you mean runs/dataset?)' when the parent folder holds folders of a similar name, else ''."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        folders = [child.name for child in parent.iterdir() if child.is_dir()]
    except OSError:  # no such parent, or unreadable: nothing to suggest
        return ""
    close = difflib.get_close_matches(path.name, folders, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(str(parent / name) for name in close)}?)" if close else ""


def find_parquet_files(directory: str | os.PathLike) -> list[Path]:
    """The ``*.parquet`` files under ``directory`` in path order, skipping hidden (temporary) ones."""
    directory = Path(directory)
    found = directory.rglob("*.parquet")
    files = [path for path in found if not any(part.startswith(".") for part in path.relative_to(directory).parts)]
    return sorted(files)
