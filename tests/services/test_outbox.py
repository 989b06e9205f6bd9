"""The Matrix outbox: rooms flushed on their own; a room that is not clean waits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from bot.matrix import content as mx
from bot.matrix.errors import HomeserverUnavailable
from bot.ports import DemandeTx
from tests.services.conftest import World
from tests.services.fakes import raise_matrix


async def _queue(world: World, room_id: str, txn: str, text: str) -> None:
    async with world.store.transaction() as tx:
        t: DemandeTx = tx
        await world.parts.outbox.enqueue(t, txn_id=txn, room_id=room_id, content=mx.notice(text))


async def test_a_room_with_an_intruder_is_skipped_and_the_others_are_sent(world: World) -> None:
    a = await world.open_demande()
    b = await world.open_demande()
    assert a.room_id and b.room_id
    # Someone the ledger does not know is in room A, and the bot's view shows it.
    world.gw.force_join(a.room_id, "@mallory:localhost", seen=True)
    await _queue(world, a.room_id, "note-a", "pour A")
    await _queue(world, b.room_id, "note-b", "pour B")
    await world.flush()
    assert [s.txn_id for s in world.replies(b.room_id)][-1] == "note-b"
    assert "note-a" not in [s.txn_id for s in world.replies(a.room_id)]
    async with world.store.transaction() as tx:
        assert a.room_id in [r for r, _since in await tx.guard_requests()]
    # The guard removes the intruder, and the room's message goes, to the ledger only.
    await world.parts.guard.reconcile(a.room_id)
    await world.flush()
    [sent] = [s for s in world.replies(a.room_id) if s.txn_id == "note-a"]
    assert "@mallory:localhost" not in (sent.recipients or ())
    assert world.gw.kicked[-1][:2] == (a.room_id, "@mallory:localhost")


async def test_a_refused_message_is_set_aside_and_the_next_one_goes(world: World) -> None:
    demande = await world.open_demande()
    room = demande.room_id
    assert room
    await _queue(world, room, "first", "un")
    await _queue(world, room, "second", "deux")
    world.gw.fail("send_encrypted", raise_matrix(403, "M_FORBIDDEN"))
    await world.flush()
    assert [s.txn_id for s in world.replies(room)][-1:] == ["second"]
    await world.flush()  # nothing is retried: the refusal is for good
    assert [s.txn_id for s in world.replies(room)].count("first") == 0
    async with world.store.transaction() as tx:
        assert await tx.pending_messages(room) == []


async def test_an_outage_keeps_messages_queued_and_sends_each_once_after(world: World) -> None:
    demande = await world.open_demande()
    room = demande.room_id
    assert room
    await _queue(world, room, "during", "pendant la panne")
    world.gw.fail("send_encrypted", HomeserverUnavailable("connection refused"), times=1)
    try:
        await world.flush()
    except HomeserverUnavailable:
        pass
    else:
        raise AssertionError("an outage must be raised to the worker, which waits")
    async with world.store.transaction() as tx:
        assert [m.txn_id for m in await tx.pending_messages(room)] == ["during"]
    await world.flush()
    await world.flush()
    assert [s.txn_id for s in world.replies(room)].count("during") == 1


async def test_the_worker_sends_the_other_rooms_while_one_room_is_slow(world: World) -> None:
    """One room whose send hangs (a slow homeserver for it) never holds back another."""
    a = await world.open_demande()
    b = await world.open_demande()
    assert a.room_id and b.room_id
    release = world.gw.stall("send_encrypted", room_id=a.room_id)
    worker = asyncio.create_task(world.parts.outbox.run())
    try:
        await _queue(world, a.room_id, "slow-a", "pour A")
        # Room A's send is under way, and hangs.
        await _until(
            lambda: any(c.args["txn_id"] == "slow-a" for c in world.gw.calls_of("send_encrypted"))
        )
        await _queue(world, b.room_id, "free-b", "pour B")
        await _until(lambda: "free-b" in [s.txn_id for s in world.replies(b.room_id or "")])
        assert "slow-a" not in [s.txn_id for s in world.replies(a.room_id)]
        release.set()
        await _until(lambda: "slow-a" in [s.txn_id for s in world.replies(a.room_id or "")])
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


async def _until(check: Callable[[], bool], bound: float = 30.0) -> None:
    """Wait for the worker (a bound against hangs, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not check():
        assert loop.time() < deadline, "the worker did not get there"
        await asyncio.sleep(0.01)
