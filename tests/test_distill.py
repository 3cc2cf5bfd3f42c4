"""distill.py: a 1-step student of a real (tiny) world model by distribution matching, on real recorded E1M1 frames.

The student is a normal checkpoint the engine plays at one step; the teacher never changes; the fake score learns
from the student's samples only; distribution matching pulls a wrong student back to its teacher; a run resumes
exactly; two gloo processes draw their own noise."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, free_port, record_random_episodes, run_script, script_env
from safetensors.torch import load_file

from gamengen.checkpoint import load_world_model
from gamengen.config import get_config
from gamengen.ddim import ddim_schedule
from gamengen.distillation import DistillationModels, DistillSettings, LatentDiscriminator
from gamengen.engine import GameEngine
from gamengen.vae import build_vae, save_vae
from gamengen.windows import LatentWindowDataset

DISTILL = "distill.py"
STUDENT_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> dict[str, Path]:
    """4 random-policy episodes at 64x48, a random tiny VAE, its latent cache and a teacher trained 20 steps."""
    root = tmp_path_factory.mktemp("distill")
    record_random_episodes(root / "ds", 4, 32, "--frame_size", "64x48", "--seed", 4)
    torch.manual_seed(0)
    save_vae(build_vae(get_config("tiny")), root / "vae")
    common = ["--preset", "tiny", "--dataset_name", root / "ds", "--pretrained_vae_model_name_or_path", root / "vae"]
    run_script("encode_latents.py", *common, "--output_dir", root / "lat")
    run_script(
        "train_text_to_image.py", *common, "--latents_dir", root / "lat", "--output_dir", root / "teacher",
        "--max_train_steps", 20, "--train_batch_size", 8, "--learning_rate", "1e-3", "--report_to", "none",
        "--validation_steps", 1000, "--num_validation_samples", 1,
    )  # fmt: skip
    return {"root": root, "ds": root / "ds", "lat": root / "lat", "teacher": root / "teacher"}


def distill(setup: dict[str, Path], output_dir: Path, steps: int, *extra, check: bool = True):
    args = ["--teacher_model", setup["teacher"], "--dataset_name", setup["ds"], "--latents_dir", setup["lat"]]
    args += ["--output_dir", output_dir, "--max_train_steps", steps, "--train_batch_size", 4, "--report_to", "none"]
    args += ["--learning_rate", "1e-4", "--num_validation_samples", 1, *extra]
    return run_script(DISTILL, *args, check=check)


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def student(teacher) -> tuple[Path, subprocess.CompletedProcess, str, str]:
    before = folder_digest(teacher["teacher"])
    out = teacher["root"] / "student"
    result = distill(teacher, out, 4, "--validation_steps", 2, "--checkpointing_steps", 2)
    return out, result, before, folder_digest(teacher["teacher"])


def test_the_student_is_a_checkpoint_the_engine_plays_at_one_step(student, teacher):
    out, result, _, _ = student
    bundle = load_world_model(out)
    assert (bundle.config.num_inference_steps, bundle.config.guidance_scale) == (1, 1.0)
    assert bundle.config.distillation["method"] == "dmd"
    assert bundle.config.distillation["teacher"] == str(teacher["teacher"])
    assert bundle.config.action_names == load_world_model(teacher["teacher"]).config.action_names
    engine = GameEngine.from_pretrained(out)
    from gamengen.context import episode_context
    from gamengen.episodes import open_dataset

    frames, actions, action = episode_context(open_dataset(teacher["ds"]), 0, 10, engine.context_length)
    engine.reset(frames, actions)
    frame = engine.step(action)
    assert frame.shape == (48, 64, 3) and frame.dtype.name == "uint8"
    assert engine.last_timing.unet_calls == 1  # one UNet call, no CFG branch: the 1-step student
    assert sorted(p.name for p in (out / "samples").glob("validation-*.png")) == [
        "validation-0000002.png",
        "validation-0000004.png",
    ]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == 4 and summary["validation_psnr"] > 0
    # the student moved away from the teacher
    taught = load_file(teacher["teacher"] / STUDENT_WEIGHTS)
    learned = load_file(out / STUDENT_WEIGHTS)
    assert any(not torch.equal(taught[name], learned[name]) for name in taught)


def test_the_teacher_never_changes(student):
    _, _, before, after = student
    assert before == after


def test_a_resumed_distillation_ends_where_an_uninterrupted_one_does(student, teacher):
    out, _, _, _ = student
    resumed = teacher["root"] / "student_resumed"
    distill(teacher, resumed, 2, "--validation_steps", 2, "--checkpointing_steps", 2)
    result = distill(
        teacher, resumed, 4, "--validation_steps", 2, "--checkpointing_steps", 2, "--resume_from_checkpoint", "latest"
    )
    assert "resumed from" in result.stdout and "at step 2" in result.stdout
    straight, continued = load_file(out / STUDENT_WEIGHTS), load_file(resumed / STUDENT_WEIGHTS)
    assert all(torch.equal(straight[name], continued[name]) for name in straight)


def test_a_second_run_into_the_same_folder_is_refused(student, teacher):
    out, _, _, _ = student
    before = (out / STUDENT_WEIGHTS).read_bytes()
    result = distill(teacher, out, 2, check=False)
    assert result.returncode == 2 and "--resume_from_checkpoint latest" in result.stderr
    assert (out / STUDENT_WEIGHTS).read_bytes() == before


def loss_and_gradients(models, batch, seed, teacher_bundle, settings):
    models.zero_grad(set_to_none=True)
    _, (one_step,) = ddim_schedule(teacher_bundle.scheduler, 1, torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    loss, metrics = models(
        batch, generator, teacher_bundle.model, teacher_bundle.scheduler, teacher_bundle.config, settings, one_step
    )
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in models.named_parameters() if p.grad is not None}, metrics


def test_the_fake_score_and_the_student_never_see_the_real_frames(teacher):
    """Without the adversarial term nothing trains on the target frames: two batches that differ only in their
    targets give the same loss and the same gradients. With it, the discriminator does see them."""
    import copy

    from gamengen.latent_cache import open_latent_cache

    bundle = load_world_model(teacher["teacher"])
    bundle.model.requires_grad_(False)
    windows = LatentWindowDataset(open_latent_cache(teacher["lat"]), bundle.config.context_length)
    batch = torch.utils.data.default_collate([windows[i] for i in range(4)])
    other = {**batch, "target": torch.randn_like(batch["target"]) * 3}
    settings = DistillSettings(guidance_scale=1.5, min_timestep=20, max_timestep=979)
    models = DistillationModels(copy.deepcopy(bundle.model), copy.deepcopy(bundle.model), None).requires_grad_(True)
    loss, grads, metrics = loss_and_gradients(models, batch, 0, bundle, settings)
    other_loss, other_grads, _ = loss_and_gradients(models, other, 0, bundle, settings)
    assert torch.equal(loss, other_loss) and grads.keys() == other_grads.keys()
    assert all(torch.equal(grads[name], other_grads[name]) for name in grads)
    # the student's gradients come from the distribution-matching term, the fake score's from its own loss
    assert any(name.startswith("student.") for name in grads) and any(name.startswith("fake_score.") for name in grads)
    assert set(metrics) == {"dmd_loss", "fake_score_loss"}
    # the teacher takes no gradient at all
    assert all(p.grad is None for p in bundle.model.parameters())

    adversarial = DistillSettings(guidance_scale=1.5, min_timestep=20, max_timestep=979, adversarial_weight=0.1)
    critic = LatentDiscriminator(bundle.config.model.latent_channels)
    with_critic = DistillationModels(copy.deepcopy(bundle.model), copy.deepcopy(bundle.model), critic)
    with_critic.requires_grad_(True)
    real_loss, _, _ = loss_and_gradients(with_critic, batch, 0, bundle, adversarial)
    shifted_loss, _, _ = loss_and_gradients(with_critic, other, 0, bundle, adversarial)
    assert not torch.equal(real_loss, shifted_loss)


def test_distribution_matching_alone_pulls_a_biased_student_back_to_the_teachers_frames(teacher):
    """The method's promise, on a student made wrong on purpose: its 1-step frames shifted by +2 latent units from
    the teacher's. With distribution matching alone (no regression, no real frames, no guidance) the fake score
    learns the shifted frames and the student's gradient, the fake minus the teacher's guess, pulls it back: the
    offset falls below 0.6 of its start in 30 steps. With the fake score frozen as the teacher the student has no
    signal and does not move."""
    import copy

    from gamengen.distillation import conditioning_of, one_step_sample
    from gamengen.latent_cache import open_latent_cache

    bundle = load_world_model(teacher["teacher"])
    bundle.model.requires_grad_(False)
    windows = LatentWindowDataset(open_latent_cache(teacher["lat"]), bundle.config.context_length)
    batch = torch.utils.data.default_collate([windows[i] for i in range(0, 64, 8)])
    _, (one_step,) = ddim_schedule(bundle.scheduler, 1, torch.device("cpu"))
    settings = DistillSettings(guidance_scale=1.0, min_timestep=20, max_timestep=979)

    def offset(student) -> float:
        """The mean of the student's 1-step frames minus the teacher's, from the same noises and contexts."""
        generator = torch.Generator().manual_seed(123)
        with torch.no_grad():
            context, actions = batch["context"], batch["actions"]
            _, base, conditioning = conditioning_of(context, actions, bundle.config, settings, generator)
            noise = torch.randn(base.shape, generator=generator)
            frames = [one_step_sample(m, conditioning, base, one_step, bundle.scheduler, generator, noise.clone())
                      for m in (student, bundle.model)]  # fmt: skip
        return float(frames[0].mean() - frames[1].mean())

    def train(steps: int, fake_learns: bool) -> tuple[float, float]:
        student = copy.deepcopy(bundle.model)
        with torch.no_grad():  # v-prediction at the one step's timestep: -2 in v is +2 in the frame
            student.unet.conv_out.bias -= 2.0
        models = DistillationModels(student, copy.deepcopy(bundle.model), None).requires_grad_(True)
        models.fake_score.requires_grad_(fake_learns)
        optimizer = torch.optim.Adam([p for p in models.parameters() if p.requires_grad], lr=1e-4)
        start = offset(student)
        for step in range(steps):
            loss_and_gradients(models, batch, step, bundle, settings)
            optimizer.step()
        return start, offset(student)

    start, end = train(30, fake_learns=True)
    assert start > 1.5 and abs(end) < 0.6 * start, (start, end)
    frozen_start, frozen_end = train(3, fake_learns=False)
    assert frozen_end == pytest.approx(frozen_start, abs=1e-6)


def test_own_context_frames_replace_the_newest_recorded_frame_without_seeing_it(teacher):
    """--own_context_fraction 1: every window's newest context frame is the student's own 1-step frame, made from
    the frames before it (the recorded newest frame never enters it); the older frames stay recorded."""
    import copy

    from gamengen.distillation import with_own_newest_frame
    from gamengen.latent_cache import open_latent_cache

    bundle = load_world_model(teacher["teacher"])
    windows = LatentWindowDataset(open_latent_cache(teacher["lat"]), bundle.config.context_length)
    batch = torch.utils.data.default_collate([windows[i] for i in range(4)])
    context, actions = batch["context"], batch["actions"]
    student = copy.deepcopy(bundle.model)
    _, (one_step,) = ddim_schedule(bundle.scheduler, 1, torch.device("cpu"))
    settings = DistillSettings(1.5, 20, 979, own_context_fraction=1.0)

    def own(context_latents: torch.Tensor, fraction_settings=settings) -> torch.Tensor:
        generator = torch.Generator().manual_seed(3)
        return with_own_newest_frame(
            student, context_latents, actions, bundle.config, fraction_settings, one_step, bundle.scheduler, generator
        )

    made = own(context)
    assert torch.equal(made[:, :-1], context[:, :-1])
    assert (made[:, -1] - context[:, -1]).abs().mean() > 1e-3
    recorded_newest_changed = context.clone()
    recorded_newest_changed[:, -1] = torch.randn_like(context[:, -1]) * 5
    assert torch.equal(own(recorded_newest_changed)[:, -1], made[:, -1])
    older_changed = context.clone()
    older_changed[:, -2] += 1.0
    assert not torch.equal(own(older_changed)[:, -1], made[:, -1])
    assert torch.equal(own(context, DistillSettings(1.5, 20, 979, own_context_fraction=1e-9)), context)


@pytest.mark.slow
def test_two_gloo_processes_distil_together_each_drawing_its_own_noise(teacher, tmp_path):
    out = tmp_path / "student"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1"]
    command += ["--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--multi_gpu", str(REPO / "tests" / "scripts" / "distill_under_launch.py")]
    command += ["--teacher_model", str(teacher["teacher"]), "--dataset_name", str(teacher["ds"])]
    command += ["--latents_dir", str(teacher["lat"]), "--output_dir", str(out), "--max_train_steps", "2"]
    command += ["--train_batch_size", "2", "--report_to", "none", "--validation_steps", "1000"]
    command += ["--num_validation_samples", "1"]
    env = script_env(PYTHONPATH=str(REPO), ACCELERATE_USE_CPU="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    first, second = (json.loads((out / f"draws-{p}.json").read_text()) for p in range(2))
    assert first["processes"] == second["processes"] == 2
    assert len(first["draws"]) == len(second["draws"]) == 2
    assert all(a != b for a, b in zip(first["draws"], second["draws"], strict=True))
    assert json.loads((out / "training_summary.json").read_text())["global_step"] == 2
    assert load_world_model(out).config.num_inference_steps == 1


def test_the_regression_term_pulls_the_one_step_frame_toward_the_teachers_own_frame(teacher, capsys):
    """--regression_weight W adds W x the distance between the student's 1-step frame and the teacher's 4-step frame
    from the same noise: the distribution-matching term is unchanged (same draws), and training on it brings the
    student's frame toward the teacher's. A negative weight is refused."""
    import copy

    from gamengen.latent_cache import open_latent_cache

    bundle = load_world_model(teacher["teacher"])
    bundle.model.requires_grad_(False)
    windows = LatentWindowDataset(open_latent_cache(teacher["lat"]), bundle.config.context_length)
    batch = torch.utils.data.default_collate([windows[i] for i in range(4)])
    _, steps = ddim_schedule(bundle.scheduler, bundle.config.num_inference_steps, torch.device("cpu"))
    plain = DistillSettings(guidance_scale=1.5, min_timestep=20, max_timestep=979)
    regressed = DistillSettings(1.5, 20, 979, regression_weight=100.0, teacher_steps=tuple(steps))
    models = DistillationModels(copy.deepcopy(bundle.model), copy.deepcopy(bundle.model), None).requires_grad_(True)
    loss, _, metrics = loss_and_gradients(models, batch, 0, bundle, plain)
    with_regression, _, regression_metrics = loss_and_gradients(models, batch, 0, bundle, regressed)
    assert "regression_loss" not in metrics and torch.equal(metrics["dmd_loss"], regression_metrics["dmd_loss"])
    distance = regression_metrics["regression_loss"]
    assert distance > 0 and torch.allclose(with_regression - loss, 100.0 * distance, rtol=1e-4)

    optimizer = torch.optim.Adam(models.student.parameters(), lr=1e-4)
    for _ in range(5):
        loss_and_gradients(models, batch, 0, bundle, regressed)
        optimizer.step()
    _, _, after = loss_and_gradients(models, batch, 0, bundle, regressed)
    assert after["regression_loss"] < 0.8 * distance, (float(distance), float(after["regression_loss"]))

    import distill

    with pytest.raises(SystemExit):
        distill.parse_args(
            ["--teacher_model", "t", "--dataset_name", "d", "--output_dir", "o", "--regression_weight", "-1"]
        )
    assert "--regression_weight must be 0 (off) or positive" in capsys.readouterr().err
