"""The study's web server (docs/human_study.md#running-a-study): aiohttp, one page, a few JSON routes.

* ``GET /`` the page (``page.html``); ``?rater=NAME`` fills in the rater id.
* ``GET /api/next?rater=NAME`` the rater's next unanswered clip in their own order, with the URLs of its two
  sides, or ``{"done": true}``.
* ``GET /clip/<id>/<left|right>.png?rater=NAME`` a clip's frames stacked top to bottom; which side is the real
  clip depends on the rater (``gamengen.study.answers.real_side``) and is never sent to the page.
* ``POST /api/answer`` ``{"rater", "clip", "answer": "left"|"right", "time_ms"}``: appended to the answers file
  (synced) before the reply; a malformed answer gets a 400 with the reason, a second answer to the same clip a
  409, and neither touches the file.

Who may connect follows the play server's rules (``gamengen.play.guard``, one policy for both): every request must
name the address the server listens on in its ``Host`` header (the loopback names for 127.0.0.1; any IP address or
this machine's names for 0.0.0.0), or a name passed with ``--allow_host``. A web page of another site that points
its own name at this machine (DNS rebinding) is refused, since its requests carry that name. A POST must also come
from the study page itself: it must carry an ``Origin``, and that must be this server's. The server has no accounts:
anyone who can reach it can answer under any rater id, which is why it listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from gamengen.play.guard import HostCheck, same_origin, start_listening
from gamengen.study.answers import (
    SIDES,
    AnswerError,
    AnswerLog,
    answer_record,
    check_rater,
    parse_answer,
    rater_order,
    real_side,
)
from gamengen.study.clips import Study

PAGE = Path(__file__).with_name("page.html")
MAX_BODY_BYTES = 4096


def request_refusal(method: str, host: str | None, origin: str | None, hosts: HostCheck) -> str | None:
    """Why a request is refused (None: it is not): a Host that is not this server, or a POST from another page."""
    if not hosts.allows(host):
        return (
            f"Host {host!r} is not this study server ({hosts.listen_host}): open the address it printed; pages of "
            "other sites that point their name at this machine are refused. To serve under a host name, pass "
            "--allow_host NAME"
        )
    if method not in ("GET", "HEAD") and (origin is None or not same_origin(origin, host)):
        return (
            f"{method} from {origin or 'a request without an Origin'} refused: answers are taken only from the "
            f"study page itself (http://{host}/)"
        )
    return None


class StudyServer:
    """The app around a prepared ``Study`` and its ``AnswerLog``."""

    def __init__(self, study: Study, study_dir: Path, log: AnswerLog, allowed_hosts: Sequence[str] = ()) -> None:
        self.study, self.study_dir, self.log = study, Path(study_dir), log
        self.allowed_hosts = list(allowed_hosts)
        self.port = 0  # set once listening
        self.hosts = HostCheck("127.0.0.1", self.allowed_hosts)  # serve_study() sets the address it listens on
        self.app = web.Application(middlewares=[self.same_origin], client_max_size=MAX_BODY_BYTES)
        self.app.add_routes(
            [
                web.get("/", self.page),
                web.get("/api/next", self.next_clip),
                web.get("/clip/{clip}/{side}.png", self.clip_image),
                web.post("/api/answer", self.answer),
            ]
        )

    @web.middleware
    async def same_origin(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        headers = request.headers
        refusal = request_refusal(request.method, headers.get("Host"), headers.get("Origin"), self.hosts)
        if refusal is not None:
            return web.json_response({"error": refusal}, status=403)
        try:
            return await handler(request)
        except AnswerError as error:
            return web.json_response({"error": str(error)}, status=error.status)

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(), content_type="text/html", headers={"Cache-Control": "no-store"})

    def progress(self, rater: str) -> dict[str, Any]:
        answered = len(self.log.answered.get(rater, set()) & set(self.study.clip_ids))
        return {"answered": answered, "total": len(self.study.clips)}

    async def next_clip(self, request: web.Request) -> web.Response:
        rater = check_rater(request.query.get("rater"))
        remaining = [c for c in rater_order(self.study, rater) if not self.log.has_answered(rater, c)]
        if not remaining:
            return web.json_response({"done": True, **self.progress(rater)})
        clip = self.study.clip(remaining[0])
        urls = {side: f"/clip/{clip.id}/{side}.png?rater={quote(rater)}" for side in SIDES}
        return web.json_response(
            {
                "done": False,
                "clip": clip.id,
                "seconds": clip.seconds,
                "frames": clip.frames,
                "fps": self.study.fps,
                "width": self.study.frame_width,
                "height": self.study.frame_height,
                **urls,
                **self.progress(rater),
            },
            headers={"Cache-Control": "no-store"},
        )

    async def clip_image(self, request: web.Request) -> web.StreamResponse:
        rater = check_rater(request.query.get("rater"))
        clip_id, side = request.match_info["clip"], request.match_info["side"]
        if clip_id not in self.study.clip_ids or side not in SIDES:
            raise AnswerError(f"no clip {clip_id!r} side {side!r} in this study", status=404)
        clip = self.study.clip(clip_id)
        kind = "real" if real_side(self.study, rater, clip_id) == side else "model"
        return web.FileResponse(self.study_dir / clip.image(kind), headers={"Cache-Control": "private, max-age=3600"})

    async def answer(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise AnswerError(f"an answer is at most {MAX_BODY_BYTES} bytes", status=413) from None
        record = answer_record(self.study, parse_answer(body, self.study))
        self.log.append(record)  # written, flushed and synced before the reply
        return web.json_response({"ok": True, **self.progress(record["rater"])})


async def serve_study(server: StudyServer, host: str, port: int, ready: Callable[[str], Any] | None = None) -> None:
    """Serve until cancelled (Ctrl-C). ``ready(url)`` is called once the socket listens."""
    server.hosts = HostCheck(host, server.allowed_hosts)
    runner = web.AppRunner(server.app, handle_signals=False)
    await runner.setup()
    url = await start_listening(runner, host, port, "run_human_study.py")
    server.port = int(runner.addresses[0][1])
    if ready is not None:
        ready(url)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
