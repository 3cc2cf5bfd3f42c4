"""What an evaluation writes (evaluate.py): report.md, the drift plot, the examples image, metrics.json.

``report_markdown`` is the report: the paper beside each model and the baselines, whether each model
beats them, the blur-honest measures and, with an IDM, action following. ``plot_drift`` draws every
measure per autoregressive frame (drift.png); ``examples_image`` puts the truth beside each model's
prediction (examples.png); ``write_outputs`` writes the four files, each atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from gamengen.context import episode_frames
from gamengen.episodes import EpisodeDataset
from gamengen.evaluation import ratio_text
from gamengen.evaluation_results import CopyLastBaseline, DriftCurve, Evaluation, ModelResult, PassSummary, Window
from gamengen.files import atomic_path, write_bytes_atomic, write_json_atomic
from gamengen.media import captioned_row, display_scale

REPORT_DRIFT_STEPS = (1, 8, 16, 32, 64)
OUTPUTS = ("metrics.json", "report.md", "drift.png", "examples.png")


def fmt(value: float | None, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals; a dash for a value not measured (None) or not finite."""
    return "–" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def at_step(curve: list[float], step: int) -> float | None:
    """The value of a per-step curve at ``step`` (counted from 1), None past its end."""
    return curve[step - 1] if len(curve) >= step else None


def report_markdown(evaluation: Evaluation) -> str:
    """report.md: what was evaluated, the quality table, the baselines, the blur-honest measures, action following."""
    steps = report_drift_steps(evaluation.settings["horizon"])
    lines = report_header(evaluation)
    lines += quality_table(evaluation, steps)
    lines += baselines_section(evaluation)
    lpips_note = "computed" if evaluation.lpips.computed else f"not computed: {evaluation.lpips.reason}"
    lines += ["", f"LPIPS: {lpips_note}.", ""]
    lines += blur_honest_section(evaluation, steps)
    lines += action_following_section(evaluation)
    lines += ["", "![drift](drift.png)", "", "![examples](examples.png)", ""]
    return "\n".join(lines)


def report_drift_steps(horizon: int) -> list[int]:
    """The drift steps the report's tables show: those of REPORT_DRIFT_STEPS within the horizon, and the horizon."""
    steps = [s for s in REPORT_DRIFT_STEPS if s <= horizon]
    if horizon not in steps:
        steps.append(horizon)
    return steps


def report_header(evaluation: Evaluation) -> list[str]:
    """The title, the dataset, episodes and windows, the sampling, and how to read the table."""
    settings = evaluation.settings
    return [
        "# World-model evaluation",
        "",
        f"Dataset `{evaluation.dataset['name']}`: {len(evaluation.episodes)} episodes ({evaluation.episode_source}), "
        f"{len(evaluation.windows)} teacher-forced windows, "
        f"drift over {settings['horizon']} frames from step {evaluation.copy_last.drift.start_step}.",
        f"Sampling: {settings['num_inference_steps']} DDIM steps (timesteps {settings.get('timesteps')}, eta "
        f"{settings.get('eta', 0.0)}), CFG {settings['guidance_scale']}, context noise "
        f"bucket {settings['noise_bucket']}, "
        f"seed {settings['seed']}, {settings['dtype']} on {settings['device']}.",
        "",
        "PSNR in dB (higher is better), SSIM in [0, 1] (higher is better), LPIPS (lower is better). "
        "Turning / moving / still: the windows whose target was produced by that kind of action.",
        "",
    ]


def quality_table(evaluation: Evaluation, steps: list[int]) -> list[str]:
    """paper | each model | shuffled actions | copy-last | VAE reconstruction: PSNR, SSIM, LPIPS, per kind of
    action, drift and speed."""
    models, copy_last = evaluation.models, evaluation.copy_last
    header = (
        ["", "PSNR", "SSIM", "LPIPS", "PSNR turning", "PSNR moving", "PSNR still"]
        + [f"drift PSNR @{s}" for s in steps]
        + ["frames/s"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(name: str, summary: PassSummary, curve: list[float] | None, fps: float | None) -> str:
        overall = summary.overall
        cells = [name, fmt(overall.psnr), fmt(overall.ssim, 3), fmt(overall.lpips, 3)]
        cells += [fmt(summary.category_value(c, "psnr")) for c in ("turning", "moving", "still")]
        cells += [fmt(at_step(curve, s)) if curve else "–" for s in steps]
        cells.append(fmt(fps, 1))
        return "| " + " | ".join(cells) + " |"

    paper = evaluation.paper
    lines.append(
        "| paper (SD v1.4, 320x240, TPU-v5) | "
        + " | ".join(
            [fmt(paper["teacher_forced_psnr"]), "–", fmt(paper["teacher_forced_lpips"], 3), "–", "–", "–"]
            + ["–"] * len(steps)
            + [fmt(paper["fps"], 1)]
        )
        + " |"
    )
    for model in models:
        lines.append(row(f"**{model.name}**", model.teacher_forced, model.drift.curve("psnr"), model.timing.fps))
    for model in models:
        lines.append(row(f"{model.name}, shuffled actions", model.shuffled_actions, None, None))
    lines.append(row("copy last context frame", copy_last.teacher_forced, copy_last.drift.curve("psnr"), None))
    for model in models:
        lines.append(row(f"{model.name}: VAE reconstruction (upper bound)", model.vae_reconstruction, None, None))
    lines += ["", f"The paper's autoregressive PSNR after 3 s of play: {paper['drift_psnr_after_3s']} dB."]
    return lines


def baselines_section(evaluation: Evaluation) -> list[str]:
    """Per model: the gap to copy-last, true minus shuffled actions, drift frames above copy-last, speed."""
    lines = ["", "## Does the model beat the baselines?", ""]
    for model in evaluation.models:
        tf, shuffled, copy = model.teacher_forced, model.shuffled_actions, evaluation.copy_last.teacher_forced
        gaps = [f"all windows {tf.overall.psnr - shuffled.overall.psnr:+.2f} dB"]
        for category in ("turning", "moving"):
            if category in tf.by_category:
                gap = tf.category_value(category, "psnr") - shuffled.category_value(category, "psnr")
                gaps.append(f"{category} {gap:+.2f} dB")
        timing = model.timing
        lines.append(
            f"- **{model.name}**: {tf.overall.psnr - copy.overall.psnr:+.2f} dB vs copy-last; "
            f"true minus shuffled actions (action sensitivity): {', '.join(gaps)}; "
            f"drift above copy-last on {model.drift_frames_above_copy_last} of {len(model.drift.steps)} frames "
            f"({model.drift_steps_above_copy_last} from the first one on); "
            f"{fmt(timing.fps, 1)} frames/s "
            f"(unet {fmt(timing.unet_ms, 1)} ms, decode {fmt(timing.decode_ms, 1)} ms per frame)."
        )
    return lines


def action_following_section(evaluation: Evaluation) -> list[str]:
    """The IDM's accuracies per pass, when an IDM was given (--idm)."""
    measured = [model for model in evaluation.models if model.action_following]
    if not measured:
        return ["", "Action following (inverse-dynamics model): not measured (pass --idm, from train_idm.py)."]
    passes = {
        "real": "real transitions (the IDM's ceiling)",
        "teacher_forced": "teacher-forced predictions",
        "shuffled_given": "shuffled actions, vs the actions given",
        "shuffled_recorded": "shuffled actions, vs the recorded actions",
        "drift": "autoregressive rollouts",
    }
    lines = [
        "",
        "## Action following (inverse-dynamics model)",
        "",
        f"An IDM ({measured[0].action_following['idm']}) reads each transition (frame t-1 -> frame t) and tells "
        "which action made it. Category: turn left / turn right / move / strafe / attack or use / still. A model "
        "that follows its actions scores near the real transitions; one that ignores them falls toward chance "
        "(on shuffled actions it then matches the recorded actions rather than the given ones).",
        "",
        "| model | transitions | action accuracy | category accuracy | chance (action / category) | n |",
        "|---|---|---|---|---|---|",
    ]
    for model in measured:
        blocks = model.action_following
        for key, title in passes.items():
            if key in blocks:
                block = blocks[key]
                lines.append(
                    f"| {model.name} | {title} | {block['action_accuracy']:.3f} | {block['category_accuracy']:.3f} | "
                    f"{block['action_chance']:.3f} / {block['category_chance']:.3f} | {block['num_transitions']} |"
                )
        lines.append(
            f"| {model.name} | teacher-forced / real | {ratio_text(blocks['relative_accuracy'])} | "
            f"{ratio_text(blocks['relative_category_accuracy'])} | | |"
        )
    return lines


def blur_honest_section(evaluation: Evaluation, steps: list[int]) -> list[str]:
    """The measures that blur cannot fool, beside PSNR: a model that hedges between possible next
    frames predicts their blurred average, which PSNR and SSIM reward."""
    models, copy_last, settings = evaluation.models, evaluation.copy_last, evaluation.settings
    stand_in = evaluation.lpips.stand_in
    perceptual_header = "random-backbone distance (NOT LPIPS)" if stand_in else "LPIPS"
    lines = [
        "## Blur-honest measures",
        "",
        "PSNR and SSIM reward blur: a model unsure of the next frame that draws a blur of the possible ones loses "
        "little PSNR. Sharpness (no reference): the gradient energy of the 3D view of the generated frames "
        "over that of the real frames at the same steps; 1.00 = as sharp as the game, below = blurred, above = noisier "
        f"(the bottom {settings['status_bar_rows']} status-bar rows left out). GMSD (gradient magnitude similarity "
        "deviation, lower is better, 0 = the real frame's edges): penalises missing edges (blur) and misplaced ones.",
    ]
    if stand_in:
        lines += [
            "",
            f"**{perceptual_header}**: an untrained network's distance, measured only to test the plumbing "
            "(--lpips_random_backbone). It is not LPIPS and says nothing about perceptual quality.",
        ]
    header = ["", "sharpness", "GMSD", "PSNR", "SSIM", perceptual_header]
    header += [f"drift sharpness @{s}" for s in steps] + [f"drift GMSD @{s}" for s in steps]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(name: str, summary: PassSummary, curve: DriftCurve | None) -> str:
        overall = summary.overall
        perceptual = overall.random_backbone_distance if stand_in else overall.lpips
        cells = [name, fmt(overall.sharpness), fmt(overall.gmsd, 3), fmt(overall.psnr), fmt(overall.ssim, 3)]
        cells.append(fmt(perceptual, 3))
        for metric, digits in (("sharpness", 2), ("gmsd", 3)):
            values = curve.curve(metric) if curve else []
            cells += [fmt(at_step(values, s), digits) if values else "–" for s in steps]
        return "| " + " | ".join(cells) + " |"

    for model in models:
        lines.append(row(f"**{model.name}**", model.teacher_forced, model.drift))
    for model in models:
        lines.append(row(f"{model.name}, shuffled actions", model.shuffled_actions, None))
    lines.append(row("copy last context frame", copy_last.teacher_forced, copy_last.drift))
    for model in models:
        lines.append(row(f"{model.name}: VAE reconstruction", model.vae_reconstruction, None))
    lines.append("")
    for model in models:
        tf, copy = model.teacher_forced.overall, copy_last.teacher_forced.overall
        drift_sharpness = model.drift.curve("sharpness")
        last = f"; at the last drift frame {drift_sharpness[-1]:.2f}" if drift_sharpness else ""
        lines.append(
            f"- **{model.name}**: sharpness {tf.sharpness:.2f} "
            f"(VAE reconstruction {model.vae_reconstruction.overall.sharpness:.2f}{last}); "
            f"GMSD {tf.gmsd:.3f} vs copy-last {copy.gmsd:.3f} ({'better' if tf.gmsd < copy.gmsd else 'not better'})."
        )
    return lines


def plot_drift(evaluation: Evaluation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline = evaluation.copy_last.drift
    labels = {
        "psnr": "PSNR (dB), higher is better",
        "ssim": "SSIM, higher is better",
        "gmsd": "GMSD, lower is better",
        "sharpness": "sharpness (1 = as sharp as the game)",
        "lpips": "LPIPS, lower is better",
        "random_backbone_distance": "random-backbone distance (NOT LPIPS)",
    }
    metrics = [m for m in labels if baseline.curve(m)]
    columns = (len(metrics) + 1) // 2
    figure, axes = plt.subplots(2, columns, figsize=(6 * columns, 8), squeeze=False)
    for axis in axes.flat[len(metrics) :]:
        axis.set_visible(False)
    for axis, metric in zip(axes.flat, metrics, strict=False):
        for model in evaluation.models:
            curve = model.drift.curve(metric)
            axis.plot(range(1, len(curve) + 1), curve, label=model.name, linewidth=2)
        reference = baseline.curve(metric)
        axis.plot(range(1, len(reference) + 1), reference, "--", color="gray", label="copy last real frame")
        if metric == "sharpness":
            axis.axhline(1.0, color="black", linewidth=0.8, linestyle=":", label="the game's sharpness")
        axis.set_xlabel("autoregressive frame")
        axis.set_ylabel(labels[metric])
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    horizon = evaluation.settings["horizon"]
    figure.suptitle(f"Drift over {horizon} frames, {baseline.episodes} episodes, recorded actions")
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=100)
    plt.close(figure)


def examples_image(
    dataset: EpisodeDataset, windows: list[Window], models: list[ModelResult], num_examples: int
) -> np.ndarray:
    """Rows of: last context frame | truth | each model's prediction | the first model with shuffled actions."""
    picks = np.unique(np.linspace(0, len(windows) - 1, min(num_examples, len(windows))).round().astype(int))
    scale = display_scale(dataset.frame(0).shape[1]) if len(dataset) else 1
    rows = []
    for pick in picks:
        window = windows[pick]
        last, truth = episode_frames(dataset, window.episode, window.step - 1, window.step + 1)
        tiles = [last, truth] + [m.forced.predictions[pick] for m in models]
        tiles.append(models[0].forced.shuffled_predictions[pick])
        titles = ["last context", "truth"] + [m.name for m in models] + ["shuffled actions"]
        scores_text = ", ".join(
            f"{m.name} {m.forced.model.psnr[pick]:.1f} dB, sharpness {m.forced.model.sharpness()[pick]:.2f}"
            for m in models
        )
        caption = f"{window.episode_id} step {window.step}, {window.action_name}: {scores_text}"
        rows.append(captioned_row(tiles, titles, caption, scale))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows])


def write_outputs(evaluation: Evaluation, dataset: EpisodeDataset, num_examples: int, output_dir: Path) -> None:
    """examples.png, drift.png, report.md and metrics.json (OUTPUTS) in ``output_dir``, each written atomically."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_dir / "examples.png", suffix=".png") as tmp:
        Image.fromarray(examples_image(dataset, evaluation.windows, evaluation.models, num_examples)).save(tmp)
    plot_drift(evaluation, output_dir / "drift.png")
    write_bytes_atomic(output_dir / "report.md", report_markdown(evaluation))
    write_json_atomic(output_dir / "metrics.json", evaluation.to_dict())


def model_summary(model: ModelResult, copy_last: CopyLastBaseline) -> str:
    """One line of what a model scored, printed when it is done."""
    label, tf, curve = model.name, model.teacher_forced.overall, model.drift.curve("psnr")
    copy_psnr = copy_last.teacher_forced.overall.psnr
    if not curve:
        return f"{label}: teacher-forced PSNR {tf.psnr:.2f} dB (copy-last {copy_psnr:.2f} dB)"
    return (
        f"{label}: teacher-forced PSNR {tf.psnr:.2f} dB, SSIM {tf.ssim:.3f} (copy-last {copy_psnr:.2f} dB; "
        f"shuffled actions {model.shuffled_actions.overall.psnr:.2f} dB); "
        f"drift PSNR {curve[0]:.2f} -> {curve[-1]:.2f} dB over "
        f"{len(curve)} frames; {model.timing.fps or 0:.1f} frames/s"
    )
