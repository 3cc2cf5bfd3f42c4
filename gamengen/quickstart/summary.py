"""A quickstart run's ``summary.md``: the time of each stage, the commands, the quality of the model's own
frames against the baselines, then (when asked for) the detail carry-over post-process apart, the gifs and
what to run next."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gamengen.evaluation import ratio_text
from gamengen.files import write_bytes_atomic
from gamengen.quickstart.budgets import Budget, frame_size
from gamengen.quickstart.stages import CARRY_DETAIL_DIR, STAGES, engine_options, play_command

QUALITY_HEADER = [
    "| | PSNR (dB) | SSIM | sharpness | GMSD | PSNR turning | PSNR moving | drift PSNR, last frame |",
    "|---|---|---|---|---|---|---|---|",
]


def write_summary(run: Path, state: dict[str, Any], budget: Budget) -> Path:
    """Write ``summary.md`` from the state and the evaluation(s) in ``eval/``; returns its path."""
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    lines = stages_section(state, budget) + quality_section(metrics)
    if budget.carry_detail:
        carried = json.loads((run / "eval" / CARRY_DETAIL_DIR / "metrics.json").read_text())
        lines += carry_detail_section(carried, metrics, budget)
    lines += rollouts_section(run, budget) + next_section(run, budget)
    path = run / "summary.md"
    write_bytes_atomic(path, "\n".join(lines))
    return path


def stages_section(state: dict[str, Any], budget: Budget) -> list[str]:
    """The title, the sizes, each stage's time against its estimate, and the commands that ran."""
    lines = [
        f"# Quickstart run ({state['budget_name']} budget, preset {state['preset']})",
        "",
        f"Scenario {budget.scenario}, frames {frame_size(state['preset'])}, frame skip {budget.frame_skip}; "
        f"world model: context {budget.context_length}, {budget.wm_steps} steps of batch {budget.wm_batch_size}.",
        "",
        "| stage | script | seconds | estimated |",
        "|---|---|---|---|",
    ]
    for stage in STAGES:
        info = state["stages"][stage]
        lines.append(
            f"| {stage} | `{info['commands'][0].split()[0]}` | {info['seconds']:.0f} | {info['estimate']:.0f} |"
        )
    total = sum(state["stages"][s]["seconds"] for s in STAGES)
    lines += [
        f"| **total** | | **{total:.0f}** ({total / 60:.1f} min) | |",
        "",
        "The commands (`quickstart.json` has them too):",
        "",
        "```bash",
    ]
    lines += [f"python {command}" for stage in STAGES for command in state["stages"][stage]["ran"]]
    return lines + ["```", ""]


def quality_section(metrics: dict[str, Any]) -> list[str]:
    """The model's own frames against shuffled actions, copy-last, the VAE's ceiling and the paper."""
    model, copy_last = metrics["models"][0], metrics["baselines"]["copy_last"]
    tf, copy_tf, vae = model["teacher_forced"], copy_last["teacher_forced"], model["vae_reconstruction"]
    student = metrics["models"][1] if len(metrics["models"]) > 1 else None
    student_rows = (
        []
        if student is None
        else [
            quality_row(
                "1-step student (distill.py)", student["teacher_forced"], drift=student["drift"].get("psnr", [])
            )
        ]
    )
    student_lines = (
        []
        if student is None
        else [
            "The 1-step student: " + action_following_line(student.get("action_following")),
            "",
            verdict(student, copy_tf, "The 1-step student"),
            "",
        ]
    )
    return [
        f"## Quality of the model's own frames on {len(metrics['episodes'])} held-out episodes "
        f"({len(metrics['windows'])} windows; `eval/report.md` has everything)",
        "",
        *QUALITY_HEADER,
        quality_row("world model", tf, drift=model["drift"].get("psnr", [])),
        quality_row("same, shuffled actions", model["shuffled_actions"]),
        *student_rows,
        quality_row("copy last frame", copy_tf, drift=copy_last["drift"].get("psnr", [])),
        quality_row("VAE reconstruction (ceiling)", vae, categories=False),
        f"| paper (SD v1.4, 320x240) | {metrics['paper']['teacher_forced_psnr']} | | | | | | |",
        "",
        "Sharpness: 1.00 = as sharp as the game's frames, below = blur. GMSD: lower is better.",
        "",
        action_following_line(model.get("action_following")),
        "",
        verdict(model, copy_tf),
        "",
        *student_lines,
        "![drift](eval/drift.png)",
        "",
    ]


def carry_detail_section(carried: dict[str, Any], own: dict[str, Any], budget: Budget) -> list[str]:
    """The same evaluation with the engine's detail carry-over, labelled as the post-process it is."""
    model, copy_tf = carried["models"][0], carried["baselines"]["copy_last"]["teacher_forced"]
    gain = model["teacher_forced"]["psnr"] - own["models"][0]["teacher_forced"]["psnr"]
    return [
        f"## Post-process: the detail carry-over (`{' '.join(engine_options(budget))}`)",
        "",
        "Not the model's own frames: the engine pastes the detail the VAE loses from the newest real frame into "
        "the generated frames, fading it where they change (docs/engine.md#detail-carry-over). The same windows "
        f"and episodes (`eval/{CARRY_DETAIL_DIR}/report.md` has everything):",
        "",
        *QUALITY_HEADER,
        quality_row("world model + carry-over", model["teacher_forced"], drift=model["drift"].get("psnr", [])),
        quality_row("same, shuffled actions", model["shuffled_actions"]),
        "",
        action_following_line(model.get("action_following")),
        "",
        f"{verdict(model, copy_tf, 'The model with the carry-over')} The carry-over adds {gain:+.2f} dB to the "
        "model's own frames.",
        "",
    ]


def quality_row(label: str, summary: dict[str, Any], drift: list[float] | None = None, categories: bool = True) -> str:
    """One row of the quality table: PSNR, SSIM, sharpness, GMSD, PSNR by category, drift's last frame."""

    def category(name: str) -> str:
        value = summary.get("by_category", {}).get(name, {}).get("psnr")
        return "–" if value is None else f"{value:.2f}"

    cells = [f"{summary['psnr']:.2f}", f"{summary['ssim']:.3f}", f"{summary['sharpness']:.2f}"]
    cells.append(f"{summary['gmsd']:.3f}")
    cells += [category("turning"), category("moving")] if categories else ["", ""]
    cells.append("" if drift is None else f"{drift[-1] if drift else float('nan'):.2f}")
    return f"| {label} |" + "".join(f" {cell} |" if cell else " |" for cell in cells)


def action_following_line(following: dict[str, Any] | None) -> str:
    """How well the inverse-dynamics model reads the actions from real, teacher-forced and shuffled transitions."""
    if not following:
        return "Action following: not measured."
    real, forced, shuffled = following["real"], following["teacher_forced"], following["shuffled_recorded"]
    return (
        "Action following (inverse-dynamics model, action / category accuracy): real transitions "
        f"{real['action_accuracy']:.2f} / {real['category_accuracy']:.2f}, "
        f"teacher-forced {forced['action_accuracy']:.2f} / {forced['category_accuracy']:.2f} (teacher-forced / real: "
        f"{ratio_text(following['relative_accuracy'])} / {ratio_text(following['relative_category_accuracy'])}), "
        f"shuffled actions vs the recorded ones {shuffled['action_accuracy']:.2f} / "
        f"{shuffled['category_accuracy']:.2f} (chance {real['action_chance']:.2f} / {real['category_chance']:.2f})."
    )


def verdict(model: dict[str, Any], copy_tf: dict[str, Any], subject: str = "The model") -> str:
    """Whether the model beats copy-last, its margin over shuffled actions, and its speed."""
    tf, shuffled = model["teacher_forced"], model["shuffled_actions"]
    return (
        f"{subject} {'beats' if tf['psnr'] > copy_tf['psnr'] else 'does NOT beat'} copy-last "
        f"({tf['psnr'] - copy_tf['psnr']:+.2f} dB); "
        f"true minus shuffled actions: {tf['psnr'] - shuffled['psnr']:+.2f} dB; {model['timing'].get('fps', 0):.1f} "
        "frames/s on this machine."
    )


def rollouts_section(run: Path, budget: Budget) -> list[str]:
    """The rollout gifs (with the carry-over when it was asked for)."""
    carried = f", with the detail carry-over post-process `{' '.join(engine_options(budget))}`"
    lines = [
        "## Rollouts (generated | real, recorded actions; then a scripted sequence"
        f"{carried if budget.carry_detail else ''})",
        "",
    ]
    for gif in sorted((run / "rollouts").glob("*/*.gif")):
        lines += [f"![{gif.stem}]({gif.relative_to(run)})", ""]
    return lines


def next_section(run: Path, budget: Budget) -> list[str]:
    """The commands to play the model, evaluate it again, and (when off) measure the detail carry-over."""
    lines = [
        "## Next",
        "",
        f"- play it: `{play_command(run, budget)}`",
        f"- play its 1-step student: `{play_command(run, budget, 'student')}`",
        f"- evaluate again with other sampling: `python evaluate.py --model_folder {run / 'world_model'} "
        f"--dataset_name {run / 'dataset'} "
        f"{' '.join([*engine_options(budget), ''])}--num_inference_steps 8 --output_dir <folder>`",
    ]
    if not budget.carry_detail:
        lines.append(
            "- measure the engine's detail carry-over post-process (texture pasted from the newest real frame, "
            "not the model's own frames; docs/engine.md#detail-carry-over) after these numbers: rerun the "
            "quickstart with this run's options and `--carry_detail 8 --redo evaluate`"
        )
    return lines + [""]
