"""A private PostgreSQL cluster for one test: `initdb`, then `pg_ctl` start and stop on a
free port, so that a test can take the database away (a real outage) and bring it back.

Run as the `postgres` account when the tests run as root (PostgreSQL refuses root);
its folder is a fresh one under the system's temporary folder, readable by that account.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@dataclass
class PrivateCluster:
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "aplus") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    async def _pg_ctl(self, *args: str) -> None:
        command = _as_postgres(["pg_ctl", "-D", str(self.data), "-l", str(self.log), *args])
        done = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, check=False, timeout=120
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)

    async def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        await self._pg_ctl("-o", options, "-w", "start")

    async def stop(self) -> None:
        """Fast shutdown: every connection is cut, as in a crash of the server."""
        await self._pg_ctl("-m", "fast", "-w", "stop")


@contextlib.asynccontextmanager
async def private_cluster(database: str = "aplus") -> AsyncIterator[PrivateCluster]:
    root = Path(tempfile.mkdtemp(prefix="aplus-pg-"))
    root.chmod(0o755)
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
    cluster = PrivateCluster(root, _free_port())
    init = _as_postgres(
        ["initdb", "-D", str(cluster.data), "-A", "trust", "-U", "postgres", "--no-sync"]
    )
    done = await asyncio.to_thread(
        subprocess.run, init, capture_output=True, text=True, check=False, timeout=300
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    await cluster.start()
    try:
        create = _as_postgres(
            ["createdb", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", database]
        )
        made = await asyncio.to_thread(
            subprocess.run, create, capture_output=True, text=True, check=False, timeout=60
        )
        assert made.returncode == 0, made.stderr
        yield cluster
    finally:
        with contextlib.suppress(AssertionError):
            await cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
