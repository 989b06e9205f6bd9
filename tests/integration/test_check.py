"""`aplus check`: each check against the real thing, in a good and in a broken case.

The command itself runs as a child process (exit code, French output); the individual
checks are also called directly, against the session's Synapse, a bot that ran once,
its real database, real SMTP peers and the bot's real guard endpoint.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import signal
from pathlib import Path

import yaml

from bot.devserver import LocalSynapse
from bot.matrix.cross_signing import SEED_SECRET_NAME
from bot.services import checks
from bot.services.login import LOGIN_TOKEN
from bot.settings import Secret, Settings
from bot.store.crypto import FieldCipher
from bot.store.db import Store
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support import process as proc
from tests.support.smtp import RelaySink
from tests.support.world import make_world, open_demande

NO_HOMESERVER = "http://127.0.0.1:9"


def by_name(found: list[checks.Check], name: str) -> checks.Check:
    [one] = [c for c in found if c.name == name]
    return one


async def _bot_that_ran(synapse: LocalSynapse, root: Path) -> proc.BotFiles:
    """A production-style bot that started once (device, cross-signing, schema)."""
    files = await proc.register_bot(synapse, root)
    bot = proc.bot_process(files)
    with proc.killed_at_exit(bot):
        bot.start()
        await bot.wait_log("the service is ready", timeout=120)
        assert await bot.stop(signal.SIGTERM) == 0, bot.describe()
    return files


async def test_the_command_lists_what_to_fix_in_french_and_exits_non_zero(
    tmp_path: Path,
) -> None:
    files = proc.write_bot_config(
        tmp_path / "bot",
        homeserver=NO_HOMESERVER,
        server_name="localhost",
        user_id="@aplus:localhost",
        password="mot-de-passe-du-bot-en-test",
    )
    offline = await proc.run_aplus_async("check", "--config", str(files.config), "--offline")
    assert offline.returncode == 0, offline
    assert "configuration" in offline.stdout and "Tout est prêt" in offline.stdout

    online = await proc.run_aplus_async("check", "--config", str(files.config))
    assert online.returncode == 1, online
    assert "ÉCHEC  serveur Matrix" in online.stdout and "homeserver.url" in online.stdout
    assert "Traceback" not in online.stdout + online.stderr
    assert "mot-de-passe-du-bot" not in online.stdout + online.stderr
    # A bot that never started: a SQLite file still to come is said so; an empty
    # PostgreSQL database is named as such (`test_a_database_that_was_never_migrated…`).
    [database] = [line for line in online.stdout.splitlines() if "base de données" in line]
    assert "sera créée au premier" in database or "version vide" in database, database

    # A broken file: every problem at once, named by its key, as `aplus run` does.
    files.config.write_text(files.config.read_text().replace('user_id = "', 'user_id = "x'))
    broken = await proc.run_aplus_async("check", "--config", str(files.config))
    assert broken.returncode == 2, broken
    assert "bot.user_id" in broken.stderr


async def test_a_bot_that_ran_is_ready_and_each_broken_case_is_named(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    files = await _bot_that_ran(synapse, tmp_path / "bot")
    settings = files.settings()
    found = await checks.check_online(settings)
    for name in ("serveur Matrix", "base de données", "connexion du bot", "compte du bot"):
        assert by_name(found, name).ok is True, by_name(found, name)
    assert by_name(found, "signature croisée").ok is True, found
    assert by_name(found, "limites de débit").ok is None  # no admin token configured
    assert by_name(found, "relais SMTP").ok is None
    assert [c.name for c in checks.check_files(settings)] == ["dossier des données"]
    assert checks.check_files(settings)[0].ok is True

    # The data folder readable by others.
    settings.data.dir.chmod(0o755)
    assert checks.check_files(settings)[0].ok is False
    settings.data.dir.chmod(0o700)

    # The rate limits: refused until they are lifted for the bot.
    admin = await clients.user("admin", admin=True)
    with_token = dataclasses.replace(
        settings,
        admin=dataclasses.replace(settings.admin, synapse_admin_token=Secret(admin.access_token)),
    )
    limits = by_name(await checks.check_online(with_token), "limites de débit")
    assert limits.ok is False and "override_ratelimit" in limits.text
    lifted = await synapse.admin_request(
        "POST",
        f"/_synapse/admin/v1/users/{files.user_id}/override_ratelimit",
        admin.access_token,
        json={"messages_per_second": 0, "burst_count": 0},
    )
    assert lifted.ok, lifted
    assert by_name(await checks.check_online(with_token), "limites de débit").ok is True

    # Another cross-signing identity than the one the service keeps.
    async with files.store() as store, store.transaction() as tx:
        kept = await tx.get_secret(SEED_SECRET_NAME)
        await tx.set_secret(SEED_SECRET_NAME, secrets.token_bytes(len(kept or b"x" * 96)))
    xsign = by_name(await checks.check_online(settings), "signature croisée")
    assert xsign.ok is False and "clé maîtresse" in xsign.text
    async with files.store() as store, store.transaction() as tx:
        assert kept is not None
        await tx.set_secret(SEED_SECRET_NAME, kept)

    # A stored access token the homeserver refuses.
    async with files.store() as store, store.transaction() as tx:
        token = await tx.get_secret(LOGIN_TOKEN)
        await tx.set_secret(LOGIN_TOKEN, b"syt_not_a_token")
    login = by_name(await checks.check_online(settings), "connexion du bot")
    assert login.ok is False and "bot.password" in login.text
    async with files.store() as store, store.transaction() as tx:
        assert token is not None
        await tx.set_secret(LOGIN_TOKEN, token)


async def test_a_bot_that_is_a_server_admin_is_refused(
    synapse: LocalSynapse, tmp_path: Path
) -> None:
    files = await _bot_that_ran(synapse, tmp_path / "bot")
    promoted = await synapse.admin_request(
        "PUT",
        f"/_synapse/admin/v2/users/{files.user_id}",
        (await synapse.register(matrix.unique("root"), "x" * 16, admin=True)).access_token,
        json={"admin": True},
    )
    assert promoted.ok, promoted
    account = by_name(await checks.check_online(files.settings()), "compte du bot")
    assert account.ok is False and "administrateur" in account.text


async def test_a_database_that_was_never_migrated_is_named(tmp_path: Path) -> None:
    files = proc.write_bot_config(
        tmp_path / "bot",
        homeserver=NO_HOMESERVER,
        server_name="localhost",
        user_id="@aplus:localhost",
        password="mot-de-passe-du-bot-en-test",
    )
    settings = files.settings()
    settings.data.dir.mkdir(mode=0o700, parents=True)
    found = await checks.check_online(settings)
    database = by_name(found, "base de données")
    assert database.ok is False and "version vide" in database.text
    # Looking changed nothing: the schema is still empty.
    assert by_name(await checks.check_online(settings), "base de données").ok is False


async def test_the_relay_and_the_listener_port(tmp_path: Path) -> None:
    files = proc.write_bot_config(
        tmp_path / "bot",
        homeserver=NO_HOMESERVER,
        server_name="localhost",
        user_id="@aplus:localhost",
        password="mot-de-passe-du-bot-en-test",
    )
    base = files.settings()
    sink = await RelaySink().start()
    other = await asyncio.start_server(_not_smtp, "127.0.0.1", 0)
    taken = other.sockets[0].getsockname()[1]
    try:
        dev_secrets = {
            "APLUS_BOT_PASSWORD": "x" * 20,
            "APLUS_PICKLE_KEY": "y" * 20,
            "APLUS_DATA_KEY": "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=",
        }
        email = Settings.for_dev(
            tmp_path / "dev", NO_HOMESERVER, "localhost", "@aplus:localhost", dev_secrets, email={}
        ).email
        good = dataclasses.replace(
            base,
            email=dataclasses.replace(email, relay_port=sink.port, listen_port=_free_port()),
        )
        assert (await checks._relay(good))[0].ok is True
        assert (await checks._listener(good))[0].ok is True  # free: the bot will listen

        starttls = dataclasses.replace(
            good, email=dataclasses.replace(good.email, relay_security="starttls")
        )
        refused = (await checks._relay(starttls))[0]
        assert refused.ok is False and "email.relay_security" in refused.text

        down = dataclasses.replace(good, email=dataclasses.replace(good.email, relay_port=9))
        assert (await checks._relay(down))[0].ok is False

        held = dataclasses.replace(good, email=dataclasses.replace(good.email, listen_port=taken))
        listener = (await checks._listener(held))[0]
        assert listener.ok is False and "email.listen_port" in listener.text
    finally:
        other.close()
        await sink.stop()


async def _not_smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    await writer.drain()
    writer.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_module_configuration_must_agree_with_the_bot(tmp_path: Path) -> None:
    secret = tmp_path / "guard_secret"
    secret.write_text("s" * 40)
    secret.chmod(0o600)
    files = proc.write_bot_config(
        tmp_path / "bot",
        homeserver=NO_HOMESERVER,
        server_name="localhost",
        user_id="@aplus:localhost",
        password="mot-de-passe-du-bot-en-test",
    )
    base = files.settings()
    settings = dataclasses.replace(
        base,
        guard=dataclasses.replace(
            base.guard, enabled=True, host="127.0.0.1", port=8181, shared_secret=Secret("s" * 40)
        ),
    )

    def homeserver_yaml(**config: object) -> Path:
        path = tmp_path / "homeserver.yaml"
        module = {
            "bot_user_id": "@aplus:localhost",
            "api_urls": ["http://127.0.0.1:8181"],
            "shared_secret_path": str(secret),
            "timeout_seconds": 2,
            **config,
        }
        path.write_text(
            yaml.safe_dump({"modules": [{"module": checks.GUARD_MODULE, "config": module}]})
        )
        return path

    assert checks.check_module_config(settings, homeserver_yaml())[0].ok is True
    wrong_bot = checks.check_module_config(settings, homeserver_yaml(bot_user_id="@x:localhost"))
    assert wrong_bot[0].ok is False and "bot_user_id" in wrong_bot[0].text
    wrong_url = checks.check_module_config(
        settings, homeserver_yaml(api_urls=["http://10.0.0.9:1"])
    )
    assert wrong_url[0].ok is False and "api_urls" in wrong_url[0].text
    other = tmp_path / "other_secret"
    other.write_text("t" * 40)
    wrong_secret = checks.check_module_config(
        settings, homeserver_yaml(shared_secret_path=str(other))
    )
    assert wrong_secret[0].ok is False and "secret" in wrong_secret[0].text
    slow = checks.check_module_config(settings, homeserver_yaml(timeout_seconds=30))
    assert slow[0].ok is False and "timeout_seconds" in slow[0].text
    missing = tmp_path / "plain.yaml"
    missing.write_text("server_name: localhost\n")
    assert checks.check_module_config(settings, missing)[0].ok is False
    assert checks.check_module_config(settings, None)[0].ok is None


async def test_the_guard_endpoint_answers_the_module_questions(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    secret = tmp_path / "guard_secret"
    secret.write_text("g" * 40)
    secret.chmod(0o600)
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        runner.guard = {"port": 0, "shared_secret_file": str(secret)}
        await runner.start()
        assert runner.app is not None and runner.app.membership_api is not None
        port = runner.app.membership_api.port
        base = runner.settings()
        settings = dataclasses.replace(base, guard=dataclasses.replace(base.guard, port=port))
        [no_demande] = await checks._guard_endpoint(settings, runner.store, None)
        assert no_demande.ok is True and "aucune demande" in no_demande.text

        world = await make_world(clients, runner)
        await open_demande(world)
        [both] = await checks._guard_endpoint(settings, runner.store, None)
        assert both.ok is True and "refus et accord" in both.text

        wrong = dataclasses.replace(
            settings, guard=dataclasses.replace(settings.guard, shared_secret=Secret("h" * 40))
        )
        [refused] = await checks._guard_endpoint(wrong, runner.store, None)
        assert refused.ok is False and "secret" in refused.text
        await runner.stop()
        reopened = await _reopen(runner)
        try:
            [stopped] = await checks._guard_endpoint(settings, reopened, None)
        finally:
            await reopened.close()
        assert stopped.ok is None and "démarré" in stopped.text


async def _reopen(runner: botsupport.BotRunner) -> Store:
    s = runner.settings()
    return await Store.open(
        s.database.url.reveal(), FieldCipher.from_secret(s.secrets.data_key.reveal())
    )
