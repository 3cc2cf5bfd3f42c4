"""Roll out a trained (or random) agent in parallel ViZDoom games and record the episodes.

GameNGen section 4.1: the world model is trained on recorded agent play. Each of ``--num_workers``
worker processes runs its own game; the frames (PNG) and actions are written as parquet shards in
the dataset format of docs/data.md#the-dataset-format, or as captioned QA gifs (``--output gif``).
``--upload --hf_repo USER/NAME`` pushes the parquet dataset to the Hugging Face Hub, so that
``datasets.load_dataset("USER/NAME")`` loads it.

Example (random policy, 4 short episodes on 2 workers):

    python ViZDoomPPO/load_model_generate_dataset.py --random_policy --episodes 4 --num_workers 2 \
        --max_steps_per_episode 64 --output parquet --out_dir /tmp/ds

Reruns into the same ``--out_dir`` add new shards (new run id); nothing is ever deleted.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.envs import (
    ACTION_NAMES,
    DoomConfig,
    DoomEnv,
    RecordEpisodes,
    ScenarioError,
    add_env_args,
    config_from_args,
    dataset_metadata,
    kill_games_of_run,
    observation_space,
    tag_games_with_run,
)
from common.models import AgentLoadError, find_env_config, load_agent
from common.utils import DatasetError, GifWriter, HelpFormatter, ShardWriter, check_output_dir, new_run_id

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument(
        "--model_path",
        help="PPO model .zip from train_ppo_parallel.py (default: the newest <log_dir>/models/<run>/best_model.zip)",
    )
    parser.add_argument(
        "--log_dir",
        default=str(Path(__file__).resolve().parent / "logs"),
        help="train_ppo_parallel.py's --log_dir, searched for the newest agent when no --model_path is given",
    )
    policy.add_argument("--random_policy", action="store_true", help="uniformly random actions instead of an agent")
    parser.add_argument("--episodes", type=int, default=8, help="number of episodes to record, over all workers")
    parser.add_argument(
        "--max_steps_per_episode", type=int, default=1000, help="agent steps after which an episode is cut (done=False)"
    )
    parser.add_argument("--num_workers", type=int, default=2, help="worker processes, each with its own game")
    parser.add_argument(
        "--output",
        choices=["parquet", "gif"],
        default="parquet",
        help="parquet dataset shards, or one captioned QA gif per episode",
    )
    parser.add_argument(
        "--out_dir",
        help="output folder (created; existing shards are kept; default: outputs/dataset, or outputs/gifs with "
        "--output gif, "
        "in the repository)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="base seed; worker w plays with a seed derived from (seed, w)"
    )
    parser.add_argument(
        "--deterministic", action="store_true", help="take the policy's most likely action instead of sampling"
    )
    parser.add_argument("--frame_codec", choices=["png", "jpeg"], default="png", help="frame encoding (png: lossless)")
    parser.add_argument(
        "--png_level", type=int, default=1, help="PNG compression level 0-9 (1: fast, ~43 KB at 320x240)"
    )
    parser.add_argument("--rows_per_shard", type=int, default=2048, help="rows per parquet shard (whole episodes)")
    parser.add_argument(
        "--upload", action="store_true", help="push the parquet dataset to the Hugging Face Hub (needs --hf_repo)"
    )
    parser.add_argument("--hf_repo", help="Hub dataset repo id for --upload, e.g. USER/vizdoom-e1m1")
    parser.add_argument("--private", action="store_true", help="create the Hub dataset repo as private")
    add_env_args(parser)
    args = parser.parse_args(argv)
    if args.upload and not args.hf_repo:
        parser.error("--upload needs --hf_repo USER/NAME (the Hub dataset repository to push to)")
    if args.upload and args.output != "parquet":
        parser.error("--upload pushes parquet datasets; use --output parquet")
    for name in ("episodes", "num_workers", "max_steps_per_episode"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.out_dir is None:
        args.out_dir = str(REPO / "outputs" / ("gifs" if args.output == "gif" else "dataset"))
    if not args.model_path and not args.random_policy:
        models_dir = Path(args.log_dir) / "models"
        newest = newest_trained_agent(models_dir)
        if newest is None:
            parser.error(
                f"no trained agent found under {models_dir}: train one (python ViZDoomPPO/train_ppo_parallel.py), "
                "pass --model_path PATH.zip, or record a random agent with --random_policy"
            )
        args.model_path = str(newest)
        print(f"using the newest trained agent: {newest} (pass --model_path or --random_policy to choose)", flush=True)
    return args


def newest_trained_agent(models_dir: Path) -> Path | None:
    """The most recently written ``<run>/best_model.zip`` under ``models_dir`` (train_ppo_parallel.py's layout)."""
    agents = sorted(models_dir.glob("*/best_model.zip"), key=lambda path: path.stat().st_mtime)
    return agents[-1] if agents else None


def worker_seed(seed: int, worker_id: int) -> int:
    """Independent, reproducible seed for worker ``worker_id`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, worker_id]).generate_state(1)[0])


def run_worker(worker_id: int, num_episodes: int, job: dict, messages) -> None:
    """Play ``num_episodes`` episodes in this process and write them; report progress on ``messages``."""
    import torch

    torch.set_num_threads(1)  # docs/architecture.md#environment-facts: OpenMP spin-waiting stalls parallel workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop

    def stop(signum, frame):
        raise SystemExit(f"worker {worker_id} stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    config = DoomConfig.from_dict(job["config"])
    if job["output"] == "gif":
        writer = GifWriter(job["out_dir"], list(ACTION_NAMES), job["run_id"], worker_id)
    else:
        writer = ShardWriter(
            job["out_dir"],
            job["metadata"],
            job["run_id"],
            worker_id,
            job["rows_per_shard"],
            job["frame_codec"],
            job["png_level"],
        )
    env = RecordEpisodes(DoomEnv(config), writer)
    try:
        agent = load_agent(job["model_path"], env.observation_space, env.action_space.n) if job["model_path"] else None
        rng = np.random.default_rng(worker_seed(job["seed"], worker_id))
        env.action_space.seed(int(rng.integers(2**31)))
        for episode in range(num_episodes):
            obs, _ = env.reset(seed=int(rng.integers(2**31)))
            if episode == 0:  # start-up (imports, policy, game) is over: throughput is measured from here
                messages.put(("started", worker_id, time.time()))
            steps = 0
            for steps in range(1, job["max_steps"] + 1):
                if agent is None:
                    action = env.action_space.sample()
                else:
                    action, _ = agent.predict(obs, deterministic=job["deterministic"])
                obs, _, terminated, truncated, _ = env.step(int(action))
                if steps % 64 == 0:
                    messages.put(("steps", worker_id, 64))
                if terminated or truncated:
                    break
            writer.end_episode(done=bool(terminated or truncated))
            messages.put(("episode", worker_id, steps % 64))
        env.close()
        messages.put(("done", worker_id, (time.time(), writer.rows_written)))
    except BaseException:
        messages.put(("error", worker_id, traceback.format_exc()))
        raise
    finally:
        env.close()  # writes what is complete, then stops the game


def split_episodes(total: int, workers: int) -> list[int]:
    """Episodes per worker, as even as possible (workers with nothing to do are not started)."""
    counts = [total // workers + (w < total % workers) for w in range(workers)]
    return [c for c in counts if c > 0]


def upload_dataset(out_dir: Path, repo_id: str, metadata: dict, private: bool) -> str:
    """Push the parquet shards to a Hub dataset repo, with a card that ``load_dataset`` reads."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
    card = dataset_card(repo_id, metadata)
    api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo_id, repo_type="dataset")
    api.upload_folder(
        folder_path=str(out_dir),
        path_in_repo="data",
        repo_id=repo_id,
        repo_type="dataset",
        allow_patterns=["*.parquet"],
        ignore_patterns=[".*"],
    )
    return f"https://huggingface.co/datasets/{repo_id}"


def dataset_card(repo_id: str, metadata: dict) -> str:
    """A dataset card whose YAML header makes ``load_dataset(repo_id)`` find the shards."""
    return (
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/*.parquet\n"
        "tags:\n- vizdoom\n- gamengen\n- world-model\n---\n\n"
        f"# {repo_id}\n\nDOOM episodes recorded with ViZDoom for training a GameNGen world model. One row per agent "
        "step: "
        "`frame` (PNG of the screen before the action), `action` (index into `action_names`), `reward`, `done`, "
        "`episode_id`, `step_id`. Action `t` produced frame `t+1`.\n\n"
        f"```json\n{json.dumps({k: v for k, v in metadata.items() if k != 'env_config'}, indent=2)}\n```\n"
    )


def stop_workers(workers: list, terminate: bool) -> None:
    """Wait for the workers; with ``terminate``, first ask them to stop (SIGTERM: each writes its complete
    episodes, then exits). A worker that does not end within 30 s is killed."""
    for worker in workers:
        if terminate and worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(timeout=30)
        if worker.is_alive():
            worker.kill()
            worker.join()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config, metadata, existing = check_run(args)
    except (ScenarioError, AgentLoadError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id()
    tag_games_with_run(run_id)
    job = worker_job(args, config, metadata, run_id)
    plan = split_episodes(args.episodes, args.num_workers)
    print(
        f"run {run_id}: {args.episodes} episodes on {len(plan)} workers -> {out_dir}"
        + (f" (joining {existing} existing shards)" if existing else "")
    )

    frames, elapsed, steady, failed = record(job, plan, args.episodes, run_id)
    if failed is not None:
        print(f"error: {failed}\nshards written so far are complete and kept in {out_dir}", file=sys.stderr)
        return 1
    print(
        f"recorded {frames} frames in {elapsed:.1f} s ({frames / elapsed:.1f} frames/s; {steady:.1f} frames/s after "
        f"start-up) -> {out_dir}"
    )
    if args.upload:
        url = upload_dataset(out_dir, args.hf_repo, metadata, args.private)
        print(f"uploaded to {url}")
    return 0


def check_run(args: argparse.Namespace) -> tuple[DoomConfig, dict, int]:
    """(the game's settings: the agent's own, with the command line's overrides; the shards' metadata; how many
    shards --out_dir already holds), after checking the agent, the game and the folder, before any worker starts."""
    base = None
    if args.model_path:
        saved = find_env_config(args.model_path)
        base = DoomConfig.from_dict(saved) if saved else None
    config = config_from_args(args, base)
    if args.model_path:  # fail here, not in every worker
        load_agent(args.model_path, observation_space(config), len(ACTION_NAMES))
    policy = str(Path(args.model_path).resolve()) if args.model_path else "random"
    metadata = dataset_metadata(config, policy=policy, seed=args.seed)
    existing = (
        check_output_dir(Path(args.out_dir), {**metadata, "format_version": 1, "frame_codec": args.frame_codec})
        if args.output == "parquet"
        else 0
    )
    return config, metadata, existing


def worker_job(args: argparse.Namespace, config: DoomConfig, metadata: dict, run_id: str) -> dict:
    """What every worker process is given (plain values: the workers are spawned)."""
    return {
        "config": config.to_dict(),
        "metadata": metadata,
        "run_id": run_id,
        "out_dir": str(Path(args.out_dir)),
        "output": args.output,
        "model_path": args.model_path,
        "deterministic": args.deterministic,
        "seed": args.seed,
        "max_steps": args.max_steps_per_episode,
        "rows_per_shard": args.rows_per_shard,
        "frame_codec": args.frame_codec,
        "png_level": args.png_level,
    }


def record(job: dict, plan: list[int], episodes: int, run_id: str) -> tuple[int, float, float, str | None]:
    """Record with one worker process per entry of ``plan`` (its episodes): (frames recorded, seconds, frames/s
    after start-up, why the run failed or None). Ctrl-C or a failed worker stops the others, which keep their
    complete episodes; no game of the run outlives it."""
    context = mp.get_context("spawn")  # no fork of a process that holds threads or a game
    messages = context.Queue()
    workers = [
        context.Process(target=run_worker, args=(w, n, job, messages), name=f"doom-worker-{w}")
        for w, n in enumerate(plan)
    ]
    started, started_wall = time.perf_counter(), time.time()
    frames, failed, worker_rates = 0, None, []
    bar = tqdm(total=episodes, unit="episode", desc="recording")
    try:
        for worker in workers:
            worker.start()
        frames, failed, worker_rates = watch_workers(workers, messages, bar, started, started_wall)
    except KeyboardInterrupt:
        failed = "interrupted"
    finally:
        bar.close()
        failed = end_workers(workers, run_id, failed)
    steady = sum(worker_rates)  # the workers' rates add up while they run side by side
    return frames, time.perf_counter() - started, steady, failed


def watch_workers(
    workers: list, messages, bar: tqdm, started: float, started_wall: float
) -> tuple[int, str | None, list[float]]:
    """Follow the workers' messages until all are done or one fails: (frames recorded, why the run failed or None,
    each worker's frames/s from its first step to its end)."""
    frames = 0
    failed: str | None = None
    finished: set[int] = set()
    worker_started: dict[int, float] = {}
    worker_rates: list[float] = []  # frames/s of each worker from its first step to its end
    last_check = time.perf_counter()
    while len(finished) < len(workers) and failed is None:
        # A worker that died without a word (killed, out of memory) stops the run, even while the
        # others keep the queue busy: checked at least once a second, not only when the queue is idle.
        if time.perf_counter() - last_check >= 1.0:
            last_check = time.perf_counter()
            dead = [w for w in workers if not w.is_alive() and w.exitcode not in (0, None)]
            if dead:
                failed = f"worker {dead[0].name} exited with code {dead[0].exitcode}"
                continue
        try:
            kind, worker_id, payload = messages.get(timeout=1.0)
        except queue.Empty:
            last_check = 0.0
            continue
        if kind == "steps":
            frames += payload
        elif kind == "episode":
            frames += payload
            bar.update(1)
        elif kind == "started":
            worker_started[worker_id] = payload
        elif kind == "done":
            finished.add(worker_id)
            end, rows = payload
            worker_rates.append(rows / max(end - worker_started.get(worker_id, started_wall), 1e-9))
        elif kind == "error":
            failed = f"worker {worker_id} failed:\n{payload}"
        bar.set_postfix(frames=frames, fps=f"{frames / (time.perf_counter() - started):.0f}")
    return frames, failed, worker_rates


def end_workers(workers: list, run_id: str, failed: str | None) -> str | None:
    """Wait for the workers (asked to stop first when the run ``failed``), then kill every game of the run. Returns
    why the run failed (a second Ctrl-C kills the workers)."""
    try:
        stop_workers(workers, terminate=failed is not None)
    except KeyboardInterrupt:  # a second Ctrl-C while the workers write their last episodes
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        failed = "interrupted twice: the workers were killed, their episodes in progress are lost"
        for worker in workers:
            if worker.is_alive():
                worker.kill()
            worker.join()
    finally:
        kill_games_of_run(run_id)  # also the game of a worker that died (it is no longer our descendant)
    return failed


if __name__ == "__main__":
    sys.exit(main())
