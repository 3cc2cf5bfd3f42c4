"""Evaluate world-model checkpoints on held-out episodes: the paper's metrics, drift curves and baselines.

GameNGen section 5 measures a world model by (1) teacher-forced next-frame quality: the model sees
the REAL frames and actions ``t-N .. t-1`` and predicts frame ``t`` (PSNR 29.43, LPIPS 0.249 in the
paper), and (2) drift: the model plays ``H`` frames autoregressively from a real start, fed the
recorded actions, and the quality of each frame is measured against what the game really showed.

This script measures both with the engine (``gamengen/engine.py``: the checkpoint's sampling, or the
options below) on the held-out episodes the trainer recorded in the checkpoint, beside baselines on
the SAME windows:

- copy-last: the last context frame repeated (a model that predicts no change; for drift, the last
  frame of the real start repeated for every step). A useful model beats it;
- shuffled actions: the same model and noise, fed the action sequences of other windows (a
  derangement: no window keeps its own). The gap to the true actions is how much the model listens
  to the actions; it is reported by the kind of action that produced the target (turning, moving,
  still, other), since pressing nothing or firing changes little of the frame;
- VAE reconstruction: the target encoded and decoded by the checkpoint's autoencoder, the best any
  latent model with this VAE can do.

Outputs in ``--output_dir``: ``metrics.json`` (every number, the settings, the windows, the
checkpoints' and the dataset's provenance), ``report.md`` (paper | models | baselines), ``drift.png``
and ``examples.png`` (truth | prediction strips). ``--compare M2 M3 ...`` evaluates more checkpoints
on the same windows, with the same sampling, into one table and one drift plot: how ablations
(noise augmentation on/off, context length, sampling steps, data) are shown.

Example (the tiny checkpoint of the README's quickstart):

    python evaluate.py --model_folder /tmp/wm --dataset_name /tmp/ds --output_dir /tmp/eval
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from gamengen.cli import add_engine_arguments, engine_from_args
from gamengen.config import WorldModelConfig
from gamengen.context import check_dataset_fits_model, episode_context, episode_frames, find_episode
from gamengen.engine import EngineError, GameEngine
from gamengen.episodes import DatasetError, EpisodeDataset, columns_from_args, open_dataset
from gamengen.media import captioned_row, display_scale
from gamengen.metrics import load_lpips, psnr, ssim
from gamengen.model import ModelLoadError, decode_latents, encode_frames, frames_to_tensor, read_world_model_config, tensor_to_frames

# DESIGN.md section 6: what the paper reports (SD v1.4 at 320x240, context 64, 4 DDIM steps, TPU-v5).
PAPER = {
    "teacher_forced_psnr": 29.43,
    "teacher_forced_lpips": 0.249,
    "fps": 20.0,
    "drift_psnr_after_3s": 19.02,
    "note": "SD v1.4 at 320x240, context 64, agent data, 4 DDIM steps on a TPU-v5; drift: PSNR after 3 s of autoregressive play",
}
CATEGORIES = ("turning", "moving", "still", "other")
REPORT_DRIFT_STEPS = (1, 8, 16, 32, 64)
OUTPUTS = ("metrics.json", "report.md", "drift.png", "examples.png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_engine_arguments(parser)
    parser.add_argument("--compare", nargs="+", default=[], metavar="MODEL", help="more checkpoints (folders or Hub ids) evaluated on the same windows")
    parser.add_argument("--names", nargs="+", default=None, help="labels of --model_folder and the --compare models in the report (default: folder names)")
    what = parser.add_argument_group("what to evaluate on")
    what.add_argument("--dataset_name", required=True, help="dataset folder of parquet shards, or a Hub dataset id")
    what.add_argument(
        "--episodes",
        nargs="+",
        default=None,
        help="episodes (indices or ids); default: the held-out episodes recorded in --model_folder's checkpoint (all episodes when it records none)",
    )
    what.add_argument("--num_episodes", type=int, default=8, help="use at most this many of those episodes")
    what.add_argument("--max_windows", type=int, default=128, help="teacher-forced windows, spread evenly over the episodes' steps")
    what.add_argument("--horizon", type=int, default=64, help="frames of each autoregressive (drift) rollout")
    what.add_argument("--batch_size", type=int, default=16, help="windows (or rollouts) generated together")
    what.add_argument("--timing_frames", type=int, default=16, help="frames of the batch-1 rollout that measures frames/s")
    what.add_argument("--num_examples", type=int, default=6, help="rows of examples.png")
    what.add_argument("--no_lpips", action="store_true", help="skip LPIPS even when the lpips package is installed")
    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", default="outputs/eval", help="where metrics.json, report.md and the plots go")
    output.add_argument("--overwrite", action="store_true", help="replace the results of an earlier evaluation in --output_dir")
    args = parser.parse_args(argv)
    for name in ("num_episodes", "max_windows", "horizon", "batch_size", "timing_frames"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    models = [args.model_folder, *args.compare]
    if args.names is not None and len(args.names) != len(models):
        parser.error(f"--names gives {len(args.names)} labels for {len(models)} models (--model_folder and --compare)")
    return args


# ----------------------------------------------------------------------------------------------
# Windows, categories and shuffles


@dataclass
class Window:
    """Predict frame ``step`` of episode ``episode`` (an index) from the frames and actions before it."""

    episode: int
    episode_id: str
    step: int
    action: int  # action step - 1: the one that produced the target
    category: str


def action_category(name: str) -> str:
    """What kind of change an action makes to the next frame: turning (any action with a turn),
    moving (forward/backward/strafe), still (no-op) or other (attack, use, ...)."""
    name = name.upper()
    if "TURN" in name:
        return "turning"
    if any(word in name for word in ("FORWARD", "BACKWARD", "STRAFE", "MOVE")):
        return "moving"
    if name in ("NOOP", "NONE", "IDLE"):
        return "still"
    return "other"


def derangement(count: int, seed: int) -> np.ndarray:
    """A random permutation of ``range(count)`` with no fixed point (Sattolo's algorithm: one cycle),
    so every window gets another window's actions; the identity for fewer than 2."""
    order = np.arange(count)
    rng = np.random.default_rng(seed)
    for i in range(count - 1, 0, -1):
        j = int(rng.integers(0, i))
        order[i], order[j] = order[j], order[i]
    return order


def choose_episodes(args: argparse.Namespace, dataset: EpisodeDataset, config: WorldModelConfig) -> tuple[list[int], str]:
    """(episode indices, where they come from): --episodes, else the checkpoint's held-out episodes."""
    if args.episodes:
        indices, source = [find_episode(dataset, e) for e in args.episodes], "--episodes"
    else:
        heldout = [e for e in config.dataset.get("heldout_episodes", []) if e in set(dataset.episode_ids)]
        if heldout:
            indices, source = [dataset.episode_ids.index(e) for e in heldout], "held out by the trainer (never trained on)"
        else:
            indices = list(range(len(dataset.episode_ids)))
            source = "ALL episodes: the checkpoint records no held-out episode of this dataset, so training episodes may be included"
    indices = list(dict.fromkeys(indices))[: args.num_episodes]
    return indices, source


def choose_windows(dataset: EpisodeDataset, episodes: list[int], context_length: int, max_windows: int, action_names: list[str]) -> list[Window]:
    """Up to ``max_windows`` targets spread evenly over the episodes' steps. Targets with a full
    context (step >= N) are used when an episode has any; a shorter episode gives padded windows."""
    candidates = []
    for episode in episodes:
        length = dataset.episodes[episode].length
        first = context_length if length > context_length else 1
        candidates += [(episode, step) for step in range(first, length)]
    if not candidates:
        raise DatasetError("the chosen episodes have no step with a frame before it: use episodes of at least 2 steps")
    picks = np.unique(np.linspace(0, len(candidates) - 1, min(max_windows, len(candidates))).round().astype(int))
    windows = []
    for pick in picks:
        episode, step = candidates[pick]
        action = int(dataset.actions(episode)[step - 1])
        windows.append(Window(episode, dataset.episode_ids[episode], step, action, action_category(action_names[action])))
    return windows


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


# ----------------------------------------------------------------------------------------------
# Scores


def scores(prediction: torch.Tensor, truth: torch.Tensor, lpips_metric) -> dict[str, list[float]]:
    result = {"psnr": psnr(prediction, truth).tolist(), "ssim": ssim(prediction, truth).tolist()}
    if lpips_metric is not None:
        result["lpips"] = lpips_metric(prediction, truth).tolist()
    return result


def summarize(per_window: dict[str, list[float]], windows: list[Window]) -> dict[str, Any]:
    """Means over all windows and per action category (with the window count)."""
    summary: dict[str, Any] = {name: float(np.mean(values)) for name, values in per_window.items()}
    summary["by_category"] = {}
    for category in CATEGORIES:
        chosen = [i for i, w in enumerate(windows) if w.category == category]
        if chosen:
            summary["by_category"][category] = {"windows": len(chosen), **{name: float(np.mean([v[i] for i in chosen])) for name, v in per_window.items()}}
    return summary


def merge(total: dict[str, list[float]], part: dict[str, list[float]]) -> None:
    for name, values in part.items():
        total.setdefault(name, []).extend(values)


# ----------------------------------------------------------------------------------------------
# One model


def teacher_forced(
    engine: GameEngine, dataset: EpisodeDataset, windows: list[Window], order: np.ndarray, args: argparse.Namespace, lpips_metric, label: str
) -> dict[str, Any]:
    """Predict every window with its true actions and with the actions of window ``order[i]``; also
    the VAE reconstruction of every target. Windows are batched by context size (the same noise for
    both action sources)."""
    contexts = [episode_context(dataset, w.episode, w.step, engine.context_length) for w in windows]
    action_rows = [np.append(actions, action) for _, actions, action in contexts]
    truth_frames = np.stack([episode_frames(dataset, w.episode, w.step, w.step + 1)[0] for w in windows])
    predictions = {"model": [None] * len(windows), "shuffled": [None] * len(windows)}
    groups: dict[int, list[int]] = {}
    for i, (frames, _, _) in enumerate(contexts):
        groups.setdefault(len(frames), []).append(i)
    batch_number = 0
    with tqdm(total=2 * len(windows), desc=f"{label}: teacher forcing", unit="frame", leave=False) as bar:
        for size, members in sorted(groups.items()):
            for _, chunk in batches(members, args.batch_size):
                frames = np.stack([contexts[i][0] for i in chunk])
                for source in ("model", "shuffled"):
                    rows = [action_rows[i] if source == "model" else action_rows[order[i]][-size:] for i in chunk]
                    # another window's actions, aligned at the end (its last action produced its own target)
                    rows = [np.concatenate([np.zeros(size - len(r), dtype=np.int64), r]) if len(r) < size else r for r in rows]
                    engine.reset(frames, np.stack([r[:-1] for r in rows]), seed=args.seed + batch_number)
                    generated = engine.step([int(r[-1]) for r in rows])
                    for i, frame in zip(chunk, generated, strict=True):
                        predictions[source][i] = frame
                    bar.update(len(chunk))
                batch_number += 1
    truth = frames_to_tensor(truth_frames)
    reconstruction = []
    with torch.inference_mode():
        for _, chunk in batches(list(truth), args.batch_size):
            latents = encode_frames(engine.vae, torch.stack(chunk).to(engine.device, engine.vae.dtype), engine.config.model)
            reconstruction.append(frames_to_tensor(tensor_to_frames(decode_latents(engine.vae, latents, engine.config.model))))
    reconstruction = torch.cat(reconstruction)
    model_scores = scores(frames_to_tensor(np.stack(predictions["model"])), truth, lpips_metric)
    shuffled_scores = scores(frames_to_tensor(np.stack(predictions["shuffled"])), truth, lpips_metric)
    vae_scores = scores(reconstruction, truth, lpips_metric)
    return {
        "model": summarize(model_scores, windows),
        "shuffled_actions": summarize(shuffled_scores, windows),
        "vae_reconstruction": summarize(vae_scores, windows),
        "per_window": {"model": model_scores, "shuffled_actions": shuffled_scores},
        "predictions": predictions,
    }


def drift(
    engine: GameEngine, dataset: EpisodeDataset, episodes: list[int], start: int, args: argparse.Namespace, lpips_metric, label: str
) -> dict[str, Any]:
    """Roll every episode out for ``--horizon`` frames from step ``start`` with its recorded actions
    (all episodes in one batch); per step, the mean scores over the episodes that are that long."""
    usable = [e for e in episodes if dataset.episodes[e].length > start]
    if not usable:
        return {"start_step": start, "episodes": 0, "psnr": [], "ssim": [], "count": []}
    horizon = min(args.horizon, max(dataset.episodes[e].length - start for e in usable))
    per_step: dict[str, list[list[float]]] = {}
    counts = [0] * horizon
    with tqdm(total=horizon * len(usable), desc=f"{label}: drift", unit="frame", leave=False) as bar:
        for number, chunk in batches(usable, args.batch_size):
            contexts = [episode_context(dataset, e, start, engine.context_length) for e in chunk]
            engine.reset(np.stack([c[0] for c in contexts]), np.stack([c[1] for c in contexts]), seed=args.seed + 1000 + number)
            recorded = [dataset.actions(e) for e in chunk]
            lengths = [dataset.episodes[e].length - start for e in chunk]
            for i in range(horizon):
                actions = [int(actions[start - 1 + i]) if i < n else 0 for actions, n in zip(recorded, lengths, strict=True)]
                generated = engine.step(actions)
                alive = [b for b, n in enumerate(lengths) if i < n]
                truth = np.stack([episode_frames(dataset, chunk[b], start + i, start + i + 1)[0] for b in alive])
                step_scores = scores(frames_to_tensor(generated[alive]), frames_to_tensor(truth), lpips_metric)
                for name, values in step_scores.items():
                    per_step.setdefault(name, [[] for _ in range(horizon)])[i].extend(values)
                counts[i] += len(alive)
                bar.update(len(chunk))
    result: dict[str, Any] = {"start_step": start, "episodes": len(usable), "count": counts}
    result.update({name: [float(np.mean(v)) for v in values] for name, values in per_step.items()})
    return result


def copy_last_drift(dataset: EpisodeDataset, episodes: list[int], start: int, horizon: int, lpips_metric) -> dict[str, Any]:
    """The drift baseline: the last frame of the real start (step ``start - 1``) shown for every step."""
    usable = [e for e in episodes if dataset.episodes[e].length > start]
    per_step: dict[str, list[list[float]]] = {}
    length = min(horizon, max((dataset.episodes[e].length - start for e in usable), default=0))
    for episode in usable:
        steps = min(length, dataset.episodes[episode].length - start)
        frames = frames_to_tensor(episode_frames(dataset, episode, start - 1, start + steps))
        step_scores = scores(frames[:1].expand(steps, -1, -1, -1), frames[1:], lpips_metric)
        for name, values in step_scores.items():
            slots = per_step.setdefault(name, [[] for _ in range(length)])
            for i, value in enumerate(values):
                slots[i].append(value)
    result: dict[str, Any] = {"start_step": start, "episodes": len(usable)}
    result.update({name: [float(np.mean(v)) for v in values] for name, values in per_step.items()})
    return result


def measure_speed(engine: GameEngine, dataset: EpisodeDataset, window: Window, frames: int, seed: int) -> dict[str, float]:
    """Frames/s and ms per stage of one rollout at batch size 1 (how the game is played)."""
    context, actions, action = episode_context(dataset, window.episode, window.step, engine.context_length)
    engine.reset(context, actions, seed=seed)
    for _ in range(frames + 1):  # the first frame (warm-up) is left out of the summary
        engine.step(action)
    return engine.timing_summary(skip_first=1)


# ----------------------------------------------------------------------------------------------
# Report


def write_atomic(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def at_step(curve: list[float], step: int) -> float | None:
    return curve[step - 1] if len(curve) >= step else None


def report_markdown(results: dict[str, Any]) -> str:
    settings, models, baseline = results["settings"], results["models"], results["baselines"]
    steps = [s for s in REPORT_DRIFT_STEPS if s <= settings["horizon"]]
    if settings["horizon"] not in steps:
        steps.append(settings["horizon"])
    lines = [
        "# World-model evaluation",
        "",
        f"Dataset `{results['dataset']['name']}`: {len(results['episodes'])} episodes ({results['episode_source']}), "
        f"{len(results['windows'])} teacher-forced windows, drift over {settings['horizon']} frames from step {baseline['copy_last']['drift']['start_step']}.",
        f"Sampling: {settings['num_inference_steps']} DDIM steps, CFG {settings['guidance_scale']}, context noise bucket {settings['noise_bucket']}, "
        f"seed {settings['seed']}, {settings['dtype']} on {settings['device']}.",
        "",
        "PSNR in dB (higher is better), SSIM in [0, 1] (higher is better), LPIPS (lower is better). "
        "Turning / moving / still: the windows whose target was produced by that kind of action.",
        "",
    ]
    header = ["", "PSNR", "SSIM", "LPIPS", "PSNR turning", "PSNR moving", "PSNR still"] + [f"drift PSNR @{s}" for s in steps] + ["frames/s"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(name: str, summary: dict[str, Any] | None, curve: list[float] | None, fps: float | None) -> str:
        summary = summary or {}
        by = summary.get("by_category", {})
        cells = [name, fmt(summary.get("psnr")), fmt(summary.get("ssim"), 3), fmt(summary.get("lpips"), 3)]
        cells += [fmt(by.get(c, {}).get("psnr")) for c in ("turning", "moving", "still")]
        cells += [fmt(at_step(curve, s)) if curve else "–" for s in steps]
        cells.append(fmt(fps, 1))
        return "| " + " | ".join(cells) + " |"

    paper = results["paper"]
    lines.append(
        "| paper (SD v1.4, 320x240, TPU-v5) | "
        + " | ".join([fmt(paper["teacher_forced_psnr"]), "–", fmt(paper["teacher_forced_lpips"], 3), "–", "–", "–"] + ["–"] * len(steps) + [fmt(paper["fps"], 1)])
        + " |"
    )
    for model in models:
        lines.append(row(f"**{model['name']}**", model["teacher_forced"], model["drift"].get("psnr"), model["timing"].get("fps")))
    for model in models:
        lines.append(row(f"{model['name']}, shuffled actions", model["shuffled_actions"], None, None))
    lines.append(row("copy last context frame", baseline["copy_last"]["teacher_forced"], baseline["copy_last"]["drift"].get("psnr"), None))
    for model in models:
        lines.append(row(f"{model['name']}: VAE reconstruction (upper bound)", model["vae_reconstruction"], None, None))
    lines += ["", f"The paper's autoregressive PSNR after 3 s of play: {paper['drift_psnr_after_3s']} dB.", "", "## Does the model beat the baselines?", ""]
    for model in models:
        tf, shuffled, copy = model["teacher_forced"], model["shuffled_actions"], baseline["copy_last"]["teacher_forced"]
        gaps = [f"all windows {tf['psnr'] - shuffled['psnr']:+.2f} dB"]
        for category in ("turning", "moving"):
            if category in tf["by_category"]:
                gaps.append(f"{category} {tf['by_category'][category]['psnr'] - shuffled['by_category'][category]['psnr']:+.2f} dB")
        lines.append(
            f"- **{model['name']}**: {tf['psnr'] - copy['psnr']:+.2f} dB vs copy-last; true minus shuffled actions (action sensitivity): {', '.join(gaps)}; "
            f"drift above copy-last on {model['drift_frames_above_copy_last']} of {len(model['drift'].get('psnr', []))} frames "
            f"({model['drift_steps_above_copy_last']} from the first one on); "
            f"{fmt(model['timing'].get('fps'), 1)} frames/s (unet {fmt(model['timing'].get('unet_ms'), 1)} ms, decode {fmt(model['timing'].get('decode_ms'), 1)} ms per frame)."
        )
    lpips_note = "computed" if results["lpips"]["computed"] else f"not computed: {results['lpips']['reason']}"
    lines += ["", f"LPIPS: {lpips_note}.", "", "![drift](drift.png)", "", "![examples](examples.png)", ""]
    return "\n".join(lines)


def plot_drift(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline = results["baselines"]["copy_last"]["drift"]
    metrics = [m for m in ("psnr", "ssim") if baseline.get(m)]
    figure, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for axis, metric in zip(axes[0], metrics, strict=True):
        for model in results["models"]:
            curve = model["drift"].get(metric, [])
            axis.plot(range(1, len(curve) + 1), curve, label=model["name"], linewidth=2)
        axis.plot(range(1, len(baseline[metric]) + 1), baseline[metric], "--", color="gray", label="copy last real frame")
        axis.set_xlabel("autoregressive frame")
        axis.set_ylabel(f"{metric.upper()}{' (dB)' if metric == 'psnr' else ''}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"Drift over {results['settings']['horizon']} frames, {baseline['episodes']} episodes, recorded actions")
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    os.replace(tmp, path)


def examples_image(dataset: EpisodeDataset, windows: list[Window], models: list[dict[str, Any]], num_examples: int, action_names: list[str]) -> np.ndarray:
    """Rows of: last context frame | truth | each model's prediction | the first model with shuffled actions."""
    picks = np.unique(np.linspace(0, len(windows) - 1, min(num_examples, len(windows))).round().astype(int))
    scale = display_scale(dataset.frame(0).shape[1]) if len(dataset) else 1
    rows = []
    for pick in picks:
        window = windows[pick]
        last, truth = episode_frames(dataset, window.episode, window.step - 1, window.step + 1)
        tiles = [last, truth] + [m["predictions"]["model"][pick] for m in models] + [models[0]["predictions"]["shuffled"][pick]]
        titles = ["last context", "truth"] + [m["name"] for m in models] + ["shuffled actions"]
        scores_text = ", ".join(f"{m['name']} {m['per_window']['model']['psnr'][pick]:.1f} dB" for m in models)
        rows.append(captioned_row(tiles, titles, f"{window.episode_id} step {window.step}, {action_names[window.action]}: {scores_text}", scale))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows])


# ----------------------------------------------------------------------------------------------
# Main


def model_label(path: str, taken: set[str]) -> str:
    name = Path(str(path).rstrip("/")).name or str(path)
    label, number = name, 2
    while label in taken:
        label, number = f"{name} ({number})", number + 1
    taken.add(label)
    return label


def main(args: argparse.Namespace) -> dict[str, Any]:
    output_dir = Path(args.output_dir)
    earlier = [name for name in OUTPUTS if (output_dir / name).exists()]
    if earlier and not args.overwrite:
        raise EngineError(f"--output_dir {output_dir} already holds an evaluation ({', '.join(earlier)}): choose another --output_dir, or pass --overwrite")
    began = time.perf_counter()
    folders = [args.model_folder, *args.compare]
    configs = [read_world_model_config(folder, args.revision) for folder in folders]
    dataset = open_dataset(args.dataset_name, columns=columns_from_args(args))
    for folder, config in zip(folders, configs, strict=True):
        try:
            check_dataset_fits_model(dataset, config)
        except DatasetError as error:
            raise DatasetError(f"{folder}: {error}") from None
        if list(config.action_names) != list(configs[0].action_names):
            raise ModelLoadError(f"{folder} has other actions than {folders[0]}: --compare needs checkpoints of the same game and action set")
    episodes, episode_source = choose_episodes(args, dataset, configs[0])
    longest_context = max(c.context_length for c in configs)
    action_names = list(configs[0].action_names)
    windows = choose_windows(dataset, episodes, longest_context, args.max_windows, action_names)
    order = derangement(len(windows), args.seed)
    drift_start = max(1, min(longest_context, min(dataset.episodes[e].length for e in episodes) - 1))
    lpips_metric, lpips_reason = (None, "skipped (--no_lpips)") if args.no_lpips else load_lpips(args.device or "cpu")
    print(
        f"evaluating {len(folders)} model(s) on {len(episodes)} episodes ({episode_source}): {len(windows)} teacher-forced windows, "
        f"drift over {args.horizon} frames from step {drift_start}; LPIPS {'on' if lpips_metric else 'off: ' + lpips_reason}"
    )

    copy_last_frames = frames_to_tensor(np.stack([episode_frames(dataset, w.episode, w.step - 1, w.step)[0] for w in windows]))
    truth_frames = frames_to_tensor(np.stack([episode_frames(dataset, w.episode, w.step, w.step + 1)[0] for w in windows]))
    copy_last = {
        "teacher_forced": summarize(scores(copy_last_frames, truth_frames, lpips_metric), windows),
        "drift": copy_last_drift(dataset, episodes, drift_start, args.horizon, lpips_metric),
    }

    models, taken, settings = [], set(), None
    for number, folder in enumerate(folders):
        label = args.names[number] if args.names else model_label(folder, taken)
        engine = engine_from_args(argparse.Namespace(**{**vars(args), "model_folder": folder}))
        settings = settings or engine.describe()
        started = time.perf_counter()
        forced = teacher_forced(engine, dataset, windows, order, args, lpips_metric, label)
        curve = drift(engine, dataset, episodes, drift_start, args, lpips_metric, label)
        timing = measure_speed(engine, dataset, windows[0], args.timing_frames, args.seed)
        pairs = list(zip(curve.get("psnr", []), copy_last["drift"].get("psnr", []), strict=False))
        above = next((i for i, (value, reference) in enumerate(pairs) if value <= reference), len(pairs))
        above_total = sum(value > reference for value, reference in pairs)
        models.append(
            {
                "name": label,
                "model_folder": str(folder),
                "engine": engine.describe(),
                "config": {
                    "preset": engine.config.model.preset,
                    "context_length": engine.config.context_length,
                    "frame_size": list(engine.frame_size),
                    "noise_buckets": engine.config.noise_buckets,
                    "max_noise_level": engine.config.max_noise_level,
                    "context_dropout": engine.config.context_dropout,
                    "prediction_type": engine.config.prediction_type,
                    **({"residual": engine.config.residual} if hasattr(engine.config, "residual") else {}),
                },
                "training_dataset": {k: v for k, v in engine.config.dataset.items() if k != "heldout_episodes"},
                "teacher_forced": forced["model"],
                "shuffled_actions": forced["shuffled_actions"],
                "vae_reconstruction": forced["vae_reconstruction"],
                "per_window": forced["per_window"],
                "predictions": forced["predictions"],
                "drift": curve,
                "drift_steps_above_copy_last": above,  # from the first frame on, until the first frame that is not
                "drift_frames_above_copy_last": above_total,  # in all
                "timing": timing,
                "seconds": time.perf_counter() - started,
            }
        )
        tf = forced["model"]
        print(
            f"{label}: teacher-forced PSNR {tf['psnr']:.2f} dB, SSIM {tf['ssim']:.3f} (copy-last {copy_last['teacher_forced']['psnr']:.2f} dB; "
            f"shuffled actions {forced['shuffled_actions']['psnr']:.2f} dB); drift PSNR {curve['psnr'][0]:.2f} -> {curve['psnr'][-1]:.2f} dB over "
            f"{len(curve['psnr'])} frames; {timing.get('fps', 0):.1f} frames/s"
            if curve.get("psnr")
            else f"{label}: teacher-forced PSNR {tf['psnr']:.2f} dB (copy-last {copy_last['teacher_forced']['psnr']:.2f} dB)"
        )
        del engine

    results = {
        "settings": {**settings, "seed": args.seed, "horizon": args.horizon, "max_windows": args.max_windows, "batch_size": args.batch_size},
        "dataset": {"name": str(args.dataset_name), "episodes_total": len(dataset.episode_ids), "metadata": dataset_metadata(dataset)},
        "episodes": [dataset.episode_ids[e] for e in episodes],
        "episode_source": episode_source,
        "windows": [{"episode_id": w.episode_id, "step": w.step, "action": action_names[w.action], "category": w.category} for w in windows],
        "shuffled_from": order.tolist(),
        "lpips": {"computed": lpips_metric is not None, "reason": lpips_reason},
        "paper": PAPER,
        "baselines": {"copy_last": copy_last},
        "models": models,
        "seconds": time.perf_counter() - began,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(examples_image(dataset, windows, models, args.num_examples, action_names)).save(output_dir / ".examples.tmp.png")
    os.replace(output_dir / ".examples.tmp.png", output_dir / "examples.png")
    plot_drift(results, output_dir / "drift.png")
    for model in models:
        model.pop("predictions")
    write_atomic(output_dir / "report.md", report_markdown(results))
    write_atomic(output_dir / "metrics.json", json.dumps(results, indent=1) + "\n")
    print(f"wrote {output_dir}/metrics.json, report.md, drift.png, examples.png in {results['seconds']:.0f} s")
    return results


def dataset_metadata(dataset: EpisodeDataset) -> dict[str, Any]:
    return {k: v for k, v in (dataset.metadata or {}).items() if k != "env_config"}


if __name__ == "__main__":
    try:
        main(parse_args())
    except (DatasetError, ModelLoadError, EngineError) as error:
        sys.exit(f"error: {error}")
