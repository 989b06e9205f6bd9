"""The demo's relay (`aplus dev`): an SMTP server on loopback that keeps every
message it is given as an ``.eml`` file, readable by the owner only, in a folder.

A person opens those files with any mail client, and answers them by hand to
the bot's listener (its address is in ``dev-accounts.json``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP


class MailFolderSink:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._server: asyncio.Server | None = None
        self._serial = itertools.count(1)

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> MailFolderSink:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self, hostname="relais.aplus.test", loop=loop), host, port
        )
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        rcpt = "".join(c if c.isalnum() or c in ".-" else "_" for c in envelope.rcpt_tos[0])
        path = self.folder / f"{stamp}-{next(self._serial):04d}-{rcpt[:60]}.eml"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"X-Aplus-Dev-Envelope-To: " + ", ".join(envelope.rcpt_tos).encode() + b"\r\n")
            fh.write(bytes(envelope.original_content))
        os.replace(tmp, path)
        return "250 2.0.0 Kept in the demo mail folder"
