"""The user-facing errors of the diffusion side, in one place. Each says what is wrong and what to change; the
scripts print the message (no traceback) and exit with code 2 (``gamengen.training.run_trainer``,
``gamengen.cli``). The modules that raise them also re-export them (``from gamengen.engine import EngineError``
keeps working)."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset that cannot be read as recorded episodes (the message says what to change)."""


class ModelLoadError(ValueError):
    """A model path or checkpoint that does not hold what was asked for."""


class PeerCheckpointError(ModelLoadError):
    """A seed checkpoint folder that is incomplete or whose parts disagree (the message says which)."""


class EngineError(ValueError):
    """A request the engine cannot serve as given: an unknown action, a bad action script or action file, a
    context or a sampling setting the engine refuses (the message says what to change)."""


class UsageError(ValueError):
    """Arguments or an output folder that this run cannot use as given."""


class IDMError(ValueError):
    """An IDM folder or an input the IDM cannot use (the message says what to change)."""


class KeyMapError(ValueError):
    """A key-map choice that does not fit the checkpoint's actions (the message says what to pass)."""


class PortError(OSError):
    """A web server's port cannot be used (the message says what to do)."""
