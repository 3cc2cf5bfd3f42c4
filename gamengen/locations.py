"""Where a name given on the command line points: a local folder, or a Hugging Face Hub id (USER/NAME) fetched
into the local cache. USER/NAME is also how a folder one level down is written (runs/world), so a misspelled
folder lands on the Hub path; the messages here then say that it is neither, and name the folders it may have
meant (datasets, checkpoints, VAEs and seed decoders alike)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path


def looks_local(name_or_path: str | os.PathLike) -> bool:
    """True for an existing path, one that starts with ``.``, ``/`` or ``~``, or one that is not USER/NAME."""
    text = str(name_or_path)
    return Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or text.count("/") != 1


def near_misses(path: str | os.PathLike) -> str:
    """' (did you mean runs/world?)' when the parent folder holds folders of a similar name, else ''."""
    path = Path(path).expanduser()
    parent = path.parent if str(path.parent) else Path(".")
    try:
        folders = [child.name for child in parent.iterdir() if child.is_dir()]
    except OSError:  # no such parent, or unreadable: nothing to suggest
        return ""
    close = difflib.get_close_matches(path.name, folders, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(str(parent / name) for name in close)}?)" if close else ""


def missing_folder(what: str, name: str | os.PathLike, hub_kind: str) -> str:
    """The message for a local-looking name with no folder behind it."""
    return f"{what} {name} does not exist{near_misses(name)} (a Hub {hub_kind} id looks like USER/NAME)"


def neither_folder_nor_hub(name: str | os.PathLike, hub_what: str, error: BaseException) -> str:
    """The message for a USER/NAME that is no local folder and could not be fetched from the Hub either."""
    reason = (str(error).strip().splitlines() or [""])[0]
    return (
        f"no folder {name} (in {Path.cwd()}){near_misses(name)}, and could not fetch the {hub_what} {str(name)!r} "
        f"from the Hub ({type(error).__name__}: {reason}): check the folder's path, or the Hub id and the network "
        "(HF_HUB_OFFLINE=1 allows only what is cached)"
    )
