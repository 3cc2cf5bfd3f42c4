"""Actions by id or by name, action scripts in both directions, and action files.

An action script is the compact text form of a sequence of actions: comma-separated names (or ids),
each optionally repeated with ``*count`` (``FORWARD*16,TURN_LEFT*8,ATTACK``). ``run_autoregressive.py
--actions`` and ``run_playable_env.py --actions`` read it, ``--actions_file`` reads it from a file, and
live play writes the actions it played in it (``action_script``), so a played game can be replayed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gamengen.errors import EngineError


def action_id(action: int | str | np.integer, action_names: Sequence[str]) -> int:
    """An action given by id or by name (exact, or case-insensitive when unambiguous) -> its id."""
    if isinstance(action, (int, np.integer)) and not isinstance(action, bool):
        if not 0 <= int(action) < len(action_names):
            raise EngineError(
                f"action id {int(action)} is out of range: "
                f"the model has {len(action_names)} actions (ids 0..{len(action_names) - 1})"
            )
        return int(action)
    if isinstance(action, str):
        if action in action_names:
            return list(action_names).index(action)
        folded = [i for i, name in enumerate(action_names) if name.lower() == action.strip().lower()]
        if len(folded) == 1:
            return folded[0]
        raise EngineError(f"unknown action {action!r}: the model's actions are {', '.join(action_names)}")
    raise EngineError(f"an action is an id or a name, got {action!r} ({type(action).__name__})")


def parse_action_script(script: str, action_names: Sequence[str]) -> list[int]:
    """``"FORWARD*16,TURN_LEFT*8,ATTACK"`` -> action ids: comma-separated names (or ids), each
    optionally repeated with ``*count``."""
    ids: list[int] = []
    for item in script.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, count_text = item.partition("*")
        try:
            count = int(count_text) if count_text else 1
        except ValueError:
            raise EngineError(f"bad repeat count in {item!r}: write NAME*COUNT, e.g. FORWARD*16") from None
        if count < 1:
            raise EngineError(f"repeat count in {item!r} must be >= 1")
        name = name.strip()
        ids += [action_id(int(name) if name.isdigit() else name, action_names)] * count
    if not ids:
        raise EngineError(f"the action script {script!r} names no action (example: FORWARD*16,TURN_LEFT*8,ATTACK)")
    return ids


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
    """An action script from a file: names (``NAME*COUNT``) separated by commas or new lines; ``#``
    starts a comment."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(
            f"--actions_file {path} does not exist "
            "(write action names like FORWARD*16,TURN_LEFT*8, or record one with the C key)"
        )
    items = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            items += [item.strip() for item in line.split(",") if item.strip()]
    if not items:
        raise EngineError(f"--actions_file {path} names no action (example content: FORWARD*16,TURN_LEFT*8,ATTACK)")
    return ",".join(items)


def context_action_ids(
    actions: Any, action_names: Sequence[str], batch: int, count: int, batched: bool
) -> list[list[int]]:
    """The ids of the actions taken at every context frame but the newest: ``count - 1`` per context, for
    ``batch`` contexts (``actions``: one row per context when ``batched``, else one row; None: no actions)."""
    expected = count - 1
    if actions is None:
        actions = np.zeros((batch, 0), dtype=np.int64) if batched else []
    rows = list(actions) if batched else [actions]
    if len(rows) != batch:
        raise EngineError(f"{len(rows)} action rows for a batch of {batch} contexts")
    ids = []
    for row in rows:
        row = list(np.asarray(row).reshape(-1)) if not isinstance(row, (list, tuple)) else list(row)
        if len(row) != expected:
            raise EngineError(
                f"{count} context frames need {expected} actions (those taken at every frame but the newest; "
                f"the newest frame's action is the one step() takes), got {len(row)}"
            )
        ids.append([action_id(a, action_names) for a in row])
    return ids
