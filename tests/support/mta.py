"""The mail gateway of deploy/ run natively: dnsmasq, rspamd and Postfix on private ports.

Each daemon gets its own directories and ports on loopback and is started directly (no
systemd here): `postfix -c DIR start`, `rspamd -f -c /etc/rspamd/rspamd.conf --var=...`,
`dnsmasq --keep-in-foreground ...`. Nothing touches the system's port 25, /etc/postfix,
/etc/rspamd or /etc/resolv.conf: rspamd asks the private dnsmasq (its rendered
``dns.nameserver``), which answers only the test zones' TXT records (DKIM, DMARC).

`Sink` is the rest of the Internet for the gateway's outgoing mail (Postfix's relayhost):
an aiosmtpd server in its own thread, alive for the whole module, so that Postfix never
finds it down between tests. `swaks` injects mail from 127.0.0.2, an address outside the
gateway's ``mynetworks``: "the Internet".
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import dkim
import dns.message
import dns.query
import dns.rdatatype
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

OUTSIDE = "127.0.0.2"  # the Internet, as far as the gateway can tell
# rspamd compiles its regular expressions (hyperscan) at its first start: ~35 s on this
# 2-core machine, ~3 s with the compiled files. They are kept here between runs (copied
# in and out, never shared live); a cold cache only costs time.
HS_CACHE = Path("/var/tmp/aplus-tests-rspamd-hs")
_HS_SUFFIXES = tuple(
    f".{kind}{unser}" for kind in ("hs", "hsmc", "hsmp") for unser in ("", ".unser")
)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll until `predicate()` is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout} s for {what}")
        time.sleep(0.1)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


# --------------------------------------------------------------------------- DKIM


@dataclass
class DkimKey:
    domain: str
    selector: str
    private_pem: bytes
    public_b64: str

    @classmethod
    def generate(cls, domain: str, selector: str = "s2026") -> DkimKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(domain, selector, pem, base64.b64encode(der).decode())

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def record(self) -> str:
        return f"v=DKIM1; k=rsa; p={self.public_b64}"

    def sign(self, message: bytes) -> bytes:
        """`message` with a DKIM-Signature of this key on top (relaxed/relaxed)."""
        signature = dkim.sign(
            message,
            self.selector.encode(),
            self.domain.encode(),
            self.private_pem,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id", b"in-reply-to"],
        )
        return signature + message


# --------------------------------------------------------------------------- DNS


@dataclass
class Dns:
    """dnsmasq answering TXT records of the test zones (and NXDOMAIN for the rest of .test)."""

    base: Path
    port: int
    txt: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Dns:
        args = [
            "/usr/sbin/dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--local=/test/",
            f"--pid-file={self.base / 'dnsmasq.pid'}",
            "--user=nobody",
            "--group=nogroup",
            "--log-queries",
            f"--log-facility={self.base / 'dnsmasq.log'}",
        ]
        for name, text in self.txt.items():
            # TXT character-strings are at most 255 bytes: a DKIM key is several.
            chunks = [text[i : i + 250] for i in range(0, len(text), 250)]
            # No shell here: quotes would end up in the record. Commas separate strings.
            assert "," not in text and '"' not in text, text
            args.append(f"--txt-record={name}," + ",".join(chunks))
        self.process = subprocess.Popen(args, stderr=subprocess.PIPE)
        first = next(iter(self.txt))
        wait_until(lambda: self.query_txt(first, 0.2) or self._dead(), 10, "dnsmasq")
        return self

    def _dead(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"dnsmasq exited: {self.process.stderr.read()!r}")  # type: ignore[union-attr]
        return False

    def query_txt(self, name: str, timeout: float = 2) -> list[bytes]:
        query = dns.message.make_query(name, dns.rdatatype.TXT)
        try:
            answer = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=timeout)
        except (OSError, dns.exception.Timeout):
            return []
        return [b"".join(r.strings) for rrset in answer.answer for r in rrset]

    def dkim_dns(self, name: bytes, timeout: int = 5) -> bytes | None:
        """The `dnsfunc` of dkimpy, against this server."""
        records = self.query_txt(name.decode().rstrip("."))
        return records[0] if records else None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()


# --------------------------------------------------------------------------- rspamd


@dataclass
class Rspamd:
    """rspamd with Debian's /etc/rspamd/rspamd.conf and the rendered local.d/override.d."""

    rendered: Path  # the rendered deploy/rspamd directory
    base: Path
    milter_port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Rspamd:
        for sub in ("db", "run", "log"):
            path = self.base / sub
            path.mkdir(parents=True, exist_ok=True)
            shutil.chown(path, "_rspamd", "_rspamd")
        if HS_CACHE.is_dir():
            for cached in HS_CACHE.iterdir():
                if cached.name.endswith(_HS_SUFFIXES):
                    target = self.base / "db" / cached.name
                    shutil.copyfile(cached, target)
                    shutil.chown(target, "_rspamd", "_rspamd")
        args = [
            "/usr/bin/rspamd",
            "--no-fork",
            "-c",
            "/etc/rspamd/rspamd.conf",
            "-u",
            "_rspamd",
            "-g",
            "_rspamd",
            f"--var=LOCAL_CONFDIR={self.rendered}",
            f"--var=DBDIR={self.base / 'db'}",
            f"--var=RUNDIR={self.base / 'run'}",
            f"--var=LOGDIR={self.base / 'log'}",
        ]
        console = open(self.base / "console.log", "wb")  # noqa: SIM115 (kept for the process)
        self.process = subprocess.Popen(
            args, stdout=console, stderr=subprocess.STDOUT, start_new_session=True
        )
        # Its first start compiles its regular expressions: slow on a busy 2-core machine.
        wait_until(lambda: port_open(self.milter_port) or self._dead(), 240, "rspamd's milter")
        return self

    def _dead(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError("rspamd exited:\n" + self.log())
        return False

    def log(self) -> str:
        out = []
        for name in ("console.log", "log/rspamd.log"):
            path = self.base / name
            if path.exists():
                out.append(path.read_text(errors="replace")[-4000:])
        return "\n".join(out)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._save_hs_cache()

    def _save_hs_cache(self) -> None:
        with contextlib.suppress(OSError):
            HS_CACHE.mkdir(mode=0o755, exist_ok=True)
            for compiled in (self.base / "db").iterdir():
                if compiled.name.endswith(_HS_SUFFIXES) and not (HS_CACHE / compiled.name).exists():
                    partial = HS_CACHE / (compiled.name + f".{os.getpid()}.part")
                    shutil.copyfile(compiled, partial)
                    partial.rename(HS_CACHE / compiled.name)


# --------------------------------------------------------------------------- Postfix


@dataclass
class Postfix:
    """`postfix -c DIR`, with the rendered main.cf / master.cf and private directories."""

    config_dir: Path
    queue_dir: Path
    data_dir: Path
    maillog: Path
    mx_port: int

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, capture_output=True, text=True, timeout=60)

    def start(self) -> Postfix:
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data_dir, "postfix")
        self.maillog.parent.mkdir(parents=True, exist_ok=True)
        check = self.run("postfix", "-c", str(self.config_dir), "check")
        assert check.returncode == 0, check.stdout + check.stderr + self.log()
        started = self.run("postfix", "-c", str(self.config_dir), "start")
        assert started.returncode == 0, started.stdout + started.stderr + self.log()
        wait_until(lambda: port_open(self.mx_port), 30, "Postfix's MX port")
        return self

    def stop(self) -> None:
        self.run("postfix", "-c", str(self.config_dir), "stop")
        pid = self.queue_dir / "pid" / "master.pid"
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not pid.exists() or not _pid_alive(pid), 15, "postfix stop")

    def postconf(self, name: str) -> str:
        result = self.run("postconf", "-c", str(self.config_dir), "-h", name)
        return result.stdout.strip()

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    def log_since(self, mark: int) -> str:
        return self.log()[mark:]

    def mark(self) -> int:
        return len(self.log())

    def wait_log(self, pattern: str, mark: int, timeout: float = 60, count: int = 1) -> list[str]:
        regex = re.compile(pattern)

        def found() -> list[str]:
            lines = [line for line in self.log_since(mark).splitlines() if regex.search(line)]
            return lines if len(lines) >= count else []

        try:
            return list(wait_until(found, timeout, f"maillog: {pattern!r} x{count}"))
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n--- maillog ---\n{self.log_since(mark)[-5000:]}"
            ) from None

    def flush(self) -> None:
        self.run("postqueue", "-c", str(self.config_dir), "-f")

    def queue_empty(self) -> bool:
        result = self.run("postqueue", "-c", str(self.config_dir), "-j")
        return result.returncode == 0 and not result.stdout.strip()


def _pid_alive(pidfile: Path) -> bool:
    try:
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


# --------------------------------------------------------------------------- the Internet


@dataclass
class Delivered:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> Message:
        return BytesParser(policy=policy.default).parsebytes(self.data)


class Sink:
    """Everything the gateway sends out (its relayhost), in a thread of its own."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[Delivered] = []
        self._lock = threading.Lock()
        self._controller = Controller(self, hostname="127.0.0.1", port=port)

    def start(self) -> Sink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.messages.append(
                Delivered(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content))
            )
        return "250 2.0.0 Ok"

    def to(self, address: str) -> list[Delivered]:
        with self._lock:
            return [m for m in self.messages if address.lower() in map(str.lower, m.rcpt_tos)]


# --------------------------------------------------------------------------- injection


@dataclass
class SmtpResult:
    exit_code: int
    transcript: str

    @property
    def last_reply(self) -> str:
        """The last server reply line (`<-` or `<**`), e.g. "250 2.0.0 Ok: queued as X"."""
        lines = [ln for ln in self.transcript.splitlines() if ln.startswith(("<-", "<**"))]
        replies = [ln.split(None, 1)[1] for ln in lines if "221" not in ln.split(None, 2)[1]]
        return replies[-1] if replies else ""

    @property
    def code(self) -> int:
        match = re.match(r"(\d{3})", self.last_reply)
        return int(match.group(1)) if match else 0


async def swaks(
    server_port: int,
    message: bytes,
    *,
    mail_from: str,
    to: list[str],
    work: Path,
    helo: str = "mail.caf95.example.test",
    extra: list[str] | None = None,
) -> SmtpResult:
    """Inject `message` into the gateway's MX from 127.0.0.2, with swaks, asynchronously
    (the bot's listener runs on the calling event loop: the gateway asks it about the
    recipients while this session is open)."""
    import asyncio

    work.mkdir(parents=True, exist_ok=True)
    path = work / f"mail-{time.monotonic_ns()}.eml"
    path.write_bytes(message)
    args = [
        "swaks",
        "--server",
        f"127.0.0.1:{server_port}",
        "--local-interface",
        OUTSIDE,
        "--helo",
        helo,
        "--from",
        mail_from,
        "--to",
        ",".join(to),
        "--data",
        f"@{path}",
        "--timeout",
        "60",
        *(extra or []),
    ]
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    return SmtpResult(process.returncode or 0, out.decode(errors="replace"))


def as_bytes(message: EmailMessage) -> bytes:
    return message.as_bytes(policy=policy.SMTP)
