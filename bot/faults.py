"""Named crash points, so tests can kill the real bot process at a precise step.

Set APLUS_CRASH_AT=<name> in the bot's environment and the process dies there
with os._exit, exactly like a kill -9: no cleanup, no flush, no commit.
Unset (production), a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os

ENV = "APLUS_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os._exit(137)
