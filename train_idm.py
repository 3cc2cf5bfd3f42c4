"""Train the inverse-dynamics model (IDM) that measures whether a world model follows its actions.

Part of the evaluation (issue 17, point 4): PSNR cannot tell whether a generated frame shows the effect
of its action. The IDM (gamengen/idm.py) is a small CNN that reads two consecutive frames and tells
which action was taken between them, and its category (turn left/right, move, strafe, attack/use,
still). It trains on the real transitions of the dataset's training episodes and is scored on the
held-out episodes (the same deterministic split as the world model's, so it never saw them): that
accuracy is the ceiling a world model's generated transitions can reach; evaluate.py scores those.

The result is a folder (``--output_dir``): ``model.safetensors`` and ``idm_config.json`` (action names,
frame size, the dataset's fingerprint, the held-out accuracy per category); ``gamengen.idm.load_idm``
reads it.

Example (about 2.5 CPU-minutes on one core at 64x48, 500 steps; more steps help on larger datasets):

    python train_idm.py --dataset_name /tmp/ds --output_dir /tmp/idm
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from gamengen.context import check_action_ids
from gamengen.episodes import open_dataset, split_episode_ids
from gamengen.help_format import HelpFormatter
from gamengen.idm import CATEGORIES, IDMError, action_category, check_idm_output, save_idm
from gamengen.idm_training import load_transitions, score_transitions, train_idm
from gamengen.latent_cache import dataset_fingerprint
from gamengen.layout import DatasetError, add_dataset_arguments, columns_from_args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    data = parser.add_argument_group("data")
    add_dataset_arguments(data, cached="datasets")
    data.add_argument(
        "--holdout_fraction",
        type=float,
        default=0.1,
        help="fraction of episodes held out for the accuracy (use the world model's value, "
        "so the IDM never saw its held-out episodes)",
    )
    data.add_argument(
        "--max_frames",
        type=int,
        default=50_000,
        help="decode at most this many training frames into memory (whole episodes, picked at random by --seed)",
    )
    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", required=True, help="the IDM folder to write")
    train.add_argument("--overwrite", action="store_true", help="replace an existing IDM folder at --output_dir")
    train.add_argument("--max_train_steps", type=int, default=500, help="optimizer steps")
    train.add_argument("--train_batch_size", type=int, default=64, help="transitions per step")
    train.add_argument(
        "--learning_rate", type=float, default=1e-3, help="peak AdamW learning rate (one-cycle schedule)"
    )
    train.add_argument(
        "--seed", type=int, default=0, help="seed of the initialization, the batches and the --max_frames subset"
    )
    train.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    train.add_argument(
        "--num_threads",
        type=int,
        default=1,
        help="torch CPU threads (1: OpenMP spin-waiting on shared cores made training up to 100x slower)",
    )
    args = parser.parse_args(argv)
    for name in ("max_train_steps", "train_batch_size", "max_frames", "num_threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not 0.0 < args.holdout_fraction < 1.0:
        parser.error(f"--holdout_fraction must be in (0, 1), got {args.holdout_fraction}")
    return args


def main(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.num_threads)
    check_idm_output(args.output_dir, args.overwrite)  # before any work, not after it
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dataset = open_dataset(args.dataset_name, columns=columns_from_args(args), cache_dir=args.cache_dir)
    action_names = dataset.action_names
    if not action_names:  # a dataset of another layout, without our metadata: name the ids (their category is "other")
        largest = max(int(dataset.actions(i).max()) for i in range(len(dataset.episodes)) if len(dataset.actions(i)))
        action_names = [f"ACTION_{i}" for i in range(largest + 1)]
    all_actions = [dataset.actions(i) for i in range(len(dataset.episodes))]
    check_action_ids(dataset.episode_ids, all_actions, action_names=action_names)
    train_ids, heldout_ids = split_episode_ids(dataset.episode_ids, args.holdout_fraction)
    print(f"{dataset}; {len(train_ids)} training and {len(heldout_ids)} held-out episodes")
    print("action categories: " + ", ".join(f"{name}={action_category(name)}" for name in action_names))

    started = time.perf_counter()
    train = load_transitions(dataset.subset(train_ids), max_frames=args.max_frames, seed=args.seed)
    heldout = load_transitions(dataset.subset(heldout_ids))
    print(
        f"decoded {len(train.frames)} training frames ({len(train)} transitions) and "
        f"{len(heldout)} held-out transitions "
        f"in {time.perf_counter() - started:.1f} s"
    )
    started = time.perf_counter()
    idm = train_idm(
        train, action_names, args.max_train_steps, args.train_batch_size, args.learning_rate, args.seed, device
    )
    train_seconds = time.perf_counter() - started
    train_scores, heldout_scores = score_transitions(idm, train), score_transitions(idm, heldout)
    idm.info = {
        "dataset": {
            "name": str(args.dataset_name),
            "fingerprint": dataset_fingerprint(dataset),
            "episodes": len(dataset.episode_ids),
            "holdout_fraction": args.holdout_fraction,
            "heldout_episodes": heldout_ids,
            "metadata": {key: value for key, value in (dataset.metadata or {}).items() if key != "env_config"},
        },
        "training": {
            "steps": args.max_train_steps,
            "batch_size": args.train_batch_size,
            "learning_rate": args.learning_rate,
            "seed": args.seed,
            "transitions": len(train),
            "seconds": round(train_seconds, 1),
            "train_action_accuracy": train_scores.action_accuracy,
        },
        "heldout": heldout_scores.to_dict(),
    }
    save_idm(idm, args.output_dir, overwrite=args.overwrite)
    print(
        f"trained {args.max_train_steps} steps in {train_seconds:.1f} s; "
        f"training-set action accuracy {train_scores.action_accuracy:.3f}"
    )
    print("held-out real transitions (the ceiling for generated ones):")
    print(heldout_scores.summary())
    missing = [name for name in CATEGORIES if name not in heldout_scores.per_category]
    if missing:
        print(f"  (no held-out transitions of: {', '.join(missing)})")
    print(f"saved {args.output_dir} (gamengen.idm.load_idm({str(args.output_dir)!r}))")
    return idm.info


if __name__ == "__main__":
    try:
        main(parse_args())
    except (DatasetError, IDMError) as error:
        sys.exit(f"error: {error}")
