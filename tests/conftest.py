"""Session-wide real homeserver, Matrix client fixtures, the database backend, markers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bot.devserver import LocalSynapse
from tests.support import databases, guard, hangs, matrix, sqlite_leaks

sqlite_leaks.install()

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
def _guarded_homeservers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, guard.GuardedHomeserver]]:
    started: dict[str, guard.GuardedHomeserver] = {}
    try:
        yield started
    finally:
        for env in started.values():
            _run_in_own_loop(env.synapse.stop())


@pytest.fixture
def guarded(
    _guarded_homeservers: dict[str, guard.GuardedHomeserver],
    tmp_path_factory: pytest.TempPathFactory,
    db_backend: str,
) -> guard.GuardedHomeserver:
    """A second Synapse with the homeserver guard loaded, started on first use.

    Its module names one bot account and fixed endpoint ports, chosen before it starts
    (tests/support/guard.py); the session's `synapse` stays without the module. The
    account's one data folder is shared by the tests of the session, so each backend has
    its own guarded homeserver, bot account and database.
    """
    env = _guarded_homeservers.get(db_backend)
    if env is None:
        url = None
        if db_backend == "postgres":
            url = databases.create_database(for_session=True)
        env = guard.prepare(tmp_path_factory.mktemp(f"guarded-{db_backend}"), database_url=url)
        _run_in_own_loop(guard.start(env))
        _guarded_homeservers[db_backend] = env
    return env


@pytest.fixture
async def clients(synapse: LocalSynapse, tmp_path: Path) -> AsyncIterator[matrix.Clients]:
    """Users and E2EE clients for one test, all closed at teardown."""
    pool = matrix.Clients(synapse, tmp_path / "nio")
    try:
        yield pool
    finally:
        await pool.aclose()


# -- the database backend of every bot a test starts (tests/support/databases.py) -----

TESTS_DIR = Path(__file__).parent
# Where tests start bots or open the bot's database: each such test runs on each backend.
# tests/unit (pure), tests/deploy (templates; Synapse on its own PostgreSQL, no bot) and
# tests/bench (reads the SQLite file) never reach a bot's database: they run once.
BACKEND_DIRS = frozenset({"integration", "mta"})
STORE_FIXTURES = frozenset({"store", "store_url"})


def _backends(metafunc: pytest.Metafunc) -> tuple[str, ...] | None:
    if getattr(metafunc.module, "NO_BOT_DATABASE", False):
        return None  # the module starts no bot (the homeserver only): once is enough
    names = set(metafunc.fixturenames)
    if not names & STORE_FIXTURES:
        # A test of one backend's own behaviour runs once, on that backend.
        if "postgres_url" in names:
            return ("postgres",)
        if "sqlite_url" in names:
            return ("sqlite",)
    if names & STORE_FIXTURES:
        return databases.BACKENDS
    parts = metafunc.definition.path.relative_to(TESTS_DIR).parts
    return databases.BACKENDS if parts[0] in BACKEND_DIRS else None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    backends = _backends(metafunc)
    if backends is None:
        return
    params = [
        pytest.param(b, id=b, marks=[pytest.mark.postgres] if b == "postgres" else [])
        for b in backends
    ]
    if getattr(metafunc.module, "DB_BACKEND_SCOPE", None) == "module":
        # The module's bot lives in a module-scoped fixture: it asks for `db_backend`
        # (a plain value here, no database made for it) and chooses its database itself.
        metafunc.parametrize("db_backend", params, scope="module")
    else:
        metafunc.parametrize("db_backend", params, indirect=True)


@pytest.fixture(autouse=True)
def db_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The backend of this test's bots; their PostgreSQL databases are dropped after it."""
    backend: str = getattr(request, "param", databases.DEFAULT_BACKEND)
    with databases.backend_for_test(backend):
        yield backend


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A hung test's asyncio tasks are printed before pytest-timeout ends it."""
    marker = item.get_closest_marker("timeout")
    timeout = (
        float(marker.args[0])
        if marker and marker.args
        else float(item.config.getini("timeout") or 0)
    )
    with hangs.dump_tasks_before(timeout):
        return (yield)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """Once the test's fixtures (and its event loop) are gone: no SQLite connection of a
    closed loop is left open (tests/support/sqlite_leaks.py)."""
    result = yield
    found = sqlite_leaks.leaked()
    if found:
        raise AssertionError(
            f"{len(found)} SQLite connection(s) outlived their event loop:\n" + "\n".join(found)
        )
    return result


def pytest_sessionfinish(session: pytest.Session) -> None:
    databases.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    selected = databases.selected_backends()
    kept, deselected = [], []
    for item in items:
        if {"synapse", "guarded"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.synapse)
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("db_backend") if callspec is not None else None
        (deselected if backend is not None and backend not in selected else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
