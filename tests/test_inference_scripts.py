"""run_inference.py and run_autoregressive.py on real recorded 64x48 frames and a tiny random-init checkpoint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_STEPS, run_script, save_tiny_checkpoint
from PIL import Image

import run_autoregressive
import run_inference
from gamengen.engine import EngineError
from gamengen.episodes import open_dataset
from gamengen.layout import DatasetError

STEPS = TINY_STEPS  # per recorded episode


@pytest.fixture(scope="module")
def dataset(tiny_dataset) -> Path:
    return tiny_dataset


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint


save_checkpoint = save_tiny_checkpoint


def rollout_options(model_folder: Path, dataset: Path, output_dir: Path, *more: object) -> tuple[object, ...]:
    """run_autoregressive.py's checkpoint, dataset and output folder, then ``more``."""
    return ("--model_folder", model_folder, "--dataset_name", dataset, "--output_dir", output_dir, *more)


def run_autoregressive_script(model_folder: Path, dataset: Path, output_dir: Path) -> subprocess.CompletedProcess:
    """run_autoregressive.py in a process of its own, as a user runs it; its failure is the test's to check."""
    return run_script("run_autoregressive.py", *rollout_options(model_folder, dataset, output_dir), check=False)


def gif_frames(path: Path) -> list[Image.Image]:
    with Image.open(path) as gif:
        frames = []
        for index in range(gif.n_frames):
            gif.seek(index)
            frames.append(gif.convert("RGB"))
        return frames


def numpy_psnr(frame: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of uint8 frames, peak 255: an independent reference for the scripts' torch metric."""
    mse = np.mean((frame.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def test_run_inference_saves_truth_prediction_and_difference_and_prints_psnr(dataset, checkpoint, tmp_path):
    output = tmp_path / "pred.png"
    result = run_script(
        "run_inference.py",
        "--model_folder",
        checkpoint,
        "--dataset_name",
        dataset,
        "--episode",
        1,
        "--step",
        9,
        "--output",
        output,
    )
    assert f"saved {output}" in result.stdout
    assert "predicted from frames 5..8" in result.stdout  # context 4: frames t-4 .. t-1
    with Image.open(output) as image:
        width, height = image.size
        picture = np.asarray(image.convert("RGB"))
    assert width == 3 * 64 * 4 + 2 * 4  # truth | prediction | difference, upscaled 4x, 4-pixel gaps
    assert height >= 48 * 4

    # The printed PSNRs are the image's: recomputed here from its tiles (below a 14-pixel title bar, 4x blocks)
    # and the recorded frames, with numpy.
    truth, prediction, difference = (picture[14 : 14 + 192 : 4, x : x + 256 : 4] for x in (0, 260, 520))
    recorded = open_dataset(dataset)
    np.testing.assert_array_equal(truth, recorded.frame(recorded.row_index(1, 9)))
    np.testing.assert_array_equal(difference, np.abs(prediction.astype(int) - truth.astype(int)))
    score, copy_last = re.search(
        r"PSNR: ([\d.]+) dB \(repeating the last context frame: ([\d.]+) dB\)", result.stdout
    ).groups()
    assert float(score) == pytest.approx(numpy_psnr(prediction, truth), abs=0.006)
    assert float(copy_last) == pytest.approx(numpy_psnr(recorded.frame(recorded.row_index(1, 8)), truth), abs=0.006)


def test_run_autoregressive_writes_every_generated_frame_beside_the_truth_and_prints_fps(dataset, checkpoint, tmp_path):
    result = run_script(
        "run_autoregressive.py",
        "--model_folder",
        checkpoint,
        "--dataset_name",
        dataset,
        "--episodes",
        0,
        1,
        "--num_frames",
        12,
        "--output_dir",
        tmp_path,
        "--save_arrays",
    )
    assert result.stdout.count("FPS") >= 2 and "unet" in result.stdout and "decode" in result.stdout
    summary = json.loads((tmp_path / "rollouts.json").read_text())
    assert [r["name"] for r in summary["rollouts"]] == ["ep0_recorded", "ep1_recorded"]
    recorded = open_dataset(dataset)
    for episode, rollout in enumerate(summary["rollouts"]):
        frames = gif_frames(Path(rollout["gif"]))
        assert len(frames) == 12  # EVERY generated frame, none merged
        assert frames[0].size[0] == 2 * 64 * 4 + 4  # generated | truth
        assert len(rollout["psnr"]) == 12 and rollout["start_step"] == 4 and rollout["fps"] > 0
        assert len(rollout["actions"]) == 12
        # Each frame's PSNR is the generated frame's against the recorded one of the same step (steps 4..15).
        generated = np.load(tmp_path / f"{rollout['name']}.npz")["generated"]
        expected = [numpy_psnr(generated[i], recorded.frame(recorded.row_index(episode, 4 + i))) for i in range(12)]
        assert rollout["psnr"] == pytest.approx(expected, abs=1e-3)
        assert f"mean {np.mean(rollout['psnr']):.2f} dB" in result.stdout  # what the script printed


def test_scripted_actions_roll_out_every_script_from_every_episode(dataset, checkpoint, tmp_path, in_process):
    results = in_process(
        run_autoregressive,
        *rollout_options(checkpoint, dataset, tmp_path, "--no_mp4"),
        *("--actions", "FORWARD*3,turn_left*2", "ATTACK", "--num_frames", 7, "--start_step", 2),
    )
    assert [r["name"] for r in results] == ["ep0_script0", "ep0_script1"]
    assert results[0]["actions"] == ["FORWARD"] * 3 + ["TURN_LEFT"] * 2 + ["FORWARD"] * 2  # a shorter script repeats
    assert results[1]["actions"] == ["ATTACK"] * 7
    for result in results:
        frames = gif_frames(Path(result["gif"]))
        assert len(frames) == 7 and frames[0].size[0] == 64 * 4  # no ground truth for invented actions
        assert result["psnr"] is None


def test_a_script_without_num_frames_plays_it_once(dataset, checkpoint, tmp_path, in_process):
    (result,) = in_process(
        run_autoregressive,
        *rollout_options(checkpoint, dataset, tmp_path),
        "--actions",
        "FORWARD*2,USE",
        "--save_arrays",
    )
    assert result["num_frames"] == 3 and len(gif_frames(Path(result["gif"]))) == 3
    import numpy as np

    arrays = np.load(tmp_path / "ep0_script0.npz")
    assert arrays["generated"].shape == (3, 48, 64, 3) and arrays["actions"].tolist() == [1, 1, 8]


# -- errors --------------------------------------------------------------------------------------


def test_an_unknown_action_name_is_refused_with_the_action_list(dataset, checkpoint, tmp_path, in_process):
    with pytest.raises(EngineError, match="unknown action 'JUMP': the model's actions are NOOP, FORWARD, BACKWARD"):
        in_process(
            run_autoregressive,
            *rollout_options(checkpoint, dataset, tmp_path),
            "--actions",
            "FORWARD*2,JUMP",
        )
    assert not list(tmp_path.glob("*.gif"))  # refused before anything was generated


def test_a_dataset_with_other_actions_or_frame_size_is_refused(dataset, tmp_path, in_process):
    other_actions = save_checkpoint(tmp_path / "other_actions", ["NOOP", "FORWARD", "TURN_LEFT"])
    with pytest.raises(
        DatasetError, match="the dataset's actions .* are not the checkpoint's \\(NOOP, FORWARD, TURN_LEFT\\)"
    ):
        in_process(
            run_inference, "--model_folder", other_actions, "--dataset_name", dataset, "--output", tmp_path / "x.png"
        )
    names = open_dataset(dataset).action_names
    other_size = save_checkpoint(
        tmp_path / "other_size", names, frame_width=80, frame_height=64, padded_width=80, padded_height=64
    )
    with pytest.raises(
        DatasetError, match="the dataset's frames are 64x48, the 'tiny' preset expects 80x64.*trained on 80x64 frames"
    ):
        in_process(
            run_autoregressive, "--model_folder", other_size, "--dataset_name", dataset, "--output_dir", tmp_path
        )


def test_a_short_context_is_padded_or_refused(dataset, checkpoint, tmp_path, in_process):
    args = ("--model_folder", checkpoint, "--dataset_name", dataset, "--step", 2, "--output", tmp_path / "p.png")
    assert in_process(run_inference, *args)["step"] == 2  # 2 real frames, padded to 4 as in training
    with pytest.raises(EngineError, match="the context has 2 frames, the model's context is 4"):
        in_process(run_inference, *args, "--no_pad_context")


def test_a_recorded_rollout_longer_than_the_episode_is_refused(dataset, checkpoint, tmp_path, in_process):
    with pytest.raises(
        DatasetError,
        match=f"has {STEPS} steps: with recorded actions, 40 frames from step 4 need 44.*at most --num_frames 36",
    ):
        in_process(
            run_autoregressive,
            *rollout_options(checkpoint, dataset, tmp_path),
            "--num_frames",
            40,
        )


def test_a_checkpoint_with_a_missing_part_is_refused_with_a_message(dataset, checkpoint, tmp_path):
    broken = tmp_path / "wm"
    shutil.copytree(checkpoint, broken)
    shutil.rmtree(broken / "vae")
    result = run_autoregressive_script(broken, dataset, tmp_path)
    assert result.returncode == 1
    assert (
        "error:" in result.stderr and "not a complete world-model checkpoint: missing vae/config.json" in result.stderr
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("part", ["unet", "vae", "action_embedding.safetensors"])
def test_a_truncated_weights_file_is_named_with_what_to_do(dataset, checkpoint, tmp_path, part):
    broken = tmp_path / "wm"
    shutil.copytree(checkpoint, broken)
    weights = broken / part if part.endswith(".safetensors") else next((broken / part).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted copy
    result = run_autoregressive_script(broken, dataset, tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"could not read the weights in {weights}" in result.stderr and "damaged or incomplete" in result.stderr


def test_a_second_run_into_the_same_output_dir_is_refused_unless_overwrite(dataset, checkpoint, tmp_path, in_process):
    options = rollout_options(checkpoint, dataset, tmp_path, "--num_frames", 2, "--no_mp4")
    in_process(run_autoregressive, *options)
    first = (tmp_path / "rollouts.json").read_bytes()
    with pytest.raises(EngineError, match="already holds rollouts.*pass --overwrite"):
        in_process(run_autoregressive, *options, "--seed", 1)
    assert (tmp_path / "rollouts.json").read_bytes() == first  # the earlier run is untouched
    in_process(run_autoregressive, *options, "--seed", 1, "--overwrite")
    assert json.loads((tmp_path / "rollouts.json").read_text())["seed"] == 1


def test_an_action_id_beyond_the_model_names_a_fix_this_script_has(dataset, checkpoint, tmp_path):
    """The error told users of scripts without a --num_actions option to pass --num_actions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "ds"
    shutil.copytree(dataset, bad)
    shard = sorted(bad.rglob("*.parquet"))[0]
    table = pq.read_table(shard)
    column = table.schema.get_field_index("action")
    actions = table.column(column).to_pylist()
    actions[3] = 99
    pq.write_table(table.set_column(column, table.schema.field(column), pa.array(actions, pa.int16())), shard)
    result = run_autoregressive_script(checkpoint, bad, tmp_path / "out")
    assert result.returncode == 1 and "has action id 99" in result.stderr, result.stderr[-2000:]
    assert (
        "this checkpoint's" in result.stderr and "are fixed" in result.stderr and "--num_actions" not in result.stderr
    )
