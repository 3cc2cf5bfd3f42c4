"""gamengen/episodes.py and gamengen/samplers.py: reading the agent side's parquet episodes (written here by its
own ShardWriter)."""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from common.utils import CONTRACT_KEYS as RECORDER_CONTRACT_KEYS
from common.utils import ShardWriter
from gamengen.episodes import open_dataset, split_episode_ids
from gamengen.layout import CONTRACT_KEYS, ColumnNames, DatasetError
from gamengen.samplers import FrameDataset, LocalShuffleSampler

ACTIONS = ["NOOP", "FORWARD", "TURN_LEFT"]


def metadata(width: int = 16, height: int = 12, **changes) -> dict:
    return {
        "scenario": "e1m1",
        "wad": "freedoom1.wad",
        "map": "E1M1",
        "frame_width": width,
        "frame_height": height,
        "frame_skip": 4,
        "action_names": ACTIONS,
        **changes,
    }


def frames_of(episode: int, length: int, width: int = 16, height: int = 12) -> np.ndarray:
    """Distinct frames: the pixel values encode (episode, step)."""
    rng = np.random.default_rng(episode)
    return rng.integers(0, 256, (length, height, width, 3), dtype=np.uint8)


def write_dataset(
    out: Path, lengths: list[int], worker: int = 0, rows_per_shard: int = 10, **meta
) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Episodes through the agent side's writer; returns {episode_id: (frames, actions)}."""
    writer = ShardWriter(out, metadata(**meta), run_id="run", worker_id=worker, rows_per_shard=rows_per_shard)
    written = {}
    for index, length in enumerate(lengths):
        episode_id = writer.start_episode()
        frames = frames_of(100 * worker + index, length, meta.get("width", 16), meta.get("height", 12))
        actions = [(step + index) % len(ACTIONS) for step in range(length)]
        for frame, action in zip(frames, actions, strict=True):
            writer.add_step(frame, action, 0.0)
        writer.end_episode(done=True)
        written[episode_id] = (frames, actions)
    writer.close()
    return written


def png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def test_reads_every_episode_frame_and_action_as_written(tmp_path):
    written = write_dataset(tmp_path, [7, 5, 9, 3])
    (tmp_path / ".half-written.parquet.tmp").write_bytes(b"junk")  # a recorder's temporary file
    (tmp_path / ".hidden.parquet").write_bytes(b"junk")
    dataset = open_dataset(tmp_path)
    assert len(dataset.files) > 1  # episodes spread over several shards
    assert dataset.episode_ids == list(written) and len(dataset) == 24
    assert (dataset.frame_width, dataset.frame_height, dataset.action_names) == (16, 12, ACTIONS)
    for episode_index, (frames, actions) in enumerate(written.values()):
        assert dataset.actions(episode_index).tolist() == actions
        for step in range(len(frames)):
            index = dataset.row_index(episode_index, step)
            assert dataset.locate(index) == (episode_index, step)
            assert np.array_equal(dataset.frame(index), frames[step])  # PNG is lossless
    with pytest.raises(IndexError):
        dataset.row_index(0, 7)


def test_heldout_split_is_by_episode_and_deterministic(tmp_path):
    write_dataset(tmp_path, [4] * 10)
    train, heldout = open_dataset(tmp_path).split(0.2)
    assert len(heldout.episodes) == 2 and len(train.episodes) == 8
    assert not set(train.episode_ids) & set(heldout.episode_ids)
    assert len(train) + len(heldout) == 40
    # The same ids give the same split whatever their order; shuffling the files changes nothing.
    ids = open_dataset(tmp_path).episode_ids
    assert split_episode_ids(ids[::-1], 0.2)[1] == sorted(heldout.episode_ids, key=ids[::-1].index)
    frames = [heldout.frame(i) for i in range(len(heldout))]
    again = open_dataset(tmp_path).split(0.2)[1]
    assert all(np.array_equal(a, again.frame(i)) for i, a in enumerate(frames))
    # Tiny datasets still hold one episode out, and a single episode cannot be split.
    assert len(split_episode_ids(["a", "b"], 0.01)[1]) == 1
    with pytest.raises(DatasetError, match="at least 2 episodes"):
        split_episode_ids(["a"], 0.1)


def test_frame_dataset_gives_pixels_in_minus_one_one_and_survives_pickling(tmp_path):
    written = write_dataset(tmp_path, [3, 3])
    dataset = pickle.loads(pickle.dumps(open_dataset(tmp_path)))  # as DataLoader workers get it
    pixels = FrameDataset(dataset)[4]
    assert pixels.shape == (3, 12, 16) and pixels.dtype == torch.float32
    expected = torch.from_numpy(list(written.values())[1][0][1]).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(pixels, expected)


def test_local_shuffle_visits_every_frame_once_per_epoch():
    sampler = LocalShuffleSampler(1024, seed=3, chunk_size=64, chunks_per_buffer=4)
    first = list(sampler)
    assert sorted(first) == list(range(1024)) and first != list(range(1024))
    assert list(sampler) == first  # deterministic for one epoch
    sampler.set_epoch(1)
    assert sorted(sampler) == list(range(1024)) and list(sampler) != first
    assert sorted(LocalShuffleSampler(1000, chunk_size=64)) == list(range(1000))  # a short last chunk
    # Locality: each buffer of 4 chunks touches at most 4 chunks of the file.
    assert len({i // 64 for i in first[:256]}) <= 4


def test_dataset_without_gamengen_metadata_needs_explicit_columns(tmp_path):
    """A peer layout: `frames` as a datasets Image struct, `actions`, `episode`, `step`, no metadata."""
    frames = frames_of(0, 6)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "frames": pa.array([{"bytes": png(f), "path": None} for f in frames], type=image_type),
            "actions": pa.array([1, 2, 0, 1, 2, 0], pa.int64()),
            "episode": ["e0"] * 3 + ["e1"] * 3,
            "step": [0, 1, 2, 0, 1, 2],
        }
    )
    pq.write_table(table, tmp_path / "train-00000.parquet")
    with pytest.raises(DatasetError, match="--frame_column"):
        open_dataset(tmp_path)
    dataset = open_dataset(
        tmp_path,
        columns=ColumnNames(
            frame="frames", action="actions", episode="episode", step="step", frame_timing="before_action"
        ),
    )
    assert dataset.metadata is None and dataset.action_names is None
    assert (dataset.frame_width, dataset.frame_height, len(dataset.episodes)) == (16, 12, 2)
    assert np.array_equal(dataset.frame(4), frames[4]) and dataset.actions(1).tolist() == [1, 2, 0]


def test_dataset_without_frames_is_refused_with_its_columns_listed(tmp_path):
    write_dataset(tmp_path, [3])
    shard = next(tmp_path.glob("*.parquet"))
    table = pq.read_table(shard)
    pq.write_table(table.drop(["frame"]), shard)
    with pytest.raises(DatasetError, match=r"no frame column 'frame' \(its columns: episode_id, step_id, action"):
        open_dataset(tmp_path)


def test_frames_of_inconsistent_size_are_refused(tmp_path):
    write_dataset(tmp_path, [4])
    shard = next(tmp_path.glob("*.parquet"))
    table = pq.read_table(shard)
    frames = table.column("frame").to_pylist()
    frames[2] = png(frames_of(9, 1, width=20, height=10)[0])
    pq.write_table(
        table.set_column(table.schema.get_field_index("frame"), "frame", pa.array(frames, pa.binary())), shard
    )
    dataset = open_dataset(tmp_path)
    with pytest.raises(DatasetError, match="20x10, but the dataset's frames are 16x12"):
        dataset.frame(2)
    # Metadata that disagrees with the frames is caught when the dataset is opened.
    other = tmp_path / "other"
    write_dataset(other, [2], width=16, height=12)
    shard = next(other.glob("*.parquet"))
    table = pq.read_table(shard)
    pq.write_table(
        table.replace_schema_metadata(
            {b"gamengen": table.schema.metadata[b"gamengen"].replace(b'"frame_width": 16', b'"frame_width": 64')}
        ),
        shard,
    )
    with pytest.raises(DatasetError, match="inconsistent size"):
        open_dataset(other)


def test_shards_of_different_datasets_are_refused(tmp_path):
    write_dataset(tmp_path / "a", [3])
    write_dataset(tmp_path / "b", [3], worker=1, width=32, height=24)
    shutil.copy(next((tmp_path / "b").glob("*.parquet")), tmp_path / "a")
    with pytest.raises(DatasetError, match="frame_width: 16 .* vs 32"):
        open_dataset(tmp_path / "a")
    # A shard without metadata among shards with it.
    table = pq.read_table(next((tmp_path / "b").glob("*.parquet")))
    pq.write_table(table.replace_schema_metadata({}), tmp_path / "b" / "foreign.parquet")
    with pytest.raises(DatasetError, match="mixes datasets"):
        open_dataset(tmp_path / "b")


def test_episodes_must_be_contiguous_and_ordered(tmp_path):
    write_dataset(tmp_path, [4])
    shard = next(tmp_path.glob("*.parquet"))
    table = pq.read_table(shard)
    pq.write_table(table.take([1, 0, 2, 3]), shard)
    with pytest.raises(DatasetError, match="not steps 0..3 in order"):
        open_dataset(tmp_path)


def test_missing_folders_and_unreachable_hub_ids_give_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no \\*.parquet files"):
        open_dataset(tmp_path)
    with pytest.raises(DatasetError, match="could not fetch the dataset 'nobody/no-such-dataset' from the Hub"):
        open_dataset("nobody/no-such-dataset")  # HF_HUB_OFFLINE=1: fails without touching the network


def test_a_misspelled_folder_is_named_as_neither_a_folder_nor_a_hub_dataset(tmp_path, monkeypatch):
    """runs/datset looks like a Hub id (USER/NAME): the error said only that the Hub fetch failed, never that no
    such folder exists, nor which folder was meant."""
    write_dataset(tmp_path / "runs" / "dataset", [3])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError) as refused:
        open_dataset("runs/datset")  # HF_HUB_OFFLINE=1: the Hub half fails without touching the network
    message = str(refused.value)
    assert message.startswith(f"no folder runs/datset (in {tmp_path})") and "did you mean runs/dataset?" in message
    assert "could not fetch the dataset 'runs/datset' from the Hub" in message
    with pytest.raises(DatasetError, match=r"folder ./runs/datset does not exist \(did you mean runs/dataset\?\)"):
        open_dataset("./runs/datset")


def test_the_reader_and_the_recorder_agree_on_the_dataset_contract_keys():
    """The recorder refuses to append to a dataset whose contract keys differ, the reader refuses shards that
    differ in them: the two halves keep their own copy of the list, which must stay the same."""
    assert CONTRACT_KEYS == RECORDER_CONTRACT_KEYS
