"""Inverse-dynamics model (IDM): does a world model follow its actions? (issue 17, point 4)

PSNR cannot tell whether a generated frame shows the effect of the action it was asked for. An IDM
can: a small CNN trained on a dataset's real transitions (frame t, frame t+1) -> action t (row t of a
recorded episode holds the frame before action t, so frame t+1 is the frame action t produced). Run on
generated transitions, its accuracy measures action following; on held-out real transitions it gives
the ceiling, and with the actions shuffled it falls to chance.

It has two heads: the action id, and the action's category, read from its recorded name by the one grammar
of action names (``gamengen.actions.action_category``): ``turn_left``, ``turn_right``, ``move``
(forward/back), ``strafe``, ``attack_use``, ``still`` (NOOP), or ``other`` (a name that fits none). A
combination takes the category of the button that changes the view most: turn > strafe > move >
attack/use, so FORWARD_TURN_LEFT is ``turn_left``, FORWARD_ATTACK ``move``, TURN_LEFT+TURN_RIGHT ``other``.

Chance (``ActionFollowing.action_chance``) is the accuracy the IDM's predictions would get against
actions unrelated to the frames: sum over actions of (frequency among the true actions) x (frequency
among the predictions), which is what shuffling the actions gives on average.

An IDM is saved as a folder: ``model.safetensors`` and ``idm_config.json`` (action names, frame size,
the dataset's fingerprint and held-out episodes, the held-out accuracy). ``load_idm(path)`` reads it.
Training and scoring on real transitions: ``gamengen.idm_training``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gamengen.actions import CATEGORIES, action_category
from gamengen.errors import IDMError
from gamengen.files import atomic_path, write_json_atomic

IDM_FORMAT = "gamengen-idm"
IDM_FORMAT_VERSION = 1
CONFIG_FILE = "idm_config.json"
WEIGHTS_FILE = "model.safetensors"
WORKING_WIDTH = 64  # wider frames are pooled down to about this width: the IDM needs motion, not detail
POOLED_GRID = (3, 4)  # features keep a coarse layout: moving forward looks different at the edges than at the centre


class IDMNet(nn.Module):
    """Frames -> (before, after, after - before, a matching cost volume) -> strided convolutions -> a coarse
    grid (plus the cost volume pooled on that grid) -> two heads.

    Frames wider than ``WORKING_WIDTH`` are average-pooled to about that width first. The cost volume holds,
    for each horizontal shift up to a fifth of the width (and each vertical one up to a tenth of it), how
    badly the shifted grey 'before' frame matches the 'after' frame at each pixel: turning moves the whole
    view sideways, moving forward spreads it outwards, so the network starts from displacements instead of
    having to learn to find them in a few thousand examples."""

    def __init__(
        self, num_actions: int, frame_width: int, width: int = 32, hidden: int = 256, dropout: float = 0.3
    ) -> None:
        super().__init__()
        self.downsample = max(1, frame_width // WORKING_WIDTH)
        reach = max(2, frame_width // self.downsample // 5)
        self.shifts = [(0, dx) for dx in range(-reach, reach + 1)]
        self.shifts += [(dy, 0) for dy in range(-reach // 2, reach // 2 + 1) if dy]
        channels = [9 + len(self.shifts), width, 2 * width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for inputs, outputs in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.Conv2d(inputs, outputs, 3, stride=2, padding=1), nn.GroupNorm(8, outputs), nn.SiLU()]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(POOLED_GRID), nn.Flatten())
        # The cost volume also goes straight to the classifier, averaged over a coarse grid: how the view moved
        # in each part of the frame is most of what tells the actions apart.
        pooled = (channels[-1] + len(self.shifts)) * POOLED_GRID[0] * POOLED_GRID[1]
        self.hidden = nn.Sequential(nn.Dropout(dropout), nn.Linear(pooled, hidden), nn.SiLU(), nn.Dropout(dropout))
        self.action_head = nn.Linear(hidden, num_actions)
        self.category_head = nn.Linear(hidden, len(CATEGORIES))

    def cost_volume(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """(B, shifts, H, W): -|grey before moved by (dy, dx) - grey after|, smoothed over 3x3 pixels."""
        grey_before, grey_after = before.mean(1, keepdim=True), after.mean(1, keepdim=True)
        reach = max(max(abs(dy), abs(dx)) for dy, dx in self.shifts)
        padded = F.pad(grey_before, (reach, reach, reach, reach), mode="replicate")
        height, width = after.shape[2:]
        costs = [
            padded[:, :, reach - dy : reach - dy + height, reach - dx : reach - dx + width] for dy, dx in self.shifts
        ]
        return F.avg_pool2d(-(torch.cat(costs, dim=1) - grey_after).abs(), 3, stride=1, padding=1)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, H, W, 3) frames -> (action logits, category logits)."""
        before, after = (frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0 for frames in (before, after))
        if self.downsample > 1:
            before, after = F.avg_pool2d(before, self.downsample), F.avg_pool2d(after, self.downsample)
        costs = self.cost_volume(before, after)
        pooled_costs = F.adaptive_avg_pool2d(costs, POOLED_GRID).flatten(1)
        features = self.features(torch.cat([before, after, after - before, costs], dim=1))
        hidden = self.hidden(torch.cat([features, pooled_costs], dim=1))
        return self.action_head(hidden), self.category_head(hidden)


@dataclasses.dataclass
class ActionFollowing:
    """How often the IDM recovers the actions of some transitions (accuracies in [0, 1])."""

    num_transitions: int
    action_accuracy: float
    category_accuracy: float
    action_chance: float
    category_chance: float
    # per true category: {"count", "action_accuracy", "category_accuracy"}; categories with no transitions are left out
    per_category: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        lines = [
            f"{self.num_transitions} transitions: action accuracy {self.action_accuracy:.3f} "
            f"(chance {self.action_chance:.3f}), "
            f"category accuracy {self.category_accuracy:.3f} (chance {self.category_chance:.3f})"
        ]
        for name, scores in self.per_category.items():
            lines.append(
                f"  {name:<11} {int(scores['count']):>6} transitions: action {scores['action_accuracy']:.3f}, "
                f"category {scores['category_accuracy']:.3f}"
            )
        return "\n".join(lines)


class IDM:
    """A trained IDM: the network, the action set it knows and the frame size it reads."""

    def __init__(
        self,
        net: IDMNet,
        action_names: Sequence[str],
        frame_width: int,
        frame_height: int,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.net = net.eval()
        self.action_names = list(action_names)
        self.frame_width, self.frame_height = int(frame_width), int(frame_height)
        self.info = dict(info or {})  # provenance and scores, saved with the weights
        self.action_categories = np.array([CATEGORIES.index(action_category(name)) for name in self.action_names])

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> IDM:
        self.net.to(device)
        return self

    def check_frames(self, frames: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
        """``frames`` as a uint8 tensor (B, H, W, 3) at the IDM's frame size, or an IDMError saying what is wrong."""
        frames = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
        expected = (self.frame_height, self.frame_width, 3)
        if frames.dim() != 4 or tuple(frames.shape[1:]) != expected:
            raise IDMError(
                f"{what}: expected uint8 frames of shape (batch, {expected[0]}, {expected[1]}, 3) "
                f"({self.frame_width}x{self.frame_height} RGB, the frame size this IDM was trained on), "
                f"got shape {tuple(frames.shape)}: train an IDM on a dataset of this frame size"
            )
        if frames.dtype != torch.uint8:
            raise IDMError(f"{what}: expected uint8 frames (0..255), got {frames.dtype}")
        return frames

    @torch.no_grad()
    def predict(
        self, frames_before: np.ndarray | torch.Tensor, frames_after: np.ndarray | torch.Tensor, batch_size: int = 256
    ) -> tuple[np.ndarray, np.ndarray]:
        """(action ids, category ids, indices into ``CATEGORIES``) of the transitions before[i] -> after[i]."""
        before = self.check_frames(frames_before, "frames_before")
        after = self.check_frames(frames_after, "frames_after")
        if len(before) != len(after):
            raise IDMError(
                f"frames_before has {len(before)} frames but frames_after has {len(after)}: "
                "give one 'after' frame per 'before' frame"
            )
        actions, categories = [], []
        for start in range(0, len(before), batch_size):
            chunk = slice(start, start + batch_size)
            action_logits, category_logits = self.net(before[chunk].to(self.device), after[chunk].to(self.device))
            actions.append(action_logits.argmax(1).cpu())
            categories.append(category_logits.argmax(1).cpu())
        if not actions:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return torch.cat(actions).numpy(), torch.cat(categories).numpy()


def _chance(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    true_freq = np.bincount(truth, minlength=num_classes) / len(truth)
    predicted_freq = np.bincount(predicted, minlength=num_classes) / len(predicted)
    return float(true_freq @ predicted_freq)


def action_following(
    idm: IDM,
    frames_before: np.ndarray | torch.Tensor,
    frames_after: np.ndarray | torch.Tensor,
    actions: Sequence[int] | np.ndarray,
    action_names: Sequence[str] | None = None,
) -> ActionFollowing:
    """Score how well the transitions before[i] -> after[i] show ``actions[i]`` (their action ids in the
    world model's action set ``action_names``, which must be the IDM's)."""
    if action_names is not None and list(action_names) != idm.action_names:
        raise IDMError(
            f"the actions are of the action set {list(action_names)}, but this IDM was trained on "
            f"{idm.action_names}: train an IDM on a dataset recorded with the same actions"
        )
    actions = np.asarray(actions, dtype=np.int64).reshape(-1)
    bad = np.flatnonzero((actions < 0) | (actions >= len(idm.action_names)))
    if bad.size:
        raise IDMError(
            f"action id {int(actions[bad[0]])} (at position {int(bad[0])}) is out of range: this IDM knows "
            f"{len(idm.action_names)} actions (ids 0..{len(idm.action_names) - 1})"
        )
    if len(actions) != len(frames_before):
        raise IDMError(f"{len(actions)} actions for {len(frames_before)} transitions: give one action per transition")
    if len(actions) == 0:
        raise IDMError("no transitions to score")
    predicted_actions, predicted_categories = idm.predict(frames_before, frames_after)
    true_categories = idm.action_categories[actions]
    action_hits, category_hits = predicted_actions == actions, predicted_categories == true_categories
    per_category = {}
    for index, name in enumerate(CATEGORIES):
        members = true_categories == index
        if members.any():
            per_category[name] = {
                "count": int(members.sum()),
                "action_accuracy": float(action_hits[members].mean()),
                "category_accuracy": float(category_hits[members].mean()),
            }
    return ActionFollowing(
        num_transitions=len(actions),
        action_accuracy=float(action_hits.mean()),
        category_accuracy=float(category_hits.mean()),
        action_chance=_chance(actions, predicted_actions, len(idm.action_names)),
        category_chance=_chance(true_categories, predicted_categories, len(CATEGORIES)),
        per_category=per_category,
    )


def check_idm_output(path: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to replace an existing IDM folder without ``overwrite``, and any other non-empty folder ever."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise IDMError(f"{path} exists and is not a folder: choose another output folder")
    if path.is_dir() and any(path.iterdir()):
        if not (path / CONFIG_FILE).is_file():
            raise IDMError(f"{path} is a non-empty folder that does not hold an IDM: choose another output folder")
        if not overwrite:
            raise IDMError(
                f"{path} already holds an IDM: pass --overwrite to replace it, or choose another output folder"
            )


def save_idm(idm: IDM, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the IDM folder atomically (a reader never sees half of it)."""
    from safetensors.torch import save_file

    check_idm_output(path, overwrite)
    config = {
        "format": IDM_FORMAT,
        "format_version": IDM_FORMAT_VERSION,
        "action_names": idm.action_names,
        "action_categories": [CATEGORIES[i] for i in idm.action_categories],
        "frame_width": idm.frame_width,
        "frame_height": idm.frame_height,
        **idm.info,
    }
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        weights = {name: tensor.detach().cpu().contiguous() for name, tensor in idm.net.state_dict().items()}
        save_file(weights, str(tmp / WEIGHTS_FILE))
        write_json_atomic(tmp / CONFIG_FILE, config)
    return Path(path)


def load_idm(path: str | os.PathLike, device: str | torch.device = "cpu") -> IDM:
    """Load an IDM folder written by ``save_idm`` (``train_idm.py --output_dir``)."""
    from safetensors.torch import load_file

    path = Path(path)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise IDMError(
            f"{path} is not an IDM folder (it needs {CONFIG_FILE} and {WEIGHTS_FILE}): "
            f"train one with train_idm.py --output_dir {path}"
        )
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise IDMError(f"{config_path} is not valid JSON ({error}): train the IDM again") from error
    if config.get("format") != IDM_FORMAT or config.get("format_version") != IDM_FORMAT_VERSION:
        raise IDMError(
            f"{config_path} is not an IDM config of format {IDM_FORMAT} version {IDM_FORMAT_VERSION}: "
            "train the IDM again"
        )
    net = IDMNet(len(config["action_names"]), config["frame_width"])
    try:
        net.load_state_dict(load_file(str(weights_path)))
    except Exception as error:  # missing or misshapen tensors, a damaged file: all mean the same to the user
        raise IDMError(f"{weights_path} does not match its config ({error}): train the IDM again") from error
    known = ("format", "format_version", "action_names", "action_categories", "frame_width", "frame_height")
    info = {key: value for key, value in config.items() if key not in known}
    return IDM(net, config["action_names"], config["frame_width"], config["frame_height"], info).to(device)
