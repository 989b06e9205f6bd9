"""Every aiosqlite connection a test opens is closed before its event loop is.

An aiosqlite connection runs its queries in a thread of its own, which hands each result
back with ``loop.call_soon_threadsafe``. A connection left open past the end of its loop
(an engine never disposed, a store never closed, a bot stopped without closing its
store) answers, when it is finally used or collected, into a closed loop: the thread
dies with ``RuntimeError: Event loop is closed``, and pytest turns that into a failure of
whatever test runs at that moment, in the same worker, much later.

`tests/conftest.py` checks, once each test's fixtures are torn down, the connections whose
loop is closed by then: one still open fails that test's teardown, with where it was
opened; it is then stopped without a loop, so that nothing reaches a later test.
"""

from __future__ import annotations

import asyncio
import threading
import traceback
from dataclasses import dataclass
from typing import Any

import aiosqlite.core

# A thread already stopped may still be finishing the queries queued before the stop:
# the longest one waits for SQLite's lock (`bot.store.db.SQLITE_BUSY_TIMEOUT_MS`).
DRAIN_BOUND_S = 15.0
_OUR_CODE = ("/bot/", "/bridge/", "/tests/")


@dataclass
class _Opened:
    connection: aiosqlite.core.Connection
    loop: asyncio.AbstractEventLoop | None
    where: str


_opened: list[_Opened] = []
_lock = threading.Lock()
_installed = False


def install() -> None:
    """Record each aiosqlite connection with the loop it belongs to and where it was opened."""
    global _installed
    if _installed:
        return
    _installed = True
    original = aiosqlite.core.Connection.__init__

    def __init__(self: aiosqlite.core.Connection, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with _lock:
            _opened.append(_Opened(self, loop, _where()))

    aiosqlite.core.Connection.__init__ = __init__  # type: ignore[method-assign]


def _where() -> str:
    """Our frames that led here: the task's (SQLAlchemy opens connections in a greenlet,
    whose own stack stops at the greenlet), then the thread's."""
    frames: list[traceback.FrameSummary] = []
    task = asyncio.current_task() if _has_loop() else None
    if task is not None:
        frames += traceback.extract_stack(task.get_stack()[-1]) if task.get_stack() else []
        name = f"task {task.get_name()!r}"
    else:
        name = f"thread {threading.current_thread().name!r}"
    frames += traceback.extract_stack()[:-2]
    ours = [f for f in frames if any(p in f.filename for p in _OUR_CODE)]
    ours = [f for f in ours if "sqlite_leaks" not in f.filename]
    return f"  ({name})\n" + "".join(traceback.format_list(ours[-12:]))


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def leaked() -> list[str]:
    """The connections left open by loops closed since the last call, each described;
    they are stopped (their thread ends without calling back into the closed loop)."""
    with _lock:
        done = [o for o in _opened if o.loop is None or o.loop.is_closed()]
        _opened[:] = [o for o in _opened if not (o.loop is None or o.loop.is_closed())]
    found: list[str] = []
    for o in done:
        conn = o.connection
        thread = conn._thread
        if conn._running and thread.ident is not None:  # opened, never closed
            found.append(f"aiosqlite connection never closed, opened at:\n{o.where}")
            _stop_without_loop(conn)
        if thread.is_alive():
            # Stopped: the queries queued before the stop finish first.
            thread.join(DRAIN_BOUND_S)
            if thread.is_alive():
                found.append(f"aiosqlite connection still busy after its loop closed:\n{o.where}")
    return found


def _stop_without_loop(conn: aiosqlite.core.Connection) -> None:
    # `Connection.stop()` would create its future on `asyncio.get_event_loop()`: here a
    # closed loop, or none. The same stop, with no future to answer.
    conn._running = False

    def close_and_stop() -> object:
        if conn._connection is not None:
            conn._connection.close()
            conn._connection = None
        return aiosqlite.core._STOP_RUNNING_SENTINEL

    if conn._thread.is_alive():
        conn._tx.put_nowait((None, close_and_stop))
