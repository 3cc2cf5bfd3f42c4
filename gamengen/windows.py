"""Context windows: the samples the world model trains on (the data format is described in docs/data.md).

The window contract, shared by training (``PixelWindowDataset``, ``LatentWindowDataset``) and inference
(``gamengen.engine``):

- The sample that predicts frame t of an episode holds frames t-N .. t-1 and actions t-N .. t-1, where
  N is the context length. Action t-1 is the one taken at frame t-1, and it produced frame t; action t
  (the agent's reaction to frame t) is never visible to the sample that predicts frame t.
- A window never crosses episodes: all its frames and actions come from the target's episode.
- Near the episode start (t < N) the context is left-padded to N slots: padded frame slots repeat the
  episode's first frame, padded action slots hold ``PAD_ACTION`` (0, NOOP), and ``context_mask`` is
  False on them. Targets start at t = min_context >= 1, so a sample always has at least one real frame
  (at t = 0 there is nothing to predict from: padding with the first frame would show the model its
  target).
- Training and inference pad the same way, through the one function ``gamengen.context.pad_context``: the engine starts
  from a real first frame and pads its context exactly as the training samples were padded.

``LatentWindowDataset`` reads the same samples, in the same batch layout, from a latent cache
(``gamengen.latent_cache``) instead of decoding and encoding the frames (``encode_pixel_windows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gamengen.config import ModelConfig
from gamengen.context import check_action_ids, check_frame_size, context_start, pad_context
from gamengen.episodes import EpisodeDataset
from gamengen.latent_cache import LatentCache
from gamengen.layout import DatasetError


class _ContextWindows(torch.utils.data.Dataset):
    """Sample ``i`` -> (episode, target step t), episodes one after the other, t = min_context .. length-1.

    Subclasses read frames ``first .. t`` of an episode (``_read``) and its actions (``_episode_actions``).
    """

    episode_ids: list[str]

    def _index_windows(
        self, episode_ids: Sequence[str], lengths: Sequence[int], context_length: int, min_context: int
    ) -> None:
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {context_length}")
        if not 1 <= min_context <= context_length:
            raise ValueError(
                f"min_context must be in 1..context_length ({context_length}), got {min_context}: "
                "a target needs at least one real context frame"
            )
        self.context_length = int(context_length)
        self.min_context = int(min_context)
        self.episode_ids = list(episode_ids)
        self._lengths = np.asarray(lengths, dtype=np.int64)
        counts = np.maximum(self._lengths - self.min_context, 0)
        self._window_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if self._window_offsets[-1] == 0:
            raise DatasetError(
                f"no window: none of the {len(self.episode_ids)} episodes is longer than "
                f"min_context={self.min_context} steps (longest: {int(self._lengths.max(initial=0))})"
            )

    def __len__(self) -> int:
        return int(self._window_offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(episode index, target step) of sample ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} windows")
        episode = int(np.searchsorted(self._window_offsets, index, side="right") - 1)
        return episode, self.min_context + index - int(self._window_offsets[episode])

    def window_index(self, episode: int, step: int) -> int:
        """Sample index of the window whose target is step ``step`` of episode ``episode`` (inverse of ``locate``)."""
        if not self.min_context <= step < self._lengths[episode]:
            raise IndexError(
                f"episode {self.episode_ids[episode]!r} has targets "
                f"{self.min_context}..{int(self._lengths[episode]) - 1}, not {step}"
            )
        return int(self._window_offsets[episode]) + step - self.min_context

    def _read(self, episode: int, first: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _episode_actions(self, episode: int) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        episode, target_step = self.locate(index)
        first = context_start(target_step, self.context_length)
        real_context, target = self._read(episode, first, target_step)
        real_actions = torch.from_numpy(np.asarray(self._episode_actions(episode)[first:target_step], dtype=np.int64))
        context, actions, mask = pad_context(real_context, real_actions, self.context_length)
        return {
            "context": context,
            "target": target,
            "actions": actions,
            "context_mask": mask,
            "num_padded": torch.tensor(self.context_length - (target_step - first), dtype=torch.int64),
            "episode_index": torch.tensor(episode, dtype=torch.int64),
            "step": torch.tensor(target_step, dtype=torch.int64),
        }


class PixelWindowDataset(_ContextWindows):
    """Context windows of decoded frames (every sample decodes its N+1 frames; see ``LatentWindowDataset``
    for training).

    Item: ``context`` (N, 3, H, W), ``target`` (3, H, W): float32 in [-1, 1] (``pixel_format="float"``,
    as ``FrameDataset``) or uint8 (``"uint8"``), unpadded frame size; ``actions`` (N,) int64;
    ``context_mask`` (N,) bool; ``num_padded``, ``episode_index`` (into ``episode_ids``), ``step`` (the
    target step): int64 scalars. ``encode_pixel_windows`` turns a batch into ``LatentWindowDataset``'s.
    """

    def __init__(
        self,
        episodes: EpisodeDataset,
        context_length: int,
        min_context: int = 1,
        num_actions: int | None = None,
        config: ModelConfig | None = None,
        pixel_format: str = "float",
    ) -> None:
        if pixel_format not in ("float", "uint8"):
            raise ValueError(f"pixel_format must be 'float' or 'uint8', got {pixel_format!r}")
        if config is not None:
            check_frame_size(episodes, config)
        self.episodes = episodes
        self.pixel_format = pixel_format
        self.num_actions = check_action_ids(
            episodes.episode_ids,
            [episodes.actions(i) for i in range(len(episodes.episodes))],
            num_actions,
            episodes.action_names,
        )
        self._index_windows(episodes.episode_ids, [e.length for e in episodes.episodes], context_length, min_context)

    def _episode_actions(self, episode: int) -> np.ndarray:
        return self.episodes.actions(episode)

    def _read(self, episode: int, first: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.episodes.row_index(episode, 0)
        frames = np.stack([self.episodes.frame(start + step) for step in range(first, target + 1)])
        frames = torch.from_numpy(frames).permute(0, 3, 1, 2)
        if self.pixel_format == "float":
            frames = frames.float().div(127.5).sub(1.0)
        return frames[:-1], frames[-1]

    def __repr__(self) -> str:
        return f"PixelWindowDataset({len(self)} windows of context {self.context_length} over {self.episodes!r})"


@torch.no_grad()
def encode_pixel_windows(vae: Any, batch: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """A ``PixelWindowDataset`` batch -> the ``LatentWindowDataset`` layout: ``context`` (B, N, C, h, w) and
    ``target`` (B, C, h, w) become float32 latents (``gamengen.vae.encode_frames``: posterior mean, scaled)
    on the VAE's device; the other keys are passed through. This is the encoding a cache saves."""
    from gamengen.vae import encode_frames

    context, target = batch["context"], batch["target"]
    batch_size, frames = context.shape[:2]
    pixels = torch.cat([context.flatten(0, 1), target])
    if pixels.dtype == torch.uint8:
        pixels = pixels.float().div(127.5).sub(1.0)
    device = next(vae.parameters()).device
    latents = encode_frames(vae, pixels.to(device), config).float()
    return {
        **batch,
        "context": latents[: batch_size * frames].unflatten(0, (batch_size, frames)),
        "target": latents[batch_size * frames :],
    }


class LatentWindowDataset(_ContextWindows):
    """Context windows of cached latents: the same samples and layout as ``PixelWindowDataset`` after
    ``encode_pixel_windows``, read from a ``LatentCache`` without any VAE.

    Item: ``context`` (N, C, h, w) and ``target`` (C, h, w) float32 (scaled latents); ``actions`` (N,)
    int64; ``context_mask`` (N,) bool; ``num_padded``, ``episode_index`` (into ``episode_ids``),
    ``step``: int64 scalars. ``episode_ids`` picks episodes (e.g. one side of ``split_episode_ids``).
    """

    def __init__(
        self,
        cache: LatentCache,
        context_length: int,
        min_context: int = 1,
        num_actions: int | None = None,
        episode_ids: Sequence[str] | None = None,
    ) -> None:
        self.cache = cache
        if episode_ids is None:
            self._episodes = list(range(len(cache.episode_ids)))
        else:
            wanted = set(episode_ids)
            unknown = wanted - set(cache.episode_ids)
            if unknown:
                raise DatasetError(f"episodes not in the latent cache {cache.directory}: {sorted(unknown)[:5]}")
            self._episodes = [i for i, episode_id in enumerate(cache.episode_ids) if episode_id in wanted]
        ids = [cache.episode_ids[i] for i in self._episodes]
        if num_actions is None:
            num_actions = cache.manifest.get("num_actions")  # encode_latents.py --num_actions, or len(action_names)
        episode_actions = [cache.actions(i) for i in self._episodes]
        self.num_actions = check_action_ids(ids, episode_actions, num_actions, cache.action_names)
        self._index_windows(ids, [cache.lengths[i] for i in self._episodes], context_length, min_context)

    def _episode_actions(self, episode: int) -> np.ndarray:
        return self.cache.actions(self._episodes[episode])

    def _read(self, episode: int, first: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        latents = self.cache.latents(self._episodes[episode], first, target + 1)
        return latents[:-1], latents[-1]

    def __repr__(self) -> str:
        return (
            f"LatentWindowDataset({len(self)} windows of context {self.context_length} "
            f"over {len(self.episode_ids)} episodes of {self.cache!r})"
        )
