"""Train the PPO agent of GameNGen's data phase on N parallel ViZDoom games, recording every episode.

GameNGen section 4.1 / appendix A.5: a PPO agent (CNN over the 160x120 frame + automap, and the
last 32 actions) plays DOOM with a shaped reward; the world model is trained on the episodes the
agent plays WHILE it learns, so ``--record_dir DIR`` writes every training episode of every game as
parquet shards (docs/data.md#the-dataset-format). The defaults are the paper's hyperparameters: 8 games, rollout
buffer 512 per game, batch 64, 10 epochs, lr 1e-4, gamma 0.99, entropy 0.1 (50M env steps).

Example (a smoke run on 2 games that records its episodes):

    python ViZDoomPPO/train_ppo_parallel.py --total_timesteps 2048 --n_envs 2 --record_dir /tmp/rec

Outputs in ``--log_dir`` (default ViZDoomPPO/logs): ``models/<run>/best_model.zip`` (best rolling
mean episode reward), ``models/<run>/final_model.zip``, ``models/<run>/checkpoints/*.zip``,
``models/<run>/env_config.json`` (the game the agent was trained on) and ``tensorboard/<run>``.
Resume with ``--resume latest --run_name <run>`` or ``--resume path/to/checkpoint.zip``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from tqdm import tqdm

from common.envs import (
    DoomConfig,
    DoomEnv,
    RecordEpisodes,
    ScenarioError,
    add_env_args,
    config_from_args,
    dataset_metadata,
    kill_games_of_run,
    tag_games_with_run,
)
from common.models import ENV_CONFIG_FILE, AgentLoadError, DoomFeatureExtractor, load_agent
from common.utils import DatasetError, HelpFormatter, ShardWriter, check_output_dir, new_run_id


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument(
        "--total_timesteps", type=int, default=50_000_000, help="total agent steps over all games (paper: 50M)"
    )
    parser.add_argument("--n_envs", type=int, default=8, help="parallel games, each in its own process (paper: 8)")
    parser.add_argument("--n_steps", type=int, default=512, help="rollout buffer per game between updates (paper: 512)")
    parser.add_argument("--batch_size", type=int, default=64, help="minibatch size (paper: 64)")
    parser.add_argument("--n_epochs", type=int, default=10, help="epochs per update (paper: 10)")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    parser.add_argument("--gamma", type=float, default=0.99, help="discount (paper: 0.99)")
    parser.add_argument("--ent_coef", type=float, default=0.1, help="entropy bonus (paper: 0.1)")
    parser.add_argument(
        "--reward_scale",
        type=float,
        default=0.01,
        help="multiply rewards by this for the optimiser only (the shaped reward is in the hundreds); recorded and "
        "logged rewards are unscaled",
    )
    parser.add_argument("--run_name", default=None, help="name of this run (default: a new time-stamped id)")
    parser.add_argument(
        "--log_dir", default=str(Path(__file__).parent / "logs"), help="where models/ and tensorboard/ go"
    )
    parser.add_argument(
        "--checkpoint_freq", type=int, default=100_000, help="save a checkpoint every this many total agent steps"
    )
    parser.add_argument(
        "--best_window", type=int, default=20, help="episodes in the rolling mean that decides the best model"
    )
    parser.add_argument(
        "--resume", default=None, help="checkpoint .zip to continue from, or 'latest' (newest checkpoint of --run_name)"
    )
    parser.add_argument(
        "--record_dir", default=None, help="record every training episode of every game to parquet shards here"
    )
    parser.add_argument("--png_level", type=int, default=1, help="PNG compression level of recorded frames")
    parser.add_argument("--seed", type=int, default=0, help="random seed (game i plays with seed + i)")
    parser.add_argument("--device", default="auto", help="torch device for the policy (auto, cpu, cuda)")
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=1,
        help="torch CPU threads (docs/architecture.md#environment-facts: 1 is fastest beside busy game processes)",
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_env_args(parser)
    args = parser.parse_args(argv)
    for name in ("total_timesteps", "n_envs", "n_steps", "batch_size", "n_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.resume == "latest" and not args.run_name:
        parser.error("--resume latest needs --run_name (the run whose newest checkpoint to continue)")
    return args


class ScaleReward(gym.RewardWrapper):
    """Scales the reward the optimiser sees; Monitor (below it) and the recorder keep the raw one."""

    def __init__(self, env: gym.Env, scale: float) -> None:
        super().__init__(env)
        self.scale = scale

    def reward(self, reward: float) -> float:
        return reward * self.scale


def make_env(
    rank: int, config: DoomConfig, seed: int, reward_scale: float, record: dict | None
) -> Callable[[], gym.Env]:
    """A picklable factory for game ``rank``; it runs inside the SubprocVecEnv worker process."""

    def init() -> gym.Env:
        torch.set_num_threads(1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the trainer, which then closes us
        env: gym.Env = DoomEnv(config)
        if record is not None:
            writer = ShardWriter(
                record["dir"], record["metadata"], record["run_id"], rank, png_level=record["png_level"]
            )
            env = RecordEpisodes(env, writer)
        env = Monitor(env)
        env = ScaleReward(env, reward_scale)
        env.reset(seed=seed + rank)
        return env

    return init


class BestModelCallback(BaseCallback):
    """Saves ``best_model.zip`` whenever the rolling mean of the last episodes' (unscaled) reward improves."""

    def __init__(self, path: Path, window: int) -> None:
        super().__init__()
        self.path = path
        self.window = window
        self.best = -np.inf
        self.seen = 0

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            if "episode" in info:
                self.seen += 1
        episodes = list(self.model.ep_info_buffer)[-self.window :]
        if episodes and self.seen and self.n_calls % 16 == 0:
            mean = float(np.mean([e["r"] for e in episodes]))
            if mean > self.best:
                self.best = mean
                self.model.save(self.path)
                self.logger.record("best/mean_episode_reward", mean)
        return True


class ProgressCallback(BaseCallback):
    """A tqdm bar over agent steps with the rolling episode reward and steps/s."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total
        self.bar: tqdm | None = None

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.total, initial=self.model.num_timesteps, unit="step", desc="PPO")

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        if self.n_calls % 64 == 0 and self.model.ep_info_buffer:
            self.bar.set_postfix(
                ep_reward=f"{np.mean([e['r'] for e in self.model.ep_info_buffer]):.0f}",
                episodes=len(self.model.ep_info_buffer),
            )
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


def close_games(vec_env: VecEnv, games_tag: str) -> None:
    """Each game process writes its recorded episodes and stops its game; a crashed one is killed."""
    try:
        vec_env.close()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        for process in getattr(vec_env, "processes", []):
            if process.is_alive():
                process.terminate()
    kill_games_of_run(games_tag)  # also the games of env processes that crashed


def latest_checkpoint(folder: Path) -> Path:
    # CheckpointCallback names them <prefix>_<steps>_steps.zip
    checkpoints = sorted(folder.glob("*_steps.zip"), key=lambda p: int(p.stem.split("_")[-2]))
    if not checkpoints:
        raise AgentLoadError(f"--resume latest: no checkpoint in {folder}")
    return checkpoints[-1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    run_name = args.run_name or f"ppo-{new_run_id()}"
    run_dir = Path(args.log_dir) / "models" / run_name
    try:
        base = None
        if args.resume and (run_dir / ENV_CONFIG_FILE).is_file():
            base = DoomConfig.from_dict(json.loads((run_dir / ENV_CONFIG_FILE).read_text()))
        config = config_from_args(args, base)
        resume_path = None
        if args.resume:
            resume_path = latest_checkpoint(run_dir / "checkpoints") if args.resume == "latest" else Path(args.resume)
        record = None
        if args.record_dir:
            metadata = dataset_metadata(config, policy=f"ppo-training:{run_name}", seed=args.seed)
            check_output_dir(Path(args.record_dir), {**metadata, "format_version": 1, "frame_codec": "png"})
            record = {"dir": args.record_dir, "metadata": metadata, "run_id": new_run_id(), "png_level": args.png_level}
    except (ScenarioError, AgentLoadError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ENV_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
    games_tag = new_run_id()
    tag_games_with_run(games_tag)
    factories = [make_env(rank, config, args.seed, args.reward_scale, record) for rank in range(args.n_envs)]
    vec_env: VecEnv = SubprocVecEnv(factories, start_method="spawn") if args.n_envs > 1 else DummyVecEnv(factories)
    try:
        if resume_path is not None:
            load_agent(resume_path, vec_env.observation_space, vec_env.action_space.n)  # clear error on a mismatch
            model = PPO.load(
                resume_path, env=vec_env, device=args.device, tensorboard_log=str(Path(args.log_dir) / "tensorboard")
            )
            print(f"resumed from {resume_path} at step {model.num_timesteps}")
        else:
            model = PPO(
                "MultiInputPolicy",
                vec_env,
                n_steps=args.n_steps,
                batch_size=args.batch_size,
                n_epochs=args.n_epochs,
                learning_rate=args.learning_rate,
                gamma=args.gamma,
                ent_coef=args.ent_coef,
                policy_kwargs={"features_extractor_class": DoomFeatureExtractor},
                tensorboard_log=str(Path(args.log_dir) / "tensorboard"),
                seed=args.seed,
                device=args.device,
                verbose=0,
            )
        start_steps = model.num_timesteps
        remaining = args.total_timesteps - start_steps
        callbacks = [
            CheckpointCallback(
                save_freq=max(args.checkpoint_freq // args.n_envs, 1),
                save_path=str(run_dir / "checkpoints"),
                name_prefix="ppo",
            ),
            BestModelCallback(run_dir / "best_model.zip", args.best_window),
        ]
        if not args.no_progress:
            callbacks.append(ProgressCallback(args.total_timesteps))
        started = time.perf_counter()
        interrupted = False
        if remaining > 0:
            try:
                model.learn(
                    remaining,
                    callback=CallbackList(callbacks),
                    tb_log_name=run_name,
                    reset_num_timesteps=resume_path is None,
                )
            except KeyboardInterrupt:
                interrupted = True
                print("interrupted: saving the model and the recorded episodes", file=sys.stderr)
        else:
            print(
                f"nothing to do: the model is already at {model.num_timesteps} >= --total_timesteps "
                f"{args.total_timesteps}"
            )
        elapsed = time.perf_counter() - started
        model.save(run_dir / "final_model.zip")
        if not (run_dir / "best_model.zip").exists():  # no finished episode yet: the latest is the best we know
            model.save(run_dir / "best_model.zip")
    finally:
        close_games(vec_env, games_tag)
    done_steps = model.num_timesteps - start_steps
    print(
        f"trained {done_steps} steps in {elapsed:.1f} s ({done_steps / max(elapsed, 1e-9):.0f} steps/s); model in "
        f"{run_dir}"
    )
    if record is not None:
        print(f"recorded episodes in {args.record_dir}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
