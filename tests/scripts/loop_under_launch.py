"""Run gamengen.training.train (the loop both trainers use) on a tiny model under `accelerate launch`, and
write what each process saw: the random draws of every step, the sample indices of every step, and the
final weights. tests/test_multiprocess.py compares them across processes and across a resume. A fourth
argument ``unshared`` gives every process but the main one an output folder of its own, as nodes that do
not share the run folder see it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from gamengen.training import LoopOptions, make_accelerator, train


class Args:
    gradient_accumulation_steps = 1
    mixed_precision = None
    report_to = "none"
    logging_dir = "logs"


def main(output_dir: Path, max_train_steps: int, resume: str | None, unshared: bool = False) -> None:
    accelerator = make_accelerator(Args(), output_dir)
    if unshared and accelerator.process_index > 0:
        # A node that does not see the main process's output folder: the same path there holds other files.
        output_dir = output_dir.with_name(f"{output_dir.name}-node{accelerator.process_index}")
        output_dir.mkdir(exist_ok=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    indices = torch.arange(40)
    dataloader = torch.utils.data.DataLoader(indices, batch_size=2, shuffle=True)
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)
    seen: list[dict] = []

    def loss_of_batch(batch: torch.Tensor, generator: torch.Generator):
        noise = torch.randn(len(batch), 4, generator=generator)  # what diffusion_loss draws from the generator
        dropout = torch.rand(1).item()  # what draws from the global generator
        seen.append({"indices": batch.tolist(), "noise": noise[0, 0].item(), "global": dropout})
        inputs = batch.float()[:, None].expand(-1, 4) / 40 + noise * 0.01
        return model(inputs).pow(2).mean(), {}

    options = LoopOptions(
        output_dir=output_dir, project="test", max_train_steps=max_train_steps, gradient_accumulation_steps=1,
        max_grad_norm=1.0, checkpointing_steps=3, checkpoints_total_limit=None, validation_steps=1000,
        resume_from_checkpoint=resume, seed=7, logging_steps=2,
    )  # fmt: skip
    run = train(accelerator, options, model, optimizer, lr_scheduler, dataloader, loss_of_batch)
    weights = [p.detach().flatten().tolist() for p in accelerator.unwrap_model(model).parameters()]
    report = {
        "process": accelerator.process_index,
        "processes": accelerator.num_processes,
        "start_step": run.start_step,
        "step": run.step,
        "seen": seen,
        "weights": weights,
    }
    name = f"process{accelerator.process_index}-{'resumed' if resume else 'first'}-{max_train_steps}.json"
    (output_dir / name).write_text(json.dumps(report))
    # Both processes leave together, and without tearing gloo down: twice, under a loaded CPU (once with the process
    # group destroyed by end_training), rank 1 aborted at exit ("terminate called without an active exception",
    # a gloo thread still joinable) after its report was written. The report is what the tests read.
    accelerator.wait_for_everyone()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(
        Path(sys.argv[1]),
        int(sys.argv[2]),
        sys.argv[3] if len(sys.argv) > 3 else None,
        unshared=len(sys.argv) > 4 and sys.argv[4] == "unshared",
    )
