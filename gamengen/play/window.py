"""The desktop UI: a pygame(-ce) window showing the frames, an overlay and the key map.

Keys are tracked from KEYDOWN/KEYUP events (in the order they were pressed), so the same key map
as the browser applies. ``max_frames`` stops after that many generated frames (tests run it with
``SDL_VIDEODRIVER=dummy``); ``on_frame(session, frame_number)`` is called after each frame.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
import pygame  # noqa: E402  (after the variable that quiets its banner)

from gamengen.play import COMMAND_KEYS, PlaySession, pygame_key_code

PANEL_WIDTH = 300
LINE = 16


def run_window(
    session: PlaySession,
    fps: float | None = None,
    max_frames: int | None = None,
    on_frame: Callable[[PlaySession, int], Any] | None = None,
) -> dict[str, Any]:
    """Play in a window until it is closed (or ``max_frames`` frames); returns frames and frames/s."""
    pygame.init()
    try:
        font = pygame.font.Font(None, 20)
        view = session.scaled_view()
        screen = pygame.display.set_mode(
            (view.shape[1] + PANEL_WIDTH, max(view.shape[0] + 2 * LINE, LINE * (len(session.keymap.help_lines()) + 3)))
        )
        pygame.display.set_caption("GameNGen: the world model")
        held: list[str] = []
        clock_start, generated, period = time.perf_counter(), 0, 1.0 / fps if fps else 0.0
        running = True
        while running and (max_frames is None or generated < max_frames):
            began = time.perf_counter()
            stepped = False
            for event in pygame.event.get():
                if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE):
                    running = False
                elif event.type == pygame.KEYDOWN:
                    code = pygame_key_code(pygame.key.name(event.key))
                    command = COMMAND_KEYS.get(code)
                    if command == "pause":
                        session.paused = not session.paused
                        session.mark_idle()
                    elif command == "reset":
                        session.reset()
                    elif command == "record":
                        saved = session.toggle_recording()
                        if saved:
                            print(f"recording saved: {saved['gif']}, actions {saved['actions_file']}", flush=True)
                    elif command == "step" and session.paused:
                        session.step(session.keymap.action_for(held))
                        session.mark_idle()
                        stepped = True
                    elif code is not None and code not in held:
                        held.append(code)
                elif event.type == pygame.KEYUP:
                    code = pygame_key_code(pygame.key.name(event.key))
                    if code in held:
                        held.remove(code)
                elif event.type == pygame.WINDOWFOCUSLOST:
                    held.clear()
            if not running:
                break
            if not session.paused:
                session.step(session.keymap.action_for(held))
                stepped = True
            if stepped:
                generated += 1
                if on_frame is not None:
                    on_frame(session, generated)
            draw(screen, font, session)
            pygame.display.flip()
            rest = period - (time.perf_counter() - began) if stepped else 0.02
            if rest > 0:
                time.sleep(rest)
        seconds = time.perf_counter() - clock_start
        return {"frames": generated, "seconds": seconds, "fps": generated / seconds if seconds > 0 else 0.0}
    finally:
        pygame.quit()


def draw(screen, font, session: PlaySession) -> None:
    screen.fill((0, 0, 0))
    view = session.scaled_view()
    surface = pygame.surfarray.make_surface(np.ascontiguousarray(view.transpose(1, 0, 2)))
    screen.blit(surface, (0, 0))
    stats = session.stats()
    fps = "-" if stats["fps"] is None else f"{stats['fps']:.1f}"
    ms = "-" if stats["ms"] is None else f"{stats['ms']:.0f}"
    text = f"{fps} FPS  {ms} ms/frame  #{stats['frame']} {stats['action']}"
    if stats["psnr"] is not None:
        text += f"  PSNR {stats['psnr']:.1f} dB"
    text += "  PAUSED" * stats["paused"] + "  REC" * stats["recording"]
    screen.blit(font.render(text, True, (255, 255, 0)), (4, view.shape[0] + 4))
    x = view.shape[1] + 12
    for row, line in enumerate(["keys:", *session.keymap.help_lines()]):
        active = line.startswith(stats["action"] + ":")
        screen.blit(font.render(line, True, (120, 255, 120) if active else (200, 200, 200)), (x, 4 + row * LINE))
