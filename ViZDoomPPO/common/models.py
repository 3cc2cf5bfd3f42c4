"""The agent's feature extractor (GameNGen appendix A.5: a CNN on the frame + automap, and the
last 32 actions).

SB3 hands the extractor the observation already preprocessed: the ``frame`` image scaled to
[0, 1] and the ``actions`` history one-hot encoded (MultiDiscrete -> concatenated one-hots).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cloudpickle
import gymnasium as gym
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

# A saved agent's zip names its feature extractor in its policy settings. Pickled by reference that name
# is `common.models.DoomFeatureExtractor`, importable only with ViZDoomPPO/ on sys.path, so `PPO.load`
# failed elsewhere with "No module named 'common'". Pickled by value, the class's code travels inside the
# zip, and `PPO.load(path)` works from any folder of this environment.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class DoomFeatureExtractor(BaseFeaturesExtractor):
    """Nature-DQN-style CNN over the (RGB + automap) frame, an MLP over the one-hot action history,
    concatenated and projected to ``features_dim``."""

    def __init__(self, observation_space: gym.spaces.Dict, features_dim: int = 512, action_features: int = 128) -> None:
        super().__init__(observation_space, features_dim)
        frame_space = observation_space["frame"]
        actions_space = observation_space["actions"]
        channels = frame_space.shape[0]
        self.cnn = nn.Sequential(
            nn.Conv2d(channels, 32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            cnn_out = self.cnn(torch.zeros(1, *frame_space.shape)).shape[1]
        history_size = int(sum(actions_space.nvec))
        self.history = nn.Sequential(nn.Linear(history_size, action_features), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(cnn_out + action_features, features_dim), nn.ReLU())

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        image = self.cnn(observations["frame"])
        history = self.history(observations["actions"])
        return self.head(torch.cat([image, history], dim=1))


ENV_CONFIG_FILE = "env_config.json"


class AgentLoadError(ValueError):
    """A policy file that is missing or does not fit the environment."""


def find_env_config(model_path: str | Path) -> dict | None:
    """The env config saved by train_ppo_parallel.py beside a model (its folder or the run folder)."""
    model_path = Path(model_path)
    for folder in (model_path.parent, model_path.parent.parent):
        candidate = folder / ENV_CONFIG_FILE
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


def load_agent(model_path: str | Path, observation_space: gym.spaces.Dict, num_actions: int, device: str = "cpu"):
    """Load a PPO agent and check that it fits the environment it is about to play."""
    from stable_baselines3 import PPO

    path = Path(model_path)
    if not path.is_file() and path.with_suffix(".zip").is_file():
        path = path.with_suffix(".zip")
    if not path.is_file():
        raise AgentLoadError(
            f"model file {model_path} not found (expected a .zip saved by train_ppo_parallel.py, e.g. "
            "ViZDoomPPO/logs/models/<run>/best_model.zip)"
        )
    try:
        model = PPO.load(path, device=device)
    except Exception as error:
        raise AgentLoadError(f"{path} could not be loaded as a stable-baselines3 PPO model: {error}") from error
    n = getattr(model.action_space, "n", None)
    if n != num_actions:
        raise AgentLoadError(
            f"{path} was trained with {n} actions but this environment has {num_actions}: it belongs to another action "
            "set"
        )
    if not _same_space(model.observation_space, observation_space):
        raise AgentLoadError(
            f"{path} expects observations {_describe(model.observation_space)} but this environment gives "
            f"{_describe(observation_space)}. Use the game options it was trained with (see {ENV_CONFIG_FILE} in its "
            "run folder)."
        )
    return model


def _same_space(a: gym.spaces.Space, b: gym.spaces.Space) -> bool:
    if isinstance(a, gym.spaces.Dict) and isinstance(b, gym.spaces.Dict):
        return a.spaces.keys() == b.spaces.keys() and all(_same_space(a[k], b[k]) for k in a.spaces)
    return type(a) is type(b) and a.shape == b.shape and getattr(a, "dtype", None) == getattr(b, "dtype", None)


def _describe(space: gym.spaces.Space) -> str:
    if isinstance(space, gym.spaces.Dict):
        return "{" + ", ".join(f"{k}: {tuple(v.shape)}" for k, v in space.spaces.items()) + "}"
    return str(space)
