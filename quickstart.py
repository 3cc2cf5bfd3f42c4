"""The whole GameNGen pipeline on a laptop CPU in one command: agent, data, autoencoder, world model,
evaluation and rollouts, with results to look at.

    python quickstart.py                          # the 20-minute budget on 2 CPU cores -> runs/quickstart
    python quickstart.py --smoke                  # the smallest sizes, a few minutes (what CI runs)
    python quickstart.py --budget 60min --output_dir runs/hour

Every stage is one of the repository's scripts, called as a user would call it (the command is
printed and kept in ``quickstart.json``), its output in a sub-folder of ``--output_dir``:

  1. ppo       ViZDoomPPO/train_ppo_parallel.py: a short PPO run on 2 games, recording its episodes -> dataset/
  2. generate  ViZDoomPPO/load_model_generate_dataset.py: more episodes from the trained agent, 2 workers -> dataset/
  3. idm       train_idm.py: an inverse-dynamics model of the dataset, to measure action following -> idm/
  4. vae       finetune_autoencoder.py --train_encoder: the tiny autoencoder -> vae/
  5. latents   encode_latents.py: the dataset's latents, once -> latents/
  6. world     train_text_to_image.py: the world model -> world_model/
  7. evaluate  evaluate.py: PSNR/SSIM, sharpness, GMSD, IDM action following, drift, baselines -> eval/
  8. rollouts  run_autoregressive.py: gifs with the recorded actions and with a scripted sequence -> rollouts/

A rerun with the same options skips the stages already finished; a stage that was interrupted is run
again (its partial output is moved aside, never deleted; the trainers resume from their last
checkpoint). ``summary.md`` in the run folder holds the time of each stage, the metrics table and
the gifs; the last lines printed say how to play the model live.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from gamengen.files import write_bytes_atomic, write_json_atomic
from gamengen.help_format import HelpFormatter

REPO = Path(__file__).resolve().parent
STAGES = ("ppo", "generate", "idm", "vae", "latents", "world", "evaluate", "rollouts")
STATE_FILE = "quickstart.json"


@dataclass
class Budget:
    """The sizes of one quickstart run (every field is also a command-line option)."""

    scenario: str = "e1m1"
    frame_skip: int = 4
    episode_steps: int = 200  # agent steps per episode (the game's timeout is set to match)
    ppo_steps: int = 4096  # PPO agent steps over both games; every episode they play is recorded
    episodes: int = 40  # episodes recorded from the trained agent
    idm_steps: int = 300
    # Batch 8 for twice the steps of batch 16 (the same frames and time): sharper, higher PSNR
    # (docs/research_log.md#the-autoencoders-edges).
    vae_steps: int = 1200
    vae_batch_size: int = 8
    # World-model steps in fp32, and in bf16 where the CPU computes it (1.25x the training samples/s: the same
    # wall time; docs/research_log.md#bf16-as-the-default). --wm_steps N sets both.
    wm_steps: int = 1000
    wm_steps_bf16: int = 1250
    wm_precision: str = "auto"  # auto: bf16 where the CPU has bf16 instructions (or on a GPU), else no
    wm_batch_size: int = 32
    # The world model saved and evaluated is an average of its weights (+0.08 to +0.13 dB over copy-last on the
    # same data, better on every seed; docs/research_log.md#a-learning-rate-schedule-and-weight-averaging-20-minutes).
    ema_decay: float = 0.99
    context_length: int = 4
    # Evaluation, rollouts and live play add back the detail the VAE loses from the newest real frame, fading
    # where the frames change (docs/engine.md#detail-carry-over; measured in docs/research_log.md#detail-carry-over).
    carry_detail: float = 8.0
    eval_windows: int = 128
    eval_episodes: int = 8
    eval_horizon: int = 64
    rollout_frames: int = 48
    script: str = "TURN_LEFT*12,FORWARD*12,TURN_RIGHT*12,FORWARD_ATTACK*12"
    wm_args: str = ""  # more train_text_to_image.py options, e.g. "--snr_gamma 5"


BUDGETS = {
    "smoke": Budget(
        episode_steps=24,
        ppo_steps=256,
        episodes=4,
        idm_steps=4,
        vae_steps=8,
        vae_batch_size=4,
        wm_steps=8,
        wm_steps_bf16=8,
        wm_batch_size=4,
        eval_windows=8,
        eval_episodes=2,
        eval_horizon=8,
        rollout_frames=8,
        script="TURN_LEFT*4,FORWARD*4",
    ),
    "20min": Budget(),
    "60min": Budget(
        ppo_steps=8192, episodes=96, idm_steps=600, vae_steps=2400, wm_steps=4000, wm_steps_bf16=5000, eval_windows=256
    ),
}

# Throughput measured on the 2-core development machine (README, quickstart section), for the time
# estimates printed before each stage: units per second and a fixed start-up cost in seconds.
RATES = {
    "ppo": (55.0, 20.0),  # agent steps/s while learning, 2 games
    "generate": (250.0, 15.0),  # recorded frames/s, 2 workers
    "idm": (5.0, 15.0),  # optimisation steps/s at batch 64
    "vae": (2.5, 15.0),  # optimisation steps/s at batch 16
    "latents": (280.0, 10.0),  # frames/s
    "world": (1.7, 15.0),  # optimisation steps/s at batch 32, fp32 (x BF16_SPEEDUP in bf16)
    "evaluate": (10.0, 15.0),  # generated frames/s
    "rollouts": (10.0, 15.0),  # generated frames/s
}

BF16_SPEEDUP = 1.25  # training samples/s of bf16 autocast over fp32 where the CPU has bf16 instructions
PRECISIONS = ("auto", "bf16", "no")
SIZE_HELP = {
    "wm_steps": "world-model steps (in fp32; given, it sets the steps of either precision)",
    "wm_steps_bf16": "world-model steps when it trains in bf16 (the same wall time as --wm_steps in fp32)",
    "wm_precision": "world-model training precision; auto: bf16 where the CPU has bf16 instructions or on a GPU "
    "that supports it, else no (emulated bf16 ran 13x slower than fp32)",
    "carry_detail": "the engine's --carry_detail for evaluation, rollouts and play (0 = off: the VAE's frames)",
    "ema_decay": "the world model saved is an exponential moving average of its weights with this decay "
    "(train_text_to_image.py --ema_decay); 0 = its last weights",
}


class QuickstartError(RuntimeError):
    """A stage failed or the run folder cannot be used as asked (the message says what to do)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument(
        "--output_dir", default=None, help="run folder (default: runs/quickstart, runs/smoke for --smoke)"
    )
    parser.add_argument(
        "--budget",
        choices=sorted(BUDGETS),
        default="20min",
        help="sizes of every stage (smoke: minutes; 20min / 60min on 2 CPU cores)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="the same pipeline at the smallest sizes (= --budget smoke)"
    )
    parser.add_argument(
        "--preset",
        default="tiny",
        choices=["tiny", "tiny-s2d", "sd14"],
        help="world-model preset (sd14: the paper's, for GPUs; tiny-s2d: a lossless autoencoder, an experiment)",
    )
    parser.add_argument(
        "--redo",
        nargs="+",
        choices=STAGES,
        default=[],
        help="run these stages (and the ones after them) again; old outputs are moved aside",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="run the whole pipeline (new agent data included) with this many seeds, --seed, --seed+1, ..., each in "
        "<output_dir>/seed-<s>/, and summarise the mean and spread of every headline number in <output_dir>/summary.md",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of each stage (OMP_NUM_THREADS). 1: with anything else on the cores, torch's spin-waiting "
        "threads made training steps "
        "10x slower here (docs/architecture.md#environment-facts); 0 = torch's default (one per core), for an "
        "otherwise idle machine",
    )
    sizes = parser.add_argument_group("sizes (override the budget's)")
    for item in fields(Budget):
        sizes.add_argument(
            f"--{item.name}",
            type=type(item.default) if not isinstance(item.default, str) else str,
            default=None,
            choices=PRECISIONS if item.name == "wm_precision" else None,
            help=SIZE_HELP.get(item.name),
        )
    args = parser.parse_args(argv)
    if args.smoke:
        args.budget = "smoke"
    if args.output_dir is None:
        args.output_dir = "runs/smoke" if args.budget == "smoke" else "runs/quickstart"
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.carry_detail is not None and not args.carry_detail >= 0:
        parser.error("--carry_detail must be >= 0 (a fading scale in 0-255 levels; 0 = off)")
    if args.ema_decay is not None and not 0.0 <= args.ema_decay < 1.0:
        parser.error("--ema_decay must be in [0, 1) (0 = no average: the world model's last weights)")
    return args


def budget_from_args(args: argparse.Namespace) -> Budget:
    """The budget's sizes with the command line's overrides, its world-model precision resolved (``auto`` ->
    ``bf16`` or ``no`` on this machine) and the step count of that precision in ``wm_steps``."""
    overrides = {item.name: getattr(args, item.name) for item in fields(Budget) if getattr(args, item.name) is not None}
    budget = replace(BUDGETS[args.budget], **overrides)
    precision = world_precision() if budget.wm_precision == "auto" else budget.wm_precision
    steps = budget.wm_steps_bf16 if precision == "bf16" and args.wm_steps is None else budget.wm_steps
    return replace(budget, wm_precision=precision, wm_steps=steps, wm_steps_bf16=steps)


def world_precision() -> str:
    """bf16 where it is fast: a GPU that supports it, or a CPU with bf16 instructions (emulated bf16 ran the
    training step 13x slower than fp32; gamengen.devices.cpu_computes_bf16)."""
    import torch

    from gamengen.devices import cpu_computes_bf16

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_computes_bf16() else "no"


# ----------------------------------------------------------------------------------------------
# Stages: the command of each, and the file whose existence says it finished


def frame_size(preset: str) -> str:
    from gamengen.config import get_config

    model = get_config(preset)
    return f"{model.frame_width}x{model.frame_height}"


def game_options(budget: Budget, preset: str) -> list[str]:
    tics = budget.episode_steps * budget.frame_skip
    return [
        "--scenario",
        budget.scenario,
        "--frame_size",
        frame_size(preset),
        "--frame_skip",
        str(budget.frame_skip),
        "--episode_timeout",
        str(tics),
    ]


def lossless(preset: str) -> bool:
    from gamengen.config import get_config
    from gamengen.vae import is_lossless

    return is_lossless(get_config(preset))


def autoencoder_command(run: Path, budget: Budget, args: argparse.Namespace) -> list[str]:
    """The vae stage: train the preset's VAE from scratch, or (tiny-s2d) write the lossless one, untrained."""
    command = ["finetune_autoencoder.py", "--preset", args.preset, "--dataset_name", str(run / "dataset")]
    command += ["--output_dir", str(run / "vae"), "--seed", str(args.seed)]
    if lossless(args.preset):
        return command
    return command + [
        *("--train_encoder", "--max_train_steps", str(budget.vae_steps)),
        *("--train_batch_size", str(budget.vae_batch_size)),
        *("--validation_steps", str(max(budget.vae_steps // 2, 1))),
        *("--checkpointing_steps", str(max(budget.vae_steps // 3, 1))),
    ]


def stage_commands(run: Path, budget: Budget, args: argparse.Namespace) -> dict[str, list[list[str]]]:
    """Each stage's script invocations (paths relative to the repository)."""
    data, agent = run / "dataset", run / "agent"
    policy = agent / "models" / "quickstart" / "best_model.zip"
    heldout = "--episodes_from_checkpoint"  # resolved when the stage runs (the trainer's held-out episodes)
    seed = str(args.seed)
    n_steps = max(32, min(256, budget.ppo_steps // 4))
    return {
        "ppo": [
            [
                "ViZDoomPPO/train_ppo_parallel.py",
                "--total_timesteps",
                str(budget.ppo_steps),
                "--n_envs",
                "2",
                "--n_steps",
                str(n_steps),
            ]
            + [
                "--batch_size",
                "64",
                "--n_epochs",
                "4",
                "--log_dir",
                str(agent),
                "--run_name",
                "quickstart",
                "--record_dir",
                str(data),
            ]
            + ["--checkpoint_freq", str(max(budget.ppo_steps // 2, 256)), "--seed", seed]
            + game_options(budget, args.preset)
        ],
        "generate": [
            [
                "ViZDoomPPO/load_model_generate_dataset.py",
                "--model_path",
                str(policy),
                "--episodes",
                str(budget.episodes),
                "--num_workers",
                "2",
            ]
            + [
                "--max_steps_per_episode",
                str(budget.episode_steps),
                "--out_dir",
                str(data),
                "--seed",
                str(args.seed + 1000),
            ]
            + game_options(budget, args.preset)
        ],
        "idm": [
            ["train_idm.py", "--dataset_name", str(data), "--output_dir", str(run / "idm"), "--seed", seed]
            + ["--max_train_steps", str(budget.idm_steps)]
        ],
        "vae": [autoencoder_command(run, budget, args)],
        "latents": [
            [
                "encode_latents.py",
                "--preset",
                args.preset,
                "--dataset_name",
                str(data),
                "--pretrained_vae_model_name_or_path",
                str(run / "vae"),
            ]
            + ["--output_dir", str(run / "latents")]
        ],
        "world": [
            [
                "train_text_to_image.py",
                "--preset",
                args.preset,
                "--dataset_name",
                str(data),
                "--latents_dir",
                str(run / "latents"),
            ]
            + [
                "--pretrained_vae_model_name_or_path",
                str(run / "vae"),
                "--output_dir",
                str(run / "world_model"),
                "--seed",
                seed,
            ]
            + [
                "--max_train_steps",
                str(budget.wm_steps),
                "--train_batch_size",
                str(budget.wm_batch_size),
                "--context_length",
                str(budget.context_length),
                "--mixed_precision",
                budget.wm_precision,
            ]
            + (["--ema_decay", str(budget.ema_decay)] if budget.ema_decay else [])
            + [
                "--validation_steps",
                str(max(budget.wm_steps // 2, 1)),
                "--checkpointing_steps",
                str(max(budget.wm_steps // 3, 1)),
            ]
            + shlex.split(budget.wm_args)
        ],
        "evaluate": [
            [
                "evaluate.py",
                "--model_folder",
                str(run / "world_model"),
                "--dataset_name",
                str(data),
                "--output_dir",
                str(run / "eval"),
            ]
            + [
                "--max_windows",
                str(budget.eval_windows),
                "--num_episodes",
                str(budget.eval_episodes),
                "--horizon",
                str(budget.eval_horizon),
            ]
            + ["--idm", str(run / "idm"), "--seed", seed]
            + engine_options(budget)
        ],
        "rollouts": [
            ["run_autoregressive.py", "--model_folder", str(run / "world_model"), "--dataset_name", str(data), heldout]
            + [
                "--num_frames",
                str(budget.rollout_frames),
                "--output_dir",
                str(run / "rollouts" / "recorded"),
                "--no_mp4",
                "--seed",
                seed,
            ]
            + engine_options(budget),
            ["run_autoregressive.py", "--model_folder", str(run / "world_model"), "--dataset_name", str(data), heldout]
            + [
                "--actions",
                budget.script,
                "--num_frames",
                str(budget.rollout_frames),
                "--output_dir",
                str(run / "rollouts" / "scripted"),
                "--no_mp4",
            ]
            + ["--seed", seed]
            + engine_options(budget),
        ],
    }


def engine_options(budget: Budget) -> list[str]:
    """The engine options of the evaluate and rollouts stages and of the play command."""
    return ["--carry_detail", f"{budget.carry_detail:g}"] if budget.carry_detail else []


def play_command(run: Path, budget: Budget) -> str:
    return shlex.join(
        [
            "python",
            "run_playable_env.py",
            "--model_folder",
            str(run / "world_model"),
            "--dataset_name",
            str(run / "dataset"),
        ]
        + engine_options(budget)
    )


def stage_outputs(run: Path) -> dict[str, list[Path]]:
    """What each stage writes (moved aside when it is redone) and, first, the file that says it finished."""
    return {
        "ppo": [run / "agent" / "models" / "quickstart" / "best_model.zip", run / "agent"],
        "generate": [],  # adds shards to dataset/ (with the ppo stage's): redoing it redoes ppo too
        "idm": [run / "idm" / "idm_config.json", run / "idm"],
        "vae": [run / "vae" / "vae" / "config.json", run / "vae"],
        "latents": [run / "latents", run / "latents"],
        "world": [run / "world_model" / "gamengen_config.json", run / "world_model"],
        "evaluate": [run / "eval" / "metrics.json", run / "eval"],
        "rollouts": [run / "rollouts" / "scripted" / "rollouts.json", run / "rollouts"],
    }


def heldout_episode(run: Path) -> str:
    """The longest of the world model's held-out episodes (never trained on): the rollouts start there."""
    from gamengen.episodes import open_dataset

    config = json.loads((run / "world_model" / "gamengen_config.json").read_text())
    heldout = config.get("dataset", {}).get("heldout_episodes") or []
    if not heldout:
        raise QuickstartError(f"{run / 'world_model'} records no held-out episode")
    dataset = open_dataset(run / "dataset")
    return max(heldout, key=lambda e: dataset.episodes[dataset.episode_ids.index(e)].length)


# ----------------------------------------------------------------------------------------------
# Running


def run_logged(command: list[str], log: Path, threads: int | None = None) -> int:
    """Run a script with this interpreter; its output goes to the terminal and to the log file."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        **({"OMP_NUM_THREADS": str(threads)} if threads and threads > 0 else {}),
    }
    with open(log, "ab") as sink:
        sink.write(f"\n$ {shlex.join(command)}\n".encode())
        process = subprocess.Popen(
            [sys.executable, *command], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            while chunk := os.read(process.stdout.fileno(), 4096):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                sink.write(chunk)
            return process.wait()
        except KeyboardInterrupt:
            process.wait()  # the child got the same Ctrl-C and saves what it has
            raise


def estimate(stage: str, budget: Budget, preset: str = "tiny") -> float:
    if stage == "vae" and lossless(preset):
        return RATES["vae"][1]  # nothing to train: start-up and the scaling factor
    units = {
        "ppo": budget.ppo_steps,
        "generate": budget.episodes * budget.episode_steps,
        "idm": budget.idm_steps,
        "vae": budget.vae_steps * budget.vae_batch_size / 16,
        "latents": budget.episodes * budget.episode_steps + budget.ppo_steps,
        "world": budget.wm_steps * budget.wm_batch_size / 32,
        "evaluate": 2 * budget.eval_windows + budget.eval_episodes * budget.eval_horizon + 16,
        "rollouts": 2 * budget.rollout_frames,
    }[stage]
    rate, start_up = RATES[stage]
    if stage == "world" and budget.wm_precision == "bf16":
        rate *= BF16_SPEEDUP
    return start_up + units / rate


def move_aside(path: Path) -> Path | None:
    if not path.exists():
        return None
    target = path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(target)
    return target


def load_state(run: Path) -> dict[str, Any]:
    path = run / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


def save_state(run: Path, state: dict[str, Any]) -> None:
    write_json_atomic(run / STATE_FILE, state)


def fmt_seconds(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.seeds > 1:
        return run_seeds(args)
    run = Path(args.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "logs").mkdir(exist_ok=True)
    budget = budget_from_args(args)
    state = load_state(run)
    commands = stage_commands(run, budget, args)
    outputs = stage_outputs(run)

    # A finished stage is kept only when it ran with the same command (the same sizes); --redo X
    # redoes X and every stage after it. Redoing ppo or generate redoes the whole dataset.
    first_redo = min((STAGES.index(s) for s in args.redo), default=len(STAGES))
    if first_redo <= STAGES.index("generate"):
        first_redo = 0
    for index, stage in enumerate(STAGES):
        recorded = state["stages"].get(stage)
        if recorded and recorded.get("commands") != [shlex.join(c) for c in commands[stage]] and index < first_redo:
            raise QuickstartError(
                f"{run} holds a '{stage}' stage run with other settings ({recorded['commands'][0][:120]}...): "
                f"choose another --output_dir, or pass --redo {stage} to run it (and the stages after it) again"
            )
    if first_redo < len(STAGES):
        for stage in STAGES[first_redo:]:
            state["stages"].pop(stage, None)
            for path in outputs[stage][1:]:
                moved = move_aside(path)
                if moved:
                    print(f"[quickstart] moved {path} aside to {moved}")
        if first_redo == 0:
            moved = move_aside(run / "dataset")
            if moved:
                print(f"[quickstart] moved {run / 'dataset'} aside to {moved}")
        save_state(run, state)

    total_estimate = sum(estimate(s, budget, args.preset) for s in STAGES if s not in state["stages"])
    print(
        f"[quickstart] {args.budget} budget, preset {args.preset}, run folder {run}: about "
        f"{fmt_seconds(total_estimate)} of work left"
    )
    state["budget"], state["budget_name"], state["preset"] = asdict(budget), args.budget, args.preset
    began = time.perf_counter()
    for number, stage in enumerate(STAGES, 1):
        done = state["stages"].get(stage)
        if done and (not outputs[stage] or outputs[stage][0].exists()):
            print(
                f"[quickstart] {number}/{len(STAGES)} {stage}: done earlier ({fmt_seconds(done['seconds'])}), skipped"
            )
            continue
        if stage == "generate" and "ppo" not in state["stages"]:
            raise QuickstartError("the generate stage needs the ppo stage's agent")
        # An interrupted stage: the trainers resume from their last checkpoint; the others start
        # again with their partial output moved aside (generate only adds shards: none are lost).
        resume = []
        if stage in ("vae", "world") and outputs[stage][1].exists():
            resume = ["--resume_from_checkpoint", "latest"]
        elif stage == "ppo":
            for path in (run / "dataset", run / "agent"):
                if path.exists():
                    print(f"[quickstart] moved the interrupted {path} aside to {move_aside(path)}")
        elif stage != "generate" and outputs[stage][1].exists():
            print(f"[quickstart] moved the interrupted {outputs[stage][1]} aside to {move_aside(outputs[stage][1])}")
        expected = estimate(stage, budget, args.preset)
        print(
            f"\n[quickstart] {number}/{len(STAGES)} {stage}: estimated {fmt_seconds(expected)} (log: "
            f"{run / 'logs' / (stage + '.log')})",
            flush=True,
        )
        started = time.perf_counter()
        ran = []
        for command in commands[stage]:
            command = list(command)
            if "--episodes_from_checkpoint" in command:
                at = command.index("--episodes_from_checkpoint")
                command[at : at + 1] = ["--episodes", heldout_episode(run)]
            full = command + resume
            ran.append(shlex.join(full))
            print(f"[quickstart] $ python {shlex.join(full)}", flush=True)
            code = run_logged(full, run / "logs" / f"{stage}.log", args.threads)
            if code != 0:
                raise QuickstartError(
                    f"stage '{stage}' failed (exit {code}): see {run / 'logs' / (stage + '.log')}; rerun the "
                    "quickstart to continue from there"
                )
        seconds = time.perf_counter() - started
        state["stages"][stage] = {
            "seconds": seconds,
            "estimate": expected,
            "commands": [shlex.join(c) for c in commands[stage]],
            "ran": ran,
        }
        save_state(run, state)
        print(
            f"[quickstart] {stage} finished in {fmt_seconds(seconds)} (estimated {fmt_seconds(expected)})", flush=True
        )

    state["seconds_this_run"] = time.perf_counter() - began
    save_state(run, state)
    summary = write_summary(run, state, budget, args)
    print(
        f"\n[quickstart] all stages done; total {fmt_seconds(sum(s['seconds'] for s in state['stages'].values()))}. "
        f"Results in {run}:"
    )
    print(f"  {summary}  (stage times, metrics, gifs)")
    print(f"  {run / 'eval' / 'report.md'}, drift.png, examples.png")
    print(f"  {run / 'rollouts'}/*/*.gif")
    print("Play the model live:")
    print(f"  {play_command(run, budget)}")
    return state


def run_seeds(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline once per seed (each run folder resumable on its own), then the spread of the results."""
    run = Path(args.output_dir)
    seeds = list(range(args.seed, args.seed + args.seeds))
    states = {}
    for number, seed in enumerate(seeds, 1):
        print(f"\n[quickstart] seed {seed} ({number} of {len(seeds)}) -> {run / f'seed-{seed}'}", flush=True)
        states[seed] = main(
            argparse.Namespace(**{**vars(args), "seed": seed, "seeds": 1, "output_dir": str(run / f"seed-{seed}")})
        )
    path = write_seeds_summary(run, seeds, args)
    print(f"\n[quickstart] {len(seeds)} seeds done: mean and spread of every headline number in {path}")
    return {"seeds": states, "summary": str(path)}


# Headline numbers of one evaluation: (label, how to read it from metrics.json, decimals).
HEADLINES: list[tuple[str, Any, int]] = [
    ("PSNR (dB)", lambda m: m["models"][0]["teacher_forced"]["psnr"], 2),
    ("copy-last PSNR (dB)", lambda m: m["baselines"]["copy_last"]["teacher_forced"]["psnr"], 2),
    (
        "PSNR minus copy-last",
        lambda m: m["models"][0]["teacher_forced"]["psnr"] - m["baselines"]["copy_last"]["teacher_forced"]["psnr"],
        2,
    ),
    (
        "true minus shuffled actions (dB)",
        lambda m: m["models"][0]["teacher_forced"]["psnr"] - m["models"][0]["shuffled_actions"]["psnr"],
        2,
    ),
    ("SSIM", lambda m: m["models"][0]["teacher_forced"]["ssim"], 3),
    ("GMSD (lower is better)", lambda m: m["models"][0]["teacher_forced"]["gmsd"], 3),
    ("copy-last GMSD", lambda m: m["baselines"]["copy_last"]["teacher_forced"]["gmsd"], 3),
    ("sharpness (1 = the game's)", lambda m: m["models"][0]["teacher_forced"]["sharpness"], 2),
    ("VAE reconstruction sharpness", lambda m: m["models"][0]["vae_reconstruction"]["sharpness"], 2),
    ("drift: lowest sharpness over the rollout", lambda m: min(m["models"][0]["drift"]["sharpness"]), 2),
    ("drift: PSNR of the last frame", lambda m: m["models"][0]["drift"]["psnr"][-1], 2),
    ("drift: frames above copy-last", lambda m: m["models"][0]["drift_frames_above_copy_last"], 0),
    # The inverse-dynamics model's accuracy on teacher-forced transitions over its accuracy on real ones: per action
    # (issue 18's goal) and per action category (what the README's table shows).
    ("IDM action accuracy, generated / real", lambda m: m["models"][0]["action_following"]["relative_accuracy"], 2),
    (
        "IDM category accuracy, generated / real",
        lambda m: m["models"][0]["action_following"]["relative_category_accuracy"],
        2,
    ),
    ("frames/s", lambda m: m["models"][0]["timing"]["fps"], 1),
]


def headline_numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The headline numbers an evaluation has (those it did not measure are left out)."""
    numbers = {}
    for label, read, _ in HEADLINES:
        try:
            numbers[label] = float(read(metrics))
        except (KeyError, IndexError, TypeError, ValueError):
            continue
    return numbers


def write_seeds_summary(run: Path, seeds: list[int], args: argparse.Namespace) -> Path:
    import statistics

    per_seed = {
        seed: headline_numbers(json.loads((run / f"seed-{seed}" / "eval" / "metrics.json").read_text()))
        for seed in seeds
    }
    lines = [
        f"# Quickstart over {len(seeds)} seeds ({args.budget} budget, preset {args.preset})",
        "",
        f"Each seed ran the whole pipeline in `seed-<s>/` (its own PPO data, autoencoder, world model, evaluation); "
        f"seeds {', '.join(map(str, seeds))}. Mean ± standard deviation over the seeds, then each seed.",
        "",
        "| | mean ± std | min | max | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|---|---|---|" + "---|" * len(seeds),
    ]
    for label, _, decimals in HEADLINES:
        values = [per_seed[s][label] for s in seeds if label in per_seed[s]]
        if not values:
            continue
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        cells = " | ".join(f"{per_seed[s][label]:.{decimals}f}" if label in per_seed[s] else "–" for s in seeds)
        lines.append(
            f"| {label} | {statistics.mean(values):.{decimals}f} ± {spread:.{decimals}f} | {min(values):.{decimals}f} "
            "| "
            f"{max(values):.{decimals}f} | {cells} |"
        )
    beats = [s for s in seeds if per_seed[s].get("PSNR minus copy-last", float("-inf")) > 0]
    lines += ["", f"The model beats copy-last on {len(beats)} of {len(seeds)} seeds.", ""]
    lines += [f"- seed {s}: [summary](seed-{s}/summary.md), ![drift](seed-{s}/eval/drift.png)" for s in seeds]
    path = run / "summary.md"
    write_bytes_atomic(path, "\n".join(lines) + "\n")
    return path


def write_summary(run: Path, state: dict[str, Any], budget: Budget, args: argparse.Namespace) -> Path:
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    model, copy_last = metrics["models"][0], metrics["baselines"]["copy_last"]
    tf, shuffled, copy_tf = model["teacher_forced"], model["shuffled_actions"], copy_last["teacher_forced"]
    lines = [
        f"# Quickstart run ({state['budget_name']} budget, preset {state['preset']})",
        "",
        f"Scenario {budget.scenario}, frames {frame_size(args.preset)}, frame skip {budget.frame_skip}; "
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
    lines += ["```", ""]

    def cat(summary: dict[str, Any], category: str) -> str:
        value = summary.get("by_category", {}).get(category, {}).get("psnr")
        return "–" if value is None else f"{value:.2f}"

    drift, drift_copy = model["drift"].get("psnr", []), copy_last["drift"].get("psnr", [])
    vae = model["vae_reconstruction"]
    following = model.get("action_following")
    idm_line = (
        "Action following (inverse-dynamics model, action / category accuracy): real transitions "
        f"{following['real']['action_accuracy']:.2f} / {following['real']['category_accuracy']:.2f}, "
        f"teacher-forced {following['teacher_forced']['action_accuracy']:.2f} / "
        f"{following['teacher_forced']['category_accuracy']:.2f} (teacher-forced / real: "
        f"{following['relative_accuracy']:.2f} / {following['relative_category_accuracy']:.2f}), "
        f"shuffled actions vs the recorded ones {following['shuffled_recorded']['action_accuracy']:.2f} / "
        f"{following['shuffled_recorded']['category_accuracy']:.2f} (chance "
        f"{following['real']['action_chance']:.2f} / {following['real']['category_chance']:.2f})."
        if following
        else "Action following: not measured."
    )
    lines += [
        f"## Quality on {len(metrics['episodes'])} held-out episodes ({len(metrics['windows'])} windows; "
        "`eval/report.md` has everything)",
        "",
        "| | PSNR (dB) | SSIM | sharpness | GMSD | PSNR turning | PSNR moving | drift PSNR, last frame |",
        "|---|---|---|---|---|---|---|---|",
        f"| world model | {tf['psnr']:.2f} | {tf['ssim']:.3f} | {tf['sharpness']:.2f} | {tf['gmsd']:.3f} | "
        f"{cat(tf, 'turning')} | {cat(tf, 'moving')} | {drift[-1] if drift else float('nan'):.2f} |",
        f"| same, shuffled actions | {shuffled['psnr']:.2f} | {shuffled['ssim']:.3f} | {shuffled['sharpness']:.2f} | "
        f"{shuffled['gmsd']:.3f} | {cat(shuffled, 'turning')} | {cat(shuffled, 'moving')} | |",
        f"| copy last frame | {copy_tf['psnr']:.2f} | {copy_tf['ssim']:.3f} | {copy_tf['sharpness']:.2f} | "
        f"{copy_tf['gmsd']:.3f} | {cat(copy_tf, 'turning')} | {cat(copy_tf, 'moving')} | "
        f"{drift_copy[-1] if drift_copy else float('nan'):.2f} |",
        f"| VAE reconstruction (ceiling) | {vae['psnr']:.2f} | {vae['ssim']:.3f} | {vae['sharpness']:.2f} | "
        f"{vae['gmsd']:.3f} | | | |",
        f"| paper (SD v1.4, 320x240) | {metrics['paper']['teacher_forced_psnr']} | | | | | | |",
        "",
        "Sharpness: 1.00 = as sharp as the game's frames, below = blur. GMSD: lower is better.",
        "",
        idm_line,
        "",
        f"The model {'beats' if tf['psnr'] > copy_tf['psnr'] else 'does NOT beat'} copy-last "
        f"({tf['psnr'] - copy_tf['psnr']:+.2f} dB); "
        f"true minus shuffled actions: {tf['psnr'] - shuffled['psnr']:+.2f} dB; {model['timing'].get('fps', 0):.1f} "
        "frames/s on this machine.",
        "",
        "![drift](eval/drift.png)",
        "",
        "## Rollouts (generated | real, recorded actions; then a scripted sequence)",
        "",
    ]
    for gif in sorted((run / "rollouts").glob("*/*.gif")):
        lines += [f"![{gif.stem}]({gif.relative_to(run)})", ""]
    lines += [
        "## Next",
        "",
        f"- play it: `{play_command(run, budget)}`",
        f"- evaluate again with other sampling: `python evaluate.py --model_folder {run / 'world_model'} "
        f"--dataset_name {run / 'dataset'} "
        f"{' '.join([*engine_options(budget), ''])}--num_inference_steps 8 --output_dir <folder>`",
        "",
    ]
    path = run / "summary.md"
    write_bytes_atomic(path, "\n".join(lines))
    return path


if __name__ == "__main__":
    try:
        main(parse_args())
    except QuickstartError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted: rerun the same command to continue (finished stages are skipped)")
