"""The names of a checkpoint folder's parts, the in-memory bundle every consumer receives, and where a checkpoint
name (a local folder or a Hub id) points. ``gamengen.checkpoint`` writes and reads this project's folders and
``gamengen.peer`` converts the seed repository's; both build on this module (so neither imports the other's
internals).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from gamengen.config import WorldModelConfig
from gamengen.errors import ModelLoadError
from gamengen.locations import looks_local, missing_folder, neither_folder_nor_hub
from gamengen.model import WorldModel

SCHEDULER_SUBFOLDER = "scheduler"
ACTION_EMBEDDING_FILE = "action_embedding.safetensors"
CONFIG_FILE = "gamengen_config.json"


@dataclass
class WorldModelBundle:
    """What a consumer needs: the model, the VAE, the scheduler and the config."""

    model: WorldModel
    vae: AutoencoderKL
    scheduler: Any
    config: WorldModelConfig


def resolve_checkpoint(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local checkpoint folder, or a Hub model id downloaded to the local cache."""
    if looks_local(name_or_path):
        root = Path(name_or_path).expanduser()
        if not root.is_dir():
            raise ModelLoadError(missing_folder("checkpoint folder", name_or_path, "model"))
        return root
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), revision=revision))
    except Exception as error:  # offline, missing repo, no access: all end the same way for the user
        raise ModelLoadError(neither_folder_nor_hub(name_or_path, "checkpoint", error)) from error


def placed(bundle: WorldModelBundle, device: str | torch.device, dtype: torch.dtype) -> WorldModelBundle:
    """``bundle`` with its world model and VAE on ``device`` in ``dtype``, in evaluation mode."""
    bundle.model.to(device=device, dtype=dtype).eval()
    bundle.vae.to(device=device).eval()
    if bundle.vae.dtype != dtype:  # a converted seed VAE; ours is loaded in ``dtype`` (diffusers warns on a no-op cast)
        bundle.vae.to(dtype=dtype)
    return bundle
