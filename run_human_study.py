"""The human study of GameNGen (section 5.1): can people tell the real game from the world model?

Raters see two clips side by side that start from the same recorded moment and follow the same recorded actions:
one is the real game, the other the world model's own frames, on sides drawn per rater. They pick the one they
think is real. The paper's raters picked the real game 58% of the time for 1.6 s clips and 60% for 3.2 s clips
(50% = they cannot tell). One command prepares the clip pairs (the first time: a study folder) and serves the page;
each answer goes to <study_dir>/answers.jsonl as one synced line, and the same command again resumes the study
where each rater stopped. ``--report`` prints the result per clip length with a 95% interval beside the paper's.
docs/human_study.md has the details, and how to run a study with several people on one machine or a LAN.

Example (the quickstart's run folder):

    python run_human_study.py --model_folder runs/quickstart/world_model --dataset_name runs/quickstart/dataset \\
        --study_dir runs/quickstart/study          # then open http://127.0.0.1:8001/
    python run_human_study.py --study_dir runs/quickstart/study --report
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from gamengen.cli import add_engine_arguments
from gamengen.engine import EngineError
from gamengen.files import write_bytes_atomic, write_json_atomic
from gamengen.help_format import HelpFormatter as SharedHelpFormatter
from gamengen.layout import DatasetError
from gamengen.model import ModelLoadError
from gamengen.play.guard import LOOPBACK_NAMES
from gamengen.study.answers import ANSWERS_FILE, AnswerError, AnswerLog, read_answers
from gamengen.study.clips import PAPER_LENGTHS, STUDY_FILE, StudyError, frames_for, load_study
from gamengen.study.report import report_markdown, study_table


class HelpFormatter(SharedHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default, and the docstring's example command as written."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__[__doc__.index("Example") :], formatter_class=HelpFormatter
    )
    add_engine_arguments(parser)
    for action in parser._actions:  # the model is needed only to prepare a study, not to serve or report it
        if action.dest == "model_folder":
            action.required = False
            action.help += " (needed the first time, to prepare the clips)"
    study = parser.add_argument_group("the study")
    study.add_argument("--study_dir", required=True, help="the study folder: made the first time, then resumed")
    study.add_argument(
        "--dataset_name", default=None, help="dataset whose held-out episodes start the clips (default: the model's)"
    )
    study.add_argument(
        "--lengths",
        default=",".join(f"{s:g}" for s in PAPER_LENGTHS),
        help="clip lengths in seconds, at the dataset's frame rate (the paper's: 1.6,3.2)",
    )
    study.add_argument("--clips_per_length", type=int, default=20, help="clip pairs per length (20+20: 40 answers)")
    study.add_argument(
        "--episodes",
        nargs="*",
        default=None,
        help="episodes to start from (ids or indices; default: the held-out ones)",
    )
    study.add_argument("--batch_size", type=int, default=8, help="clips generated together in one engine batch")
    mode = study.add_mutually_exclusive_group()
    mode.add_argument("--prepare_only", action="store_true", help="prepare the clips and stop (serve them later)")
    mode.add_argument("--report", action="store_true", help="print the result table (report.md, report.json) and stop")
    serve = parser.add_argument_group("the page")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (127.0.0.1: this machine only; 0.0.0.0: the LAN too, with a warning)",
    )
    serve.add_argument("--port", type=int, default=8001, help="the port (0: any free one)")
    serve.add_argument(
        "--allow_host",
        "--allowed_host",  # the earlier spelling; run_playable_env.py's is --allow_host
        dest="allow_host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name raters may use in the URL besides localhost and IP addresses (repeatable)",
    )
    args = parser.parse_args(argv)
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


def prepare(args: argparse.Namespace) -> None:
    """Generate the clip pairs into a new study folder."""
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
    print(f"prepared {len(study.clips)} clip pairs in {args.study_dir}")


def check_same_model(args: argparse.Namespace) -> None:
    """A study is resumed with the model it was prepared with (or without naming one)."""
    study = load_study(args.study_dir)
    if args.model_folder and Path(args.model_folder).resolve() != Path(study.model_folder).resolve():
        raise StudyError(
            f"{args.study_dir} holds a study of the model {study.model_folder}, not {args.model_folder}: its answers "
            "belong to its clips. Resume it without --model_folder, or give a new --study_dir for the other model"
        )


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
    if args.host not in LOOPBACK_NAMES:
        print(
            f"warning: --host {args.host} exposes the study page, which has no authentication: anyone who can reach "
            "this machine can see the clips and answer under any rater id. Use it on a network you trust.",
            flush=True,
        )
    for problem in log.problems:
        print(f"note: {problem}", flush=True)
    raters = sorted(log.answered)
    so_far = f"{len(log.records)} answers so far" + (f" from {', '.join(raters)}" if raters else "")
    print(f"{len(study.clips)} clip pairs; {so_far}", flush=True)
    server = StudyServer(study, Path(args.study_dir), log, args.allow_host)

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
    prepared = (Path(args.study_dir) / STUDY_FILE).is_file()
    if args.report:
        return report(args)
    if prepared:
        check_same_model(args)
        print(
            f"{args.study_dir} holds a prepared study: "
            + ("nothing to prepare" if args.prepare_only else "resuming it")
        )
    elif args.model_folder is None:
        raise StudyError(
            f"{args.study_dir} holds no study yet: give --model_folder (and --dataset_name) to prepare its clips"
        )
    else:
        prepare(args)
    if args.prepare_only:
        return {"study_dir": str(args.study_dir)}
    return serve(args)


if __name__ == "__main__":
    try:
        main(parse_args())
    except (DatasetError, ModelLoadError, EngineError, StudyError, AnswerError, OSError) as error:
        sys.exit(f"error: {error}")
