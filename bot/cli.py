"""The `aplus` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import IO

from bot import log_privacy
from bot.domain.policies import PolicyError
from bot.policy_loader import default_policies_dir, load_policies
from bot.settings import Settings, SettingsError, load_settings

DEFAULT_DEV_DIR = Path(".aplus-dev")
# Two bots on PostgreSQL: their own demo (accounts, rooms, device), never mixed with SQLite's.
DEFAULT_DEV_STANDBY_DIR = Path(".aplus-dev-standby")
log = logging.getLogger("bot.cli")


def _setup_logging(level: str = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    # One handler, the privacy filter on every handler, chatty or leaky libraries held
    # above the level where they write tokens or contents (see bot.log_privacy).
    return log_privacy.configure(level, stream)


def _settings_from(args: argparse.Namespace) -> Settings:
    if getattr(args, "config", None):
        settings = load_settings(Path(args.config))
        # The database lives there: an operator may import the directory before the
        # bot's first start, which is what creates the folder otherwise (App.start).
        settings.data.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return settings
    data_dir = Path(args.data_dir or DEFAULT_DEV_DIR).resolve()
    accounts = data_dir / "dev-accounts.json"
    database = data_dir / "standby" / "database_url"  # `aplus dev --standby`
    secrets = data_dir / "secrets.json"
    if not accounts.exists() or not secrets.exists():
        raise SystemExit(
            f"Aucune démonstration dans {data_dir} : lancez d'abord « aplus dev » "
            "ou indiquez --config FICHIER."
        )
    facts = json.loads(accounts.read_text())
    values = json.loads(secrets.read_text())
    bot = facts["bot"]["user_id"]
    return Settings.for_dev(
        data_dir,
        facts["homeserver"],
        bot.split(":", 1)[1],
        bot,
        {
            **{k: v for k, v in values.items() if k.startswith("APLUS_")},
            **({"APLUS_DATABASE_URL": database.read_text().strip()} if database.exists() else {}),
        },
    )


def cmd_dev(args: argparse.Namespace) -> int:
    from bot.app import App
    from bot.dev import run_dev

    _setup_logging("INFO")
    if args.standby:
        from bot.dev_standby import DEFAULT_DATABASE_URL, run_dev_standby

        data_dir = Path(args.data_dir or DEFAULT_DEV_STANDBY_DIR)
        asyncio.run(run_dev_standby(data_dir, args.database_url or DEFAULT_DATABASE_URL))
        return 0
    if args.database_url:
        raise SystemExit(
            "--database-url va avec --standby (sans lui, la démonstration est sur SQLite)."
        )
    asyncio.run(run_dev(Path(args.data_dir or DEFAULT_DEV_DIR), App))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bot.app import App
    from bot.domain.lease import LeaseLost
    from bot.services.lease import EXIT_LEASE_LOST

    settings = load_settings(Path(args.config))
    _setup_logging(settings.logging.level)
    lost = False

    async def main() -> None:
        nonlocal lost
        app = App(settings)
        this = asyncio.current_task()
        assert this is not None
        loop = asyncio.get_running_loop()
        # From the very start: a stop during start-up (systemd, Ctrl-C) must close cleanly too,
        # not kill the process in the middle of its login or of a database write.
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, this.cancel)
        try:
            await app.start()
            await app.run()
        except asyncio.CancelledError:
            log.info("stop requested: closing")
        except LeaseLost:
            # Two processes, one active: the other one is. systemd restarts this one,
            # which then waits as the standby (deploy/README.md).
            log.error("lease lost: another bot is active; exiting")
            lost = True
        finally:
            await app.close()

    asyncio.run(main())
    return EXIT_LEASE_LOST if lost else 0


def cmd_directory_import(args: argparse.Namespace) -> int:
    from bot.services.directory import import_directory_file

    settings = _settings_from(args)
    report = asyncio.run(import_directory_file(settings, Path(args.file)))
    print(report.text)
    return 0 if report.ok else 1


def cmd_crypto_status(args: argparse.Namespace) -> int:
    from bot.services.crypto_status import crypto_status

    settings = _settings_from(args)
    print(asyncio.run(crypto_status(settings)))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Every configuration error at once (load_settings), then the offline and online checks."""
    from bot.services import checks

    settings = load_settings(Path(args.config))
    synapse_config = Path(args.synapse_config) if args.synapse_config else None
    found = [
        checks.Check("configuration", True, f"{args.config} valide."),
        *checks.check_files(settings),
        *checks.check_module_config(settings, synapse_config),
    ]
    if not args.offline:
        found += asyncio.run(checks.check_online(settings, synapse_config))
    print(checks.render(found))
    return 1 if any(c.ok is False for c in found) else 0


def cmd_policies_check(args: argparse.Namespace) -> int:
    folder = Path(args.dir) if args.dir else default_policies_dir()
    policies = load_policies(folder)
    print(
        f"Politiques valides ({folder}) : {len(policies.organisations)} organisations, "
        f"{len(policies.departements)} départements, {len(policies.categories)} catégories."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aplus", description="Administration+ sur Matrix")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="tout le service en local (Synapse, SQLite, démo)")
    dev.add_argument(
        "--data-dir",
        help="dossier des données (défaut : .aplus-dev, .aplus-dev-standby avec --standby)",
    )
    dev.add_argument(
        "--standby",
        action="store_true",
        help="deux bots sur PostgreSQL, un actif et un secours, pour essayer une bascule",
    )
    dev.add_argument(
        "--database-url",
        help="avec --standby : la base PostgreSQL, créée si besoin "
        "(défaut : postgresql://postgres@127.0.0.1:5432/aplus_dev)",
    )
    dev.set_defaults(func=cmd_dev)

    run = sub.add_parser("run", help="le bot, contre un serveur Matrix existant")
    run.add_argument("--config", required=True, help="fichier de configuration TOML")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="vérifier qu'une installation est prête")
    check.add_argument("--config", required=True, help="fichier de configuration TOML")
    check.add_argument("--synapse-config", help="homeserver.yaml, pour le module de garde")
    check.add_argument("--offline", action="store_true", help="les fichiers seulement")
    check.set_defaults(func=cmd_check)

    directory = sub.add_parser("directory", help="annuaire des agents")
    dsub = directory.add_subparsers(dest="action", required=True)
    imp = dsub.add_parser("import", help="importer un fichier CSV (en-têtes Administration+)")
    imp.add_argument("file")
    _target(imp)
    imp.set_defaults(func=cmd_directory_import)

    crypto = sub.add_parser("crypto", help="identité de chiffrement du bot")
    csub = crypto.add_subparsers(dest="action", required=True)
    status = csub.add_parser("status", help="identité, appareil, signature croisée")
    _target(status)
    status.set_defaults(func=cmd_crypto_status)

    policies = sub.add_parser("policies", help="règles du service")
    psub = policies.add_subparsers(dest="action", required=True)
    pcheck = psub.add_parser("check", help="vérifier les fichiers de politiques")
    pcheck.add_argument("dir", nargs="?")
    pcheck.set_defaults(func=cmd_policies_check)
    return parser


def _target(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--config", help="fichier de configuration TOML (production)")
    group.add_argument("--data-dir", help="dossier de la démonstration (défaut : .aplus-dev)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(exc, file=sys.stderr)  # its own heading: "Configuration invalide (n problèmes) :"
        return 2
    except PolicyError as exc:
        print(f"Politiques invalides :\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not _homeserver_unreachable(exc):
            raise
        # No traceback for an operator: which server, and that it did not answer.
        print(f"Serveur Matrix injoignable ou en erreur : {exc}", file=sys.stderr)
        return 1


def _homeserver_unreachable(exc: BaseException) -> bool:
    # Imported here: `aplus policies check` should not pay for aiohttp.
    import aiohttp

    from bot.matrix.errors import MatrixError

    return isinstance(exc, MatrixError | aiohttp.ClientError)


if __name__ == "__main__":
    raise SystemExit(main())
