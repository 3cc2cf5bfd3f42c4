"""Actions by id or by name, the ONE grammar of action names, action scripts in both directions, and action files.

An action's name is read as a set of controls (``FORWARD_TURN_LEFT`` = FORWARD + TURN_LEFT, ``MOVE_RIGHT`` =
STRAFE_RIGHT as ViZDoom's button strafes, ``NOOP`` = none; separators ``_``, ``+``, ``-`` or spaces) by
``action_controls``. Everything else that reads a name derives from it: the play key map
(``gamengen.play.keymap``), the IDM's categories (``action_category``), the evaluation's coarser kinds of change
(``motion_kind``), the mirror image of an action (``mirrored_actions``, for the IDM's augmentation) and the turn
direction (``turn_direction``, for the detail carry-over).

An action script is the compact text form of a sequence of actions: comma-separated names (or ids),
each optionally repeated with ``*count`` (``FORWARD*16,TURN_LEFT*8,ATTACK``). ``run_autoregressive.py
--actions`` and ``run_playable_env.py --actions`` read it, ``--actions_file`` reads it from a file, and
live play writes the actions it played in it (``action_script``), so a played game can be replayed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gamengen.errors import EngineError

# ----------------------------------------------------------------------------------------------
# The grammar of action names

CONTROLS = ("FORWARD", "BACKWARD", "TURN_LEFT", "TURN_RIGHT", "STRAFE_LEFT", "STRAFE_RIGHT", "ATTACK", "USE")
# Other spellings of the controls in action names (ViZDoom button names, common synonyms).
CONTROL_ALIASES = {
    "MOVE_FORWARD": "FORWARD",
    "MOVE_BACKWARD": "BACKWARD",
    "BACK": "BACKWARD",
    "MOVE_LEFT": "STRAFE_LEFT",
    "MOVE_RIGHT": "STRAFE_RIGHT",
    "LEFT": "TURN_LEFT",
    "RIGHT": "TURN_RIGHT",
    "FIRE": "ATTACK",
    "SHOOT": "ATTACK",
}
NO_CONTROL_NAMES = ("NOOP", "NO_OP", "NONE", "IDLE", "NOTHING")
MIRRORED_CONTROLS = {
    "TURN_LEFT": "TURN_RIGHT",
    "TURN_RIGHT": "TURN_LEFT",
    "STRAFE_LEFT": "STRAFE_RIGHT",
    "STRAFE_RIGHT": "STRAFE_LEFT",
}
# The IDM's categories, in precedence order: the control that changes the view most names a combination.
CATEGORIES = ("turn_left", "turn_right", "move", "strafe", "attack_use", "still", "other")
MOTION_KINDS = ("turning", "moving", "still", "other")


def _read_controls(name: str) -> tuple[frozenset[str], bool]:
    """The controls found in an action name, and whether every word of it was one (longest spelling first:
    TURN_LEFT before LEFT)."""
    words = [word for word in re.split(r"[^A-Z0-9]+", name.upper()) if word]
    if "_".join(words) in NO_CONTROL_NAMES:
        return frozenset(), True
    vocabulary = {**{control: control for control in CONTROLS}, **CONTROL_ALIASES}
    controls, understood, index = set(), bool(words), 0
    while index < len(words):
        for width in (2, 1):
            word = "_".join(words[index : index + width])
            if len(words[index : index + width]) == width and word in vocabulary:
                controls.add(vocabulary[word])
                index += width
                break
        else:
            understood, index = False, index + 1
    return frozenset(controls), understood


def action_controls(name: str) -> frozenset[str] | None:
    """The controls an action name holds (``FORWARD_TURN_LEFT`` -> {FORWARD, TURN_LEFT}; ``NOOP`` -> {}), or
    None when the name is not made of known controls (``SELECT_WEAPON2``, ``ACTION_3``)."""
    controls, understood = _read_controls(name)
    return controls if understood else None


def action_category(name: str) -> str:
    """The IDM's category of an action: ``turn_left``, ``turn_right``, ``strafe``, ``move`` (forward/back),
    ``attack_use``, ``still`` (no control) or ``other``. A combination takes the category of the control that
    changes the view most: turn > strafe > move > attack/use, so FORWARD_TURN_LEFT is ``turn_left``,
    FORWARD_ATTACK ``move``; opposite turns (TURN_LEFT+TURN_RIGHT) have no single direction: ``other``. Words that
    are no control are skipped (``SPEED_FORWARD`` is ``move``); a name with no control at all is ``other``."""
    controls, understood = _read_controls(name)
    if not controls:
        return "still" if understood else "other"
    turns = controls & {"TURN_LEFT", "TURN_RIGHT"}
    if len(turns) == 2:
        return "other"
    if turns:
        return next(iter(turns)).lower()
    if controls & {"STRAFE_LEFT", "STRAFE_RIGHT"}:
        return "strafe"
    return "move" if controls & {"FORWARD", "BACKWARD"} else "attack_use"


def motion_kind(name: str) -> str:
    """What kind of change an action makes to the next frame, coarser than ``action_category``: ``turning`` (any
    turn), ``moving`` (forward, backward, strafe), ``still`` (no control) or ``other`` (attack, use, unknown)."""
    controls, understood = _read_controls(name)
    if controls & {"TURN_LEFT", "TURN_RIGHT"}:
        return "turning"
    if controls & {"FORWARD", "BACKWARD", "STRAFE_LEFT", "STRAFE_RIGHT"}:
        return "moving"
    return "still" if understood and not controls else "other"


def turn_direction(name: str) -> int:
    """+1 for an action that turns the view left, -1 right, 0 neither (opposite turns: neither)."""
    return {"turn_left": 1, "turn_right": -1}.get(action_category(name), 0)


def mirrored_actions(action_names: Sequence[str]) -> np.ndarray:
    """For each action, the id of the action whose effect is its mirror image (left and right swapped: NOOP and
    FORWARD are their own mirrors), or -1 where the action set has none or the name is not made of controls."""
    controls = [action_controls(name) for name in action_names]
    index: dict[frozenset[str], int] = {}
    for action, held in enumerate(controls):
        if held is not None:
            index.setdefault(held, action)
    mirrors = [
        -1 if held is None else index.get(frozenset(MIRRORED_CONTROLS.get(c, c) for c in held), -1) for held in controls
    ]
    return np.array(mirrors, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# Actions by id or name, scripts and files


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
