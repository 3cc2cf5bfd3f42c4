"""run_playable_env.py: the browser (a real headless Chromium), the pygame window, headless scripts and
side by side with the real ViZDoom game, on real 64x48 recordings and a tiny random-init checkpoint."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, run_script, script_env
from PIL import Image

import run_autoregressive
import run_playable_env
from gamengen.actions import action_script
from gamengen.engine import EngineError, GameEngine
from gamengen.episodes import open_dataset
from gamengen.play import (
    KeyMap,
    PlaySession,
    PortError,
    RealGame,
    StartContext,
    action_controls,
    doom_env_module,
    game_settings,
)
from gamengen.play.keymap import KeyMapError

CHROMIUM = os.environ.get("GAMENGEN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A DNS rebinding attack's result, without DNS: a name of the attacker's that the browser resolves to this machine.
    "--host-resolver-rules=MAP rebinding.example 127.0.0.1",
    # This Chromium blocks a public site's WebSocket to 127.0.0.1 by itself; Firefox, Safari and older Chromiums let
    # any site open one. The tests play such a browser, so what keeps other sites out is the server's own check.
    "--disable-features=LocalNetworkAccessChecks",
]
GAME_ACTIONS = [
    "NOOP",
    "FORWARD",
    "BACKWARD",
    "TURN_LEFT",
    "TURN_RIGHT",
    "STRAFE_LEFT",
    "STRAFE_RIGHT",
    "ATTACK",
    "USE",
    "FORWARD_TURN_LEFT",
]


@pytest.fixture
def in_process():
    """Run the script's main() here (faster than a subprocess); keep torch's thread count as it was."""
    threads = torch.get_num_threads()
    yield lambda module, *args: module.main(module.parse_args([str(a) for a in args]))
    torch.set_num_threads(threads)


def gif_frames(path: Path) -> int:
    with Image.open(path) as gif:
        return gif.n_frames


# -- the key map -----------------------------------------------------------------------------------


def test_held_keys_pick_the_action_whose_controls_they_hold():
    keys = KeyMap(GAME_ACTIONS)
    assert keys.action_for([]) == 0 and keys.action_for(["KeyQ"]) == 0  # no key, or an unbound one: the no-op
    assert (
        GAME_ACTIONS[keys.action_for(["KeyW"])] == "FORWARD" and GAME_ACTIONS[keys.action_for(["ArrowUp"])] == "FORWARD"
    )
    assert GAME_ACTIONS[keys.action_for(["KeyW", "KeyA"])] == "FORWARD_TURN_LEFT"  # a combination the model has
    assert GAME_ACTIONS[keys.action_for(["KeyW", "Space"])] in (
        "FORWARD",
        "ATTACK",
    )  # one it lacks: the largest part of it
    assert GAME_ACTIONS[keys.action_for(["Space"])] == "ATTACK" and GAME_ACTIONS[keys.action_for(["KeyE"])] == "USE"
    assert keys.action_keys(9) == "W/Up + A/Left"
    # Names that are not made of known controls get digit keys; a renamed no-op is still the no-op.
    other = KeyMap(["IDLE", "MOVE_FORWARD", "JUMP", "CROUCH"])
    assert other.noop == 0 and other.action_for(["KeyW"]) == 1
    assert (
        other.action_for(["Digit1"]) == 2 and other.action_for(["KeyW", "Digit2"]) == 3 and other.action_keys(3) == "2"
    )
    assert action_controls("FORWARD_TURN_LEFT") == {"FORWARD", "TURN_LEFT"} and action_controls("NOOP") == frozenset()
    assert keys.help_lines()[0] == "no key: NOOP"
    assert action_script([1, 1, 1, 3, 0, 0], GAME_ACTIONS) == "FORWARD*3,TURN_LEFT,NOOP*2"


def test_a_model_with_many_generic_actions_gets_a_key_for_each_and_says_what_no_key_plays():
    """A peer checkpoint's 18 actions (ACTION_0..17 when their names are unknown) had keys only for 10 of
    them, and no key played ACTION_0 silently although it is no no-op."""
    names = [f"ACTION_{i}" for i in range(18)]
    keys = KeyMap(names)
    reachable = {keys.action_for([key]) for key in keys.bound_keys}
    assert reachable >= set(range(1, 18)) and all("no key left" not in keys.action_keys(i) for i in range(1, 18))
    assert len({keys.action_keys(i) for i in range(1, 18)}) == 17  # every action its own key
    assert not set(keys.digit_actions) & {"KeyW", "KeyA", "KeyS", "KeyD", "KeyP", "KeyR", "KeyN", "KeyC"}
    assert keys.action_for([]) == 0 and "ACTION_0 (the model has no no-op action)" in keys.help_lines()[0]
    chosen = KeyMap(names, idle_action="ACTION_5")
    assert chosen.action_for([]) == 5 and chosen.help_lines()[0].startswith("no key: ACTION_5")
    with pytest.raises(KeyMapError, match="not one of the model's actions"):
        KeyMap(names, idle_action="JUMP")


# -- headless ----------------------------------------------------------------------------------------


def test_headless_writes_a_gif_of_the_requested_length_and_an_action_log_that_replays_the_same_frames(
    tiny_dataset, tiny_checkpoint, tmp_path, in_process
):
    script = tmp_path / "moves.txt"
    script.write_text("# a scripted walk\nFORWARD*3\nturn_left\n")
    result = run_script(
        "run_playable_env.py",
        *("--model_folder", tiny_checkpoint, "--dataset_name", tiny_dataset, "--episode", 1, "--ui", "headless"),
        *("--actions_file", script, "--num_frames", 6, "--output_dir", tmp_path / "play", "--name", "walk"),
        *("--carry_detail", 8, "--carry_motion", "none", "--eta", 0.5),  # options the replay command must repeat
    )
    assert re.search(r"6 frames in [\d.]+ s = [\d.]+ FPS", result.stdout)
    assert gif_frames(tmp_path / "play" / "walk.gif") == 6  # every generated frame, none merged
    log = json.loads((tmp_path / "play" / "walk.json").read_text())
    assert log["actions"] == ["FORWARD"] * 3 + ["TURN_LEFT"] + ["FORWARD"] * 2  # a shorter script repeats
    actions_file = Path(log["actions_file"])
    assert actions_file.read_text().strip() == "FORWARD*3,TURN_LEFT,FORWARD*2"
    assert f"--start_step {log['start_step']}" in log["replay"] and f"--actions_file {actions_file}" in log["replay"]

    # The action log's replay command (run_autoregressive.py): from the same start, seed and sampling options,
    # the same frames.
    replay = shlex.split(log["replay"])
    assert replay[:2] == ["python", "run_autoregressive.py"] and "--eta" in replay
    assert replay[replay.index("--carry_detail") + 1] == "8" and replay[replay.index("--carry_motion") + 1] == "none"
    in_process(run_autoregressive, *replay[2:], "--output_dir", tmp_path / "replay", "--save_arrays", "--no_mp4")
    played = np.load(tmp_path / "play" / "walk.npz")
    replayed = np.load(tmp_path / "replay" / "ep1_script0.npz")
    assert played["generated"].shape == (6, 48, 64, 3)
    np.testing.assert_array_equal(played["generated"], replayed["generated"])


def test_a_headless_run_never_replaces_an_earlier_ones_recording_unless_told(
    tiny_dataset, tiny_checkpoint, tmp_path, in_process
):
    """A second headless run into the same --output_dir silently replaced the first one's headless.* files."""
    headless = ("--model_folder", tiny_checkpoint, "--dataset_name", tiny_dataset, "--ui", "headless")
    in_process(run_playable_env, *headless, "--actions", "FORWARD*2", "--output_dir", tmp_path)
    first = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert {"headless.gif", "headless.json", "headless.result.json"} <= set(first)
    with pytest.raises(EngineError, match="already holds the recording of an earlier headless run .*pass --overwrite"):
        in_process(run_playable_env, *headless, "--actions", "TURN_LEFT*3", "--output_dir", tmp_path)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == first
    in_process(run_playable_env, *headless, "--actions", "TURN_LEFT*3", "--output_dir", tmp_path, "--name", "other")
    assert gif_frames(tmp_path / "other.gif") == 3 and (tmp_path / "headless.gif").read_bytes() == first["headless.gif"]
    in_process(run_playable_env, *headless, "--actions", "TURN_LEFT*3", "--output_dir", tmp_path, "--overwrite")
    assert gif_frames(tmp_path / "headless.gif") == 3
    assert json.loads((tmp_path / "headless.json").read_text())["actions"] == ["TURN_LEFT"] * 3


def test_bad_input_is_refused_with_the_problem_and_the_fix(tiny_dataset, tiny_checkpoint, tmp_path, in_process):
    headless = ("--model_folder", tiny_checkpoint, "--dataset_name", tiny_dataset, "--ui", "headless")
    with pytest.raises(EngineError, match="unknown action 'JUMP': the model's actions are NOOP, FORWARD"):
        in_process(run_playable_env, *headless, "--actions", "FORWARD,JUMP")
    with pytest.raises(EngineError, match="--actions_file .*missing.txt does not exist"):
        in_process(run_playable_env, *headless, "--actions_file", tmp_path / "missing.txt")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortError, match=f"cannot listen on 127.0.0.1:{port} .*pass a free one with --port"):
            in_process(
                run_playable_env,
                "--model_folder",
                tiny_checkpoint,
                "--dataset_name",
                tiny_dataset,
                "--port",
                port,
                "--output_dir",
                tmp_path,
            )
    result = run_script(
        "run_playable_env.py",
        "--model_folder",
        tiny_checkpoint,
        "--ui",
        "headless",
        "--actions",
        "FORWARD*2,JUMP",
        check=False,
    )
    assert (
        result.returncode == 1
        and result.stderr.strip().splitlines()[-1].startswith("error: unknown action 'JUMP'")
        and "Traceback" not in result.stderr
    )


# -- side by side with the real game ------------------------------------------------------------------


def test_side_by_side_steps_the_real_game_in_lockstep_with_the_model(tiny_checkpoint, tmp_path, in_process):
    actions = "FORWARD*4,TURN_LEFT*4"
    result = in_process(
        run_playable_env,
        *(
            "--model_folder",
            tiny_checkpoint,
            "--ui",
            "headless",
            "--side_by_side",
            "--actions",
            actions,
            "--output_dir",
            tmp_path,
            "--seed",
            3,
        ),
    )
    assert result["frames"] == 8 and gif_frames(Path(result["gif"])) == 8
    arrays = np.load(tmp_path / "headless.npz")
    assert arrays["generated"].shape == arrays["real"].shape == (8, 48, 64, 3)
    assert len(result["psnr"]) == 8 and all(np.isfinite(result["psnr"]))
    with Image.open(result["gif"]) as gif:
        assert gif.size[0] == 2 * 64 * 4 + 4  # model | ViZDoom

    # The real frames are the game's answers to the same actions, step by step: a fresh game with the
    # same seed, played the same way, shows the same frames.
    game = RealGame(game_settings((64, 48)), doom_env_module().ACTION_NAMES, seed=3)
    try:
        game.reset()
        expected = [game.step(a)[0] for a in [1] * 4 + [3] * 4]
    finally:
        game.close()
    np.testing.assert_array_equal(arrays["real"], np.stack(expected))
    assert not np.array_equal(arrays["real"][3], arrays["real"][7])  # turning changed the view


# -- the pygame window ----------------------------------------------------------------------------------


def test_the_pygame_window_plays_n_frames_with_the_keys_held(
    tiny_dataset, tiny_checkpoint, tmp_path, monkeypatch, in_process
):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    import pygame

    from gamengen.play.window import run_window

    torch.set_num_threads(1)  # as the scripts do (in_process restores it)
    engine = GameEngine.from_pretrained(tiny_checkpoint, device="cpu")
    session = PlaySession(
        engine,
        StartContext.from_dataset(open_dataset(tiny_dataset), 0, None, engine.context_length),
        record_dir=tmp_path,
    )

    def press(session, frame):  # what a player does: W down after frame 2, A too after 4, both up after 6
        events = {
            2: [(pygame.KEYDOWN, pygame.K_w)],
            4: [(pygame.KEYDOWN, pygame.K_a)],
            6: [(pygame.KEYUP, pygame.K_w), (pygame.KEYUP, pygame.K_a)],
        }
        for kind, key in events.get(frame, []):
            pygame.event.post(pygame.event.Event(kind, key=key))

    result = run_window(session, max_frames=8, on_frame=press)
    assert result["frames"] == 8 and result["fps"] > 0
    names = [engine.action_names[a] for a in session.actions]
    assert names == ["NOOP", "NOOP", "FORWARD", "FORWARD", "FORWARD_TURN_LEFT", "FORWARD_TURN_LEFT", "NOOP", "NOOP"]


def test_the_pygame_ui_runs_from_the_command_line_and_records(tiny_dataset, tiny_checkpoint, tmp_path):
    result = run_script(
        "run_playable_env.py",
        *(
            "--model_folder",
            tiny_checkpoint,
            "--dataset_name",
            tiny_dataset,
            "--ui",
            "pygame",
            "--max_frames",
            5,
            "--record",
            "--output_dir",
            tmp_path,
        ),
        SDL_VIDEODRIVER="dummy",
        SDL_AUDIODRIVER="dummy",
    )
    assert re.search(r"5 frames in [\d.]+ s = [\d.]+ FPS \(window\)", result.stdout)
    (gif,) = tmp_path.glob("*.gif")
    assert gif_frames(gif) == 5 and len(list(tmp_path.glob("*.actions.txt"))) == 1


# -- the browser ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_dataset, tiny_checkpoint, tmp_path_factory):
    """run_playable_env.py --ui web on a free port, as a user starts it."""
    out = tmp_path_factory.mktemp("web")
    command = [
        sys.executable,
        str(REPO / "run_playable_env.py"),
        "--model_folder",
        str(tiny_checkpoint),
        "--dataset_name",
        str(tiny_dataset),
    ]
    command += ["--port", "0", "--output_dir", str(out)]
    log = tmp_path_factory.mktemp("web_log") / "server.log"  # what the server prints, for the tests to read
    with open(log, "w") as console:
        process = subprocess.Popen(
            command, stdout=console, stderr=subprocess.STDOUT, text=True, env=script_env(), cwd=REPO
        )
    try:
        deadline = time.time() + 120
        url = None
        while url is None and process.poll() is None and time.time() < deadline:
            time.sleep(0.2)
            match = re.search(r"serving the game at (http://127\.0\.0\.1:\d+/)", log.read_text())
            url = match.group(1) if match else None
        assert url, "the server did not start:\n" + log.read_text()
        yield {"url": url, "process": process, "out": out, "log": log}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, as .ci/run does, or set GAMENGEN_CHROMIUM)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def frame_count(page) -> int:
    return page.evaluate("window.play.frames.length")


def next_frame(page, count: int, timeout: float = 30000) -> dict:
    page.wait_for_function(f"window.play.frames.length > {count}", timeout=timeout)
    return page.evaluate(f"window.play.frames[{count}]")


def step_with(page, key: str, frames: int) -> list[dict]:
    """Back to the start, then ``frames`` single steps (N) with ``key`` held."""
    count = frame_count(page)
    page.keyboard.press("r")
    page.wait_for_function(f"window.play.frames.slice({count}).some((f) => f.frame === 0)", timeout=30000)
    page.keyboard.down(key)
    stepped = []
    for index in range(1, frames + 1):
        # Wait for the frame by its number: a frame the game loop had in flight when the pause came (or a second
        # copy of frame 0 when it lands after the reset) may arrive after the reset, before the first step.
        count = frame_count(page)
        page.keyboard.press("n")
        found = f"window.play.frames.slice({count}).find((f) => f.frame === {index})"
        page.wait_for_function(f"{found} !== undefined", timeout=30000)
        stepped.append(page.evaluate(found))
    page.keyboard.up(key)
    return stepped


def test_the_browser_page_plays_with_the_keyboard_and_the_frames_follow_the_keys(server, browser):
    page = browser.new_page()
    try:
        page.goto(server["url"])
        page.wait_for_function("window.play.frames.length > 3", timeout=60000)  # it plays on its own (no key: NOOP)
        assert page.evaluate("window.play.frames[2].action") == "NOOP"
        assert "W/Up" in page.inner_text("#keymap") and "FORWARD_TURN_LEFT" in page.inner_text("#keymap")
        page.keyboard.down("w")
        count = frame_count(page)
        page.wait_for_function(
            f"window.play.frames.slice({count + 1}).some((f) => f.action === 'FORWARD')", timeout=30000
        )
        page.keyboard.down("a")
        count = frame_count(page)
        page.wait_for_function(
            f"window.play.frames.slice({count + 1}).some((f) => f.action === 'FORWARD_TURN_LEFT')", timeout=30000
        )
        page.keyboard.up("a")
        page.keyboard.up("w")
        status = page.evaluate("window.play.status")
        assert status["fps"] > 0 and status["ms"] > 0  # the overlay's numbers

        # Pause, then step frame by frame from the start: the same keys give the same frames, other keys other frames.
        page.keyboard.press("p")
        page.wait_for_function("window.play.status.paused === true", timeout=30000)
        forward = step_with(page, "w", 3)
        turn = step_with(page, "a", 3)
        forward_again = step_with(page, "w", 3)
        assert [f["action"] for f in forward] == ["FORWARD"] * 3 and [f["action"] for f in turn] == ["TURN_LEFT"] * 3
        assert [f["hash"] for f in forward] == [f["hash"] for f in forward_again]
        assert all(a["hash"] != b["hash"] for a, b in zip(forward, turn, strict=True))

        # Record two frames: a gif and an action log come back.
        page.keyboard.press("c")
        page.wait_for_function("window.play.status.recording === true", timeout=30000)
        for _ in range(2):
            count = frame_count(page)
            page.keyboard.press("n")
            next_frame(page, count)
        page.keyboard.press("c")
        page.wait_for_function("window.play.saved.length === 1", timeout=30000)
        saved = page.evaluate("window.play.saved[0]")
        assert (
            gif_frames(Path(saved["gif"])) == 2
            and saved["replay"]
            and Path(saved["actions_file"]).read_text().strip() == "FORWARD*3,NOOP*2"
        )
        assert page.evaluate("window.play.errors") == []

        # A second player is told the engine is busy.
        other = browser.new_page()
        other.goto(server["url"])
        other.wait_for_function("window.play.busy !== null", timeout=30000)
        assert "another player" in other.evaluate("window.play.busy")
        other.close()
    finally:
        page.close()


def test_malformed_messages_are_refused_and_the_next_player_still_plays(server, browser):
    import aiohttp

    ws_url = server["url"].replace("http://", "ws://") + "ws"

    async def misbehave() -> tuple[list[str], int | None]:
        errors = []
        async with aiohttp.ClientSession() as client:
            for _ in range(100):  # the previous player's disconnect may still be settling
                async with client.ws_connect(ws_url) as ws:
                    hello = json.loads((await ws.receive()).data)
                    if hello["type"] == "busy":
                        await asyncio.sleep(0.1)
                        continue
                    assert hello["type"] == "hello"
                    for bad in [
                        "not json",
                        "[1, 2]",
                        '{"type": "keys", "held": 5}',
                        '{"type": "jump"}',
                        '{"type": "command", "command": "fly"}',
                        "x" * 5000,
                    ]:
                        await ws.send_str(bad)
                    await ws.send_bytes(b"\x00\x01")
                    while len(errors) < 7:
                        message = await ws.receive(timeout=30)
                        if message.type == aiohttp.WSMsgType.TEXT and json.loads(message.data)["type"] == "error":
                            errors.append(json.loads(message.data)["message"])
                    await ws.send_str("y" * 200_000)  # larger than the WebSocket limit: the connection is closed
                    while True:
                        message = await ws.receive(timeout=30)
                        if message.type in (
                            aiohttp.WSMsgType.CLOSE,
                            aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.CLOSING,
                        ):
                            return errors, ws.close_code
            raise AssertionError("the engine stayed busy")

    with ThreadPoolExecutor(1) as thread:  # Playwright's sync API holds this thread's event loop
        errors, close_code = thread.submit(lambda: asyncio.run(misbehave())).result()
    assert (
        errors[0].startswith("message is not JSON")
        and "JSON object" in errors[1]
        and '"held" must be a list' in errors[2]
    )
    assert "unknown message type 'jump'" in errors[3] and "unknown command 'fly'" in errors[4]
    assert "5000 characters refused" in errors[5] and "not binary" in errors[6]
    assert close_code == 1009  # message too big
    assert server["process"].poll() is None  # the server runs on

    page = browser.new_page()
    try:
        page.goto(server["url"])
        page.wait_for_function("window.play.hello !== null || window.play.busy !== null", timeout=60000)
        for _ in range(50):  # the misbehaving client's session may take a frame to be freed
            if page.evaluate("window.play.busy") is None:
                break
            page.reload()
            page.wait_for_function("window.play.hello !== null || window.play.busy !== null", timeout=60000)
        page.keyboard.down("d")
        count = frame_count(page)
        page.wait_for_function(
            f"window.play.frames.slice({count + 1}).some((f) => f.action === 'TURN_RIGHT')", timeout=60000
        )
        page.keyboard.up("d")
    finally:
        page.close()


def test_deeply_nested_json_gets_an_error_reply_and_an_immediate_reconnect_plays(server):
    """A '[' * 1000 message (under the size limit) made the JSON decoder recurse and dropped the connection;
    a reconnect right after a clean close was told "busy" while the old session was still being saved."""
    import aiohttp

    ws_url = server["url"].replace("http://", "ws://") + "ws"

    async def first_message(ws) -> dict:
        """The next JSON message (the frames' PNGs in between are skipped)."""
        while (message := await ws.receive(timeout=60)).type != aiohttp.WSMsgType.TEXT:
            assert message.type == aiohttp.WSMsgType.BINARY, f"the connection ended: {message}"
        return json.loads(message.data)

    async def play() -> tuple[str, bool, list[str]]:
        async with aiohttp.ClientSession() as client:
            for _ in range(100):  # an earlier test's player may still be leaving
                async with client.ws_connect(ws_url) as ws:
                    if (await first_message(ws))["type"] == "busy":
                        await asyncio.sleep(0.2)
                        continue
                    await ws.send_str("[" * 1000)
                    while (reply := await first_message(ws))["type"] != "error":
                        pass
                    await ws.send_str(json.dumps({"type": "keys", "held": ["KeyD"]}))
                    while not (
                        (frame := await first_message(ws)).get("type") == "frame" and frame["action"] == "TURN_RIGHT"
                    ):
                        pass
                    still_open = not ws.closed
                break
            greetings = []
            for _ in range(6):  # connect, close cleanly, connect again at once
                async with client.ws_connect(ws_url) as ws:
                    greetings.append((await first_message(ws))["type"])
            return reply["message"], still_open, greetings

    with ThreadPoolExecutor(1) as thread:
        message, still_open, greetings = thread.submit(lambda: asyncio.run(play())).result()
    assert "nests too deeply" in message and still_open
    assert greetings == ["hello"] * 6
    assert server["process"].poll() is None


async def next_json(ws) -> dict:
    """The server's next JSON message (the frames' PNGs in between are skipped)."""
    import aiohttp

    while (message := await ws.receive(timeout=60)).type != aiohttp.WSMsgType.TEXT:
        assert message.type == aiohttp.WSMsgType.BINARY, f"the connection ended: {message}"
    return json.loads(message.data)


async def play_as_next_player(client, ws_url: str, **options):
    """A WebSocket connection that holds the engine, and its hello (an earlier test's player may still be
    leaving: "busy" is retried)."""
    for _ in range(100):
        ws = await client.ws_connect(ws_url, **options)
        hello = await next_json(ws)
        if hello["type"] == "hello":
            return ws, hello
        await ws.close()
        await asyncio.sleep(0.2)
    raise AssertionError("the engine stayed busy")


def command(name: str) -> str:
    return json.dumps({"type": "command", "command": name})


def test_every_recording_reported_saved_is_on_disk_even_many_in_one_second(server):
    """Recordings were named to the second: toggling recording 40 times in 4 s gave 20 "saved" replies but 4 files,
    and the exit summary listed one file five times."""
    import aiohttp

    ws_url = server["url"].replace("http://", "ws://") + "ws"
    before = set(server["out"].glob("*.json"))

    async def record_twenty() -> list[dict]:
        async with aiohttp.ClientSession() as client:
            ws, _ = await play_as_next_player(client, ws_url)
            async with ws:
                await ws.send_str(command("pause"))
                while not (await next_json(ws)).get("paused"):
                    pass
                for _ in range(20):  # start, one frame, stop: as fast as the messages go
                    for name in ("record", "step", "record"):
                        await ws.send_str(command(name))
                saved = []
                while len(saved) < 20:
                    if (message := await next_json(ws))["type"] == "saved":
                        saved.append(message)
                return saved

    with ThreadPoolExecutor(1) as thread:
        saved = thread.submit(lambda: asyncio.run(record_twenty())).result()
    assert len({s["gif"] for s in saved}) == 20, [s["gif"] for s in saved]
    for recording in saved:
        gif = Path(recording["gif"])
        assert gif_frames(gif) == 1 and recording["gif_frames"] == 1
        assert gif.with_suffix(".npz").is_file() and Path(recording["actions_file"]).is_file()
        assert json.loads(gif.with_suffix(".json").read_text())["gif"] == str(gif)
    assert len(set(server["out"].glob("*.json")) - before) == 20
    assert not list(server["out"].glob(".*"))  # no temporary file left behind


def send_raw(url: str, request: bytes) -> bytes:
    """Send raw bytes to the server; the start of its reply."""
    address = url.split("//", 1)[1].rstrip("/")
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        try:
            connection.sendall(request)
        except OSError:  # the server may answer and close before reading all of it
            pass
        try:
            return connection.recv(200)
        except OSError:
            return b""


def test_oversized_requests_print_one_rate_limited_line_each_not_a_traceback(server):
    """Each request with a 100 KB URL or a 20 KB header printed a full aiohttp traceback: any client could flood the
    server's console."""
    start = len(server["log"].read_text())
    replies = []
    for _ in range(10):
        replies.append(send_raw(server["url"], b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
        header = b"X-Big: " + b"b" * 20_000
        replies.append(send_raw(server["url"], b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\n\r\n"))
    assert all(reply.startswith(b"HTTP/1.") and b" 400 " in reply.split(b"\r\n")[0] for reply in replies), replies
    time.sleep(1)  # the server's console is a file: let its last lines land
    printed = server["log"].read_text()[start:]
    assert "Traceback" not in printed and "Error handling request" not in printed, printed
    refused = [line for line in printed.splitlines() if line.startswith("refused a malformed request from 127.0.0.1")]
    assert 1 <= len(refused) <= 5 and len(printed.splitlines()) == len(refused), printed  # 5 lines per 10 s at most
    assert "(400 LineTooLong: Got more than 8190 bytes when reading)" in refused[0]
    with urllib.request.urlopen(server["url"], timeout=30) as page:  # and the server serves on
        assert page.status == 200


def test_other_web_sites_cannot_drive_the_server_and_its_own_page_still_plays(server, browser):
    """Any web page could open ws://127.0.0.1:<port>/ws (browsers let any site open WebSockets to localhost) and
    take the engine and write recordings; a page served under the attacker's own name resolved to 127.0.0.1 (DNS
    rebinding) got the page and its WebSocket as its own."""
    import aiohttp

    port = server["url"].rstrip("/").rsplit(":", 1)[1]
    ws_url = server["url"].replace("http://", "ws://") + "ws"

    async def foreign_clients() -> list[tuple[int, str]]:
        refusals = []
        async with aiohttp.ClientSession() as client:
            for options in (
                {"origin": "http://evil.example"},
                {"origin": "null"},  # a sandboxed frame or a file:// page
                {"headers": {"Host": f"rebinding.example:{port}"}},
            ):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await client.ws_connect(ws_url, **options)
                refusals.append((refused.value.status, ""))
            async with client.get(server["url"], headers={"Host": f"rebinding.example:{port}"}) as response:
                refusals.append((response.status, await response.text()))
        return refusals

    with ThreadPoolExecutor(1) as thread:
        refusals = thread.submit(lambda: asyncio.run(foreign_clients())).result()
    assert [status for status, _ in refusals] == [403] * 4
    assert "Host 'rebinding.example:" in refusals[-1][1] and "--allow_host" in refusals[-1][1]

    page = browser.new_page()
    try:
        # Another site's page in the player's browser opens a WebSocket to the server: the browser sends its Origin.
        page.route("http://evil.example/", lambda route: route.fulfill(content_type="text/html", body="<p>cats</p>"))
        page.goto("http://evil.example/")
        got = page.evaluate(
            """(url) => new Promise((done) => {
                const socket = new WebSocket(url);
                socket.onmessage = (event) => { done("message: " + event.data.slice(0, 40)); socket.close(); };
                socket.onclose = () => done("closed");
            })""",
            ws_url,
        )
        assert got == "closed"
        # The attacker's name resolved to this machine (DNS rebinding): the page itself is refused.
        response = page.goto(f"http://rebinding.example:{port}/")
        assert response.status == 403 and "is not this server's address" in page.inner_text("body")
        # The server's own page, at the address it printed and at localhost, plays.
        for url in (server["url"], f"http://localhost:{port}/"):
            page.goto(url)
            for _ in range(50):  # an earlier player may still be leaving
                page.wait_for_function("window.play.hello !== null || window.play.busy !== null", timeout=60000)
                if page.evaluate("window.play.busy") is None:
                    break
                page.reload()
            page.wait_for_function("window.play.frames.length > 2", timeout=60000)
    finally:
        page.close()


def test_listening_beyond_this_machine_warns_that_the_server_is_unauthenticated(tiny_checkpoint, tmp_path):
    command = [
        sys.executable,
        str(REPO / "run_playable_env.py"),
        "--model_folder",
        str(tiny_checkpoint),
        "--host",
        "0.0.0.0",
    ]
    command += ["--port", "0", "--output_dir", str(tmp_path)]
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True, env=script_env(), cwd=REPO)
    try:
        deadline = time.time() + 120
        while "serving the game at" not in log.read_text() and process.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=20)
    text = log.read_text()
    assert "serving the game at" in text, text
    assert "warning: --host 0.0.0.0 exposes this server, which has no authentication" in text
