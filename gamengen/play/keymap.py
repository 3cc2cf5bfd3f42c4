"""Held keys -> the checkpoint's action (docs/play.md).

Every action name is read as a set of controls by the one grammar of ``gamengen.actions``
(``FORWARD_TURN_LEFT`` = FORWARD + TURN_LEFT, ``NOOP`` = none) and each control has default keys
(``DEFAULT_CONTROL_KEYS``, browser ``KeyboardEvent.code`` names); the held controls pick the action whose
controls match them exactly, else the largest action contained in them, else the no-op. Actions whose names
are not made of known controls are bound to digit keys. The pygame window translates its key names to the
browser's codes (``pygame_key_code``), so both UIs share one key map.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gamengen.actions import action_controls
from gamengen.errors import KeyMapError

# Controls, and the keys that hold them by default (KeyboardEvent.code names; pygame keys are
# translated to these by ``pygame_key_code``).
DEFAULT_CONTROL_KEYS: dict[str, tuple[str, ...]] = {
    "FORWARD": ("KeyW", "ArrowUp"),
    "BACKWARD": ("KeyS", "ArrowDown"),
    "TURN_LEFT": ("KeyA", "ArrowLeft"),
    "TURN_RIGHT": ("KeyD", "ArrowRight"),
    "STRAFE_LEFT": ("KeyZ", "Comma"),
    "STRAFE_RIGHT": ("KeyX", "Period"),
    "ATTACK": ("Space", "ControlLeft", "ControlRight"),
    "USE": ("KeyE", "Enter"),
}
COMMAND_KEYS: dict[str, str] = {"KeyP": "pause", "KeyR": "reset", "KeyN": "step", "KeyC": "record"}
COMMAND_HELP = {
    "pause": "pause / resume",
    "reset": "back to the start",
    "step": "one frame (while paused)",
    "record": "start / stop recording",
}
DIGIT_KEYS = tuple(f"Digit{d}" for d in "1234567890")
# Keys for the actions no control combination reaches, in this order: the digits, then letters no control or
# command uses (a peer checkpoint has 18 actions named ACTION_0..17).
ACTION_KEYS = DIGIT_KEYS + tuple(f"Key{letter}" for letter in "QTYUIOFGHJKLVBM")


class KeyMap:
    """Held keys -> the checkpoint's action, derived from its action names (see the module docstring)."""

    def __init__(
        self,
        action_names: Sequence[str],
        control_keys: dict[str, Sequence[str]] | None = None,
        idle_action: str | int | None = None,
    ) -> None:
        self.action_names = list(action_names)
        self.control_keys = {control: tuple(keys) for control, keys in (control_keys or DEFAULT_CONTROL_KEYS).items()}
        self.key_controls = {key: control for control, keys in self.control_keys.items() for key in keys}
        self.controls = [action_controls(name) for name in self.action_names]
        empty = [i for i, controls in enumerate(self.controls) if controls == frozenset()]
        # What plays while no key is held: the no-op, or the action the user names. A model without a no-op
        # (e.g. a peer checkpoint whose action 0 turns left) idles on action 0, and says so (idle_note).
        self.has_noop = bool(empty)
        self.noop = self._action_index(idle_action) if idle_action is not None else (empty[0] if empty else 0)
        # Actions no control combination reaches get a key of their own (digits, then free letters).
        unreachable = [
            i for i, controls in enumerate(self.controls) if controls is None or (not controls and i != self.noop)
        ]
        used = {*self.key_controls, *COMMAND_KEYS}
        free_keys = [key for key in ACTION_KEYS if key not in used or key in DIGIT_KEYS]
        self.digit_actions = dict(zip(free_keys, unreachable, strict=False))
        self.unbound = unreachable[len(free_keys) :]
        for key in self.digit_actions:
            self.key_controls.pop(key, None)

    def _action_index(self, action: str | int) -> int:
        if isinstance(action, int) or str(action).isdigit():
            index = int(action)
            if not 0 <= index < len(self.action_names):
                raise KeyMapError(
                    f"idle action {index} is out of range: the model has actions 0..{len(self.action_names) - 1}"
                )
            return index
        if action not in self.action_names:
            raise KeyMapError(
                f"idle action {action!r} is not one of the model's actions: {', '.join(self.action_names)}"
            )
        return self.action_names.index(action)

    @property
    def idle_note(self) -> str:
        """What plays while no key is held, said plainly when it is not a no-op."""
        name = self.action_names[self.noop]
        if self.controls[self.noop] == frozenset():
            return f"no key: {name}"
        why = "" if self.has_noop else " (the model has no no-op action)"
        return f"no key: {name}{why}; choose another with --idle_action"

    @property
    def bound_keys(self) -> list[str]:
        """Every key the game listens to (controls, digits, commands): the page stops their default action."""
        return sorted({*self.key_controls, *self.digit_actions, *COMMAND_KEYS})

    def action_for(self, held: Iterable[str]) -> int:
        """The action the held keys (codes, in the order they were pressed) ask for."""
        held = list(held)
        for key in reversed(held):  # a digit key selects its action directly (the latest pressed wins)
            if key in self.digit_actions:
                return self.digit_actions[key]
        wanted = {self.key_controls[key] for key in held if key in self.key_controls}
        best, best_size = self.noop, 0
        for index, controls in enumerate(self.controls):
            if not controls:
                continue
            if controls == wanted:
                return index
            if controls <= wanted and len(controls) > best_size:
                best, best_size = index, len(controls)
        return best

    def action_keys(self, index: int) -> str:
        """The keys of an action, as shown on screen (``W/Up + A/Left``)."""
        for key, action in self.digit_actions.items():
            if action == index:
                return short_key(key)
        if index in self.unbound:
            return "(no key left: more actions than keys)"
        controls = self.controls[index]
        if not controls:
            return "(no key)"
        return " + ".join(
            "/".join(short_key(k) for k in self.control_keys.get(c, ())) or f"({c}: unbound)"
            for c in sorted(controls, key=_control_order)
        )

    def describe(self) -> list[dict[str, Any]]:
        """One row per action: id, name, keys (what the UIs show)."""
        return [{"id": i, "name": name, "keys": self.action_keys(i)} for i, name in enumerate(self.action_names)]

    def help_lines(self) -> list[str]:
        lines = [self.idle_note] + [f"{row['name']}: {row['keys']}" for row in self.describe()]
        lines += [f"{short_key(key)}: {COMMAND_HELP[command]}" for key, command in COMMAND_KEYS.items()]
        return lines


def _control_order(control: str) -> int:
    order = list(DEFAULT_CONTROL_KEYS)
    return order.index(control) if control in order else len(order)


def short_key(code: str) -> str:
    """``KeyW`` -> ``W``, ``ArrowUp`` -> ``Up``, ``Digit1`` -> ``1``, ``ControlLeft`` -> ``Ctrl``."""
    for prefix in ("Key", "Digit", "Arrow"):
        if code.startswith(prefix) and len(code) > len(prefix):
            return code[len(prefix) :]
    return {"ControlLeft": "Ctrl", "ControlRight": "RCtrl", "Comma": ",", "Period": "."}.get(code, code)


def pygame_key_code(name: str) -> str | None:
    """A pygame key name (``pygame.key.name``) -> the browser code the key map uses."""
    name = name.lower()
    if len(name) == 1 and name.isalpha():
        return f"Key{name.upper()}"
    if len(name) == 1 and name.isdigit():
        return f"Digit{name}"
    return {
        "up": "ArrowUp",
        "down": "ArrowDown",
        "left": "ArrowLeft",
        "right": "ArrowRight",
        "space": "Space",
        "left ctrl": "ControlLeft",
        "right ctrl": "ControlRight",
        "return": "Enter",
        ",": "Comma",
        ".": "Period",
    }.get(name)
