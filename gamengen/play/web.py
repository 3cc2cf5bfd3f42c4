"""The browser UI: an aiohttp HTTP + WebSocket server and one page (``page.html``).

``GET /`` serves the page; ``GET /ws`` is the game. One player at a time holds the engine (its
weights fill the memory; a second game would halve the frame rate): a second connection gets a
``busy`` message and is closed, and a disconnect frees the engine for the next player, who starts
again from the start context.

Protocol (every client message is a JSON text of at most ``MAX_MESSAGE_CHARS`` characters):

* client -> server: ``{"type": "keys", "held": ["KeyW", ...]}`` (every key held, in the order they
  were pressed; sent whenever it changes), ``{"type": "command", "command": "pause" | "reset" |
  "step" | "record"}``.
* server -> client: ``{"type": "hello", ...}`` (actions, key map, bound keys, frame size, settings),
  then for every frame ``{"type": "frame", ...stats}`` followed by the frame as a binary PNG (the
  model's frame, and the real game's beside it with ``--side_by_side``); ``{"type": "saved", ...}``
  when a recording is written; ``{"type": "error", "message": ...}`` for a message it refuses (the
  connection and the server carry on); ``{"type": "busy", "message": ...}``.

The engine runs in one worker thread, never on the event loop, so the server answers while a frame
is being generated.

Who may connect (docs/play.md#who-can-connect). A browser lets any web site open a WebSocket to
``ws://127.0.0.1:<port>``, and lets a site whose DNS name it re-points at 127.0.0.1 (DNS rebinding) fetch
from it as its own origin: listening on loopback keeps other machines out, not other sites. So every
request must name this server in its ``Host`` header (``HostCheck``), and a WebSocket upgrade that carries
an ``Origin`` (browsers always send one) must come from a page this server served (``same_origin``).
Refused and malformed requests print one line each on the console, at most a few per ten seconds
(``RefusalLog``), never a traceback: any client can send them.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web
from PIL import Image

from gamengen.play import COMMAND_KEYS, PlaySession
from gamengen.play.guard import (
    BadRequestHandler,
    HostCheck,
    RefusalLog,
    host_name,
    same_origin,
    start_listening,
)

PAGE = Path(__file__).with_name("page.html")
MAX_MESSAGE_CHARS = 1024  # longer messages get an error reply
MAX_FRAME_BYTES = 64 * 1024  # the WebSocket layer closes a connection that sends more (code 1009)
MAX_HELD_KEYS = 16
COMMANDS = set(COMMAND_KEYS.values())


class MessageError(ValueError):
    """A client message the server refuses (the reply says why)."""


def parse_message(text: Any) -> dict[str, Any]:
    """A client message -> a checked dict, or MessageError naming what is wrong."""
    if not isinstance(text, str):
        raise MessageError("messages are JSON text, not binary")
    if len(text) > MAX_MESSAGE_CHARS:
        raise MessageError(f"message of {len(text)} characters refused: at most {MAX_MESSAGE_CHARS}")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as error:
        raise MessageError(f"message is not JSON ({error.msg} at character {error.pos})") from None
    except RecursionError:  # e.g. "[" * 1000: the decoder recurses once per level
        raise MessageError("message nests too deeply: send a flat JSON object") from None
    if not isinstance(message, dict):
        raise MessageError('a message is a JSON object like {"type": "keys", "held": ["KeyW"]}')
    kind = message.get("type")
    if kind == "keys":
        held = message.get("held")
        if (
            not isinstance(held, list)
            or not all(isinstance(key, str) and len(key) <= 32 for key in held)
            or len(held) > MAX_HELD_KEYS
        ):
            raise MessageError(f'"held" must be a list of at most {MAX_HELD_KEYS} key codes (strings like "KeyW")')
        return {"type": "keys", "held": held}
    if kind == "command":
        command = message.get("command")
        if command not in COMMANDS:
            raise MessageError(f"unknown command {command!r}: one of {', '.join(sorted(COMMANDS))}")
        return {"type": "command", "command": command}
    raise MessageError(f'unknown message type {kind!r}: "keys" or "command"')


def encode_png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class GameServer:
    """The app: one ``PlaySession``, lent to one WebSocket connection at a time."""

    def __init__(
        self,
        session: PlaySession,
        fps: float | None = None,
        settings: dict[str, Any] | None = None,
        allow_hosts: Iterable[str] = (),
    ) -> None:
        self.session = session
        self.fps = fps
        self.settings = settings or {}
        self.allow_hosts = list(allow_hosts)
        self.hosts = HostCheck("127.0.0.1", self.allow_hosts)  # serve() sets the address it listens on
        self.refusals = RefusalLog()
        # aiohttp's log of the requests it serves: a logger of this server's own (not in logging's tree, so
        # nothing propagates to the root logger), whose one handler turns malformed requests into refusal lines.
        self.request_log = logging.Logger(f"{__name__}.requests", logging.DEBUG)
        self.request_log.addHandler(BadRequestHandler(self.refusals))
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self.player: web.WebSocketResponse | None = None
        self.player_left = asyncio.Event()
        self.frames_served = 0
        self.connections = 0
        self.send_lock = asyncio.Lock()
        self.app = web.Application(middlewares=[self._check_host])
        self.app.add_routes([web.get("/", self.page), web.get("/ws", self.websocket)])
        self.app.on_shutdown.append(self._on_shutdown)

    def refuse(self, request: web.Request, problem: str, fix: str) -> web.HTTPForbidden:
        """403 with the problem and the fix, and one console line (rate-limited)."""
        self.refusals.note(f"refused {request.method} {request.path[:60]} from {request.remote}: {problem}")
        return web.HTTPForbidden(text=f"{problem}: {fix}\n")

    @web.middleware
    async def _check_host(self, request: web.Request, handler) -> web.StreamResponse:
        host = request.headers.get("Host")  # not request.host, which falls back to this machine's name
        if not self.hosts.allows(host):
            raise self.refuse(
                request,
                f"Host {(host or '')[:80]!r} is not this server's address ({self.hosts.listen_host})",
                f"open the address the server printed, or if {host_name(host or '') or 'that name'} is a name of "
                "this machine, restart with --allow_host NAME",
            )
        return await handler(request)

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(), content_type="text/html")

    async def _on_shutdown(self, app: web.Application) -> None:
        if self.player is not None:
            await self.player.close()

    async def run(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    def hello(self) -> dict[str, Any]:
        keymap = self.session.keymap
        width, height = self.session.engine.frame_size
        return {
            "type": "hello",
            "actions": keymap.describe(),
            "idle": keymap.idle_note,
            "commands": {key: command for key, command in COMMAND_KEYS.items()},
            "bound_keys": keymap.bound_keys,
            "frame_width": width,
            "frame_height": height,
            "side_by_side": self.session.real_game is not None,
            "start": self.session.start.description,
            "fps_target": self.fps,
            "settings": self.settings,
        }

    async def send_frame(self, ws: web.WebSocketResponse) -> None:
        """The frame's stats then its PNG, as one pair (no other message between them)."""
        stats, png = await self.run(lambda: (self.session.stats(), encode_png(self.session.raw_view())))
        async with self.send_lock:
            await ws.send_str(json.dumps({"type": "frame", **stats}))
            await ws.send_bytes(png)
        self.frames_served += 1

    async def send_json(self, ws: web.WebSocketResponse, message: dict[str, Any]) -> None:
        async with self.send_lock:
            await ws.send_str(json.dumps(message))

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        origin = request.headers.get("Origin")
        if not same_origin(origin, request.headers.get("Host")):
            # Another site's page in the player's browser: it would take the engine and write recordings.
            raise self.refuse(
                request,
                f"a WebSocket from the page of {origin[:80]!r} (Origin), not this server's",
                "play from the page this server serves (open its address)",
            )
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=30)
        await ws.prepare(request)
        self.connections += 1
        if self.player is not None and self.player.closed:
            # The previous player has just closed (a page reload): its slot is freed within a moment.
            try:
                await asyncio.wait_for(self.player_left.wait(), timeout=5)
            except asyncio.TimeoutError:
                pass
        if self.player is not None:
            await ws.send_str(
                json.dumps(
                    {
                        "type": "busy",
                        "message": (
                            "another player is using the engine (one game per server): try again when they leave"
                        ),
                    }
                )
            )
            await ws.close()
            return ws
        self.player = ws
        self.player_left.clear()
        self.send_lock = asyncio.Lock()
        state = {"held": [], "wake": asyncio.Event()}
        try:
            await self.run(self.session.reset)
            self.session.paused = False
            await self.send_json(ws, self.hello())
            await self.send_frame(ws)
            loop = asyncio.create_task(self._game_loop(ws, state))
            try:
                await self._read_messages(ws, state)
            finally:
                loop.cancel()
                try:
                    await loop
                except (asyncio.CancelledError, ConnectionError):
                    pass
        finally:
            # The slot is free at once. The engine thread may still be finishing a frame: the recording's
            # save is queued behind it, and the next player's reset behind the save (one engine thread).
            saving = asyncio.ensure_future(self.run(self.session.save_recording))
            saving.add_done_callback(_report_saved_recording)
            self.player = None
            self.player_left.set()
        return ws

    async def _read_messages(self, ws: web.WebSocketResponse, state: dict[str, Any]) -> None:
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break
            try:
                message = parse_message(msg.data if msg.type == WSMsgType.TEXT else b"")
            except MessageError as error:
                await self.send_json(ws, {"type": "error", "message": str(error)})
                continue
            if message["type"] == "keys":
                state["held"] = message["held"]
            else:
                await self._command(ws, message["command"], state)
            state["wake"].set()

    async def _command(self, ws: web.WebSocketResponse, command: str, state: dict[str, Any]) -> None:
        session = self.session
        if command == "pause":
            session.paused = not session.paused
            session.mark_idle()
            await self.send_json(ws, {"type": "status", **session.stats()})
        elif command == "reset":
            await self.run(session.reset)
            await self.send_frame(ws)
        elif command == "step":
            if session.paused:
                await self.run(session.step, session.keymap.action_for(state["held"]))
                session.mark_idle()
                await self.send_frame(ws)
        elif command == "record":
            saved = await self.run(session.toggle_recording)
            if saved:
                await self.send_json(
                    ws,
                    {"type": "saved", **{k: saved[k] for k in ("gif", "mp4", "actions_file", "gif_frames", "replay")}},
                )
            await self.send_json(ws, {"type": "status", **session.stats()})

    async def _game_loop(self, ws: web.WebSocketResponse, state: dict[str, Any]) -> None:
        session = self.session
        period = 1.0 / self.fps if self.fps else 0.0
        while not ws.closed:
            if session.paused:
                state["wake"].clear()
                await state["wake"].wait()
                continue
            began = time.perf_counter()
            await self.run(session.step, session.keymap.action_for(state["held"]))
            await self.send_frame(ws)
            rest = period - (time.perf_counter() - began)
            await asyncio.sleep(max(rest, 0.0))  # also lets the reader handle messages between frames


def _report_saved_recording(saving: asyncio.Future) -> None:
    if saving.cancelled():
        return
    if saving.exception() is not None:
        print(f"the recording could not be saved at disconnect: {saving.exception()}", flush=True)
    elif saving.result():
        print(f"recording saved at disconnect: {saving.result()['gif']}", flush=True)


async def serve(server: GameServer, host: str, port: int, ready=None) -> None:
    """Serve until cancelled (Ctrl-C). ``ready(url)`` is called once the socket listens."""
    server.hosts = HostCheck(host, server.allow_hosts)
    runner = web.AppRunner(server.app, handle_signals=False, logger=server.request_log)
    await runner.setup()
    url = await start_listening(runner, host, port, "run_playable_env.py")
    if ready is not None:
        ready(url)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        server.executor.shutdown(wait=True)
