"""Evaluate world-model checkpoints on held-out episodes: the paper's metrics, drift curves and baselines.

GameNGen section 5 measures a world model by (1) teacher-forced next-frame quality: the model sees
the REAL frames and actions ``t-N .. t-1`` and predicts frame ``t`` (PSNR 29.43, LPIPS 0.249 in the
paper), and (2) drift: the model plays ``H`` frames autoregressively from a real start, fed the
recorded actions, and the quality of each frame is measured against what the game really showed.

This script measures both with the engine (``gamengen/engine.py``: the checkpoint's sampling, or the
options below) on the held-out episodes the trainer recorded in the checkpoint, beside baselines on
the SAME windows:

- copy-last: the last context frame repeated (a model that predicts no change; for drift, the last
  frame of the real start repeated for every step). A useful model beats it;
- shuffled actions: the same model and noise, fed the action sequences of other windows (a
  derangement: no window keeps its own). The gap to the true actions is how much the model listens
  to the actions; it is reported by the kind of action that produced the target (turning, moving,
  still, other), since pressing nothing or firing changes little of the frame;
- VAE reconstruction: the target encoded and decoded by the checkpoint's autoencoder, the best any
  latent model with this VAE can do.

Every pass is scored with PSNR and SSIM (the paper's), and with two measures blur cannot fool
(``gamengen/metrics.py``): sharpness, the gradient energy of the generated 3D view over that of the
real frames at the same steps (1 = as sharp as the game; a model hedging between futures draws a
blur that PSNR rewards and sharpness exposes), and GMSD (gradient magnitude similarity deviation,
lower is better), which penalises missing and misplaced edges. LPIPS is added when the ``lpips``
package and its AlexNet weights are on the machine (on the evaluation's device); otherwise the
report says why it was not computed. ``--lpips_random_backbone`` puts an untrained network's
distance in its place to test the plumbing offline: reported as ``random_backbone_distance``, never
as LPIPS.

Outputs in ``--output_dir``: ``metrics.json`` (every number, the settings, the windows, the
checkpoints' and the dataset's provenance), ``report.md`` (paper | models | baselines), ``drift.png``
and ``examples.png`` (truth | prediction strips). ``--compare M2 M3 ...`` evaluates more checkpoints
on the same windows, with the same sampling, into one table and one drift plot: how ablations
(noise augmentation on/off, context length, sampling steps, data) are shown.

The script parses the options and runs the work in order; the measures live in ``gamengen/evaluation.py``
(windows, passes, baselines; their records in ``gamengen/evaluation_results.py``, the scores in
``gamengen/scores.py``) and the outputs in ``gamengen/report.py``.

Example (the tiny checkpoint of the README's quickstart):

    python evaluate.py --model_folder /tmp/wm --dataset_name /tmp/ds --output_dir /tmp/eval
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from gamengen.checkpoint import read_world_model_config
from gamengen.cli import add_engine_arguments
from gamengen.devices import default_device
from gamengen.engine import EngineError
from gamengen.episodes import EpisodeDataset, open_dataset
from gamengen.evaluation import (
    check_models_fit,
    choose_episodes,
    choose_windows,
    copy_last_baseline,
    derangement,
    drift_start_step,
    evaluate_model,
    load_evaluation_idm,
)
from gamengen.evaluation_results import CopyLastBaseline, Evaluation, ModelResult, Window, dataset_record
from gamengen.help_format import HelpFormatter
from gamengen.idm import IDM, IDMError
from gamengen.layout import DatasetError, columns_from_args
from gamengen.model import ModelLoadError
from gamengen.report import OUTPUTS, model_summary, write_outputs
from gamengen.scores import Scorer, perceptual_metric

# ----------------------------------------------------------------------------------------------
# Options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_engine_arguments(parser)
    add_model_arguments(parser)
    add_data_arguments(parser)
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoints compared with --model_folder, and their labels."""
    parser.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="MODEL",
        help="more checkpoints (folders or Hub ids) evaluated on the same windows",
    )
    parser.add_argument(
        "--names",
        nargs="+",
        default=None,
        help="labels of --model_folder and the --compare models in the report (default: folder names)",
    )


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """What to evaluate on: the dataset, its episodes, how many windows, rollout frames and examples are taken
    from them, and the optional measures (action following by an IDM, LPIPS or its untrained stand-in)."""
    what = parser.add_argument_group("what to evaluate on")
    what.add_argument("--dataset_name", required=True, help="dataset folder of parquet shards, or a Hub dataset id")
    what.add_argument(
        "--episodes",
        nargs="+",
        default=None,
        help="episodes (indices or ids); default: the held-out episodes recorded in --model_folder's checkpoint (all "
        "episodes when it records none)",
    )
    what.add_argument("--num_episodes", type=int, default=8, help="use at most this many of those episodes")
    what.add_argument(
        "--max_windows", type=int, default=128, help="teacher-forced windows, spread evenly over the episodes' steps"
    )
    what.add_argument("--horizon", type=int, default=64, help="frames of each autoregressive (drift) rollout")
    what.add_argument("--batch_size", type=int, default=16, help="windows (or rollouts) generated together")
    what.add_argument(
        "--timing_frames", type=int, default=16, help="frames of the batch-1 rollout that measures frames/s"
    )
    what.add_argument("--num_examples", type=int, default=6, help="rows of examples.png")
    what.add_argument(
        "--idm",
        default=None,
        metavar="PATH",
        help="an inverse-dynamics model from train_idm.py: reports how often it recovers the actions from real, "
        "teacher-forced, shuffled-action and autoregressive transitions (action following)",
    )
    what.add_argument("--no_lpips", action="store_true", help="skip LPIPS even when the lpips package is installed")
    what.add_argument(
        "--lpips_random_backbone",
        action="store_true",
        help="for testing the plumbing offline: an UNTRAINED network's distance in LPIPS's place, "
        "reported as random_backbone_distance (not LPIPS)",
    )


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the results go, and whether earlier ones there may be replaced."""
    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", default="outputs/eval", help="where metrics.json, report.md and the plots go")
    output.add_argument(
        "--overwrite", action="store_true", help="replace the results of an earlier evaluation in --output_dir"
    )


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Counts of at least 1, and one label per model when --names is given (parser.error otherwise)."""
    for name in ("num_episodes", "max_windows", "horizon", "batch_size", "timing_frames"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    models = [args.model_folder, *args.compare]
    if args.names is not None and len(args.names) != len(models):
        parser.error(f"--names gives {len(args.names)} labels for {len(models)} models (--model_folder and --compare)")


# ----------------------------------------------------------------------------------------------
# Main, in the order the work happens


def main(args: argparse.Namespace) -> Evaluation:
    output_dir = Path(args.output_dir)
    refuse_an_earlier_evaluation(output_dir, args.overwrite)
    began = time.perf_counter()
    folders = [args.model_folder, *args.compare]
    configs = [read_world_model_config(folder, args.revision) for folder in folders]
    dataset = open_dataset(args.dataset_name, columns=columns_from_args(args))
    check_models_fit(dataset, folders, configs)
    episodes, episode_source = choose_episodes(dataset, configs[0], args.episodes, args.num_episodes)
    longest_context = max(c.context_length for c in configs)
    windows = choose_windows(dataset, episodes, longest_context, args.max_windows, list(configs[0].action_names))
    order = derangement(len(windows), args.seed)
    drift_start = drift_start_step(dataset, episodes, longest_context)
    device = args.device or default_device()
    idm = None if args.idm is None else load_evaluation_idm(args.idm, device, configs[0].action_names)
    perceptual, lpips_status = perceptual_metric(device, args.no_lpips, args.lpips_random_backbone)
    scorer = Scorer.for_dataset(dataset, perceptual)
    print(
        f"evaluating {len(folders)} model(s) on {len(episodes)} episodes ({episode_source}): {len(windows)} "
        "teacher-forced windows, "
        f"drift over {args.horizon} frames from step {drift_start}; {lpips_status.describe()}"
    )

    copy_last = copy_last_baseline(dataset, windows, episodes, drift_start, args.horizon, scorer)
    models = evaluate_models(args, folders, dataset, windows, order, episodes, drift_start, copy_last, scorer, idm)

    evaluation = Evaluation(
        settings={
            **models[0].engine,
            "seed": args.seed,
            "horizon": args.horizon,
            "max_windows": args.max_windows,
            "batch_size": args.batch_size,
            "status_bar_rows": scorer.left_out_rows(dataset.frame_height),
        },
        dataset=dataset_record(str(args.dataset_name), dataset),
        episodes=[dataset.episode_ids[e] for e in episodes],
        episode_source=episode_source,
        windows=windows,
        shuffled_from=order.tolist(),
        lpips=lpips_status,
        copy_last=copy_last,
        models=models,
        seconds=time.perf_counter() - began,
    )
    write_outputs(evaluation, dataset, args.num_examples, output_dir)
    print(f"wrote {output_dir}/metrics.json, report.md, drift.png, examples.png in {evaluation.seconds:.0f} s")
    return evaluation


def refuse_an_earlier_evaluation(output_dir: Path, overwrite: bool) -> None:
    """An earlier evaluation in ``output_dir`` is kept unless --overwrite."""
    earlier = [name for name in OUTPUTS if (output_dir / name).exists()]
    if earlier and not overwrite:
        raise EngineError(
            f"--output_dir {output_dir} already holds an evaluation ({', '.join(earlier)}): choose another "
            "--output_dir, or pass --overwrite"
        )


def evaluate_models(
    args: argparse.Namespace,
    folders: list[str],
    dataset: EpisodeDataset,
    windows: list[Window],
    order: np.ndarray,
    episodes: list[int],
    drift_start: int,
    copy_last: CopyLastBaseline,
    scorer: Scorer,
    idm: IDM | None,
) -> list[ModelResult]:
    """Every checkpoint on the same windows and episodes, one after the other, each summed up when done."""
    models: list[ModelResult] = []
    taken: set[str] = set()
    for number, folder in enumerate(folders):
        label = args.names[number] if args.names else model_label(folder, taken)
        model = evaluate_model(
            folder, label, args, dataset, windows, order, episodes, drift_start, copy_last, scorer, idm
        )
        models.append(model)
        print(model_summary(model, copy_last))
    return models


def model_label(path: str, taken: set[str]) -> str:
    """A model's label in the report: its folder's name, numbered when another model has it already."""
    name = Path(str(path).rstrip("/")).name or str(path)
    label, number = name, 2
    while label in taken:
        label, number = f"{name} ({number})", number + 1
    taken.add(label)
    return label


if __name__ == "__main__":
    try:
        main(parse_args())
    except (DatasetError, ModelLoadError, EngineError, IDMError) as error:
        sys.exit(f"error: {error}")
