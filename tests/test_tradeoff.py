"""benchmarks/sharpness_tradeoff.py: one evaluation per (model, DDIM steps), a table, a json and a plot."""

from __future__ import annotations

import json

from conftest import run_script


def test_the_tradeoff_measures_each_step_count_and_reuses_finished_evaluations(tiny_checkpoint, tiny_dataset, tmp_path):
    out = tmp_path / "tradeoff"
    command = ("benchmarks/sharpness_tradeoff.py", "--model_folder", tiny_checkpoint, "--names", "random")
    command += ("--dataset_name", tiny_dataset, "--steps", 1, 2, "--max_windows", 4, "--num_episodes", 1)
    first = run_script(*command, "--output_dir", out)
    rows = json.loads((out / "tradeoff.json").read_text())["rows"]
    assert [(r["model"], r["steps"]) for r in rows] == [("random", 1), ("random", 2)]
    for row in rows:
        assert row["fps"] > 0 and row["sharpness"] > 0 and row["psnr"] > 0
        assert row["psnr_over_copy_last"] == row["psnr"] - row["copy_last_psnr"]
    assert (out / "tradeoff.png").stat().st_size > 1000 and "| random | 2 |" in (out / "tradeoff.md").read_text()
    assert first.stdout.count("[tradeoff] random,") == 2

    again = run_script(*command, "--output_dir", out)  # both evaluations exist: nothing is evaluated again
    assert "[tradeoff] random," not in again.stdout
    assert json.loads((out / "tradeoff.json").read_text())["rows"] == rows


def test_each_sampler_gets_its_own_evaluation_and_line(tiny_checkpoint, tiny_dataset, tmp_path):
    out = tmp_path / "samplers"
    command = ("benchmarks/sharpness_tradeoff.py", "--model_folder", tiny_checkpoint, "--names", "random")
    command += ("--dataset_name", tiny_dataset, "--steps", 2, "--max_windows", 4, "--num_episodes", 1)
    run_script(*command, "--samplers", "trailing", "karras:1", "--output_dir", out)
    rows = json.loads((out / "tradeoff.json").read_text())["rows"]
    assert [(r["model"], r["timesteps"], r["eta"]) for r in rows] == [
        ("random", "trailing", 0.0),
        ("random (karras-eta1)", "karras", 1.0),
    ]
    settings = json.loads((out / "random-karras-eta1-steps2" / "metrics.json").read_text())["settings"]
    assert settings["timesteps"] == [999, 427] and settings["eta"] == 1.0
    assert rows[0]["psnr"] != rows[1]["psnr"]

    bad = run_script(*command, "--samplers", "karras:2", "--output_dir", out, check=False)
    assert bad.returncode == 2 and "must be in [0, 1]" in bad.stderr
