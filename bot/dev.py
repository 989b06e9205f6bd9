"""`aplus dev`: the whole product on this machine, nothing to configure.

A local Synapse (SQLite, loopback only), the bot on SQLite, a demo directory.
Every secret is generated once into the data directory (mode 0600) and reused,
so a second run resumes the same accounts, rooms and bot device.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.devserver import (
    DevServerError,
    LocalSynapse,
    ensure_guard_secret,
    free_port,
    guard_module,
    port_is_free,
)
from bot.domain.model import Role
from bot.settings import Settings
from bot.store.crypto import FieldCipher
from bot.store.db import Store
from bridge.devsink import MailFolderSink

if TYPE_CHECKING:
    from bot.app import App

log = logging.getLogger(__name__)

BOT_LOCALPART = "aplus"
DEV_SERVER_NAME = "localhost"
GUARD_SECRET_FILE = "guard_shared_secret"  # noqa: S105 (a file name)
GUARD_PORT_FILE = "guard_port"
ADMIN_LOCALPART = "synapse-admin"
RETENTION_DEVICE = "APLUS-RETENTION"
EMAIL_DEMO_DOMAIN = "caf95.demo.aplus.test"
SYNAPSE_PID_FILE = "synapse.pid"
LEFTOVER_STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class DemoGroup:
    name: str
    organisation_id: str
    departements: frozenset[str]
    bal: str | None = None


@dataclass(frozen=True)
class DemoAgent:
    localpart: str | None  # None: email-only
    first_name: str
    last_name: str
    email: str
    roles: frozenset[Role]
    group: str | None


DEMO_GROUPS = (
    DemoGroup("France services Cergy", "france_services", frozenset({"95"})),
    DemoGroup("CAF 95", "caf", frozenset({"95"}), bal="bal@" + EMAIL_DEMO_DOMAIN),
    DemoGroup("CPAM 95", "cpam", frozenset({"95"})),
)

DEMO_AGENTS = (
    DemoAgent(
        "camille",
        "Camille",
        "Martin",
        "camille.martin@fs-cergy.demo.aplus.test",
        frozenset({Role.AIDANT}),
        "France services Cergy",
    ),
    DemoAgent(
        "marie",
        "Marie",
        "Durand",
        "marie.durand@caf95.demo.aplus.test",
        frozenset({Role.INSTRUCTEUR}),
        "CAF 95",
    ),
    DemoAgent(
        "karim",
        "Karim",
        "Benali",
        "karim.benali@caf95.demo.aplus.test",
        frozenset({Role.INSTRUCTEUR, Role.RESPONSABLE}),
        "CAF 95",
    ),
    DemoAgent(
        None,
        "Sophie",
        "Petit",
        "sophie.petit@" + EMAIL_DEMO_DOMAIN,
        frozenset({Role.INSTRUCTEUR}),
        "CAF 95",
    ),
    DemoAgent(
        "lucas",
        "Lucas",
        "Moreau",
        "lucas.moreau@cpam95.demo.aplus.test",
        frozenset({Role.INSTRUCTEUR}),
        "CPAM 95",
    ),
    DemoAgent(
        "olivier",
        "Olivier",
        "Leroy",
        "olivier.leroy@anct.demo.aplus.test",
        frozenset({Role.OPERATEUR}),
        None,
    ),
)


def _load_or_create_secrets(path: Path) -> dict[str, Any]:
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    data = {
        "APLUS_DATA_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "APLUS_PICKLE_KEY": secrets.token_urlsafe(32),
        "APLUS_BOT_PASSWORD": secrets.token_urlsafe(24),
        "admin_password": secrets.token_urlsafe(24),
        # Readable demo passwords: a person types them into Element.
        "users": {a.localpart: f"demo-{secrets.token_hex(4)}" for a in DEMO_AGENTS if a.localpart},
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    return data


async def prepare(
    data_dir: Path, *, database_url: str | None = None, guard_ports: int = 1
) -> tuple[LocalSynapse, Settings, dict[str, Any]]:
    """Start Synapse, create accounts and the demo directory; returns what `aplus dev` runs.

    `database_url`: the bot's database (else SQLite in the data folder). `guard_ports`:
    how many bot processes the guard module asks (`aplus dev --standby`: two, each its
    own port, `settings.guard.port` the first; `facts["guard_ports"]` lists them all).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    secret_values = _load_or_create_secrets(data_dir / "secrets.json")
    # Loopback-only demo with generated passwords: cheap password hashing makes every
    # start (seven accounts registered or logged in again) seconds faster.
    # The production design: Synapse loads the guard module, which asks the bot's
    # membership endpoint about every invite and join in a demande room.
    guard_secret = ensure_guard_secret(data_dir / GUARD_SECRET_FILE)
    ports = [_guard_port(data_dir, n) for n in range(guard_ports)]
    guard_port = ports[0]
    synapse = LocalSynapse(
        data_dir / "synapse",
        fast_hashing=True,
        server_name=DEV_SERVER_NAME,
        modules=[
            guard_module(
                bot_user_id=f"@{BOT_LOCALPART}:{DEV_SERVER_NAME}",
                api_urls=[f"http://127.0.0.1:{port}" for port in ports],
                shared_secret_path=guard_secret,
            )
        ],
    )
    await _stop_leftover_synapse(synapse.data_dir)
    await synapse.start()
    _remember_synapse(synapse)
    try:
        admin = await synapse.register(ADMIN_LOCALPART, secret_values["admin_password"], admin=True)
        bot = await synapse.register(
            BOT_LOCALPART, secret_values["APLUS_BOT_PASSWORD"], displayname="Administration+"
        )
        if bot.user_id != f"@{BOT_LOCALPART}:{DEV_SERVER_NAME}":
            # The guard module names the bot: with another ID it would guard nothing.
            raise DevServerError(f"Le compte du bot est {bot.user_id}, pas celui du module.")
        # Registration (or, on a later run, its fallback login) opened a session with a
        # device of its own: the bot must keep the one device it logs in with itself.
        await _logout(synapse, bot.access_token)
        # The bot talks a lot in bursts (room creation, invitations): no rate limit for it.
        await synapse.admin_request(
            "POST",
            f"/_synapse/admin/v1/users/{bot.user_id}/override_ratelimit",
            admin.access_token,
            json={"messages_per_second": 0, "burst_count": 0},
        )
        users: list[dict[str, Any]] = []
        for agent in DEMO_AGENTS:
            entry: dict[str, Any] = {
                "email": agent.email,
                "role": sorted(r.value for r in agent.roles)[0]
                if len(agent.roles) == 1
                else "+".join(sorted(r.value for r in agent.roles)),
                "roles": sorted(r.value for r in agent.roles),
                "group": agent.group,
                "name": f"{agent.first_name} {agent.last_name}",
            }
            if agent.localpart:
                password = secret_values["users"][agent.localpart]
                registered = await synapse.register(
                    agent.localpart, password, displayname=f"{agent.first_name} {agent.last_name}"
                )
                # A person logs in from Element: no leftover device from the set-up.
                await _logout(synapse, registered.access_token)
                entry["user_id"] = registered.user_id
                entry["password"] = password
            else:
                entry["password"] = None
            users.append(entry)
        await _logout(synapse, admin.access_token)
        # The retention job purges rooms and media through the Synapse admin API: the
        # demo gives it a session of the admin account on one fixed device, reused.
        retention = await synapse.login(
            ADMIN_LOCALPART, secret_values["admin_password"], device_id=RETENTION_DEVICE
        )
        settings = Settings.for_dev(
            data_dir,
            synapse.base_url,
            synapse.server_name,
            bot.user_id,
            {
                **{k: v for k, v in secret_values.items() if k.startswith("APLUS_")},
                "APLUS_SYNAPSE_ADMIN_TOKEN": retention.access_token,
                **({"APLUS_DATABASE_URL": database_url} if database_url else {}),
            },
            # The email bridge on loopback; run_dev points its relay at the mail folder.
            email={},
            guard={"port": guard_port, "shared_secret_file": str(guard_secret)},
        )
        await _import_demo_directory(settings, synapse.server_name)
    except BaseException:
        # Synapse runs in its own session: whatever failed, nobody else would stop it.
        await synapse.stop()
        (synapse.data_dir / SYNAPSE_PID_FILE).unlink(missing_ok=True)
        raise
    facts = {
        "homeserver": synapse.base_url,
        "bot": {"user_id": bot.user_id},
        "users": users,
        "guard_ports": ports,
    }
    return synapse, settings, facts


def _guard_port(data_dir: Path, n: int = 0) -> int:
    """The membership endpoint's port (of the `n`th bot process), kept across runs
    (Synapse's config names it)."""
    return kept_port(data_dir / (GUARD_PORT_FILE if n == 0 else f"{GUARD_PORT_FILE}_{n + 1}"))


def kept_port(path: Path) -> int:
    """A loopback port written in `path`, kept across runs while it is free."""
    try:
        port = int(path.read_text().strip())
    except (OSError, ValueError):
        port = 0
    if not port or not port_is_free(port):
        port = free_port()
        path.write_text(f"{port}\n")
    return port


def _remember_synapse(synapse: LocalSynapse) -> None:
    process = synapse._process  # the child LocalSynapse started; it has no public pid
    if process is not None:
        # Synapse's PID, then ours: the owner tells a leftover from a running demo.
        (synapse.data_dir / SYNAPSE_PID_FILE).write_text(f"{process.pid} {os.getpid()}\n")


async def _stop_leftover_synapse(synapse_dir: Path) -> None:
    """Stop the Synapse of a previous `aplus dev` that died without cleaning up (kill -9).

    Synapse runs in its own session, so it outlives such a death. Left alone, it keeps
    the port (the new run would move to another URL) and the SQLite database, which a
    second Synapse must never open at the same time.
    """
    pid_file = synapse_dir / SYNAPSE_PID_FILE
    try:
        pid, owner = (int(n) for n in pid_file.read_text().split())
    except (OSError, ValueError):
        return
    if _runs_synapse_of(pid, synapse_dir) and _runs_aplus_dev(owner):
        raise SystemExit(
            f"Une démonstration tourne déjà sur ce dossier ({synapse_dir.parent}, "
            f"processus {owner}) : arrêtez-la (Ctrl-C) ou choisissez un autre --data-dir."
        )
    if _runs_synapse_of(pid, synapse_dir):
        log.warning("a previous Synapse of this folder is still running (pid %d): stopping it", pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)  # it leads its own process group
        deadline = time.monotonic() + LEFTOVER_STOP_TIMEOUT_S
        while _runs_synapse_of(pid, synapse_dir):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                deadline = float("inf")
            await asyncio.sleep(0.1)
    pid_file.unlink(missing_ok=True)


def _runs_aplus_dev(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return pid != os.getpid() and b"dev" in cmdline


def _runs_synapse_of(pid: int, synapse_dir: Path) -> bool:
    """Whether `pid` is alive and runs this folder's Synapse (never a recycled PID's owner)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False  # gone, or no /proc to be sure: leave it alone
    return str(synapse_dir / "homeserver.yaml").encode() in cmdline


async def _logout(synapse: LocalSynapse, access_token: str) -> None:
    """End a set-up session; logging out deletes its device."""
    response = await synapse.admin_request("POST", "/_matrix/client/v3/logout", access_token, {})
    if not response.ok:
        log.warning("could not log a set-up session out (%s)", response.status)


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically: never briefly 0644, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


async def _import_demo_directory(settings: Settings, server_name: str) -> None:
    store = await Store.open(
        settings.database.url.reveal(), FieldCipher.from_secret(settings.secrets.data_key.reveal())
    )
    try:
        async with store.transaction() as tx:
            groups = {}
            for g in DEMO_GROUPS:
                groups[g.name] = await tx.upsert_group(
                    name=g.name,
                    organisation_id=g.organisation_id,
                    departements=g.departements,
                    bal=g.bal,
                )
            for a in DEMO_AGENTS:
                await tx.upsert_agent(
                    first_name=a.first_name,
                    last_name=a.last_name,
                    email=a.email,
                    matrix_id=f"@{a.localpart}:{server_name}" if a.localpart else None,
                    group_id=groups[a.group].id if a.group else None,
                    roles=a.roles,
                )
    finally:
        await store.close()


def print_welcome(facts: dict[str, Any], data_dir: Path, extra: list[str] | None = None) -> None:
    lines = [
        "",
        "Administration+ sur Matrix — démonstration locale",
        "",
        f"  Serveur Matrix (à saisir dans Element, « serveur d'accueil ») : {facts['homeserver']}",
        f"  Le service (bot) : {facts['bot']['user_id']}",
        "",
        "  Comptes de démonstration :",
    ]
    for u in facts["users"]:
        who = u.get("user_id") or f"{u['email']} (courriel uniquement)"
        pw = f"mot de passe : {u['password']}" if u.get("password") else "pas de compte Matrix"
        lines.append(
            f"    - {u['name']} ({u['role']}, {u['group'] or 'sans groupe'}) : {who} — {pw}"
        )
    lines += [
        "",
        "  Pour ouvrir une demande : connectez-vous comme aidant, démarrez une discussion",
        f"  directe chiffrée avec {facts['bot']['user_id']} et envoyez !demande.",
    ]
    lines += extra or []
    if "smtp_inbound" in facts:
        smtp = facts["smtp_inbound"]
        lines += [
            "",
            f"  Courriels envoyés (fichiers .eml) : {facts['mail_dir']}",
            f"  Pour répondre à la main : SMTP sur {smtp['host']}:{smtp['port']}, à l'adresse",
            "  Reply-To du courriel, depuis l'adresse de l'agent, avec l'en-tête",
            "  « Authentication-Results: aplus-dev; dmarc=pass header.from=<domaine de l'agent> ».",
        ]
    lines += [
        "",
        f"  Ces informations sont aussi dans {data_dir / 'dev-accounts.json'}.",
        "",
        "  Ctrl-C pour tout arrêter.",
        "",
    ]
    print("\n".join(lines), flush=True)


async def run_dev(data_dir: Path, make_app: Callable[[Settings], App]) -> None:
    """`make_app` is the composition root (`bot.app.App`), given by the command line."""
    data_dir = data_dir.resolve()
    if (data_dir / "standby").exists():
        raise SystemExit(
            f"{data_dir} est le dossier d'une démonstration à deux bots (PostgreSQL) : "
            "lancez « aplus dev --standby » ou choisissez un autre --data-dir."
        )
    # From the very start: Synapse runs in its own session, so if a signal killed us
    # during start-up nobody would stop it. Closing the terminal (SIGHUP) stops too.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    synapse, settings, facts = await prepare(data_dir)
    mail = MailFolderSink(data_dir / "mail")
    app: App | None = None
    try:
        # Outgoing mail is kept as .eml files; replies go to the bot's listener.
        await mail.start()
        app = make_app(replace(settings, email=replace(settings.email, relay_port=mail.port)))
        await app.start()
        if app.email is not None:
            host, port = app.email.address
            facts["smtp_inbound"] = {"host": host, "port": port}
            facts["mail_dir"] = str(mail.folder)
        # The admin room (created at start with the demo operator invited).
        facts["admin_room"] = app.admin.room.room_id
        if app.admin.server is not None:
            facts["health"] = f"http://127.0.0.1:{app.admin.server.port}/healthz"
        accounts = data_dir / "dev-accounts.json"
        write_private(accounts, json.dumps(facts, indent=2, ensure_ascii=False))
        print_welcome(facts, data_dir)
        runner = asyncio.create_task(app.run())
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        for task in (runner, waiter):
            task.cancel()
        for task in (runner, waiter):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if runner in done and runner.exception() is not None:
            raise runner.exception()  # type: ignore[misc]
        print("Arrêt demandé : le service s'arrête proprement.", flush=True)
    finally:
        if app is not None:
            await app.close()
        await mail.close()
        await synapse.stop()
        (synapse.data_dir / SYNAPSE_PID_FILE).unlink(missing_ok=True)
