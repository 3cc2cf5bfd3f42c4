"""The latent cache: every frame of a dataset encoded once by the VAE (``encode_latents.py``), so that
world-model training never runs the encoder (the format is described in docs/data.md).

Layout of a cache folder::

    <dir>/manifest.json                what was encoded with what (VAE and its encoder fingerprint, preset,
                                       frame size, latent shape, scaling factor), and the index: for each
                                       dataset shard its latent file and its episodes as
                                       [episode_id, first row, length]
    <dir>/shards/<shard>.safetensors   one per parquet shard, rows in the parquet's order: "latents"
                                       (rows, C, h, w) float16 (posterior mean x scaling factor) and
                                       "actions" (rows,) int64

Files are written under a hidden temporary name and renamed (``gamengen.files``), the manifest first:
a shard whose file exists is complete; a cache whose manifest lists a missing file is unfinished.
``check_cache_matches`` is the one check that a cache was made from a dataset's files, for the writer
(``encode_latents.py`` resuming or extending a cache) and the readers (``open_latent_cache``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gamengen.config import ModelConfig
from gamengen.episodes import EpisodeDataset
from gamengen.files import atomic_path, write_json_atomic
from gamengen.layout import DatasetError

LATENT_CACHE_FORMAT = "gamengen-latent-cache"
LATENT_CACHE_VERSION = 1
MANIFEST_FILE = "manifest.json"
LATENT_SHARDS_DIR = "shards"


def encoder_fingerprint(vae: Any) -> str:
    """sha256 of what decides a VAE's latents: its encoder and ``quant_conv`` weights (hashed as float16,
    so fp32 and fp16 loads of one VAE agree) and its scaling factor. A fine-tuned decoder does not
    change it (the paper fine-tunes only the decoder, so latents cached before stay valid)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        if name.startswith(("encoder.", "quant_conv.")):
            digest.update(f"{name}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    if "factor" in vae.config:  # the space-to-depth autoencoder: no weights, its factor decides the latents
        digest.update(f"space_to_depth:{int(vae.config.factor)}".encode())
    digest.update(f"scaling_factor:{float(vae.config.scaling_factor)!r}".encode())
    return digest.hexdigest()


def latent_file_name(source: str) -> str:
    """The cache file of the parquet shard ``source`` (its path relative to the dataset root)."""
    stem = source[: -len(".parquet")] if source.endswith(".parquet") else source
    return f"{LATENT_SHARDS_DIR}/{stem.replace('/', '__')}.safetensors"


def dataset_shards(dataset: EpisodeDataset) -> list[dict[str, Any]]:
    """What identifies each parquet shard of a (whole) dataset: its path relative to the dataset root,
    size in bytes, rows and episodes (``[episode_id, first row, length]``), plus its latent file name."""
    shards = []
    for shard, path in enumerate(dataset.files):
        source = path.relative_to(dataset.root).as_posix()
        episodes = [[e.episode_id, e.start, e.length] for e in dataset.all_episodes if e.shard == shard]
        shards.append(
            {
                "source": source,
                "size": path.stat().st_size,
                "num_rows": dataset.shard_num_rows(shard),
                "episodes": episodes,
                "file": latent_file_name(source),
            }
        )
    return shards


def dataset_fingerprint(dataset: EpisodeDataset) -> str:
    """sha256 of the shard names, sizes and episodes: equal for the same files, whatever the folder they are in."""
    described = [{k: v for k, v in shard.items() if k != "file"} for shard in dataset_shards(dataset)]
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Writing


def build_latent_manifest(
    *,
    config: ModelConfig,
    dataset: EpisodeDataset,
    dataset_name: str,
    vae_name_or_path: str,
    vae_subfolder: str,
    vae_revision: str | None,
    encoder_sha256: str,
    scaling_factor: float,
    num_actions: int | None,
    mixed_precision: str,
) -> dict[str, Any]:
    """The manifest of a cache of ``dataset``'s latents under the preset ``config`` and the given VAE
    (``num_actions``: None takes the number of the dataset's action names)."""
    import diffusers  # only the writer records its version; readers need not import it

    if num_actions is None and dataset.action_names:
        num_actions = len(dataset.action_names)
    return {
        "format": LATENT_CACHE_FORMAT,
        "format_version": LATENT_CACHE_VERSION,
        "preset": config.preset,
        "frame_width": config.frame_width,
        "frame_height": config.frame_height,
        "padded_width": config.padded_width,
        "padded_height": config.padded_height,
        "latent_shape": list(config.latent_shape),
        "latent_dtype": "float16",
        "latents": (
            "VAE posterior mean x scaling_factor (gamengen.vae.encode_frames), frames padded as the preset says"
        ),
        "vae": {
            "name_or_path": vae_name_or_path,
            "subfolder": vae_subfolder,
            "revision": vae_revision,
            "encoder_sha256": encoder_sha256,
            "scaling_factor": scaling_factor,
        },
        "columns": asdict(dataset.columns),
        "action_names": dataset.action_names,
        "num_actions": num_actions,
        "dataset": {
            "name": str(dataset_name),
            "fingerprint": dataset_fingerprint(dataset),
            "num_episodes": len(dataset.episodes),
            "num_frames": len(dataset),
            "metadata": dataset.metadata,
        },
        "shards": dataset_shards(dataset),
        "encoded_with": {
            "mixed_precision": mixed_precision,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        },
    }


def write_latent_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write the manifest of a cache folder atomically (before its shards: see the module docstring)."""
    return write_json_atomic(Path(directory) / MANIFEST_FILE, manifest)


def write_latent_shard(
    directory: str | os.PathLike, shard: dict[str, Any], latents: torch.Tensor, actions: np.ndarray, encoder_sha256: str
) -> Path:
    """Write one shard's latents (rows, C, h, w) as float16 and its actions, atomically."""
    from safetensors.torch import save_file

    if latents.shape[0] != shard["num_rows"] or len(actions) != shard["num_rows"]:
        raise ValueError(
            f"{shard['source']} has {shard['num_rows']} rows, got {latents.shape[0]} latents and {len(actions)} actions"
        )
    path = Path(directory) / shard["file"]
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "source": shard["source"],
        "source_size": str(shard["size"]),
        "num_rows": str(shard["num_rows"]),
        "encoder_sha256": encoder_sha256,
    }
    tensors = {
        "latents": latents.detach().to("cpu", torch.float16).contiguous(),
        "actions": torch.as_tensor(np.asarray(actions, dtype=np.int64)),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


# ----------------------------------------------------------------------------------------------
# Reading and checking


def read_latent_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a latent cache folder, or None when there is none."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{path} is not valid JSON ({error}): the latent cache is damaged; "
            "encode the dataset again into a new folder"
        ) from error
    if manifest.get("format") != LATENT_CACHE_FORMAT:
        raise DatasetError(f"{path} is not a latent cache manifest (format {manifest.get('format')!r})")
    if manifest.get("format_version") != LATENT_CACHE_VERSION:
        raise DatasetError(
            f"{path} has latent cache format version {manifest.get('format_version')}, "
            f"this code reads version {LATENT_CACHE_VERSION}: encode the dataset again"
        )
    return manifest


def check_cache_matches(
    directory: str | os.PathLike, manifest: dict[str, Any], dataset: EpisodeDataset, allow_new_shards: bool = False
) -> None:
    """Refuse a latent cache made from other files than ``dataset``'s: its encoded shards are matched to the
    dataset's by name, size and episodes. Shards the manifest lists but that are not encoded yet are not
    compared (the writer encodes them next). ``allow_new_shards``: the dataset may have shards the cache lacks
    (``encode_latents.py`` extends the cache with them); a reader refuses them."""
    directory = Path(directory)
    cached = {shard["source"]: shard for shard in manifest["shards"] if (directory / shard["file"]).is_file()}
    current = {shard["source"]: shard for shard in dataset_shards(dataset)}
    if cached and not set(cached) & set(current):
        raise DatasetError(
            f"the latent cache {directory} was made from another dataset ({manifest['dataset'].get('name')!r}, shards "
            f"{', '.join(sorted(cached)[:3])}, ...); {dataset.root} has none of them: "
            "encode this dataset into a new folder (a new encode_latents.py --output_dir)"
        )
    changed = [
        name
        for name in sorted(set(cached) & set(current))
        if (cached[name]["size"], cached[name]["episodes"]) != (current[name]["size"], current[name]["episodes"])
    ]
    if changed:
        first = changed[0]
        raise DatasetError(
            f"the latent cache {directory} was made from other versions of {len(changed)} of the dataset's shards "
            f"(e.g. {first}: {cached[first]['size']} -> {current[first]['size']} bytes, or other episodes): "
            f"delete their latent files (e.g. {directory / cached[first]['file']}) and run encode_latents.py again "
            "to encode them again, or encode the dataset into a new folder"
        )
    new = sorted(set(current) - set(cached))
    if new and not allow_new_shards:
        raise DatasetError(
            f"the latent cache {directory} lacks {len(new)} of the dataset's shards (e.g. {new[0]}): "
            "run encode_latents.py again on this dataset with the same --output_dir to encode them"
        )
    gone = sorted(set(cached) - set(current))
    if gone:
        raise DatasetError(
            f"the latent cache {directory} holds latents of {len(gone)} shards the dataset does not have "
            f"(e.g. {gone[0]}): it was made from another version of the dataset; encode this one into a new folder"
        )


class LatentCache:
    """Read side of an ``encode_latents.py`` folder: per-episode latents and actions, random access by
    (episode, step), without any VAE. The latent files are memory-mapped and opened lazily in each
    process (DataLoader workers reopen them).

    ``open_latent_cache`` also checks it against the dataset, preset and VAE a run uses.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        from safetensors import safe_open

        self.directory = Path(directory)
        manifest = read_latent_manifest(self.directory)
        if manifest is None:
            raise DatasetError(
                f"{self.directory} is not a latent cache (no {MANIFEST_FILE}): "
                f"make one with encode_latents.py --output_dir {self.directory}"
            )
        self.manifest = manifest
        shards = manifest["shards"]
        missing = [shard["file"] for shard in shards if not (self.directory / shard["file"]).is_file()]
        if missing:
            raise DatasetError(
                f"the latent cache {self.directory} is unfinished: {len(missing)} of {len(shards)} shards "
                f"are not encoded yet (e.g. {missing[0]}). "
                "Run encode_latents.py again with the same arguments to finish it."
            )
        self.episode_ids: list[str] = []
        self._locations: list[tuple[int, int, int]] = []  # (shard, first row, length)
        self._actions: list[np.ndarray] = []
        for index, shard in enumerate(shards):
            path = self.directory / shard["file"]
            with safe_open(str(path), framework="pt") as handle:
                info = handle.metadata() or {}
                written_for = (info.get("encoder_sha256"), info.get("source"))
                if written_for != (manifest["vae"]["encoder_sha256"], shard["source"]):
                    raise DatasetError(
                        f"{path} does not belong to this cache (it holds {info.get('source')!r} encoded by VAE "
                        f"{str(info.get('encoder_sha256'))[:12]}): delete it and run encode_latents.py again"
                    )
                actions = handle.get_tensor("actions").numpy()
                rows = handle.get_slice("latents").get_shape()[0]
            if rows != shard["num_rows"] or len(actions) != rows:
                raise DatasetError(
                    f"{path} has {rows} rows, the manifest says {shard['num_rows']}: delete it and encode again"
                )
            for episode_id, first, length in shard["episodes"]:
                self.episode_ids.append(episode_id)
                self._locations.append((index, int(first), int(length)))
                self._actions.append(actions[first : first + length])
        self._index = {episode_id: i for i, episode_id in enumerate(self.episode_ids)}
        self._handles: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}

    # -- what was encoded ---------------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["latent_shape"])

    @property
    def scaling_factor(self) -> float:
        return float(self.manifest["vae"]["scaling_factor"])

    @property
    def action_names(self) -> list[str] | None:
        return self.manifest.get("action_names")

    @property
    def lengths(self) -> list[int]:
        return [length for _, _, length in self._locations]

    def episode_index(self, episode_id: str) -> int:
        if episode_id not in self._index:
            raise DatasetError(f"episode {episode_id!r} is not in the latent cache {self.directory}")
        return self._index[episode_id]

    def __len__(self) -> int:
        return sum(self.lengths)

    def actions(self, episode: int) -> np.ndarray:
        """Actions of episode ``episode`` (int64, one per step)."""
        return self._actions[episode]

    def latents(self, episode: int, start: int, stop: int) -> torch.Tensor:
        """Latents of steps ``start .. stop - 1`` of episode ``episode``: float32 (stop - start, C, h, w)."""
        shard, first, length = self._locations[episode]
        if not 0 <= start < stop <= length:
            raise IndexError(
                f"steps {start}..{stop - 1} out of range for episode {self.episode_ids[episode]!r} of {length} steps"
            )
        handle = self._handles.get(shard)
        if handle is None:
            from safetensors import safe_open

            path = self.directory / self.manifest["shards"][shard]["file"]
            handle = self._handles[shard] = safe_open(str(path), framework="pt")
        return handle.get_slice("latents")[first + start : first + stop].float()

    # -- checks -------------------------------------------------------------------------------------
    def check_config(self, config: ModelConfig) -> None:
        """Refuse a cache encoded for another frame size or latent shape than the preset's."""
        made = self.manifest
        expected = ((config.frame_width, config.frame_height), tuple(config.latent_shape))
        found = ((made["frame_width"], made["frame_height"]), tuple(made["latent_shape"]))
        if expected != found:
            raise DatasetError(
                f"the latent cache {self.directory} holds {found[0][0]}x{found[0][1]} frames as latents "
                f"{'x'.join(map(str, found[1]))} (preset {made.get('preset')!r}); the {config.preset!r} preset needs "
                f"{expected[0][0]}x{expected[0][1]} frames as latents {'x'.join(map(str, expected[1]))}: "
                f"train with --preset {made.get('preset')}, or encode the dataset for this preset into a new folder"
            )

    def check_vae(self, vae: Any) -> None:
        """Refuse a VAE other than the one that encoded the cache (its encoder or scaling factor differ)."""
        fingerprint = encoder_fingerprint(vae)
        made = self.manifest["vae"]
        if fingerprint != made["encoder_sha256"]:
            raise DatasetError(
                f"the latent cache {self.directory} was encoded with another VAE ({made.get('name_or_path')!r}, "
                f"encoder sha256 {made['encoder_sha256'][:12]}, scaling factor {made['scaling_factor']}) than this one "
                f"(encoder sha256 {fingerprint[:12]}, scaling factor {float(vae.config.scaling_factor)}): "
                "use the VAE that encoded it, or encode the dataset with this VAE into a new folder (encode_latents.py)"
            )

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.latent_shape))
        return f"LatentCache({len(self.episode_ids)} episodes, {len(self)} latents {shape}, {self.directory})"


def open_latent_cache(
    directory: str | os.PathLike,
    dataset: EpisodeDataset | None = None,
    config: ModelConfig | None = None,
    vae: Any = None,
) -> LatentCache:
    """Open a latent cache and check it against whatever of (dataset, preset config, VAE) is given."""
    cache = LatentCache(directory)
    if config is not None:
        cache.check_config(config)
    if dataset is not None:
        check_cache_matches(cache.directory, cache.manifest, dataset)
    if vae is not None:
        cache.check_vae(vae)
    return cache
