"""`aplus dev` as a person runs it: its own Synapse, the bot, the demo, Ctrl-C, run again.

The command runs as a real child process with its own homeserver on a free port (not
the session's). The test reads `dev-accounts.json` like a person reading the welcome
text, logs in as the demo aidant with a real E2EE client and asks the bot for the
form; Ctrl-C (SIGINT) must stop everything, Synapse included; a second run on the
same folder must resume the same homeserver URL and the same bot device. A run killed
with SIGKILL leaves its Synapse behind, which the next run must stop and replace.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
from pathlib import Path
from typing import Any

import nio
import yaml

from bot.devserver import GUARD_MODULE
from tests.support import matrix
from tests.support import process as proc
from tests.support.bot import count_from, next_reply, open_direct_chat, say

WELCOME_DONE = r"Ctrl-C pour tout arrêter"


def _accounts(data_dir: Path) -> dict[str, Any]:
    path = data_dir / "dev-accounts.json"
    # Passwords inside: readable by its owner only.
    assert path.stat().st_mode & 0o077 == 0, oct(path.stat().st_mode)
    facts: dict[str, Any] = json.loads(path.read_text())
    return facts


def _synapse_processes(data_dir: Path) -> list[int]:
    """PIDs of processes running the Synapse of this data folder (read from /proc)."""
    config = str((data_dir / "synapse" / "homeserver.yaml").resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if config.encode() in cmdline:
            found.append(int(entry.name))
    return found


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def _login(homeserver: str, user_id: str, password: str, store: Path) -> nio.AsyncClient:
    """A person's E2EE client (e.g. Element) logging in with the demo password."""
    store.mkdir(parents=True, exist_ok=True)
    client = nio.AsyncClient(
        homeserver,
        user_id,
        store_path=str(store),
        config=nio.AsyncClientConfig(
            encryption_enabled=True, store_sync_tokens=True, pickle_key=secrets.token_hex(16)
        ),
    )
    matrix.inbox(client)
    response = await client.login(password, device_name="Element de test")
    assert isinstance(response, nio.LoginResponse), response
    # Element cross-signs the devices of its user; the bot shares keys only with those.
    await matrix.cross_sign(client)
    await matrix.sync_once(client, timeout_ms=0, full_state=True)
    return client


async def _bot_devices(facts: dict[str, Any], data_dir: Path) -> list[str]:
    """The bot account's device IDs, as the demo homeserver's admin sees them."""
    admin_password = json.loads((data_dir / "secrets.json").read_text())["admin_password"]
    homeserver = facts["homeserver"]
    token, _ = await proc.password_login(homeserver, "synapse-admin", admin_password)
    try:
        devices = await proc.AdminApi(homeserver, token).devices(facts["bot"]["user_id"])
    finally:
        await proc.logout(homeserver, token)
    return sorted(d["device_id"] for d in devices)


async def _bot_is_server_admin(facts: dict[str, Any], data_dir: Path) -> bool:
    admin_password = json.loads((data_dir / "secrets.json").read_text())["admin_password"]
    homeserver = facts["homeserver"]
    token, _ = await proc.password_login(homeserver, "synapse-admin", admin_password)
    try:
        user = await proc.AdminApi(homeserver, token).get(
            f"/_synapse/admin/v2/users/{facts['bot']['user_id']}"
        )
    finally:
        await proc.logout(homeserver, token)
    return bool(user["admin"])


def _guard_of(data_dir: Path) -> dict[str, Any]:
    """The guard module's config in the demo's homeserver.yaml."""
    config = yaml.safe_load((data_dir / "synapse" / "homeserver.yaml").read_text())
    [module] = [m for m in config["modules"] if m["module"] == GUARD_MODULE]
    guard: dict[str, Any] = module["config"]
    return guard


async def test_aplus_dev_serves_the_demo_stops_on_ctrl_c_and_resumes(tmp_path: Path) -> None:
    data_dir = tmp_path / "dev"
    first = proc.AplusProcess(["dev", "--data-dir", str(data_dir)], tmp_path / "logs", name="dev")
    second = proc.AplusProcess(["dev", "--data-dir", str(data_dir)], tmp_path / "logs", name="dev")
    third = proc.AplusProcess(["dev", "--data-dir", str(data_dir)], tmp_path / "logs", name="dev")
    aidant: nio.AsyncClient | None = None
    with proc.killed_at_exit(first, second, third):
        try:
            first.start()
            await first.wait_file(data_dir / "dev-accounts.json", timeout=120)
            await first.wait_output(WELCOME_DONE, timeout=30)
            facts = _accounts(data_dir)
            homeserver = facts["homeserver"]
            assert homeserver.startswith("http://127.0.0.1:"), homeserver
            bot_id = facts["bot"]["user_id"]
            # The admin room, created at start with the demo operator invited.
            assert facts["admin_room"].startswith("!"), facts
            users = facts["users"]
            for user in users:
                assert {"email", "password", "role", "group"} <= user.keys(), user
            email_only = [u for u in users if not u.get("user_id")]
            assert email_only and all(u["password"] is None for u in email_only)
            [demo_aidant] = [u for u in users if u["role"] == "aidant"]
            assert demo_aidant["user_id"] and demo_aidant["password"]

            devices = await _bot_devices(facts, data_dir)
            assert len(devices) == 1, devices
            # The production design: Synapse loads the guard, which names this bot, and
            # the bot is an ordinary account (a server admin would skip the guard).
            assert await _bot_is_server_admin(facts, data_dir) is False
            assert _guard_of(data_dir)["bot_user_id"] == bot_id

            aidant = await _login(
                homeserver, demo_aidant["user_id"], demo_aidant["password"], tmp_path / "element"
            )
            # `aplus dev` gave the bot its cross-signing identity: Element sees its device
            # as signed by its owner.
            [bot_device] = await matrix.published_devices(aidant, bot_id)
            assert bot_device.device_id == devices[0] and bot_device.cross_signed
            dm = await open_direct_chat(aidant, bot_id)
            await say(aidant, dm, "!demande")
            form = await next_reply(aidant, dm, bot_id, after=0)
            assert "territoire" in form and "J'atteste avoir recueilli" in form, form

            port = int(homeserver.rsplit(":", 1)[1])
            assert _synapse_processes(data_dir)
            assert await first.stop(signal.SIGINT) == 0, first.describe()
            assert "Arrêt demandé" in first.output()
            assert not _synapse_processes(data_dir)
            assert not _listening(port)

            # Run again on the same folder: same accounts, same homeserver, same bot device.
            second.start()
            await second.wait_output(WELCOME_DONE, timeout=120)
            again = _accounts(data_dir)
            assert again["homeserver"] == homeserver
            assert again["admin_room"] == facts["admin_room"]  # kept, not created again
            assert again["bot"]["user_id"] == bot_id
            assert await _bot_devices(again, data_dir) == devices

            # The restarted bot still answers in the direct chat of the first run.
            before = count_from(aidant, dm, bot_id)
            await say(aidant, dm, "!aide")
            assert "!demande" in await next_reply(aidant, dm, bot_id, after=before)

            # Killed without a chance to clean up: its Synapse (own session) survives...
            [orphan] = _synapse_processes(data_dir)
            second.send(signal.SIGKILL)
            assert await second.wait_exit() == -signal.SIGKILL
            assert _synapse_processes(data_dir) == [orphan]

            # ... until the next run, which stops it and takes its place on the same URL.
            third.start()
            await third.wait_output(WELCOME_DONE, timeout=120)
            assert _accounts(data_dir)["homeserver"] == homeserver
            [synapse] = _synapse_processes(data_dir)
            assert synapse != orphan
            assert await _bot_devices(facts, data_dir) == devices

            # A second demo on the same folder while this one runs: refused, nothing touched.
            twice = await proc.run_aplus_async("dev", "--data-dir", str(data_dir), timeout=60)
            assert twice.returncode != 0, twice
            assert "tourne déjà" in twice.stderr, twice
            assert _synapse_processes(data_dir) == [synapse]

            # Closing the terminal (SIGHUP) stops everything too.
            assert await third.stop(signal.SIGHUP) == 0, third.describe()
            assert not _synapse_processes(data_dir)
            assert not _listening(port)
        finally:
            if aidant is not None:
                await matrix.close_client(aidant)
            for pid in _synapse_processes(data_dir):  # only if the test failed midway
                os.killpg(pid, signal.SIGTERM)
