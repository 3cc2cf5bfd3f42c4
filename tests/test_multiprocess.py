"""Real multi-process training on the CPU: `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`
starts two processes joined by gloo, as a multi-GPU run joins them by NCCL. The processes draw their own
randomness, keep identical weights, resume the same checkpoint and continue its data order; both trainers run
that way; a launch whose processes are not joined is refused."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, free_port, run_script, script_env

from gamengen.checkpoint import load_world_model
from gamengen.config import get_config
from gamengen.episodes import open_dataset
from gamengen.vae import decode_latents, encode_frames, frames_to_tensor, load_vae, tensor_to_frames

pytestmark = pytest.mark.slow
LOOP_SCRIPT = REPO / "tests" / "scripts" / "loop_under_launch.py"


def launch(
    script: Path,
    *args,
    processes: int = 2,
    multi_gpu: bool = True,
    use_cpu: bool = True,
    check: bool = True,
    timeout: float = 600,
):
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
    ]
    command += ["--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--multi_gpu"] if multi_gpu else []
    env = script_env(PYTHONPATH=str(REPO), **({"ACCELERATE_USE_CPU": "1"} if use_cpu else {}))
    # A launch that hangs is stopped as Ctrl-C stops it: the launcher (torch's elastic agent) ends its workers, which
    # run in sessions of their own and would outlive a killed launcher.
    process = subprocess.Popen(
        [*command, str(script), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
        raise AssertionError(f"the launch hung for {timeout} s\n{stdout[-3000:]}\n{stderr[-5000:]}") from None
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def reports(folder: Path, kind: str, steps: int) -> list[dict]:
    return [json.loads((folder / f"process{p}-{kind}-{steps}.json").read_text()) for p in range(2)]


@pytest.fixture(scope="module")
def loop_runs(tmp_path_factory) -> dict[str, list[dict]]:
    """The shared loop for 6 steps in one go, and for 4 steps then resumed to 6, as two processes."""
    straight, resumed = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("resumed")
    launch(LOOP_SCRIPT, straight, 6)
    launch(LOOP_SCRIPT, resumed, 4)  # checkpoint-3 and the final checkpoint-4; 20 batches per epoch per process
    launch(LOOP_SCRIPT, resumed, 6, "latest")
    return {
        "straight": reports(straight, "first", 6),
        "first": reports(resumed, "first", 4),
        "resumed": reports(resumed, "resumed", 6),
    }


def test_each_process_draws_its_own_noise_and_the_weights_stay_identical(loop_runs):
    zero, one = loop_runs["straight"]
    assert zero["processes"] == one["processes"] == 2
    assert [s["noise"] for s in zero["seen"]] != [s["noise"] for s in one["seen"]]  # noise, timesteps, buckets
    assert [s["global"] for s in zero["seen"]] != [s["global"] for s in one["seen"]]  # dropout, posterior samples
    assert not {i for s in zero["seen"] for i in s["indices"]} & {i for s in one["seen"] for i in s["indices"]}
    assert zero["weights"] == one["weights"]


def test_a_two_process_resume_continues_the_step_count_the_data_order_and_the_draws(loop_runs):
    for process in range(2):
        straight, first, resumed = (loop_runs[k][process] for k in ("straight", "first", "resumed"))
        assert (resumed["start_step"], resumed["step"]) == (4, 6)
        assert first["seen"] + resumed["seen"] == straight["seen"]  # not the first epoch's order again
        assert sum(resumed["weights"], []) == pytest.approx(sum(straight["weights"], []))


def test_processes_that_find_different_checkpoints_refuse_to_resume(tmp_path):
    """On nodes that do not share --output_dir only the main process sees the checkpoints it saved: the others
    would start from step 0 with other weights, and the run would hang at its first collective step. Every
    process refuses instead, saying what each found and what to do."""
    shared = tmp_path / "run"
    launch(LOOP_SCRIPT, shared, 3)  # checkpoint-3
    # A hang (the safeguard gone) ends at the timeout, which fails this test too.
    resumed = launch(LOOP_SCRIPT, shared, 6, "latest", "unshared", check=False, timeout=240)
    assert resumed.returncode != 0
    assert "the processes found different checkpoints to resume" in resumed.stderr, resumed.stderr[-3000:]
    assert "(process 0: checkpoint-3, process 1: none)" in resumed.stderr
    assert "put --output_dir on storage every node sees" in resumed.stderr
    assert sorted(p.name for p in shared.glob("checkpoint-*")) == ["checkpoint-3"]  # nothing trained on
    assert not list(tmp_path.glob("*/process*-resumed-6.json"))


@pytest.fixture(scope="module")
def world_model_setup(tmp_path_factory, tiny_dataset) -> dict[str, Path]:
    import torch

    from gamengen.config import get_config
    from gamengen.vae import build_vae, save_vae

    root = tmp_path_factory.mktemp("ddp_world")
    torch.manual_seed(0)
    save_vae(build_vae(get_config("tiny")), root / "vae")
    return {"root": root, "vae": root / "vae", "ds": tiny_dataset}


def world_model_args(setup: dict[str, Path], output_dir: Path, steps: int) -> list:
    return [
        "--preset", "tiny", "--dataset_name", setup["ds"], "--pretrained_vae_model_name_or_path", setup["vae"],
        "--output_dir", output_dir, "--train_batch_size", 4, "--report_to", "none", "--max_train_steps", steps,
        "--checkpointing_steps", 2, "--validation_steps", 1000, "--num_validation_samples", 1,
        "--holdout_fraction", 0.5,
    ]  # fmt: skip


def test_the_world_model_trainer_trains_resumes_and_plays_as_two_processes(world_model_setup, tmp_path):
    out = tmp_path / "wm"
    first = launch(REPO / "train_text_to_image.py", *world_model_args(world_model_setup, out, 3))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert re.search(r"trained 3 steps \(step 0 -> 3, [\d.]+ samples/s\); loss [\d.]+ -> [\d.]+", first.stdout)
    assert first.stdout.count("trained 3 steps") == 1  # the main process reports, once
    again = launch(
        REPO / "train_text_to_image.py",
        *world_model_args(world_model_setup, out, 5),
        "--resume_from_checkpoint",
        "latest",
    )
    assert "resumed from" in again.stdout and "at step 3" in again.stdout
    alone = run_script(
        "train_text_to_image.py", *world_model_args(world_model_setup, out, 6), "--resume_from_checkpoint", "latest"
    )
    assert "at step 5" in alone.stdout  # a two-process run resumes with one process too
    assert json.loads((out / "training_summary.json").read_text())["global_step"] == 6
    load_world_model(out)
    rollout = run_script(
        "run_autoregressive.py", "--model_folder", out, "--dataset_name", world_model_setup["ds"], "--num_frames", 3,
        "--output_dir", tmp_path / "rollouts", "--no_mp4",
    )  # fmt: skip
    assert "FPS" in rollout.stdout


def test_the_vae_trainer_runs_as_two_processes(world_model_setup, tmp_path):
    out = tmp_path / "vae"
    args = ["--preset", "tiny", "--train_encoder", "--dataset_name", world_model_setup["ds"], "--output_dir", out]
    args += ["--max_train_steps", 3, "--train_batch_size", 4, "--report_to", "none", "--validation_steps", 1000]
    result = launch(REPO / "finetune_autoencoder.py", *args)
    assert "trained 3 steps (step 0 -> 3" in result.stdout
    summary = json.loads((out / "vae_training.json").read_text())
    assert summary["global_step"] == summary["steps_this_run"] == 3
    assert summary["heldout_psnr_after"] != summary["heldout_psnr_before"]  # training moved the weights
    # The saved VAE is what the next stages load: it reconstructs a real frame at the frame's size.
    vae = load_vae(out)
    assert vae.config.scaling_factor == pytest.approx(summary["scaling_factor"]) and summary["scaling_factor"] != 1.0
    frame = open_dataset(world_model_setup["ds"]).frame(0)
    config = get_config("tiny")
    with torch.no_grad():
        latents = encode_frames(vae, frames_to_tensor(frame[None]), config)
        decoded = tensor_to_frames(decode_latents(vae, latents, config))
    assert latents.shape[1:] == (4, 12, 16) and decoded.shape == (1, 48, 64, 3)


def test_processes_that_are_not_joined_are_refused_with_the_fix(world_model_setup, tmp_path):
    # --multi_gpu on a machine without GPUs and without the CPU backend: two processes, each alone.
    unjoined = launch(
        REPO / "train_text_to_image.py",
        *world_model_args(world_model_setup, tmp_path / "a", 1),
        use_cpu=False,
        check=False,
    )
    assert unjoined.returncode != 0 and "not connected" in unjoined.stderr and "ACCELERATE_USE_CPU=1" in unjoined.stderr
    assert not list((tmp_path / "a").glob("checkpoint-*"))
    # --num_processes 2 without --multi_gpu: accelerate starts one process.
    single = launch(
        REPO / "train_text_to_image.py",
        *world_model_args(world_model_setup, tmp_path / "b", 1),
        multi_gpu=False,
        check=False,
    )
    assert single.returncode != 0 and "asked for 2 processes but started one" in single.stderr
