"""Checkpoints of the seed repository (github.com/arnaudstiegler/gameNgen-repro) in this project's layout.

A seed checkpoint is a folder (or Hub repo, e.g. arnaudstiegler/gameNgen-baseline-20ksteps) holding ``unet/``,
``vae/``, ``noise_scheduler/`` (diffusers), ``action_embedding_model.safetensors`` (the state dict of an
``nn.Embedding`` of 768-d action tokens) and ``embedding_info.json`` (``num_embeddings``, ``embedding_dim``).
``convert_peer_checkpoint`` turns it into a ``WorldModelBundle`` that this project's engine runs, and
``gamengen.checkpoint.load_world_model`` calls it when it is given such a folder (``convert_checkpoint.py`` writes the
result as a regular checkpoint).

What carries over exactly:

- the UNet weights. The seed stacks the UNet input as ``[context oldest .. newest, noisy target]``, this project as
  ``[noisy target, context oldest .. newest]``: the input channels of ``conv_in`` are reordered, so the converted
  UNet computes what the seed's computed;
- context length N = ``unet.in_channels / 4 - 1`` (9 for the published checkpoints), 320x240 frames given to the
  VAE without padding (latents 4x30x40), latents scaled by ``vae.config.scaling_factor``;
- the noise bucket as the UNet's class label, bucket 0 (clean context) at inference, as the seed samples;
- the scheduler as saved (DDIM, v-prediction, SD v1.4's betas, "leading" timestep spacing) with the seed's default
  of 10 sampling steps, and classifier-free guidance off (guidance scale 1), as the seed's inference scripts run;
- the action embedding, one cross-attention token per action, no position embedding, no action class label.

Where this project's engine differs from the seed's training (and so from what the model learned):

- action tokens: the seed trains on N + 1 tokens, the actions of the N context frames AND of the target, with the
  seed's dataset rule that a row's action produced that row's frame, i.e. the actions that produced frames t-N .. t.
  The engine gives N tokens, the actions that produced frames t-N+1 .. t: the newest N of the seed's, the oldest
  one (the action that produced the oldest context frame) missing. Without position embeddings the tokens are an
  unordered set to cross-attention, so only that one token's share of the attention is lost;
- episode starts: the seed pads a short context with black frames and action id 0 (TURN_LEFT in its action set),
  and only before the first row of the whole dataset (its windows otherwise run across episode boundaries); the
  engine repeats the first frame (action id 0 as well);
- context latents: the seed encodes context frames with a sample of the VAE posterior, the engine with its mean;
- noise buckets above 0: the seed's bucket b holds noise levels round(sigma / 0.07) = b (sigma uniform in
  [0, 0.7]), the engine's bucket b adds sigma = b * 0.7 / 9;
- CFG: the seed's unconditional training input is the VAE latent of mid-grey context frames (pixels set to 0), the
  engine's the all-zero latent; keep the guidance scale at 1 (the seed's scripts also sample without guidance).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from gamengen.bundle import CONFIG_FILE, WorldModelBundle, resolve_checkpoint
from gamengen.config import SD14_VAE_CONFIG, ModelConfig, WorldModelConfig
from gamengen.errors import PeerCheckpointError
from gamengen.locations import looks_local, missing_folder, neither_folder_nor_hub
from gamengen.model import _unet_class, make_world_model

PEER_UNET_SUBFOLDER = "unet"
PEER_VAE_SUBFOLDER = "vae"
PEER_SCHEDULER_SUBFOLDER = "noise_scheduler"
PEER_EMBEDDING_FILE = "action_embedding_model.safetensors"
PEER_EMBEDDING_INFO_FILE = "embedding_info.json"
PEER_PARTS = (
    f"{PEER_UNET_SUBFOLDER}/config.json",
    f"{PEER_VAE_SUBFOLDER}/config.json",
    f"{PEER_SCHEDULER_SUBFOLDER}/scheduler_config.json",
    PEER_EMBEDDING_FILE,
    PEER_EMBEDDING_INFO_FILE,
)
# Files only a seed checkpoint has (this project's checkpoints name theirs differently).
PEER_MARKERS = (PEER_EMBEDDING_FILE, PEER_EMBEDDING_INFO_FILE, PEER_SCHEDULER_SUBFOLDER)

# The seed's frame size (config_sd.py HEIGHT, WIDTH): frames go to the VAE as they are, without padding.
PEER_FRAME_WIDTH = 320
PEER_FRAME_HEIGHT = 240
# The name of the converted model geometry: Stable Diffusion v1.4's VAE like ``sd14``, but unpadded 320x240.
PEER_PRESET = "sd14-peer"
PEER_BASE_MODEL = "CompVis/stable-diffusion-v1-4"
PEER_NUM_INFERENCE_STEPS = 10  # config_sd.py DEFAULT_NUM_INFERENCE_STEPS
PEER_MAX_NOISE_LEVEL = 0.7  # config_sd.py MAX_NOISE_LEVEL
PEER_CONTEXT_DROPOUT = 0.1  # config_sd.py ZERO_OUT_ACTION_CONDITIONING_PROB (drops the context frames)

# The seed's action ids: every legal combination of the buttons of its deathmatch_simple.cfg (ATTACK, MOVE_FORWARD,
# MOVE_LEFT, MOVE_RIGHT, TURN_RIGHT, TURN_LEFT; left/right pairs exclusive, ATTACK alone, no no-op), enumerated
# with the last button varying fastest. Spelled in this project's control names so that live play binds keys.
PEER_ACTION_NAMES: tuple[str, ...] = (
    "TURN_LEFT",
    "TURN_RIGHT",
    "STRAFE_RIGHT",
    "STRAFE_RIGHT_TURN_LEFT",
    "STRAFE_RIGHT_TURN_RIGHT",
    "STRAFE_LEFT",
    "STRAFE_LEFT_TURN_LEFT",
    "STRAFE_LEFT_TURN_RIGHT",
    "FORWARD",
    "FORWARD_TURN_LEFT",
    "FORWARD_TURN_RIGHT",
    "FORWARD_STRAFE_RIGHT",
    "FORWARD_STRAFE_RIGHT_TURN_LEFT",
    "FORWARD_STRAFE_RIGHT_TURN_RIGHT",
    "FORWARD_STRAFE_LEFT",
    "FORWARD_STRAFE_LEFT_TURN_LEFT",
    "FORWARD_STRAFE_LEFT_TURN_RIGHT",
    "ATTACK",
)

# A fine-tuned decoder given as a file: a state dict of ``vae.decoder`` (the seed's published
# P-H-B-D-a16z/GameNGenSDVaeDecoder holds trained_vae_decoder.pth), optionally prefixed with ``decoder.``.
DECODER_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def is_peer_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether a local folder is a checkpoint of the seed repository (by its files), not one of this project."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / CONFIG_FILE).is_file():
        return False
    return any((folder / marker).exists() for marker in PEER_MARKERS)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PeerCheckpointError(f"{path} is not readable JSON ({error})") from error
    if not isinstance(values, dict):
        raise PeerCheckpointError(f"{path} holds {type(values).__name__}, expected a JSON object")
    return values


def _check_parts(root: Path) -> None:
    missing = [part for part in PEER_PARTS if not (root / part).is_file()]
    if (root / f"{PEER_UNET_SUBFOLDER}/config.json").is_file() and not any(
        (root / PEER_UNET_SUBFOLDER).glob("diffusion_pytorch_model*")
    ):
        missing.append(f"{PEER_UNET_SUBFOLDER}/diffusion_pytorch_model.safetensors")
    if missing:
        raise PeerCheckpointError(
            f"{root} looks like a gameNgen-repro checkpoint but is incomplete: missing {', '.join(missing)} "
            f"(its save_model writes unet/, vae/, noise_scheduler/, {PEER_EMBEDDING_FILE} and "
            f"{PEER_EMBEDDING_INFO_FILE})"
        )


def peer_action_names(num_actions: int, action_names: list[str] | None = None) -> list[str]:
    """The converted model's action names: the caller's, else the seed's action set (its ids are the seed's
    whenever the embedding has no more rows than that set), else ACTION_0 .. ACTION_{n-1}."""
    if action_names is not None:
        if len(action_names) != num_actions:
            raise PeerCheckpointError(
                f"{len(action_names)} action names given, the checkpoint's action embedding has {num_actions} rows"
            )
        return list(action_names)
    if num_actions <= len(PEER_ACTION_NAMES):
        return list(PEER_ACTION_NAMES[:num_actions])
    return [f"ACTION_{i}" for i in range(num_actions)]


def read_peer_config(
    name_or_path: str | os.PathLike, action_names: list[str] | None = None, revision: str | None = None
) -> WorldModelConfig:
    """The ``WorldModelConfig`` that reproduces a seed checkpoint's semantics, from its JSON files alone."""
    root = resolve_checkpoint(name_or_path, revision)
    if (root / CONFIG_FILE).is_file():
        raise PeerCheckpointError(
            f"{root} has a {CONFIG_FILE}: it is already a checkpoint of this project, load it as it is"
        )
    if not is_peer_checkpoint(root):
        raise PeerCheckpointError(
            f"{root} is not a gameNgen-repro checkpoint (it has none of {', '.join(PEER_MARKERS)})"
        )
    _check_parts(root)
    unet = _read_json(root / PEER_UNET_SUBFOLDER / "config.json")
    vae = _read_json(root / PEER_VAE_SUBFOLDER / "config.json")
    scheduler = _read_json(root / PEER_SCHEDULER_SUBFOLDER / "scheduler_config.json")
    info = _read_json(root / PEER_EMBEDDING_INFO_FILE)
    problems = []
    num_embeddings, embedding_dim = info.get("num_embeddings"), info.get("embedding_dim")
    if not isinstance(num_embeddings, int) or num_embeddings < 1:
        problems.append(
            f"{PEER_EMBEDDING_INFO_FILE} has num_embeddings {num_embeddings!r}, expected a positive integer"
        )
    if embedding_dim != unet.get("cross_attention_dim"):
        problems.append(
            f"{PEER_EMBEDDING_INFO_FILE} has embedding_dim {embedding_dim!r}, the UNet's cross_attention_dim is "
            f"{unet.get('cross_attention_dim')!r}"
        )
    latent_channels = vae.get("latent_channels", 4)
    in_channels = unet.get("in_channels")
    if not isinstance(in_channels, int) or in_channels % latent_channels or in_channels < 2 * latent_channels:
        problems.append(
            f"the UNet takes {in_channels!r} input channels, expected {latent_channels} x (context frames + 1)"
        )
    buckets = unet.get("num_class_embeds")
    if not isinstance(buckets, int) or buckets < 1:
        problems.append(
            f"the UNet has num_class_embeds {buckets!r}: a seed checkpoint has one class per noise bucket (10)"
        )
    prediction_type = scheduler.get("prediction_type", "epsilon")
    if prediction_type not in ("v_prediction", "epsilon"):
        problems.append(f"the scheduler predicts {prediction_type!r}, expected v_prediction")
    if problems:
        raise PeerCheckpointError(f"{root} is not a usable gameNgen-repro checkpoint: " + "; ".join(problems))
    vae_arguments = {key: vae[key] for key in SD14_VAE_CONFIG if key in vae}
    model = ModelConfig(
        preset=PEER_PRESET,
        frame_width=PEER_FRAME_WIDTH,
        frame_height=PEER_FRAME_HEIGHT,
        padded_width=PEER_FRAME_WIDTH,
        padded_height=PEER_FRAME_HEIGHT,
        latent_scaling_factor=float(vae.get("scaling_factor", 0.18215)),
        pretrained_model_name_or_path=PEER_BASE_MODEL,
        vae=vae_arguments,
    )
    return WorldModelConfig(
        model=model,
        context_length=in_channels // latent_channels - 1,
        action_names=peer_action_names(num_embeddings, action_names),
        unet={key: value for key, value in unet.items() if not key.startswith("_")},
        noise_buckets=buckets,
        max_noise_level=PEER_MAX_NOISE_LEVEL,
        context_dropout=PEER_CONTEXT_DROPOUT,
        guidance_scale=1.0,
        num_inference_steps=PEER_NUM_INFERENCE_STEPS,
        inference_noise_bucket=0,
        prediction_type=prediction_type,
        residual=False,
        action_positions=False,
        action_class=False,
        dataset={"name": None, "converted_from": str(name_or_path), "source_format": "gameNgen-repro"},
    )


def reorder_conv_in(unet: Any, latent_channels: int) -> None:
    """Move the noisy target's input channels of ``conv_in`` from last (the seed's order) to first (this
    project's): in place, so that the UNet computes the same function of the reordered input."""
    with torch.no_grad():
        weight = unet.conv_in.weight
        weight.copy_(torch.cat([weight[:, -latent_channels:], weight[:, :-latent_channels]], dim=1))


def _decoder_state_from_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise PeerCheckpointError(f"{path} is not a readable PyTorch state dict ({error})") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PeerCheckpointError(f"{path} does not hold a state dict of tensors (expected the weights of vae.decoder)")
    return state


def _decoder_state_from_vae(folder: Path, subfolder: str | None) -> dict[str, torch.Tensor]:
    vae = AutoencoderKL.from_pretrained(folder, **({"subfolder": subfolder} if subfolder else {}))
    return {k: v for k, v in vae.state_dict().items() if k.startswith(("decoder.", "post_quant_conv."))}


def load_decoder_state(source: str | os.PathLike, revision: str | None = None) -> dict[str, torch.Tensor]:
    """The weights of a fine-tuned VAE decoder: a state-dict file, a folder with ``vae/`` or an AutoencoderKL
    folder (its decoder and post_quant_conv are taken), a folder holding one state-dict file, or a Hub id of any of
    these (e.g. P-H-B-D-a16z/GameNGenSDVaeDecoder, the decoder the seed's load_model puts in)."""
    path = Path(source).expanduser()
    if not path.exists():
        if looks_local(source):
            raise PeerCheckpointError(missing_folder("--vae", source, "model"))
        from huggingface_hub import snapshot_download

        patterns = ["*.json", *(f"*{suffix}" for suffix in DECODER_FILE_SUFFIXES)]
        try:
            path = Path(snapshot_download(str(source), revision=revision, allow_patterns=patterns))
        except Exception as error:
            raise PeerCheckpointError(neither_folder_nor_hub(source, "decoder", error)) from error
    if path.is_file():
        return _decoder_state_from_file(path)
    if (path / PEER_VAE_SUBFOLDER / "config.json").is_file():
        return _decoder_state_from_vae(path, PEER_VAE_SUBFOLDER)
    if (path / "config.json").is_file():
        return _decoder_state_from_vae(path, None)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in DECODER_FILE_SUFFIXES)
    if len(files) != 1:
        raise PeerCheckpointError(
            f"{path} holds {len(files)} weight files and no VAE config: pass the decoder's state-dict file itself, "
            "or a folder with vae/ or an AutoencoderKL config.json"
        )
    return _decoder_state_from_file(files[0])


def replace_decoder(vae: AutoencoderKL, state: dict[str, torch.Tensor], source: str = "the decoder") -> None:
    """Load a fine-tuned decoder into ``vae`` (the encoder stays: the world model's latents came from it)."""
    if any(k.startswith("decoder.") for k in state):  # a whole VAE's (or a prefixed) state dict: its decoder part
        decoder = {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")}
    else:
        decoder = {k: v for k, v in state.items() if not k.startswith("post_quant_conv.")}
    post_quant = {k.removeprefix("post_quant_conv."): v for k, v in state.items() if k.startswith("post_quant_conv.")}
    try:
        vae.decoder.load_state_dict(decoder)
        if post_quant:
            vae.post_quant_conv.load_state_dict(post_quant)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise PeerCheckpointError(
            f"{source} does not fit the checkpoint's VAE decoder ({first_line}): "
            "pass a decoder of the same architecture"
        ) from error


def convert_peer_checkpoint(
    name_or_path: str | os.PathLike,
    vae: str | os.PathLike | None = None,
    action_names: list[str] | None = None,
    revision: str | None = None,
) -> WorldModelBundle:
    """A seed checkpoint (folder or Hub id) -> this project's ``WorldModelBundle`` (float32, on the CPU).

    ``vae``: a fine-tuned decoder to put into the checkpoint's VAE (see ``load_decoder_state``).
    ``action_names``: names for the action ids (default: the seed's action set, see ``peer_action_names``).
    """
    from diffusers import DDIMScheduler
    from safetensors.torch import load_file

    root = resolve_checkpoint(name_or_path, revision)
    config = read_peer_config(root, action_names)
    config.dataset["converted_from"] = str(name_or_path)
    unet = _unet_class().from_pretrained(root, subfolder=PEER_UNET_SUBFOLDER)
    embedding = load_file(str(root / PEER_EMBEDDING_FILE)).get("weight")
    expected = (config.num_actions, unet.config.cross_attention_dim)
    if embedding is None or tuple(embedding.shape) != expected:
        found = "no 'weight' tensor" if embedding is None else f"a {tuple(embedding.shape)} weight"
        raise PeerCheckpointError(
            f"{root / PEER_EMBEDDING_FILE} holds {found}, {PEER_EMBEDDING_INFO_FILE} says {expected} "
            "(num_embeddings, embedding_dim)"
        )
    if unet.conv_in.weight.shape[1] != config.unet_in_channels:
        raise PeerCheckpointError(
            f"the UNet's conv_in takes {unet.conv_in.weight.shape[1]} channels, "
            f"its config.json says {config.unet_in_channels}"
        )
    reorder_conv_in(unet, config.model.latent_channels)
    autoencoder = AutoencoderKL.from_pretrained(root, subfolder=PEER_VAE_SUBFOLDER)
    if vae is not None:
        replace_decoder(autoencoder, load_decoder_state(vae, revision=None), source=f"--vae {vae}")
        config.dataset["decoder"] = str(vae)
    scheduler = DDIMScheduler.from_pretrained(root, subfolder=PEER_SCHEDULER_SUBFOLDER)
    if scheduler.config.get("clip_sample", False):
        warnings.warn(
            "the checkpoint's scheduler clips the predicted sample (clip_sample); the engine's sampler does not",
            stacklevel=2,
        )
    model = make_world_model(unet, config)
    with torch.no_grad():
        model.action_embedding.weight.copy_(embedding)
    config.unet = {key: value for key, value in dict(unet.config).items() if not key.startswith("_")}
    return WorldModelBundle(model=model.eval(), vae=autoencoder.eval(), scheduler=scheduler, config=config)


def peer_model_card(config: WorldModelConfig) -> str:
    """The README of a converted checkpoint: where it came from and what the engine does differently."""
    source = config.dataset.get("converted_from", "a gameNgen-repro checkpoint")
    decoder = config.dataset.get("decoder")
    return (
        "---\ntags:\n- gamengen\n- world-model\n- vizdoom\n---\n\n"
        f"# GameNGen world model converted from {source}\n\n"
        "Converted by convert_checkpoint.py from the layout of github.com/arnaudstiegler/gameNgen-repro"
        + (f", with the fine-tuned decoder {decoder}" if decoder else "")
        + ".\n\n"
        f"Predicts the next {config.model.frame_width}x{config.model.frame_height} frame from the last "
        f"{config.context_length} frames and actions ({config.num_actions} actions: {', '.join(config.action_names)}). "
        f"Sampling: {config.num_inference_steps} DDIM steps, v-prediction, no classifier-free guidance.\n\n"
        "Differences from the seed's training (see gamengen/peer.py): the engine gives N action tokens where the seed "
        "trained on N + 1 (the oldest is missing), pads episode starts by repeating the first frame where the seed "
        "used black frames, and encodes context frames with the VAE posterior mean instead of a sample.\n"
    )
