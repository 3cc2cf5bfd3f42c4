"""The quickstart's sizes: one ``Budget`` per named budget (smoke, 20min, 60min on a 2-core CPU; gpu on one GPU
and 16 cores, and gpu-smoke, its stages at the smoke sizes on a CPU), the command line's overrides, and the time each
stage is expected to take."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


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
    # The 1-step student (distill.py): steps of distribution matching at this batch (the paper: 1,000 of 128).
    distill_steps: int = 200
    distill_batch_size: int = 16
    # distill.py --regression_weight: the student's frame also pulled toward the teacher's own 4-step frame from the
    # same noise. Without it the quickstart's student fell below copy-last and its rollouts ran away; with 10 it
    # keeps its teacher's PSNR and rollouts at 3x the frames/s (docs/research_log.md#the-regression-term). 0: the paper
    distill_regression: float = 10.0
    # Off: evaluation, rollouts and play show the model's own frames. A scale (--carry_detail 8) opts in to the
    # engine's post-process that pastes the detail the VAE loses from the newest real frame into the generated ones
    # (docs/engine.md#detail-carry-over); the evaluation then measures it apart, after the model's own numbers.
    carry_detail: float = 0.0
    eval_windows: int = 128
    eval_episodes: int = 8
    eval_horizon: int = 64
    rollout_frames: int = 48
    script: str = "TURN_LEFT*12,FORWARD*12,TURN_RIGHT*12,FORWARD_ATTACK*12"
    wm_args: str = ""  # more train_text_to_image.py options, e.g. "--snr_gamma 5"
    # Machines with more: the games PPO plays at once, the generator's worker processes, the DataLoader workers of the
    # vae, latents, world and distill stages (0: read in the stage's own process), the training time of the stages that
    # train for a fixed time on a GPU (0: their steps alone decide), the evaluation's batch, and an uncompiled engine
    # (on a GPU the engine compiles with CUDA graphs, a warm-up per process that a short run cannot afford).
    agent_envs: int = 2
    workers: int = 2
    loader_workers: int = 0
    vae_seconds: float = 0.0
    wm_seconds: float = 0.0
    distill_seconds: float = 0.0
    vae_precision: str = ""  # finetune_autoencoder.py --mixed_precision ("": its default; auto: as the world model's)
    eval_batch_size: int = 0  # evaluate.py --batch_size (0: its default)
    eager_engine: bool = False
    # torch CPU threads of the training stages (idm, vae, world, distill): on an idle 2-core machine 2 threads train
    # 1.3-1.6x faster than 1 (docs/research_log.md#the-20-minute-budget-with-distillation); with other work on the
    # cores pass 1 (torch's spin-waiting threads then made steps up to 10x slower). 0: the scripts' own default.
    train_threads: int = 2
    device: str = "cpu"  # the machine the budget is sized for: its stage time estimates


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
        distill_steps=4,
        distill_batch_size=4,
        eval_windows=8,
        eval_episodes=2,
        eval_horizon=8,
        rollout_frames=8,
        script="TURN_LEFT*4,FORWARD*4",
    ),
    "20min": Budget(),
    "60min": Budget(
        ppo_steps=8192,
        episodes=96,
        idm_steps=600,
        vae_steps=2400,
        wm_steps=4000,
        wm_steps_bf16=5000,
        distill_steps=600,
        eval_windows=256,
    ),
    # One GPU and 16 cores (benchmarks/gpu_pipeline.sh), everything within 9 minutes: DOOM recorded on the cores by
    # 12 games and 14 worker processes, the small preset (128x96) trained for fixed times on the GPU (the steps are
    # upper bounds), the world model the longest. Sized from FLOP counts and the H200's measured rates
    # (docs/gpu.md#the-gpu-quickstart); not measured on a GPU yet.
    "gpu": Budget(
        episode_steps=300,
        ppo_steps=12288,
        episodes=98,
        idm_steps=400,
        vae_steps=100_000,
        vae_batch_size=16,
        wm_steps=100_000,
        wm_steps_bf16=100_000,
        wm_batch_size=128,
        ema_decay=0.999,
        context_length=8,
        distill_steps=100_000,
        distill_batch_size=32,
        eval_windows=192,
        eval_horizon=64,
        rollout_frames=64,
        wm_args="--lr_scheduler constant_with_warmup --lr_warmup_steps 100",
        agent_envs=12,
        workers=14,
        loader_workers=6,
        vae_seconds=45,
        wm_seconds=180,
        distill_seconds=20,
        vae_precision="auto",
        eval_batch_size=64,
        eager_engine=True,
        train_threads=0,  # on a GPU the trainers take torch's threads
        device="gpu",
    ),
}
# The gpu budget's stages and options (fixed times, workers, the uncompiled engine) at the smoke sizes with the tiny
# preset: its dry run on a CPU (benchmarks/gpu_pipeline.sh --dry_run; what CI runs). The times stop the trainers.
BUDGETS["gpu-smoke"] = replace(
    BUDGETS["smoke"],
    ppo_steps=192,  # 4 whole episodes of 24 steps per game: no short unfinished one to hold out
    vae_steps=100_000,
    wm_steps=100_000,
    wm_steps_bf16=100_000,
    distill_steps=100_000,
    agent_envs=2,
    workers=2,
    loader_workers=1,
    vae_seconds=3,
    wm_seconds=4,
    distill_seconds=3,
    eval_batch_size=8,
    eager_engine=True,
    train_threads=0,
)
# The world-model preset of a budget when --preset is not given.
BUDGET_PRESETS = {"gpu": "small"}

PRECISIONS = ("auto", "bf16", "no")
# The help of the fields whose name does not say enough (the others' comments above say it).
FIELD_HELP = {
    "wm_steps": "world-model steps (in fp32; given, it sets the steps of either precision)",
    "wm_steps_bf16": "world-model steps when it trains in bf16 (the same wall time as --wm_steps in fp32)",
    "wm_precision": "world-model training precision; auto: bf16 where the CPU has bf16 instructions or on a GPU "
    "that supports it, else no (emulated bf16 ran 13x slower than fp32)",
    "carry_detail": "opt in to the engine's detail carry-over, a post-process that pastes texture from the newest "
    "real frame into generated frames (--carry_detail TAU, docs/engine.md#detail-carry-over): the evaluation then "
    "measures it after the model's own frames, and the rollouts and the play command use it. 0 = off: the model's "
    "own frames",
    "ema_decay": "the world model saved is an exponential moving average of its weights with this decay "
    "(train_text_to_image.py --ema_decay); 0 = its last weights",
    "vae_seconds": "train the autoencoder this many seconds (--max_train_seconds; vae_steps is then an upper bound); "
    "0 = vae_steps decide",
    "wm_seconds": "train the world model this many seconds (wm_steps is then an upper bound); 0 = wm_steps decide",
    "distill_seconds": "distil the 1-step student this many seconds; 0 = distill_steps decide",
    "distill_regression": "distill.py --regression_weight: the student's frame pulled toward the teacher's own frame "
    "from the same noise; 0 = off (the paper: distribution matching alone)",
    "eager_engine": "evaluate and roll out with an uncompiled engine (--eager: no CUDA-graph warm-up per process)",
    "agent_envs": "games PPO plays at once, each in its own process",
    "workers": "worker processes of the generate stage",
    "loader_workers": "DataLoader worker processes of the vae, latents, world and distill stages (0: none)",
    "vae_precision": "finetune_autoencoder.py --mixed_precision (empty: its default; auto: the world model's)",
    "eval_batch_size": "evaluate.py --batch_size: windows generated together (0: its default)",
    "train_threads": "torch CPU threads of the training stages (idm, vae, world, distill); 1 when other work shares "
    "the cores; 0: the scripts' defaults",
    "device": "the machine the budget is sized for (cpu or gpu): the stages' time estimates",
}

# Throughput measured on the 2-core development machine (docs/quickstart.md), for the time estimates printed
# before each stage: units per second and a fixed start-up cost in seconds. The training stages at 2 threads (the
# budgets' train_threads): the 1-thread rates of a fresh idle clone times the speed-up 2 threads measured on the
# same data (idm 1.56x, vae 1.56x, world 1.48x, distill 1.29x).
RATES = {
    "ppo": (55.0, 20.0),  # agent steps/s while learning, 2 games
    "generate": (250.0, 15.0),  # recorded frames/s, 2 workers
    "idm": (3.4, 15.0),  # optimisation steps/s at batch 64 (1 thread, a fresh idle clone: 300 steps in 151 s)
    "vae": (3.9, 15.0),  # optimisation steps/s at batch 16
    "latents": (280.0, 10.0),  # frames/s
    "world": (2.0, 15.0),  # steps/s at batch 32, fp32 (x BF16_SPEEDUP in bf16; 1 thread: 1,250 in 12.7 min)
    # optimisation steps/s at batch 16 (student, fake score, the teacher's score and its 4 steps for the regression
    # term), fp32: 200 steps of 16 in 134 s in bf16 on 2 threads (87 s without the regression term)
    "distill": (1.2, 20.0),
    "evaluate": (10.0, 15.0),  # generated frames/s (twice over with the carry-over)
    "rollouts": (10.0, 15.0),  # generated frames/s
}
BF16_SPEEDUP = 1.25  # training samples/s of bf16 autocast over fp32 where the CPU has bf16 instructions
# The gpu budget's estimates on one H200 and 16 cores (not measured: from the CPU rates with 7 times the agent's
# processes, and the small preset's FLOPs at ~15% of the H200's measured bf16 rate); the same units as RATES.
GPU_RATES = {
    "ppo": (600.0, 20.0),
    "generate": (1800.0, 15.0),
    "idm": (40.0, 15.0),
    "vae": (40.0, 20.0),
    "latents": (3000.0, 15.0),
    "world": (90.0, 25.0),
    "distill": (10.0, 25.0),
    "evaluate": (150.0, 20.0),
    "rollouts": (30.0, 20.0),
}
TIMED = {"vae": "vae_seconds", "world": "wm_seconds", "distill": "distill_seconds"}  # the stages a budget can time
TRAINING_STAGES = ("idm", "vae", "world", "distill")


def stage_threads(stage: str, budget: Budget, threads: int | None) -> int | None:
    """OMP_NUM_THREADS of a stage: the budget's ``train_threads`` for the training stages, else ``--threads``."""
    return budget.train_threads if stage in TRAINING_STAGES and budget.train_threads else threads


def resolve_budget(name: str, overrides: dict[str, Any]) -> Budget:
    """Budget ``name`` with ``overrides`` (field -> value, None = the budget's), its world-model precision resolved
    (``auto`` -> ``bf16`` or ``no`` on this machine) and the step count of that precision in ``wm_steps``."""
    given = {item.name: overrides[item.name] for item in fields(Budget) if overrides.get(item.name) is not None}
    budget = replace(BUDGETS[name], **given)
    precision = world_precision() if budget.wm_precision == "auto" else budget.wm_precision
    steps = budget.wm_steps_bf16 if precision == "bf16" and "wm_steps" not in given else budget.wm_steps
    vae_precision = precision if budget.vae_precision == "auto" else budget.vae_precision
    return replace(budget, wm_precision=precision, wm_steps=steps, wm_steps_bf16=steps, vae_precision=vae_precision)


def world_precision() -> str:
    """bf16 where it is fast: a GPU that supports it, or a CPU with bf16 instructions (emulated bf16 ran the
    training step 13x slower than fp32; gamengen.devices.cpu_computes_bf16)."""
    import torch

    from gamengen.devices import cpu_computes_bf16

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_computes_bf16() else "no"


def frame_size(preset: str) -> str:
    """The preset's frames as WIDTHxHEIGHT (the agent records at this size)."""
    from gamengen.config import get_config

    model = get_config(preset)
    return f"{model.frame_width}x{model.frame_height}"


def lossless(preset: str) -> bool:
    """Whether the preset's autoencoder is the lossless one (nothing to train)."""
    from gamengen.config import get_config
    from gamengen.vae import is_lossless

    return is_lossless(get_config(preset))


def estimate(stage: str, budget: Budget, preset: str = "tiny") -> float:
    """Seconds the stage is expected to take at RATES (GPU_RATES for a budget sized for a GPU)."""
    if stage == "vae" and lossless(preset):
        return RATES["vae"][1]  # nothing to train: start-up and the scaling factor
    units = {
        "ppo": budget.ppo_steps,
        "generate": budget.episodes * budget.episode_steps,
        "idm": budget.idm_steps,
        "vae": budget.vae_steps * budget.vae_batch_size / 16,
        "latents": budget.episodes * budget.episode_steps + budget.ppo_steps,
        "world": budget.wm_steps * budget.wm_batch_size / 32,
        "distill": budget.distill_steps * budget.distill_batch_size / 16,
        # the world model's frames, then the student's (a quarter of the UNet calls each)
        "evaluate": 1.25 * (2 * budget.eval_windows + budget.eval_episodes * budget.eval_horizon + 16),
        "rollouts": 2.5 * budget.rollout_frames,
    }[stage]
    rate, start_up = (GPU_RATES if budget.device == "gpu" else RATES)[stage]
    if stage in ("world", "distill") and budget.wm_precision == "bf16" and budget.device == "cpu":
        rate *= BF16_SPEEDUP
    work = units / rate
    limit = getattr(budget, TIMED[stage]) if stage in TIMED else 0.0
    if limit:  # a fixed training time: that, unless the steps end first
        work = min(work, limit)
    runs = 2 if stage == "evaluate" and budget.carry_detail else 1  # the model's own frames, then the carry-over
    return runs * (start_up + work)
