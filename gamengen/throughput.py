"""What makes a world-model training step fast on a GPU (docs/gpu.md#training-speed): the batch per optimisation
step split into per-device micro-batches and gradient accumulation, channels-last weights, a ``torch.compile`` of
the UNet's blocks one by one (bounded compile time, where a compile of the whole step did not finish), and the
peak memory a run used.

Everything here also runs on a CPU (the tests train the tiny preset with it); on a CPU it changes little.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gamengen.errors import UsageError


@dataclass(frozen=True)
class BatchPlan:
    """How the samples of one optimisation step are computed: ``per_device`` samples per micro-batch on each of
    ``processes`` processes, ``accumulation`` micro-batches accumulated."""

    per_device: int
    processes: int
    accumulation: int

    @property
    def total(self) -> int:
        return self.per_device * self.processes * self.accumulation

    def describe(self) -> str:
        processes = f"{self.processes} process{'es' if self.processes > 1 else ''}"
        return f"{self.total} per step = {self.per_device} per device x {processes} x {self.accumulation} accumulated"


def plan_batches(total: int | None, per_device: int, processes: int, accumulation: int | None) -> BatchPlan:
    """The batch plan of a run: ``total`` samples per optimisation step (None: whatever ``per_device`` x processes
    x ``accumulation`` gives), micro-batches of at most ``per_device`` samples, and ``accumulation`` as given or,
    when None, as many micro-batches as reach ``total``.

    The per-device batch is the largest divisor of ``total / processes`` that is at most ``per_device``, so that
    every step has exactly ``total`` samples."""
    if total is None:
        return BatchPlan(per_device, processes, accumulation or 1)
    if total % processes:
        raise UsageError(
            f"--total_batch_size {total} does not divide among {processes} processes: pass a multiple of {processes}"
        )
    share = total // processes
    if accumulation is not None:
        if share % accumulation or share // accumulation > per_device:
            raise UsageError(
                f"--total_batch_size {total} over {processes} process(es) and --gradient_accumulation_steps "
                f"{accumulation} asks for micro-batches of {share / accumulation:g}, not at most --train_batch_size "
                f"{per_device}: leave --gradient_accumulation_steps out (it is then derived), or change one of them"
            )
        return BatchPlan(share // accumulation, processes, accumulation)
    micro = max(size for size in range(1, min(per_device, share) + 1) if share % size == 0)
    return BatchPlan(micro, processes, share // micro)


def use_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Store the model's 4-D weights channels-last (NHWC): cuDNN's convolutions then run on tensor cores without
    layout changes, and every activation after the first convolution stays NHWC."""
    return model.to(memory_format=torch.channels_last)


def unet_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The UNet's blocks: its down blocks, the middle block and its up blocks (a world model or a bare UNet)."""
    unet = getattr(model, "unet", model)
    return [*unet.down_blocks, *([unet.mid_block] if unet.mid_block is not None else []), *unet.up_blocks]


def compile_blocks(model: torch.nn.Module, backend: str = "inductor", mode: str | None = None) -> int:
    """``torch.compile`` each of the UNet's blocks in place (``Module.compile``: the weights' names, and so the
    checkpoints, stay as they are); the small layers between them stay eager. The whole step's graph is split into
    one graph per block, each compiled once (sd14: 4 down, 1 middle, 4 up blocks): the compile time is bounded
    by the blocks, where one compile of the whole training step did not finish in 224 s on an H200.
    Returns the number of blocks compiled."""
    blocks = unet_blocks(model)
    # The down (and up) blocks of a level share their class and so their compiled code: one entry per block.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 4 * len(blocks))
    for block in blocks:
        block.compile(backend=backend, mode=mode, dynamic=False)
    return len(blocks)


def peak_memory_gib(device: torch.device | str) -> float | None:
    """The most memory the run's tensors held on a CUDA device (GiB); None on other devices."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30
