"""The listener's SMTP/LMTP server on the bot's loop, guarded before any command is read.

aiosmtpd speaks the protocol; this module decides who may speak it, and bounds what a
peer can make the bot hold:

* **Peers.** Only the addresses of ``listen_allowed_peers`` (the organisation's MTA;
  loopback by default) are served. Any other connection is answered ``554 5.7.1`` at
  connect and closed, with one log line naming the peer's address (an MTA's, or an
  intruder's: what an operator needs to fix a wrong setting).
* **Connections.** At most ``listen_max_connections`` at once (``421 4.7.0`` beyond,
  the MTA retries); an idle connection is closed after
  ``listen_idle_timeout_seconds`` (aiosmtpd's timeout, reset by each command).
* **Turns.** aiosmtpd reads DATA line by line without yielding while lines are
  buffered; its reader here yields to the loop every few dozen lines.
* **Lines.** aiosmtpd enforces ``max_message_bytes`` on the lines it completes, but
  keeps every fragment of a line that never ends (no CRLF): memory then grows with the
  bytes sent. Here a DATA line longer than `MAX_UNTERMINATED_BYTES` closes the
  connection (``421 4.7.0``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

from bot.settings import EmailSettings
from bridge.smtp_codes import SmtpReply

__all__ = ["MAX_UNTERMINATED_BYTES", "Gate", "listening_address", "start_listener"]

log = logging.getLogger(__name__)

# Far above the 1,000 bytes a mail line may have (RFC 5321 4.5.3.1.6), far below memory.
MAX_UNTERMINATED_BYTES = 64 * 1024
_LOG_EVERY_S = 60.0
_LINES_PER_TURN = 64

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Gate:
    """Who may connect, and how many at once (shared by every connection of a listener)."""

    def __init__(self, allowed: Sequence[str], max_connections: int) -> None:
        self.networks: list[Network] = [ipaddress.ip_network(p, strict=False) for p in allowed]
        self.max_connections = max_connections
        self.open = 0
        self.refused = 0
        self._last_log: dict[str, float] = {}

    def allows(self, peer: Any) -> bool:
        if not isinstance(peer, tuple) or not peer:
            return True  # a Unix socket: its file's permissions guard it
        try:
            ip = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def entered(self) -> None:
        self.open += 1

    def left(self) -> None:
        self.open -= 1

    def refusal(self, peer: Any) -> SmtpReply | None:
        """Why a new connection from `peer` is refused, or None (then it is counted)."""
        if not self.allows(peer):
            self._log(
                "peer",
                "email listener: connection from %s refused: not in listen_allowed_peers",
                _host(peer),
            )
            return SmtpReply.PEER_NOT_ALLOWED
        if self.open >= self.max_connections:
            self._log(
                "busy",
                "email listener: connection from %s refused: %d open (listen_max_connections)",
                _host(peer),
                self.open,
            )
            return SmtpReply.TOO_MANY_CONNECTIONS
        return None

    def _log(self, reason: str, message: str, *args: Any) -> None:
        """One line per reason and minute at most: a flood does not flood the log."""
        self.refused += 1
        now = time.monotonic()
        if now - self._last_log.get(reason, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._last_log[reason] = now
            log.warning(message + " (%d refused so far)", *args, self.refused)


def _host(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else "a local socket"


class _Yielding:
    """aiosmtpd's reader, giving the loop a turn every `_LINES_PER_TURN` lines.

    aiosmtpd reads DATA a line at a time, and a buffered line comes back without the
    loop running: a large chunk from the peer (loopback sends them) meant tens of
    thousands of lines, hundreds of milliseconds, with every other task of the bot
    waiting.
    """

    def __init__(self, inner: asyncio.StreamReader) -> None:
        self._inner = inner
        self._lines = 0

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        self._lines += 1
        if self._lines % _LINES_PER_TURN == 0:
            await asyncio.sleep(0)
        return await self._inner.readuntil(separator)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def guarded(base: type[SMTP]) -> type[SMTP]:
    """`base` (aiosmtpd's SMTP or LMTP) behind a `Gate`, with DATA lines bounded."""

    class Guarded(base):  # type: ignore[valid-type,misc]
        def __init__(self, handler: Any, *, gate: Gate, **kwargs: Any) -> None:
            super().__init__(handler, **kwargs)
            self._gate = gate
            self._refused = False
            self._counted = False
            self._in_data = False
            self._unterminated = 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            if self._counted:  # STARTTLS re-enters here: same connection
                super().connection_made(transport)
                return
            refusal = self._gate.refusal(transport.get_extra_info("peername"))
            if refusal is not None:
                self._refused = True
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(f"{refusal}\r\n".encode("ascii"))
                transport.close()
                return
            self._gate.entered()
            self._counted = True
            super().connection_made(transport)
            # The session task, created above, reads `self._reader` once it starts.
            reader: asyncio.StreamReader = self._reader  # type: ignore[has-type]
            self._reader = _Yielding(reader)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._refused:
                return
            if self._counted:
                self._counted = False
                self._gate.left()
            super().connection_lost(exc)

        def eof_received(self) -> bool | None:
            if self._refused:
                return False
            result: bool | None = super().eof_received()
            return result

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._in_data:
                newline = data.rfind(b"\n")
                if newline >= 0:
                    self._unterminated = len(data) - newline - 1
                else:
                    self._unterminated += len(data)
                if self._unterminated > MAX_UNTERMINATED_BYTES:
                    self._cut()
                    return
            super().data_received(data)

        def _cut(self) -> None:
            log.warning(
                "email listener: a DATA line from %s passed %d bytes without CRLF: closed",
                _host(self.transport.get_extra_info("peername") if self.transport else None),
                MAX_UNTERMINATED_BYTES,
            )
            self._in_data = False
            if isinstance(self.transport, asyncio.WriteTransport):
                self.transport.write(f"{SmtpReply.LINE_TOO_LONG}\r\n".encode("ascii"))
            if self.transport is not None:
                self.transport.close()

        async def smtp_DATA(self, arg: str) -> None:
            self._in_data, self._unterminated = True, 0
            try:
                await super().smtp_DATA(arg)
            finally:
                self._in_data = False

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded


_GUARDED: dict[str, Callable[..., SMTP]] = {"smtp": guarded(SMTP), "lmtp": guarded(LMTP)}


async def start_listener(handler: Any, settings: EmailSettings) -> asyncio.Server:
    """The SMTP (or LMTP) server, on the running loop. ``listen_port = 0``: a free port."""
    loop = asyncio.get_running_loop()
    protocol = _GUARDED["lmtp" if settings.listen_protocol == "lmtp" else "smtp"]
    gate = Gate(settings.listen_allowed_peers, settings.listen_max_connections)

    def factory() -> SMTP:
        return protocol(
            handler,
            gate=gate,
            data_size_limit=settings.max_message_bytes,
            enable_SMTPUTF8=False,
            hostname=settings.reply_domain,
            ident="Administration+",
            timeout=settings.listen_idle_timeout_seconds,
            loop=loop,
        )

    server = await loop.create_server(factory, host=settings.listen_host, port=settings.listen_port)
    address = server.sockets[0].getsockname()
    log.info("email listener (%s) on %s:%s", settings.listen_protocol, address[0], address[1])
    return server


def listening_address(server: asyncio.Server) -> tuple[str, int]:
    host, port = server.sockets[0].getsockname()[:2]
    return str(host), int(port)
