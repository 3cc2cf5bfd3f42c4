"""Run distill.py's main() under `accelerate launch` and write, per process, the first value of every noise tensor
the distillation drew (the student's input noise of each step): tests/test_distill.py checks that the two
processes draw differently while their students end with identical weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import distill
from gamengen import distillation


def main(argv: list[str]) -> None:
    draws: list[float] = []
    forward = distillation.DistillationModels.forward

    def recording_forward(self, batch, generator, *rest):
        state = generator.get_state()
        draws.append(float(torch.randn(1, generator=generator)[0]))  # the next draw the step will make
        generator.set_state(state)
        return forward(self, batch, generator, *rest)

    distillation.DistillationModels.forward = recording_forward
    args = distill.parse_args(argv)
    distill.main(args)
    from accelerate import PartialState

    state = PartialState()
    out = Path(args.output_dir) / f"draws-{state.process_index}.json"
    out.write_text(json.dumps({"process": state.process_index, "processes": state.num_processes, "draws": draws}))


if __name__ == "__main__":
    main(sys.argv[1:])
