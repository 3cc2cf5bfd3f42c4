"""Datasets in the seed repository's layout (one parquet file per episode; columns episode_id, frames as JPEG,
actions, health, step_ids; each frame captured AFTER its row's action; no schema metadata) are recognised
and read with this project's window semantics: the window for frame t ends with the action that produced it."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from gamengen.episodes import open_dataset
from gamengen.layout import PEER_COLUMNS, ColumnNames, DatasetError, add_column_arguments, columns_from_args
from gamengen.windows import PixelWindowDataset

WIDTH, HEIGHT = 64, 48
NUM_ACTIONS = 6


def action_colour(action: int) -> int:
    """The grey level of a frame produced by ``action``: far apart, so JPEG keeps them apart."""
    return 20 + 40 * action


def jpeg(level: int, width: int = WIDTH, height: int = HEIGHT) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), level, dtype=np.uint8)).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def write_seed_layout(
    out: Path, episodes: int = 3, length: int = 12, seed: int = 0, width: int = WIDTH, height: int = HEIGHT
) -> list[np.ndarray]:
    """Each row's frame is the screen after its action: here a flat frame whose grey level names that action."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    all_actions = []
    for episode in range(episodes):
        actions = rng.integers(0, NUM_ACTIONS, length)
        table = pa.table(
            {
                "episode_id": pa.array([episode] * length, pa.int64()),
                "frames": pa.array([jpeg(action_colour(int(a)), width, height) for a in actions], pa.binary()),
                "actions": pa.array(actions, pa.int64()),
                "health": pa.array([100] * length, pa.int64()),
                "step_ids": pa.array(np.arange(length), pa.int64()),
            }
        )
        pq.write_table(table, out / f"episode_{episode}.parquet")
        all_actions.append(actions)
    return all_actions


def produced_by(frame: np.ndarray) -> int:
    return int(round((float(frame.mean()) - 20) / 40))


def test_the_seed_layout_is_recognised_without_options_and_says_so(tmp_path, capsys):
    write_seed_layout(tmp_path)
    dataset = open_dataset(tmp_path)
    assert "seed repository's layout" in capsys.readouterr().out
    assert dataset.columns == PEER_COLUMNS and len(dataset.episodes) == 3 and dataset.metadata is None


def test_every_window_ends_with_the_action_that_produced_its_target_frame(tmp_path):
    recorded = write_seed_layout(tmp_path)
    windows = PixelWindowDataset(open_dataset(tmp_path), context_length=4, num_actions=NUM_ACTIONS)
    checked = 0
    for index in range(len(windows)):
        sample = windows[index]
        target = ((sample["target"].permute(1, 2, 0).numpy() + 1) * 127.5).round()
        newest_action = int(sample["actions"][-1])
        assert newest_action == produced_by(target)
        episode, step = int(sample["episode_index"]), int(sample["step"])
        assert newest_action == recorded[episode][step]  # the seed's row t holds the action that made frame t
        checked += 1
    assert checked == 3 * 11  # every frame but each episode's first is a target


def paired_with_their_action(dataset) -> list[bool]:
    """For every window: does it end with the action that produced its target frame?"""
    windows = PixelWindowDataset(dataset, context_length=4, num_actions=NUM_ACTIONS)
    matches = []
    for index in range(len(windows)):
        sample = windows[index]
        target = ((sample["target"].permute(1, 2, 0).numpy() + 1) * 127.5).round()
        matches.append(int(sample["actions"][-1]) == produced_by(target))
    return matches


def test_read_with_our_timing_the_actions_would_be_one_step_late(tmp_path):
    """The off-by-one this option exists for: the same files read as before_action pair frame t with the
    action that produced frame t - 1."""
    write_seed_layout(tmp_path)
    naive = ColumnNames(
        frame="frames", action="actions", episode="episode_id", step="step_ids", frame_timing="before_action"
    )
    assert np.mean(paired_with_their_action(open_dataset(tmp_path, columns=naive))) < 0.5


def column_options(*argv: str) -> ColumnNames | None:
    """The ColumnNames a script reads with, from its command line's column options."""
    parser = argparse.ArgumentParser()
    add_column_arguments(parser)
    return columns_from_args(parser.parse_args(argv))


def test_the_seed_layouts_column_names_given_as_options_get_its_timing(tmp_path, capsys):
    """Named explicitly (--frame_column frames ... without --frame_timing), the seed layout was read with this
    project's timing: only about a fifth of the windows paired their target with the action that produced it."""
    write_seed_layout(tmp_path)
    columns = column_options(
        *("--frame_column", "frames", "--action_column", "actions"),
        *("--episode_column", "episode_id", "--step_column", "step_ids"),
    )
    dataset = open_dataset(tmp_path, columns=columns)
    assert dataset.columns == PEER_COLUMNS and "seed repository's layout" in capsys.readouterr().out
    assert all(paired_with_their_action(dataset))


def test_other_datasets_without_metadata_must_name_their_frame_timing(tmp_path):
    """Nothing in such a dataset says when its frames were taken: a guess pairs every frame with the wrong action
    when it is wrong, so the reader asks, and reads it as told."""
    write_seed_layout(tmp_path)
    for shard in tmp_path.glob("*.parquet"):
        table = pq.read_table(shard)
        pq.write_table(table.rename_columns(["episode", "image", "action", "health", "step"]), shard)
    names = ("--frame_column", "image", "--action_column", "action", "--episode_column", "episode")
    with pytest.raises(DatasetError) as refused:
        open_dataset(tmp_path, columns=column_options(*names, "--step_column", "step"))
    message = str(refused.value)
    assert "nothing says when its frames were taken" in message
    assert "--frame_timing before_action if a row's action produced the next row's frame" in message
    assert "--frame_timing after_action if a row's frame was captured after its action" in message
    told = column_options(*names, "--step_column", "step", "--frame_timing", "after_action")
    assert all(paired_with_their_action(open_dataset(tmp_path, columns=told)))


def test_an_unknown_frame_timing_is_refused(tmp_path):
    write_seed_layout(tmp_path, episodes=1)
    with pytest.raises(DatasetError, match="frame_timing 'later'"):
        open_dataset(
            tmp_path, columns=ColumnNames(frame="frames", action="actions", step="step_ids", frame_timing="later")
        )
