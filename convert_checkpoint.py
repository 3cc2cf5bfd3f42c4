"""Convert a checkpoint of the seed repository (arnaudstiegler/gameNgen-repro) to this project's checkpoint layout.

The seed's checkpoints (e.g. arnaudstiegler/gameNgen-baseline-20ksteps, arnaudstiegler/sd-model-gameNgen-60ksteps)
hold unet/, vae/, noise_scheduler/, action_embedding_model.safetensors and embedding_info.json. The converted
folder is a regular world-model checkpoint (gamengen_config.json, unet/, vae/, scheduler/,
action_embedding.safetensors) that every script here loads; it keeps the seed's 320x240 frames (no padding), its
context of 9 frames, 10 DDIM steps and no classifier-free guidance. (Scripts also load a seed folder directly,
converting it on every load.) gamengen/peer.py lists where this project's engine differs from the seed's training.

Example (the seed's inference also puts in its published fine-tuned decoder; --vae does the same):

    python convert_checkpoint.py --model_folder arnaudstiegler/gameNgen-baseline-20ksteps \\
        --vae P-H-B-D-a16z/GameNGenSDVaeDecoder --output_dir checkpoints/gameNgen-baseline-20ksteps
    python run_autoregressive.py --model_folder checkpoints/gameNgen-baseline-20ksteps --dataset_name ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gamengen.checkpoint import save_world_model
from gamengen.files import atomic_path
from gamengen.help_format import HelpFormatter
from gamengen.model import ModelLoadError
from gamengen.peer import convert_peer_checkpoint, peer_model_card


class UsageError(ValueError):
    """Arguments that cannot work as given (the message says what to change)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument(
        "--model_folder", required=True, help="the seed's checkpoint: a local folder or a Hub model id (USER/NAME)"
    )
    parser.add_argument(
        "--output_dir", required=True, help="new folder for the converted checkpoint (never overwritten)"
    )
    parser.add_argument(
        "--vae",
        default=None,
        help="fine-tuned VAE decoder to put in: a state-dict file of vae.decoder, a folder with vae/ or an "
        "AutoencoderKL folder, or a Hub id of one (e.g. P-H-B-D-a16z/GameNGenSDVaeDecoder)",
    )
    parser.add_argument("--revision", default=None, help="revision of a Hub model")
    parser.add_argument(
        "--action_names",
        default=None,
        help="comma-separated names of the action ids 0..n-1; unset: the seed's 18 actions, TURN_LEFT first",
    )
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, Any]:
    output_dir = Path(args.output_dir).expanduser()
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise UsageError(f"--output_dir {output_dir} already exists and is not empty: choose a new folder")
    action_names = [name.strip() for name in args.action_names.split(",")] if args.action_names else None
    if action_names is not None and (not all(action_names) or len(set(action_names)) != len(action_names)):
        raise UsageError(f"--action_names {args.action_names!r} must be distinct, non-empty names separated by commas")
    bundle = convert_peer_checkpoint(args.model_folder, vae=args.vae, action_names=action_names, revision=args.revision)
    config = bundle.config
    with atomic_path(output_dir) as tmp:
        card = peer_model_card(config)
        save_world_model(tmp, bundle.model, bundle.vae, config, scheduler=bundle.scheduler, model_card=card)
    print(
        f"converted {args.model_folder} -> {output_dir}: context {config.context_length} frames, "
        f"{config.model.frame_width}x{config.model.frame_height} frames "
        f"(latents {'x'.join(map(str, config.model.latent_shape))}), "
        f"{config.num_actions} actions ({', '.join(config.action_names)}), {config.num_inference_steps} DDIM steps, "
        f"guidance scale {config.guidance_scale}"
    )
    return {"output_dir": str(output_dir), "config": config.to_dict()}


if __name__ == "__main__":
    try:
        main(parse_args())
    except (ModelLoadError, UsageError) as error:
        sys.exit(f"error: {error}")
