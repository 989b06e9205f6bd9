"""The lease and the fence on the real PostgreSQL (two processes, one active).

Two `Lease` objects stand for two bot processes (each its own connections, named by
its holder); the timings are short so that expiries happen within the test.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.exc import DBAPIError

from bot.domain.lease import LeaseLost, LeaseTiming
from bot.services.lease import Lease
from bot.store.crypto import FieldCipher
from bot.store.db import Store

pytestmark = pytest.mark.postgres

FAST = LeaseTiming(renew_seconds=0.2, ttl_seconds=1.0)


async def _lease(url: str, name: str) -> Lease:
    # The schema first (the bot opens its store before it waits for the lease).
    return Lease(url=url, timing=FAST, holder=f"aplus/test/{name}")


async def _store(url: str, cipher: FieldCipher, lease: Lease) -> Store:
    return await Store.open(url, cipher, fence=lambda: lease.epoch, application_name=lease.holder)


async def test_epochs_strictly_increase_and_a_live_lease_is_never_taken(
    postgres_url: str, field_cipher: FieldCipher
) -> None:
    schema = await Store.open(postgres_url, field_cipher)
    await schema.close()
    a, b = await _lease(postgres_url, "a"), await _lease(postgres_url, "b")
    try:
        assert await a.acquire() == 1
        a.start_keeping()
        # B waits as long as A renews.
        waiting = asyncio.create_task(b.acquire())
        await asyncio.sleep(FAST.ttl_seconds * 3)
        assert not waiting.done() and a.held() and not b.held()
        # A stops cleanly: the lease is released, B takes it with the next epoch.
        await a.close()
        assert await asyncio.wait_for(waiting, 30) == 2
        assert b.held() and not a.held()
        b.start_keeping()
        # C takes over from B only once B is gone without releasing (expiry).
        c = await _lease(postgres_url, "c")
        b.stop_renewing()  # B is frozen from here, and told nothing
        assert await asyncio.wait_for(c.acquire(), 30) == 3
        await c.close()
    finally:
        await b.close()


async def test_the_fence_refuses_a_stale_holders_write_and_the_standby_writes_nothing(
    postgres_url: str, field_cipher: FieldCipher
) -> None:
    a, b = await _lease(postgres_url, "a"), await _lease(postgres_url, "b")
    store_a = await _store(postgres_url, field_cipher, a)
    store_b = await _store(postgres_url, field_cipher, b)
    try:
        # The standby reads, and cannot write anything.
        async with store_b.transaction() as tx:
            assert await tx.get_state("k") is None
        with pytest.raises(DBAPIError, match="read-only"):
            async with store_b.transaction() as tx:
                await tx.set_state("k", "from the standby")
        await a.acquire()
        async with store_a.transaction() as tx:
            await tx.set_state("k", "epoch 1")
        # A stops renewing (frozen); B takes over once the lease has expired.
        assert await asyncio.wait_for(b.acquire(), 30) == 2
        with pytest.raises(LeaseLost):
            async with store_a.transaction() as tx:
                await tx.set_state("k", "stale")
        async with store_b.transaction() as tx:
            assert await tx.get_state("k") == "epoch 1"
            await tx.set_state("k", "epoch 2")
        async with store_b.transaction() as tx:
            assert await tx.get_state("k") == "epoch 2"
    finally:
        for closing in (store_a, store_b, a, b):
            await closing.close()


async def test_a_frozen_holders_open_transaction_is_ended_by_the_takeover(
    postgres_url: str, field_cipher: FieldCipher
) -> None:
    a, b = await _lease(postgres_url, "a"), await _lease(postgres_url, "b")
    store_a = await _store(postgres_url, field_cipher, a)
    try:
        await a.acquire()
        a.start_keeping()
        frozen = asyncio.Event()
        resume = asyncio.Event()

        async def write_then_freeze() -> None:
            async with store_a.transaction() as tx:  # the fence passed: the row is held
                await tx.set_state("k", "written before the freeze")
                frozen.set()
                await resume.wait()

        writer = asyncio.create_task(write_then_freeze())
        await frozen.wait()
        # The holder's own renewals are not blocked by its open transaction.
        await asyncio.sleep(FAST.ttl_seconds * 2)
        assert a.held()
        # Then it freezes: no renewals; B takes over through the lock it holds.
        a.stop_renewing()
        assert await asyncio.wait_for(b.acquire(), 30) == 2
        resume.set()
        with pytest.raises(DBAPIError):
            await writer  # its connection was terminated: the commit cannot happen
        reader = await Store.open(postgres_url, field_cipher)
        try:
            async with reader.transaction() as tx:
                assert await tx.get_state("k") is None
        finally:
            await reader.close()
    finally:
        await store_a.close()
        await a.close()
        await b.close()
