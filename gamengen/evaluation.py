"""What evaluate.py measures of a world model, and on what: the windows, the passes, the baselines.

The teacher-forced windows are chosen spread evenly over the evaluation's episodes (by default the
held-out episodes the trainer recorded in the checkpoint); the shuffled-actions baseline feeds each
window the actions of another (a derangement). One model is measured by ``evaluate_model``: its
teacher-forced predictions with true and shuffled actions and the VAE reconstruction of every target
(``teacher_forced``), autoregressive rollouts from a real start with the recorded actions (``drift``),
the speed of a batch-1 rollout (``measure_speed``) and, with an inverse-dynamics model, how often the
actions can be read back from its frames (``measure_action_following``). The copy-last baseline
(``copy_last_baseline``) repeats the last real frame. The results are the records of
``gamengen/evaluation_results.py``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gamengen.actions import motion_kind
from gamengen.cli import engine_from_args
from gamengen.config import WorldModelConfig
from gamengen.context import check_dataset_fits_model, episode_context, episode_frames, find_episode
from gamengen.engine import GameEngine
from gamengen.episodes import EpisodeDataset
from gamengen.evaluation_results import (
    CopyLastBaseline,
    DriftCurve,
    ModelResult,
    PassSummary,
    TeacherForced,
    Timing,
    Window,
)
from gamengen.idm import IDM, IDMError, action_following, load_idm
from gamengen.layout import DatasetError
from gamengen.model import ModelLoadError
from gamengen.scores import FrameScores, Scorer
from gamengen.vae import decode_latents, encode_frames, frames_to_tensor, tensor_to_frames

# ----------------------------------------------------------------------------------------------
# Models, episodes, windows and shuffles


def derangement(count: int, seed: int) -> np.ndarray:
    """A random permutation of ``range(count)`` with no fixed point (Sattolo's algorithm: one cycle),
    so every window gets another window's actions; the identity for fewer than 2."""
    order = np.arange(count)
    rng = np.random.default_rng(seed)
    for i in range(count - 1, 0, -1):
        j = int(rng.integers(0, i))
        order[i], order[j] = order[j], order[i]
    return order


def check_models_fit(dataset: EpisodeDataset, folders: list[str], configs: list[WorldModelConfig]) -> None:
    """Refuse, before any work, a checkpoint that does not fit the dataset or has other actions than the first."""
    for folder, config in zip(folders, configs, strict=True):
        try:
            check_dataset_fits_model(dataset, config)
        except DatasetError as error:
            raise DatasetError(f"{folder}: {error}") from None
        if list(config.action_names) != list(configs[0].action_names):
            raise ModelLoadError(
                f"{folder} has other actions than {folders[0]}: --compare needs checkpoints of the same game and "
                "action set"
            )


def choose_episodes(
    dataset: EpisodeDataset, config: WorldModelConfig, episodes: list[str] | None, num_episodes: int
) -> tuple[list[int], str]:
    """(episode indices, where they come from): ``episodes`` (--episodes), else the checkpoint's held-out
    episodes; at most ``num_episodes`` of them."""
    if episodes:
        indices, source = [find_episode(dataset, e) for e in episodes], "--episodes"
    else:
        heldout = [e for e in config.dataset.get("heldout_episodes", []) if e in set(dataset.episode_ids)]
        if heldout:
            indices, source = (
                [dataset.episode_ids.index(e) for e in heldout],
                "held out by the trainer (never trained on)",
            )
        else:
            indices = list(range(len(dataset.episode_ids)))
            source = (
                "ALL episodes: the checkpoint records no held-out episode of this dataset, "
                "so training episodes may be included"
            )
    indices = list(dict.fromkeys(indices))[:num_episodes]
    return indices, source


def choose_windows(
    dataset: EpisodeDataset, episodes: list[int], context_length: int, max_windows: int, action_names: list[str]
) -> list[Window]:
    """Up to ``max_windows`` targets spread evenly over the episodes' steps. Targets with a full
    context (step >= N) are used when an episode has any; a shorter episode gives padded windows."""
    candidates = []
    for episode in episodes:
        length = dataset.episodes[episode].length
        first = context_length if length > context_length else 1
        candidates += [(episode, step) for step in range(first, length)]
    if not candidates:
        raise DatasetError("the chosen episodes have no step with a frame before it: use episodes of at least 2 steps")
    picks = np.unique(np.linspace(0, len(candidates) - 1, min(max_windows, len(candidates))).round().astype(int))
    windows = []
    for pick in picks:
        episode, step = candidates[pick]
        action = int(dataset.actions(episode)[step - 1])
        name = action_names[action]
        windows.append(Window(episode, dataset.episode_ids[episode], step, action, name, motion_kind(name)))
    return windows


def batches(items: list, size: int) -> Iterator[tuple[int, list]]:
    """(start, items[start : start + size]) for every batch of ``size`` items."""
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def drift_start_step(dataset: EpisodeDataset, episodes: list[int], context_length: int) -> int:
    """The step every drift rollout starts from: a full context of the longest model, where the shortest
    episode allows one (and at least one frame before it, one after it)."""
    return max(1, min(context_length, min(dataset.episodes[e].length for e in episodes) - 1))


def load_evaluation_idm(path: str, device: str, action_names: list[str]) -> IDM:
    """The inverse-dynamics model of --idm, refused when it knows other actions than the models."""
    idm = load_idm(path, device=device)
    idm.info["path"] = str(path)
    if idm.action_names != list(action_names):
        raise IDMError(
            f"the IDM {path} knows the actions {idm.action_names}, the model {action_names}: "
            "train an IDM on this dataset (train_idm.py)"
        )
    return idm


# ----------------------------------------------------------------------------------------------
# The copy-last baseline and one model


def copy_last_baseline(
    dataset: EpisodeDataset, windows: list[Window], episodes: list[int], drift_start: int, horizon: int, scorer: Scorer
) -> CopyLastBaseline:
    """The last context frame repeated: scored on every teacher-forced window, and for every drift step."""
    copy_last_frames = frames_to_tensor(
        np.stack([episode_frames(dataset, w.episode, w.step - 1, w.step)[0] for w in windows])
    )
    truth_frames = frames_to_tensor(
        np.stack([episode_frames(dataset, w.episode, w.step, w.step + 1)[0] for w in windows])
    )
    return CopyLastBaseline(
        teacher_forced=PassSummary.of(scorer(copy_last_frames, truth_frames), windows),
        drift=copy_last_drift(dataset, episodes, drift_start, horizon, scorer),
    )


def teacher_forced(
    engine: GameEngine,
    dataset: EpisodeDataset,
    windows: list[Window],
    order: np.ndarray,
    args: argparse.Namespace,
    scorer: Scorer,
    label: str,
) -> TeacherForced:
    """Predict every window with its true actions and with the actions of window ``order[i]``; also
    the VAE reconstruction of every target. Windows are batched by context size (the same noise for
    both action sources)."""
    contexts = [episode_context(dataset, w.episode, w.step, engine.context_length) for w in windows]
    action_rows = [np.append(actions, action) for _, actions, action in contexts]
    truth_frames = np.stack([episode_frames(dataset, w.episode, w.step, w.step + 1)[0] for w in windows])
    predictions = {"model": [None] * len(windows), "shuffled": [None] * len(windows)}
    groups: dict[int, list[int]] = {}
    for i, (frames, _, _) in enumerate(contexts):
        groups.setdefault(len(frames), []).append(i)
    batch_number = 0
    with tqdm(total=2 * len(windows), desc=f"{label}: teacher forcing", unit="frame", leave=False) as bar:
        for size, members in sorted(groups.items()):
            for _, chunk in batches(members, args.batch_size):
                frames = np.stack([contexts[i][0] for i in chunk])
                for source in ("model", "shuffled"):
                    rows = [action_rows[i] if source == "model" else action_rows[order[i]][-size:] for i in chunk]
                    # another window's actions, aligned at the end (its last action produced its own target)
                    rows = [
                        np.concatenate([np.zeros(size - len(r), dtype=np.int64), r]) if len(r) < size else r
                        for r in rows
                    ]
                    engine.reset(frames, np.stack([r[:-1] for r in rows]), seed=args.seed + batch_number)
                    generated = engine.step([int(r[-1]) for r in rows])
                    for i, frame in zip(chunk, generated, strict=True):
                        predictions[source][i] = frame
                    bar.update(len(chunk))
                batch_number += 1
    truth = frames_to_tensor(truth_frames)
    reconstruction = []
    with torch.inference_mode():
        for _, chunk in batches(list(truth), args.batch_size):
            latents = encode_frames(
                engine.vae, torch.stack(chunk).to(engine.device, engine.vae.dtype), engine.config.model
            )
            reconstruction.append(
                frames_to_tensor(tensor_to_frames(decode_latents(engine.vae, latents, engine.config.model)))
            )
    model_frames, shuffled_frames = np.stack(predictions["model"]), np.stack(predictions["shuffled"])
    return TeacherForced(
        model=scorer(frames_to_tensor(model_frames), truth),
        shuffled_actions=scorer(frames_to_tensor(shuffled_frames), truth),
        vae_reconstruction=scorer(torch.cat(reconstruction), truth),
        predictions=model_frames,
        shuffled_predictions=shuffled_frames,
        last_context=np.stack([frames[-1] for frames, _, _ in contexts]),
        truth=truth_frames,
    )


def drift(
    engine: GameEngine,
    dataset: EpisodeDataset,
    episodes: list[int],
    start: int,
    args: argparse.Namespace,
    scorer: Scorer,
    label: str,
) -> DriftCurve:
    """Roll every episode out for ``--horizon`` frames from step ``start`` with its recorded actions
    (all episodes in one batch); per step, the mean scores over the episodes that are that long."""
    usable = [e for e in episodes if dataset.episodes[e].length > start]
    if not usable:
        return DriftCurve(start_step=start, episodes=0, count=[])
    horizon = min(args.horizon, max(dataset.episodes[e].length - start for e in usable))
    per_step = [FrameScores() for _ in range(horizon)]
    before, after, taken = [], [], []  # generated transitions, for action following
    with tqdm(total=horizon * len(usable), desc=f"{label}: drift", unit="frame", leave=False) as bar:
        for number, chunk in batches(usable, args.batch_size):
            contexts = [episode_context(dataset, e, start, engine.context_length) for e in chunk]
            engine.reset(
                np.stack([c[0] for c in contexts]), np.stack([c[1] for c in contexts]), seed=args.seed + 1000 + number
            )
            recorded = [dataset.actions(e) for e in chunk]
            lengths = [dataset.episodes[e].length - start for e in chunk]
            previous = None
            for i in range(horizon):
                actions = [
                    int(actions[start - 1 + i]) if i < n else 0 for actions, n in zip(recorded, lengths, strict=True)
                ]
                generated = engine.step(actions)
                alive = [b for b, n in enumerate(lengths) if i < n]
                if previous is not None and alive:
                    before.append(previous[alive])
                    after.append(generated[alive])
                    taken.append(np.asarray(actions)[alive])
                previous = generated
                truth = np.stack([episode_frames(dataset, chunk[b], start + i, start + i + 1)[0] for b in alive])
                per_step[i].extend(scorer(frames_to_tensor(generated[alive]), frames_to_tensor(truth)))
                bar.update(len(chunk))
    means, counts = [s.mean() for s in per_step], [len(s) for s in per_step]
    transitions = (np.concatenate(before), np.concatenate(after), np.concatenate(taken)) if before else None
    return DriftCurve(start_step=start, episodes=len(usable), steps=means, count=counts, transitions=transitions)


def copy_last_drift(
    dataset: EpisodeDataset, episodes: list[int], start: int, horizon: int, scorer: Scorer
) -> DriftCurve:
    """The drift baseline: the last frame of the real start (step ``start - 1``) shown for every step."""
    usable = [e for e in episodes if dataset.episodes[e].length > start]
    length = min(horizon, max((dataset.episodes[e].length - start for e in usable), default=0))
    per_step = [FrameScores() for _ in range(length)]
    for episode in usable:
        steps = min(length, dataset.episodes[episode].length - start)
        frames = frames_to_tensor(episode_frames(dataset, episode, start - 1, start + steps))
        episode_scores = scorer(frames[:1].expand(steps, -1, -1, -1), frames[1:])
        for i in range(steps):
            per_step[i].extend(episode_scores.subset([i]))
    return DriftCurve(start_step=start, episodes=len(usable), steps=[s.mean() for s in per_step])


def measure_speed(engine: GameEngine, dataset: EpisodeDataset, window: Window, frames: int, seed: int) -> Timing:
    """Frames/s and ms per stage of one rollout at batch size 1 (how the game is played)."""
    context, actions, action = episode_context(dataset, window.episode, window.step, engine.context_length)
    engine.reset(context, actions, seed=seed)
    for _ in range(frames + 1):  # the first frame (warm-up) is left out of the summary
        engine.step(action)
    return Timing(**engine.timing_summary(skip_first=1))


def steps_above(curve: list[float], baseline: list[float]) -> tuple[int, int]:
    """(frames above the baseline from the first one on, until the first that is not; frames above it in all)."""
    pairs = list(zip(curve, baseline, strict=False))
    first_run = next((i for i, (value, reference) in enumerate(pairs) if value <= reference), len(pairs))
    return first_run, sum(value > reference for value, reference in pairs)


def evaluate_model(
    folder: str,
    label: str,
    args: argparse.Namespace,
    dataset: EpisodeDataset,
    windows: list[Window],
    order: np.ndarray,
    episodes: list[int],
    drift_start: int,
    copy_last: CopyLastBaseline,
    scorer: Scorer,
    idm: IDM | None = None,
) -> ModelResult:
    engine = engine_from_args(argparse.Namespace(**{**vars(args), "model_folder": folder}))
    started = time.perf_counter()
    forced = teacher_forced(engine, dataset, windows, order, args, scorer, label)
    curve = drift(engine, dataset, episodes, drift_start, args, scorer, label)
    timing = measure_speed(engine, dataset, windows[0], args.timing_frames, args.seed)
    first_run, in_all = steps_above(curve.curve("psnr"), copy_last.drift.curve("psnr"))
    config = engine.config
    return ModelResult(
        name=label,
        model_folder=str(folder),
        engine=engine.describe(),
        config={
            "preset": config.model.preset,
            "context_length": config.context_length,
            "frame_size": list(engine.frame_size),
            "noise_buckets": config.noise_buckets,
            "max_noise_level": config.max_noise_level,
            "context_dropout": config.context_dropout,
            "prediction_type": config.prediction_type,
            **({"residual": config.residual} if hasattr(config, "residual") else {}),
        },
        training_dataset={k: v for k, v in config.dataset.items() if k != "heldout_episodes"},
        forced=forced,
        teacher_forced=PassSummary.of(forced.model, windows),
        shuffled_actions=PassSummary.of(forced.shuffled_actions, windows),
        vae_reconstruction=PassSummary.of(forced.vae_reconstruction, windows),
        drift=curve,
        drift_steps_above_copy_last=first_run,
        drift_frames_above_copy_last=in_all,
        timing=timing,
        seconds=time.perf_counter() - started,
        action_following=measure_action_following(idm, forced, curve, windows, order) if idm is not None else None,
    )


def measure_action_following(
    idm: IDM, forced: TeacherForced, curve: DriftCurve, windows: list[Window], order: np.ndarray
) -> dict[str, Any]:
    """How often the IDM recovers the actions: from the real transitions of the windows (its ceiling), the
    teacher-forced predictions, the predictions made with another window's actions (scored against the actions
    the model was given, and against the recorded ones, which a model that follows actions misses), and the
    autoregressive rollouts (generated frame t -> generated frame t+1)."""
    recorded = np.array([w.action for w in windows])
    given = recorded[order]
    passes = {
        "real": action_following(idm, forced.last_context, forced.truth, recorded),
        "teacher_forced": action_following(idm, forced.last_context, forced.predictions, recorded),
        "shuffled_given": action_following(idm, forced.last_context, forced.shuffled_predictions, given),
        "shuffled_recorded": action_following(idm, forced.last_context, forced.shuffled_predictions, recorded),
    }
    if curve.transitions is not None:
        passes["drift"] = action_following(idm, *curve.transitions)
    real, generated = passes["real"], passes["teacher_forced"]
    return {
        **{name: result.to_dict() for name, result in passes.items()},
        "relative_accuracy": accuracy_ratio(generated.action_accuracy, real.action_accuracy),
        "relative_category_accuracy": accuracy_ratio(generated.category_accuracy, real.category_accuracy),
        "idm": str(idm.info.get("path", "")),
    }


def accuracy_ratio(generated: float, real: float) -> float | None:
    """The IDM's accuracy on generated transitions over its accuracy on real ones; None (not defined) where it reads
    no real transition right, as an IDM trained a few steps may."""
    return generated / real if real > 0 else None


def ratio_text(ratio: float | None) -> str:
    """A ratio from ``accuracy_ratio`` as the reports print it: two decimals, or "n/a" where it is not defined."""
    return "n/a" if ratio is None else f"{ratio:.2f}"
