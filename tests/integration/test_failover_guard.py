"""The standby answers the homeserver guard's membership questions from the database
(issue 14, item 4), while the active bot holds the lease: same answers as the active."""

from __future__ import annotations

import secrets
import signal
import socket
from pathlib import Path

import aiohttp
import pytest

from bot.devserver import LocalSynapse
from tests.integration.test_failover import _opened_and_idle, _opening_directory, _ready_demandes
from tests.support import bot as botsupport
from tests.support import failover as ha
from tests.support import matrix
from tests.support import process as proc
from tests.support.bot import next_reply, say

pytestmark = pytest.mark.postgres

CHECK = "/aplus-guard/v1/check"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _ask(port: int, secret: str, question: dict[str, str]) -> dict[str, object]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}) as http,
        http.post(f"http://127.0.0.1:{port}{CHECK}", json=question) as resp,
    ):
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert isinstance(body, dict)
        return body


async def test_the_standby_answers_the_guard_from_the_ledger(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path, postgres_url: str
) -> None:
    files = await proc.register_bot(synapse, tmp_path / "bot")
    ha.enable_ha(files, postgres_url)
    secret = secrets.token_urlsafe(32)
    proc.write_secret(files.root / "secrets" / "guard", secret)
    base = files.config.read_text()
    ports = [_free_port(), _free_port()]
    configs = []
    for name, port in zip(("principal", "secours"), ports, strict=True):
        config = files.root / f"{name}.toml"
        guard = f'\n[guard]\nenabled = true\nport = {port}\nshared_secret_file = "secrets/guard"\n'
        config.write_text(base + guard)
        configs.append(config)
    people = await _opening_directory(files, clients)
    aidant = people["aidant"]
    active, standby = (
        proc.AplusProcess(["run", "--config", str(c)], files.root / "logs", name="run")
        for c in configs
    )
    with proc.killed_at_exit(active, standby):
        active.start()
        await active.wait_log(r"lease acquired: epoch 1\b", 120)
        standby.start()
        await ha.standby_port(standby)
        dm = await botsupport.open_direct_chat(aidant, files.user_id)
        await say(aidant, dm, botsupport.filled_form())
        await next_reply(aidant, dm, files.user_id, after=0)
        await say(aidant, dm, "!confirmer")
        await matrix.wait_for(lambda: _opened_and_idle(postgres_url), 90, "the demande ready")
        [(_, room_id)] = await _ready_demandes(postgres_url)
        member = {"action": "join", "room_id": room_id, "user": people["instr1"].user_id}
        stranger = {"action": "join", "room_id": room_id, "user": "@intrus:localhost"}
        for port in ports:  # the active bot, then the standby: the same answers
            assert await _ask(port, secret, member) == {"allow": True}
            refused = await _ask(port, secret, stranger)
            assert refused["allow"] is False, refused
        assert "logged in as" not in standby.log()
        assert await standby.stop(signal.SIGTERM) == 0, standby.describe()
        assert await active.stop(signal.SIGTERM) == 0, active.describe()
