"""Before pytest-timeout ends a hung test, every asyncio task's stack is printed.

pytest-timeout dumps threads only: a test stuck in an `await` shows an idle event loop
and nothing else. A timer a little before the test's timeout lists the tasks not done
(found through the garbage collector: the timer runs in its own thread, outside the
loop) with the frames each one is waiting in, into the test's captured output.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

# Printed this long before the timeout, so the dump is in the report of the failure.
MARGIN_S = 20.0


def _awaiting(task: asyncio.Task[object]) -> list[FrameType]:
    """The task's frames from its coroutine down to the innermost await."""
    frames: list[FrameType] = []
    coro: object = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames


def task_stacks() -> str:
    """Every asyncio task not done (all loops), with where it waits: our frames, then
    the innermost one."""
    lines = []
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.Task) and not obj.done():
            frames = _awaiting(obj)
            shown = [f for f in frames if "site-packages" not in f.f_code.co_filename]
            if frames and (not shown or shown[-1] is not frames[-1]):
                shown.append(frames[-1])
            where = " -> ".join(
                f"{Path(f.f_code.co_filename).name}:{f.f_lineno} {f.f_code.co_name}" for f in shown
            )
            lines.append(f"  {obj.get_name()}: {where or '(not started)'}")
    return "\n".join(sorted(lines)) or "  (no task)"


@contextmanager
def dump_tasks_before(timeout: float) -> Iterator[None]:
    """Within the block, if it lasts `timeout - MARGIN_S` seconds, print the tasks."""
    if timeout <= MARGIN_S:
        yield
        return
    stream = sys.stderr  # the test's captured stream, as the timer starts

    def dump() -> None:
        print(f"\n--- asyncio tasks {MARGIN_S:.0f} s before the timeout ---", file=stream)
        print(task_stacks(), file=stream, flush=True)

    timer = threading.Timer(timeout - MARGIN_S, dump)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
