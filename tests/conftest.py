"""Session-wide real homeserver, Matrix client fixtures and automatic markers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nio
import pytest

from bot.devserver import LocalSynapse, RegisteredUser
from tests.support import matrix

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


class Clients:
    """Creates users and E2EE clients for one test; closes every client afterwards."""

    def __init__(self, synapse: LocalSynapse, root: Path) -> None:
        self.synapse = synapse
        self._root = root
        self._open: list[nio.AsyncClient] = []

    def store_dir(self, user_id: str) -> Path:
        return self._root / user_id.lstrip("@").replace(":", "_")

    async def user(self, prefix: str, *, admin: bool = False) -> RegisteredUser:
        return await matrix.make_user(self.synapse, prefix, admin=admin)

    async def client(self, prefix_or_user: str | RegisteredUser) -> nio.AsyncClient:
        if isinstance(prefix_or_user, str):
            prefix_or_user = await self.user(prefix_or_user)
        client = await matrix.make_client(
            self.synapse, prefix_or_user, self.store_dir(prefix_or_user.user_id)
        )
        self._open.append(client)
        return client

    async def reopen(self, client: nio.AsyncClient) -> nio.AsyncClient:
        """Close `client` and reopen its device from its store, as a restarted bot would.

        No sync is done: the new client has the stored sync token and no rooms.
        """
        assert client.user_id and client.device_id and client.access_token
        await self.close(client)
        reopened = await matrix.restore_client(
            self.synapse,
            client.user_id,
            client.device_id,
            client.access_token,
            self.store_dir(client.user_id),
            pickle_key=client.config.pickle_key,
        )
        self._open.append(reopened)
        return reopened

    async def close(self, client: nio.AsyncClient) -> None:
        if client in self._open:
            self._open.remove(client)
        await matrix.close_client(client)

    async def aclose(self) -> None:
        while self._open:
            await matrix.close_client(self._open.pop())


@pytest.fixture
async def clients(synapse: LocalSynapse, tmp_path: Path) -> AsyncIterator[Clients]:
    pool = Clients(synapse, tmp_path / "nio")
    try:
        yield pool
    finally:
        await pool.aclose()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "synapse" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.synapse)
