"""Session-wide real homeserver, Matrix client fixtures and automatic markers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bot.devserver import LocalSynapse
from tests.support import guard, matrix

try:
    from tests.db_fixtures import *  # noqa: F403
except ModuleNotFoundError as exc:  # the store fixtures are not written yet
    if exc.name != "tests.db_fixtures":
        raise


def _run_in_own_loop(coro: Coroutine[Any, Any, None]) -> None:
    # The homeserver outlives every per-test event loop, so its start and stop run on
    # a private loop in a worker thread, away from pytest-asyncio's loops.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="synapse") as pool:
        pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSynapse]:
    """One real Synapse for the whole session (fast password hashing, no rate limits)."""
    server = LocalSynapse(tmp_path_factory.mktemp("synapse"), fast_hashing=True)
    started = time.perf_counter()
    _run_in_own_loop(server.start())
    matrix.SESSION_TIMINGS["synapse_start_s"] = time.perf_counter() - started
    try:
        yield server
    finally:
        _run_in_own_loop(server.stop())


@pytest.fixture(scope="session")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[guard.GuardedHomeserver]:
    """A second Synapse with the homeserver guard loaded, started on first use.

    Its module names one bot account and fixed endpoint ports, chosen before it starts
    (tests/support/guard.py); the session's `synapse` stays without the module.
    """
    env = guard.prepare(tmp_path_factory.mktemp("guarded"))
    _run_in_own_loop(guard.start(env))
    try:
        yield env
    finally:
        _run_in_own_loop(env.synapse.stop())


@pytest.fixture
async def clients(synapse: LocalSynapse, tmp_path: Path) -> AsyncIterator[matrix.Clients]:
    """Users and E2EE clients for one test, all closed at teardown."""
    pool = matrix.Clients(synapse, tmp_path / "nio")
    try:
        yield pool
    finally:
        await pool.aclose()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"synapse", "guarded"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.synapse)
