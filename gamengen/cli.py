"""The command line every script that generates frames shares: the checkpoint and sampling options,
the dataset columns, and the engine and dataset they open.

``run_inference.py``, ``run_autoregressive.py``, ``run_playable_env.py`` and ``evaluate.py`` call
``add_engine_arguments(parser)`` and then ``engine_from_args(args)`` (and ``dataset_from_args``), so
an option means the same in all of them (the sampling options are described in docs/engine.md).
"""

from __future__ import annotations

import argparse

import torch

from gamengen.carry_over import CARRY_MOTIONS
from gamengen.config import WorldModelConfig
from gamengen.context import check_dataset_fits_model
from gamengen.devices import DTYPES
from gamengen.engine import GameEngine
from gamengen.episodes import EpisodeDataset
from gamengen.layout import DatasetError, add_column_arguments, columns_from_args


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint and sampling options of every script that generates frames."""
    group = parser.add_argument_group("model and sampling")
    add_model_arguments(group)
    add_sampling_arguments(group)
    add_column_arguments(parser.add_argument_group("dataset columns (other layouts)"))


def add_model_arguments(group: argparse._ArgumentGroup) -> None:
    """The checkpoint, the device and precision, and compilation."""
    group.add_argument(
        "--model_folder",
        required=True,
        help="world-model checkpoint: a folder written by train_text_to_image.py, or a Hub model id",
    )
    group.add_argument("--revision", default=None, help="revision of a Hub model")
    group.add_argument("--device", default=None, help="cuda, cpu, cuda:1, ... (default: cuda when available)")
    group.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="fp32",
        help="weights and activations (a CPU runs fp32 or bf16; fp16 is for GPUs)",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet and the decoder (slow first frame; on a 2-core CPU ~25%% faster frames). On a "
        "GPU the engine compiles with CUDA graphs unless --eager",
    )
    group.add_argument(
        "--compile_mode",
        default=None,
        help="torch.compile mode (implies --compile): reduce-overhead replays CUDA graphs, max-autotune, default; "
        "on a GPU reduce-overhead unless given",
    )
    group.add_argument(
        "--eager",
        action="store_true",
        help="on a GPU, do not compile (starts at once; 5x fewer frames/s at the paper's size, docs/gpu.md)",
    )
    group.add_argument(
        "--no_tf32",
        action="store_true",
        help="on a GPU, keep fp32 matrix products in full fp32 (TF32 is on by default: fp32 weights run faster)",
    )
    group.add_argument(
        "--encode_batch_size",
        type=int,
        default=16,
        help="most context frames sent through the VAE encoder at once (bounds memory at the paper's size)",
    )


def add_sampling_arguments(group: argparse._ArgumentGroup) -> None:
    """How a frame is sampled (the checkpoint's defaults unless given), the detail carry-over, seed and threads."""
    group.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="CFG scale on the context (default: the checkpoint's, 1.5 as the paper); 1 = no CFG",
    )
    group.add_argument(
        "--num_inference_steps",
        type=int,
        default=None,
        help="DDIM steps per frame (default: the checkpoint's, 4 as the paper)",
    )
    group.add_argument(
        "--timesteps",
        default=None,
        help="the sampler's timesteps: trailing (999,749,499,249 at 4 steps), karras (lower noise at the last "
        "steps), or a list such as 999,500,150,30 (its length is the number of steps); default: the checkpoint's",
    )
    group.add_argument(
        "--eta",
        type=float,
        default=None,
        help="DDIM eta: 0 deterministic, 1 ancestral (fresh noise each step); default: the checkpoint's, 0",
    )
    group.add_argument(
        "--carry_detail",
        type=float,
        default=None,
        metavar="TAU",
        help="a post-process, not the model (off by default: the model's own frames): add back the detail the VAE "
        "loses from the newest real context frame, fading it per pixel by exp(-change/TAU) where the generated "
        "frames change (TAU in 0-255 levels, e.g. 8; inf: never fades); docs/engine.md#detail-carry-over",
    )
    group.add_argument(
        "--carry_motion",
        choices=CARRY_MOTIONS,
        default="turns",
        help="with --carry_detail: 'turns' moves the carried detail with the view on the steps that turn (DOOM's "
        "turn speed, from the checkpoint's dataset metadata), 'none' leaves it in place to fade (default: turns)",
    )
    group.add_argument(
        "--noise_bucket",
        type=int,
        default=None,
        help="noise-augmentation bucket of the context at inference (default: the checkpoint's, 0 = clean context)",
    )
    group.add_argument(
        "--seed", type=int, default=0, help="seed of the sampler's noise: the same seed gives the same frames"
    )
    group.add_argument(
        "--num_threads",
        type=int,
        default=1,
        help="torch CPU threads. 1 by default: with anything else running on the cores, "
        "more threads spin-wait and can make frames 50x slower",
    )
    group.add_argument(
        "--no_pad_context",
        action="store_true",
        help="refuse a context shorter than the model's instead of padding it (first frame repeated, NOOP actions)",
    )


GPU_COMPILE_MODE = "reduce-overhead"  # CUDA graphs: measured 40 frames/s against 7.7-8.9 eager (docs/gpu.md)


def engine_compile_mode(args: argparse.Namespace) -> str | None:
    """The engine's ``torch.compile`` mode: what ``--compile`` / ``--compile_mode`` ask for; on a CUDA device, CUDA
    graphs unless ``--eager``; None (no compilation) otherwise. ``"default"`` is torch.compile's default mode."""
    if args.compile_mode:
        return args.compile_mode
    if args.compile:
        return "default"
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not getattr(args, "eager", False):
        return GPU_COMPILE_MODE
    return None


def engine_from_args(args: argparse.Namespace) -> GameEngine:
    """A ``GameEngine`` from the options of ``add_engine_arguments``."""
    if args.num_threads is not None and args.num_threads >= 1:
        torch.set_num_threads(args.num_threads)
    if torch.cuda.is_available() and not args.no_tf32:
        # TF32 matrix products for fp32 weights: ~10 mantissa bits, well below a frame's 8-bit output.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    compile_mode = engine_compile_mode(args)
    if compile_mode == GPU_COMPILE_MODE and not (args.compile or args.compile_mode):
        print(
            "engine: compiling with CUDA graphs (torch.compile mode reduce-overhead), the GPU default: the first "
            "frames wait for it (about a minute at the paper's size); --eager starts at once, at a fifth of the speed"
        )
    return GameEngine.from_pretrained(
        args.model_folder,
        device=args.device,
        dtype=args.dtype,
        revision=args.revision,
        guidance_scale=args.guidance_scale,
        num_inference_steps=args.num_inference_steps,
        noise_bucket=args.noise_bucket,
        timesteps=args.timesteps,
        eta=args.eta,
        seed=args.seed,
        compile=compile_mode is not None,
        compile_mode=compile_mode,
        pad_short_context=not args.no_pad_context,
        encode_batch_size=args.encode_batch_size,
        carry_detail=args.carry_detail,
        carry_motion=args.carry_motion,
    )


def dataset_from_args(args: argparse.Namespace, config: WorldModelConfig) -> EpisodeDataset:
    """Open ``--dataset_name`` (with the column options) and check it against the checkpoint."""
    from gamengen.episodes import open_dataset

    if args.dataset_name is None:  # the dataset the checkpoint was trained on, when it records one
        args.dataset_name = config.dataset.get("name")
        if not args.dataset_name:
            raise DatasetError(
                "the checkpoint records no dataset (a converted seed checkpoint, or an old one): pass "
                "--dataset_name, a dataset of the same game and action set"
            )
        print(f"dataset: {args.dataset_name} (the checkpoint's training data; --dataset_name chooses another)")
    columns = columns_from_args(args)
    dataset = open_dataset(args.dataset_name, columns=columns)
    check_dataset_fits_model(dataset, config)
    return dataset
