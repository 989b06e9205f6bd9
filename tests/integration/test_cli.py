"""The `aplus` command as an operator types it: real child processes, exit codes, French output.

Directory import (all lines or none), configuration errors (all reported, no secret
shown), policy checks, and the bot's crypto status after a real run against the
session's Synapse.
"""

from __future__ import annotations

import re
import shutil
import signal
from pathlib import Path

from bot.devserver import LocalSynapse
from bot.domain.model import Role
from bot.policy_loader import default_policies_dir
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support import process as proc
from tests.support.process import run_aplus, run_aplus_async, write_secret

HEADER = "Prénom;Nom;Email;Matrix;Instructeur;Responsable;Territoire;Organisation;Groupe;BAL"
# Never reached: directory import and policy checks do not talk to the homeserver.
NO_HOMESERVER = "http://127.0.0.1:9"


def _offline_bot(root: Path) -> proc.BotFiles:
    """A complete production configuration whose data folder does not exist yet."""
    return proc.write_bot_config(
        root,
        homeserver=NO_HOMESERVER,
        server_name="localhost",
        user_id="@aplus:localhost",
        password="mot-de-passe-du-bot-en-test",
    )


def _csv(path: Path, *lines: str) -> Path:
    # What French Excel writes with "CSV UTF-8": a BOM, `;` separators, CRLF.
    path.write_bytes(("\r\n".join([HEADER, *lines]) + "\r\n").encode("utf-8-sig"))
    return path


GOOD_LINES = (
    "Camille;Martin;camille.martin@fs.example.fr;@camille:localhost;non;non;95;"
    "France Services;France services Cergy;",
    "Marie;Durand;marie.durand@caf.example.fr;@marie:localhost;oui;non;95;CAF;CAF 95;"
    "bal.caf95@caf.example.fr",
    "Sophie;Petit;sophie.petit@caf.example.fr;;oui;oui;95, 78;CAF;CAF 95;",
)


async def test_directory_import_of_a_good_file_imports_every_line(tmp_path: Path) -> None:
    bot = _offline_bot(tmp_path / "bot")
    csv = _csv(tmp_path / "annuaire.csv", *GOOD_LINES)

    done = await run_aplus_async("directory", "import", str(csv), "--config", str(bot.config))
    assert done.returncode == 0, done
    assert "Import réussi : 2 groupe(s), 3 agent(s) créé(s), 0 agent(s) mis à jour." in (
        done.stdout
    ), done

    # The same file again changes nobody twice.
    again = await run_aplus_async("directory", "import", str(csv), "--config", str(bot.config))
    assert again.returncode == 0, again
    assert "0 agent(s) créé(s), 3 agent(s) mis à jour" in again.stdout, again

    async with bot.store() as store, store.transaction() as tx:
        agents = {a.email: a for a in await tx.list_agents()}
        groups = {g.name: g for g in await tx.list_groups()}
    assert set(groups) == {"France services Cergy", "CAF 95"}
    assert groups["CAF 95"].bal == "bal.caf95@caf.example.fr"
    assert groups["CAF 95"].departements == frozenset({"95", "78"})
    assert len(agents) == 3
    marie = agents["marie.durand@caf.example.fr"]
    assert marie.matrix_id == "@marie:localhost" and marie.has(Role.INSTRUCTEUR)
    assert agents["camille.martin@fs.example.fr"].has(Role.AIDANT)
    sophie = agents["sophie.petit@caf.example.fr"]
    assert sophie.matrix_id is None and sophie.has(Role.RESPONSABLE)


async def test_directory_import_with_three_bad_lines_imports_nothing(tmp_path: Path) -> None:
    bot = _offline_bot(tmp_path / "bot")
    csv = _csv(
        tmp_path / "annuaire.csv",
        GOOD_LINES[0],  # line 2
        "Marie;Durand;marie.durand@caf;@marie:localhost;oui;non;95;CAF;CAF 95;",  # line 3
        GOOD_LINES[2],  # line 4
        "Paul;Leroy;paul@cpam.example.fr;;oui;non;95;Caisse inconnue;CPAM 95;",  # line 5
        "Lucas;Moreau;lucas@cpam.example.fr;;peut-être;non;95;CPAM;CPAM 95;",  # line 6
    )

    done = await run_aplus_async("directory", "import", str(csv), "--config", str(bot.config))
    assert done.returncode == 1, done
    out = done.stdout
    assert "Import refusé : 3 ligne(s) à corriger, rien n'a été importé." in out, done
    assert re.search(r"ligne 3 : adresse email invalide « marie\.durand@caf »", out), out
    assert re.search(r"ligne 5 : organisation inconnue « Caisse inconnue »", out), out
    assert re.search(r"ligne 6 : Instructeur : valeur « peut-être » non comprise", out), out
    assert not re.search(r"ligne [124] ", out), out
    assert "Traceback" not in done.stderr, done.stderr

    async with bot.store() as store, store.transaction() as tx:
        assert await tx.list_agents(active_only=False) == []
        assert await tx.list_groups() == []


def test_run_with_a_broken_configuration_lists_every_error_and_no_secret(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    inline_password = "Mot-De-Passe-En-Clair-42"
    pickle_value = "Cle-Pickle-Trop-Visible-0123456789"
    data_value = "Cle-Donnees-Pas-En-Base64!!"
    # Readable by the group: refused, and its content must not be echoed.
    write_secret(secrets_dir / "pickle_key", pickle_value, mode=0o640)
    write_secret(secrets_dir / "data_key", data_value)
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[homeserver]
url = "http://matrix.example.org"
server_name = "example.org"

[bot]
user_id = "aplus"
password = "{inline_password}"
max_attachment_bytes = "beaucoup"

[logging]
level = "BAVARD"

[secrets]
pickle_key_file = "secrets/pickle_key"
data_key_file = "secrets/data_key"

[sauvegarde]
dir = "/var/backups"
"""
    )

    done = run_aplus("run", "--config", str(config))
    assert done.returncode == 2, done
    err = done.stderr
    assert "Traceback" not in err, err
    for key in (
        "homeserver.url",
        "bot.user_id",
        "bot.password",
        "bot.max_attachment_bytes",
        "logging.level",
        "secrets.pickle_key_file",
        "secrets.data_key",
        "sauvegarde",
    ):
        assert re.search(rf"^\s*- {re.escape(key)} : ", err, re.MULTILINE), (key, err)
    listed = re.findall(r"^\s*- \S+ : ", err, re.MULTILINE)
    assert f"Configuration invalide ({len(listed)} problèmes)" in err, err
    assert err.count("Configuration invalide") == 1, err
    for secret in (inline_password, pickle_value, data_value):
        assert secret not in done.stdout + err


async def test_run_against_an_unreachable_homeserver_says_so_in_french(tmp_path: Path) -> None:
    bot = _offline_bot(tmp_path / "bot")
    done = await run_aplus_async("run", "--config", str(bot.config))
    assert done.returncode == 1, done
    assert "Serveur Matrix injoignable" in done.stderr and NO_HOMESERVER[7:] in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert bot.password not in done.stdout + done.stderr


def test_policies_check_accepts_the_shipped_rules_and_names_each_broken_key(
    tmp_path: Path,
) -> None:
    shipped = run_aplus("policies", "check")
    assert shipped.returncode == 0, shipped
    assert "Politiques valides" in shipped.stdout and str(default_policies_dir()) in shipped.stdout

    broken = tmp_path / "policies"
    shutil.copytree(default_policies_dir(), broken)
    organisations = broken / "organisations.toml"
    text = organisations.read_text()
    caf = '[organisations.caf]\nname = "CAF"\nkind = "operateur"'
    assert caf in text
    organisations.write_text(text.replace(caf, caf.replace('"operateur"', '"operator"')))
    membership = broken / "membership.toml"
    membership.write_text(membership.read_text() + "\n[oubli\n")

    done = run_aplus("policies", "check", str(broken))
    assert done.returncode == 2, done
    assert "Politiques invalides" in done.stderr, done
    assert "organisations.toml: organisations.caf.kind: " in done.stderr, done.stderr
    assert re.search(r"membership\.toml: syntaxe TOML invalide ligne \d+", done.stderr), done
    assert "Traceback" not in done.stderr


async def test_crypto_status_after_one_run_shows_the_signed_device(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    files = await proc.register_bot(synapse, tmp_path / "bot")
    admin = proc.AdminApi.of(synapse, await clients.user("admin", admin=True))

    never = await proc.run_aplus_async("crypto", "status", "--config", str(files.config))
    assert never.returncode == 0, never
    assert "jamais connecté" in never.stdout, never

    bot = proc.bot_process(files)
    with proc.killed_at_exit(bot):
        bot.start()
        await bot.wait_log(r"cross-signing \w+: device \S+ signed=True")
        # Most likely still starting (the log line is written during start-up): a stop
        # then must be as clean as a stop while serving.
        assert await bot.stop(signal.SIGTERM) == 0, bot.describe()
    [device] = await admin.devices(files.user_id)

    done = await proc.run_aplus_async("crypto", "status", "--config", str(files.config))
    assert done.returncode == 0, done
    out = done.stdout
    assert re.search(rf"Compte du bot\s*: {re.escape(files.user_id)}$", out, re.MULTILINE), out
    assert re.search(rf"Appareil\s*: {device['device_id']}$", out, re.MULTILINE), out
    assert re.search(r"Appareil signé\s*: oui$", out, re.MULTILINE), out
    assert re.search(r"conservées par le service : oui$", out, re.MULTILINE), out
    # Looking does not add a device.
    assert [d["device_id"] for d in await admin.devices(files.user_id)] == [device["device_id"]]


async def test_crypto_status_while_the_bot_runs_leaves_it_working(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    """An operator looks while the service runs: the same crypto store, opened twice."""
    files = await proc.register_bot(synapse, tmp_path / "bot")
    aidant = await clients.client("aidant")
    directory = botsupport.Directory()
    async with files.store() as store:
        await botsupport.add_group(store, directory, "fs", "france_services", ["95"])
        await botsupport.add_agent(
            store, directory, "aidant", matrix_id=aidant.user_id, roles=[Role.AIDANT], group="fs"
        )

    bot = proc.bot_process(files)
    with proc.killed_at_exit(bot):
        bot.start()
        await bot.wait_log("the service is ready", timeout=120)
        dm = await botsupport.open_direct_chat(aidant, files.user_id)
        await botsupport.say(aidant, dm, "!aide")
        await botsupport.next_reply(aidant, dm, files.user_id, after=0)

        done = await proc.run_aplus_async("crypto", "status", "--config", str(files.config))
        assert done.returncode == 0, done
        assert re.search(r"Appareil signé\s*: oui$", done.stdout, re.MULTILINE), done

        # The bot still encrypts for the aidant, in a new direct chat too (new room key).
        await botsupport.say(aidant, dm, "!demande")
        form = await botsupport.next_reply(aidant, dm, files.user_id, after=1)
        assert "territoire" in form
        other = await botsupport.open_direct_chat(aidant, files.user_id)
        await botsupport.say(aidant, other, "!aide")
        await botsupport.next_reply(aidant, other, files.user_id, after=0)
        assert not matrix.inbox(aidant).undecryptable[dm]
        assert await bot.stop(signal.SIGINT) == 0, bot.describe()
    assert "Traceback" not in bot.log() and " ERROR " not in bot.log(), bot.log()
