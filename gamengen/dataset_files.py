"""Where a dataset is: a local folder of parquet shards, or a Hub dataset id fetched into the local cache; a
misspelled folder is named as neither (docs/data.md)."""

from __future__ import annotations

import os
from pathlib import Path

from gamengen.errors import DatasetError
from gamengen.locations import looks_local, missing_folder, neither_folder_nor_hub


def resolve_dataset(name_or_path: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub dataset id whose parquet files are downloaded (cached)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    text = str(name_or_path)
    if looks_local(text):
        raise DatasetError(missing_folder("dataset folder", text, "dataset"))
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
        raise DatasetError(neither_folder_nor_hub(text, "dataset", error)) from error
    return Path(local)


def find_parquet_files(directory: str | os.PathLike) -> list[Path]:
    """The ``*.parquet`` files under ``directory`` in path order, skipping hidden (temporary) ones."""
    directory = Path(directory)
    found = directory.rglob("*.parquet")
    files = [path for path in found if not any(part.startswith(".") for part in path.relative_to(directory).parts)]
    return sorted(files)
