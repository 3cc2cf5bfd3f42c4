"""Play the world model live: in a browser (default), a desktop window, or from a script (headless).

The engine (``gamengen/engine.py``: 4 DDIM steps, CFG on the context) starts from a context taken
from a recorded episode (``--dataset_name``, ``--episode``, ``--start_step``), or, without a dataset,
from the first frame of a fresh ViZDoom game with the settings the model was trained on (padded to
the model's context as training pads episode starts). Then it generates one frame per tick with the
action of the keys held (no key = the no-op), at ``--fps`` or as fast as it can. Keys: W/S or
Up/Down move, A/D or Left/Right turn, Z/X strafe, Space attacks, E uses; P pauses, N steps one
frame while paused, R goes back to the start, C starts/stops a recording (gif + the action log that
``run_autoregressive.py --actions_file`` replays). ``--side_by_side`` plays the real ViZDoom game with the
same actions beside the model, with the PSNR of every frame.

Examples (the tiny checkpoint of the README's quickstart):

    python run_playable_env.py --model_folder /tmp/wm --dataset_name /tmp/ds        # http://127.0.0.1:8000/
    python run_playable_env.py --model_folder /tmp/wm --ui pygame --side_by_side
    python run_playable_env.py --model_folder /tmp/wm --dataset_name /tmp/ds --ui headless \\
        --actions "FORWARD*16,TURN_LEFT*8,ATTACK" --output_dir outputs/play
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from gamengen.actions import parse_action_script, read_actions_file
from gamengen.cli import add_engine_arguments, dataset_from_args, engine_from_args
from gamengen.engine import EngineError
from gamengen.files import write_bytes_atomic
from gamengen.help_format import HelpFormatter
from gamengen.layout import DatasetError
from gamengen.media import realtime_fps
from gamengen.model import ModelLoadError
from gamengen.play import PlaySession, PortError, RealGame, StartContext, first_game_frame, game_settings
from gamengen.play.guard import LOOPBACK_NAMES
from gamengen.play.keymap import KeyMapError

HEADLESS_SUFFIXES = (".gif", ".mp4", ".npz", ".actions.txt", ".json", ".result.json")  # what a headless run writes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_engine_arguments(parser)
    start = parser.add_argument_group("where the game starts")
    start.add_argument(
        "--dataset_name",
        default=None,
        help="dataset folder or Hub id: the start context is taken from one of its episodes (default: the first frame "
        "of a fresh ViZDoom game)",
    )
    start.add_argument("--episode", default="0", help="the episode (index or id) whose frames are the start context")
    start.add_argument(
        "--start_step",
        type=int,
        default=None,
        help="the first generated frame is this step of the episode (default: the context length)",
    )
    ui = parser.add_argument_group("how to play")
    ui.add_argument(
        "--ui",
        choices=["web", "pygame", "headless"],
        default="web",
        help="browser page, desktop window, or scripted actions -> gif",
    )
    ui.add_argument(
        "--fps", type=float, default=None, help="frames per second to aim for (default: as fast as the engine goes)"
    )
    ui.add_argument(
        "--side_by_side",
        action="store_true",
        help="play the real ViZDoom game with the same actions beside the model (PSNR per frame)",
    )
    ui.add_argument(
        "--host",
        default="127.0.0.1",
        help="web: the address to listen on (127.0.0.1: this machine only; use SSH port forwarding from elsewhere)",
    )
    ui.add_argument("--port", type=int, default=8000, help="web: the port (0: any free one)")
    ui.add_argument(
        "--allow_host",
        action="append",
        default=[],
        metavar="NAME",
        help="web: another name this machine is reached by (repeatable); requests naming any other Host are refused "
        "(docs/play.md#who-can-connect)",
    )
    ui.add_argument(
        "--idle_action",
        default=None,
        help="the action (name or id) played while no key is held (default: the model's no-op, else action 0)",
    )
    ui.add_argument(
        "--record", action="store_true", help="record from the first frame (C toggles recording while playing)"
    )
    ui.add_argument(
        "--max_frames", type=int, default=None, help="pygame: stop after this many frames (benchmarks, tests)"
    )
    scripted = parser.add_argument_group("headless")
    scripted.add_argument(
        "--actions", default=None, metavar="SCRIPT", help='the actions to play, e.g. "FORWARD*16,TURN_LEFT*8,ATTACK"'
    )
    scripted.add_argument(
        "--actions_file",
        default=None,
        help="the actions to play from a file (the .actions.txt a recording writes, "
        "or names separated by commas/lines)",
    )
    scripted.add_argument(
        "--num_frames",
        type=int,
        default=None,
        help="frames to generate (default: the script's length; a shorter script repeats)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--output_dir", default="outputs/play", help="where recordings go (gif, mp4, .actions.txt, .json)"
    )
    output.add_argument("--name", default=None, help="file name of the headless recording (default: headless)")
    output.add_argument(
        "--overwrite",
        action="store_true",
        help="headless: replace the recording of that --name an earlier run left in --output_dir",
    )
    output.add_argument(
        "--gif_fps",
        type=float,
        default=None,
        help="playback speed of recordings (default: the game's, 35 tics/s / frame skip)",
    )
    args = parser.parse_args(argv)
    if args.ui == "headless" and (args.actions is None) == (args.actions_file is None):
        parser.error("--ui headless plays scripted actions: give --actions SCRIPT or --actions_file PATH (one of them)")
    if args.ui != "headless" and (args.actions or args.actions_file):
        parser.error("--actions/--actions_file are for --ui headless (the other UIs take the keyboard)")
    for option in ("num_frames", "max_frames"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option} must be >= 1")
    if args.fps is not None and args.fps <= 0:
        parser.error("--fps must be > 0 (leave it out to play as fast as the engine goes)")
    return args


def check_headless_output(args: argparse.Namespace) -> None:
    """A headless run names its files (``--name``): refuse to replace an earlier run's unless asked to."""
    name = args.name or "headless"
    earlier = [f"{name}{suffix}" for suffix in HEADLESS_SUFFIXES if Path(args.output_dir, name + suffix).exists()]
    if earlier and not args.overwrite:
        raise EngineError(
            f"--output_dir {args.output_dir} already holds the recording of an earlier headless run "
            f"({', '.join(earlier)}): choose another --name or --output_dir, or pass --overwrite to replace it"
        )


def make_session(args: argparse.Namespace) -> PlaySession:
    """Engine, dataset (checked against the checkpoint), start context and real game, from the options."""
    engine = engine_from_args(args)
    dataset = dataset_from_args(args, engine.config) if args.dataset_name else None
    settings = game_settings(engine.frame_size, dataset, engine.config.dataset)
    real_game = RealGame(settings, engine.action_names, seed=args.seed) if args.side_by_side else None
    if real_game is not None:
        start = StartContext.from_frame(
            real_game.reset(),
            f"the first frame of a fresh {settings.get('scenario', 'ViZDoom')} game, played beside the model",
        )
    elif dataset is not None:
        start = StartContext.from_dataset(dataset, args.episode, args.start_step, engine.context_length)
    else:
        start = StartContext.from_frame(
            first_game_frame(settings, seed=args.seed),
            f"the first frame of a fresh {settings.get('scenario', 'ViZDoom')} game",
        )
    frame_skip = settings.get("frame_skip") or 4
    replay = {"model_folder": args.model_folder, **({"dataset_name": args.dataset_name} if args.dataset_name else {})}
    return PlaySession(
        engine,
        start,
        seed=args.seed,
        real_game=real_game,
        record_dir=args.output_dir,
        replay=replay,
        gif_fps=args.gif_fps or realtime_fps(frame_skip),
        idle_action=args.idle_action,
    )


def describe(session: PlaySession) -> None:
    settings = session.engine.describe()
    print(
        f"engine on {settings['device']} ({settings['dtype']}): {settings['num_inference_steps']} DDIM steps, CFG "
        f"{settings['guidance_scale']:g}, "
        f"context {settings['context_length']} frames; start: {session.start.description}"
    )
    print("keys: " + "; ".join(session.keymap.help_lines()))


def play_headless(args: argparse.Namespace, session: PlaySession) -> dict[str, Any]:
    script = parse_action_script(
        args.actions if args.actions is not None else read_actions_file(args.actions_file), session.engine.action_names
    )
    count = args.num_frames or len(script)
    actions = [script[i % len(script)] for i in range(count)]
    session.toggle_recording()
    began = time.perf_counter()
    for action in actions:
        session.step(action)
    seconds = time.perf_counter() - began
    saved = session.save_recording(args.name or "headless")
    timing = session.engine.timing_summary(skip_first=1)
    result = {
        "ui": "headless",
        "frames": count,
        "seconds": seconds,
        "fps": count / seconds,
        "steady_fps": timing["fps"],
        "ms_per_frame": {k: timing[k] for k in ("unet_ms", "decode_ms", "total_ms")},
        **saved,
    }
    print(
        f"{count} frames in {seconds:.2f} s = {result['fps']:.1f} FPS (after the first: {timing['fps']:.1f} FPS; unet "
        f"{timing['unet_ms']:.1f} ms, "
        f"decode {timing['decode_ms']:.1f} ms per frame)"
    )
    print(f"  -> {saved['gif']}, actions {saved['actions_file']}")
    if saved["replay"]:
        print(f"  replay: {saved['replay']}")
    return result


def play_pygame(args: argparse.Namespace, session: PlaySession) -> dict[str, Any]:
    try:
        from gamengen.play.window import run_window
    except ImportError as error:
        raise EngineError(f"--ui pygame needs pygame-ce ({error}): pip install pygame-ce") from None
    result = run_window(session, fps=args.fps, max_frames=args.max_frames)
    print(f"{result['frames']} frames in {result['seconds']:.2f} s = {result['fps']:.1f} FPS (window)")
    return {"ui": "pygame", **result}


def play_web(args: argparse.Namespace, session: PlaySession) -> dict[str, Any]:
    try:
        from gamengen.play.web import GameServer, serve
    except ImportError as error:
        raise EngineError(f"--ui web needs aiohttp ({error}): pip install -r diffusion_requirements.txt") from None
    server = GameServer(session, fps=args.fps, settings=session.engine.describe(), allow_hosts=args.allow_host)

    def ready(url: str) -> None:
        print(f"serving the game at {url} (Ctrl-C stops)", flush=True)
        port = url.rstrip("/").rsplit(":", 1)[1]
        if args.host in LOOPBACK_NAMES:
            print(
                f"from another machine: ssh -L {port}:127.0.0.1:{port} THIS_HOST, then open http://127.0.0.1:{port}/ "
                "there",
                flush=True,
            )
        else:
            print(
                f"warning: --host {args.host} exposes this server, which has no authentication, to every machine that "
                "can "
                "reach this one: anyone may play it and write recordings into --output_dir. Prefer the default "
                "127.0.0.1 "
                "with SSH port forwarding.",
                file=sys.stderr,
                flush=True,
            )

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill = Ctrl-C: the session closes, a recording is saved
    try:
        asyncio.run(serve(server, args.host, args.port, ready=ready))
    except KeyboardInterrupt:
        print("stopped", flush=True)
    return {"ui": "web", "frames_served": server.frames_served, "connections": server.connections}


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.ui == "headless":
        check_headless_output(args)
    session = make_session(args)
    try:
        describe(session)
        play = {"headless": play_headless, "pygame": play_pygame, "web": play_web}[args.ui]
        if args.record and args.ui != "headless":
            session.toggle_recording()
        result = play(args, session)
    finally:
        session.close()
    for saved in session.saved:
        if saved.get("gif") and args.ui != "headless":
            print(f"recording: {saved['gif']}, actions {saved['actions_file']}")
    if args.ui == "headless":
        write_bytes_atomic(
            Path(args.output_dir, f"{args.name or 'headless'}.result.json"),
            json.dumps(result, indent=1, default=str) + "\n",
        )
    return result


if __name__ == "__main__":
    try:
        main(parse_args())
    except (DatasetError, ModelLoadError, EngineError, PortError, KeyMapError) as error:
        sys.exit(f"error: {error}")
