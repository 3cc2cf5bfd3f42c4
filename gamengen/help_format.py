"""The ``--help`` layout every diffusion-side script shares (``formatter_class=HelpFormatter``).

argparse's ``ArgumentDefaultsHelpFormatter`` appends ``(default: X)`` to every option's help. Many options
say their default in words already ("default: the checkpoint's", "default 'action'"), because the value
argparse knows (often None, meaning "decided later") says nothing; the appended one then repeats it, e.g.
``(default: the model's no-op, else action 0) (default: None)``. This formatter appends the value only to
help that does not mention a default. (No heavy imports: ``quickstart.py --help`` stays instant. The agent
side, ``ViZDoomPPO/``, keeps its own copy in ``common/utils.py``: the two halves meet only through files.)
"""

from __future__ import annotations

import argparse
import re

STATES_A_DEFAULT = re.compile(r"\bdefault\b", re.IGNORECASE)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, each said once: the option's own words when it has them, else argparse's value."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if STATES_A_DEFAULT.search(text):
            return action.help
        return super()._get_help_string(action)
