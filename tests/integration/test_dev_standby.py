"""`aplus dev --standby` as a person runs it to try a failover by hand (issue 14, item 6).

The command runs as a real child process, with its own homeserver and a fresh
PostgreSQL database: it starts two `aplus run` processes, one active and one standby,
and prints their PIDs and `/healthz` URLs (also in `dev-accounts.json`). The test reads
them like a person, asks each `/healthz`, SIGKILLs the active bot and sees the standby
take over, and the killed one started again as the standby (what systemd does).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.test_dev_command import WELCOME_DONE, _synapse_processes
from tests.support import matrix
from tests.support import process as proc

pytestmark = pytest.mark.postgres


def _bots(data_dir: Path) -> dict[str, Any]:
    path = data_dir / "dev-accounts.json"
    assert path.stat().st_mode & 0o077 == 0, oct(path.stat().st_mode)
    bots: dict[str, Any] = json.loads(path.read_text())["bots"]
    return bots


async def _status(url: str) -> str | None:
    """What a person's `curl URL` shows: the bot's role; None while it does not answer."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            http.get(url) as resp,
        ):
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError):
        return None
    return str(body["status"]) if isinstance(body, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not a running bot.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_aplus_dev_standby_two_bots_the_active_killed_the_other_takes_over(
    tmp_path: Path, postgres_url: str
) -> None:
    data_dir = tmp_path / "dev"
    dev = proc.AplusProcess(
        ["dev", "--standby", "--data-dir", str(data_dir), "--database-url", postgres_url],
        tmp_path / "logs",
        name="dev-standby",
    )
    pids: set[int] = set()
    with proc.killed_at_exit(dev):
        try:
            dev.start()
            await dev.wait_output(WELCOME_DONE, timeout=240)
            bots = _bots(data_dir)
            principal, secours = bots["principal"], bots["secours"]
            pids |= {principal["pid"], secours["pid"]}
            assert (principal["role"], secours["role"]) == ("actif", "secours"), bots
            assert principal["health"] != secours["health"]
            # The active bot's /healthz gives its checks; the standby's says `standby`.
            assert await _active(principal["health"])
            assert await _status(secours["health"]) == "standby"
            out = dev.output()
            for bot in (principal, secours):
                assert f"PID {bot['pid']}" in out and bot["health"] in out, out
            assert f"kill -9 {principal['pid']}" in out, out
            # Two processes of the product command, the same configuration but the ports.
            configs = [Path(b["config"]).read_text() for b in (principal, secours)]
            assert all("[ha]\nenabled = true" in c for c in configs), configs

            os.kill(principal["pid"], signal.SIGKILL)
            await matrix.wait_for(lambda: _active(secours["health"]), 90, "the standby active")
            # The killed one comes back, as the standby, on its own URL.
            await matrix.wait_for(
                lambda: _bots(data_dir)["principal"]["pid"] not in (None, principal["pid"]),
                60,
                "the killed bot started again",
            )
            again = _bots(data_dir)["principal"]["pid"]
            pids.add(again)
            await matrix.wait_for(
                lambda: _becomes(principal["health"], "standby"), 90, "the restarted bot standby"
            )
            assert not _alive(principal["pid"])
            assert _alive(again) and _alive(secours["pid"])
            await dev.wait_output(r"\[secours\] PID \d+ est maintenant ACTIF", 30)
            await dev.wait_output(rf"\[principal\] PID {again} attend comme secours", 30)
            assert "tué par SIGKILL" in dev.output()
            # The written files are whole production configurations (secrets in 0600
            # files): `aplus check` on either names the active bot, the former standby.
            report = await proc.run_aplus_async("check", "--config", principal["config"])
            [active] = [line for line in report.stdout.splitlines() if "bot actif :" in line]
            assert f"/{secours['pid']}/" in active and "(époque 2)" in active, report.stdout

            # Ctrl-C stops everything: both bots and Synapse.
            assert await dev.stop(signal.SIGINT) == 0, dev.describe()
            assert "Arrêt demandé" in dev.output()
            assert not any(_alive(pid) for pid in pids)
            assert not _synapse_processes(data_dir)
        except (AssertionError, matrix.WaitTimeout) as exc:
            raise AssertionError(f"{exc}\n{dev.describe()}{_bot_logs(data_dir)}") from exc
        finally:
            for pid in pids:  # only if the test failed midway
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            for pid in _synapse_processes(data_dir):
                os.killpg(pid, signal.SIGTERM)


async def _active(url: str) -> bool:
    """The active bot's /healthz: its checks (`ok`, or `en panne` while one fails)."""
    return await _status(url) not in (None, "standby")


async def _becomes(url: str, status: str) -> bool:
    return await _status(url) == status


def _bot_logs(data_dir: Path) -> str:
    """The end of each bot's log (`<data-dir>/logs/`), for a failure's message."""
    found = []
    for path in sorted((data_dir / "logs").glob("*.log")):
        lines = [
            line for line in path.read_text(errors="replace").splitlines() if " DEBUG " not in line
        ]
        found.append(f"\n--- {path.name} ---\n" + "\n".join(lines[-30:]))
    return "".join(found)
