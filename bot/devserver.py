"""A local, loopback-only Synapse for `aplus dev` and for the integration tests.

The homeserver runs as a child process in its own process group, with everything it
owns (configuration, SQLite database, media, signing key, logs) in one data directory.
`prepare()` is idempotent: a second `aplus dev` reuses the signing key, the shared
registration secret, the database and, when it is still free, the port.

The object holds no event-loop-bound resource between calls (a plain `subprocess.Popen`
and one short-lived aiohttp session per request), so it can be started from one event
loop and used from others, as the pytest session fixture does.

Nothing here prints or logs passwords or access tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
_POLL_INTERVAL_S = 0.1
_LOG_TAIL_LINES = 30

# Loopback tests and demos create rooms, invites and logins in bursts; Synapse's
# defaults throttle after ~10 of each. Server admins are not exempt.
_UNLIMITED = {"per_second": 10000, "burst_count": 100000}


GUARD_MODULE = "synapse_module.aplus_guard.AplusGuard"
GUARD_TIMEOUT_S = 2.0


def guard_module(
    *,
    bot_user_id: str,
    api_urls: Sequence[str],
    shared_secret_path: Path,
    timeout_seconds: float = GUARD_TIMEOUT_S,
) -> dict[str, Any]:
    """The `modules:` entry of the homeserver guard (see deploy/synapse-module.md)."""
    return {
        "module": GUARD_MODULE,
        "config": {
            "bot_user_id": bot_user_id,
            "api_urls": list(api_urls),
            "shared_secret_path": str(shared_secret_path),
            "timeout_seconds": timeout_seconds,
        },
    }


def ensure_guard_secret(path: Path) -> Path:
    """The secret shared by the guard and the bot: created once (mode 0600), then reused."""
    if not (path.exists() and path.read_text().strip()):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    os.chmod(path, 0o600)
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return _free_port()


def port_is_free(port: int) -> bool:
    return _port_is_free(port)


class DevServerError(RuntimeError):
    """The local homeserver could not be prepared, started or queried (French message)."""


@dataclass(frozen=True)
class RegisteredUser:
    user_id: str
    access_token: str = field(repr=False)
    device_id: str


@dataclass(frozen=True)
class AdminResponse:
    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class LocalSynapse:
    """A Synapse homeserver child process bound to 127.0.0.1."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        server_name: str = "localhost",
        fast_hashing: bool = False,
        modules: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._requested_port = port
        self._port: int | None = None
        self._server_name = server_name
        self._fast_hashing = fast_hashing
        # Synapse modules, as in homeserver.yaml's `modules:` (e.g. `guard_module(...)`).
        self._modules = [dict(m) for m in modules]
        self._process: subprocess.Popen[bytes] | None = None

    # -- files ---------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.data_dir / "homeserver.yaml"

    @property
    def log_path(self) -> Path:
        """Synapse's own log (WARNING and above)."""
        return self.data_dir / "homeserver.log"

    @property
    def console_log_path(self) -> Path:
        """stdout/stderr of the child process (start-up failures land here)."""
        return self.data_dir / "console.log"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "homeserver.db"

    @property
    def _secret_path(self) -> Path:
        return self.data_dir / "registration_shared_secret"

    @property
    def _signing_key_path(self) -> Path:
        return self.data_dir / f"{self._server_name}.signing.key"

    @property
    def _port_path(self) -> Path:
        return self.data_dir / "port"

    # -- public properties ---------------------------------------------------

    @property
    def server_name(self) -> str:
        return self._server_name

    @property
    def port(self) -> int:
        if self._port is None:
            raise DevServerError("Le serveur Matrix local n'est pas préparé (appelez prepare()).")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- preparation ---------------------------------------------------------

    def prepare(self) -> None:
        """Write the data directory; keep existing key, secret and database."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "media_store").mkdir(exist_ok=True)
        self._port = self._choose_port()
        self._ensure_secret()
        self._ensure_signing_key()
        self._write_log_config()
        self._write_config()

    def _choose_port(self) -> int:
        if self._requested_port is not None:
            port = self._requested_port
        else:
            port = _read_int(self._port_path) or 0
            if not port or not _port_is_free(port):
                port = _free_port()
        self._port_path.write_text(f"{port}\n")
        return port

    def _ensure_secret(self) -> None:
        if self._secret_path.exists() and self._secret_path.read_text().strip():
            os.chmod(self._secret_path, 0o600)
            return
        fd = os.open(self._secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))

    def _ensure_signing_key(self) -> None:
        if self._signing_key_path.exists():
            return
        # In-process: `--generate-keys` would cost a full Synapse import (~3 s).
        from signedjson.key import generate_signing_key, write_signing_keys

        key = generate_signing_key("a_" + secrets.token_hex(2))
        fd = os.open(self._signing_key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            write_signing_keys(f, [key])

    def _write_log_config(self) -> None:
        import yaml  # a Synapse dependency, like signedjson

        config = {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"},
            },
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "plain",
                    "filename": str(self.log_path),
                    "encoding": "utf-8",
                },
            },
            "root": {"level": "WARNING", "handlers": ["file"]},
        }
        (self.data_dir / "log.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def _write_config(self) -> None:
        import yaml

        config: dict[str, Any] = {
            "server_name": self._server_name,
            "public_baseurl": self.base_url + "/",
            "report_stats": False,
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {
                "name": "sqlite3",
                "args": {"database": str(self.database_path)},
            },
            "log_config": str(self.data_dir / "log.yaml"),
            "media_store_path": str(self.data_dir / "media_store"),
            "max_upload_size": "50M",
            "signing_key_path": str(self._signing_key_path),
            "registration_shared_secret_path": str(self._secret_path),
            "enable_registration": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "presence": {"enabled": False},
            "url_preview_enabled": False,
            # A fresh database queues ~56 updates that take ~1 min with sleeps.
            "background_updates": {"sleep_enabled": False},
            "rc_message": _UNLIMITED,
            "rc_room_creation": _UNLIMITED,
            "rc_invites": {
                "per_room": _UNLIMITED,
                "per_user": _UNLIMITED,
                "per_issuer": _UNLIMITED,
            },
            "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
            "rc_joins_per_room": _UNLIMITED,
            "rc_login": {
                "address": _UNLIMITED,
                "account": _UNLIMITED,
                "failed_attempts": _UNLIMITED,
            },
            "rc_3pid_validation": _UNLIMITED,
        }
        if self._fast_hashing:
            config["bcrypt_rounds"] = 4
        if self._modules:
            config["modules"] = self._modules
        header = "# Generated by aplus (bot/devserver.py): rewritten on every start.\n"
        self.config_path.write_text(header + yaml.safe_dump(config, sort_keys=False))

    # -- process lifecycle ---------------------------------------------------

    async def start(self) -> None:
        """Start Synapse and wait until it answers and its background updates are done."""
        if self.running:
            return
        self.prepare()
        self._process = self._spawn()
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            await self._wait_until_answering(deadline)
            await self._wait_for_background_updates(deadline)
        except BaseException:
            await self.stop()
            raise

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Its own session (process group) so that stop() reaches any child it forks
        # and a Ctrl-C in `aplus dev` is handled by us, not delivered to Synapse too.
        with open(self.console_log_path, "ab") as console:
            return subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def _wait_until_answering(self, deadline: float) -> None:
        url = self.base_url + "/_matrix/client/versions"
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                self._raise_if_exited()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise DevServerError(self._failure_message("ne répond pas après 60 s"))
                await asyncio.sleep(_POLL_INTERVAL_S)

    async def _wait_for_background_updates(self, deadline: float) -> None:
        # Some admin features answer 500 until these are done.
        while await asyncio.to_thread(self._pending_background_updates):
            self._raise_if_exited()
            if time.monotonic() > deadline:
                raise DevServerError(
                    self._failure_message("n'a pas terminé ses mises à jour de fond en 60 s")
                )
            await asyncio.sleep(_POLL_INTERVAL_S)

    def _pending_background_updates(self) -> int:
        uri = f"file:{self.database_path}?mode=ro"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1)) as db:
                (count,) = db.execute("SELECT COUNT(*) FROM background_updates").fetchone()
        except sqlite3.OperationalError:
            return 1  # locked, or schema not created yet: ask again
        return int(count)

    def _raise_if_exited(self) -> None:
        if self._process is None:
            raise DevServerError("Le serveur Matrix local n'est pas démarré.")
        code = self._process.poll()
        if code is not None:
            self._process = None
            raise DevServerError(self._failure_message(f"s'est arrêté (code {code})"))

    def _failure_message(self, what: str) -> str:
        tail = []
        for path in (self.console_log_path, self.log_path):
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
                if lines:
                    tail.append(f"--- {path} ---\n" + "\n".join(lines))
        details = "\n".join(tail) or "(journal vide)"
        return f"Le serveur Matrix local (Synapse) {what}.\n{details}"

    async def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL if it is still there after a bound."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            if process is not None:
                process.wait()
            return
        _signal_group(process, signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("Synapse did not stop %.0f s after SIGTERM; killing it", STOP_TIMEOUT_S)
            _signal_group(process, signal.SIGKILL)
            await asyncio.to_thread(process.wait)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- accounts and admin API ----------------------------------------------

    async def register(
        self,
        username: str,
        password: str,
        *,
        admin: bool = False,
        displayname: str | None = None,
    ) -> RegisteredUser:
        """Create an account with the shared secret; log in if it already exists."""
        secret = self._secret_path.read_text().strip().encode()
        url = self.base_url + "/_synapse/admin/v1/register"
        async with aiohttp.ClientSession() as session:
            status, body = await _request(session, "GET", url)
            if status != 200:
                raise DevServerError(f"Impossible d'obtenir un nonce d'inscription ({status}).")
            nonce = body["nonce"]
            mac = hmac.new(secret, digestmod=hashlib.sha1)
            for part in (nonce, username, password):
                mac.update(part.encode())
                mac.update(b"\x00")
            mac.update(b"admin" if admin else b"notadmin")
            payload: dict[str, Any] = {
                "nonce": nonce,
                "username": username,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            }
            if displayname is not None:
                payload["displayname"] = displayname
            status, body = await _request(session, "POST", url, json=payload)
        if status == 200:
            return RegisteredUser(body["user_id"], body["access_token"], body["device_id"])
        if body.get("errcode") == "M_USER_IN_USE":
            return await self.login(username, password)
        raise DevServerError(
            f"Inscription de « {username} » refusée ({status} {body.get('errcode')})."
        )

    async def login(
        self, username: str, password: str, device_id: str | None = None
    ) -> RegisteredUser:
        payload: dict[str, Any] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": username},
            "password": password,
        }
        if device_id is not None:
            payload["device_id"] = device_id
        async with aiohttp.ClientSession() as session:
            status, body = await _request(
                session, "POST", self.base_url + "/_matrix/client/v3/login", json=payload
            )
        if status != 200:
            raise DevServerError(
                f"Connexion de « {username} » refusée ({status} {body.get('errcode')})."
            )
        return RegisteredUser(body["user_id"], body["access_token"], body["device_id"])

    async def admin_request(
        self,
        method: str,
        path: str,
        token: str,
        json: dict[str, Any] | None = None,
    ) -> AdminResponse:
        """Call the admin API (or any client-server path) with an access token.

        `path` starts with "/", e.g. "/_synapse/admin/v2/users/@a:localhost".
        Errors are returned, not raised: callers often want the status code.
        """
        if not path.startswith("/"):
            raise ValueError("path must start with '/'")
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            status, body = await _request(session, method, self.base_url + path, json=json)
        return AdminResponse(status, body)


async def _request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    json: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    async with session.request(method, url, json=json) as response:
        try:
            body = await response.json(content_type=None)
        except ValueError:
            body = None
        return response.status, body if isinstance(body, dict) else {}


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _port_is_free(port: int) -> bool:
    # SO_REUSEADDR like Twisted's listener, so TIME_WAIT leftovers do not count as taken.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
