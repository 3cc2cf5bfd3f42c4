"""The quickstart's sizes: one ``Budget`` per named budget (smoke, 20min, 60min), the command line's
overrides, and the time each stage is expected to take on the 2-core development machine."""

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
}

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
}

# Throughput measured on the 2-core development machine (docs/quickstart.md), for the time estimates printed
# before each stage: units per second and a fixed start-up cost in seconds.
RATES = {
    "ppo": (55.0, 20.0),  # agent steps/s while learning, 2 games
    "generate": (250.0, 15.0),  # recorded frames/s, 2 workers
    "idm": (2.2, 15.0),  # optimisation steps/s at batch 64 (a fresh clone, idle: 300 steps in 151 s)
    "vae": (2.5, 15.0),  # optimisation steps/s at batch 16
    "latents": (280.0, 10.0),  # frames/s
    "world": (1.35, 15.0),  # optimisation steps/s at batch 32, fp32 (x BF16_SPEEDUP in bf16; idle: 1,250 in 12.7 min)
    "distill": (1.0, 20.0),  # optimisation steps/s at batch 16 (student, fake score, teacher with CFG)
    "evaluate": (10.0, 15.0),  # generated frames/s (twice over with the carry-over)
    "rollouts": (10.0, 15.0),  # generated frames/s
}
BF16_SPEEDUP = 1.25  # training samples/s of bf16 autocast over fp32 where the CPU has bf16 instructions


def resolve_budget(name: str, overrides: dict[str, Any]) -> Budget:
    """Budget ``name`` with ``overrides`` (field -> value, None = the budget's), its world-model precision resolved
    (``auto`` -> ``bf16`` or ``no`` on this machine) and the step count of that precision in ``wm_steps``."""
    given = {item.name: overrides[item.name] for item in fields(Budget) if overrides.get(item.name) is not None}
    budget = replace(BUDGETS[name], **given)
    precision = world_precision() if budget.wm_precision == "auto" else budget.wm_precision
    steps = budget.wm_steps_bf16 if precision == "bf16" and "wm_steps" not in given else budget.wm_steps
    return replace(budget, wm_precision=precision, wm_steps=steps, wm_steps_bf16=steps)


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
    """Seconds the stage is expected to take at RATES."""
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
    rate, start_up = RATES[stage]
    if stage in ("world", "distill") and budget.wm_precision == "bf16":
        rate *= BF16_SPEEDUP
    runs = 2 if stage == "evaluate" and budget.carry_detail else 1  # the model's own frames, then the carry-over
    return runs * (start_up + units / rate)
