"""Benchmark: how long a 40-answer human study takes to prepare, and how fast its page serves each clip
(docs/human_study.md#how-long-a-study-takes).

A study of the paper's lengths (20 pairs of 1.6 s and 20 of 3.2 s) is prepared from ``--model_folder`` (default: a
random-init tiny model with the quickstart's settings and the trainer's held-out split of the dataset; speed does not
depend on the weights) and ``--dataset_name``, served by ``run_human_study.py``, and answered by a robot rater
in a real headless Chromium (Playwright) that answers each clip the moment the page lets it, i.e. once both clips
have played. The robot is not a human: what it measures is the page's own part of a rater's time, the load of each
clip (from asking the server for the next clip to both clips decoded) and the playback, a floor under any rater's.

    python benchmarks/bench_human_study.py --dataset_name runs/quickstart/dataset [--model_folder M]

Results: benchmarks/results/human_study.json and a summary on stdout.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_world_model_env import quickstart_like_checkpoint  # noqa: E402

from gamengen.episodes import open_dataset, split_episode_ids  # noqa: E402

CHROMIUM = os.environ.get("GAMENGEN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def heldout_checkpoint(folder: Path, dataset_name: str) -> Path:
    """The quickstart-like model, its config naming the trainer's held-out episodes (--holdout_fraction 0.1)."""
    dataset = open_dataset(dataset_name)
    quickstart_like_checkpoint(folder, dataset.action_names)
    config = json.loads((folder / "gamengen_config.json").read_text())
    config["dataset"] = {"name": dataset_name, "heldout_episodes": split_episode_ids(dataset.episode_ids, 0.1)[1]}
    (folder / "gamengen_config.json").write_text(json.dumps(config))
    return folder


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, *command], cwd=REPO, env=env, check=True, **kwargs)


def answer_everything(url: str, clips: int) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        began = time.perf_counter()
        page.goto(url + "?rater=robot")
        for index in range(clips):
            page.wait_for_function(f"window.study.ready === true && window.study.answered === {index}", timeout=120000)
            page.keyboard.press("ArrowLeft" if index % 2 else "ArrowRight")
        page.wait_for_function("window.study.done === true", timeout=120000)
        seconds = time.perf_counter() - began
        loads = page.evaluate("window.study.loadTimes")
        errors = page.evaluate("window.study.errors")
        browser.close()
    return {"seconds": seconds, "load_ms": loads, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_name", required=True, help="recorded episodes (64x48 for the default model)")
    parser.add_argument(
        "--model_folder", default=None, help="a checkpoint (default: a random-init quickstart-like one)"
    )
    parser.add_argument("--clips_per_length", type=int, default=20)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "human_study.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model_folder or str(heldout_checkpoint(Path(scratch) / "wm", args.dataset_name))
        study = Path(scratch) / "study"
        began = time.perf_counter()
        prepare = ["run_human_study.py", "--model_folder", model, "--dataset_name", args.dataset_name, "--prepare_only"]
        run([*prepare, "--study_dir", str(study), "--clips_per_length", str(args.clips_per_length)])
        prepare_seconds = time.perf_counter() - began
        manifest = json.loads((study / "study.json").read_text())
        playback = sum(clip["frames"] for clip in manifest["clips"]) / manifest["fps"]
        sizes = [path.stat().st_size for path in (study / "clips").glob("*.png")]
        log = Path(scratch) / "serve.log"
        with open(log, "w") as out:
            server = subprocess.Popen(
                [sys.executable, "run_human_study.py", "--study_dir", str(study), "--port", "0"],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            url = None
            for _ in range(600):
                found = re.search(r"serving the study at (http://\S+/)", log.read_text())
                if found:
                    url = found.group(1)
                    break
                time.sleep(0.1)
            if url is None:
                raise RuntimeError("the study server did not start:\n" + log.read_text())
            answered = answer_everything(url, len(manifest["clips"]))
        finally:
            server.terminate()
            server.wait(timeout=30)
        answers = (study / "answers.jsonl").read_text().splitlines()
    loads = np.array(answered["load_ms"])
    result = {
        "model": args.model_folder or "random-init tiny, the quickstart's settings",
        "clips": len(manifest["clips"]),
        "fps": manifest["fps"],
        "prepare_seconds": prepare_seconds,
        "playback_seconds": playback,
        "robot_seconds": answered["seconds"],
        "robot_overhead_seconds": answered["seconds"] - playback,
        "answers_written": len(answers),
        "load_ms": {
            "median": float(np.median(loads)),
            "p90": float(np.percentile(loads, 90)),
            "max": float(loads.max()),
            "all": [round(v, 1) for v in loads.tolist()],
        },
        "clip_png_bytes": {"median": int(np.median(sizes)), "max": int(max(sizes))},
        "errors": answered["errors"],
        "load_average": os.getloadavg(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"prepared {result['clips']} pairs in {prepare_seconds:.0f} s; the robot answered all in "
        f"{answered['seconds']:.0f} s, of which {playback:.0f} s is playback; per-clip load: median "
        f"{result['load_ms']['median']:.0f} ms, 90th percentile {result['load_ms']['p90']:.0f} ms, max "
        f"{result['load_ms']['max']:.0f} ms; {len(answers)} answers written"
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
