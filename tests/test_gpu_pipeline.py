"""The GPU quickstart (quickstart.py --budget gpu, run by benchmarks/gpu_pipeline.sh): its sizes fit a 9-minute
device call, and its dry run (the same stages and options at the smoke sizes on the CPU) brings back what a GPU
run would."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import REPO, script_env
from PIL import Image

import quickstart
from gamengen.quickstart.budgets import BUDGETS, estimate
from gamengen.quickstart.stages import STAGES, stage_commands

RESULT_FILES = {
    "metrics.json",
    "report.md",
    "examples.png",
    "rollout.gif",
    "gpu_pipeline.md",
    "gpu_pipeline.json",
    "gpu_pipeline.log",
    "gpu_pipeline_extras.tar.gz",
}


def test_the_gpu_budget_trains_the_small_preset_for_fixed_times_within_9_minutes():
    args = quickstart.parse_args(["--budget", "gpu"])
    budget = quickstart.budget_from_args(args)
    assert (args.preset, args.output_dir) == ("small", "runs/gpu")
    commands = {stage: [" ".join(command) for command in found] for stage, found in stage_commands(
        Path("runs/gpu"), budget, args).items()}  # fmt: skip
    assert "--frame_size 128x96" in commands["ppo"][0] and "--n_envs 12" in commands["ppo"][0]
    assert "--num_workers 14" in commands["generate"][0]
    assert "--max_train_seconds 45" in commands["vae"][0]
    assert f"--mixed_precision {budget.wm_precision}" in commands["vae"][0]  # bf16 on a GPU that has it
    world = commands["world"][0]
    assert "--preset small" in world and "--max_train_seconds 180" in world and "--train_batch_size 128" in world
    assert "--max_train_seconds 20" in commands["distill"][0]
    assert "--eager" in commands["evaluate"][0] and all("--eager" in c for c in commands["rollouts"])
    # By its own estimates (start-ups included) the whole run ends inside gpu_pipeline.sh's 530 s.
    assert sum(estimate(stage, budget, args.preset) for stage in STAGES) < 510
    # The CPU budgets' commands are what they were (a finished run folder is continued, not refused).
    cpu = stage_commands(Path("r"), quickstart.budget_from_args(quickstart.parse_args([])), quickstart.parse_args([]))
    flat = " ".join(" ".join(command) for found in cpu.values() for command in found)
    assert "--max_train_seconds" not in flat and "--eager" not in flat and "--n_envs 2" in flat


def test_the_gpu_budget_is_refused_where_torch_sees_no_gpu(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(quickstart.QuickstartError, match="sized for one CUDA GPU and torch sees none here"):
        quickstart.main(quickstart.parse_args(["--budget", "gpu", "--output_dir", str(tmp_path / "run")]))
    assert not (tmp_path / "run").exists()  # nothing started


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``bash benchmarks/gpu_pipeline.sh --dry_run`` as a user runs it (no wheel folder: the packages are installed)."""
    out = tmp_path_factory.mktemp("gpu_pipeline")
    no_wheels = tmp_path_factory.mktemp("no_wheels")
    env = script_env(PYTHON=sys.executable, GPU_PIPELINE_WHEELS=str(no_wheels))
    command = ["bash", str(REPO / "benchmarks" / "gpu_pipeline.sh"), "--dry_run", "--output_dir", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    return out, result


@pytest.mark.slow
def test_the_dry_run_brings_back_the_evaluation_the_rollout_and_the_goals(dry_run):
    out, _ = dry_run
    # What a device call brings back: at most 8 files, none in a subfolder.
    assert {path.name for path in out.iterdir()} == RESULT_FILES
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"][0]["teacher_forced"]["psnr"] > 0 and metrics["baselines"]["copy_last"]
    with Image.open(out / "rollout.gif") as gif:
        assert gif.n_frames == BUDGETS["gpu-smoke"].rollout_frames
    record = json.loads((out / "gpu_pipeline.json").read_text())
    assert record["dry_run"] and record["budget"] == "gpu-smoke" and record["status"] == 0
    assert list(record["stages"]) == list(STAGES) and record["preset"] == "tiny"
    # The trainers stopped at their fixed times, not at their (unreachable) step counts.
    world = record["training"]["world"]
    assert world["out_of_time"] and world["global_step"] < BUDGETS["gpu-smoke"].wm_steps
    assert record["training"]["vae"]["global_step"] < BUDGETS["gpu-smoke"].vae_steps
    assert record["training"]["distill"]["out_of_time"]
    goals = {goal["goal"]: goal for goal in record["goals"]}
    assert goals["frames 128x96 or larger"] == {"goal": "frames 128x96 or larger", "measured": "64x48", "met": False}
    assert "teacher-forced PSNR at least copy-last + 2 dB" in goals and len(goals) == 5
    markdown = (out / "gpu_pipeline.md").read_text()
    assert markdown.startswith("# GPU pipeline: quickstart.py --budget gpu-smoke on CPU")
    assert "**Dry run on the CPU**" in markdown and "| teacher-forced sharpness 0.85" in markdown
    assert "# Quickstart run (gpu-smoke budget, preset tiny)" in markdown  # the quickstart's own summary follows


@pytest.mark.slow
def test_the_dry_run_ran_the_gpu_budgets_options_and_kept_its_logs(dry_run):
    out, result = dry_run
    log = (out / "gpu_pipeline.log").read_text()
    assert "== quickstart.py --budget gpu-smoke (no time bound)" in log and "== diffusers" in log
    with tarfile.open(out / "gpu_pipeline_extras.tar.gz") as archive:
        names = set(archive.getnames())
        state = json.load(archive.extractfile("quickstart.json"))
    assert {"eval/drift.png", "world_model/training_summary.json", "logs/world.log"} <= names
    assert {f"rollouts/{kind}/" for kind in ("recorded", "scripted", "student")} <= {
        name.rsplit("/", 1)[0] + "/" for name in names if name.endswith(".gif")
    }
    ran = {stage: " ".join(info["ran"]) for stage, info in state["stages"].items()}
    assert "--max_train_seconds 4" in ran["world"] and "--max_train_seconds 3" in ran["vae"]
    assert "--eager" in ran["evaluate"] and "--batch_size 8" in ran["evaluate"]
    assert "--dataloader_num_workers 1" in ran["world"]
    assert "quickstart status 0" in result.stdout
