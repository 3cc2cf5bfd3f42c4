"""encode_latents.py and the latent cache: the cached windows are the encoded pixel windows, reruns
resume without redoing work, and a cache never meets another VAE, preset or dataset unnoticed."""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO, free_port, run_script, script_env
from diffusers.models.autoencoders.vae import Encoder
from safetensors.torch import load_file
from test_windows import action_at, write_coded_dataset

import encode_latents
from gamengen.config import get_config
from gamengen.episodes import open_dataset, split_episode_ids
from gamengen.latent_cache import LatentCache, encoder_fingerprint, open_latent_cache
from gamengen.layout import ColumnNames, DatasetError
from gamengen.run_folder import UsageError
from gamengen.vae import build_vae, load_vae, save_vae
from gamengen.windows import LatentWindowDataset, PixelWindowDataset, encode_pixel_windows

CONTEXT = 4
LENGTHS = [9, 3, 12, 6]


def make_vae(directory: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_vae(build_vae(get_config("tiny")), directory)
    return directory


def encode(dataset: Path, vae: Path, output: Path, *extra: str) -> dict:
    """encode_latents.py in this process (the CLI itself is run once, in the fixture)."""
    args = [
        "--preset",
        "tiny",
        "--dataset_name",
        str(dataset),
        "--pretrained_vae_model_name_or_path",
        str(vae),
        "--output_dir",
        str(output),
        *extra,
    ]
    return encode_latents.main(encode_latents.parse_args(args))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A coded 64x48 dataset over several shards, a random tiny VAE, and its latents made by the CLI."""
    root = tmp_path_factory.mktemp("latents")
    dataset = root / "ds"
    write_coded_dataset(dataset, LENGTHS, rows_per_shard=8)
    vae = make_vae(root / "vae", seed=0)
    cache = root / "cache"
    result = run_script(
        "encode_latents.py",
        "--preset",
        "tiny",
        "--dataset_name",
        dataset,
        "--pretrained_vae_model_name_or_path",
        vae,
        "--output_dir",
        cache,
    )
    assert f"encoded {sum(LENGTHS)} frames" in result.stdout
    return {"root": root, "dataset": dataset, "vae": vae, "cache": cache}


def test_cached_windows_equal_the_encoded_pixel_windows(setup):
    episodes = open_dataset(setup["dataset"])
    vae = load_vae(setup["vae"]).eval()
    config = get_config("tiny")
    cache = open_latent_cache(setup["cache"], dataset=episodes, config=config, vae=vae)
    latent_windows = LatentWindowDataset(cache, context_length=CONTEXT)
    pixel_windows = PixelWindowDataset(episodes, context_length=CONTEXT, config=config)
    assert len(latent_windows) == len(pixel_windows) == sum(length - 1 for length in LENGTHS)
    assert latent_windows.episode_ids == pixel_windows.episode_ids

    def batches(windows):
        return torch.utils.data.DataLoader(windows, batch_size=len(windows), shuffle=False)

    from_cache = next(iter(batches(latent_windows)))
    from_pixels = encode_pixel_windows(vae, next(iter(batches(pixel_windows))), config)
    assert (
        from_cache["context"].shape == (len(latent_windows), CONTEXT, *config.latent_shape)
        and from_cache["context"].dtype == torch.float32
    )
    assert from_cache["target"].shape == (len(latent_windows), *config.latent_shape)
    assert from_cache.keys() == from_pixels.keys()
    for key in ("actions", "context_mask", "num_padded", "episode_index", "step"):
        assert torch.equal(from_cache[key], from_pixels[key]), key
    scale = from_pixels["context"].abs().max()
    for key in ("context", "target"):  # stored as float16
        assert torch.allclose(from_cache[key], from_pixels[key], rtol=2e-3, atol=2e-3 * scale), key
    # The same split by episode id on both sides; windows survive pickling (DataLoader workers).
    train_ids, _ = split_episode_ids(cache.episode_ids, 0.25)
    train = pickle.loads(pickle.dumps(LatentWindowDataset(cache, context_length=CONTEXT, episode_ids=train_ids)))
    pixel_train = PixelWindowDataset(episodes.subset(train_ids), context_length=CONTEXT)
    assert train.episode_ids == train_ids and len(train) == len(pixel_train)
    assert torch.equal(train[3]["actions"], pixel_train[3]["actions"]) and torch.equal(
        train[3]["step"], pixel_train[3]["step"]
    )


def test_reading_the_cache_never_runs_the_encoder(setup, monkeypatch):
    calls = []
    original = Encoder.forward

    def counting_forward(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Encoder, "forward", counting_forward)
    windows = LatentWindowDataset(LatentCache(setup["cache"]), context_length=CONTEXT)  # no VAE object anywhere
    for batch in torch.utils.data.DataLoader(windows, batch_size=8, shuffle=True):
        assert batch["context"].shape[1:] == (CONTEXT, 4, 12, 16)
    assert calls == []
    # The counter does count: encoding a frame calls the encoder.
    vae = load_vae(setup["vae"])
    vae.encode(torch.zeros(1, 3, 48, 64))
    assert calls == [1]


def test_an_interrupted_run_is_finished_by_a_rerun_without_redoing_work(setup, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(setup["cache"], cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    files = [cache / shard["file"] for shard in manifest["shards"]]
    assert len(files) == 3
    # As if the run died while writing the second shard: its file is absent, a hidden temporary is left.
    reference = load_file(files[1])
    files[1].rename(files[1].with_name(f".{files[1].name}.tmp-999999999"))
    with pytest.raises(
        DatasetError, match=r"unfinished: 1 of 3 shards are not encoded yet .*Run encode_latents.py again"
    ):
        LatentCache(cache)
    before = {path: path.stat().st_mtime_ns for path in files if path.exists()}
    summary = encode(setup["dataset"], setup["vae"], cache)
    assert summary["shards_encoded"] == 1 and summary["shards_skipped"] == len(files) - 1
    assert summary["frames_encoded"] == manifest["shards"][1]["num_rows"]
    assert {path: path.stat().st_mtime_ns for path in before} == before  # the others were not rewritten
    assert all(torch.equal(tensor, reference[name]) for name, tensor in load_file(files[1]).items())
    assert not list(cache.rglob(".*.tmp-*"))
    assert len(LatentCache(cache)) == sum(LENGTHS)
    # A finished cache: nothing to do.
    assert encode(setup["dataset"], setup["vae"], cache)["frames_encoded"] == 0


def test_new_shards_of_a_growing_dataset_are_encoded_alone_and_a_stale_cache_says_so(setup, tmp_path):
    dataset, cache = tmp_path / "ds", tmp_path / "cache"
    shutil.copytree(setup["dataset"], dataset)
    shutil.copytree(setup["cache"], cache)
    write_coded_dataset(dataset, [5], worker=1, first_episode=len(LENGTHS))  # a later recording run
    with pytest.raises(DatasetError, match="lacks 1 of the dataset's shards .* run encode_latents.py again"):
        open_latent_cache(cache, dataset=open_dataset(dataset))
    summary = encode(dataset, setup["vae"], cache)
    assert summary["shards_encoded"] == 1 and summary["frames_encoded"] == 5
    assert len(open_latent_cache(cache, dataset=open_dataset(dataset)).episode_ids) == len(LENGTHS) + 1


def test_a_cache_is_refused_with_another_vae_preset_or_dataset(setup, tmp_path):
    other_vae = make_vae(tmp_path / "other_vae", seed=1)
    with pytest.raises(DatasetError, match="encoded with another VAE .* use the VAE that encoded it"):
        open_latent_cache(setup["cache"], vae=load_vae(other_vae))
    with pytest.raises(UsageError, match="already holds latents made with other settings .*VAE encoder_sha256"):
        encode(setup["dataset"], other_vae, setup["cache"])
    # A fine-tuned decoder (the paper's decoder-only fine-tuning) leaves the latents valid.
    vae = load_vae(setup["vae"])
    fingerprint = encoder_fingerprint(vae)
    with torch.no_grad():
        vae.decoder.conv_out.weight.add_(1.0)
    assert (
        encoder_fingerprint(vae)
        == fingerprint
        == encoder_fingerprint(load_vae(setup["vae"], torch_dtype=torch.float16))
    )
    open_latent_cache(setup["cache"], vae=vae)
    with pytest.raises(
        DatasetError,
        match="holds 64x48 frames as latents 4x12x16 .* the 'sd14' preset needs 320x240 frames as latents 4x32x40",
    ):
        open_latent_cache(setup["cache"], config=get_config("sd14"))
    another = tmp_path / "another"
    write_coded_dataset(another, [4], worker=7)
    with pytest.raises(DatasetError, match="made from another dataset"):
        open_latent_cache(setup["cache"], dataset=open_dataset(another))
    with pytest.raises(DatasetError, match="made from another dataset .* encode this dataset into a new folder"):
        encode(another, setup["vae"], setup["cache"])


def test_a_changed_shard_is_refused_alike_by_the_reader_and_by_a_rerun_and_the_named_fix_works(setup, tmp_path):
    dataset, cache = tmp_path / "ds", tmp_path / "cache"
    shutil.copytree(setup["dataset"], dataset)
    shutil.copytree(setup["cache"], cache)
    changed = open_dataset(dataset).files[-1]
    table = pq.read_table(changed)
    pq.write_table(table.slice(0, table.num_rows - 1), changed)  # its last episode lost its last step
    with pytest.raises(DatasetError, match="made from other versions of 1 of the dataset's shards") as by_reader:
        open_latent_cache(cache, dataset=open_dataset(dataset))
    with pytest.raises(DatasetError) as by_rerun:
        encode(dataset, setup["vae"], cache)
    assert str(by_rerun.value) == str(by_reader.value)
    named = re.search(r"delete their latent files \(e\.g\. (.+?)\) and run encode_latents.py", str(by_reader.value))
    stale = Path(named[1])
    stale.unlink()
    assert encode(dataset, setup["vae"], cache)["shards_encoded"] == 1
    assert len(open_latent_cache(cache, dataset=open_dataset(dataset))) == sum(LENGTHS) - 1


def test_cli_errors_name_the_fix(setup, tmp_path):
    small = tmp_path / "small"
    write_coded_dataset(small, [3])
    result = run_script(
        "encode_latents.py", "--preset", "sd14", "--dataset_name", small, "--output_dir", tmp_path / "out", check=False
    )
    assert result.returncode != 0
    assert (
        "error: the dataset's frames are 64x48, the 'sd14' preset expects 320x240: record with --frame_size 320x240"
        in result.stderr
    )
    with pytest.raises(UsageError, match="no pretrained VAE: pass --pretrained_vae_model_name_or_path"):
        encode_latents.main(
            encode_latents.parse_args(
                ["--preset", "tiny", "--dataset_name", str(small), "--output_dir", str(tmp_path / "out")]
            )
        )
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="is not empty and holds no latent cache"):
        encode(small, setup["vae"], tmp_path / "busy")


def test_datasets_of_another_column_layout_are_cached_through_the_column_options(setup, tmp_path):
    table = pq.read_table(open_dataset(setup["dataset"]).files[0])
    peer = tmp_path / "peer"
    peer.mkdir()
    renamed = table.select(["frame", "action", "episode_id", "step_id"]).rename_columns(
        ["frames", "actions", "episode", "step"]
    )
    renamed = renamed.append_column("frames_hq", renamed.column("frames"))  # a second image column
    pq.write_table(renamed.replace_schema_metadata({}), peer / "train-00000.parquet")
    columns = [
        "--frame_column",
        "frames",
        "--action_column",
        "actions",
        "--episode_column",
        "episode",
        "--step_column",
        "step",
        "--frame_timing",
        "before_action",
    ]
    encode(peer, setup["vae"], tmp_path / "cache", *columns, "--num_actions", "7")
    cache = open_latent_cache(
        tmp_path / "cache",
        dataset=open_dataset(peer, columns=ColumnNames("frames", "actions", "episode", "step", "before_action")),
    )
    windows = LatentWindowDataset(cache, context_length=2)  # the number of actions comes from the cache
    assert windows.num_actions == 7 and windows[2]["actions"].tolist() == [action_at(0, 1), action_at(0, 2)]
    with pytest.raises(UsageError, match="other settings .*columns"):
        encode(
            peer, setup["vae"], tmp_path / "cache", "--frame_column", "frames_hq", *columns[2:], "--num_actions", "7"
        )


def test_a_shard_damaged_inside_is_named_with_the_fix_not_a_traceback(tiny_dataset, tmp_path):
    """4 KB overwritten in the middle of a shard (its footer intact) ended in a bare 'OSError: Unexpected end
    of stream' with no file name."""
    damaged = tmp_path / "ds"
    shutil.copytree(tiny_dataset, damaged)
    shard = max(damaged.rglob("*.parquet"), key=lambda path: path.stat().st_size)
    data = bytearray(shard.read_bytes())
    footer_start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    middle = footer_start // 2
    data[middle - 2048 : middle + 2048] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    shard.write_bytes(bytes(data))
    vae = make_vae(tmp_path / "vae", seed=0)
    result = run_script(
        "encode_latents.py",
        "--preset",
        "tiny",
        "--dataset_name",
        damaged,
        "--pretrained_vae_model_name_or_path",
        vae,
        "--output_dir",
        tmp_path / "cache",
        check=False,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"{shard} is damaged" in result.stderr and "download or record it again" in result.stderr


@pytest.mark.slow
def test_two_processes_encode_disjoint_shards_into_one_cache_equal_to_one_process(setup, tmp_path):
    """accelerate launch (real gloo processes on the CPU): each process encodes every other shard; the cache
    is the single-process one."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_port",
        str(free_port()),
        str(REPO / "encode_latents.py"),
        "--preset",
        "tiny",
        "--dataset_name",
        str(setup["dataset"]),
        "--pretrained_vae_model_name_or_path",
        str(setup["vae"]),
        "--output_dir",
        str(tmp_path / "cache"),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=script_env(ACCELERATE_USE_CPU="1")
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    shards = json.loads((setup["cache"] / "manifest.json").read_text())["shards"]
    assert "process 0 of 2: encoding" in result.stdout and "process 1 of 2: encoding" in result.stdout
    for shard in shards:
        ours, reference = (load_file(str(folder / shard["file"])) for folder in (tmp_path / "cache", setup["cache"]))
        assert torch.allclose(ours["latents"].float(), reference["latents"].float(), atol=1e-3)
        assert torch.equal(ours["actions"], reference["actions"])
    dataset = open_dataset(setup["dataset"])
    assert len(open_latent_cache(tmp_path / "cache", dataset=dataset)) == len(dataset)
