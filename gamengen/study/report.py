"""The study's result (docs/human_study.md#the-report): how often raters picked the real clip, per clip length.

The paper's table (GameNGen section 5.1): raters shown the real game and the simulation side by side picked the
real one 58% of the time for 1.6 s clips and 60% for 3.2 s clips (50% = they cannot tell). Ours gives the same
rate per length with a 95% Wilson score interval and the number of answers, raters and clips it rests on. The
interval treats every answer as independent; answers of one rater, or about one clip, are not quite, so with few
raters it is optimistic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from gamengen.study.clips import Study

PAPER_PICKED_REAL = {1.6: 0.58, 3.2: 0.60}  # GameNGen, human evaluation: fraction of answers picking the real game
Z_95 = 1.959964


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (0, 1) with no trials."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends, where rounding would miss them
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def study_table(study: Study, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per clip length of the study: answers, raters, clips, picked real, the interval, the paper's rate."""
    rows = []
    for seconds in sorted({clip.seconds for clip in study.clips}):
        frames = next(clip.frames for clip in study.clips if clip.seconds == seconds)
        answers = [r for r in records if float(r["seconds"]) == seconds]
        picked = sum(bool(r["picked_real"]) for r in answers)
        low, high = wilson_interval(picked, len(answers))
        times = sorted(float(r.get("time_ms", 0)) for r in answers)
        rows.append(
            {
                "seconds": seconds,
                "frames": frames,
                "answers": len(answers),
                "raters": len({r["rater"] for r in answers}),
                "clips": len({r["clip"] for r in answers}),
                "clips_in_study": sum(clip.seconds == seconds for clip in study.clips),
                "picked_real": picked,
                "rate": picked / len(answers) if answers else None,
                "interval_95": [low, high],
                "median_time_s": times[len(times) // 2] / 1000 if times else None,
                "paper_rate": PAPER_PICKED_REAL.get(round(seconds, 3)),
            }
        )
    return rows


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def report_markdown(study: Study, rows: Sequence[dict[str, Any]], problems: Sequence[str]) -> str:
    lines = [
        "# Human study: which clip is the real game?",
        "",
        f"World model: {study.model_folder}; dataset: {study.dataset_name} (starts from episodes "
        f"{study.episodes_source}); {len(study.clips)} clip pairs at {study.fps:g} frames/s.",
        "",
        "| clip length | frames | answers | raters | clips answered | picked the real clip | 95% interval | median "
        "time | paper (picked real) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        low, high = row["interval_95"]
        interval = "–" if not row["answers"] else f"{100 * low:.0f}-{100 * high:.0f}%"
        time_s = "–" if row["median_time_s"] is None else f"{row['median_time_s']:.1f} s"
        lines.append(
            f"| {row['seconds']:g} s | {row['frames']} | {row['answers']} | {row['raters']} | {row['clips']} of "
            f"{row['clips_in_study']} | {_percent(row['rate'])} ({row['picked_real']} of {row['answers']}) | "
            f"{interval} | {time_s} | {_percent(row['paper_rate'])} |"
        )
    lines += [
        "",
        "50% means the raters could not tell the model from the game; 100% that they always could. The interval is "
        "Wilson's, treating every answer as independent (answers by one rater are not quite, so with few raters it "
        "is narrower than it should be).",
    ]
    if not any(row["answers"] for row in rows):
        lines += ["", "No answers yet: serve the study (python run_human_study.py --study_dir ...)."]
    if problems:
        lines += ["", "Lines of the answers file that are not answers (kept in the file, not counted):", ""]
        lines += [f"- {problem}" for problem in problems]
    return "\n".join(lines) + "\n"
