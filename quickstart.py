"""The whole GameNGen pipeline on a laptop CPU in one command: agent, data, autoencoder, world model,
evaluation and rollouts, with results to look at.

    python quickstart.py                          # the 20-minute budget on 2 CPU cores -> runs/quickstart
    python quickstart.py --smoke                  # the smallest sizes, a few minutes (what CI runs)
    python quickstart.py --budget 60min --output_dir runs/hour
    python quickstart.py --budget gpu             # one GPU and 16 cores, within 9 minutes -> runs/gpu (docs/gpu.md)

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

Evaluation, rollouts and the play command show the model's own frames. ``--carry_detail TAU`` opts in to the
engine's detail carry-over, a post-process that pastes texture from the newest real frame into the generated
frames: the evaluation then measures it too (eval/carry_detail/, after the model's own numbers in the summary),
and the rollouts and the play command use it.

A rerun with the same options skips the stages already finished; a stage that was interrupted is run
again (its partial output is moved aside, never deleted; the trainers resume from their last
checkpoint). ``summary.md`` in the run folder holds the time of each stage, the metrics table and
the gifs; the last lines printed say how to play the model live. The stages' commands, the run folder's
state and the summary are in ``gamengen/quickstart/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from gamengen.help_format import HelpFormatter
from gamengen.quickstart.budgets import (
    BUDGET_PRESETS,
    BUDGETS,
    FIELD_HELP,
    PRECISIONS,
    Budget,
    estimate,
    resolve_budget,
    stage_threads,
)
from gamengen.quickstart.runner import fmt_seconds, run_stage
from gamengen.quickstart.seeds import write_seeds_summary
from gamengen.quickstart.stages import STAGES, play_command, stage_commands, stage_outputs
from gamengen.quickstart.state import (
    QuickstartError,
    check_settings,
    finished,
    first_redone,
    forget_redone,
    load_state,
    save_state,
)
from gamengen.quickstart.summary import write_summary

# ----------------------------------------------------------------------------------------------
# Options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_run_options(parser)
    add_size_options(parser)
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Where the run goes, which budget and preset, what to redo, seeds and threads."""
    parser.add_argument(
        "--output_dir", default=None, help="run folder (default: runs/quickstart, runs/smoke for --smoke)"
    )
    parser.add_argument(
        "--budget",
        choices=sorted(BUDGETS),
        default="20min",
        help="sizes of every stage (smoke: minutes; 20min / 60min on 2 CPU cores; gpu: one GPU and 16 cores, 9 "
        "minutes, the small preset; gpu-smoke: the gpu budget's stages at the smoke sizes, on a CPU)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="the same pipeline at the smallest sizes (= --budget smoke)"
    )
    parser.add_argument(
        "--preset",
        default=None,
        choices=["tiny", "tiny-s2d", "small", "sd14"],
        help="world-model preset (default: small for the gpu budget, else tiny; sd14: the paper's, for GPUs; "
        "tiny-s2d: a lossless autoencoder, an experiment)",
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
        help="CPU threads of each stage that does not train (OMP_NUM_THREADS; the training stages take the budget's "
        "--train_threads). 1: with anything else on the cores, torch's spin-waiting threads made steps 10x slower "
        "here (docs/architecture.md#environment-facts); 0 = torch's default (one per core)",
    )


def add_size_options(parser: argparse.ArgumentParser) -> None:
    """One option per Budget field, overriding the budget's value."""
    sizes = parser.add_argument_group("sizes (override the budget's)")
    for item in fields(Budget):
        if isinstance(item.default, bool):  # --name / --no-name
            sizes.add_argument(
                f"--{item.name}", action=argparse.BooleanOptionalAction, default=None, help=FIELD_HELP.get(item.name)
            )
            continue
        sizes.add_argument(
            f"--{item.name}",
            type=type(item.default) if not isinstance(item.default, str) else str,
            default=None,
            choices=PRECISIONS if item.name == "wm_precision" else None,
            help=FIELD_HELP.get(item.name),
        )


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Resolve --smoke and the default run folder; refuse values out of range by name."""
    if args.smoke:
        args.budget = "smoke"
    if args.preset is None:
        args.preset = BUDGET_PRESETS.get(args.budget, "tiny")
    if args.output_dir is None:
        args.output_dir = "runs/quickstart" if args.budget in ("20min", "60min") else f"runs/{args.budget}"
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.carry_detail is not None and not args.carry_detail >= 0:
        parser.error("--carry_detail must be >= 0 (a fading scale in 0-255 levels; 0 = off)")
    if args.ema_decay is not None and not 0.0 <= args.ema_decay < 1.0:
        parser.error("--ema_decay must be in [0, 1) (0 = no average: the world model's last weights)")
    if args.distill_regression is not None and not args.distill_regression >= 0:
        parser.error("--distill_regression must be >= 0 (0 = distribution matching alone, as the paper)")


def budget_from_args(args: argparse.Namespace) -> Budget:
    """The budget's sizes with the command line's overrides, its world-model precision resolved (``auto`` ->
    ``bf16`` or ``no`` on this machine) and the step count of that precision in ``wm_steps``."""
    return resolve_budget(args.budget, {item.name: getattr(args, item.name) for item in fields(Budget)})


# ----------------------------------------------------------------------------------------------
# The run


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.seeds > 1:
        return run_seeds(args)
    run = Path(args.output_dir)
    budget = budget_from_args(args)
    check_device(args.budget, budget)
    (run / "logs").mkdir(parents=True, exist_ok=True)
    state = load_state(run)
    commands = stage_commands(run, budget, args)
    outputs = stage_outputs(run)

    # A finished stage is kept only when it ran with the same command (the same sizes); --redo X
    # redoes X and every stage after it. Redoing ppo or generate redoes the whole dataset.
    first_redo = first_redone(args.redo)
    check_settings(run, state, commands, first_redo)
    forget_redone(run, state, outputs, first_redo)

    left = sum(estimate(s, budget, args.preset) for s in STAGES if s not in state["stages"])
    print(
        f"[quickstart] {args.budget} budget, preset {args.preset}, run folder {run}: about "
        f"{fmt_seconds(left)} of work left"
    )
    state["budget"], state["budget_name"], state["preset"] = asdict(budget), args.budget, args.preset
    began = time.perf_counter()
    for number, stage in enumerate(STAGES, 1):
        if finished(state, outputs, stage):
            seconds = fmt_seconds(state["stages"][stage]["seconds"])
            print(f"[quickstart] {number}/{len(STAGES)} {stage}: done earlier ({seconds}), skipped")
            continue
        threads = stage_threads(stage, budget, args.threads)
        run_stage(run, stage, commands[stage], outputs, state, estimate(stage, budget, args.preset), threads)

    state["seconds_this_run"] = time.perf_counter() - began
    save_state(run, state)
    summary = write_summary(run, state, budget)
    print_results(run, state, budget, summary)
    return state


def check_device(name: str, budget: Budget) -> None:
    """Refuse a budget sized for a GPU where torch sees none (its stages would take hours on a CPU)."""
    import torch

    if budget.device == "gpu" and not torch.cuda.is_available():
        raise QuickstartError(
            f"the {name} budget is sized for one CUDA GPU and torch sees none here: on a CPU its stages would take "
            "hours. Use --budget 20min on a CPU, or --budget gpu-smoke for the gpu budget's stages at the smoke sizes"
        )


def print_results(run: Path, state: dict[str, Any], budget: Budget, summary: Path) -> None:
    """Where the results are, and the command that plays the model live."""
    total = sum(s["seconds"] for s in state["stages"].values())
    print(f"\n[quickstart] all stages done; total {fmt_seconds(total)}. Results in {run}:")
    print(f"  {summary}  (stage times, metrics, gifs)")
    print(f"  {run / 'eval' / 'report.md'}, drift.png, examples.png")
    print(f"  {run / 'rollouts'}/*/*.gif")
    print("Play the model live:")
    print(f"  {play_command(run, budget)}")


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


if __name__ == "__main__":
    try:
        main(parse_args())
    except QuickstartError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted: rerun the same command to continue (finished stages are skipped)")
