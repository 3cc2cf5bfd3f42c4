"""Several quickstart seeds summarised: the mean, spread and range of every headline number of the runs'
evaluations (the model's own frames), in ``<output_dir>/summary.md``."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from gamengen.files import write_bytes_atomic

# Headline numbers of one evaluation: (label, how to read it from metrics.json, decimals).
HEADLINES: list[tuple[str, Any, int]] = [
    ("PSNR (dB)", lambda m: m["models"][0]["teacher_forced"]["psnr"], 2),
    ("copy-last PSNR (dB)", lambda m: m["baselines"]["copy_last"]["teacher_forced"]["psnr"], 2),
    (
        "PSNR minus copy-last",
        lambda m: m["models"][0]["teacher_forced"]["psnr"] - m["baselines"]["copy_last"]["teacher_forced"]["psnr"],
        2,
    ),
    (
        "true minus shuffled actions (dB)",
        lambda m: m["models"][0]["teacher_forced"]["psnr"] - m["models"][0]["shuffled_actions"]["psnr"],
        2,
    ),
    ("SSIM", lambda m: m["models"][0]["teacher_forced"]["ssim"], 3),
    ("GMSD (lower is better)", lambda m: m["models"][0]["teacher_forced"]["gmsd"], 3),
    ("copy-last GMSD", lambda m: m["baselines"]["copy_last"]["teacher_forced"]["gmsd"], 3),
    ("sharpness (1 = the game's)", lambda m: m["models"][0]["teacher_forced"]["sharpness"], 2),
    ("VAE reconstruction sharpness", lambda m: m["models"][0]["vae_reconstruction"]["sharpness"], 2),
    ("drift: lowest sharpness over the rollout", lambda m: min(m["models"][0]["drift"]["sharpness"]), 2),
    ("drift: PSNR of the last frame", lambda m: m["models"][0]["drift"]["psnr"][-1], 2),
    ("drift: frames above copy-last", lambda m: m["models"][0]["drift_frames_above_copy_last"], 0),
    # The inverse-dynamics model's accuracy on teacher-forced transitions over its accuracy on real ones: per action
    # (issue 18's goal) and per action category (what the README's table shows).
    ("IDM action accuracy, generated / real", lambda m: m["models"][0]["action_following"]["relative_accuracy"], 2),
    (
        "IDM category accuracy, generated / real",
        lambda m: m["models"][0]["action_following"]["relative_category_accuracy"],
        2,
    ),
    ("frames/s", lambda m: m["models"][0]["timing"]["fps"], 1),
]


def headline_numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The headline numbers an evaluation has (those it did not measure are left out)."""
    numbers = {}
    for label, read, _ in HEADLINES:
        try:
            numbers[label] = float(read(metrics))
        except (KeyError, IndexError, TypeError, ValueError):
            continue
    return numbers


def write_seeds_summary(run: Path, seeds: list[int], args: argparse.Namespace) -> Path:
    """``run/summary.md`` over the evaluations of ``run/seed-<s>/`` (``args`` gives the budget and the preset)."""
    per_seed = {
        seed: headline_numbers(json.loads((run / f"seed-{seed}" / "eval" / "metrics.json").read_text()))
        for seed in seeds
    }
    lines = [
        f"# Quickstart over {len(seeds)} seeds ({args.budget} budget, preset {args.preset})",
        "",
        f"Each seed ran the whole pipeline in `seed-<s>/` (its own PPO data, autoencoder, world model, evaluation); "
        f"seeds {', '.join(map(str, seeds))}. Mean ± standard deviation over the seeds, then each seed.",
        "",
        "| | mean ± std | min | max | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|---|---|---|" + "---|" * len(seeds),
    ]
    for label, _, decimals in HEADLINES:
        values = [per_seed[s][label] for s in seeds if label in per_seed[s]]
        if values:
            lines.append(spread_row(label, values, [per_seed[s].get(label) for s in seeds], decimals))
    beats = [s for s in seeds if per_seed[s].get("PSNR minus copy-last", float("-inf")) > 0]
    lines += ["", f"The model beats copy-last on {len(beats)} of {len(seeds)} seeds.", ""]
    lines += [f"- seed {s}: [summary](seed-{s}/summary.md), ![drift](seed-{s}/eval/drift.png)" for s in seeds]
    path = run / "summary.md"
    write_bytes_atomic(path, "\n".join(lines) + "\n")
    return path


def spread_row(label: str, values: list[float], per_seed: list[float | None], decimals: int) -> str:
    """mean ± std, min, max of ``values``, then each seed's value (– where it has none)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    cells = " | ".join("–" if value is None else f"{value:.{decimals}f}" for value in per_seed)
    return (
        f"| {label} | {statistics.mean(values):.{decimals}f} ± {spread:.{decimals}f} | {min(values):.{decimals}f} "
        f"| {max(values):.{decimals}f} | {cells} |"
    )
