"""The checkpoint folder of a world model (docs/architecture.md#the-checkpoint-folder): ``unet/``, ``vae/``,
``scheduler/``, the action embedding and ``gamengen_config.json``, written atomically by
``save_world_model`` and read back (a local folder or a Hub id) by ``load_world_model``, the loader of every
consumer. Checkpoints of the seed repository's layout are converted on load (``gamengen.peer``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from gamengen import peer
from gamengen.bundle import (
    ACTION_EMBEDDING_FILE,
    CONFIG_FILE,
    SCHEDULER_SUBFOLDER,
    WorldModelBundle,
    placed,
    resolve_checkpoint,
)
from gamengen.config import WorldModelConfig
from gamengen.files import atomic_path, temporary_path
from gamengen.model import (
    UNET_SUBFOLDER,
    ModelLoadError,
    WorldModel,
    _unet_class,
    make_scheduler,
    make_world_model,
    read_weights,
)
from gamengen.vae import VAE_SUBFOLDER, check_vae, read_autoencoder


def save_world_model(
    output_dir: str | os.PathLike,
    model: WorldModel,
    vae: AutoencoderKL,
    config: WorldModelConfig,
    scheduler=None,
    model_card: str | None = None,
) -> Path:
    """Write the checkpoint parts into ``output_dir`` (other contents, such as training checkpoints,
    are left alone). The parts are written to a hidden temporary folder first and each is then
    renamed into place, the config last, so a reader never sees a half-written part."""
    from safetensors.torch import save_file

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = temporary_path(output_dir / "checkpoint")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        config.unet = {k: v for k, v in dict(model.unet.config).items() if not k.startswith("_")}
        model.unet.save_pretrained(staging / UNET_SUBFOLDER)
        vae.save_pretrained(staging / VAE_SUBFOLDER)
        (scheduler or make_scheduler(config)).save_pretrained(staging / SCHEDULER_SUBFOLDER)
        embeddings = {"weight": model.action_embedding.weight}
        if model.action_position is not None:
            embeddings["position"] = model.action_position
        embeddings = {k: v.detach().float().cpu().contiguous() for k, v in embeddings.items()}
        save_file(embeddings, str(staging / ACTION_EMBEDDING_FILE))
        (staging / "README.md").write_text(model_card or default_model_card(config))
        (staging / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
        # Every part is complete before the first one replaces its predecessor; the config goes last.
        for name in (
            UNET_SUBFOLDER,
            VAE_SUBFOLDER,
            SCHEDULER_SUBFOLDER,
            ACTION_EMBEDDING_FILE,
            "README.md",
            CONFIG_FILE,
        ):
            with atomic_path(output_dir / name) as part:
                os.replace(staging / name, part)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def default_model_card(config: WorldModelConfig) -> str:
    return (
        "---\ntags:\n- gamengen\n- world-model\n- vizdoom\n---\n\n"
        f"# GameNGen world model ({config.model.preset})\n\n"
        f"Predicts the next {config.model.frame_width}x{config.model.frame_height} DOOM frame from the last "
        f"{config.context_length} frames and actions ({config.num_actions} actions: {', '.join(config.action_names)}). "
        f"Sampling: {config.num_inference_steps} DDIM steps ({config.sampler_timesteps} timesteps, eta "
        f"{config.sampler_eta}), {config.prediction_type}, CFG {config.guidance_scale} on the context.\n\n"
        f"Dataset: {config.dataset.get('name', 'unknown')}\n"
    )


def read_world_model_config(name_or_path: str | os.PathLike, revision: str | None = None) -> WorldModelConfig:
    """A checkpoint's ``gamengen_config.json`` (folder or Hub id), without loading any weights."""
    root = resolve_checkpoint(name_or_path, revision)
    path = root / CONFIG_FILE
    if not path.is_file() and peer.is_peer_checkpoint(root):
        return peer.read_peer_config(root)
    if not path.is_file():
        raise ModelLoadError(
            f"{root} is not a world-model checkpoint: missing {CONFIG_FILE} (written by train_text_to_image.py)"
        )
    try:
        return WorldModelConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"{path} is not a valid world-model config: {error}") from error


def load_world_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    num_actions: int | None = None,
    revision: str | None = None,
) -> WorldModelBundle:
    """THE loader of every consumer: a checkpoint folder or Hub id -> WorldModelBundle.

    Refuses a folder with a missing part, or whose parts disagree with its config (or with
    ``num_actions`` when the caller knows how many actions its data has)."""
    from diffusers import DDIMScheduler
    from safetensors.torch import load_file

    root = resolve_checkpoint(name_or_path, revision)
    if peer.is_peer_checkpoint(root):  # the seed repository's layout, converted on load
        bundle = peer.convert_peer_checkpoint(root)
        if num_actions is not None and num_actions != bundle.config.num_actions:
            raise peer.PeerCheckpointError(
                f"the checkpoint has {bundle.config.num_actions} actions (its action embedding's rows), "
                f"the data has {num_actions}"
            )
        return placed(bundle, device, dtype)
    parts = [
        CONFIG_FILE,
        f"{UNET_SUBFOLDER}/config.json",
        f"{VAE_SUBFOLDER}/config.json",
        f"{SCHEDULER_SUBFOLDER}/scheduler_config.json",
        ACTION_EMBEDDING_FILE,
    ]
    missing = [part for part in parts if not (root / part).is_file()]
    if missing:
        raise ModelLoadError(
            f"{root} is not a complete world-model checkpoint: missing {', '.join(missing)} (written by "
            "train_text_to_image.py)"
        )
    config = read_world_model_config(root)
    if num_actions is not None and num_actions != config.num_actions:
        raise ModelLoadError(
            f"the checkpoint was trained with {config.num_actions} actions, the data has {num_actions}"
        )
    unet = read_weights(root / UNET_SUBFOLDER, lambda: _unet_class().from_pretrained(root, subfolder=UNET_SUBFOLDER))
    problems = []
    if unet.config.in_channels != config.unet_in_channels:
        problems.append(
            f"unet takes {unet.config.in_channels} input channels, the config needs {config.unet_in_channels} (context "
            f"{config.context_length})"
        )
    if unet.config.num_class_embeds != config.num_class_embeds:
        problems.append(
            f"unet has {unet.config.num_class_embeds} class labels, the config {config.num_class_embeds} (noise "
            "buckets x actions when action_class)"
        )
    embeddings = read_weights(root / ACTION_EMBEDDING_FILE, lambda: load_file(str(root / ACTION_EMBEDDING_FILE)))
    embedding, position = embeddings["weight"], embeddings.get("position")
    if tuple(embedding.shape) != (config.num_actions, unet.config.cross_attention_dim):
        problems.append(
            f"action embedding is {tuple(embedding.shape)}, expected ({config.num_actions}, "
            f"{unet.config.cross_attention_dim})"
        )
    if config.action_positions and (
        position is None or tuple(position.shape) != (config.context_length, unet.config.cross_attention_dim)
    ):
        found = "none" if position is None else tuple(position.shape)
        problems.append(
            f"action position embedding is {found}, expected ({config.context_length}, "
            f"{unet.config.cross_attention_dim})"
        )
    vae = read_weights(root / VAE_SUBFOLDER, lambda: read_autoencoder(root, VAE_SUBFOLDER, dtype))
    try:
        check_vae(vae, config.model)
    except ModelLoadError as error:
        problems.append(str(error))
    if problems:
        raise ModelLoadError(f"{root} does not match its {CONFIG_FILE}: " + "; ".join(problems))
    model = make_world_model(unet, config)
    with torch.no_grad():
        model.action_embedding.weight.copy_(embedding)
        if model.action_position is not None:
            model.action_position.copy_(position)
    scheduler = DDIMScheduler.from_pretrained(root, subfolder=SCHEDULER_SUBFOLDER)
    return placed(WorldModelBundle(model=model, vae=vae, scheduler=scheduler, config=config), device, dtype)
