"""Benchmark: the trade-off between PSNR, sharpness and frames/s of trained world models, over DDIM step counts
and samplers.

PSNR rewards blur, sharpness alone rewards noise, and more sampling steps cost frames/s; no one number says which
setting is best. This runs ``evaluate.py`` (teacher-forced windows of held-out episodes, copy-last and shuffled
actions as baselines, the engine's own frames/s on one thread) once per model, sampler and step count, and writes:

- ``tradeoff.json``: one row per (model, sampler, steps) with PSNR, copy-last PSNR, true minus shuffled actions,
  sharpness, GMSD (and copy-last's), the VAE reconstruction's PSNR and sharpness, and frames/s;
- ``tradeoff.md``: the same as a table;
- ``tradeoff.png``: PSNR over copy-last against sharpness, one line per model and sampler through its step counts, each
  point labelled with its steps and frames/s; the goals of docs/research_log.md (sharpness 0.8, PSNR above
  copy-last) are drawn as lines.

    python benchmarks/sharpness_tradeoff.py --model_folder runs/quickstart/world_model \\
        --dataset_name runs/quickstart/dataset --steps 1 2 4 8 16 --output_dir benchmarks/results/tradeoff

``--samplers trailing karras:1`` adds a line per sampler: the engine's ``--timesteps`` schedule (trailing or karras),
optionally with its ``--eta`` after a colon (docs/engine.md, section "Sampling").

Each evaluation keeps its own report (``<output_dir>/<name>[-<sampler>]-steps<N>/report.md``, with examples.png); an
existing one is reused, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gamengen.files import write_json_atomic  # noqa: E402
from gamengen.help_format import HelpFormatter  # noqa: E402

SHARPNESS_GOAL = 0.8  # docs/research_log.md, the 20-minute budget's goal


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--model_folder", nargs="+", required=True, help="world-model checkpoint folders")
    parser.add_argument("--names", nargs="+", default=None, help="a short name per model (default: folder names)")
    parser.add_argument("--dataset_name", required=True, help="the dataset the models were trained on")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="DDIM step counts")
    parser.add_argument(
        "--samplers",
        nargs="+",
        default=["trailing"],
        help="samplers, each SCHEDULE or SCHEDULE:ETA, SCHEDULE trailing or karras (the engine's --timesteps, --eta)",
    )
    parser.add_argument("--max_windows", type=int, default=128, help="teacher-forced windows per evaluation")
    parser.add_argument("--num_episodes", type=int, default=4, help="held-out episodes (drift is not measured)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the windows and the sampler's noise")
    parser.add_argument("--output_dir", default="benchmarks/results/tradeoff", help="where the results go")
    args = parser.parse_args(argv)
    if args.names is not None and len(args.names) != len(args.model_folder):
        parser.error(f"--names has {len(args.names)} names for {len(args.model_folder)} models")
    if any(steps < 1 for steps in args.steps):
        parser.error("--steps must be >= 1")
    try:
        args.samplers = [parse_sampler(spec) for spec in args.samplers]
    except ValueError as error:
        parser.error(str(error))
    return args


def parse_sampler(spec: str) -> tuple[str, float]:
    """``SCHEDULE`` or ``SCHEDULE:ETA`` -> (schedule, eta)."""
    schedule, _, eta = spec.partition(":")
    if schedule not in ("trailing", "karras"):
        raise ValueError(f"--samplers {spec!r}: the schedule must be trailing or karras (e.g. karras:1)")
    try:
        value = float(eta) if eta else 0.0
    except ValueError:
        raise ValueError(f"--samplers {spec!r}: the eta after ':' must be a number in [0, 1] (e.g. karras:1)") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"--samplers {spec!r}: the eta after ':' must be in [0, 1]")
    return schedule, value


def sampler_label(sampler: tuple[str, float]) -> str:
    """'' for the engine's default sampler, else e.g. 'karras-eta1' (folder names and plot labels)."""
    schedule, eta = sampler
    return "" if sampler == ("trailing", 0.0) else f"{schedule}-eta{eta:g}"


def evaluate(
    model: str, name: str, steps: int, args: argparse.Namespace, output_dir: Path, sampler=("trailing", 0.0)
) -> dict[str, Any]:
    """One evaluate.py run (reused when its metrics.json exists); its numbers as a row."""
    label = sampler_label(sampler)
    out = output_dir / (f"{name}-{label}-steps{steps}" if label else f"{name}-steps{steps}")
    if not (out / "metrics.json").is_file():
        command = [sys.executable, str(REPO / "evaluate.py"), "--model_folder", model, "--names", name]
        command += ["--dataset_name", args.dataset_name, "--num_inference_steps", str(steps)]
        command += ["--timesteps", sampler[0], "--eta", str(sampler[1])]
        command += ["--max_windows", str(args.max_windows), "--num_episodes", str(args.num_episodes)]
        command += ["--horizon", "1", "--seed", str(args.seed), "--num_threads", "1", "--output_dir", str(out)]
        command += ["--overwrite"] if out.exists() else []
        shown = f"{name} ({label})" if label else name
        print(f"[tradeoff] {shown}, {steps} steps: {' '.join(command[1:])}", flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "metrics.json").read_text())
    result, copy_last = metrics["models"][0], metrics["baselines"]["copy_last"]["teacher_forced"]
    reconstruction = result.get("vae_reconstruction") or {}
    return {
        "model": f"{name} ({label})" if label else name,
        "model_folder": model,
        "timesteps": sampler[0],
        "eta": sampler[1],
        "steps": steps,
        "psnr": result["teacher_forced"]["psnr"],
        "copy_last_psnr": copy_last["psnr"],
        "psnr_over_copy_last": result["teacher_forced"]["psnr"] - copy_last["psnr"],
        "true_minus_shuffled": result["teacher_forced"]["psnr"] - result["shuffled_actions"]["psnr"],
        "sharpness": result["teacher_forced"]["sharpness"],
        "gmsd": result["teacher_forced"]["gmsd"],
        "copy_last_gmsd": copy_last["gmsd"],
        "vae_psnr": reconstruction.get("psnr"),
        "vae_sharpness": reconstruction.get("sharpness"),
        "fps": result["timing"]["fps"],
        "report": str(out / "report.md"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | steps | PSNR | over copy-last | true - shuffled | sharpness | GMSD (copy-last) | VAE PSNR / "
        "sharpness | frames/s (1 thread) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vae = "–" if r["vae_psnr"] is None else f"{r['vae_psnr']:.2f} / {r['vae_sharpness']:.2f}"
        lines.append(
            f"| {r['model']} | {r['steps']} | {r['psnr']:.2f} | {r['psnr_over_copy_last']:+.2f} | "
            f"{r['true_minus_shuffled']:+.2f} | {r['sharpness']:.2f} | {r['gmsd']:.3f} ({r['copy_last_gmsd']:.3f}) | "
            f"{vae} | {r['fps']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["model"] for r in rows):
        points = sorted((r for r in rows if r["model"] == name), key=lambda r: r["steps"])
        x, y = [r["sharpness"] for r in points], [r["psnr_over_copy_last"] for r in points]
        line = axes.plot(x, y, "o-", label=name)[0]
        for r in points:
            axes.annotate(
                f"{r['steps']} ({r['fps']:.0f}/s)", (r["sharpness"], r["psnr_over_copy_last"]), fontsize=7,
                xytext=(4, 3), textcoords="offset points", color=line.get_color(),
            )  # fmt: skip
        if points[0]["vae_sharpness"] is not None:
            axes.axvline(points[0]["vae_sharpness"], color=line.get_color(), linestyle=":", linewidth=1)
    axes.axhline(0.0, color="grey", linewidth=1, label="copy-last")
    axes.axvline(SHARPNESS_GOAL, color="green", linestyle="--", linewidth=1, label=f"sharpness goal {SHARPNESS_GOAL}")
    axes.set_xlabel("sharpness (1 = as sharp as the game; dotted: the model's VAE)")
    axes.set_ylabel("teacher-forced PSNR minus copy-last (dB)")
    axes.set_title("PSNR against sharpness; labels: DDIM steps (frames/s, 1 thread)", fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = args.names or [Path(folder).name for folder in args.model_folder]
    rows = [
        evaluate(model, name, steps, args, output_dir, sampler)
        for model, name in zip(args.model_folder, names, strict=True)
        for sampler in args.samplers
        for steps in args.steps
    ]
    write_json_atomic(output_dir / "tradeoff.json", {"dataset_name": args.dataset_name, "rows": rows}, indent=2)
    (output_dir / "tradeoff.md").write_text(table(rows))
    plot(rows, output_dir / "tradeoff.png")
    print(table(rows), end="")
    print(f"[tradeoff] wrote {output_dir / 'tradeoff.json'}, tradeoff.md and tradeoff.png")
    return rows


if __name__ == "__main__":
    main(parse_args())
