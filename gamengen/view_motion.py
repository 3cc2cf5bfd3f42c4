"""How far DOOM's view turns on each step, and how its columns move: for the engine's detail carry-over.

The detail carry-over (docs/engine.md#detail-carry-over) keeps the texture the VAE loses from the newest real
frame and adds it to the generated frames. When the player turns, that texture must move with the view, or it
stays at its old place as a ghost. A turn in DOOM is exact and known in advance from the actions alone:

- A turn button held for a tic turns the view by 320 angle units (of 65,536 per circle, 1.76 degrees) for the
  first five tics it is held and by 640 (3.52 degrees) after that (DOOM's "slow turn" start, ``SLOWTURNTICS``);
  releasing every turn button starts the count again. With the dataset's frame skip of 4, the k-th turning
  step in a row turns 7.03, 12.30, then 14.06 degrees: the recorded ``angle`` column shows exactly these values.
- DOOM projects with a 90-degree horizontal field of view onto a 4:3 frame, so the focal length is half the
  frame's width, and a turn by ``a`` moves the column at offset ``u`` from the centre to ``f tan(atan(u / f) + a)``
  (to the right for a left turn). The status bar (the bottom 32 of DOOM's 200 rows) does not move.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gamengen.actions import turn_direction
from gamengen.metrics import status_bar_rows

SLOW_TURN_TICS = 6  # a turn held for fewer tics than this turns slowly (DOOM's SLOWTURNTICS)
SLOW_TURN_DEGREES = 320 / 65536 * 360  # per tic, while slow
FAST_TURN_DEGREES = 640 / 65536 * 360  # per tic, after


def turn_directions(action_names: Sequence[str], metadata: dict[str, Any]) -> list[int] | None:
    """+1 for each action that turns left, -1 right, 0 neither, from the dataset's ``action_buttons`` (or the
    action names where the metadata has no buttons); None when the dataset records no frame skip (then the
    engine cannot know how far a step turns)."""
    if not metadata.get("frame_skip"):
        return None
    buttons = metadata.get("action_buttons")
    if buttons and len(buttons) == len(action_names):
        action_names = ["+".join(map(str, pressed)) for pressed in buttons]
    return [turn_direction(name) for name in action_names]


def trailing_turns(actions: Sequence[int], directions: Sequence[int]) -> int:
    """How many steps in a row, at the end of ``actions``, held a turn button (either way, as DOOM counts)."""
    count = 0
    for action in reversed(actions):
        if not directions[action]:
            break
        count += 1
    return count


def turn_degrees(turning_steps: int, frame_skip: int) -> float:
    """Degrees the view turns on the ``turning_steps``-th step in a row with a turn button held (1 = the first),
    each step ``frame_skip`` tics."""
    first = (turning_steps - 1) * frame_skip + 1  # DOOM counts the held tics from 1
    return sum(
        SLOW_TURN_DEGREES if tic < SLOW_TURN_TICS else FAST_TURN_DEGREES for tic in range(first, first + frame_skip)
    )


def turned_columns(width: int, degrees: float) -> np.ndarray:
    """For each column of the frame after a turn by ``degrees`` (positive = left), the column of the frame before
    that it shows (nearest), or -1 where it shows what was outside the view."""
    focal = width / 2  # 90-degree field of view
    offsets = np.arange(width) + 0.5 - width / 2  # each new column's centre, from the frame's centre
    source = focal * np.tan(np.arctan(offsets / focal) - math.radians(degrees)) + width / 2
    columns = np.floor(source).astype(np.int64)
    columns[(source < 0) | (source >= width)] = -1
    return columns


def turn_view(image: np.ndarray, degrees: float, fill: np.ndarray) -> np.ndarray:
    """``image`` ``(H, W, C)`` as the view turned by ``degrees`` shows it: the 3D view's columns moved, the status
    bar kept; where the view shows what ``image`` did not, ``fill``'s pixels."""
    height, width = image.shape[:2]
    rows = height - status_bar_rows(height)
    columns = turned_columns(width, degrees)
    seen = columns >= 0
    turned = image.copy()
    turned[:rows, seen] = image[:rows, columns[seen]]
    turned[:rows, ~seen] = fill[:rows, ~seen]
    return turned
