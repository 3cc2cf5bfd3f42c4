"""Context windows (gamengen/windows.py, docs/data.md): which frames and actions a sample holds, padding, validation.

Most datasets here are written by the agent side's own ShardWriter with synthetic frames whose
pixels encode (episode, step), so a test can read back exactly which frame landed in which slot.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from common.utils import ShardWriter
from gamengen.config import get_config
from gamengen.context import PAD_ACTION, pad_context
from gamengen.episodes import open_dataset
from gamengen.layout import ColumnNames, DatasetError
from gamengen.windows import PixelWindowDataset

ACTION_NAMES = ["NOOP", "FORWARD", "BACKWARD", "TURN_LEFT", "TURN_RIGHT", "ATTACK", "USE"]
WIDTH, HEIGHT = 64, 48  # the tiny preset's frame size


def action_at(episode: int, step: int) -> int:
    """The action recorded at (episode, step): neighbouring steps always differ."""
    return (3 * step + episode) % len(ACTION_NAMES)


def coded_frame(episode: int, step: int) -> np.ndarray:
    """Red = episode, green = step (constant planes); blue = texture, so VAE latents differ."""
    frame = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    frame[..., 0] = episode
    frame[..., 1] = step
    frame[..., 2] = np.random.default_rng([episode, step]).integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    return frame


def write_coded_dataset(
    out: Path, lengths: list[int], worker: int = 0, rows_per_shard: int = 8, first_episode: int = 0, actions=action_at
) -> list[str]:
    """Episodes ``first_episode, first_episode + 1, ...`` of the given lengths through the recorder's writer;
    returns their ids."""
    metadata = {
        "scenario": "e1m1",
        "wad": "freedoom1.wad",
        "map": "E1M1",
        "frame_width": WIDTH,
        "frame_height": HEIGHT,
        "frame_skip": 4,
    }
    writer = ShardWriter(
        out, {**metadata, "action_names": ACTION_NAMES}, run_id="run", worker_id=worker, rows_per_shard=rows_per_shard
    )
    ids = []
    for offset, length in enumerate(lengths):
        episode = first_episode + offset
        ids.append(writer.start_episode())
        for step in range(length):
            writer.add_step(coded_frame(episode, step), actions(episode, step), 0.0)
        writer.end_episode(done=True)
    writer.close()
    return ids


def codes(pixels: torch.Tensor) -> list[tuple[int, int]]:
    """(episode, step) of each frame of float pixels (..., 3, H, W) in [-1, 1]."""
    values = ((pixels[..., :2, 0, 0].reshape(-1, 2) + 1) * 127.5).round().to(torch.int64)
    return [tuple(pair) for pair in values.tolist()]


@pytest.fixture(scope="module")
def coded_dataset(tmp_path_factory) -> Path:
    """Episodes of 9, 3, 1 and 12 steps spread over several shards."""
    out = tmp_path_factory.mktemp("coded")
    write_coded_dataset(out, [9, 3, 1, 12])
    return out


def test_the_sample_for_frame_t_holds_frames_and_actions_t_minus_n_to_t_minus_1(coded_dataset):
    episodes = open_dataset(coded_dataset)
    assert len(episodes.files) > 1  # windows are read across shard files
    context_length = 4
    windows = PixelWindowDataset(episodes, context_length=context_length, config=get_config("tiny"))
    lengths = [9, 3, 1, 12]
    assert len(windows) == sum(length - 1 for length in lengths)  # targets t = 1 .. length-1 of every episode
    seen = []
    for index in range(len(windows)):
        sample = windows[index]
        episode, target = int(sample["episode_index"]), int(sample["step"])
        assert windows.episode_ids[episode] == episodes.episode_ids[episode]
        assert codes(sample["target"]) == [(episode, target)]
        expected_steps = [max(0, step) for step in range(target - context_length, target)]
        # Frame k of the context is step t-N+k of the SAME episode (before step 0: the first frame).
        assert codes(sample["context"]) == [(episode, step) for step in expected_steps]
        # Action k is the action taken at step t-N+k: action t-1 produced the target, action t is not there.
        expected_actions = [
            action_at(episode, step) if step >= 0 else PAD_ACTION for step in range(target - context_length, target)
        ]
        assert sample["actions"].tolist() == expected_actions
        assert sample["actions"].tolist() == [
            int(a) if m else PAD_ACTION
            for a, m in zip(episodes.actions(episode)[expected_steps], sample["context_mask"], strict=True)
        ]
        assert sample["context_mask"].tolist() == [step >= 0 for step in range(target - context_length, target)]
        assert int(sample["num_padded"]) == max(0, context_length - target)
        assert windows.locate(index) == (episode, target) and windows.window_index(episode, target) == index
        seen.append((episode, target))
    assert seen == [(e, t) for e, length in enumerate(lengths) for t in range(1, length)]


def test_the_action_taken_at_the_target_frame_is_never_visible(tmp_path):
    """Change only the action recorded at step t: the sample for frame t stays the same, the one for t+1 changes."""
    target = 5
    write_coded_dataset(tmp_path / "a", [10])
    write_coded_dataset(
        tmp_path / "b",
        [10],
        actions=lambda e, s: (action_at(e, s) + 1) % len(ACTION_NAMES) if s == target else action_at(e, s),
    )
    first, second = (PixelWindowDataset(open_dataset(tmp_path / name), context_length=3) for name in "ab")
    for key, value in first[first.window_index(0, target)].items():
        assert torch.equal(value, second[second.window_index(0, target)][key]), key
    after_a, after_b = first[first.window_index(0, target + 1)], second[second.window_index(0, target + 1)]
    assert after_a["actions"][-1] != after_b["actions"][-1]  # ... it is the last context action of frame t+1
    assert torch.equal(after_a["actions"][:-1], after_b["actions"][:-1])


def test_episode_start_is_padded_with_the_first_frame_and_noop_exactly_as_at_inference(coded_dataset):
    episodes = open_dataset(coded_dataset)
    windows = PixelWindowDataset(episodes, context_length=4)
    first = windows[windows.window_index(3, 1)]  # episode 3, target frame 1: one real frame
    assert codes(first["context"]) == [(3, 0)] * 4
    assert first["actions"].tolist() == [PAD_ACTION] * 3 + [action_at(3, 0)]
    assert first["context_mask"].tolist() == [False, False, False, True] and int(first["num_padded"]) == 3
    # The engine pads a short real context with the same function: the same tensors as training.
    for target in (1, 2, 3, 4, 6):
        sample = windows[windows.window_index(3, target)]
        start = max(0, target - 4)
        real = torch.stack(
            [torch.from_numpy(coded_frame(3, s)).permute(2, 0, 1).float() / 127.5 - 1 for s in range(start, target)]
        )
        context, actions, mask = pad_context(real, torch.tensor([action_at(3, s) for s in range(start, target)]), 4)
        assert (
            torch.equal(context, sample["context"])
            and torch.equal(actions, sample["actions"])
            and torch.equal(mask, sample["context_mask"])
        )
    # A longer history keeps the last N; no real frame at all is refused (t = 0 is never a target).
    context, actions, mask = pad_context(torch.arange(6.0), torch.arange(6), 4)
    assert context.tolist() == [2, 3, 4, 5] and actions.tolist() == [2, 3, 4, 5] and mask.all()
    with pytest.raises(ValueError, match="at least one real frame"):
        pad_context(torch.zeros(0, 3), torch.zeros(0), 4)


def test_min_context_drops_padded_targets_and_short_episodes_give_no_windows(coded_dataset):
    episodes = open_dataset(coded_dataset)
    windows = PixelWindowDataset(episodes, context_length=4, min_context=4)
    assert len(windows) == (9 - 4) + (12 - 4)  # the 3- and 1-step episodes are too short
    assert all(not windows[i]["num_padded"] and windows[i]["context_mask"].all() for i in range(len(windows)))
    with pytest.raises(ValueError, match="min_context must be in 1..context_length"):
        PixelWindowDataset(episodes, context_length=4, min_context=0)
    with pytest.raises(DatasetError, match=r"none of the 2 episodes is longer than min_context=4 steps \(longest: 3\)"):
        PixelWindowDataset(episodes.subset(episodes.episode_ids[1:3]), context_length=4, min_context=4)


def test_batches_have_the_documented_layout(coded_dataset):
    windows = PixelWindowDataset(open_dataset(coded_dataset), context_length=4, pixel_format="uint8")
    batch = next(iter(torch.utils.data.DataLoader(windows, batch_size=5, shuffle=True)))
    assert batch["context"].shape == (5, 4, 3, HEIGHT, WIDTH) and batch["context"].dtype == torch.uint8
    assert batch["target"].shape == (5, 3, HEIGHT, WIDTH)
    assert batch["actions"].shape == (5, 4) and batch["actions"].dtype == torch.int64
    assert batch["context_mask"].shape == (5, 4) and batch["context_mask"].dtype == torch.bool
    for key in ("num_padded", "episode_index", "step"):
        assert batch[key].shape == (5,) and batch[key].dtype == torch.int64


def test_out_of_range_action_ids_are_refused_naming_the_id_and_the_count(tmp_path):
    ids = write_coded_dataset(tmp_path, [3, 4], actions=lambda e, s: 9 if (e, s) == (1, 2) else action_at(e, s))
    episodes = open_dataset(tmp_path)
    message = (
        rf"episode '{ids[1]}' step 2 has action id 9, but there are 7 actions \(ids 0..6: NOOP, FORWARD, "
        r".*num_actions >= 10"
    )
    with pytest.raises(DatasetError, match=message):
        PixelWindowDataset(episodes, context_length=2)
    assert (
        PixelWindowDataset(episodes, context_length=2, num_actions=10).num_actions == 10
    )  # a model with room for id 9
    negative = tmp_path / "negative"
    write_coded_dataset(negative, [3], actions=lambda e, s: -1 if s == 1 else 0)
    with pytest.raises(DatasetError, match="has action id -1, .* cannot be negative"):
        PixelWindowDataset(open_dataset(negative), context_length=2)


def test_frames_of_another_size_than_the_preset_are_refused(coded_dataset):
    with pytest.raises(
        DatasetError, match="frames are 64x48, the 'sd14' preset expects 320x240: record with --frame_size 320x240"
    ):
        PixelWindowDataset(open_dataset(coded_dataset), context_length=4, config=get_config("sd14"))


def test_other_column_layouts_work_and_a_missing_action_column_is_named(coded_dataset, tmp_path):
    """A peer layout (frames/actions/episode/step, no metadata): windows need explicit names and a number of actions."""
    table = pq.read_table(open_dataset(coded_dataset).files[0])
    renamed = table.select(["frame", "action", "episode_id", "step_id"]).rename_columns(
        ["frames", "actions", "episode", "step"]
    )
    pq.write_table(renamed.replace_schema_metadata({}), tmp_path / "train-00000.parquet")
    columns = ColumnNames(
        frame="frames", action="actions", episode="episode", step="step", frame_timing="before_action"
    )
    episodes = open_dataset(tmp_path, columns=columns)
    with pytest.raises(DatasetError, match="no action_names metadata, .*: pass num_actions"):
        PixelWindowDataset(episodes, context_length=2)
    windows = PixelWindowDataset(episodes, context_length=2, num_actions=len(ACTION_NAMES))
    sample = windows[windows.window_index(0, 3)]
    assert codes(sample["context"]) == [(0, 1), (0, 2)] and sample["actions"].tolist() == [
        action_at(0, 1),
        action_at(0, 2),
    ]
    pq.write_table(renamed.drop(["actions"]), tmp_path / "train-00000.parquet")
    with pytest.raises(DatasetError, match="no action column 'actions' .* --action_column"):
        open_dataset(tmp_path, columns=columns)


def test_windows_of_real_recorded_episodes(random_dataset):
    """E1M1 episodes recorded by two worker processes (320x240, the sd14 preset's frame size)."""
    episodes = open_dataset(random_dataset)
    windows = PixelWindowDataset(episodes, context_length=8, config=get_config("sd14"), pixel_format="uint8")
    assert len(windows) == sum(e.length - 1 for e in episodes.episodes) > 0
    for index in np.linspace(0, len(windows) - 1, 6).round().astype(int):
        sample = windows[int(index)]
        episode, target = int(sample["episode_index"]), int(sample["step"])
        frame = episodes.frame(episodes.row_index(episode, target))
        assert np.array_equal(sample["target"].permute(1, 2, 0).numpy(), frame)
        steps = [max(0, s) for s in range(target - 8, target)]
        for slot, step in enumerate(steps):
            assert np.array_equal(
                sample["context"][slot].permute(1, 2, 0).numpy(), episodes.frame(episodes.row_index(episode, step))
            )
        actions = episodes.actions(episode)
        assert sample["actions"].tolist() == [
            int(actions[s]) if s >= 0 else PAD_ACTION for s in range(target - 8, target)
        ]
    # A column of a real shard with a bad id: the error names it (written as the recorder writes it).
    shard = episodes.files[0]
    table = pq.read_table(shard)
    actions = table.column("action").to_numpy().copy()
    actions[3] = 15
    bad = random_dataset.parent / (random_dataset.name + "-bad")
    bad.mkdir(exist_ok=True)
    pq.write_table(
        table.set_column(table.schema.get_field_index("action"), "action", pa.array(actions, pa.int16())),
        bad / shard.name,
    )
    with pytest.raises(DatasetError, match="step 3 has action id 15, but there are 15 actions"):
        PixelWindowDataset(open_dataset(bad), context_length=8)


def test_the_pixel_path_reads_windows_without_warnings(tmp_path):
    """With an int64 action column (as other layouts have) the actions were read-only views of the parquet
    data, and torch warned 'The given NumPy array is not writable'."""
    write_coded_dataset(tmp_path, [9, 3], rows_per_shard=64)
    for shard in tmp_path.rglob("*.parquet"):
        table = pq.read_table(shard)
        column = table.schema.get_field_index("action")
        pq.write_table(table.set_column(column, "action", table.column(column).cast(pa.int64())), shard)
    windows = PixelWindowDataset(open_dataset(tmp_path), context_length=4, config=get_config("tiny"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = torch.utils.data.default_collate([windows[i] for i in range(4)])
    assert batch["target"].shape[0] == 4
