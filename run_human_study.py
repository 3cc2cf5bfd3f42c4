"""The human study of GameNGen (section 5.1): can people tell the real game from the world model?

Raters see two clips side by side that start from the same recorded moment and follow the same recorded actions:
one is the real game, the other the world model's own frames, on sides drawn per rater. They pick the one they
think is real. The paper's raters picked the real game 58% of the time for 1.6 s clips and 60% for 3.2 s clips
(50% = they cannot tell). Three steps (docs/human_study.md):

    prepare   generate the clip pairs from a world model and the held-out episodes of a dataset (a study folder)
    serve     the study page: http://127.0.0.1:8001/, one or more raters; answers go to <study_dir>/answers.jsonl,
              one synced line each, and an interrupted study resumes where each rater stopped
    report    picked-the-real-clip per clip length with a 95% interval, beside the paper's numbers

Example (the quickstart's run folder):

    python run_human_study.py prepare --model_folder runs/quickstart/world_model \\
        --dataset_name runs/quickstart/dataset --study_dir runs/quickstart/study
    python run_human_study.py serve --study_dir runs/quickstart/study        # open http://127.0.0.1:8001/
    python run_human_study.py report --study_dir runs/quickstart/study
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from gamengen.files import write_bytes_atomic, write_json_atomic
from gamengen.layout import DatasetError
from gamengen.study.answers import ANSWERS_FILE, AnswerError, AnswerLog, read_answers
from gamengen.study.clips import PAPER_LENGTHS, StudyError, frames_for, load_study
from gamengen.study.report import report_markdown, study_table

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{prepare,serve,report}")
    prepare = commands.add_parser(
        "prepare",
        help="generate the clip pairs into a new study folder",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from gamengen.cli import add_engine_arguments  # the model's options (torch is imported only to prepare)

    add_engine_arguments(prepare)
    clips = prepare.add_argument_group("the clips")
    clips.add_argument(
        "--dataset_name", default=None, help="dataset of the starts (default: the model's training data)"
    )
    clips.add_argument("--study_dir", required=True, help="the new study folder (never replaced once it exists)")
    clips.add_argument(
        "--lengths",
        default=",".join(f"{s:g}" for s in PAPER_LENGTHS),
        help="clip lengths in seconds, at the dataset's frame rate (the paper's: 1.6,3.2)",
    )
    clips.add_argument(
        "--clips_per_length", type=int, default=20, help="clip pairs of each length (20+20 = 40 answers)"
    )
    clips.add_argument(
        "--episodes",
        nargs="*",
        default=None,
        help="episodes to start from (ids or indices; default: the held-out ones)",
    )
    clips.add_argument("--batch_size", type=int, default=8, help="clips generated together in one engine batch")
    serve = commands.add_parser(
        "serve", help="serve the study page to raters", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    serve.add_argument("--study_dir", required=True, help="a study folder made by prepare")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (127.0.0.1: this machine only; 0.0.0.0: the LAN too, with a warning)",
    )
    serve.add_argument("--port", type=int, default=8001, help="the port (0: any free one)")
    serve.add_argument(
        "--allowed_host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name raters may use in the URL besides localhost and IP addresses (repeatable)",
    )
    report = commands.add_parser("report", help="the result table (also written to report.md and report.json)")
    report.add_argument("--study_dir", required=True, help="a study folder made by prepare")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        if args.carry_detail:
            parser.error(
                "--carry_detail pastes the real frame's detail into the generated clip: the study shows the "
                "model's own frames"
            )
        try:
            args.lengths = [float(v) for v in args.lengths.split(",") if v.strip()]
        except ValueError:
            parser.error(f"--lengths is a comma-separated list of seconds such as 1.6,3.2, got {args.lengths!r}")
    return args


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    from gamengen.cli import dataset_from_args, engine_from_args
    from gamengen.starts import dataset_fps
    from gamengen.study.prepare import plan_study, prepare_study

    engine = engine_from_args(args)
    dataset = dataset_from_args(args, engine.config)
    fps, _ = dataset_fps(dataset)
    lengths = ", ".join(f"{s:g} s = {frames_for(s, fps)} frames" for s in args.lengths)
    print(f"clips at {fps:g} frames/s: {lengths}; {args.clips_per_length} pairs per length")
    plan = plan_study(engine, dataset, args.study_dir, args.lengths, args.clips_per_length, args.episodes, args.seed)
    print(f"starts from episodes {plan.episodes_source}")
    provenance = {"model_folder": str(args.model_folder), "dataset_name": str(args.dataset_name)}
    with tqdm(total=plan.pairs, desc="clip pairs", unit="pair") as progress:
        study = prepare_study(engine, dataset, plan, args.seed, args.batch_size, provenance, progress.update)
    print(
        f"prepared {len(study.clips)} clip pairs in {args.study_dir}; serve them with:\n"
        f"  python run_human_study.py serve --study_dir {args.study_dir}"
    )
    return {"clips": len(study.clips), "study_dir": str(args.study_dir)}


def report(args: argparse.Namespace) -> dict[str, Any]:
    study = load_study(args.study_dir)
    records, problems = read_answers(Path(args.study_dir) / ANSWERS_FILE)
    rows = study_table(study, records)
    text = report_markdown(study, rows, problems)
    write_bytes_atomic(Path(args.study_dir) / "report.md", text)
    write_json_atomic(Path(args.study_dir) / "report.json", {"rows": rows, "problems": problems})
    print(text)
    return {"rows": rows, "problems": problems}


def serve(args: argparse.Namespace) -> dict[str, Any]:
    from gamengen.study.server import StudyServer, serve_study

    study = load_study(args.study_dir)
    log = AnswerLog(Path(args.study_dir) / ANSWERS_FILE)
    if args.host not in LOOPBACK_HOSTS:
        print(
            f"warning: --host {args.host} exposes the study page, which has no authentication: anyone who can reach "
            "this machine can see the clips and answer under any rater id. Use it on a network you trust.",
            flush=True,
        )
    for problem in log.problems:
        print(f"note: {problem}", flush=True)
    raters = sorted(log.answered)
    print(
        f"{len(study.clips)} clip pairs; {len(log.records)} answers so far"
        + (f" from {', '.join(raters)}" if raters else ""),
        flush=True,
    )
    server = StudyServer(study, Path(args.study_dir), log, args.allowed_host)

    def ready(url: str) -> None:
        print(f"serving the study at {url} (answers -> {log.path}); Ctrl-C stops it", flush=True)

    async def run() -> None:
        task = asyncio.ensure_future(serve_study(server, args.host, args.port, ready))
        loop = asyncio.get_running_loop()
        for stop in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(stop, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    try:
        asyncio.run(run())
    finally:
        log.close()
    print(f"stopped: {len(log.records)} answers in {log.path}")
    return report(args)


def main(args: argparse.Namespace) -> dict[str, Any]:
    return {"prepare": prepare, "serve": serve, "report": report}[args.command](args)


if __name__ == "__main__":
    arguments = parse_args()
    refused: tuple[type[Exception], ...] = (DatasetError, StudyError, AnswerError, OSError)
    if arguments.command == "prepare":  # the model's errors (their modules import torch, which serving does not need)
        from gamengen.actions import EngineError
        from gamengen.model import ModelLoadError

        refused += (EngineError, ModelLoadError)
    try:
        main(arguments)
    except refused as error:
        sys.exit(f"error: {error}")
