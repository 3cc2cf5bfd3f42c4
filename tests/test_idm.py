"""gamengen/idm.py and train_idm.py: the inverse-dynamics model that measures action following."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_script

import train_idm as train_idm_script
from common.utils import ShardWriter
from gamengen.actions import CATEGORIES, action_category
from gamengen.episodes import open_dataset, split_episode_ids
from gamengen.idm import IDMError, action_following, load_idm, save_idm
from gamengen.idm_training import load_transitions, score_transitions, train_idm

WIDTH, HEIGHT = 32, 24
ACTIONS = ["NOOP", "TURN_LEFT", "TURN_RIGHT", "FORWARD", "ATTACK"]
SHIFTS = {1: (0, 3), 2: (0, -3), 3: (3, 0)}  # (rows, columns) the view moves under each action


def scene(seed: int) -> np.ndarray:
    """A wrap-around textured world, smooth enough that a shift of a few pixels is visible."""
    coarse = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    return coarse.repeat(4, axis=0).repeat(4, axis=1)


def view(world: np.ndarray, row: int, column: int, flash: bool) -> np.ndarray:
    rows = (row + np.arange(HEIGHT)) % world.shape[0]
    columns = (column + np.arange(WIDTH)) % world.shape[1]
    frame = world[rows][:, columns].copy()
    if flash:  # the weapon fires: a bright block at the bottom centre
        frame[-6:, WIDTH // 2 - 4 : WIDTH // 2 + 4] = 255
    return frame


def write_toy_dataset(out: Path, episodes: int, length: int, actions_matter: bool, seed: int = 0) -> Path:
    """Episodes in this project's layout whose frame t+1 shows action t (or, with ``actions_matter``
    False, moves by a random action of its own that the recorded action says nothing about)."""
    metadata = {
        "scenario": "toy",
        "wad": "none",
        "map": "MAP01",
        "frame_width": WIDTH,
        "frame_height": HEIGHT,
        "frame_skip": 4,
        "action_names": ACTIONS,
    }
    writer = ShardWriter(out, metadata, run_id="toy", rows_per_shard=64)
    rng = np.random.default_rng(seed)
    for episode in range(episodes):
        world = scene(seed * 1000 + episode)
        writer.start_episode()
        row, column, flash = 0, 0, False
        for _ in range(length):
            action = int(rng.integers(len(ACTIONS)))
            writer.add_step(view(world, row, column, flash), action, 0.0)
            effect = action if actions_matter else int(rng.integers(len(ACTIONS)))
            row, column = row + SHIFTS.get(effect, (0, 0))[0], column + SHIFTS.get(effect, (0, 0))[1]
            flash = effect == 4
        writer.end_episode(done=True)
    writer.close()
    return out


def train_and_score(folder: Path, steps: int = 300):
    dataset = open_dataset(folder)
    train_ids, heldout_ids = split_episode_ids(dataset.episode_ids, 0.25)
    train = load_transitions(dataset.subset(train_ids))
    idm = train_idm(train, dataset.action_names, steps, 32, 2e-3, seed=0, show_progress=False)
    return idm, score_transitions(idm, load_transitions(dataset.subset(heldout_ids)))


def test_idm_recovers_actions_with_visible_effects(tmp_path):
    idm, scores = train_and_score(write_toy_dataset(tmp_path, episodes=8, length=60, actions_matter=True))
    assert scores.action_chance < 0.35
    assert scores.action_accuracy > 0.85, scores.summary()
    assert scores.category_accuracy > 0.85, scores.summary()
    assert set(scores.per_category) == {"still", "turn_left", "turn_right", "move", "attack_use"}
    assert sum(entry["count"] for entry in scores.per_category.values()) == scores.num_transitions == 2 * 59
    # Shuffled actions: the same transitions no longer match their actions.
    dataset = open_dataset(tmp_path)
    heldout = load_transitions(dataset.subset(split_episode_ids(dataset.episode_ids, 0.25)[1]))
    before, after, actions = heldout.pairs()
    shuffled = action_following(idm, before, after, np.random.default_rng(1).permutation(actions.numpy()), ACTIONS)
    assert shuffled.action_accuracy < shuffled.action_chance + 0.15 < scores.action_accuracy


def test_idm_stays_at_chance_when_actions_have_no_effect(tmp_path):
    _, scores = train_and_score(write_toy_dataset(tmp_path, episodes=8, length=60, actions_matter=False, seed=3))
    assert scores.action_accuracy < scores.action_chance + 0.15, scores.summary()
    assert scores.action_accuracy < 0.4, scores.summary()


@pytest.mark.parametrize(
    "name, category",
    [
        ("TURN_LEFT", "turn_left"),
        ("TURN_RIGHT", "turn_right"),
        ("FORWARD_TURN_LEFT", "turn_left"),
        ("MOVE_FORWARD+TURN_RIGHT", "turn_right"),
        ("TURN_LEFT_ATTACK", "turn_left"),
        ("FORWARD", "move"),
        ("BACKWARD", "move"),
        ("MOVE_FORWARD", "move"),
        ("FORWARD_ATTACK", "move"),
        ("FORWARD_USE", "move"),
        ("STRAFE_LEFT", "strafe"),
        ("MOVE_RIGHT", "strafe"),  # ViZDoom's MOVE_LEFT/RIGHT buttons strafe
        ("ATTACK", "attack_use"),
        ("USE", "attack_use"),
        ("NOOP", "still"),
        ("TURN_LEFT+TURN_RIGHT", "other"),
        ("SELECT_WEAPON2", "other"),
        ("ACTION_3", "other"),
    ],
)
def test_action_names_map_to_categories(name, category):
    assert action_category(name) == category
    assert category in CATEGORIES


def test_train_idm_script_writes_a_folder_that_loads_and_is_not_overwritten(tmp_path, in_process, capsys):
    dataset = write_toy_dataset(tmp_path / "ds", episodes=4, length=20, actions_matter=True)
    out = tmp_path / "idm"
    common = ("--dataset_name", dataset, "--output_dir", out, "--max_train_steps", 5, "--train_batch_size", 8)
    info = in_process(train_idm_script, *common)
    printed = capsys.readouterr().out
    assert "held-out real transitions" in printed and "turn_left" in printed
    config = json.loads((out / "idm_config.json").read_text())
    assert config["action_names"] == ACTIONS and (config["frame_width"], config["frame_height"]) == (WIDTH, HEIGHT)
    assert config["dataset"]["fingerprint"] == info["dataset"]["fingerprint"]
    assert len(config["dataset"]["heldout_episodes"]) == 1
    assert 0.0 <= config["heldout"]["action_accuracy"] <= 1.0 and config["heldout"]["num_transitions"] == 19
    idm = load_idm(out)
    frames = np.zeros((3, HEIGHT, WIDTH, 3), np.uint8)
    actions, categories = idm.predict(frames, frames)
    assert actions.shape == categories.shape == (3,) and set(actions) <= set(range(len(ACTIONS)))
    weights = (out / "model.safetensors").read_bytes()
    with pytest.raises(IDMError, match="--overwrite"):
        in_process(train_idm_script, *common)
    assert (out / "model.safetensors").read_bytes() == weights
    in_process(train_idm_script, *common, "--seed", 1, "--overwrite")
    assert (out / "model.safetensors").read_bytes() != weights
    # From the command line the refusal is one clear line, not a traceback.
    result = run_script("train_idm.py", "--dataset_name", dataset, "--output_dir", out, check=False)
    assert result.returncode != 0 and "already holds an IDM" in result.stderr and "Traceback" not in result.stderr


def test_bad_inputs_get_clear_errors(tmp_path):
    dataset = open_dataset(write_toy_dataset(tmp_path / "ds", episodes=2, length=6, actions_matter=True))
    idm = train_idm(load_transitions(dataset), ACTIONS, 1, 4, show_progress=False)
    frames = np.zeros((2, HEIGHT, WIDTH, 3), np.uint8)
    with pytest.raises(IDMError, match="32x24"):
        idm.predict(np.zeros((2, 48, 64, 3), np.uint8), np.zeros((2, 48, 64, 3), np.uint8))
    with pytest.raises(IDMError, match="uint8"):
        idm.predict(frames.astype(np.float32), frames)
    with pytest.raises(IDMError, match="out of range.*ids 0..4"):
        action_following(idm, frames, frames, [0, 5])
    with pytest.raises(IDMError, match="trained on"):
        action_following(idm, frames, frames, [0, 1], ["NOOP", "FORWARD"])
    with pytest.raises(IDMError, match="not an IDM folder"):
        load_idm(tmp_path / "missing")
    save_idm(idm, tmp_path / "idm")
    with pytest.raises(IDMError, match="--overwrite"):
        save_idm(idm, tmp_path / "idm")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(IDMError, match="does not hold an IDM"):
        save_idm(idm, tmp_path / "other", overwrite=True)
