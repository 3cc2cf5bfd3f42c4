"""Who may talk to this project's web servers (the play page, ``gamengen.play.web``, and the human study's,
``gamengen.study.server``): requests must name the address the server listens on (a page that a DNS rebinding points
at 127.0.0.1 names another host), and what a browser sends from a page (a WebSocket, a POST) must come from the
server's own page (any web site can open a WebSocket to localhost). Refused and malformed requests print one line
each, rate-limited, not a traceback (docs/play.md#who-can-connect). ``start_listening`` opens either server's socket,
with one message when the port is taken."""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TextIO
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gamengen.errors import PortError

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
ALL_INTERFACES = frozenset({"0.0.0.0", "::", ""})


def host_name(host: str) -> str | None:
    """The name in a ``Host`` header or a URL's netloc, lowercased, without port or IPv6 brackets
    ('127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '::1'); None when it cannot be parsed."""
    try:
        return urlsplit(f"//{host}").hostname
    except ValueError:
        return None


def is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """The names a request's ``Host`` may give: the address the server listens on; for a loopback address the
    other loopback names; for all interfaces (0.0.0.0, ::) any IP address and this machine's names; and the
    names of ``--allow_host``. A page reaching the server under a DNS name of its own (DNS rebinding) is refused.
    Ports are not compared: SSH port forwarding may serve the page on another port."""

    def __init__(self, listen_host: str, allowed: Iterable[str] = ()) -> None:
        self.listen_host = listen_host
        names = {listen_host.strip("[]").lower(), *(name.lower() for name in allowed)}
        if names & LOOPBACK_NAMES:
            names |= LOOPBACK_NAMES
        self.any_address = listen_host in ALL_INTERFACES
        if self.any_address:
            names |= LOOPBACK_NAMES | {socket.gethostname().lower(), socket.getfqdn().lower()}
        self.names = frozenset(names)

    def allows(self, host: str | None) -> bool:
        name = host_name(host or "")
        if not name:
            return False
        return name in self.names or (self.any_address and is_ip_address(name))


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a WebSocket's ``Origin`` is the page this server served (its scheme://host:port is the address the
    request was sent to). No ``Origin``: not a browser (a script or a test), which no web page can drive."""
    if origin is None:
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == (host or "").lower()


class RefusalLog:
    """One console line per refused request, at most ``burst`` lines per ``period`` seconds: any client can send
    refused requests as fast as it likes, and the console must stay readable. Lines not printed are counted in
    the next one that is."""

    def __init__(
        self,
        burst: int = 5,
        period: float = 10.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.burst, self.period = burst, period
        self.stream = stream
        self.clock = clock or time.monotonic
        self.printed: deque[float] = deque()
        self.held_back = 0

    def note(self, line: str) -> None:
        now = self.clock()
        while self.printed and now - self.printed[0] >= self.period:
            self.printed.popleft()
        if len(self.printed) >= self.burst:
            self.held_back += 1
            return
        if self.held_back:
            line += f" ({self.held_back} more refused before this one, not shown)"
            self.held_back = 0
        self.printed.append(now)
        print(line, file=self.stream or sys.stdout, flush=True)


class BadRequestHandler(logging.Handler):
    """aiohttp's log of requests it cannot parse (a 100 KB URL, a 20 KB header, not HTTP at all): one line each
    through the ``RefusalLog`` instead of a traceback. Any other error (a fault of this server's code) keeps its
    traceback."""

    def __init__(self, refusals: RefusalLog) -> None:
        super().__init__(logging.DEBUG)
        self.refusals = refusals

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            client = record.args[0] if isinstance(record.args, tuple) and record.args else "a client"
            reason = str(error.message).split(":", 1)[0].strip()[:80] or type(error).__name__
            self.refusals.note(
                f"refused a malformed request from {client} ({error.code} {type(error).__name__}: {reason})"
            )
        elif record.levelno >= logging.WARNING:
            print(logging.Formatter().format(record), file=sys.stderr, flush=True)


async def start_listening(runner: web.AppRunner, host: str, port: int, program: str) -> str:
    """Listen on ``host:port`` with a set-up ``runner``; returns the URL to open (an all-interfaces address shown
    as 127.0.0.1), and sets nothing else. A port in use is a ``PortError`` naming ``program`` and the fix."""
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise PortError(
            f"cannot listen on {host}:{port} ({error.strerror or error}): another program (another {program}?) uses "
            "that port; pass a free one with --port (or --port 0 for any free port)"
        ) from None
    address, bound_port = runner.addresses[0][:2]
    shown = "127.0.0.1" if address in ALL_INTERFACES else address
    return f"http://{shown if ':' not in shown else '[' + shown + ']'}:{bound_port}/"
