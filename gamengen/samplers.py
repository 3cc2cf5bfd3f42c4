"""Frames and sampling orders for the torch side of ``gamengen.episodes`` (the autoencoder fine-tuning and the
latent encoder read single frames; the world model reads context windows, ``gamengen.windows``)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from gamengen.episodes import EpisodeDataset


class FrameDataset(torch.utils.data.Dataset):
    """Single frames as float tensors 3xHxW in [-1, 1] (unpadded; see gamengen.vae.pad_frames)."""

    def __init__(self, episodes: EpisodeDataset) -> None:
        self.episodes = episodes

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, index: int) -> torch.Tensor:
        frame = torch.from_numpy(self.episodes.frame(index).copy())
        return frame.permute(2, 0, 1).float().div(127.5).sub(1.0)


class LocalShuffleSampler(torch.utils.data.Sampler[int]):
    """A shuffle that reads the files in large blocks: the flat index is cut into chunks of
    ``chunk_size`` consecutive frames (about one parquet row group), the chunks are shuffled, and the
    frames of each group of ``chunks_per_buffer`` chunks are shuffled together. With the reader's
    row-group cache at least ``chunks_per_buffer`` large, each row group is read about once per epoch.
    Deterministic given (seed, epoch); call ``set_epoch`` before each epoch."""

    def __init__(self, num_items: int, seed: int = 0, chunk_size: int = 256, chunks_per_buffer: int = 8) -> None:
        self.num_items = num_items
        self.seed = seed
        self.chunk_size = chunk_size
        self.chunks_per_buffer = chunks_per_buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks = np.arange(0, self.num_items, self.chunk_size)
        rng.shuffle(chunks)
        for first in range(0, len(chunks), self.chunks_per_buffer):
            starts = chunks[first : first + self.chunks_per_buffer]
            ends = np.minimum(starts + self.chunk_size, self.num_items)
            buffer = np.concatenate([np.arange(start, end) for start, end in zip(starts, ends, strict=True)])
            rng.shuffle(buffer)
            yield from buffer.tolist()
