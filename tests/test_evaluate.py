"""evaluate.py and gamengen/metrics.py: metrics with known answers, honest baselines, the report files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_script, save_tiny_checkpoint
from PIL import Image, ImageFilter

import evaluate
from gamengen import evaluation as measures
from gamengen.actions import motion_kind
from gamengen.checkpoint import save_world_model
from gamengen.config import get_world_model_config
from gamengen.context import episode_frames
from gamengen.engine import EngineError, GameEngine
from gamengen.episodes import open_dataset
from gamengen.layout import DatasetError
from gamengen.metrics import alexnet_weights_path, gmsd, load_lpips, psnr, sharpness, ssim, status_bar_rows
from gamengen.model import build_world_model
from gamengen.scores import Scorer
from gamengen.vae import build_vae, frames_to_tensor

FAST = ("--max_windows", 8, "--horizon", 6, "--timing_frames", 2, "--num_examples", 3)


def evaluate_options(model_folder: Path, dataset: Path, output_dir: Path, *more: object) -> tuple[object, ...]:
    """evaluate.py's checkpoint, dataset and output folder, then ``more``."""
    return ("--model_folder", model_folder, "--dataset_name", dataset, "--output_dir", output_dir, *more)


# -- metrics --------------------------------------------------------------------------------------


def test_psnr_has_known_answers_on_the_full_pixel_range():
    frames = torch.rand(3, 3, 12, 16) * 2 - 1
    assert torch.allclose(psnr(frames, frames), torch.full((3,), 100.0))  # identical: the cap
    shifted = (frames * 0.5) + 0.2  # stays inside [-1, 1]
    assert torch.allclose(
        psnr(shifted, frames * 0.5), torch.full((3,), 20.0), atol=1e-3
    )  # 0.2 of a range of 2 = 0.1 -> 20 dB
    black, white = (
        frames_to_tensor(np.zeros((1, 4, 4, 3), np.uint8)),
        frames_to_tensor(np.full((1, 4, 4, 3), 255, np.uint8)),
    )
    assert float(psnr(black, white)) == pytest.approx(0.0, abs=1e-4)  # uint8 frames: 0 vs 255 is the whole range


def test_ssim_is_one_for_identical_frames_and_falls_with_noise():
    generator = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 3, 48, 64, generator=generator) * 2 - 1
    assert torch.allclose(ssim(frames, frames), torch.ones(2), atol=1e-5)
    noisy = [
        ssim((frames + sigma * torch.randn(frames.shape, generator=generator)).clamp(-1, 1), frames).mean()
        for sigma in (0.05, 0.2, 0.8)
    ]
    assert 1 > noisy[0] > noisy[1] > noisy[2] > -1


def test_ssim_of_two_flat_frames_is_the_luminance_term():
    # No structure: the contrast/structure term is C2 / C2 = 1, so SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1) on [0, 1]
    # pixels.
    a, b = torch.full((1, 3, 20, 20), -0.5), torch.full((1, 3, 20, 20), 0.5)  # 0.25 and 0.75
    expected = (2 * 0.25 * 0.75 + 0.01**2) / (0.25**2 + 0.75**2 + 0.01**2)
    assert float(ssim(a, b)) == pytest.approx(expected, rel=1e-4)


def test_lpips_says_why_it_is_not_computed_when_it_cannot_be(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch cache: no AlexNet weights
    weights = alexnet_weights_path()
    assert weights.parent == tmp_path / "hub" / "checkpoints"
    metric, reason = load_lpips()
    assert metric is None and f"the AlexNet weights are not at {weights}" in reason
    try:
        import lpips  # noqa: F401
    except ImportError:
        assert "the lpips package is not installed" in reason
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"not a checkpoint")
    metric, reason = load_lpips()
    assert metric is None and "AlexNet weights are not at" not in reason  # the weights are there: what else is missing
    assert "the lpips package is not installed" in reason or "LPIPS could not be loaded" in reason


def real_frames(dataset_path: Path) -> torch.Tensor:
    """Every frame of the first episode of a recorded dataset, in [-1, 1]."""
    dataset = open_dataset(dataset_path)
    return frames_to_tensor(episode_frames(dataset, 0, 0, dataset.episodes[0].length))


def blurred(frames: torch.Tensor, radius: float) -> torch.Tensor:
    pixels = ((frames.permute(0, 2, 3, 1) + 1) * 127.5).round().byte().numpy()
    blur = ImageFilter.GaussianBlur(radius)
    return frames_to_tensor(np.stack([np.asarray(Image.fromarray(p).filter(blur)) for p in pixels]))


def test_the_status_bar_rows_are_the_ones_that_stay_still_while_the_view_moves(tiny_dataset):
    frames = real_frames(tiny_dataset)  # 64x48: the status bar is the bottom 8 rows
    rows = status_bar_rows(frames.shape[-2])
    change_per_row = frames.std(0).mean(dim=(0, 2))  # how much each row changes over the episode
    assert rows == 8 and status_bar_rows(240) == 39 and status_bar_rows(200) == 32
    assert change_per_row[-rows:].max() < 0.02 < 0.1 < change_per_row[-rows - 4 : -rows].min()


def test_at_320x240_the_status_bar_is_32_still_rows_all_left_out(random_dataset):
    frames = real_frames(random_dataset)  # ViZDoom draws the bar unscaled at 320 wide
    change_per_row = frames.std(0).mean(dim=(0, 2))
    assert change_per_row[-32:].max() < 0.03 < 0.1 < change_per_row[-40:-32].min()
    assert status_bar_rows(frames.shape[-2]) >= 32  # the rule leaves out a few view rows, never a bar row


def test_a_brown_blur_fools_psnr_but_not_gmsd_or_sharpness(random_dataset):
    """The quickstart model's failure: a blur of the likely frames scores about copy-last's PSNR."""
    frames = real_frames(random_dataset)
    previous, target = frames[:-1], frames[1:]
    blur = frames.mean(0, keepdim=True).expand_as(target)  # the episode's average frame
    assert abs(float(psnr(blur, target).mean() - psnr(previous, target).mean())) < 1.0  # PSNR can hardly tell
    assert float(gmsd(blur, target).mean()) > float(gmsd(previous, target).mean()) + 0.02
    assert float(sharpness(blur, target).mean()) < 0.2 < 0.8 < float(sharpness(previous, target).mean())


def test_sharpness_is_one_for_real_frames_below_for_blur_above_for_noise(tiny_dataset):
    frames = real_frames(tiny_dataset)
    generator = torch.Generator().manual_seed(0)
    noisy = (frames + 0.1 * torch.randn(frames.shape, generator=generator)).clamp(-1, 1)
    assert torch.allclose(sharpness(frames, frames), torch.ones(len(frames)))
    assert (sharpness(blurred(frames, 1.0), frames) < 0.8).all()
    assert (sharpness(noisy, frames) > 1.05).all()
    hud_only = frames.clone()
    hud_only[..., -status_bar_rows(48) :, :] = 1.0  # a white status bar: not part of the view, not counted
    assert torch.allclose(sharpness(hud_only, frames), torch.ones(len(frames)))


def test_gmsd_ranks_a_blurred_copy_below_the_original(tiny_dataset):
    frames = real_frames(tiny_dataset)
    previous, target = frames[:-1], frames[1:]
    assert torch.allclose(gmsd(frames, frames), torch.zeros(len(frames)))
    slight, strong = gmsd(blurred(frames, 0.7), frames), gmsd(blurred(frames, 1.5), frames)
    assert (slight > 0).all() and (strong > slight).all()
    # the copy-last prediction, blurred, is worse than the sharp copy-last: blur is not rewarded
    assert gmsd(blurred(previous, 1.5), target).mean() > gmsd(previous, target).mean()


@pytest.fixture
def one_thread():
    """What the scripts do (--num_threads 1): torch threads spin-wait against other busy processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- windows and shuffles -----------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3, 7, 50])
def test_shuffled_actions_come_from_another_window_every_time(count):
    order = measures.derangement(count, seed=count)
    assert sorted(order.tolist()) == list(range(count))  # a permutation: every action sequence is used once
    assert all(order[i] != i for i in range(count))  # no window keeps its own actions


def test_actions_are_grouped_by_the_change_they_make():
    from common.envs import ACTION_NAMES

    kinds = {name: motion_kind(name) for name in ACTION_NAMES}
    assert kinds["TURN_LEFT"] == kinds["FORWARD_TURN_RIGHT"] == kinds["TURN_LEFT_ATTACK"] == "turning"
    assert kinds["FORWARD"] == kinds["STRAFE_LEFT"] == kinds["BACKWARD"] == kinds["FORWARD_ATTACK"] == "moving"
    assert kinds["NOOP"] == "still" and kinds["ATTACK"] == kinds["USE"] == "other"


# -- the script ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluation(tiny_dataset, tiny_checkpoint, tmp_path_factory) -> tuple[Path, dict]:
    """One evaluation of the random-init checkpoint, run as a user runs it."""
    out = tmp_path_factory.mktemp("eval")
    result = run_script("evaluate.py", *evaluate_options(tiny_checkpoint, tiny_dataset, out), *FAST)
    assert "teacher-forced PSNR" in result.stdout and "wrote" in result.stdout
    return out, json.loads((out / "metrics.json").read_text())


def test_evaluation_writes_metrics_report_and_plots_that_parse(evaluation):
    out, metrics = evaluation
    (model,) = metrics["models"]
    assert (
        len(metrics["windows"]) == 8
        and len(model["drift"]["psnr"]) == 6
        and len(metrics["baselines"]["copy_last"]["drift"]["psnr"]) == 6
    )
    assert 0 < model["teacher_forced"]["psnr"] < 100 and -1 <= model["teacher_forced"]["ssim"] <= 1
    above = [
        m > c for m, c in zip(model["drift"]["psnr"], metrics["baselines"]["copy_last"]["drift"]["psnr"], strict=True)
    ]
    assert model["drift_frames_above_copy_last"] == sum(above) and model["drift_steps_above_copy_last"] == (
        above + [False]
    ).index(False)
    assert model["timing"]["fps"] > 0 and model["timing"]["unet_ms"] > 0 and model["timing"]["decode_ms"] > 0
    assert (
        model["engine"]["num_inference_steps"] == 4 and model["engine"]["guidance_scale"] == 1.5
    )  # the sampling is recorded
    assert metrics["lpips"]["computed"] or metrics["lpips"]["reason"]
    # the blur-honest measures, for every pass and every drift step
    passes = [model["teacher_forced"], model["shuffled_actions"], model["vae_reconstruction"]]
    passes.append(metrics["baselines"]["copy_last"]["teacher_forced"])
    for summary in passes:
        assert summary["sharpness"] > 0 and 0 <= summary["gmsd"] <= 1 and summary["by_category"]
        assert all("sharpness" in c and "gmsd" in c for c in summary["by_category"].values())
    assert len(model["drift"]["sharpness"]) == len(model["drift"]["gmsd"]) == 6
    assert len(model["per_window"]["model"]["sharpness"]) == 8 and metrics["settings"]["status_bar_rows"] == 8
    assert model["teacher_forced"]["sharpness"] > 1.5  # a random-init UNet draws noise: far noisier than the game
    assert "random_backbone_distance" not in model["teacher_forced"]
    report = (out / "report.md").read_text()
    assert "## Blur-honest measures" in report and "| sharpness | GMSD |" in report and "drift sharpness @6" in report
    assert (
        "| paper (SD v1.4, 320x240, TPU-v5) | 29.43 |" in report
        and "copy last context frame" in report
        and "shuffled actions" in report
    )
    assert "LPIPS:" in report
    with Image.open(out / "drift.png") as drift, Image.open(out / "examples.png") as examples:
        assert drift.size[0] > 600 and examples.size[1] >= 3 * 48 * 4  # 3 example rows of 4x-upscaled 64x48 frames


def test_the_copy_last_baseline_repeats_the_last_context_frame_not_the_target(evaluation, tiny_dataset):
    _, metrics = evaluation
    dataset = open_dataset(tiny_dataset)
    windows = [(dataset.episode_ids.index(w["episode_id"]), w["step"]) for w in metrics["windows"]]

    def mean_psnr(offset: int) -> float:
        previous = np.stack([episode_frames(dataset, e, s + offset, s + offset + 1)[0] for e, s in windows])
        truth = np.stack([episode_frames(dataset, e, s, s + 1)[0] for e, s in windows])
        return float(psnr(frames_to_tensor(previous), frames_to_tensor(truth)).mean())

    reported = metrics["baselines"]["copy_last"]["teacher_forced"]["psnr"]
    assert reported == pytest.approx(mean_psnr(-1), abs=1e-4)  # frame t-1 vs frame t
    assert mean_psnr(0) == 100.0 and reported < 60  # not the target itself


def test_shuffled_actions_change_only_the_actions(tiny_dataset, tmp_path, one_thread):
    """An action-sensitive model: fed another window's actions, its predictions change; fed its own
    (the identity 'shuffle'), they are identical: the noise is the same, only the actions differ."""
    dataset = open_dataset(tiny_dataset)
    torch.manual_seed(0)
    config = get_world_model_config("tiny", dataset.action_names)
    model = build_world_model(config)
    with torch.no_grad():
        model.action_embedding.weight.mul_(200.0)
    engine = GameEngine.from_pretrained(save_world_model(tmp_path / "wm", model, build_vae(config.model), config))
    args = evaluate.parse_args(["--model_folder", "x", "--dataset_name", str(tiny_dataset), "--batch_size", "4"])
    windows = measures.choose_windows(dataset, [0, 1], engine.context_length, 8, dataset.action_names)
    same = measures.teacher_forced(engine, dataset, windows, np.arange(len(windows)), args, Scorer(), "same")
    assert same.model.psnr == same.shuffled_actions.psnr
    order = measures.derangement(len(windows), 0)
    shuffled = measures.teacher_forced(engine, dataset, windows, order, args, Scorer(), "shuffled")
    assert shuffled.model.psnr == same.model.psnr  # the true actions give the same frames again

    def actions(window):
        return dataset.actions(window.episode)[window.step - 4 : window.step]

    changed = [i for i, window in enumerate(windows) if not np.array_equal(actions(window), actions(windows[order[i]]))]
    assert changed, "the random episodes should give windows with different action sequences"
    for i in changed:
        assert not np.array_equal(shuffled.predictions[i], shuffled.shuffled_predictions[i])


def test_compare_puts_every_model_in_one_table_on_the_same_windows(tiny_dataset, tiny_checkpoint, tmp_path, in_process):
    other = save_tiny_checkpoint(tmp_path / "other", open_dataset(tiny_dataset).action_names, seed=1)
    out = tmp_path / "eval"
    results = in_process(
        evaluate,
        *(
            "--model_folder",
            tiny_checkpoint,
            "--compare",
            other,
            tiny_checkpoint,
            "--dataset_name",
            tiny_dataset,
            "--output_dir",
            out,
            *FAST,
        ),
        "--lpips_random_backbone",
    )
    names = [m.name for m in results.models]
    assert names == ["wm", "other", "wm (2)"]  # labels stay distinct
    report = (out / "report.md").read_text()
    for name in names:
        assert f"| **{name}** |" in report and f"| {name}, shuffled actions |" in report
    saved = json.loads((out / "metrics.json").read_text())
    assert [m["name"] for m in saved["models"]] == names and len(saved["windows"]) == 8
    # the same checkpoint twice, on the same windows with the same seed: the same numbers
    assert saved["models"][0]["teacher_forced"]["psnr"] == saved["models"][2]["teacher_forced"]["psnr"]
    # the untrained stand-in for LPIPS runs through every pass under its own name, never as LPIPS
    assert saved["lpips"]["computed"] is False and saved["lpips"]["stand_in"] == "random_backbone_distance"
    for model in saved["models"]:
        assert "lpips" not in model["teacher_forced"] and model["teacher_forced"]["random_backbone_distance"] > 0
        assert len(model["drift"]["random_backbone_distance"]) == 6 and "lpips" not in model["drift"]
    assert "random-backbone distance (NOT LPIPS)" in report
    assert "LPIPS: not computed: replaced by an untrained network" in report


def test_the_trainers_held_out_episodes_are_used_by_default(tiny_dataset, tmp_path, in_process):
    dataset = open_dataset(tiny_dataset)
    torch.manual_seed(0)
    heldout = dataset.episode_ids[1]
    config = get_world_model_config(
        "tiny", dataset.action_names, dataset={"name": str(tiny_dataset), "heldout_episodes": [heldout]}
    )
    folder = save_world_model(tmp_path / "wm", build_world_model(config), build_vae(config.model), config)
    results = in_process(
        evaluate, "--model_folder", folder, "--dataset_name", tiny_dataset, "--output_dir", tmp_path / "eval", *FAST
    )
    assert results.episodes == [heldout] and "held out" in results.episode_source
    assert {w.episode_id for w in results.windows} == {heldout}


# -- errors --------------------------------------------------------------------------------------


def test_an_earlier_evaluation_is_not_overwritten(evaluation, tiny_dataset, tiny_checkpoint):
    out, metrics = evaluation
    before = (out / "metrics.json").read_text()
    result = run_script("evaluate.py", *evaluate_options(tiny_checkpoint, tiny_dataset, out), *FAST, check=False)
    assert result.returncode == 1 and "already holds an evaluation" in result.stderr and "--overwrite" in result.stderr
    assert "Traceback" not in result.stderr and (out / "metrics.json").read_text() == before


def test_a_checkpoint_of_other_actions_is_refused_before_any_work(tiny_dataset, tiny_checkpoint, tmp_path, in_process):
    other = save_tiny_checkpoint(tmp_path / "other", ["NOOP", "FORWARD", "TURN_LEFT"])
    with pytest.raises(DatasetError, match="other.*the dataset's actions .* are not the checkpoint's"):
        in_process(evaluate, *evaluate_options(tiny_checkpoint, tiny_dataset, tmp_path / "e", "--compare", other))
    assert not (tmp_path / "e").exists()
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--model_folder", "a", "--compare", "b", "--names", "only-one", "--dataset_name", "d"])
    with pytest.raises(EngineError):
        in_process(evaluate, *evaluate_options(tiny_checkpoint, tiny_dataset, tmp_path / "e", "--noise_bucket", 99))


def test_an_idm_reports_action_following_for_every_pass(tiny_dataset, tiny_checkpoint, tmp_path):
    idm = tmp_path / "idm"
    run_script(
        "train_idm.py",
        "--dataset_name",
        tiny_dataset,
        "--output_dir",
        idm,
        "--max_train_steps",
        5,
        "--train_batch_size",
        8,
    )
    out = tmp_path / "eval"
    run_script("evaluate.py", *evaluate_options(tiny_checkpoint, tiny_dataset, out, "--idm", idm), *FAST)
    following = json.loads((out / "metrics.json").read_text())["models"][0]["action_following"]
    for name in ("real", "teacher_forced", "shuffled_given", "shuffled_recorded", "drift"):
        block = following[name]
        assert (
            0 <= block["action_accuracy"] <= 1 and 0 <= block["category_accuracy"] <= 1 and block["num_transitions"] > 0
        )
    assert following["real"]["num_transitions"] == 8 and following["drift"]["num_transitions"] > 0
    report = (out / "report.md").read_text()
    assert "## Action following (inverse-dynamics model)" in report and "real transitions (the IDM's ceiling)" in report
    real = following["real"]["action_accuracy"]
    if real > 0:
        expected = following["teacher_forced"]["action_accuracy"] / real
        assert following["relative_accuracy"] == pytest.approx(expected)
    else:  # an IDM this short may read no real transition right: no ratio then, and the report says n/a
        assert following["relative_accuracy"] is None and "| teacher-forced / real | n/a |" in report


def test_an_idm_that_reads_no_real_transition_right_gives_no_ratio_instead_of_a_huge_one():
    """The smoke run's IDM (a few steps) may score 0 on the real transitions: its ratio printed 125000000.00."""
    from gamengen.evaluation import accuracy_ratio, ratio_text

    assert accuracy_ratio(0.125, 0.0) is None and ratio_text(accuracy_ratio(0.125, 0.0)) == "n/a"
    assert accuracy_ratio(0.125, 0.25) == 0.5 and ratio_text(accuracy_ratio(0.125, 0.25)) == "0.50"


def test_without_an_idm_the_report_says_action_following_was_not_measured(evaluation):
    out, metrics = evaluation
    report = (out / "report.md").read_text()
    assert "action_following" not in metrics["models"][0]
    assert "Action following (inverse-dynamics model): not measured (pass --idm" in report
