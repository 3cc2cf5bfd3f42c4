"""Live play of a world model (``run_playable_env.py``, docs/play.md): the parts every UI shares.

* ``keymap``: held keys -> the checkpoint's action (``KeyMap``), the command keys, pygame key names.
* ``real_game``: ViZDoom beside the model (``RealGame``), its settings, the first frame of a fresh game.
* ``session``: where a game starts (``StartContext``) and one player's game (``PlaySession``): the
  engine stepped one action at a time, its clock, pause and recording.
* ``web`` (the browser UI) and ``window`` (the pygame window) are imported on their own: each needs its
  own library (aiohttp, pygame).

Actions and action scripts are in ``gamengen.actions``, gifs and videos in ``gamengen.media``.
"""

from __future__ import annotations

from gamengen.errors import PortError
from gamengen.play.keymap import COMMAND_KEYS, DEFAULT_CONTROL_KEYS, KeyMap, action_controls, pygame_key_code
from gamengen.play.real_game import RealGame, doom_env_module, first_game_frame, game_settings
from gamengen.play.session import PlaySession, Recording, StartContext

__all__ = [
    "COMMAND_KEYS",
    "DEFAULT_CONTROL_KEYS",
    "KeyMap",
    "PlaySession",
    "PortError",
    "RealGame",
    "Recording",
    "StartContext",
    "action_controls",
    "doom_env_module",
    "first_game_frame",
    "game_settings",
    "pygame_key_code",
]
