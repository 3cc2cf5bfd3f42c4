"""Benchmark: a 200-step ``WorldModelEnv`` episode against the engine's own frames/s (docs/world_model_env.md#speed).

The model is ``--model_folder``, or a random-init tiny one built with the quickstart's settings (the tiny preset's
training defaults: CFG 1.0, so one UNet branch per DDIM step; residual, action positions and action class; speed
does not depend on the weights). The episodes start from ``--dataset_name``'s recorded 64x48 frames. CPU, fp32,
1 torch thread. Each round measures, one after the other (so that other work on the machine hits them alike):

* ``engine``: ``GameEngine.step`` in a loop for 200 frames from the same start, wall clock;
* ``env``: a 200-step ``WorldModelEnv`` episode (``env.step`` with random actions), wall clock;
* ``agent_view``: the same episode through ``AgentObservation`` (each frame resized to the ViZDoomPPO agent's
  160x120 observation, its action history), wall clock.

The episodes also sum the engine's own timings of their steps: wall clock over that is the environment's overhead
alone, which the noise of a shared machine (the three runs above differ by up to 40% at a load average of 9 on 2
cores) cannot hide.

    python benchmarks/bench_world_model_env.py --dataset_name runs/quickstart/dataset [--model_folder M]

Results: benchmarks/results/world_model_env.json and a table on stdout, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gamengen.agent_observation import AgentObservation  # noqa: E402
from gamengen.engine import GameEngine  # noqa: E402
from gamengen.episodes import open_dataset  # noqa: E402
from gamengen.play import doom_env_module  # noqa: E402
from gamengen.world_model_env import WorldModelEnv  # noqa: E402

STEPS = 200


def quickstart_like_checkpoint(folder: Path, action_names: list[str]) -> Path:
    """A random-init tiny world model with the settings the quickstart trains (WORLD_MODEL_TRAINING_DEFAULTS)."""
    from gamengen.checkpoint import save_world_model
    from gamengen.config import WORLD_MODEL_TRAINING_DEFAULTS, get_world_model_config
    from gamengen.model import build_world_model
    from gamengen.vae import build_vae

    torch.manual_seed(0)
    defaults = WORLD_MODEL_TRAINING_DEFAULTS["tiny"]
    flags = {key: defaults[key] for key in ("guidance_scale", "residual", "action_positions", "action_class")}
    config = get_world_model_config("tiny", action_names, **flags)
    return save_world_model(folder, build_world_model(config), build_vae(config.model), config)


def engine_round(env: WorldModelEnv, rng: np.random.Generator) -> dict[str, float]:
    env.reset(seed=0)  # the engine's context: the same start the episodes use
    engine: GameEngine = env.engine
    actions = rng.integers(env.action_space.n, size=STEPS).tolist()
    began = time.perf_counter()
    for action in actions:
        engine.step(action)
    seconds = time.perf_counter() - began
    return {"fps": STEPS / seconds, "engine_own_fps": engine.timing_summary(skip_first=0)["fps"]}


def episode_round(env, rng: np.random.Generator) -> dict[str, float]:
    env.reset(seed=0)
    inner: WorldModelEnv = env.unwrapped
    engine_ms, steps, truncated = 0.0, 0, False
    began = time.perf_counter()
    while not truncated:
        _, _, _, truncated, _ = env.step(int(rng.integers(inner.action_space.n)))
        engine_ms += inner.last_step_ms
        steps += 1
    seconds = time.perf_counter() - began
    return {"fps": steps / seconds, "engine_own_fps": 1000 * steps / engine_ms, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_name", required=True, help="recorded 64x48 episodes to start from")
    parser.add_argument(
        "--model_folder", default=None, help="a checkpoint (default: a random-init quickstart-like one)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three measurements")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "world_model_env.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = open_dataset(args.dataset_name)
    envs = doom_env_module()
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model_folder or quickstart_like_checkpoint(Path(scratch) / "wm", dataset.action_names)
        env = WorldModelEnv(model, dataset, max_episode_steps=STEPS)
        agent_view = AgentObservation(env, envs.observation_space(envs.DoomConfig()))
        env.reset(seed=0)
        for action in range(5):  # warm-up
            env.step(action)
        rng = np.random.default_rng(0)
        rounds: list[dict[str, Any]] = []
        for index in range(args.rounds):
            load = os.getloadavg()[0]
            measured = {
                "engine": engine_round(env, rng),
                "env": episode_round(env, rng),
                "agent_view": episode_round(agent_view, rng),
            }
            measured.update(round=index, load_before=round(load, 2), load_after=round(os.getloadavg()[0], 2))
            rounds.append(measured)
            print(
                f"round {index}: engine {measured['engine']['fps']:.2f} FPS, env {measured['env']['fps']:.2f} "
                f"(engine inside {measured['env']['engine_own_fps']:.2f}), agent view "
                f"{measured['agent_view']['fps']:.2f} FPS (load {measured['load_before']} -> {measured['load_after']})",
                flush=True,
            )
    summary = {name: float(np.median([r[name]["fps"] for r in rounds])) for name in ("engine", "env", "agent_view")}
    summary["env_over_engine"] = summary["env"] / summary["engine"]
    summary["agent_view_over_engine"] = summary["agent_view"] / summary["engine"]
    # The same episode's wall clock over the engine's own time for its steps: the environment's overhead alone, free
    # of the run-to-run noise of a shared machine.
    for name in ("env", "agent_view"):
        summary[f"{name}_over_engine_inside"] = float(
            np.median([r[name]["fps"] / r[name]["engine_own_fps"] for r in rounds])
        )
    result = {
        "model": args.model_folder
        or "random-init tiny, the quickstart's settings (CFG 1.0, residual, action positions, action class)",
        "engine": env.engine.describe(),
        "steps": STEPS,
        "rounds": rounds,
        "median": summary,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__, "threads": 1},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print("| measurement | frames/s (median of rounds) | of the engine's run | of the engine's own time inside it |")
    print("|---|---|---|---|")
    for name in ("engine", "env", "agent_view"):
        inside = summary.get(f"{name}_over_engine_inside")
        print(
            f"| {name} | {summary[name]:.2f} | {summary[name] / summary['engine']:.1%} | "
            f"{'–' if inside is None else f'{inside:.1%}'} |"
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
