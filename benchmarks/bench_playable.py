"""Benchmark: frames/s of live play (run_playable_env.py) per UI, against the engine alone.

Every UI generates frames through the same engine (4 DDIM steps, CFG 1.5 on the context, fp32,
1 torch thread as the scripts default); what a UI adds on top is its own cost per frame:

* ``engine``: ``GameEngine.step`` alone (the ceiling).
* ``headless``: ``PlaySession.step`` while recording (captioned frame for the gif; what ``--ui headless`` does).
* ``headless_side_by_side``: the same with the real ViZDoom game stepped in lockstep and the PSNR.
* ``pygame``: the window loop (events, upscaling, text, blit) with ``SDL_VIDEODRIVER=dummy``.
* ``web``: ``run_playable_env.py --ui web`` as a separate process, a real headless Chromium holding a
  key; frames/s counted as the page receives them (PNG over the WebSocket, drawn on the canvas).

The model is the tiny preset with random weights (speed does not depend on them), started from the
first frame of a fresh E1M1 game (no dataset needed).

    python benchmarks/bench_playable.py [--frames 60] [--model_folder M]

Results: benchmarks/results/playable.json and a markdown table on stdout, with the load average
before and after each measurement (other work on the cores makes every number a lower bound).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from gamengen.engine import GameEngine  # noqa: E402
from gamengen.play import PlaySession, RealGame, StartContext, doom_env_module, first_game_frame, game_settings  # noqa: E402

CHROMIUM = os.environ.get("GAMENGEN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
]
CHROMIUM_ARGS += ["--disable-component-update", "--disable-sync"]
WARMUP = 5


def tiny_checkpoint(folder: Path) -> Path:
    from gamengen.checkpoint import save_world_model
    from gamengen.config import get_world_model_config
    from gamengen.model import build_world_model
    from gamengen.vae import build_vae

    torch.manual_seed(0)
    config = get_world_model_config("tiny", list(doom_env_module().ACTION_NAMES))
    return save_world_model(folder, build_world_model(config), build_vae(config.model), config)


def measured(name: str, function, frames: int) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    result = function(frames)
    result.update(ui=name, load_before=round(load_before, 2), load_after=round(os.getloadavg()[0], 2))
    print(
        f"{name}: {result['fps']:.2f} FPS over {result['frames']} frames (load {result['load_before']} -> "
        f"{result['load_after']})",
        flush=True,
    )
    return result


def timed_steps(step, frames: int) -> dict[str, Any]:
    for _ in range(WARMUP):
        step()
    began = time.perf_counter()
    for _ in range(frames):
        step()
    seconds = time.perf_counter() - began
    return {"frames": frames, "seconds": round(seconds, 3), "fps": frames / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60, help="frames measured per UI (after warm-up)")
    parser.add_argument("--model_folder", default=None, help="a checkpoint (default: a random-init tiny one)")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["engine", "headless", "headless_side_by_side", "pygame", "web"]
    )
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "playable.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

    with tempfile.TemporaryDirectory() as scratch:
        model = Path(args.model_folder) if args.model_folder else tiny_checkpoint(Path(scratch) / "wm")
        engine = GameEngine.from_pretrained(model, device="cpu", dtype="fp32")
        settings = game_settings(engine.frame_size, provenance=engine.config.dataset)
        start = StartContext.from_frame(first_game_frame(settings), "the first frame of a fresh game")
        results = []

        def session(real: bool = False) -> PlaySession:
            game = RealGame(settings, engine.action_names) if real else None
            return PlaySession(engine, start, real_game=game, record_dir=Path(scratch) / "rec")

        if "engine" not in args.skip:
            engine.reset(start.frames, start.actions)
            results.append(measured("engine", lambda n: timed_steps(lambda: engine.step(1), n), args.frames))
        for name, real in (("headless", False), ("headless_side_by_side", True)):
            if name in args.skip:
                continue
            played = session(real)
            played.toggle_recording()
            results.append(measured(name, lambda n, s=played: timed_steps(lambda: s.step(1), n), args.frames))
            played.recording = None
            played.close()
        if "pygame" not in args.skip:
            from gamengen.play.window import run_window

            played = session()
            results.append(measured("pygame", lambda n: run_window(played, max_frames=n + WARMUP), args.frames))
            results[-1]["note"] = "includes the first frames (no separate warm-up)"
        if "web" not in args.skip:
            results.append(measured("web", lambda n: web_fps(model, n), args.frames))

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(
        json.dumps({"machine": machine, "engine": engine.describe(), "torch_threads": 1, "results": results}, indent=1)
        + "\n"
    )
    print("\n| UI | frames/s | load average (before -> after) |\n|---|---|---|")
    for result in results:
        print(f"| {result['ui']} | {result['fps']:.1f} | {result['load_before']} -> {result['load_after']} |")
    print(f"\nwritten {args.output}")


def web_fps(model: Path, frames: int) -> dict[str, Any]:
    """Frames/s a real browser receives from ``run_playable_env.py --ui web`` while it holds W."""
    from playwright.sync_api import sync_playwright

    command = [
        sys.executable,
        str(REPO / "run_playable_env.py"),
        "--model_folder",
        str(model),
        "--port",
        "0",
        "--output_dir",
        tempfile.mkdtemp(),
    ]
    server = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        url = None
        while url is None:
            line = server.stdout.readline()
            if not line:
                raise RuntimeError("the server stopped before serving")
            match = re.search(r"serving the game at (\S+)", line)
            url = match.group(1) if match else None
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function(f"window.play.frames.length > {WARMUP}", timeout=120000)
            page.keyboard.down("w")
            first = page.evaluate("window.play.frames.length")
            began = time.perf_counter()
            page.wait_for_function(f"window.play.frames.length >= {first + frames}", timeout=600000, polling=10)
            seconds = time.perf_counter() - began
            reported = page.evaluate("window.play.status.fps")
            actions = page.evaluate(f"window.play.frames.slice({first + 1}).map((f) => f.action)")
            browser.close()
        assert set(actions) == {"FORWARD"}, f"the held key did not reach the server: {set(actions)}"
        return {
            "frames": frames,
            "seconds": round(seconds, 3),
            "fps": frames / seconds,
            "server_reported_fps": reported,
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
