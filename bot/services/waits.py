"""Waiting with a time limit, without losing a stop.

Python 3.11's `asyncio.wait_for` returns normally when the task is cancelled just as
what it awaits completes: the cancellation is then lost, and a loop that waits this way
goes round again, so the stop never ends (fixed in 3.12). `asyncio.timeout` does not
have that flaw: every timed wait of the bot's loops goes through `within`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float | None) -> T:
    """`await awaitable`, or TimeoutError after `seconds`; a stop always goes through.

    Also a stop already swallowed: a library that waits with 3.11's `wait_for`
    (aiosmtplib does, around every SMTP command) can eat the `CancelledError` while the
    task stays marked as cancelling; `asyncio.timeout` would then take that mark for its
    own and turn its time limit into a TimeoutError, and a loop would go round for ever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # never awaited: closed, not left to warn
        raise asyncio.CancelledError("stop requested earlier, its cancellation was lost")
    async with asyncio.timeout(seconds):
        return await awaitable


async def woken_within(wait: Awaitable[object], seconds: float) -> bool:
    """Wait for a wake-up at most `seconds`: True if woken, False on the time limit."""
    try:
        await within(wait, seconds)
    except TimeoutError:
        return False
    return True
