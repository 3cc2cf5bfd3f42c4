"""Atomic writes: the one way the diffusion side writes a file or a folder that a reader may see.

A writer fills a hidden temporary path beside the target (``.<name>.tmp-<pid>``), then renames it into
place, so an interrupted run never leaves a half-written file that later looks complete, and a rerun
never destroys the earlier output before the new one is whole. (The agent side, ``ViZDoomPPO/``, keeps
its own helper: the two halves meet only through files.)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_MARKER = ".tmp-"


def temporary_path(path: str | os.PathLike, suffix: str = "") -> Path:
    """The hidden temporary name beside ``path`` (``suffix`` keeps an extension some writers need)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}{suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write a file or a folder to; on success it replaces ``path``.

    A folder that already exists at ``path`` is moved aside first and removed only after the new one is
    in place. On an exception the temporary path is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = temporary_path(path, suffix)
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if tmp.is_dir() and path.is_dir():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        _remove(old)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, values: Any, indent: int = 1) -> Path:
    """Write ``values`` as JSON (with a final newline) to ``path`` atomically."""
    return write_bytes_atomic(path, json.dumps(values, indent=indent) + "\n")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
