"""Encode every frame of a dataset with the VAE once, so that world-model training never runs the encoder.

GameNGen (section 3.2) trains the UNet on VAE latents of the context frames and of the target
frame; the encoder is frozen, so each frame's latent never changes. Encoding the N+1 frames of
every sample on the fly costs far more than the rest of the data pipeline (benchmarks/
bench_latent_cache.py); this script encodes each frame once (the posterior mean times the VAE's
scaling factor, ``gamengen.vae.encode_frames``) and ``train_text_to_image.py --latents_dir``
then reads the windows from the cache (``gamengen.windows.LatentWindowDataset``).

Output (``--output_dir``): ``manifest.json`` (the VAE and a fingerprint of its encoder, the preset,
frame size, latent shape and scaling factor, the dataset's shards, sizes and episodes, which is
also the index of the latent files) and ``shards/<parquet shard>.safetensors`` (one per parquet
shard: ``latents`` float16 (rows, C, h, w), ``actions`` int64). Each file is written under a
temporary name and renamed. A rerun skips the shards already encoded, so an interrupted run is
resumed by running the same command again; after new shards are recorded into the dataset, a rerun
encodes only those. A folder made with another VAE or preset is refused.

Example (tiny preset, CPU; the VAE from finetune_autoencoder.py --train_encoder):

    python encode_latents.py --preset tiny --dataset_name /tmp/ds \
        --pretrained_vae_model_name_or_path /tmp/vae --output_dir /tmp/ds-latents

Paper setting (GPU): SD v1.4's VAE (or its fine-tuned decoder: the encoder is the same) on 320x240 frames:

    python encode_latents.py --preset sd14 --dataset_name USER/vizdoom-e1m1 \
        --pretrained_vae_model_name_or_path CompVis/stable-diffusion-v1-4 --output_dir data/e1m1-latents \
        --batch_size 64 --mixed_precision fp16 --dataloader_num_workers 8

On several GPUs, each process encodes every N-th shard into the same cache (on storage all of them see):

    accelerate launch --multi_gpu --num_processes 8 encode_latents.py --preset sd14 ... (as above)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from gamengen.config import PRESETS, ModelConfig, get_config
from gamengen.context import check_action_ids, check_frame_size
from gamengen.episodes import EpisodeDataset, open_dataset, shard_actions
from gamengen.files import TMP_MARKER
from gamengen.help_format import HelpFormatter
from gamengen.latent_cache import (
    MANIFEST_FILE,
    build_latent_manifest,
    check_cache_matches,
    encoder_fingerprint,
    read_latent_manifest,
    write_latent_manifest,
    write_latent_shard,
)
from gamengen.layout import DatasetError, add_dataset_arguments, columns_from_args
from gamengen.model import ModelLoadError
from gamengen.run_folder import UsageError
from gamengen.samplers import FrameDataset
from gamengen.vae import check_vae, encode_frames, load_vae

if TYPE_CHECKING:
    from accelerate import PartialState

MIXED_PRECISION_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Manifest entries a rerun must agree on: latents made under other settings cannot share a folder.
MUST_MATCH = (
    "preset",
    "frame_width",
    "frame_height",
    "padded_width",
    "padded_height",
    "latent_shape",
    "latent_dtype",
    "columns",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument(
        "--pretrained_vae_model_name_or_path",
        default=None,
        help="Hub id or local folder with a vae/ subfolder (default: the preset's, CompVis/stable-diffusion-v1-4 for "
        "sd14; the tiny preset has none)",
    )
    parser.add_argument(
        "--vae_subfolder", default="vae", help="subfolder of the VAE inside --pretrained_vae_model_name_or_path"
    )
    parser.add_argument("--revision", default=None, help="revision of a Hub model or dataset")
    parser.add_argument(
        "--output_dir", required=True, help="the latent cache folder (created; a rerun into it resumes)"
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="sd14", help="frame geometry and latent shape (gamengen/config.py)"
    )
    parser.add_argument("--batch_size", type=int, default=32, help="frames per VAE forward pass")
    parser.add_argument(
        "--mixed_precision",
        choices=sorted(MIXED_PRECISION_DTYPES),
        default="no",
        help="dtype of the VAE's weights while encoding (latents are stored as fp16)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--dataloader_num_workers", type=int, default=0, help="processes decoding PNG frames (0: in the main process)"
    )
    parser.add_argument(
        "--num_actions",
        type=int,
        default=None,
        help="number of actions, for datasets without action_names metadata (action ids are checked against it)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    return args


def check_existing(
    output_dir: Path, existing: dict[str, Any], manifest: dict[str, Any], dataset: EpisodeDataset
) -> None:
    """A rerun may finish the shards of the same dataset (or of new shards added to it) with the same
    VAE and preset; anything else would mix incompatible latents in one folder."""
    differences = [
        f"{key}: {existing.get(key)!r} there, {manifest[key]!r} now"
        for key in MUST_MATCH
        if existing.get(key) != manifest[key]
    ]
    for key in ("encoder_sha256", "scaling_factor"):
        if existing["vae"].get(key) != manifest["vae"][key]:
            differences.append(
                f"VAE {key}: {existing['vae'].get(key)!r} ({existing['vae'].get('name_or_path')}) there, "
                f"{manifest['vae'][key]!r} now"
            )
    if differences:
        raise UsageError(
            f"{output_dir} already holds latents made with other settings ({'; '.join(differences)}). "
            "To finish or extend it, run with the VAE and --preset it was made with "
            f"({existing['vae'].get('name_or_path')}, --preset {existing.get('preset')}); "
            "for this VAE or preset, pick a new --output_dir"
        )
    # The shards already encoded must be the dataset's (the reader's check); new shards are encoded next.
    check_cache_matches(output_dir, existing, dataset, allow_new_shards=True)


def is_encoded(output_dir: Path, shard: dict[str, Any], encoder_sha256: str) -> bool:
    """True when the shard's latent file is there and was written for this source and VAE."""
    path = output_dir / shard["file"]
    if not path.is_file():
        return False
    with safe_open(str(path), framework="pt") as handle:
        info = handle.metadata() or {}
    if (info.get("source"), info.get("source_size"), info.get("encoder_sha256")) != (
        shard["source"],
        str(shard["size"]),
        encoder_sha256,
    ):
        raise UsageError(
            f"{path} was not written for this dataset shard and VAE: delete it (it is encoded again) or pick a new "
            "--output_dir"
        )
    return True


def remove_stale_temporaries(output_dir: Path) -> None:
    """Half-written files of interrupted runs (hidden ``.<name>.tmp-<pid>``, never read), unless their writer
    still runs."""
    for path in output_dir.rglob(f".*{TMP_MARKER}*"):
        pid = path.name.rsplit("-", 1)[-1]
        if path.is_file() and not (pid.isdigit() and int(pid) != os.getpid() and process_exists(int(pid))):
            path.unlink()


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@torch.no_grad()
def encode_shard(
    vae,
    dataset: EpisodeDataset,
    shard: int,
    config: ModelConfig,
    args: argparse.Namespace,
    device: torch.device,
    progress,
) -> torch.Tensor:
    """Latents (rows, C, h, w) of every row of parquet file ``dataset.files[shard]``, in row order, as fp16 on
    the CPU."""
    rows = torch.utils.data.Subset(FrameDataset(dataset), dataset.shard_frame_indices(shard).tolist())
    loader = torch.utils.data.DataLoader(
        rows,
        batch_size=args.batch_size,
        shuffle=False,
        num_workers=args.dataloader_num_workers,  # PNG decoding off the main thread
        pin_memory=device.type == "cuda",
    )
    chunks = []
    for pixels in loader:
        chunks.append(encode_frames(vae, pixels.to(device, non_blocking=True), config).to("cpu", torch.float16))
        progress.update(len(pixels))
    return torch.cat(chunks)


def main(args: argparse.Namespace) -> dict[str, Any]:
    # Under `accelerate launch` (or torchrun) each process encodes every num_processes-th shard into the same
    # cache; the main process checks the folder and writes the manifest first. Alone, it is process 0 of 1.
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as Accelerator() reads it
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output_dir {output_dir} exists and is not a folder")
    config = get_config(args.preset)
    dataset = open_checked_dataset(args, config)
    device = torch.device(args.device) if args.device else state.device
    vae, vae_path, encoder_sha256 = load_encoder(args, config, device)

    manifest = build_latent_manifest(
        config=config,
        dataset=dataset,
        dataset_name=args.dataset_name,
        vae_name_or_path=str(vae_path),
        vae_subfolder=args.vae_subfolder,
        vae_revision=args.revision,
        encoder_sha256=encoder_sha256,
        scaling_factor=float(vae.config.scaling_factor),
        num_actions=args.num_actions,
        mixed_precision=args.mixed_precision,
    )
    start_cache(state, output_dir, manifest, dataset)
    return encode_pending_shards(args, state, vae, vae_path, dataset, manifest, config, device)


def open_checked_dataset(args: argparse.Namespace, config: ModelConfig) -> EpisodeDataset:
    """The dataset, its frame size checked against the preset and its action ids against the action count."""
    dataset = open_dataset(
        args.dataset_name,
        columns=columns_from_args(args),
        revision=args.revision,
        cache_dir=args.cache_dir,
        cache_row_groups=4,
    )
    check_frame_size(dataset, config)
    if args.num_actions is not None or dataset.action_names:
        episode_actions = [dataset.actions(i) for i in range(len(dataset.episodes))]
        fix = "pass --num_actions N (N >= largest id + 1)"
        check_action_ids(dataset.episode_ids, episode_actions, args.num_actions, dataset.action_names, too_few_fix=fix)
    return dataset


def load_encoder(args: argparse.Namespace, config: ModelConfig, device: torch.device) -> tuple[Any, str, str]:
    """(the VAE on ``device`` in the --mixed_precision dtype, where it came from, the fingerprint of its encoder)."""
    vae_path = args.pretrained_vae_model_name_or_path or config.pretrained_model_name_or_path
    if not vae_path:
        raise UsageError(
            f"the {config.preset!r} preset has no pretrained VAE: pass --pretrained_vae_model_name_or_path (e.g. the "
            "--output_dir of finetune_autoencoder.py)"
        )
    vae = load_vae(vae_path, subfolder=args.vae_subfolder, revision=args.revision, cache_dir=args.cache_dir)
    check_vae(vae, config)
    encoder_sha256 = encoder_fingerprint(vae)  # of the stored weights, before any cast
    vae.to(device).eval().requires_grad_(False)
    if MIXED_PRECISION_DTYPES[args.mixed_precision] != torch.float32:
        vae.to(dtype=MIXED_PRECISION_DTYPES[args.mixed_precision])
    return vae, vae_path, encoder_sha256


def start_cache(state: PartialState, output_dir: Path, manifest: dict[str, Any], dataset: EpisodeDataset) -> None:
    """The main process checks the folder (a cache of the same settings to finish, or an empty folder) and writes the
    manifest; the other processes check that they see it."""
    with state.main_process_first():
        if state.is_main_process:
            existing = read_latent_manifest(output_dir)
            if existing is not None:
                check_existing(output_dir, existing, manifest, dataset)
            elif output_dir.is_dir() and any(output_dir.iterdir()):
                raise UsageError(
                    f"--output_dir {output_dir} is not empty and holds no latent cache ({MANIFEST_FILE}): "
                    "pick a new or empty folder"
                )
            output_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(output_dir)
            # The manifest first: until every shard file it lists exists, readers call the cache unfinished.
            write_latent_manifest(output_dir, manifest)
        elif read_latent_manifest(output_dir) != manifest:
            raise UsageError(
                f"process {state.process_index} does not see the manifest the main process wrote in "
                f"{output_dir}: every process needs the same --output_dir on shared storage"
            )


def encode_pending_shards(
    args: argparse.Namespace,
    state: PartialState,
    vae,
    vae_path: str,
    dataset: EpisodeDataset,
    manifest: dict[str, Any],
    config: ModelConfig,
    device: torch.device,
) -> dict[str, Any]:
    """Encode this process's shards that are not encoded yet, then wait for the others; the run's numbers."""
    output_dir, encoder_sha256 = Path(args.output_dir), manifest["vae"]["encoder_sha256"]
    shards = manifest["shards"]
    mine = list(range(state.process_index, len(shards), state.num_processes))
    pending = [i for i in mine if not is_encoded(output_dir, shards[i], encoder_sha256)]
    skipped = len(mine) - len(pending)
    who = f"process {state.process_index} of {state.num_processes}: " if state.num_processes > 1 else ""
    if skipped:
        print(f"{who}skipping {skipped} of {len(mine)} shards already encoded in {output_dir}")
    frames = sum(shards[i]["num_rows"] for i in pending)
    print(
        f"{who}encoding {frames} frames of {len(pending)} shards with {vae_path} ({config.preset} preset, latents "
        f"{'x'.join(map(str, config.latent_shape))}) on {device}"
    )
    started = time.perf_counter()
    with tqdm(total=frames, desc="encoding", unit="frame", disable=not state.is_local_main_process) as progress:
        for shard in pending:
            latents = encode_shard(vae, dataset, shard, config, args, device, progress)
            write_latent_shard(output_dir, shards[shard], latents, shard_actions(dataset, shard), encoder_sha256)
    seconds = time.perf_counter() - started
    state.wait_for_everyone()  # the cache is complete once every process has written its shards
    summary = {
        "output_dir": str(output_dir),
        "shards_encoded": len(pending),
        "shards_skipped": skipped,
        "frames_encoded": frames,
        "seconds": seconds,
        "frames_per_second": frames / seconds if frames and seconds > 0 else None,
    }
    rate = f" ({summary['frames_per_second']:.1f} frames/s)" if summary["frames_per_second"] else ""
    print(
        f"{who}encoded {frames} frames in {seconds:.1f} s{rate}; the cache {output_dir} holds {len(dataset)} frames of "
        f"{len(dataset.episodes)} episodes"
    )
    return summary


if __name__ == "__main__":
    try:
        main(parse_args())
    except (DatasetError, ModelLoadError, UsageError) as error:
        sys.exit(f"error: {error}")
