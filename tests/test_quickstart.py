"""quickstart.py --smoke: the whole pipeline (agent, data, VAE, latents, world model, evaluation,
rollouts) with the real scripts at the smallest sizes; every artifact exists and loads."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_script
from PIL import Image

import quickstart
from gamengen.checkpoint import load_world_model
from gamengen.episodes import open_dataset
from gamengen.latent_cache import open_latent_cache
from gamengen.quickstart.summary import write_summary
from gamengen.vae import load_vae

SMOKE = quickstart.BUDGETS["smoke"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, str]:
    run = tmp_path_factory.mktemp("quickstart") / "run"
    result = run_script("quickstart.py", "--smoke", "--output_dir", run, timeout=600)
    return run, result.stdout


def test_the_smoke_pipeline_runs_every_stage_and_says_how_to_play(smoke_run):
    run, stdout = smoke_run
    for number, stage in enumerate(quickstart.STAGES, 1):
        assert f"{number}/{len(quickstart.STAGES)} {stage}: estimated" in stdout and f"{stage} finished in" in stdout
    assert f"python run_playable_env.py --model_folder {run / 'world_model'} --dataset_name {run / 'dataset'}" in stdout
    state = json.loads((run / "quickstart.json").read_text())
    assert list(state["stages"]) == list(quickstart.STAGES) and all(s["seconds"] > 0 for s in state["stages"].values())


def test_every_artifact_exists_and_loads(smoke_run):
    run, _ = smoke_run
    dataset = open_dataset(run / "dataset")
    policies = {
        json.loads(pq.read_schema(f).metadata[b"gamengen"])["policy"] for f in (run / "dataset").glob("*.parquet")
    }
    assert len(policies) == 2  # the PPO run's own episodes and the trained agent's
    assert len(dataset.episode_ids) > SMOKE.episodes and (dataset.frame_width, dataset.frame_height) == (64, 48)
    assert (run / "agent" / "models" / "quickstart" / "best_model.zip").is_file()
    vae = load_vae(run / "vae")
    cache = open_latent_cache(run / "latents", dataset=dataset, vae=vae)  # checked against the dataset and the VAE
    assert len(cache) == len(dataset) and tuple(cache.latents(0, 0, 1).shape[1:]) == cache.latent_shape
    bundle = load_world_model(run / "world_model")
    assert bundle.config.context_length == SMOKE.context_length and bundle.config.dataset["heldout_episodes"]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["models"][0]["teacher_forced"]["psnr"] > 0 and set(metrics["episodes"]) <= set(
        bundle.config.dataset["heldout_episodes"]
    )
    for name in ("report.md", "drift.png", "examples.png"):
        assert (run / "eval" / name).stat().st_size > 0
    gifs = sorted((run / "rollouts").glob("*/*.gif"))
    assert [g.parent.name for g in gifs] == ["recorded", "scripted", "student"]
    for gif in gifs:
        with Image.open(gif) as image:
            assert image.n_frames == SMOKE.rollout_frames
    summary = (run / "summary.md").read_text()
    assert "| world model |" in summary and "| copy last frame |" in summary and "| same, shuffled actions |" in summary
    assert "| VAE reconstruction (ceiling) |" in summary and "| sharpness | GMSD |" in summary
    assert "Action following (inverse-dynamics model" in summary and "teacher-forced / real: " in summary
    assert (run / "idm" / "idm_config.json").is_file()
    assert "action_following" in metrics["models"][0]
    # The 1-step student, distilled from the world model, evaluated beside it on the same windows at one step.
    student = load_world_model(run / "student")
    assert student.config.num_inference_steps == 1 and student.config.distillation["teacher"] == str(
        run / "world_model"
    )
    assert student.config.distillation["regression_weight"] == SMOKE.distill_regression == 10
    assert [m["name"] for m in metrics["models"]] == ["world_model", "student_1step"]
    assert metrics["models"][1]["engine"]["num_inference_steps"] == 1
    assert metrics["models"][0]["engine"]["num_inference_steps"] == bundle.config.num_inference_steps
    assert "| 1-step student (distill.py) |" in summary and f"--model_folder {run / 'student'}" in summary
    # The model's own frames: no detail carry-over unless asked for, and no evaluation of it.
    assert SMOKE.carry_detail == 0 and metrics["models"][0]["engine"]["carry_detail"] is None
    assert not (run / "eval" / "carry_detail").exists() and "## Post-process" not in summary
    assert f"--dataset_name {run / 'dataset'} --num_inference_steps 8 --output_dir" in summary  # "evaluate again"
    assert "`--carry_detail 8 --redo evaluate`" in summary  # how to measure the carry-over too
    for gif in gifs:
        assert f"]({gif.relative_to(run)})" in summary  # the gifs are shown in the summary
    for stage in quickstart.STAGES:
        assert f"| {stage} |" in summary


def test_a_rerun_skips_the_finished_stages_and_keeps_their_outputs(smoke_run):
    run, _ = smoke_run
    metrics = (run / "eval" / "metrics.json").stat().st_mtime_ns
    result = run_script("quickstart.py", "--smoke", "--output_dir", run, timeout=120)
    assert (
        result.stdout.count("skipped") == len(quickstart.STAGES)
        and "estimated" not in result.stdout.split("all stages done")[0].split("work left")[1]
    )
    assert (run / "eval" / "metrics.json").stat().st_mtime_ns == metrics


def test_a_rerun_with_other_sizes_is_refused_instead_of_mixing_runs(smoke_run):
    run, _ = smoke_run
    result = run_script("quickstart.py", "--smoke", "--output_dir", run, "--wm_steps", 9, check=False, timeout=120)
    assert (
        result.returncode == 1
        and "holds a 'world' stage run with other settings" in result.stderr
        and "--redo world" in result.stderr
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("native_bf16", [True, False])
def test_the_world_model_trains_in_bf16_only_where_the_cpu_computes_it(monkeypatch, native_bf16):
    """auto: bf16 with wm_steps_bf16 steps (1.25x the samples/s, the same wall time) on a CPU with bf16
    instructions; fp32 with wm_steps elsewhere, where emulated bf16 is 13x slower. --wm_steps sets either."""
    import torch

    import gamengen.devices

    monkeypatch.setattr(gamengen.devices, "cpu_computes_bf16", lambda: native_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def world(*argv):
        args = quickstart.parse_args(list(argv))
        budget = quickstart.budget_from_args(args)
        command = quickstart.stage_commands(Path("run"), budget, args)["world"][0]
        value = {name: command[command.index(name) + 1] for name in ("--mixed_precision", "--max_train_steps")}
        return value["--mixed_precision"], int(value["--max_train_steps"]), quickstart.estimate("world", budget)

    precision, steps, seconds = world()
    assert (precision, steps) == (("bf16", 1250) if native_bf16 else ("no", 1000))
    assert seconds == pytest.approx(quickstart.estimate("world", quickstart.BUDGETS["20min"]))  # same wall time
    assert world("--budget", "60min")[:2] == (("bf16", 5000) if native_bf16 else ("no", 4000))
    assert world("--wm_steps", "900")[:2] == (precision, 900)
    assert world("--wm_precision", "no")[:2] == ("no", 1000)
    assert world("--wm_precision", "bf16")[:2] == ("bf16", 1250)


def test_the_world_model_saved_is_an_average_of_its_weights_unless_asked_otherwise():
    """The budgets train with --ema_decay 0.99 (docs/research_log.md, "A learning-rate schedule and weight
    averaging"); --ema_decay 0 keeps the last weights; a decay of 1 or more is refused by name."""

    def world(*argv):
        args = quickstart.parse_args(list(argv))
        return quickstart.stage_commands(Path("run"), quickstart.budget_from_args(args), args)["world"][0]

    for budget in ("20min", "60min", "smoke"):
        command = world("--budget", budget)
        assert command[command.index("--ema_decay") + 1] == "0.99"
    assert "--ema_decay" not in world("--ema_decay", "0")
    with pytest.raises(SystemExit):
        quickstart.parse_args(["--ema_decay", "1"])


def test_the_student_is_anchored_to_its_teachers_frames_unless_the_paper_alone_is_asked_for():
    """The distill stage adds the regression term (--regression_weight 10; docs/research_log.md, "The regression
    term"); --distill_regression 0 distils by distribution matching alone, as the paper."""

    def distill(*argv):
        args = quickstart.parse_args(list(argv))
        return quickstart.stage_commands(Path("run"), quickstart.budget_from_args(args), args)["distill"][0]

    for budget in ("20min", "60min", "smoke"):
        command = distill("--budget", budget)
        assert command[command.index("--regression_weight") + 1] == "10"
    command = distill("--distill_regression", "0")
    assert command[command.index("--regression_weight") + 1] == "0"
    with pytest.raises(SystemExit):
        quickstart.parse_args(["--distill_regression", "-1"])


def test_the_training_stages_use_both_cores_and_one_option_takes_them_back_to_one_thread():
    """On an idle 2-core machine the trainers run 2 torch threads (1.3-1.6x faster, research log); --train_threads 1
    gives the cores back for a busy machine; the stages that do not train keep --threads; on a GPU the trainers
    keep their own defaults."""
    from gamengen.quickstart.budgets import stage_threads
    from gamengen.quickstart.stages import STAGES as ALL_STAGES

    def plan(*argv):
        args = quickstart.parse_args(list(argv))
        budget = quickstart.budget_from_args(args)
        commands = quickstart.stage_commands(Path("run"), budget, args)
        threads = {stage: stage_threads(stage, budget, args.threads) for stage in ALL_STAGES}
        return commands, threads

    def num_threads(command):
        return command[command.index("--num_threads") + 1] if "--num_threads" in command else None

    commands, threads = plan()
    assert {stage: num_threads(commands[stage][0]) for stage in ("idm", "world", "distill")} == dict.fromkeys(
        ("idm", "world", "distill"), "2"
    )
    assert threads["vae"] == 2 and threads["evaluate"] == threads["ppo"] == threads["rollouts"] == 1
    commands, threads = plan("--train_threads", "1")
    assert num_threads(commands["world"][0]) == "1" and threads["vae"] == threads["world"] == 1
    commands, threads = plan("--budget", "gpu-smoke")
    assert num_threads(commands["world"][0]) is None and threads["world"] == 1


def test_evaluation_rollouts_and_play_show_the_models_own_frames_unless_the_carry_over_is_asked_for():
    """Every budget evaluates, rolls out and plays the model's own frames. --carry_detail 8 (the engine's
    post-process, docs/engine.md#detail-carry-over) adds an evaluation with it into eval/carry_detail/, after the one
    of the model's own frames, and reaches the rollouts and the play command; a negative scale is refused by name."""

    def commands(*argv):
        args = quickstart.parse_args(list(argv))
        budget = quickstart.budget_from_args(args)
        stages = quickstart.stage_commands(Path("run"), budget, args)
        return stages["evaluate"], stages["rollouts"], quickstart.play_command(Path("run"), budget), budget

    for argv in (["--budget", "20min"], ["--budget", "60min"], ["--smoke"], ["--carry_detail", "0"]):
        evaluate, rollouts, play, budget = commands(*argv)
        assert budget.carry_detail == 0 and len(evaluate) == 1
        assert evaluate[0][evaluate[0].index("--output_dir") + 1] == str(Path("run") / "eval")
        assert not any("--carry_detail" in command for command in evaluate + rollouts) and "--carry_detail" not in play
    own_seconds = quickstart.estimate("evaluate", budget)
    evaluate, rollouts, play, budget = commands("--carry_detail", "8")
    assert "--carry_detail" not in evaluate[0]  # the model's own frames first, into eval/
    assert evaluate[0][evaluate[0].index("--output_dir") + 1] == str(Path("run") / "eval")
    assert evaluate[1][-2:] == ["--carry_detail", "8"]  # then the post-process, apart
    assert evaluate[1][evaluate[1].index("--output_dir") + 1] == str(Path("run") / "eval" / "carry_detail")
    assert evaluate[1][:-2] == [  # on the same windows, episodes, seed and IDM
        str(Path("run") / "eval" / "carry_detail") if c == str(Path("run") / "eval") else c for c in evaluate[0]
    ]
    for command in rollouts:
        assert command[command.index("--carry_detail") + 1] == "8"
    assert play.endswith("--carry_detail 8")
    assert quickstart.estimate("evaluate", budget) == pytest.approx(2 * own_seconds)  # two evaluations
    with pytest.raises(SystemExit):
        quickstart.parse_args(["--carry_detail", "-1"])


def test_the_summary_shows_the_carry_over_after_the_models_own_numbers_as_a_post_process(smoke_run, tmp_path):
    """With --carry_detail, summary.md gives the model's own numbers first, then the carry-over's in a section of
    its own, labelled as the engine's post-process; the gifs and the commands say they use it."""
    run, _ = smoke_run
    own = json.loads((run / "eval" / "metrics.json").read_text())
    carried = json.loads(json.dumps(own))
    carried["models"][0]["teacher_forced"]["psnr"] += 0.5
    (tmp_path / "eval" / "carry_detail").mkdir(parents=True)
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(own))
    (tmp_path / "eval" / "carry_detail" / "metrics.json").write_text(json.dumps(carried))
    state = json.loads((run / "quickstart.json").read_text())
    budget = quickstart.budget_from_args(quickstart.parse_args(["--smoke", "--carry_detail", "8"]))
    summary = write_summary(tmp_path, state, budget).read_text()
    psnr = own["models"][0]["teacher_forced"]["psnr"]
    own_row = summary.index(f"| world model | {psnr:.2f} |")
    section = summary.index("## Post-process: the detail carry-over (`--carry_detail 8`)")
    carried_row = summary.index(f"| world model + carry-over | {psnr + 0.5:.2f} |")
    assert own_row < section < carried_row < summary.index("## Rollouts")
    assert "Not the model's own frames" in summary[section:] and "adds +0.50 dB to the model's own frames" in summary
    assert "with the detail carry-over post-process `--carry_detail 8`)" in summary  # the rollouts' heading
    assert "--carry_detail 8 --num_inference_steps 8" in summary and "--redo evaluate" not in summary


def test_several_seeds_are_summarised_by_their_mean_and_spread(smoke_run, tmp_path):
    """--seeds K runs the pipeline into seed-<s>/ folders; summary.md gives each headline number's mean ± std."""
    run, _ = smoke_run
    base = json.loads((run / "eval" / "metrics.json").read_text())
    copy_last = base["baselines"]["copy_last"]["teacher_forced"]["psnr"]
    # The smoke IDM (a few steps) may read no real transition right, and then has no ratio: give it one.
    base["models"][0]["action_following"].update(relative_accuracy=0.62, relative_category_accuracy=0.81)
    for seed, margin in ((3, 1.0), (4, -0.5)):  # one seed above copy-last, one below
        metrics = json.loads(json.dumps(base))
        metrics["models"][0]["teacher_forced"]["psnr"] = copy_last + margin
        (tmp_path / f"seed-{seed}" / "eval").mkdir(parents=True)
        (tmp_path / f"seed-{seed}" / "eval" / "metrics.json").write_text(json.dumps(metrics))
    args = quickstart.parse_args(["--smoke", "--output_dir", str(tmp_path), "--seed", "3", "--seeds", "2"])
    summary = quickstart.write_seeds_summary(tmp_path, [3, 4], args).read_text()
    row = next(line for line in summary.splitlines() if line.startswith("| PSNR minus copy-last |"))
    assert "| 0.25 ± 1.06 | -0.50 | 1.00 | 1.00 | -0.50 |" in row
    assert "beats copy-last on 1 of 2 seeds" in summary and "| sharpness (1 = the game's) |" in summary
    assert "seed-3/summary.md" in summary
    for label, ratio in (("action", "0.62"), ("category", "0.81")):  # both IDM ratios, each under its own name
        row = next(line for line in summary.splitlines() if line.startswith(f"| IDM {label} accuracy, generated / "))
        assert f"| {ratio} ± 0.00 |" in row, row
    # A seed whose IDM has no ratio (n/a): the row keeps the seeds that have one, and shows – for the other.
    for seed in (3, 4):
        metrics = json.loads((tmp_path / f"seed-{seed}" / "eval" / "metrics.json").read_text())
        if seed == 4:
            metrics["models"][0]["action_following"]["relative_accuracy"] = None
        (tmp_path / f"seed-{seed}" / "eval" / "metrics.json").write_text(json.dumps(metrics))
    summary = quickstart.write_seeds_summary(tmp_path, [3, 4], args).read_text()
    row = next(line for line in summary.splitlines() if line.startswith("| IDM action accuracy, generated / "))
    assert row.rstrip().endswith("| 0.62 | – |"), row
    with pytest.raises(SystemExit):
        quickstart.parse_args(["--seeds", "0"])
