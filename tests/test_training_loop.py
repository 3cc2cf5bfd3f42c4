"""gamengen.training.train, the loop both trainers share: an interrupted run that is resumed ends where an
uninterrupted one does, checkpoints are complete and limited, hooks run when they should."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from gamengen.run_folder import UsageError, check_run_dir, list_checkpoints
from gamengen.training import Hooks, LoopOptions, train

ACCUMULATION = 2  # micro-batches per optimisation step: 5 batches of 2 -> 3 steps per epoch


def run_to(output_dir: Path, max_train_steps: int, resume: str | None = None, limit: int | None = None):
    """Fit a linear model to fixed data (no randomness, no shuffling) up to ``max_train_steps``."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    inputs = torch.arange(30, dtype=torch.float32).reshape(10, 3) / 30
    data = [(x, x.sum(0, keepdim=True) * 2 - 1) for x in inputs]
    dataloader = torch.utils.data.DataLoader(data, batch_size=2, shuffle=False)
    accelerator = Accelerator(
        gradient_accumulation_steps=ACCUMULATION, project_config=ProjectConfiguration(project_dir=str(output_dir))
    )
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)

    def loss_of_batch(batch, generator):
        x, y = batch
        error = model(x) - y
        return error.pow(2).mean(), {"mean_abs_error": error.abs().mean()}

    validated, hooked = [], []
    hooks = Hooks(
        checkpoint_files={"note.json": {"what": "test"}},
        after_step=hooked.append,
        validate=lambda step: validated.append(step) or float(step),
    )
    options = LoopOptions(
        output_dir=output_dir,
        project="test",
        max_train_steps=max_train_steps,
        gradient_accumulation_steps=ACCUMULATION,
        max_grad_norm=1.0,
        checkpointing_steps=2,
        checkpoints_total_limit=limit,
        validation_steps=3,
        resume_from_checkpoint=resume,
        seed=0,
    )
    run = train(accelerator, options, model, optimizer, lr_scheduler, dataloader, loss_of_batch, hooks)
    weights = torch.cat([p.detach().flatten() for p in accelerator.unwrap_model(model).parameters()])
    return run, weights, validated, hooked


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    straight, straight_weights, validated, hooked = run_to(tmp_path / "straight", 7)
    assert (straight.start_step, straight.step, len(straight.losses)) == (0, 7, 7)
    assert hooked == list(range(1, 8)) and validated == [3, 6]
    assert straight.losses[-1] < straight.losses[0]
    assert [p.name for p in list_checkpoints(tmp_path / "straight")] == [f"checkpoint-{s}" for s in (2, 4, 6, 7)]

    first, _, _, _ = run_to(tmp_path / "resumed", 4)  # stops in the second epoch, after 2 of its 5 batches
    resumed, resumed_weights, validated, _ = run_to(tmp_path / "resumed", 7, resume="latest")
    assert (first.step, resumed.start_step, resumed.step, len(resumed.losses)) == (4, 4, 7, 3)
    assert validated == [6] and resumed.validated_step == 6 and resumed.validation == 6.0
    assert resumed.losses == pytest.approx(straight.losses[4:])
    assert torch.allclose(resumed_weights, straight_weights)


def test_checkpoints_are_complete_and_limited(tmp_path):
    out = tmp_path / "run"
    run_to(out, 5, limit=2)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-5"]  # the final step's too
    newest = out / "checkpoint-5"
    assert json.loads((newest / "training_state.json").read_text()) == {"global_step": 5}
    assert json.loads((newest / "note.json").read_text()) == {"what": "test"}
    assert not list(out.glob(".*")), "temporary folders left behind"


def test_a_new_run_refuses_an_earlier_runs_folder(tmp_path):
    out = tmp_path / "run"
    run_to(out, 2)
    with pytest.raises(UsageError, match="--resume_from_checkpoint latest"):
        check_run_dir(out, resuming=False, results=["model"])
    check_run_dir(out, resuming=True, results=["model"])
    with pytest.raises(UsageError, match="no such checkpoint"):
        run_to(out, 3, resume="checkpoint-9")
