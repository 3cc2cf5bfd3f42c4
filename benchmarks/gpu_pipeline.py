"""What benchmarks/gpu_pipeline.sh brings back of a quickstart run: the evaluation's files, the world model's rollout,
the run's facts and the goals of issue 29, met or not.

    python benchmarks/gpu_pipeline.py --run_dir RUN --output_dir DIR [--status CODE] [--seconds S] [--budget gpu]

Writes into DIR (at most 8 files, as a device call brings back): metrics.json, report.md and examples.png of the
evaluation, rollout.gif (the world model with the recorded actions beside the real frames), gpu_pipeline.md (the
device, the goals, then the quickstart's summary), gpu_pipeline.json, and gpu_pipeline_extras.tar.gz (the drift
plot, the other gifs, the trainers' summaries and validation samples, the stage logs and quickstart.json).
gpu_pipeline.log, the script's own output, is the eighth. Whatever a stage that did not finish left out is named.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gamengen.files import write_bytes_atomic, write_json_atomic  # noqa: E402

# What the quickstart run holds -> the name it gets in the output folder.
COPIED = {
    "eval/metrics.json": "metrics.json",
    "eval/report.md": "report.md",
    "eval/examples.png": "examples.png",
    "rollouts/recorded/*.gif": "rollout.gif",
}
EXTRAS = [
    "quickstart.json",
    "summary.md",
    "eval/drift.png",
    "rollouts/*/*.gif",
    "rollouts/*/*.json",
    "*/training_summary.json",
    "vae/vae_training.json",
    "*/samples/*",
    "logs/*.log",
]
# Issue 29's goals for the GPU quickstart's world model, from at most 6 minutes of GPU training.
SHARPNESS_GOAL = 0.85  # teacher-forced, relative to the real frames
PSNR_MARGIN_GOAL = 2.0  # dB above repeating the last frame, teacher-forced
FRAME_SIZE_GOAL = (128, 96)
TRAINING_SECONDS_GOAL = 360.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", required=True, help="the quickstart's run folder")
    parser.add_argument("--output_dir", required=True, help="where the results go")
    parser.add_argument("--status", type=int, default=0, help="the quickstart's exit status (124: out of time)")
    parser.add_argument("--seconds", type=float, default=None, help="how long the quickstart ran")
    parser.add_argument("--budget", default="gpu", help="the quickstart budget that ran")
    parser.add_argument("--time_bound", type=float, default=None, help="GPU_PIPELINE_BUDGET, seconds")
    return parser.parse_args(argv)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def device_name() -> str:
    """The GPU torch sees, else the CPU."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"CPU ({platform.machine()}), no CUDA device"


def copy_results(run: Path, output: Path) -> dict[str, str]:
    """Copy the evaluation's files and the rollout gif; {name: where it came from, or why it is missing}."""
    found = {}
    for pattern, name in COPIED.items():
        sources = sorted(run.glob(pattern))
        if sources:
            shutil.copyfile(sources[0], output / name)
            found[name] = str(sources[0].relative_to(run))
        else:
            found[name] = f"missing: the run has no {pattern} (its stage did not finish)"
    return found


def pack_extras(run: Path, output: Path) -> list[str]:
    """The other small results in one archive; returns what went in."""
    members = sorted({path for pattern in EXTRAS for path in run.glob(pattern) if path.is_file()})
    with tarfile.open(output / "gpu_pipeline_extras.tar.gz", "w:gz") as archive:
        for path in members:
            archive.add(path, arcname=str(path.relative_to(run)))
    return [str(path.relative_to(run)) for path in members]


def training_facts(run: Path) -> dict[str, Any]:
    """The trainers' summaries: steps, samples/s, the time, peak GPU memory (world model and student)."""
    facts = {}
    for stage, path in (("vae", "vae/vae_training.json"), ("world", "world_model/training_summary.json")):
        facts[stage] = read_json(run / path)
    facts["distill"] = read_json(run / "student" / "training_summary.json")
    return facts


def goals(metrics: dict[str, Any] | None, world: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each goal of issue 29 for this run: what was asked, what was measured, met or not (None: not measured)."""
    if metrics is None:
        return [{"goal": "the evaluation", "measured": "not measured: the evaluate stage did not finish", "met": None}]
    model, copy_last = metrics["models"][0], metrics["baselines"]["copy_last"]
    forced, copy_forced = model["teacher_forced"], copy_last["teacher_forced"]
    width, height = model["config"]["frame_size"]
    horizon = len(model["drift"].get("psnr", []))
    margin = forced["psnr"] - copy_forced["psnr"]
    seconds = (world or {}).get("train_seconds")
    return [
        {"goal": f"frames {FRAME_SIZE_GOAL[0]}x{FRAME_SIZE_GOAL[1]} or larger", "measured": f"{width}x{height}",
         "met": width >= FRAME_SIZE_GOAL[0] and height >= FRAME_SIZE_GOAL[1]},
        {"goal": f"teacher-forced sharpness {SHARPNESS_GOAL} of the real frames or more",
         "measured": f"{forced['sharpness']:.3f}", "met": forced["sharpness"] >= SHARPNESS_GOAL},
        {"goal": f"teacher-forced PSNR at least copy-last + {PSNR_MARGIN_GOAL:g} dB",
         "measured": f"{forced['psnr']:.2f} dB, copy-last {copy_forced['psnr']:.2f} ({margin:+.2f})",
         "met": margin >= PSNR_MARGIN_GOAL},
        {"goal": "the 64-frame rollout above copy-last throughout",
         "measured": f"{model['drift_frames_above_copy_last']} of {horizon} frames above "
         f"({model['drift_steps_above_copy_last']} from the first on)",
         "met": horizon >= 64 and model["drift_steps_above_copy_last"] >= horizon},
        {"goal": f"at most {TRAINING_SECONDS_GOAL / 60:g} minutes of world-model training",
         "measured": "not recorded" if seconds is None else f"{seconds:.0f} s",
         "met": None if seconds is None else seconds <= TRAINING_SECONDS_GOAL},
    ]  # fmt: skip


def render(record: dict[str, Any], summary: str | None) -> str:
    """gpu_pipeline.md: the device and the run, the goals, the stage times, then the quickstart's summary."""
    verdict = {True: "met", False: "NOT met", None: "not measured"}
    late = " (out of time)" if record["status"] in (124, 137) else ""
    bound = "" if record["time_bound"] is None else f" of a {record['time_bound']:g} s bound"
    lines = [
        f"# GPU pipeline: quickstart.py --budget {record['budget']} on {record['device']}",
        "",
        f"{record['finished']}; quickstart status {record['status']}{late}, {record['seconds']} s{bound}.",
        "",
    ]
    if record["dry_run"]:
        lines += ["**Dry run on the CPU** (the gpu-smoke budget, tiny preset): it tests the script, its numbers are "
                  "no GPU measurement.", ""]  # fmt: skip
    lines += ["| goal (issue 29) | measured | |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {g['measured']} | {verdict[g['met']]} |" for g in record["goals"]]
    lines += ["", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds} |" for stage, seconds in record["stages"].items()]
    missing = [f"{name}: {where}" for name, where in record["files"].items() if where.startswith("missing")]
    if missing:
        lines += ["", "Missing: " + "; ".join(missing)]
    return "\n".join(lines + ["", summary or "(no quickstart summary: the run did not finish)", ""])


def main(args: argparse.Namespace) -> int:
    run, output = Path(args.run_dir), Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    state = read_json(run / "quickstart.json") or {"stages": {}}
    files = copy_results(run, output)
    extras = pack_extras(run, output)
    training = training_facts(run)
    summary_path = run / "summary.md"
    record = {
        "format_version": 1,
        "budget": args.budget,
        "dry_run": args.budget != "gpu",
        "device": device_name(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "status": args.status,
        "seconds": args.seconds,
        "time_bound": args.time_bound,
        "stages": {stage: round(info["seconds"], 1) for stage, info in state["stages"].items()},
        "sizes": state.get("budget"),
        "preset": state.get("preset"),
        "training": training,
        "goals": goals(read_json(run / "eval" / "metrics.json"), training["world"]),
        "files": files,
        "extras": extras,
    }
    write_json_atomic(output / "gpu_pipeline.json", record, indent=2)
    summary = summary_path.read_text() if summary_path.is_file() else None
    write_bytes_atomic(output / "gpu_pipeline.md", render(record, summary))
    print((output / "gpu_pipeline.md").read_text().split("\n\n# Quickstart run")[0])
    print(f"-> {output}: {', '.join(sorted(p.name for p in output.iterdir()))}")
    return 0 if all(not where.startswith("missing") for where in files.values()) else 1


if __name__ == "__main__":
    sys.exit(main(parse_args()))
