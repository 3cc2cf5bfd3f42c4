"""The real game beside the model (docs/play.md): ViZDoom driven by the same actions (``RealGame``),
with the settings of the data the model was trained on (``game_settings``), and the first frame of a
fresh game as the default start when no dataset is given (``first_game_frame``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from gamengen.engine import EngineError
from gamengen.episodes import EpisodeDataset

REPO = Path(__file__).resolve().parents[2]


def doom_env_module() -> ModuleType:
    """``ViZDoomPPO/common/envs.py`` (the agent side's environment), importable from the root scripts."""
    agent_dir = str(REPO / "ViZDoomPPO")
    if agent_dir not in sys.path:
        sys.path.insert(0, agent_dir)
    from common import envs

    return envs


def game_settings(
    frame_size: tuple[int, int], dataset: EpisodeDataset | None = None, provenance: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ViZDoom settings of the data the model was trained on (the dataset's ``env_config``, else the
    checkpoint's dataset provenance), at the model's frame size, with no random action repeats: the
    action pressed is the action played."""
    metadata = (dataset.metadata if dataset is not None else None) or (provenance or {}).get("metadata") or {}
    settings = dict(metadata.get("env_config") or {})
    for key in ("scenario", "wad", "map", "frame_skip"):
        if key not in settings and metadata.get(key) is not None:
            settings[key] = metadata[key]
    settings.update(frame_width=frame_size[0], frame_height=frame_size[1], repeat_action_prob=0.0)
    return settings


class RealGame:
    """ViZDoom (``DoomEnv``) driven by the same actions as the model, for the side-by-side view."""

    def __init__(self, settings: dict[str, Any], action_names: Sequence[str], seed: int = 0) -> None:
        envs = doom_env_module()
        if list(action_names) != list(envs.ACTION_NAMES):
            raise EngineError(
                "--side_by_side drives ViZDoom with the model's actions, "
                f"but the model's actions ({', '.join(action_names)}) are not the game's "
                f"({', '.join(envs.ACTION_NAMES)}): side by side needs a model trained on ViZDoomPPO data"
            )
        self.config = envs.DoomConfig.from_dict(settings)
        try:
            self.env = envs.DoomEnv(self.config)  # checks the map before any game starts
        except envs.ScenarioError as error:
            raise EngineError(f"the real game cannot start: {error}") from None
        self.seed = seed
        self.episodes = 0
        self.frame: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        """A new episode with the same seed: the same start, and the same answers to the same actions."""
        _, info = self.env.reset(seed=self.seed)
        self.episodes += 1
        self.frame = np.array(info["frame"])
        return self.frame

    def step(self, action: int) -> tuple[np.ndarray | None, bool]:
        """Play ``action``; the frame after it (None when the episode ended) and whether it ended."""
        _, _, terminated, truncated, info = self.env.step(action)
        self.frame = None if info["frame"] is None else np.array(info["frame"])
        return self.frame, bool(terminated or truncated)

    def close(self) -> None:
        self.env.close()


def first_game_frame(settings: dict[str, Any], seed: int = 0) -> np.ndarray:
    """The first frame of a fresh ViZDoom game with these settings (the default start without a dataset)."""
    envs = doom_env_module()
    try:
        env = envs.DoomEnv(envs.DoomConfig.from_dict(settings))
    except envs.ScenarioError as error:
        raise EngineError(
            f"the default start (the first frame of a fresh game) cannot be made: {error}; or pass --dataset_name"
        ) from None
    try:
        _, info = env.reset(seed=seed)
        return info["frame"]
    finally:
        env.close()
