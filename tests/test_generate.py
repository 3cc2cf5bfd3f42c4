"""load_model_generate_dataset.py: parallel recording into the parquet dataset contract."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import gymnasium as gym
import numpy as np
import psutil
import pyarrow.parquet as pq
from conftest import AGENT_DIR, GENERATOR, record_random_episodes, run_script, script_env
from PIL import Image

from common.envs import ACTION_NAMES, DoomConfig, observation_space
from common.utils import METADATA_KEY, decode_frame, list_shards


def read_dataset(folder):
    return pq.read_table(list_shards(folder)).to_pandas()


def test_two_workers_record_exactly_the_requested_episodes(random_dataset):
    table = read_dataset(random_dataset)
    episodes = table.groupby("episode_id", sort=False)
    assert episodes.ngroups == 4
    assert len({e.split("-w")[1][:2] for e in table.episode_id.unique()}) == 2  # both workers played
    for _, rows in episodes:
        assert list(rows.step_id) == list(range(len(rows)))  # contiguous, ordered, 0-based
        assert len(rows) == 24  # --max_steps_per_episode cut them
        assert not rows.done.any()  # cut by us, not ended by the game
        assert rows.action.between(0, len(ACTION_NAMES) - 1).all()
    frame = decode_frame(table.frame.iloc[5])
    assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8
    assert table.frame.iloc[5][:8] == b"\x89PNG\r\n\x1a\n"


def test_metadata_describes_the_dataset(random_dataset):
    for shard in list_shards(random_dataset):
        meta = json.loads(pq.read_schema(shard).metadata[METADATA_KEY])
        assert meta["format_version"] == 1 and meta["frame_codec"] == "png"
        assert meta["map"] == "E1M1" and meta["wad"] == "freedoom1.wad"
        assert (meta["frame_width"], meta["frame_height"], meta["frame_skip"]) == (320, 240, 4)
        assert meta["action_names"] == list(ACTION_NAMES)
        assert meta["policy"] == "random" and meta["seed"] == 7
        assert meta["vizdoom_version"]


def test_huggingface_datasets_round_trip(random_dataset):
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=str(random_dataset / "*.parquet"), split="train")
    assert ds.num_rows == 4 * 24
    assert {"episode_id", "step_id", "frame", "action", "reward", "done"} <= set(ds.column_names)
    with Image.open(__import__("io").BytesIO(ds[0]["frame"])) as image:
        assert image.size == (320, 240)


def test_same_seed_reproduces_the_same_actions(tmp_path, random_dataset):
    record_random_episodes(tmp_path, 2, 24, "--seed", 7)
    again = read_dataset(tmp_path)
    first = read_dataset(random_dataset)
    # worker 0's first episode of both runs: same (seed, worker) -> same actions
    pick = lambda t: t[t.episode_id.str.endswith("-w00-00000")].action.tolist()  # noqa: E731
    assert pick(again) == pick(first)


def test_rerun_adds_shards_and_never_touches_earlier_ones(tmp_path):
    record_random_episodes(tmp_path, 2, 8)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in list_shards(tmp_path)}
    record_random_episodes(tmp_path, 2, 8, "--seed", 1)
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in list_shards(tmp_path)}
    assert all(after[name] == digest for name, digest in before.items())
    assert len(after) == 2 * len(before)
    table = read_dataset(tmp_path)
    assert table.episode_id.nunique() == 4  # ids unique across runs and workers

    # a different game into the same folder is refused, and nothing is deleted
    result = record_random_episodes(tmp_path, 2, 8, "--frame_size", "160x120", check=False)
    assert result.returncode == 2 and "frame_width" in result.stderr
    assert {p.name for p in list_shards(tmp_path)} == set(after)


def game_processes_tagged(tag: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "vizdoom":
            continue
        try:
            if process.environ().get("GAMENGEN_TEST_TAG") == tag:
                found.append(process)
        except psutil.Error:
            pass
    return found


def start_long_generation(out_dir, tag):
    """A run far longer than any test waits (it is always interrupted or killed): 2,000 episodes."""
    command = [
        sys.executable,
        str(AGENT_DIR / "load_model_generate_dataset.py"),
        "--random_policy",
        "--episodes",
        "2000",
        "--num_workers",
        "2",
    ]
    command += [
        "--max_steps_per_episode",
        "40",
        "--rows_per_shard",
        "40",
        "--out_dir",
        str(out_dir),
        "--frame_size",
        "160x120",
    ]
    log = open(out_dir.parent / f"{tag}.log", "w+")  # a file, not a pipe: a pipe nobody reads blocks the script
    # SIGINT as in a terminal, even when the tests themselves run in the background (where it is ignored, and inherited)
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    return subprocess.Popen(
        command, env=script_env(GAMENGEN_TEST_TAG=tag), stdout=log, stderr=log, text=True, preexec_fn=default_sigint
    )


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_interrupted_generation_keeps_complete_shards_and_leaves_no_game_running(tmp_path):
    tag = uuid.uuid4().hex
    process = start_long_generation(tmp_path, tag)
    try:
        assert wait_for(lambda: len(list_shards(tmp_path)) >= 2), "no shard written in time"
        assert game_processes_tagged(tag), "games should be running"
        process.send_signal(signal.SIGINT)  # Ctrl-C
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0
    assert wait_for(lambda: not game_processes_tagged(tag), timeout=10), "a vizdoom game outlived the script"
    table = read_dataset(tmp_path)  # every shard on disk is complete and readable
    for _, rows in table.groupby("episode_id"):
        assert list(rows.step_id) == list(range(len(rows)))


def test_a_second_ctrl_c_stops_at_once_without_a_traceback_and_leaves_no_game_running(tmp_path):
    tag = uuid.uuid4().hex
    process = start_long_generation(tmp_path, tag)
    try:
        assert wait_for(lambda: len(list_shards(tmp_path)) >= 1), "no shard written in time"
        process.send_signal(signal.SIGINT)
        time.sleep(0.05)  # the first Ctrl-C is being handled: the workers are writing their last episodes
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    log = (tmp_path.parent / f"{tag}.log").read_text()
    assert process.returncode == 1 and "Traceback" not in log and "interrupted twice" in log
    assert wait_for(lambda: not game_processes_tagged(tag), timeout=10), "a vizdoom game outlived the script"
    read_dataset(tmp_path)  # the shards on disk are complete and readable


def test_a_crashed_worker_stops_the_run_and_its_game(tmp_path):
    tag = uuid.uuid4().hex
    process = start_long_generation(tmp_path, tag)
    try:
        assert wait_for(lambda: len(game_processes_tagged(tag)) == 2), "games did not start"
        workers = [p for p in psutil.Process(process.pid).children() if "python" in p.name()]
        worker = next(p for p in workers if any(c.name() == "vizdoom" for c in p.children()))
        worker.kill()  # a worker dies without any cleanup
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1
    assert "exited with code" in (tmp_path.parent / f"{tag}.log").read_text()
    assert wait_for(lambda: not game_processes_tagged(tag), timeout=10), "the dead worker's game was left running"


def test_gif_output_has_one_captioned_frame_per_step(tmp_path):
    record_random_episodes(tmp_path, 2, 10, "--output", "gif")
    gifs = sorted(tmp_path.glob("*.gif"))
    assert len(gifs) == 2
    for gif in gifs:
        with Image.open(gif) as image:
            assert image.n_frames == 10
            assert image.size == (320, 240 + 14)  # frame + caption strip


def test_upload_needs_a_repo_name(tmp_path):
    result = run_script(GENERATOR, "--random_policy", "--upload", "--out_dir", tmp_path, check=False)
    assert result.returncode == 2 and "--hf_repo" in result.stderr


def test_missing_model_file_is_named(tmp_path):
    result = run_script(GENERATOR, "--model_path", tmp_path / "nope.zip", "--out_dir", tmp_path, check=False)
    assert result.returncode == 2 and "nope.zip not found" in result.stderr


class WrongActionsEnv(gym.Env):
    """Same observations as DoomEnv, only 3 actions: a policy trained for another action set."""

    def __init__(self):
        self.observation_space = observation_space(DoomConfig())
        self.action_space = gym.spaces.Discrete(3)


def test_model_for_another_action_space_is_refused(tmp_path):
    from stable_baselines3 import PPO

    PPO("MultiInputPolicy", WrongActionsEnv(), n_steps=8, batch_size=8, device="cpu").save(tmp_path / "wrong.zip")
    result = run_script(GENERATOR, "--model_path", tmp_path / "wrong.zip", "--out_dir", tmp_path / "out", check=False)
    assert result.returncode == 2
    assert f"trained with 3 actions but this environment has {len(ACTION_NAMES)}" in result.stderr
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
