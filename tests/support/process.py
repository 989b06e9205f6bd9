# The waits take a `timeout` on purpose (ASYNC109): it bounds a polling loop and fails the
# test with what was awaited, where asyncio.timeout would give a bare TimeoutError.
# ruff: noqa: ASYNC109
"""The `aplus` command as a real child process, and the homeserver's view through the admin API.

A test writes a production-style configuration (TOML file + secret files in mode 0600)
for a bot account registered on the session's Synapse, then starts
`aplus run --config …` as a subprocess whose stderr (the log) goes to a file. It can
wait for a line of that log, signal the process, or wait for it to die on its own
(a crash point from `bot.faults`).

What the bot did is then checked from the outside: the Synapse admin API (rooms,
state, timeline, devices) and the bot's database opened with its data key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from bot.devserver import LocalSynapse, RegisteredUser
from bot.settings import Settings, load_settings
from bot.store.crypto import FieldCipher
from bot.store.db import Store
from tests.support import databases, matrix

REPO_ROOT = Path(__file__).resolve().parents[2]
# A child process gets this long to exit after SIGINT/SIGTERM before the test fails.
EXIT_TIMEOUT_S = 30.0


def aplus_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m bot.cli`."""
    script = Path(sys.executable).with_name("aplus")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "bot.cli"]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without any APLUS_* variable (they win over the files), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APLUS_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def free_port() -> int:
    """A TCP port free on the loopback now, for a listener of a bot process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_secret(path: Path, value: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    os.chmod(path, mode)  # the umask may have narrowed `mode`
    return path


def toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- configuration -------------------------------------------------------------------


@dataclass(frozen=True)
class BotFiles:
    """A production-style configuration of one bot: TOML file, secret files, data folder."""

    root: Path
    config: Path
    data_dir: Path
    homeserver: str
    user_id: str
    password: str = field(repr=False)
    pickle_key: str = field(repr=False)
    data_key: str = field(repr=False)

    def settings(self) -> Settings:
        return load_settings(self.config, env={})

    @contextlib.asynccontextmanager
    async def store(self) -> AsyncIterator[Store]:
        """The bot's own database, opened with its data key (also while the bot runs)."""
        settings = self.settings()
        # The bot creates it on start; the test may fill the directory before.
        settings.data.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        store = await Store.open(
            settings.database.url.reveal(),
            FieldCipher.from_secret(settings.secrets.data_key.reveal()),
        )
        try:
            yield store
        finally:
            await store.close()


def write_bot_config(
    root: Path,
    *,
    homeserver: str,
    server_name: str,
    user_id: str,
    password: str,
    database_url: str | None = None,
) -> BotFiles:
    """Write `root/config.toml` and its secret files (0600) the way an operator would.

    The database is `database_url`, else one of the test's backend (SQLite in the data
    folder, or a fresh PostgreSQL database: tests/support/databases.py).
    """
    root.mkdir(parents=True, exist_ok=True)
    database_url = database_url or databases.bot_database_url()
    database = ["[database]", f"url = {toml_string(database_url)}", ""] if database_url else []
    pickle_key = secrets.token_urlsafe(24)
    data_key = base64.b64encode(secrets.token_bytes(32)).decode()
    secret_dir = root / "secrets"
    secret_dir.mkdir(mode=0o700, exist_ok=True)
    write_secret(secret_dir / "bot_password", password)
    write_secret(secret_dir / "pickle_key", pickle_key)
    write_secret(secret_dir / "data_key", data_key)
    config = root / "config.toml"
    config.write_text(
        "\n".join(
            [
                "[homeserver]",
                f"url = {toml_string(homeserver)}",
                f"server_name = {toml_string(server_name)}",
                "",
                "[bot]",
                f"user_id = {toml_string(user_id)}",
                'device_name = "Administration+"',
                'password_file = "secrets/bot_password"',
                "",
                "[data]",
                'dir = "data"',
                "",
                *database,
                "[logging]",
                'level = "INFO"',
                "",
                # A free port: several bots (a failover test, parallel runs) on one machine.
                "[health]",
                "port = 0",
                "",
                "[secrets]",
                'pickle_key_file = "secrets/pickle_key"',
                'data_key_file = "secrets/data_key"',
                "",
            ]
        )
    )
    return BotFiles(
        root=root,
        config=config,
        data_dir=root / "data",
        homeserver=homeserver,
        user_id=user_id,
        password=password,
        pickle_key=pickle_key,
        data_key=data_key,
    )


async def register_bot(
    synapse: LocalSynapse, root: Path, *, database_url: str | None = None
) -> BotFiles:
    """A fresh bot account with no device at all, and its configuration (its database:
    `database_url`, else one of the test's backend).

    Shared-secret registration logs the account in (one device); that session is
    logged out at once, so every device the account has later is the bot's own doing.
    """
    password = secrets.token_urlsafe(16)
    user = await synapse.register(matrix.unique("bot"), password)
    await logout(synapse.base_url, user.access_token)
    return write_bot_config(
        root,
        homeserver=synapse.base_url,
        server_name=synapse.server_name,
        user_id=user.user_id,
        password=password,
        database_url=database_url,
    )


async def logout(homeserver: str, access_token: str) -> None:
    """Log a session out, which deletes its device."""
    url = homeserver.rstrip("/") + "/_matrix/client/v3/logout"
    status, body = await http_json("POST", url, token=access_token, json={})
    assert status == 200, f"logout: {status} {body}"


async def password_login(homeserver: str, user: str, password: str) -> tuple[str, str]:
    """Log in (a new device); returns (access token, device ID)."""
    status, body = await http_json(
        "POST",
        homeserver.rstrip("/") + "/_matrix/client/v3/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
        },
    )
    assert status == 200, f"login of {user}: {status} {body}"
    return str(body["access_token"]), str(body["device_id"])


async def http_json(
    method: str, url: str, *, token: str | None = None, json: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.request(method, url, json=json) as response,
    ):
        body = await response.json(content_type=None)
        return response.status, body if isinstance(body, dict) else {}


# -- the child process -----------------------------------------------------------------


class AplusProcess:
    """One `aplus …` child process; its stdout and stderr go to files under `log_dir`."""

    _serial = 0

    def __init__(
        self,
        args: Sequence[str],
        log_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        name: str = "aplus",
    ) -> None:
        AplusProcess._serial += 1
        self.args = [*aplus_command(), *args]
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}-{AplusProcess._serial}.stderr.log"
        self.out_path = log_dir / f"{name}-{AplusProcess._serial}.stdout.log"
        self._env = child_env(env)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AplusProcess:
        with open(self.log_path, "wb") as err, open(self.out_path, "wb") as out:
            self.process = subprocess.Popen(
                self.args,
                cwd=REPO_ROOT,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def describe(self) -> str:
        return (
            f"{' '.join(self.args)} (pid {self.process.pid if self.process else '-'})\n"
            f"--- stdout ---\n{self.output()[-3000:]}\n"
            f"--- stderr (library frames left out) ---\n{_readable(self.log())[-8000:]}"
        )

    def returncode(self) -> int | None:
        assert self.process is not None, "start() first"
        return self.process.poll()

    async def wait_log(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """Wait for a line of the log (stderr) matching `pattern`; fail if the process dies."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.log())
            if found:
                return found
            if self.returncode() is not None:
                raise AssertionError(
                    f"exited ({self.returncode()}) before logging /{pattern}/:\n{self.describe()}"
                )
            if time.monotonic() > deadline:
                raise matrix.WaitTimeout(
                    f"still waiting after {timeout} s for /{pattern}/ in the log:\n"
                    + self.describe()
                )
            await asyncio.sleep(0.05)

    async def wait_output(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """Wait for `pattern` on stdout; fail if the process dies first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.output())
            if found:
                return found
            if self.returncode() is not None:
                raise AssertionError(
                    f"exited ({self.returncode()}) before printing /{pattern}/:\n" + self.describe()
                )
            if time.monotonic() > deadline:
                raise matrix.WaitTimeout(
                    f"still waiting after {timeout} s for /{pattern}/ on stdout:\n"
                    + self.describe()
                )
            await asyncio.sleep(0.05)

    async def wait_file(self, path: Path, timeout: float = 30) -> None:
        """Wait until `path` exists; fail if the process dies first."""
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.returncode() is not None:
                raise AssertionError(
                    f"exited ({self.returncode()}) before writing {path}:\n{self.describe()}"
                )
            if time.monotonic() > deadline:
                raise matrix.WaitTimeout(
                    f"still waiting after {timeout} s for {path}:\n{self.describe()}"
                )
            await asyncio.sleep(0.05)

    async def wait_exit(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        """The exit code (negative: the signal that killed it); fail if still running."""
        deadline = time.monotonic() + timeout
        while (code := self.returncode()) is None:
            if time.monotonic() > deadline:
                raise matrix.WaitTimeout(f"still running after {timeout} s:\n{self.describe()}")
            await asyncio.sleep(0.05)
        return code

    def send(self, sig: signal.Signals) -> None:
        assert self.process is not None, "start() first"
        if self.process.poll() is None:
            self.process.send_signal(sig)

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Ask the process to stop with `sig` and return its exit code."""
        self.send(sig)
        return await self.wait_exit()

    def kill(self) -> None:
        """Test cleanup: SIGTERM (so `aplus dev` stops its Synapse), SIGKILL if that fails."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def bot_process(files: BotFiles, *, env: Mapping[str, str] | None = None) -> AplusProcess:
    """`aplus run --config …` for this bot (not started)."""
    return AplusProcess(
        ["run", "--config", str(files.config)], files.root / "logs", env=env, name="run"
    )


@contextlib.contextmanager
def killed_at_exit(*processes: AplusProcess) -> Iterator[None]:
    """Whatever happens in the test, no child process outlives it (cleaned up in order)."""
    try:
        yield
    finally:
        for process in processes:
            process.kill()


def run_aplus(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `aplus …` to completion; stdout and stderr captured as text."""
    return subprocess.run(
        [*aplus_command(), *args],
        cwd=REPO_ROOT,
        env=child_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def run_aplus_async(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`run_aplus` from a test's event loop (the loop keeps serving while it runs)."""
    return await asyncio.to_thread(run_aplus, *args, env=env, timeout=timeout)


# -- the homeserver's view --------------------------------------------------------------


class AdminApi:
    """What the homeserver holds, read with a server admin's token (Synapse admin API)."""

    def __init__(self, homeserver: str, token: str) -> None:
        self.homeserver = homeserver.rstrip("/")
        self.token = token

    @classmethod
    def of(cls, synapse: LocalSynapse, admin: RegisteredUser) -> AdminApi:
        return cls(synapse.base_url, admin.access_token)

    async def get(self, path: str) -> dict[str, Any]:
        status, body = await http_json("GET", self.homeserver + path, token=self.token)
        assert status == 200, f"GET {path}: {status} {body}"
        return body

    async def joined_rooms(self, user_id: str) -> list[str]:
        body = await self.get(f"/_synapse/admin/v1/users/{quote(user_id)}/joined_rooms")
        return list(body["joined_rooms"])

    async def state(self, room_id: str) -> list[dict[str, Any]]:
        body = await self.get(f"/_synapse/admin/v1/rooms/{quote(room_id)}/state")
        return list(body["state"])

    async def state_content(self, room_id: str, event_type: str) -> dict[str, Any] | None:
        for event in await self.state(room_id):
            if event.get("type") == event_type and event.get("state_key") == "":
                content: dict[str, Any] = event.get("content") or {}
                return content
        return None

    async def timeline(self, room_id: str) -> list[dict[str, Any]]:
        """Every event of the room, oldest first (whatever their visibility)."""
        events: list[dict[str, Any]] = []
        path = f"/_synapse/admin/v1/rooms/{quote(room_id)}/messages?dir=f&limit=1000"
        token: str | None = None
        while True:
            body = await self.get(path + (f"&from={quote(token)}" if token else ""))
            chunk = list(body.get("chunk", []))
            events += chunk
            token = body.get("end")
            if not chunk or not token:
                return events

    async def devices(self, user_id: str) -> list[dict[str, Any]]:
        body = await self.get(f"/_synapse/admin/v2/users/{quote(user_id)}/devices")
        return list(body["devices"])

    async def rooms_with_state(self, user_id: str, event_type: str, **match: Any) -> list[str]:
        """The user's joined rooms whose `event_type` state content has these values."""
        found = []
        for room_id in await self.joined_rooms(user_id):
            content = await self.state_content(room_id, event_type)
            if content is not None and all(content.get(k) == v for k, v in match.items()):
                found.append(room_id)
        return found


def invites_per_user(timeline: Sequence[dict[str, Any]]) -> Counter[str]:
    """How many `invite` membership events each user got in this timeline."""
    return Counter(
        str(event["state_key"])
        for event in timeline
        if event.get("type") == "m.room.member"
        and (event.get("content") or {}).get("membership") == "invite"
    )


def sent_by(timeline: Sequence[dict[str, Any]], sender: str, event_type: str) -> list[str]:
    """Event IDs of `sender`'s events of this type (for the bot: `m.room.encrypted`)."""
    return [
        str(e["event_id"])
        for e in timeline
        if e.get("sender") == sender and e.get("type") == event_type and "state_key" not in e
    ]


def _readable(log: str) -> str:
    """The log without the frames of installed libraries and the standard library (and
    their source and caret lines): what is left names our code and the error."""
    kept: list[str] = []
    skip_source = False
    for line in log.splitlines():
        stripped = line.strip()
        if stripped.startswith('File "'):
            skip_source = "site-packages" in stripped or "/lib/python3" in stripped
            if skip_source:
                continue
        elif skip_source and not stripped.startswith(("Traceback", "During", "The above")):
            if line.startswith((" ", "\t")) and not stripped.endswith(("Error", "Exception")):
                continue
            skip_source = False
        if stripped and set(stripped) <= set("^~ "):
            continue
        kept.append(line)
    return "\n".join(kept)
