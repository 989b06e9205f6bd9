"""The process's real logging set-up (`aplus run`'s), captured into a buffer for a test."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

from bot.cli import _setup_logging
from bot.log_privacy import QUIET_LOGGERS


@contextlib.contextmanager
def production_logging(level: str = "DEBUG") -> Iterator[io.StringIO]:
    """`_setup_logging(level)` writing into the returned buffer; undone afterwards."""
    root = logging.getLogger()
    saved_root = root.level
    saved_levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    saved_filters = {h: list(h.filters) for h in root.handlers}
    buffer = io.StringIO()
    handler = _setup_logging(level, buffer)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_root)
        for name, level_ in saved_levels.items():
            logging.getLogger(name).setLevel(level_)
        for h, filters in saved_filters.items():
            h.filters[:] = filters
