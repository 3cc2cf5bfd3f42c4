"""The quickstart's stages: the script each runs with its options (one function per stage), what each
writes, and the play command printed at the end. Paths are relative to the repository."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from gamengen.quickstart.budgets import Budget, frame_size, lossless

STAGES = ("ppo", "generate", "idm", "vae", "latents", "world", "distill", "evaluate", "rollouts")
STUDENT_NAMES = ("world_model", "student_1step")  # the evaluation's labels of the two models
# Stands for the world model's longest held-out episode, known only once the world stage has run
# (gamengen.quickstart.runner.resolve_heldout).
HELDOUT = "--episodes_from_checkpoint"
CARRY_DETAIL_DIR = "carry_detail"  # eval/<this>/: the evaluation with the detail carry-over, when asked for


def stage_commands(run: Path, budget: Budget, args: argparse.Namespace) -> dict[str, list[list[str]]]:
    """Each stage's script invocations; ``args`` gives the preset and the seed."""
    seed = str(args.seed)
    return {
        "ppo": [ppo_command(run, budget, args.preset, seed)],
        "generate": [generate_command(run, budget, args.preset, args.seed + 1000)],
        "idm": [idm_command(run, budget, seed)],
        "vae": [autoencoder_command(run, budget, args.preset, seed)],
        "latents": [latents_command(run, budget, args.preset)],
        "world": [world_command(run, budget, args.preset, seed)],
        "distill": [distill_command(run, budget, seed)],
        "evaluate": evaluate_commands(run, budget, seed),
        "rollouts": rollouts_commands(run, budget, seed),
    }


def game_options(budget: Budget, preset: str) -> list[str]:
    """The game both agent-side stages play: scenario, frame size, frame skip, an episode's length."""
    tics = budget.episode_steps * budget.frame_skip
    return [
        *("--scenario", budget.scenario, "--frame_size", frame_size(preset)),
        *("--frame_skip", str(budget.frame_skip), "--episode_timeout", str(tics)),
    ]


def ppo_command(run: Path, budget: Budget, preset: str, seed: str) -> list[str]:
    """A short PPO run on 2 games that records every episode it plays into dataset/."""
    n_steps = max(32, min(256, budget.ppo_steps // 4))
    return [
        "ViZDoomPPO/train_ppo_parallel.py",
        *("--total_timesteps", str(budget.ppo_steps), "--n_envs", str(budget.agent_envs), "--n_steps", str(n_steps)),
        *("--batch_size", "64", "--n_epochs", "4", "--log_dir", str(run / "agent"), "--run_name", "quickstart"),
        *("--record_dir", str(run / "dataset")),
        *("--checkpoint_freq", str(max(budget.ppo_steps // 2, 256)), "--seed", seed),
        *game_options(budget, preset),
    ]


def generate_command(run: Path, budget: Budget, preset: str, seed: int) -> list[str]:
    """More episodes from the trained agent, 2 workers, added to dataset/."""
    policy = run / "agent" / "models" / "quickstart" / "best_model.zip"
    return [
        "ViZDoomPPO/load_model_generate_dataset.py",
        *("--model_path", str(policy), "--episodes", str(budget.episodes), "--num_workers", str(budget.workers)),
        *("--max_steps_per_episode", str(budget.episode_steps), "--out_dir", str(run / "dataset")),
        *("--seed", str(seed)),
        *game_options(budget, preset),
    ]


def idm_command(run: Path, budget: Budget, seed: str) -> list[str]:
    """The inverse-dynamics model that measures action following."""
    return [
        *("train_idm.py", "--dataset_name", str(run / "dataset"), "--output_dir", str(run / "idm"), "--seed", seed),
        *("--max_train_steps", str(budget.idm_steps)),
        *threads_option(budget),
    ]


def autoencoder_command(run: Path, budget: Budget, preset: str, seed: str) -> list[str]:
    """The vae stage: train the preset's VAE from scratch, or (tiny-s2d) write the lossless one, untrained."""
    command = ["finetune_autoencoder.py", "--preset", preset, "--dataset_name", str(run / "dataset")]
    command += ["--output_dir", str(run / "vae"), "--seed", seed]
    if lossless(preset):
        return command
    return command + [
        *("--train_encoder", "--max_train_steps", str(budget.vae_steps)),
        *("--train_batch_size", str(budget.vae_batch_size)),
        *("--validation_steps", str(max(budget.vae_steps // 2, 1))),
        *("--checkpointing_steps", str(max(budget.vae_steps // 3, 1))),
        *timed(budget.vae_seconds),
        *loader_options(budget),
        *(["--mixed_precision", budget.vae_precision] if budget.vae_precision else []),
    ]


def timed(seconds: float) -> list[str]:
    """A trainer's fixed training time (its steps are then an upper bound); nothing when the steps decide."""
    return ["--max_train_seconds", f"{seconds:g}"] if seconds else []


def threads_option(budget: Budget) -> list[str]:
    """The budget's torch threads for a trainer that sets its own (the vae stage's reads OMP_NUM_THREADS)."""
    return ["--num_threads", str(budget.train_threads)] if budget.train_threads else []


def loader_options(budget: Budget) -> list[str]:
    """DataLoader worker processes of the stages that read the dataset, when the budget has cores for them."""
    return ["--dataloader_num_workers", str(budget.loader_workers)] if budget.loader_workers else []


def latents_command(run: Path, budget: Budget, preset: str) -> list[str]:
    """Every frame's latent, encoded once."""
    return [
        *("encode_latents.py", "--preset", preset, "--dataset_name", str(run / "dataset")),
        *("--pretrained_vae_model_name_or_path", str(run / "vae"), "--output_dir", str(run / "latents")),
        *loader_options(budget),
    ]


def world_command(run: Path, budget: Budget, preset: str, seed: str) -> list[str]:
    """The world model, trained on the cached latents."""
    return [
        *("train_text_to_image.py", "--preset", preset, "--dataset_name", str(run / "dataset")),
        *("--latents_dir", str(run / "latents"), "--pretrained_vae_model_name_or_path", str(run / "vae")),
        *("--output_dir", str(run / "world_model"), "--seed", seed),
        *("--max_train_steps", str(budget.wm_steps), "--train_batch_size", str(budget.wm_batch_size)),
        *("--context_length", str(budget.context_length), "--mixed_precision", budget.wm_precision),
        *(["--ema_decay", str(budget.ema_decay)] if budget.ema_decay else []),
        *("--validation_steps", str(max(budget.wm_steps // 2, 1))),
        *("--checkpointing_steps", str(max(budget.wm_steps // 3, 1))),
        *timed(budget.wm_seconds),
        *loader_options(budget),
        *threads_option(budget),
        *shlex.split(budget.wm_args),
    ]


def distill_command(run: Path, budget: Budget, seed: str) -> list[str]:
    """The world model distilled to one sampling step (the paper's appendix), on the same cached latents."""
    return [
        *("distill.py", "--teacher_model", str(run / "world_model"), "--dataset_name", str(run / "dataset")),
        *("--latents_dir", str(run / "latents"), "--output_dir", str(run / "student"), "--seed", seed),
        *("--max_train_steps", str(budget.distill_steps), "--train_batch_size", str(budget.distill_batch_size)),
        *("--regression_weight", f"{budget.distill_regression:g}"),
        *("--mixed_precision", budget.wm_precision),
        *threads_option(budget),
        *("--validation_steps", str(max(budget.distill_steps // 2, 1))),
        *("--checkpointing_steps", str(max(budget.distill_steps // 2, 1))),
        *timed(budget.distill_seconds),
        *loader_options(budget),
    ]


def evaluate_commands(run: Path, budget: Budget, seed: str) -> list[list[str]]:
    """The evaluation of the model's own frames into eval/; with --carry_detail, then the same evaluation with the
    detail carry-over post-process into eval/carry_detail/ (reported apart, after the model's own numbers)."""
    own = evaluate_command(run, budget, seed, run / "eval")
    if not budget.carry_detail:
        return [own]
    return [own, evaluate_command(run, budget, seed, run / "eval" / CARRY_DETAIL_DIR) + engine_options(budget)]


def evaluate_command(run: Path, budget: Budget, seed: str, output_dir: Path) -> list[str]:
    """evaluate.py on the held-out episodes with the engine's defaults (the model's own frames): the world model and,
    beside it on the same windows, its 1-step student (each sampled as its checkpoint says: 4 steps, 1 step)."""
    return [
        *("evaluate.py", "--model_folder", str(run / "world_model"), "--dataset_name", str(run / "dataset")),
        *("--compare", str(run / "student"), "--names", *STUDENT_NAMES),
        *("--output_dir", str(output_dir), "--max_windows", str(budget.eval_windows)),
        *("--num_episodes", str(budget.eval_episodes), "--horizon", str(budget.eval_horizon)),
        *("--idm", str(run / "idm"), "--seed", seed),
        *(["--batch_size", str(budget.eval_batch_size)] if budget.eval_batch_size else []),
        *eager(budget),
    ]


def rollouts_commands(run: Path, budget: Budget, seed: str) -> list[list[str]]:
    """Gifs from the longest held-out episode: its recorded actions beside the truth, then the scripted ones, then
    the 1-step student's with the recorded actions."""
    start = ["run_autoregressive.py", "--model_folder", str(run / "world_model")]
    start += ["--dataset_name", str(run / "dataset"), HELDOUT]
    recorded = [*start, "--num_frames", str(budget.rollout_frames)]
    recorded += ["--output_dir", str(run / "rollouts" / "recorded"), "--no_mp4", "--seed", seed]
    scripted = [*start, "--actions", budget.script, "--num_frames", str(budget.rollout_frames)]
    scripted += ["--output_dir", str(run / "rollouts" / "scripted"), "--no_mp4", "--seed", seed]
    student = [*start, "--num_frames", str(budget.rollout_frames)]
    student[student.index(str(run / "world_model"))] = str(run / "student")
    student += ["--output_dir", str(run / "rollouts" / "student"), "--no_mp4", "--seed", seed]
    return [command + engine_options(budget) + eager(budget) for command in (recorded, scripted, student)]


def eager(budget: Budget) -> list[str]:
    """The engine uncompiled (on a GPU it compiles with CUDA graphs by default: a warm-up in every process)."""
    return ["--eager"] if budget.eager_engine else []


def engine_options(budget: Budget) -> list[str]:
    """The engine options asked for on top of the model's own frames (the detail carry-over, when opted in)."""
    return ["--carry_detail", f"{budget.carry_detail:g}"] if budget.carry_detail else []


def play_command(run: Path, budget: Budget, model: str = "world_model") -> str:
    """The command that plays the world model (or its 1-step ``student``) live."""
    command = ["python", "run_playable_env.py", "--model_folder", str(run / model)]
    return shlex.join(command + ["--dataset_name", str(run / "dataset"), *engine_options(budget)])


def stage_outputs(run: Path) -> dict[str, list[Path]]:
    """What each stage writes (moved aside when it is redone) and, first, the file that says it finished."""
    return {
        "ppo": [run / "agent" / "models" / "quickstart" / "best_model.zip", run / "agent"],
        "generate": [],  # adds shards to dataset/ (with the ppo stage's): redoing it redoes ppo too
        "idm": [run / "idm" / "idm_config.json", run / "idm"],
        "vae": [run / "vae" / "vae" / "config.json", run / "vae"],
        "latents": [run / "latents", run / "latents"],
        "world": [run / "world_model" / "gamengen_config.json", run / "world_model"],
        "distill": [run / "student" / "gamengen_config.json", run / "student"],
        "evaluate": [run / "eval" / "metrics.json", run / "eval"],
        "rollouts": [run / "rollouts" / "scripted" / "rollouts.json", run / "rollouts"],
    }
