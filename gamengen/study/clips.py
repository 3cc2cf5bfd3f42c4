"""The study folder (docs/human_study.md): pairs of a real and a generated clip from the same start.

A clip pair starts at a recorded frame of a held-out episode (``gamengen.starts``). The real clip is the recorded
frames ``step .. step + L - 1``; the generated clip is the world model's own frames for the same steps, rolled out
autoregressively from the recorded context ``step - N .. step - 1`` with the recorded actions (no detail
carry-over: nothing of the real frames is pasted in). L is a length in seconds (the paper's 1.6 s and 3.2 s) at
the dataset's frame rate (35 tics/s over its frame skip: 8.75 frames/s at frame skip 4, so 14 and 28 frames).

``gamengen.study.prepare`` writes a study folder, all of it atomically (a folder that exists is complete):

    study.json                  the clips (id, length, episode, start step, actions), the model, dataset and engine
    clips/<id>.real.png         the real clip, its frames stacked top to bottom
    clips/<id>.model.png        the generated clip, the same way

The server (``gamengen.study.server``) decides for each rater which side each clip is shown on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STUDY_FILE = "study.json"
CLIPS_FOLDER = "clips"
STUDY_FORMAT = "gamengen-human-study"
STUDY_FORMAT_VERSION = 1
PAPER_LENGTHS = (1.6, 3.2)  # seconds (GameNGen section 5.1, human evaluation)
KINDS = ("real", "model")


class StudyError(ValueError):
    """A study folder that cannot be made or read (the message says what to do)."""


@dataclass(frozen=True)
class Clip:
    """One pair of clips: where it starts, how long it is, and the recorded actions both follow."""

    id: str
    seconds: float
    frames: int
    episode_id: str
    start_step: int  # the first frame of both clips
    actions: list[str]  # the recorded actions a_{start-1} .. a_{start+frames-2}: action i produced frame i
    seed: int  # the engine's seed for the batch this clip was generated in
    batch: list[str]  # the ids generated together in one engine batch (same noise draw)

    def image(self, kind: str) -> str:
        return f"{CLIPS_FOLDER}/{self.id}.{kind}.png"


@dataclass
class Study:
    """A prepared study: ``study.json`` as a dataclass."""

    clips: list[Clip]
    fps: float
    frame_width: int
    frame_height: int
    seed: int
    model_folder: str = ""
    dataset_name: str = ""
    episodes_source: str = ""
    engine: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    format: str = STUDY_FORMAT
    format_version: int = STUDY_FORMAT_VERSION

    @property
    def clip_ids(self) -> list[str]:
        return [clip.id for clip in self.clips]

    def clip(self, clip_id: str) -> Clip:
        for clip in self.clips:
            if clip.id == clip_id:
                return clip
        raise KeyError(clip_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def frames_for(seconds: float, fps: float) -> int:
    """Frames a clip of ``seconds`` holds at ``fps`` (at least 2: one frame is no motion)."""
    return max(2, round(seconds * fps))


def load_study(study_dir: str | Path) -> Study:
    """Read ``study.json`` (and check that every clip's images are there)."""
    path = Path(study_dir) / STUDY_FILE
    if not path.is_file():
        raise StudyError(
            f"{study_dir} holds no study ({STUDY_FILE} is missing): make one with "
            f"python run_human_study.py --model_folder M --dataset_name D --study_dir {study_dir}"
        )
    try:
        values = json.loads(path.read_text())
        if values.get("format") != STUDY_FORMAT or values.get("format_version") != STUDY_FORMAT_VERSION:
            raise ValueError(f"not a {STUDY_FORMAT} study of version {STUDY_FORMAT_VERSION}")
        study = Study(**{**values, "clips": [Clip(**clip) for clip in values["clips"]]})
    except (ValueError, TypeError, KeyError) as error:
        raise StudyError(f"{path} is not a study this version reads ({error}): prepare the study again") from None
    missing = [
        clip.image(kind) for clip in study.clips for kind in KINDS if not (path.parent / clip.image(kind)).is_file()
    ]
    if missing:
        raise StudyError(f"{study_dir} lacks clip images ({', '.join(missing[:3])}...): prepare the study again")
    return study
