"""A stop (SIGINT, SIGTERM) ends the loops of the bot, even when what they do then fails.

A stop lets the batch in hand finish (never half-handled). That batch can fail in the
meantime: the database is busy (`database is locked` after SQLite's busy timeout), or
gone. The stop must go on: before, the failure took the place of the cancellation, the
loop logged it, waited, and synced again, and `aplus run` never exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import Any

from sqlalchemy.exc import OperationalError

from bot.matrix import content as mx
from bot.services.jobs import Job, Jobs
from bot.services.worker import Worker
from bot.sync_loop import SYNC_TOKEN_KEY, SyncLoop
from tests.services.conftest import World
from tests.services.test_event_retries import _sync_response
from tests.services.test_outbox import _until

# A bound against a hang, not a timing: the loop ends as soon as the batch has failed.
STOP_BOUND_S = 10.0


class _RollbackFailsOnce:
    """The first cancellation's rollback fails as a busy SQLite does (its error takes the
    cancellation's place); later ones cancel as usual, for the test's own cleanup."""

    def __init__(self) -> None:
        self.failed = False

    def instead_of(self, cancelled: asyncio.CancelledError) -> BaseException:
        if self.failed:
            return cancelled
        self.failed = True
        return OperationalError("ROLLBACK", {}, sqlite3.OperationalError("database is locked"))


class _BatchThatFailsOnceStopped:
    """A router whose batch waits until it is let go, then fails as a busy SQLite does."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.let_go = asyncio.Event()

    async def handle(self, resp: Any, missed: Any = None) -> None:
        self.entered.set()
        await self.let_go.wait()
        raise OperationalError(
            "BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked")
        )


async def test_a_stop_during_a_batch_that_then_fails_still_ends_the_loop(world: World) -> None:
    router = _BatchThatFailsOnceStopped()
    sync = SyncLoop(
        store=world.store,
        gateway=world.gw,
        router=router,  # type: ignore[arg-type]
        undecryptables=world.parts.undecryptables,
        retries=world.parts.retries,
    )
    await world.gw.syncs.put(_sync_response("s1", "!room:localhost", []))
    loop = asyncio.create_task(sync.run())
    try:
        await asyncio.wait_for(router.entered.wait(), STOP_BOUND_S)
        loop.cancel()  # the stop, while the batch is in hand
        await asyncio.sleep(0)
        router.let_go.set()  # the batch fails
        await asyncio.wait({loop}, timeout=STOP_BOUND_S)
        assert loop.done(), "the sync loop went on after the stop"
        assert loop.cancelled()
    finally:
        loop.cancel()
        await asyncio.wait({loop}, timeout=STOP_BOUND_S)
    # The failed batch is not saved as handled: the next start fetches it again.
    async with world.store.transaction() as tx:
        assert await tx.get_state(SYNC_TOKEN_KEY) is None


async def test_a_stop_whose_rollback_fails_still_ends_a_worker() -> None:
    """A worker cancelled in a transaction whose rollback then fails (SQLite busy, the
    connection lost): the rollback's error takes the cancellation's place. The worker
    stops all the same; before, it took it for a failure of its step and went on."""
    entered = asyncio.Event()
    rollback = _RollbackFailsOnce()

    async def step() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()  # in a transaction, waiting
        except asyncio.CancelledError as cancelled:
            raise rollback.instead_of(cancelled) from None

    worker = asyncio.create_task(Worker("outbox", step, idle_seconds=3600).run())
    try:
        await asyncio.wait_for(entered.wait(), STOP_BOUND_S)
        entered.clear()
        worker.cancel()
        await asyncio.wait({worker}, timeout=STOP_BOUND_S)
        assert worker.done(), "the worker went on after the stop"
        assert worker.cancelled()
        assert not entered.is_set()  # its step was not run again
    finally:
        worker.cancel()
        await asyncio.wait({worker}, timeout=STOP_BOUND_S)


async def test_a_stop_whose_rollback_fails_still_ends_the_outbox(world: World) -> None:
    """The outbox at a stop cancels its rooms' flushes and waits for them. A flush whose
    cleanup then fails (the rollback's error in place of the cancellation) must end all
    the same: before, the room took it for a failed send, retried, and the outbox (then
    the whole process) waited for it forever."""
    demande = await world.open_demande()
    room = demande.room_id
    assert room
    release = world.gw.stall("send_encrypted", room_id=room)
    flush_room = world.parts.outbox.flush_room
    rollback = _RollbackFailsOnce()

    async def flush_whose_rollback_fails(room_id: str) -> Any:
        try:
            return await flush_room(room_id)
        except asyncio.CancelledError as cancelled:
            raise rollback.instead_of(cancelled) from None

    world.parts.outbox.flush_room = flush_whose_rollback_fails  # type: ignore[method-assign]
    outbox = asyncio.create_task(world.parts.outbox.run())
    try:
        async with world.store.transaction() as tx:
            await world.parts.outbox.enqueue(
                tx, txn_id="stuck", room_id=room, content=mx.notice("pendant l'arrêt")
            )
        world.parts.outbox.flush_soon(room)
        await _until(
            lambda: any(c.args["txn_id"] == "stuck" for c in world.gw.calls_of("send_encrypted"))
        )
        outbox.cancel()  # the stop, while the room's send hangs
        await asyncio.wait({outbox}, timeout=STOP_BOUND_S)
        assert outbox.done(), "the outbox went on after the stop"
        assert outbox.cancelled()
    finally:
        release.set()
        outbox.cancel()
        await asyncio.wait({outbox}, timeout=STOP_BOUND_S)


async def test_a_stop_whose_rollback_fails_still_ends_the_daily_jobs(world: World) -> None:
    """A daily job cancelled at a stop, whose rollback then fails: the jobs stop all the
    same; before, the failure was the job's, and the jobs looked again a minute later."""
    entered = asyncio.Event()
    rollback = _RollbackFailsOnce()

    async def job() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()  # a long job, in a transaction
        except asyncio.CancelledError as cancelled:
            raise rollback.instead_of(cancelled) from None

    daily = Job("retention", lambda now: now.date(), job)
    jobs = asyncio.create_task(Jobs(store=world.store, clock=world.clock, jobs=[daily]).run())
    try:
        await asyncio.wait_for(entered.wait(), STOP_BOUND_S)
        jobs.cancel()
        await asyncio.wait({jobs}, timeout=STOP_BOUND_S)
        assert jobs.done(), "the jobs went on after the stop"
        assert jobs.cancelled()
    finally:
        jobs.cancel()
        await asyncio.wait({jobs}, timeout=STOP_BOUND_S)


async def test_a_stop_that_comes_with_a_wakeup_still_ends_a_worker() -> None:
    """Python 3.11's `asyncio.wait_for` returns normally when the task is cancelled just
    as the awaited event completes: the cancellation is lost, the worker goes round again
    and the stop waits for ever (a bot fixture's teardown hung so, with a delivery waiting
    on its wake-up while cancelling)."""
    stepped = asyncio.Event()

    async def step() -> None:
        stepped.set()

    worker = Worker("test", step, idle_seconds=30.0)
    task = asyncio.create_task(worker.run())
    await stepped.wait()
    for _ in range(5):
        await asyncio.sleep(0)  # the worker now waits for its wake-up
    worker.wake()
    await asyncio.sleep(0)  # the wake-up's waiter completes: wait_for is about to return
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=STOP_BOUND_S)
    assert task in done, "the worker went on after the stop"
    assert task.cancelled()


async def test_a_stop_swallowed_inside_a_step_still_ends_the_worker() -> None:
    """A library that waits with Python 3.11's `asyncio.wait_for` (aiosmtplib, around
    every SMTP command) can swallow the stop's `CancelledError`: the step returns, the task
    is still marked as cancelling, and the worker's next timed wait turned its own time
    limit into a plain TimeoutError, so the worker went round for ever (an email
    delivery kept a bot fixture's stop waiting 90 s, caught by the stop's bound)."""
    stepping = asyncio.Event()

    async def step() -> None:
        stepping.set()
        with contextlib.suppress(asyncio.CancelledError):  # as a library's wait_for can
            await asyncio.sleep(3600)

    worker = Worker("test", step, idle_seconds=0.05)
    task = asyncio.create_task(worker.run())
    await stepping.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=STOP_BOUND_S)
    assert task in done, "the worker went on after the stop"
    assert task.cancelled()
