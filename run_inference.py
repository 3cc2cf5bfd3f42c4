"""Predict one frame of a recorded episode from its real context, and compare it with the truth.

GameNGen section 4 (teacher-forced quality): the world model sees the real frames ``t-N .. t-1`` and
actions ``t-N .. t-1`` of an episode and predicts frame ``t`` with the engine (``gamengen/engine.py``:
4 DDIM steps, classifier-free guidance on the context). The script saves truth | prediction |
absolute difference side by side as one PNG and prints the PSNR, beside the PSNR of simply
repeating the last context frame (the baseline a useful model must beat).

Example (the tiny checkpoint of the README's quickstart):

    python run_inference.py --model_folder /tmp/wm --dataset_name /tmp/ds --episode 0 --step 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gamengen.cli import add_engine_arguments, dataset_from_args, engine_from_args
from gamengen.context import default_start_step, episode_context, episode_frames, find_episode
from gamengen.engine import EngineError
from gamengen.help_format import HelpFormatter
from gamengen.layout import DatasetError
from gamengen.media import captioned_row, display_scale
from gamengen.metrics import psnr
from gamengen.model import ModelLoadError
from gamengen.vae import frames_to_tensor


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_engine_arguments(parser)
    what = parser.add_argument_group("what to predict")
    what.add_argument(
        "--dataset_name",
        default=None,
        help="dataset folder or Hub id: the start frames (and recorded actions); default: the checkpoint's data",
    )
    what.add_argument("--episode", default="0", help="episode: index into the dataset's episodes, or an episode id")
    what.add_argument(
        "--step",
        type=int,
        default=None,
        help="the step to predict (>= 1); default: the first with a full context (the context length), "
        "or the last step",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--output", default=None, help="PNG path (default: outputs/inference/<episode id>_step<step>.png)"
    )
    output.add_argument(
        "--scale", type=int, default=None, help="integer upscaling of the PNG (default: ~256 pixels per panel)"
    )
    output.add_argument(
        "--diff_gain",
        type=float,
        default=1.0,
        help="multiply the absolute difference by this to make small errors visible",
    )
    args = parser.parse_args(argv)
    if args.scale is not None and args.scale < 1:
        parser.error("--scale must be >= 1")
    return args


def main(args: argparse.Namespace) -> dict[str, Any]:
    engine = engine_from_args(args)
    dataset = dataset_from_args(args, engine.config)
    episode = find_episode(dataset, args.episode)
    episode_id, length = dataset.episode_ids[episode], dataset.episodes[episode].length
    step = args.step if args.step is not None else default_start_step(engine.context_length, length)

    # Frames t-k .. t-1 and actions t-k .. t-2 fill the context; action t-1 produces frame t.
    frames, actions, action = episode_context(dataset, episode, step, engine.context_length)
    engine.reset(frames, actions)
    prediction = engine.step(action)
    truth = episode_frames(dataset, episode, step, step + 1)[0]

    score = float(psnr(frames_to_tensor(prediction)[None], frames_to_tensor(truth)[None])[0])
    baseline = float(psnr(frames_to_tensor(frames[-1])[None], frames_to_tensor(truth)[None])[0])
    difference = np.abs(prediction.astype(np.int16) - truth.astype(np.int16)) * args.diff_gain
    difference = np.clip(difference, 0, 255).astype(np.uint8)
    gain = f" x{args.diff_gain:g}" if args.diff_gain != 1 else ""
    name = engine.action_names[action]
    caption = f"{episode_id} step {step}: action {name}, PSNR {score:.2f} dB (copy-last {baseline:.2f} dB)"
    image = captioned_row(
        [truth, prediction, difference],
        ["truth", "prediction", f"|difference|{gain}"],
        caption,
        args.scale or display_scale(truth.shape[1]),
    )

    output = Path(args.output or Path("outputs/inference") / f"{episode_id}_step{step}.png")
    output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(output)
    timing = engine.last_timing
    padded = max(0, engine.context_length - len(frames))
    context_note = (
        f" ({padded} of {engine.context_length} context slots padded: first frame repeated, NOOP)" if padded else ""
    )
    print(
        f"episode {episode_id!r} step {step}: predicted from frames {step - len(frames)}..{step - 1}{context_note} "
        f"after action {name}"
    )
    print(f"PSNR: {score:.2f} dB (repeating the last context frame: {baseline:.2f} dB)")
    print(
        f"time: unet {timing.unet_ms:.1f} ms, decode {timing.decode_ms:.1f} ms, total {timing.total_ms:.1f} ms "
        f"({engine.num_inference_steps} DDIM steps)"
    )
    print(f"saved {output} (truth | prediction | |difference|)")
    return {"episode_id": episode_id, "step": step, "psnr": score, "copy_last_psnr": baseline, "output": str(output)}


if __name__ == "__main__":
    try:
        main(parse_args())
    except (DatasetError, ModelLoadError, EngineError) as error:
        sys.exit(f"error: {error}")
