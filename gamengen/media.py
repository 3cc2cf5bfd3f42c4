"""Frames for people to look at: upscaling, captioned rows of frames, gifs and mp4s.

``run_inference.py``, ``run_autoregressive.py``, ``evaluate.py`` and live play (``gamengen.play``) show
and save frames through these; every frame of a rollout is kept, none is merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from gamengen.files import atomic_path

DOOM_TICS_PER_SECOND = 35  # the game's fixed clock: every recorded frame is `frame_skip` tics after the one before


def realtime_fps(frame_skip: int) -> float:
    """The frames/s that play frames recorded every ``frame_skip`` tics at the game's own speed."""
    return DOOM_TICS_PER_SECOND / frame_skip


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of an ``(H, W, 3)`` frame (pixels stay visible as blocks)."""
    return frame if scale == 1 else frame.repeat(scale, axis=0).repeat(scale, axis=1)


def display_scale(frame_width: int) -> int:
    """The integer upscaling that shows a frame at least ~256 pixels wide (1 for the paper's 320)."""
    return max(1, round(256 / frame_width))


def captioned_row(frames: Sequence[np.ndarray], titles: Sequence[str], caption: str = "", scale: int = 1) -> np.ndarray:
    """Frames side by side (upscaled), a title above each and a caption line below: uint8 ``(H', W', 3)``
    with even height and width (what video encoders need)."""
    tiles = [upscale(np.asarray(frame), scale) for frame in frames]
    height, gap, bar = tiles[0].shape[0], 4, 14
    width = sum(tile.shape[1] for tile in tiles) + gap * (len(tiles) - 1)
    rows = bar + height + (bar if caption else 0)
    canvas = Image.new("RGB", (width + width % 2, rows + rows % 2), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for tile, title in zip(tiles, titles, strict=True):
        canvas.paste(Image.fromarray(tile), (x, bar))
        draw.text((x + 2, 1), title, fill=(255, 255, 255))
        x += tile.shape[1] + gap
    if caption:
        draw.text((2, bar + height + 1), caption, fill=(255, 255, 0))
    return np.asarray(canvas)


def write_gif(frames: list[np.ndarray], path: Path, fps: float) -> Path:
    """Every frame in order (each carries its own caption, so none is merged with its neighbour); written
    atomically."""
    images = [Image.fromarray(frame) for frame in frames]
    duration_ms = max(20, round(1000 / fps))
    with atomic_path(path, suffix=".gif") as tmp:
        images[0].save(tmp, save_all=True, append_images=images[1:], duration=duration_ms, loop=0, optimize=False)
    return path


def write_video(frames: list[np.ndarray], path: Path, fps: float) -> Path | None:
    """An mp4 of the frames when an ffmpeg backend (imageio-ffmpeg) is installed (written atomically); None
    otherwise."""
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (imageio's ffmpeg plugin needs it)
    except ImportError:
        return None
    options = {"codec": "libx264", "quality": 8, "macro_block_size": 1, "ffmpeg_log_level": "error"}
    with atomic_path(path, suffix=".mp4") as tmp, imageio.get_writer(tmp, fps=fps, **options) as writer:
        for frame in frames:
            writer.append_data(frame)
    return path
