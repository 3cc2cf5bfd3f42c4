"""The study's answers (docs/human_study.md#answers): one JSON line per answer, appended and synced one at a time.

``AnswerLog`` appends each answer as a single line, written, flushed and ``fsync``-ed before the page hears that
it was taken, so an answer the page has confirmed survives a crash or a power cut, and an interrupted study loses
nothing. The server holds an exclusive lock on the file while it runs (a second server on the same answers is
refused). On start the log reads the answers already there, so each rater resumes with the clips they have not
answered; a line that is not an answer (a write cut short by a crash, an edit by hand) is kept in the file,
skipped and reported, and never rewritten.

An answer line:

    {"rater": "ada", "clip": "c007", "seconds": 1.6, "frames": 14, "real_side": "left", "answer": "right",
     "picked_real": false, "time_ms": 3120, "episode_id": "...", "start_step": 4, "answered_at": "2025-..."}

Which side shows the real clip is drawn per rater and clip from a hash of (study seed, rater, clip), so each rater
sees their own arrangement, the same after a reload, and the order of the clips is shuffled per rater the same way.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from gamengen.study.clips import Study

ANSWERS_FILE = "answers.jsonl"
SIDES = ("left", "right")
RATER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,39}")
MAX_TIME_MS = 24 * 3600 * 1000
REQUIRED = ("rater", "clip", "answer", "time_ms")


class AnswerError(ValueError):
    """An answer the study refuses; ``status`` is the HTTP status the server replies with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _draw(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def real_side(study: Study, rater: str, clip_id: str) -> str:
    """The side ("left" or "right") the real clip is shown on for this rater."""
    return SIDES[_draw(study.seed, rater, clip_id, "side") % 2]


def rater_order(study: Study, rater: str) -> list[str]:
    """The clip ids in the order this rater sees them (shuffled per rater, lengths mixed)."""
    return sorted(study.clip_ids, key=lambda clip_id: _draw(study.seed, rater, clip_id, "order"))


def check_rater(rater: Any) -> str:
    if not isinstance(rater, str) or not RATER_PATTERN.fullmatch(rater):
        raise AnswerError(
            "the rater id is a name or initials of 1-40 letters, digits, spaces or . _ @ - (starting with a letter "
            f"or digit), got {rater!r}"
        )
    return rater


def parse_answer(body: bytes | str, study: Study) -> dict[str, Any]:
    """A posted answer -> the checked fields (rater, clip, answer, time_ms), or AnswerError naming the problem."""
    try:
        values = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise AnswerError(
            'an answer is a JSON object like {"rater": "ada", "clip": "c007", "answer": "left", "time_ms": 2500}'
        ) from None
    if not isinstance(values, dict):
        raise AnswerError(f"an answer is a JSON object with {', '.join(REQUIRED)}; got a {type(values).__name__}")
    missing = [key for key in REQUIRED if key not in values]
    if missing:
        raise AnswerError(f"the answer lacks {', '.join(missing)} (it needs {', '.join(REQUIRED)})")
    extra = sorted(set(values) - set(REQUIRED))
    if extra:
        raise AnswerError(f"unknown answer fields {extra}: an answer has exactly {', '.join(REQUIRED)}")
    rater, clip, answer, time_ms = (values[key] for key in REQUIRED)
    check_rater(rater)
    if not isinstance(clip, str) or clip not in study.clip_ids:
        raise AnswerError(f"unknown clip {clip!r}: this study's clips are {study.clip_ids[0]}..{study.clip_ids[-1]}")
    if answer not in SIDES:
        raise AnswerError(f'the answer is the side picked as the real game, "left" or "right"; got {answer!r}')
    valid_time = isinstance(time_ms, (int, float)) and not isinstance(time_ms, bool) and math.isfinite(time_ms)
    if not valid_time or not 0 <= time_ms <= MAX_TIME_MS:
        raise AnswerError(
            f"time_ms is the milliseconds the rater took, a number from 0 to {MAX_TIME_MS}; got {time_ms!r}"
        )
    return {"rater": rater, "clip": clip, "answer": answer, "time_ms": int(round(time_ms))}


def answer_record(study: Study, answer: dict[str, Any]) -> dict[str, Any]:
    """The line written for a checked answer: what was asked, what was shown where, and what was picked."""
    clip = study.clip(answer["clip"])
    side = real_side(study, answer["rater"], clip.id)
    return {
        "rater": answer["rater"],
        "clip": clip.id,
        "seconds": clip.seconds,
        "frames": clip.frames,
        "real_side": side,
        "answer": answer["answer"],
        "picked_real": answer["answer"] == side,
        "time_ms": answer["time_ms"],
        "episode_id": clip.episode_id,
        "start_step": clip.start_step,
        "answered_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def read_answers(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(the answers of a JSONL file, a note for each line that is not an answer). A missing file has none."""
    path = Path(path)
    if not path.exists():
        return [], []
    records, problems = [], []
    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not {"rater", "clip", "picked_real", "seconds"} <= set(record):
                raise ValueError("not an answer")
        except ValueError:
            cut = number == len(lines)  # the last line has no newline: a write cut short
            problems.append(
                f"{path.name} line {number} is not an answer{' (a write cut short)' if cut else ''}: skipped"
            )
            continue
        records.append(record)
    return records, problems


class AnswerLog:
    """The answers file of a running study: read on open, appended one synced line per answer, locked."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._file = open(self.path, "ab")  # noqa: SIM115 (held open, and locked, while the server runs)
        if created:  # the new file's name is synced too, not only its lines
            _fsync_folder(self.path.parent)
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise AnswerError(
                f"another study server is recording answers into {self.path}: stop it first (one server per study; "
                "several raters can use the same server)",
                status=409,
            ) from None
        self.records, self.problems = read_answers(self.path)
        self.answered: dict[str, set[str]] = {}
        for record in self.records:
            self.answered.setdefault(str(record["rater"]), set()).add(str(record["clip"]))
        size = self.path.stat().st_size
        self._needs_newline = size > 0 and _last_byte(self.path) != b"\n"

    def has_answered(self, rater: str, clip_id: str) -> bool:
        return clip_id in self.answered.get(rater, set())

    def append(self, record: dict[str, Any]) -> None:
        """Write one answer as one line, flushed and fsync-ed; a rater answers a clip once."""
        if self.has_answered(record["rater"], record["clip"]):
            raise AnswerError(
                f"{record['rater']} has already answered clip {record['clip']}: kept the first answer", 409
            )
        line = json.dumps(record, separators=(", ", ": ")).encode() + b"\n"
        if self._needs_newline:  # end a line a crash cut short, so this answer starts a line of its own
            line = b"\n" + line
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._needs_newline = False
        self.records.append(record)
        self.answered.setdefault(record["rater"], set()).add(record["clip"])

    def close(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1)


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
