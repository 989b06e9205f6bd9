# A command's `timeout` is forwarded to the Node client, which bounds its own wait and
# reports what it saw (ASYNC109 does not apply).
# ruff: noqa: ASYNC109
"""Drive Element's crypto stack (tests/interop/element_client.mjs) from the tests.

`ElementClient.start(...)` installs the pinned matrix-js-sdk on first use (`npm ci`,
under a file lock so parallel test runs do not collide; nothing runs while the
installed tree matches package-lock.json), starts the Node client and speaks
line-delimited JSON with it. The client's own logs go to a temporary file whose
tail is attached to every error.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

INTEROP_DIR = Path(__file__).resolve().parent.parent / "interop"
CLIENT_SCRIPT = INTEROP_DIR / "element_client.mjs"
_STAMP = INTEROP_DIR / "node_modules" / ".aplus-installed-lock"
NPM_TIMEOUT_S = 300
START_TIMEOUT_S = 60.0
REPLY_MARGIN_S = 30.0  # on top of a command's own timeout

Isolation = Literal["only_signed", "all"]


class ElementClientError(RuntimeError):
    pass


def _lock_digest() -> str:
    return hashlib.sha256((INTEROP_DIR / "package-lock.json").read_bytes()).hexdigest()


def ensure_node_modules() -> None:
    """Run `npm ci` when node_modules is missing or was installed from another lock file."""
    digest = _lock_digest()
    if _STAMP.is_file() and _STAMP.read_text() == digest:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise ElementClientError("npm is needed for the Element interop tests")
    # Outside the tree: `npm ci` deletes node_modules, and the lock must not be committed.
    tag = hashlib.sha256(str(INTEROP_DIR).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"aplus-interop-npm-{tag}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _STAMP.is_file() and _STAMP.read_text() == digest:
            return  # another run installed it while we waited
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline"],
            cwd=INTEROP_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            raise ElementClientError(f"npm ci failed:\n{result.stdout}\n{result.stderr}")
        _STAMP.write_text(digest)


@dataclass(frozen=True)
class ElementEvent:
    event_id: str
    sender: str
    type: str
    encrypted: bool
    body: str | None
    failure: str | None  # a matrix-js-sdk DecryptionFailureCode

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ElementEvent:
        return cls(
            event_id=data["event_id"],
            sender=data["sender"],
            type=data["type"],
            encrypted=data["encrypted"],
            body=data["body"],
            failure=data["failure"],
        )


@dataclass(frozen=True)
class WaitResult:
    """`decrypted` (event is the match), `failed` (a definitive decryption failure,
    in `event`) or `timeout` (every undecryptable event seen is in `failures`)."""

    status: Literal["decrypted", "failed", "timeout"]
    event: ElementEvent | None
    failures: list[ElementEvent] = field(default_factory=list)


@dataclass(frozen=True)
class DeviceStatus:
    known: bool
    signed_by_owner: bool = False
    cross_signing_verified: bool = False
    local_verified: bool = False
    is_verified: bool = False


class ElementClient:
    """A running Node process holding one Element-like session."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self._process = process
        self._log_path = log_path
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        self.user_id = ""
        self.device_id = ""

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        homeserver_url: str,
        user_id: str,
        password: str,
        *,
        isolation: Isolation = "only_signed",
    ) -> AsyncIterator[ElementClient]:
        await asyncio.to_thread(ensure_node_modules)
        node = shutil.which("node")
        if node is None:
            raise ElementClientError("node is needed for the Element interop tests")
        fd, log_name = tempfile.mkstemp(prefix="element-client-", suffix=".log")
        log_path = Path(log_name)
        try:
            with os.fdopen(fd, "wb") as log_file:
                process = await asyncio.create_subprocess_exec(
                    node,
                    str(CLIENT_SCRIPT),
                    cwd=INTEROP_DIR,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log_file,
                    limit=16 * 1024 * 1024,
                )
            client = cls(process, log_path)
            try:
                await client._handshake(homeserver_url, user_id, password, isolation)
                yield client
            finally:
                await client._close()
        finally:
            await asyncio.to_thread(log_path.unlink, missing_ok=True)

    # -- commands -------------------------------------------------------------

    async def join(self, room_id: str) -> str:
        return str((await self._call("join", room_id=room_id))["room_id"])

    async def send(self, room_id: str, body: str, *, timeout: float = 10.0) -> str:
        result = await self._call("send", timeout, room_id=room_id, body=body, timeout=timeout)
        return str(result["event_id"])

    async def wait_message(
        self,
        room_id: str,
        predicate: str = "",
        *,
        sender: str | None = None,
        timeout: float = 15.0,
    ) -> WaitResult:
        result = await self._call(
            "wait_message",
            timeout,
            room_id=room_id,
            predicate=predicate,
            sender=sender,
            timeout=timeout,
        )
        failures = [ElementEvent.from_json(f) for f in result.get("failures", [])]
        event = None if result["status"] == "timeout" else ElementEvent.from_json(result)
        return WaitResult(status=result["status"], event=event, failures=failures)

    async def device_status(
        self, user_id: str, device_id: str, *, timeout: float = 10.0
    ) -> DeviceStatus:
        """How Element sees a device; `known` is False unless Element tracks its owner
        (they share an encrypted room) and saw the device within `timeout` seconds."""
        result = await self._call(
            "device_status", timeout, user_id=user_id, device_id=device_id, timeout=timeout
        )
        if not result["known"]:
            return DeviceStatus(known=False)
        return DeviceStatus(
            known=True,
            signed_by_owner=result["signedByOwner"],
            cross_signing_verified=result["crossSigningVerified"],
            local_verified=result["localVerified"],
            is_verified=result["isVerified"],
        )

    async def push_actions(self, room_id: str, event_id: str) -> dict[str, Any]:
        """Element's push decision for a decrypted event: `notify`, `highlight` (a mention:
        what `@room` would trigger), the `rule_id` that matched, the room's highlight count."""
        result: dict[str, Any] = await self._call(
            "push_actions", room_id=room_id, event_id=event_id
        )
        return result

    async def messages(self, room_id: str) -> list[ElementEvent]:
        result = await self._call("messages", room_id=room_id)
        return [ElementEvent.from_json(e) for e in result["events"]]

    async def stop(self) -> None:
        if self._process.returncode is None and not self._reader.done():
            await self._call("stop")

    # -- protocol -------------------------------------------------------------

    async def _handshake(
        self, homeserver_url: str, user_id: str, password: str, isolation: Isolation
    ) -> None:
        config = {
            "homeserver": homeserver_url,
            "user_id": user_id,
            "password": password,
            "isolation": isolation,
        }
        self._write(config)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                ready = await self._ready
        except TimeoutError:
            raise ElementClientError(self._with_log("Element client did not start")) from None
        self.user_id, self.device_id = ready["user_id"], ready["device_id"]

    async def _call(self, cmd: str, own_timeout: float = 0.0, **args: Any) -> Any:
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._write({"id": request_id, "cmd": cmd, **args})
        try:
            async with asyncio.timeout(own_timeout + REPLY_MARGIN_S):
                return await future
        except TimeoutError:
            raise ElementClientError(self._with_log(f"no answer to {cmd}")) from None
        finally:
            self._pending.pop(request_id, None)

    def _write(self, message: dict[str, Any]) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(message).encode() + b"\n")

    async def _read(self) -> None:
        assert self._process.stdout is not None
        async for raw in self._process.stdout:
            message = json.loads(raw)
            if "event" in message:
                if message["event"] == "ready":
                    self._ready.set_result(message)
                else:
                    error = self._with_log(f"Element client failed: {message.get('error')}")
                    self._ready.set_exception(ElementClientError(error))
                continue
            future = self._pending.get(message.get("id"))
            if future is None or future.done():
                continue
            if message["ok"]:
                future.set_result(message["result"])
            else:
                future.set_exception(ElementClientError(message["error"]))
        gone = ElementClientError(self._with_log("Element client exited"))
        for future in [self._ready, *self._pending.values()]:
            if not future.done():
                future.set_exception(gone)

    def _with_log(self, message: str) -> str:
        try:
            tail = self._log_path.read_text(errors="replace").splitlines()[-40:]
        except OSError:
            tail = []
        return message + ("\n--- element client log (tail) ---\n" + "\n".join(tail) if tail else "")

    async def _close(self) -> None:
        with contextlib.suppress(ElementClientError, ConnectionError):
            await self.stop()
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            async with asyncio.timeout(10):
                await self._process.wait()
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
        await self._reader
        if not self._ready.done():
            self._ready.cancel()
