"""Benchmark: world-model training samples/s with the latent cache vs encoding the frames on the fly.

Both paths produce the same batch (gamengen.windows: context latents (B, N, C, h, w), target latent,
N actions, context mask), ready for the UNet:

  * on the fly: PixelWindowDataset (decode the N+1 PNG frames of every sample) + the VAE encoder
    (encode_pixel_windows), which is what training without a cache has to do each step;
  * cached: LatentWindowDataset reading encode_latents.py's files (no PNG, no VAE).

Measured for the tiny preset (64x48 frames recorded from E1M1 by the real generator, a random-init
tiny VAE: the encoder's cost does not depend on its weights) at context lengths 4 (the preset's)
and 16, in the main process (DataLoader workers would only share the same 2 cores), and also a
whole training step (batch + the tiny world model's forward/backward/AdamW step). The one-time
cost of making the cache is reported too. Goal: cached >= 5x on the data side.

    python benchmarks/bench_latent_cache.py [--dataset_name DIR] [--num_batches 20]

Results: benchmarks/results/latent_cache.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from gamengen.config import DEFAULT_CONTEXT_LENGTH, ModelConfig, get_config, get_world_model_config  # noqa: E402
from gamengen.episodes import EpisodeDataset, open_dataset, shard_actions  # noqa: E402
from gamengen.latent_cache import (  # noqa: E402
    LatentCache,
    build_latent_manifest,
    write_latent_manifest,
    write_latent_shard,
)
from gamengen.model import build_world_model  # noqa: E402
from gamengen.vae import build_vae, encode_frames, load_vae, save_vae  # noqa: E402
from gamengen.windows import LatentWindowDataset, PixelWindowDataset, encode_pixel_windows  # noqa: E402


def record_dataset(out: Path, episodes: int, steps: int, frame_size: str = "64x48") -> Path:
    """Real E1M1 frames, random policy (as the README's quickstart records them)."""
    command = [
        sys.executable,
        str(REPO / "ViZDoomPPO/load_model_generate_dataset.py"),
        "--random_policy",
        "--episodes",
        str(episodes),
    ]
    command += [
        "--num_workers",
        "2",
        "--max_steps_per_episode",
        str(steps),
        "--out_dir",
        str(out),
        "--frame_size",
        frame_size,
        "--seed",
        "0",
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return out


def sd14_encoder_frames_per_second(num_frames: int) -> float:
    """Stable Diffusion v1.4's VAE encoder (random weights, same cost) on 320x240 frames padded to 320x256."""
    config = get_config("sd14")
    torch.manual_seed(0)
    vae = build_vae(config).eval().requires_grad_(False)
    pixels = torch.rand(num_frames, 3, config.frame_height, config.frame_width) * 2 - 1
    encode_frames(vae, pixels[:1], config)
    started = time.perf_counter()
    encode_frames(vae, pixels, config)
    return num_frames / (time.perf_counter() - started)


def sd14_shaped_cache(dataset_dir: Path, out: Path) -> LatentCache:
    """A cache in encode_latents.py's format with random sd14-shaped latents (4x32x40) for a 320x240
    dataset: reading costs the same as for real latents, and encoding them for real takes hours on a CPU."""
    dataset = open_dataset(dataset_dir)
    manifest = build_latent_manifest(
        config=get_config("sd14"),
        dataset=dataset,
        dataset_name=str(dataset_dir),
        vae_name_or_path="random-sd14-shaped-latents",
        vae_subfolder="vae",
        vae_revision=None,
        encoder_sha256="synthetic",
        scaling_factor=0.18215,
        num_actions=None,
        mixed_precision="no",
    )
    out.mkdir(parents=True)
    write_latent_manifest(out, manifest)
    for shard_index, shard in enumerate(manifest["shards"]):
        latents = torch.randn(shard["num_rows"], *get_config("sd14").latent_shape)
        write_latent_shard(out, shard, latents, shard_actions(dataset, shard_index), "synthetic")
    return LatentCache(out)


def batches(windows: torch.utils.data.Dataset, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    sampler = torch.utils.data.RandomSampler(windows, generator=torch.Generator().manual_seed(seed))
    return torch.utils.data.DataLoader(windows, batch_size=batch_size, sampler=sampler, drop_last=True)


def samples_per_second(loader, num_batches: int, prepare=None, train_step=None) -> float:
    """Batches ready for the UNet (optionally followed by a training step) per second, after one warm-up batch."""
    iterator = iter(loader)
    count, started = 0, None
    for index in range(num_batches + 1):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        if prepare is not None:
            batch = prepare(batch)
        if train_step is not None:
            train_step(batch)
        if index == 0:
            started = time.perf_counter()  # the first batch warms up allocators and file caches
        else:
            count += len(batch["step"])
    return count / (time.perf_counter() - started)


def make_train_step(context_length: int, action_names: list[str]):
    """One optimisation step of the tiny world model (v-prediction loss shape; exact targets do not matter for
    timing)."""
    torch.manual_seed(0)
    config = get_world_model_config("tiny", action_names, context_length=context_length)
    model = build_world_model(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch: dict[str, torch.Tensor]) -> None:
        target = batch["target"]
        noise = torch.randn_like(target)
        timesteps = torch.randint(0, 1000, (len(target),))
        buckets = torch.randint(0, config.noise_buckets, (len(target),))
        prediction = model(target + noise, timesteps, batch["context"], batch["actions"], buckets)
        loss = F.mse_loss(prediction, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset_name", default=None, help="a 64x48 dataset folder (default: record 4 episodes x 150 steps)"
    )
    parser.add_argument("--context_lengths", type=int, nargs="+", default=[DEFAULT_CONTEXT_LENGTH["tiny"], 16])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_batches", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--torch_threads", type=int, default=2)
    parser.add_argument(
        "--sd14_encoder_frames", type=int, default=4, help="frames timed through the sd14-size VAE encoder"
    )
    parser.add_argument("--skip_sd14", action="store_true", help="skip the sd14-size measurements (~40 s)")
    parser.add_argument("--output", default=str(REPO / "benchmarks/results/latent_cache.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.torch_threads)
    config = get_config("tiny")

    results: dict = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "preset": "tiny",
        "batch_size": args.batch_size,
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset_dir = (
            Path(args.dataset_name) if args.dataset_name else record_dataset(tmp / "ds", episodes=4, steps=150)
        )
        episodes, vae, cache = build_cache(dataset_dir, tmp, config, results)
        results["measurements"] = [
            measure_context_length(args, context_length, episodes, vae, cache, config)
            for context_length in args.context_lengths
        ]
        if not args.skip_sd14:
            results["sd14"] = measure_sd14(args, tmp)
            print(f"sd14: {results['sd14']}", flush=True)

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print_report(results)


def build_cache(
    dataset_dir: Path, tmp: Path, config: ModelConfig, results: dict
) -> tuple[EpisodeDataset, Any, LatentCache]:
    """(the episodes, a random-init tiny VAE, the latent cache encode_latents.py makes of them with it), the cache's
    one-time cost into ``results``."""
    torch.manual_seed(0)
    save_vae(build_vae(config), tmp / "vae")
    vae = load_vae(tmp / "vae").eval().requires_grad_(False)
    episodes = open_dataset(dataset_dir)
    results["dataset_frames"] = len(episodes)

    started = time.perf_counter()
    options = ["--preset", "tiny", "--dataset_name", str(dataset_dir), "--batch_size", "64"]
    options += ["--pretrained_vae_model_name_or_path", str(tmp / "vae"), "--output_dir", str(tmp / "latents")]
    subprocess.run([sys.executable, str(REPO / "encode_latents.py"), *options], check=True, cwd=REPO)
    results["cache_build_seconds"] = time.perf_counter() - started
    results["cache_build_frames_per_s"] = len(episodes) / results["cache_build_seconds"]
    return episodes, vae, LatentCache(tmp / "latents")


def measure_context_length(
    args: argparse.Namespace,
    context_length: int,
    episodes: EpisodeDataset,
    vae,
    cache: LatentCache,
    config: ModelConfig,
) -> dict:
    """Samples/s of a ready batch and of a training step, on the fly and cached, at one context length."""
    pixel_windows = PixelWindowDataset(episodes, context_length=context_length, config=config)
    latent_windows = LatentWindowDataset(cache, context_length=context_length)
    on_the_fly = samples_per_second(
        batches(pixel_windows, args.batch_size, 0),
        args.num_batches,
        prepare=lambda b: encode_pixel_windows(vae, b, config),
    )
    decode_only = samples_per_second(batches(pixel_windows, args.batch_size, 0), args.num_batches)
    cached = samples_per_second(batches(latent_windows, args.batch_size, 0), args.num_batches * 5)
    step = make_train_step(context_length, episodes.action_names)
    train_on_the_fly = samples_per_second(
        batches(pixel_windows, args.batch_size, 1),
        args.num_batches // 2,
        prepare=lambda b: encode_pixel_windows(vae, b, config),
        train_step=step,
    )
    train_cached = samples_per_second(
        batches(latent_windows, args.batch_size, 1), args.num_batches // 2, train_step=step
    )
    row = {
        "context_length": context_length,
        "batch_ready_on_the_fly_samples_per_s": on_the_fly,
        "of_which_png_decode_only_samples_per_s": decode_only,
        "batch_ready_cached_samples_per_s": cached,
        "batch_ready_speedup": cached / on_the_fly,
        "train_step_on_the_fly_samples_per_s": train_on_the_fly,
        "train_step_cached_samples_per_s": train_cached,
        "train_step_speedup": train_cached / train_on_the_fly,
    }
    print(f"N={context_length}: {row}", flush=True)
    return row


def measure_sd14(args: argparse.Namespace, tmp: Path) -> dict:
    """The paper's size: what encoding on the fly would cost per sample, and what reading the cache costs."""
    context_length = DEFAULT_CONTEXT_LENGTH["sd14"]
    encoder_rate = sd14_encoder_frames_per_second(args.sd14_encoder_frames)
    sd14_cache = sd14_shaped_cache(
        record_dataset(tmp / "ds320", episodes=2, steps=200, frame_size="320x240"), tmp / "latents320"
    )
    sd14_windows = LatentWindowDataset(sd14_cache, context_length=context_length)
    return {
        "context_length": context_length,
        "vae_encoder_frames_per_s_this_cpu": encoder_rate,
        "on_the_fly_encode_seconds_per_sample_this_cpu": (context_length + 1) / encoder_rate,
        "batch_ready_cached_samples_per_s": samples_per_second(
            batches(sd14_windows, args.batch_size, 0), args.num_batches * 5
        ),
    }


def print_report(results: dict) -> None:
    """The results as a markdown table (and a sentence on sd14)."""
    print(
        f"\n{results['machine']}; tiny preset (64x48 frames, latents 4x12x16), batch {results['batch_size']}, "
        "main process"
    )
    print(
        f"cache build (one time): {results['dataset_frames']} frames in {results['cache_build_seconds']:.1f} s "
        f"({results['cache_build_frames_per_s']:.0f} frames/s)\n"
    )
    print(
        "| context N | batch ready: on the fly | (PNG decode alone) | batch ready: cached | speedup | train step: on "
        "the fly | train step: cached | speedup |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in results["measurements"]:
        print(
            f"| {row['context_length']} | {row['batch_ready_on_the_fly_samples_per_s']:.0f} samples/s | "
            f"{row['of_which_png_decode_only_samples_per_s']:.0f} | "
            f"{row['batch_ready_cached_samples_per_s']:.0f} samples/s | **{row['batch_ready_speedup']:.1f}x** | "
            f"{row['train_step_on_the_fly_samples_per_s']:.0f} samples/s | "
            f"{row['train_step_cached_samples_per_s']:.0f} samples/s | {row['train_step_speedup']:.1f}x |"
        )
    if "sd14" in results:
        sd14 = results["sd14"]
        print(
            f"\nsd14 (320x240 -> latents 4x32x40, N={sd14['context_length']}): the VAE encoder runs at "
            f"{sd14['vae_encoder_frames_per_s_this_cpu']:.2f} frames/s "
            f"on this CPU, so encoding on the fly costs {sd14['on_the_fly_encode_seconds_per_sample_this_cpu']:.0f} s "
            "per sample; "
            f"the cache serves {sd14['batch_ready_cached_samples_per_s']:.0f} samples/s"
        )


if __name__ == "__main__":
    main()
