"""Benchmark: how fast the agent side turns DOOM into training data.

Measures (on this machine, written to benchmarks/results/generation.json and printed as a table):
  1. raw ViZDoom stepping of E1M1 (320x240 render, frame skip 4, no processing);
  2. DoomEnv steps/s (adds game variables, the shaped reward, the 160x120 + automap observation);
  3. recorded frames/s (after start-up) of load_model_generate_dataset.py with 1 and with 2 workers, driven by a
     policy of the trained size (the paper's PPO network, random weights) and PNG-encoded 320x240
     frames: the numbers a user gets. Goal: 2 workers >= 1.7x one worker on a 2-core machine.

    python benchmarks/bench_generation.py [--steps_per_worker 800]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "ViZDoomPPO"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.envs import ACTIONS, DoomConfig, DoomEnv, action_buttons  # noqa: E402


def raw_vizdoom_steps_per_second(steps: int) -> float:
    env = DoomEnv(DoomConfig(use_automap=False))
    env.reset(seed=0)
    game, rng = env.game, np.random.default_rng(0)
    buttons = [action_buttons(i) for i in range(len(ACTIONS))]
    try:
        started = time.perf_counter()
        for _ in range(steps):
            game.make_action(buttons[rng.integers(len(buttons))], 4)
            if game.is_episode_finished():
                game.new_episode()
            game.get_state()
        return steps / (time.perf_counter() - started)
    finally:
        env.close()


def env_steps_per_second(steps: int) -> float:
    env = DoomEnv(DoomConfig())
    env.reset(seed=0)
    try:
        started = time.perf_counter()
        for _ in range(steps):
            *_, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
        return steps / (time.perf_counter() - started)
    finally:
        env.close()


def trained_size_policy(path: Path) -> Path:
    """The paper-sized PPO network (as train_ppo_parallel.py builds it), random weights."""
    import gymnasium as gym
    from stable_baselines3 import PPO

    from common.envs import observation_space
    from common.models import DoomFeatureExtractor

    spaces_of_the_game = observation_space(DoomConfig())

    class Spaces(gym.Env):
        observation_space = spaces_of_the_game
        action_space = gym.spaces.Discrete(len(ACTIONS))

    PPO(
        "MultiInputPolicy",
        Spaces(),
        n_steps=64,
        batch_size=64,
        policy_kwargs={"features_extractor_class": DoomFeatureExtractor},
        device="cpu",
    ).save(path)
    return path


def recorded_frames_per_second(model: Path, workers: int, steps_per_worker: int, out_dir: Path) -> float:
    episodes_per_worker = 2
    command = [
        sys.executable,
        str(REPO / "ViZDoomPPO/load_model_generate_dataset.py"),
        "--model_path",
        str(model),
        "--out_dir",
        str(out_dir),
    ]
    command += ["--episodes", str(workers * episodes_per_worker), "--num_workers", str(workers)]
    command += ["--max_steps_per_episode", str(steps_per_worker // episodes_per_worker), "--episode_timeout", "1000000"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    match = re.search(r"([\d.]+) frames/s after start-up", result.stdout)
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps_per_worker", type=int, default=800, help="recorded steps per worker process")
    parser.add_argument("--raw_steps", type=int, default=2000, help="steps for the raw and env measurements")
    parser.add_argument("--output", default=str(REPO / "benchmarks/results/generation.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    results = {
        "machine": (
            f"{platform.machine()}, {torch.get_num_threads()} torch thread, {__import__('os').cpu_count()} cores"
        ),
        "date": time.strftime("%Y-%m-%d"),
    }
    results["raw_vizdoom_steps_per_s"] = raw_vizdoom_steps_per_second(args.raw_steps)
    results["doom_env_steps_per_s"] = env_steps_per_second(args.raw_steps)
    with tempfile.TemporaryDirectory() as tmp:
        model = trained_size_policy(Path(tmp) / "policy.zip")
        for workers in (1, 2):
            results[f"recorded_frames_per_s_{workers}_workers"] = recorded_frames_per_second(
                model, workers, args.steps_per_worker, Path(tmp) / f"ds{workers}"
            )
    results["speedup_2_vs_1_workers"] = (
        results["recorded_frames_per_s_2_workers"] / results["recorded_frames_per_s_1_workers"]
    )

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    print("| measurement | value |\n|---|---|")
    for key, value in results.items():
        print(f"| {key} | {value:.1f} |" if isinstance(value, float) else f"| {key} | {value} |")


if __name__ == "__main__":
    main()
