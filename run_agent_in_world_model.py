"""Let the PPO agent of ViZDoomPPO/ play inside the world model, and compare what it does there with the real game.

The world model is a gymnasium environment (``gamengen.WorldModelEnv``, docs/world_model_env.md): each step the
agent picks an action from the model's last frame and the model generates the next, starting from a recorded
frame of a held-out episode. DIAMOND trains agents inside its world model; GameNGen does not, and this script
asks the question that comes first: does the agent that made the data behave inside the model as it does in the
game? It plays ``--episodes`` episodes of up to ``--steps`` steps in each, with the same agent, and reports

* the action distribution in both (and the total variation distance between them);
* how many steps each episode keeps the game's look (``gamengen.game_look``): whether the sharpness of its frames,
  and, with ``--idm``, how often the inverse-dynamics model reads the actions the agent took, stay within the range
  the real game's own episodes show; each real episode is judged the same way, by the other real episodes' range;
* the world model's frames/s beside the engine's own.

The agent sees the model's frames as it sees the game's (``gamengen.agent_observation``): resized to its
observation size as the game resizes its frames, its own last actions, and an automap channel that is blank,
since the world model draws no automap (``--blank_real_automap`` blanks it in the real game too). The real game
is ViZDoom with the dataset's settings and no random action repeats, starting a new episode; the world model
starts at the first step with a full context of a held-out episode (``--random_start``: anywhere in it).

Example (the quickstart's run folder):

    python run_agent_in_world_model.py --model_folder runs/quickstart/world_model \\
        --dataset_name runs/quickstart/dataset --agent runs/quickstart/agent/models/quickstart/best_model.zip \\
        --idm runs/quickstart/idm --output_dir runs/quickstart/agent_in_world_model
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from gamengen.agent_observation import AgentObservation, AgentObservationError
from gamengen.cli import add_engine_arguments, dataset_from_args, engine_from_args
from gamengen.engine import EngineError
from gamengen.files import write_bytes_atomic, write_json_atomic
from gamengen.game_look import LookJudge, frame_energy, idm_hits, look_range, steps_in_look
from gamengen.help_format import HelpFormatter as SharedHelpFormatter
from gamengen.idm import IDMError, action_category, load_idm
from gamengen.layout import DatasetError
from gamengen.media import captioned_row, display_scale, write_gif
from gamengen.model import ModelLoadError
from gamengen.play import doom_env_module, game_settings
from gamengen.world_model_env import WorldModelEnv


class HelpFormatter(SharedHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default, and the docstring's example command as written."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__[__doc__.index("Example") :], formatter_class=HelpFormatter
    )
    add_engine_arguments(parser)
    parser.add_argument(
        "--dataset_name",
        default=None,
        help="dataset whose held-out episodes start the world model's episodes "
        "(default: the checkpoint's training data)",
    )
    agent = parser.add_argument_group("the agent")
    who = agent.add_mutually_exclusive_group(required=True)
    who.add_argument("--agent", default=None, help="a PPO agent saved by ViZDoomPPO/train_ppo_parallel.py (.zip)")
    who.add_argument("--random_policy", action="store_true", help="uniformly random actions instead of an agent")
    agent.add_argument("--deterministic", action="store_true", help="the agent's most likely action, not a sample")
    agent.add_argument(
        "--blank_real_automap",
        action="store_true",
        help="show the agent a blank automap in the real game too, as in the world model (which draws none)",
    )
    play = parser.add_argument_group("episodes")
    play.add_argument("--episodes", type=int, default=4, help="episodes in each of the world model and the game")
    play.add_argument("--steps", type=int, default=200, help="most steps per episode")
    play.add_argument(
        "--random_start",
        action="store_true",
        help="start anywhere in a held-out episode (default: its first step "
        "with a full context, near the start of the map where the real game starts)",
    )
    judge = parser.add_argument_group("the game's look (gamengen/game_look.py)")
    judge.add_argument("--idm", default=None, help="an IDM folder (train_idm.py): also judge whether actions show")
    judge.add_argument("--window", type=int, default=8, help="steps a window of the judge averages over")
    judge.add_argument(
        "--margin",
        type=float,
        default=1.0,
        help="widen the real game's sharpness range by this factor each way (1: exactly the range it shows)",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", default="outputs/agent_in_world_model", help="comparison.json, report.md, gif")
    output.add_argument("--no_gif", action="store_true", help="do not write the first episode's gif")
    args = parser.parse_args(argv)
    if args.carry_detail:
        parser.error("--carry_detail pastes the real start frame's detail: the agent must see the model's own frames")
    if args.episodes < 1 or args.steps < 1:
        parser.error("--episodes and --steps must be at least 1")
    try:
        args.judge = LookJudge(args.window, args.margin)
    except ValueError as error:
        parser.error(f"--window/--margin: {error}")
    return args


@dataclass
class Episode:
    """One episode: the frames seen (the start frame first), the actions taken, and where it began."""

    frames: list[np.ndarray] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    start: str = ""
    seconds: float = 0.0
    engine_ms: float = 0.0  # the world model's own time (GameEngine timings) for the episode's steps
    ended: str = "step limit"


def play_world_model(env: AgentObservation, act: Callable, seed: int, steps: int) -> Episode:
    obs, info = env.reset(seed=seed)
    episode = Episode(frames=[info["frame"]], start=f"{info['episode_id']} step {info['start_step']}")
    began = time.perf_counter()
    for _ in range(steps):
        action = act(obs)
        obs, _, terminated, truncated, info = env.step(action)
        episode.frames.append(info["frame"])
        episode.actions.append(action)
        episode.engine_ms += env.unwrapped.last_step_ms or 0.0
    episode.seconds = time.perf_counter() - began
    return episode


def play_real_game(env: Any, act: Callable, seed: int, steps: int, blank_automap: bool) -> Episode:
    def seen(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if blank_automap and obs["frame"].shape[0] == 4:
            obs = {**obs, "frame": obs["frame"].copy()}
            obs["frame"][3] = 0
        return obs

    obs, info = env.reset(seed=seed)
    episode = Episode(frames=[np.array(info["frame"])], start=f"a new game (seed {seed})")
    began = time.perf_counter()
    for _ in range(steps):
        action = act(seen(obs))
        obs, _, terminated, truncated, info = env.step(action)
        episode.actions.append(action)
        if info["frame"] is not None:
            episode.frames.append(np.array(info["frame"]))
        if terminated or truncated:
            episode.ended = "the game ended it (death, exit or timeout)"
            break
    episode.seconds = time.perf_counter() - began
    return episode


def make_policy(args: argparse.Namespace, game: Any, num_actions: int) -> tuple[Callable, Any]:
    """(obs -> action id, the agent's observation space) for the agent, or for a random policy."""
    if args.random_policy:
        rng = np.random.default_rng(args.seed)
        return (lambda obs: int(rng.integers(num_actions))), game.observation_space
    from common.models import AgentLoadError, load_agent  # ViZDoomPPO/ is on sys.path (doom_env_module)

    try:
        agent = load_agent(args.agent, game.observation_space, num_actions, device=args.device or "cpu")
    except AgentLoadError as error:
        raise EngineError(
            f"{error} (the game is the dataset's: {game.config.frame_width}x{game.config.frame_height} frames)"
        ) from None
    agent.set_random_seed(args.seed)
    return (lambda obs: int(agent.predict(obs, deterministic=args.deterministic)[0])), agent.observation_space


def share(actions: list[int], names: list[str]) -> dict[str, float]:
    counts = np.bincount(np.asarray(actions, dtype=np.int64), minlength=len(names)) if actions else np.zeros(len(names))
    return {name: float(count) / max(1, len(actions)) for name, count in zip(names, counts, strict=True)}


def category_share(actions: list[int], names: list[str]) -> dict[str, float]:
    shares: dict[str, float] = {}
    for name, value in share(actions, names).items():
        shares[action_category(name)] = shares.get(action_category(name), 0.0) + value
    return shares


def judge_episodes(
    episodes: dict[str, list[Episode]], args: argparse.Namespace, hud_rows: int | None, names: list[str]
) -> dict[str, Any]:
    """Sharpness against the real game's frames, IDM hits, the real game's range and each episode's verdict."""
    real_frames = np.concatenate([np.stack(e.frames) for e in episodes["real_game"]])
    reference = float(np.median(frame_energy(real_frames, hud_rows)))
    idm = load_idm(args.idm) if args.idm else None
    if idm is not None and idm.action_names != names:
        raise IDMError(f"the IDM knows the actions {idm.action_names}, the world model {names}: train it on this data")
    measured: dict[str, dict[str, list]] = {}
    for side, played in episodes.items():
        sharpness, hits = [], []
        for episode in played:
            frames = np.stack(episode.frames)
            sharpness.append(frame_energy(frames[1:], hud_rows) / max(reference, 1e-9))
            moves = np.asarray(episode.actions[: len(frames) - 1], dtype=np.int64)
            hits.append(idm_hits(idm, frames[:-1], frames[1:], moves) if idm is not None else None)
        measured[side] = {"sharpness": sharpness, "hits": hits}
    real = measured["real_game"]
    overall = look_range(real["sharpness"], real["hits"], args.judge)
    result: dict[str, Any] = {"reference_energy": reference, "range": overall.to_dict() if overall else None}
    for side, values in measured.items():
        verdicts = []
        for index, (sharpness, hits) in enumerate(zip(values["sharpness"], values["hits"], strict=True)):
            allowed = overall
            if side == "real_game" and len(real["sharpness"]) > 1:  # judged by the OTHER real episodes' range
                others = [j for j in range(len(real["sharpness"])) if j != index]
                allowed = look_range(
                    [real["sharpness"][j] for j in others], [real["hits"][j] for j in others], args.judge
                )
            verdicts.append(steps_in_look(sharpness, hits, args.judge, allowed))
        all_hits = [h for h in values["hits"] if h is not None and len(h)]
        result[side] = {
            "verdicts": [v.to_dict() for v in verdicts],
            "steps_in_look": [v.steps_in_look for v in verdicts],
            "left_look": sum(v.left_because is not None for v in verdicts),
            "sharpness": float(np.mean(np.concatenate(values["sharpness"]))),
            "idm_rate": float(np.concatenate(all_hits).mean()) if all_hits else None,
        }
    return result


def summarise(episodes: dict[str, list[Episode]], judged: dict[str, Any], names: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {"judge": judged}
    for side, played in episodes.items():
        actions = [a for e in played for a in e.actions]
        steps = sum(len(e.actions) for e in played)
        seconds = sum(e.seconds for e in played)
        summary[side] = {
            "episodes": [
                {"start": e.start, "steps": len(e.actions), "ended": e.ended, "verdict": v}
                for e, v in zip(played, judged[side]["verdicts"], strict=True)
            ],
            "steps": steps,
            "actions": share(actions, names),
            "categories": category_share(actions, names),
            "fps": steps / max(seconds, 1e-9),
        }
    wm, real = summary["world_model"], summary["real_game"]
    wm["engine_fps"] = 1000 * wm["steps"] / max(sum(e.engine_ms for e in episodes["world_model"]), 1e-9)
    summary["action_tv_distance"] = 0.5 * sum(abs(wm["actions"][n] - real["actions"][n]) for n in names)
    categories = sorted(set(wm["categories"]) | set(real["categories"]))
    summary["category_tv_distance"] = 0.5 * sum(
        abs(wm["categories"].get(c, 0.0) - real["categories"].get(c, 0.0)) for c in categories
    )
    return summary


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def look_sentence(judged: dict[str, Any], window: int, episodes: int) -> str:
    allowed = judged["range"]
    if allowed is None:
        return f"The game's look: not judged (no real episode lasted a {window}-step window)."
    idm = (
        f" and the IDM reads at least {allowed['idm_low']:.2f} of the actions (the lowest of those windows)"
        if allowed["idm_low"] is not None
        else " (no --idm: actions not judged)"
    )
    others = " Each real episode is judged by the other real episodes' range." if episodes > 1 else ""
    return (
        f"The game's look: a window of {window} steps keeps it while its mean sharpness stays within "
        f"{allowed['low']:.2f}..{allowed['high']:.2f}, the range of the real game's {window}-step windows in this "
        f"run,{idm}.{others}"
    )


def report_markdown(summary: dict[str, Any], settings: dict[str, Any]) -> str:
    judged, wm, real = summary["judge"], summary["world_model"], summary["real_game"]
    judge = settings["judge"]

    def lengths(side: str) -> str:
        values = judged[side]["steps_in_look"]
        return f"{np.mean(values):.1f} ({min(values)}-{max(values)})"

    lines = [
        "# The agent inside the world model",
        "",
        f"Agent: {settings['agent']}; world model: {settings['model_folder']}; starts: {settings['starts']}. "
        f"{settings['episodes']} episodes of up to {settings['steps']} steps in each. The agent's automap: "
        f"{settings['automap']}.",
        "",
        "| | world model | real game |",
        "|---|---|---|",
        f"| steps played | {wm['steps']} | {real['steps']} |",
        f"| steps in the game's look, mean (min-max) | {lengths('world_model')} | {lengths('real_game')} |",
        f"| episodes that left the game's look | {judged['world_model']['left_look']} of {settings['episodes']} | "
        f"{judged['real_game']['left_look']} of {settings['episodes']} |",
        f"| sharpness (1 = the real game's median frame) | {fmt(judged['world_model']['sharpness'])} | "
        f"{fmt(judged['real_game']['sharpness'])} |",
        f"| IDM reads the action's category | {fmt(judged['world_model']['idm_rate'])} | "
        f"{fmt(judged['real_game']['idm_rate'])} |",
        f"| frames/s (the engine's own) | {wm['fps']:.1f} ({wm['engine_fps']:.1f}) | {real['fps']:.1f} |",
        "",
        look_sentence(judged, judge["window"], settings["episodes"]),
        "",
        "## Actions",
        "",
        "| action | world model | real game |",
        "|---|---|---|",
        *[f"| {name} | {wm['actions'][name]:.3f} | {real['actions'][name]:.3f} |" for name in wm["actions"]],
        "",
        f"Total variation distance between the two: {summary['action_tv_distance']:.3f} over actions, "
        f"{summary['category_tv_distance']:.3f} over categories (0 = the same distribution, 1 = disjoint).",
        "",
        "## Episodes",
        "",
        "| | start | steps | in the look | why it left |",
        "|---|---|---|---|---|",
    ]
    for side, label in (("world_model", "world model"), ("real_game", "real game")):
        for episode in summary[side]["episodes"]:
            verdict = episode["verdict"]
            lines.append(
                f"| {label} | {episode['start']} | {episode['steps']} | {verdict['steps_in_look']} | "
                f"{verdict['left_because'] or '–'} |"
            )
    return "\n".join(lines) + "\n"


def write_episode_gif(world: Episode, real: Episode, names: list[str], path: Path, fps: float) -> Path:
    """The first episode of each, side by side (the real game's shows black after it ended)."""
    scale = display_scale(world.frames[0].shape[1])
    rows = []
    for index in range(max(len(world.frames), len(real.frames))):
        frames = [
            episode.frames[index] if index < len(episode.frames) else np.zeros_like(world.frames[0])
            for episode in (world, real)
        ]
        action = names[world.actions[index - 1]] if 0 < index <= len(world.actions) else "start"
        rows.append(captioned_row(frames, ["world model", "real game"], f"step {index}: {action} (model)", scale))
    return write_gif(rows, path, fps)


def main(args: argparse.Namespace) -> dict[str, Any]:
    engine = engine_from_args(args)
    dataset = dataset_from_args(args, engine.config)
    envs = doom_env_module()
    names = list(engine.action_names)
    if names != list(envs.ACTION_NAMES):
        raise EngineError(
            f"the world model's actions ({', '.join(names)}) are not the ViZDoomPPO game's: the agent and the real "
            "game need a model trained on ViZDoomPPO data"
        )
    start_step = None if args.random_start else engine.context_length
    world = WorldModelEnv(engine, dataset, start_step=start_step, start_room=1)
    settings = game_settings(engine.frame_size, dataset, engine.config.dataset)
    game = envs.DoomEnv(envs.DoomConfig.from_dict(settings))
    try:
        act, agent_space = make_policy(args, game, len(names))
        try:
            seen_world = AgentObservation(world, agent_space)
        except AgentObservationError as error:
            raise EngineError(str(error)) from None
        episodes: dict[str, list[Episode]] = {"world_model": [], "real_game": []}
        with tqdm(total=2 * args.episodes, desc="episodes", unit="episode") as progress:
            for index in range(args.episodes):
                seed = args.seed + index
                episodes["world_model"].append(play_world_model(seen_world, act, seed, args.steps))
                progress.update()
                episodes["real_game"].append(play_real_game(game, act, seed, args.steps, args.blank_real_automap))
                progress.update()
    finally:
        game.close()
    env_config = (dataset.metadata or {}).get("env_config") or {}
    hud_rows = 0 if env_config.get("render_hud") is False else None
    summary = summarise(episodes, judge_episodes(episodes, args, hud_rows, names), names)
    channels = seen_world.channels
    run_settings = {
        "agent": "random policy"
        if args.random_policy
        else f"{args.agent} ({'deterministic' if args.deterministic else 'sampled'})",
        "model_folder": str(args.model_folder),
        "dataset_name": str(args.dataset_name),
        "starts": f"{'random steps' if args.random_start else 'the first full context'} of episodes "
        f"{world.episodes_source}",
        "episodes": args.episodes,
        "steps": args.steps,
        "automap": "none (3 channels)"
        if channels == 3
        else (
            "blank in both" if args.blank_real_automap else "blank in the world model, the game's own in the real game"
        ),
        "judge": args.judge.to_dict(),
        "idm": args.idm,
        "engine": engine.describe(),
        "game": settings,
        "seed": args.seed,
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"settings": run_settings, **summary}
    write_json_atomic(out / "comparison.json", result)
    report = report_markdown(summary, run_settings)
    write_bytes_atomic(out / "report.md", report)
    if not args.no_gif:
        result["gif"] = str(
            write_episode_gif(
                episodes["world_model"][0],
                episodes["real_game"][0],
                names,
                out / "episode0.gif",
                world.metadata["render_fps"],
            )
        )
    print(report)
    print(f"wrote {out / 'comparison.json'} and {out / 'report.md'}")
    return result


if __name__ == "__main__":
    try:
        main(parse_args())
    except (DatasetError, ModelLoadError, EngineError, IDMError) as error:
        sys.exit(f"error: {error}")
