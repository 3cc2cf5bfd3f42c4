"""Training an inverse-dynamics model (``gamengen.idm``) on a dataset's real transitions, and scoring it on them.

A transition is (frame t, frame t+1) -> action t. Training samples transitions uniformly with replacement and
augments them (mirrored left-right with their actions mirrored, shifted by a few pixels), with cross-entropy on
both of the IDM's heads (the action id and its category). ``train_idm.py`` is the script around it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gamengen.actions import mirrored_actions
from gamengen.episodes import EpisodeDataset
from gamengen.idm import IDM, ActionFollowing, IDMError, IDMNet, action_following


@dataclasses.dataclass
class Transitions:
    """The real transitions of some episodes: each frame stored once, transition i is
    frames[before[i]] -> frames[before[i] + 1] under action actions[i]."""

    frames: torch.Tensor  # uint8 (N, H, W, 3)
    before: torch.Tensor  # int64 (T,)
    actions: torch.Tensor  # int64 (T,)

    def __len__(self) -> int:
        return len(self.actions)

    def pairs(self, indices: torch.Tensor | slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        before = self.before[indices]
        return self.frames[before], self.frames[before + 1], self.actions[indices]


def load_transitions(dataset: EpisodeDataset, max_frames: int | None = None, seed: int = 0) -> Transitions:
    """Decode the episodes of ``dataset`` (a random subset of whole episodes when they hold more than
    ``max_frames`` frames)."""
    order = np.arange(len(dataset.episodes))
    if max_frames:
        order = np.random.default_rng(seed).permutation(order)
    frames, before, actions, total = [], [], [], 0
    for episode in sorted(order.tolist()):
        length = dataset.episodes[episode].length
        if length < 2 or (max_frames and total + length > max_frames and total > 0):
            continue
        frames += [dataset.frame(dataset.row_index(episode, step)) for step in range(length)]
        before.append(np.arange(total, total + length - 1))
        actions.append(dataset.actions(episode)[: length - 1])
        total += length
    if not before:
        raise IDMError(
            "these episodes hold no transitions (every episode has fewer than 2 steps): record longer episodes"
        )
    return Transitions(
        torch.from_numpy(np.stack(frames)),
        torch.from_numpy(np.concatenate(before)),
        torch.from_numpy(np.concatenate(actions).astype(np.int64)),
    )


def augment(
    before: torch.Tensor,
    after: torch.Tensor,
    actions: torch.Tensor,
    mirror: torch.Tensor,
    max_shift: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Half of the transitions mirrored left-right (their actions mirrored too), and each moved by a random
    offset of up to ``max_shift`` pixels (the same for both frames): with a few thousand transitions an
    unaugmented IDM learns the training scenes by heart instead of how actions move the view."""
    flip = (torch.rand(len(actions), generator=generator) < 0.5) & (mirror[actions] >= 0)
    before, after = before.clone(), after.clone()
    before[flip], after[flip] = before[flip].flip(2), after[flip].flip(2)
    actions = torch.where(flip, mirror[actions], actions)
    if max_shift > 0:
        height, width = before.shape[1:3]
        pad = (0, 0, max_shift, max_shift, max_shift, max_shift)
        padded_before, padded_after = F.pad(before, pad), F.pad(after, pad)
        offsets = torch.randint(2 * max_shift + 1, (len(actions), 2), generator=generator).tolist()
        for i, (row, column) in enumerate(offsets):
            before[i] = padded_before[i, row : row + height, column : column + width]
            after[i] = padded_after[i, row : row + height, column : column + width]
    return before, after, actions


def train_idm(
    transitions: Transitions,
    action_names: Sequence[str],
    max_train_steps: int,
    train_batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    show_progress: bool = True,
    weight_decay: float = 0.05,
    max_shift: int | None = None,
    mirror: bool = True,
) -> IDM:
    """Train an IDM on ``transitions`` (sampled uniformly with replacement, augmented by ``augment``;
    cross-entropy on both heads). ``max_shift`` defaults to 1/16 of the frame width."""
    torch.manual_seed(seed)
    height, width = transitions.frames.shape[1:3]
    idm = IDM(IDMNet(len(action_names), width), action_names, width, height).to(device)
    categories = torch.from_numpy(idm.action_categories)
    optimizer = torch.optim.AdamW(idm.net.parameters(), lr=learning_rate, weight_decay=weight_decay)
    mirror_of = torch.from_numpy(mirrored_actions(action_names) if mirror else np.full(len(action_names), -1))
    max_shift = width // 16 if max_shift is None else max_shift
    total_steps = max(1, max_train_steps)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=total_steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    idm.net.train()
    progress = tqdm(range(max_train_steps), desc="IDM", disable=not show_progress)
    for _ in progress:
        batch = torch.randint(len(transitions), (train_batch_size,), generator=generator)
        before, after, actions = augment(*transitions.pairs(batch), mirror_of, max_shift, generator)
        action_logits, category_logits = idm.net(before.to(device), after.to(device))
        actions, action_categories = actions.to(device), categories[actions].to(device)
        loss = F.cross_entropy(action_logits, actions) + F.cross_entropy(category_logits, action_categories)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    idm.net.eval()
    return idm


def score_transitions(idm: IDM, transitions: Transitions) -> ActionFollowing:
    """``action_following`` on real transitions (held-out ones give the IDM's ceiling)."""
    before, after, actions = transitions.pairs()
    return action_following(idm, before, after, actions.numpy())
