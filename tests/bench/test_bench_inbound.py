"""What a hostile mail to a live reply address costs the bot: CPU, and its event loop's lag.

Run: `.venv/bin/pytest -s -p no:cacheprovider tests/bench/test_bench_inbound.py`
(a minute or two after the fix; several minutes on a listener that parses everything).

The real bot with the email bridge on, its real listener, a real SMTP client on loopback.
The mail is the one of the security review (finding M4): 1.4 MB, 40,000 empty MIME parts,
From someone who is not the address's agent, not authenticated, sent to a live reply
address (an attacker who read one in a mail or a log). Figures printed:

* CPU seconds of the bot's whole process (`time.process_time`, all threads) from the
  client's connection to the listener's answer, for one such mail (the client is another
  process);
* the lag of a 10 ms ticker on the bot's loop (how late each tick wakes, max and p99)
  while four of them arrive at once, next to the same ticker on an idle bot.

It reports, it does not judge: no target, nothing asserted on times. What fails it is a
wrong answer from the listener (anything but a refusal).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from bot.devserver import LocalSynapse
from tests.bench.conftest import machine, report, table
from tests.support import matrix
from tests.support.email import email_bot, listener, mailonly, relay
from tests.support.smtp import reply_to
from tests.support.world import make_world, open_demande

PARTS = 40_000
TICK_S = 0.010


def hostile_mail(parts: int = PARTS) -> bytes:
    head = (
        b"From: pirate@attaquant.example\r\nTo: x@y\r\nSubject: x\r\n"
        b"Message-ID: <m@attaquant.example>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    )
    return head + b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" * parts + b"--b--\r\n"


# The attacker's client, in a process of its own as in reality: its own work (line
# endings, dot-stuffing of 1.4 MB) must not count in the bot's CPU or loop lag.
_CLIENT = """
import smtplib, sys
host, port, rcpt, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
data = open(path, "rb").read()
try:
    with smtplib.SMTP(host, port, timeout=900) as smtp:
        smtp.sendmail("pirate@attaquant.example", [rcpt], data)
    print(250)
except smtplib.SMTPRecipientsRefused as exc:
    print(list(exc.recipients.values())[0][0])
except smtplib.SMTPResponseException as exc:
    print(exc.smtp_code)
"""


async def deliver(host: str, port: int, rcpt: str, path: Path) -> int:
    """One SMTP transaction from another process; the final code. Waits long: a listener
    that parses everything takes minutes for four of these."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CLIENT, host, str(port), rcpt, str(path),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 900)
    return int(out.decode().strip() or 0)


async def ticker(stop: asyncio.Event, lags: list[float]) -> None:
    loop = asyncio.get_running_loop()
    due = loop.time() + TICK_S
    while not stop.is_set():
        await asyncio.sleep(max(0.0, due - loop.time()))
        now = loop.time()
        lags.append(max(0.0, now - due))
        due = now + TICK_S


def lag_row(name: str, lags: list[float], seconds: float) -> list[str]:
    ordered = sorted(lags)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    ideal = int(seconds / TICK_S)
    return [
        name,
        f"{seconds:.1f}",
        f"{len(lags)} / {ideal}",
        f"{p99 * 1000:.1f}",
        f"{max(lags) * 1000:.1f}",
    ]


@pytest.mark.timeout(1800)  # a listener that parses everything: minutes
async def test_hostile_mail_cpu_and_loop_lag(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    report(f"\n{machine()}")
    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        await runner.start()
        world = await make_world(clients, runner)
        sophie = mailonly(world)
        await open_demande(world)
        await sink.wait_for(lambda: sink.to(sophie), what="the dossier email")
        address = reply_to(sink.to(sophie)[0])
        host, port = listener(runner)
        data = hostile_mail()
        path = tmp_path / "hostile.eml"
        path.write_bytes(data)
        report(f"mail: {len(data) / 1e6:.2f} MB, {PARTS} parts, to a live reply address")

        # Idle reference: the same ticker, nothing arriving.
        stop, idle = asyncio.Event(), []
        task = asyncio.create_task(ticker(stop, idle))
        await asyncio.sleep(3.0)
        stop.set()
        await task

        # One mail: CPU of the whole process, wall time.
        cpu0, wall0 = time.process_time(), time.perf_counter()
        code = await deliver(host, port, address, path)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        assert 500 <= code < 600 or code == 421, code
        report(f"one mail: answered {code}, CPU {cpu:.2f} s, wall {wall:.2f} s")

        # Four at once, the ticker running.
        stop, busy = asyncio.Event(), []
        task = asyncio.create_task(ticker(stop, busy))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        codes = await asyncio.gather(*(deliver(host, port, address, path) for _ in range(4)))
        cpu4, wall4 = time.process_time() - cpu0, time.perf_counter() - wall0
        stop.set()
        await task
        assert all(500 <= c < 600 or c == 421 for c in codes), codes
        report(f"four at once: answered {codes}, CPU {cpu4:.2f} s, wall {wall4:.2f} s")
        report(
            table(
                "event-loop lag of a 10 ms ticker (ms)",
                ["while", "seconds", "ticks / ideal", "p99", "max"],
                [lag_row("idle", idle, 3.0), lag_row("4 hostile mails", busy, wall4)],
            )
        )
        await runner.check_alive()
