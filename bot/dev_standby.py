"""`aplus dev --standby`: the demo with two bots, one active, on PostgreSQL.

The production failover on one machine (deploy/README.md § 4, `bot/services/lease.py`):
two `aplus run` processes, `principal` and `secours`, with the same account, device,
data folder (crypto store) and PostgreSQL database; their two configuration files
differ only by their ports (`[health]`, `[guard]`, `[email] listen_port`), and the
homeserver's guard module lists both endpoints. This command writes those files under
`<data-dir>/standby/`, starts the two processes and plays systemd's part: a process
that ends (killed, or exit 75 after losing its lease) is started again once the other
took over, and waits as the standby. It prints which one is active, their PIDs and `/healthz`
URLs, and every change of role, so that a person can try a failover by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy.engine import URL

from bot.dev import SYNAPSE_PID_FILE, kept_port, prepare, print_welcome, write_private
from bot.settings import DEV_EMAIL, SECRET_ENV_VARS, load_settings
from bridge.devsink import MailFolderSink

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/aplus_dev"
STANDBY_DIR = "standby"
NAMES = ("principal", "secours")
ACTIVE, STANDBY, SILENT = "actif", "secours", "ne répond pas"
# systemd's `Restart=on-failure` after `RestartSec` (deploy/systemd): shorter here, but
# never before the other bot has taken over (or TAKEOVER_WAIT_S has passed): a process
# restarted at once could win the expired lease itself, and the demo would show no
# failover.
RESTART_DELAY_S = 1.0
TAKEOVER_WAIT_S = 30.0
POLL_S = 0.5
HEALTH_TIMEOUT_S = 2.0
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1

_HINT_POSTGRES = (
    "installez PostgreSQL et démarrez-le (Debian/Ubuntu : « sudo apt install postgresql » "
    "puis « sudo systemctl start postgresql » ; ou « docker run -d -p 5432:5432 "
    "-e POSTGRES_HOST_AUTH_METHOD=trust postgres:16 »), ou indiquez un autre serveur "
    "avec --database-url postgresql://UTILISATEUR@HÔTE:PORT/BASE"
)


class PostgresUnavailable(SystemExit):
    pass


class BotFailed(RuntimeError):
    """A bot did not reach its role at start (French message); the demo stops."""


def _last_line(path: Path) -> str:
    """The last line of a bot's log: at a failed start, its error (in French if ours)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def _postgres_url(raw_url: str) -> URL:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(raw_url)
    except ArgumentError:
        url = None
    if url is None or not url.drivername.startswith("postgresql"):
        raise PostgresUnavailable(
            f"--database-url {raw_url!r} : une URL PostgreSQL est attendue "
            "(postgresql://UTILISATEUR@HÔTE:PORT/BASE)."
        )
    return url.set(drivername="postgresql+asyncpg", database=url.database or "aplus_dev")


def bot_database_url(raw_url: str) -> str:
    """The bot's URL (asyncpg driver) of the demo's database; exit if not PostgreSQL."""
    return _postgres_url(raw_url).render_as_string(hide_password=False)


async def ensure_database(raw_url: str) -> str:
    """The demo's database on that PostgreSQL server, created if missing; the bot's URL.

    A clear French error (exit) when the server does not answer or refuses.
    """
    import asyncpg

    url = _postgres_url(raw_url)
    name = str(url.database)
    host, port = url.host or "127.0.0.1", url.port or 5432
    where = f"{host}:{port}"
    try:
        conn = await asyncpg.connect(
            host=host,
            port=port,
            user=url.username or "postgres",
            password=url.password,
            database="postgres",
            timeout=10,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise PostgresUnavailable(
            f"PostgreSQL injoignable sur {where} ({type(exc).__name__}: {exc}).\n"
            f"« aplus dev --standby » fait tourner les deux bots sur une base PostgreSQL : "
            f"{_HINT_POSTGRES}."
        ) from None
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            quoted = '"' + name.replace('"', '""') + '"'
            await conn.execute(f"CREATE DATABASE {quoted} TEMPLATE template0")
            print(f"Base PostgreSQL « {name} » créée sur {where}.", flush=True)
    except asyncpg.PostgresError as exc:
        raise PostgresUnavailable(
            f"PostgreSQL sur {where} : impossible de créer la base « {name} » ({exc}). "
            "Créez-la (createdb) ou donnez à cet utilisateur le droit CREATEDB."
        ) from None
    finally:
        await conn.close()
    return url.render_as_string(hide_password=False)


def _where(url: str) -> str:
    """Server and database of a URL, never its password."""
    return url.rsplit("@", 1)[-1]


def _toml(doc: dict[str, dict[str, Any]]) -> str:
    """A flat TOML document: tables of strings, numbers, booleans and lists of strings.
    (JSON's string escapes are TOML's.)"""
    lines = ["# Written by `aplus dev --standby` at each start: edits are lost.", ""]
    for table, values in doc.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            if isinstance(value, bool):
                rendered = "true" if value else "false"
            elif isinstance(value, int | float):
                rendered = str(value)
            else:
                rendered = json.dumps(value)
            lines.append(f"{key} = {rendered}")
        lines.append("")
    return "\n".join(lines)


@dataclass
class BotProcess:
    """One `aplus run` process of the demo, started again whenever it ends."""

    name: str
    config: Path
    log_path: Path
    health_port: int
    smtp_port: int
    env: dict[str, str] = field(repr=False)
    process: asyncio.subprocess.Process | None = None
    role: str | None = None
    starts: int = 0

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/healthz"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        self.role = None
        self.starts += 1
        with self.log_path.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot.cli",
                "run",
                "--config",
                str(self.config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=self.env,
                preexec_fn=_end_with_parent,
            )

    def seen_as(self, role: str | None) -> None:
        """The role its `/healthz` showed last (None: not known since its start)."""
        self.role = role

    async def poll_role(self, http: aiohttp.ClientSession) -> str:
        try:
            async with http.get(self.health_url) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return SILENT
        status = body.get("status") if isinstance(body, dict) else None
        return STANDBY if status == "standby" else ACTIVE

    def describe(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "role": self.role,
            "health": self.health_url,
            "smtp_inbound": {"host": "127.0.0.1", "port": self.smtp_port},
            "config": str(self.config),
            "log": str(self.log_path),
        }


def _end_with_parent() -> None:
    """In the child, before exec: a SIGTERM when the demo dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _ended(code: int | None) -> str:
    if code is None:
        return "arrêté"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"tué par {signal.Signals(-code).name}"
        return f"tué par le signal {-code}"
    if code == 75:
        return "sorti (code 75 : bail perdu, un autre bot est actif)"
    return f"sorti (code {code})"


class Supervisor:
    """systemd's part: both processes kept running; their roles watched and printed."""

    def __init__(
        self, bots: list[BotProcess], on_change: Callable[[], None], stop: asyncio.Event
    ) -> None:
        self.bots = bots
        self._on_change = on_change
        # Set by the signal handler: a Ctrl-C in the terminal reaches the bots too (one
        # process group), and the ones it ends must not be started again.
        self._stop = stop
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    async def wait_role(self, bot: BotProcess, role: str, http: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while True:
            assert bot.process is not None
            if bot.process.returncode is not None:
                raise BotFailed(
                    f"Le bot « {bot.name} » s'est arrêté au démarrage "
                    f"({_ended(bot.process.returncode)}) : voir {bot.log_path}.\n"
                    f"{_last_line(bot.log_path)}"
                )
            if await bot.poll_role(http) == role:
                bot.seen_as(role)
                self._on_change()
                return
            if loop.time() > deadline:
                raise BotFailed(
                    f"Le bot « {bot.name} » n'est pas {role} après {START_TIMEOUT_S:.0f} s : "
                    f"voir {bot.log_path}."
                )
            await asyncio.sleep(POLL_S)

    def watch(self, http: aiohttp.ClientSession) -> None:
        for bot in self.bots:
            self._tasks.append(asyncio.create_task(self._keep(bot), name=f"keep {bot.name}"))
        self._tasks.append(asyncio.create_task(self._roles(http), name="roles"))

    async def _keep(self, bot: BotProcess) -> None:
        while True:
            assert bot.process is not None
            code = await bot.process.wait()
            if self.stopping or self._stop.is_set():
                return
            pid = bot.pid
            bot.seen_as(None)
            print(
                f"[{bot.name}] PID {pid} {_ended(code)} : il redémarre (comme systemd) "
                "dès que l'autre bot est actif, et attendra comme secours.",
                flush=True,
            )
            self._on_change()
            await asyncio.sleep(RESTART_DELAY_S)
            await self._other_active(bot)
            if self.stopping or self._stop.is_set():
                return
            await bot.start()
            print(f"[{bot.name}] redémarré : PID {bot.pid}.", flush=True)
            self._on_change()

    async def _other_active(self, bot: BotProcess) -> None:
        """Until another running bot is active, or TAKEOVER_WAIT_S at most."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TAKEOVER_WAIT_S
        while loop.time() < deadline and not self.stopping:
            others = [b for b in self.bots if b is not bot]
            if any(b.role == ACTIVE for b in others):
                return
            if not any(b.process and b.process.returncode is None for b in others):
                return  # both ended: no one to wait for
            await asyncio.sleep(POLL_S / 2)

    async def _roles(self, http: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            for bot in self.bots:
                if bot.process is None or bot.process.returncode is not None:
                    continue
                role = await bot.poll_role(http)
                if role == bot.role or (role == SILENT and bot.role != ACTIVE):
                    # Silent while starting, or between the standby's endpoint and the
                    # active one's (a takeover): only a silent *active* bot is news.
                    continue
                bot.seen_as(role)
                if role == ACTIVE:
                    print(
                        f"[{bot.name}] PID {bot.pid} est maintenant ACTIF ({bot.health_url}).",
                        flush=True,
                    )
                elif role == STANDBY:
                    print(
                        f"[{bot.name}] PID {bot.pid} attend comme secours ({bot.health_url}).",
                        flush=True,
                    )
                else:
                    print(
                        f"[{bot.name}] PID {bot.pid} ne répond plus ({bot.health_url}) : "
                        "figé ? Le secours prendra le relais à l'expiration du bail.",
                        flush=True,
                    )
                self._on_change()

    async def stop(self) -> None:
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        running = [b.process for b in self.bots if b.process and b.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
                # A frozen one (kill -STOP) must wake up to see its SIGTERM.
                process.send_signal(signal.SIGCONT)
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()


async def _unless_stopped(step: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run `step` to its end (True), unless a stop is asked first (False, step cancelled)."""
    task = asyncio.create_task(step)
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        task.result()  # its error, if any
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def _failover_help(bots: list[BotProcess]) -> list[str]:
    active = next((b for b in bots if b.role == ACTIVE), bots[0])
    standby = next((b for b in bots if b is not active), bots[1])
    lines = [
        "",
        "  Deux bots, un actif (bascule, base PostgreSQL) :",
    ]
    for bot in bots:
        lines.append(
            f"    - « {bot.name} » : PID {bot.pid}, {bot.role or '?'} — {bot.health_url}"
            f" — journal : {bot.log_path}"
        )
    lines += [
        "  Courriels entrants : seul le bot actif écoute, sur son port ("
        + ", ".join(f"{b.name} {b.smtp_port}" for b in bots)
        + ").",
        "  Pour essayer une bascule à la main :",
        f"    kill -9 {active.pid}      (le bot actif meurt : « {standby.name} » prend le relais",
        "                        en quelques secondes ; le tué redémarre comme secours)",
        f"    kill -STOP {active.pid}   (le bot actif se fige ; après kill -CONT {active.pid},",
        "                        il voit son bail perdu, s'arrête et redémarre comme secours)",
        "  puis écrivez !aide au bot : le nouvel actif répond. Chaque changement de rôle",
        "  s'affiche ici ; « curl URL » montre le rôle (« standby » pour le secours).",
        "  Les PID à jour sont dans dev-accounts.json (« bots »).",
    ]
    return lines


async def run_dev_standby(data_dir: Path, database_url: str) -> None:
    data_dir = data_dir.resolve()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if (data_dir / "aplus.db").exists():
        raise SystemExit(
            f"{data_dir} est le dossier d'une démonstration sur SQLite (« aplus dev ») : "
            "choisissez un autre --data-dir pour la démonstration à deux bots."
        )
    bot_url = bot_database_url(database_url)
    known = data_dir / STANDBY_DIR / "database_url"
    if known.exists() and known.read_text().strip() != bot_url:
        # The folder's bot device and crypto store go with the database it used.
        raise SystemExit(
            f"{data_dir} est la démonstration de la base {_where(known.read_text().strip())}, "
            f"pas de {_where(bot_url)} : relancez avec cette base ou choisissez un autre "
            "--data-dir."
        )
    await ensure_database(database_url)
    synapse, settings, facts = await prepare(data_dir, database_url=bot_url, guard_ports=2)
    mail = MailFolderSink(data_dir / "mail")
    folder = data_dir / STANDBY_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    (data_dir / "logs").mkdir(mode=0o700, exist_ok=True)
    supervisor: Supervisor | None = None
    accounts = data_dir / "dev-accounts.json"
    try:
        await mail.start()
        write_private(folder / "database_url", bot_url + "\n")

        # Secrets in files readable by their owner only, named by `*_file` keys, as in
        # production: the two configuration files are whole (`aplus check --config`,
        # `aplus run --config` by hand), and no caller's variable may override them.
        secret_dir = folder / "secrets"
        secret_dir.mkdir(mode=0o700, exist_ok=True)
        secret_values = {
            "bot_password": settings.bot.password,
            "pickle_key": settings.secrets.pickle_key,
            "data_key": settings.secrets.data_key,
            "synapse_admin_token": settings.admin.synapse_admin_token,
        }
        for secret_name, secret in secret_values.items():
            if secret is not None:
                write_private(secret_dir / secret_name, secret.reveal())
        env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV_VARS}
        guard_secret = data_dir / "guard_shared_secret"
        bots = []
        for name, guard_port in zip(NAMES, facts["guard_ports"], strict=True):
            health_port = kept_port(folder / f"{name}.health_port")
            smtp_port = kept_port(folder / f"{name}.smtp_port")
            config = folder / f"{name}.toml"
            doc: dict[str, dict[str, Any]] = {
                "homeserver": {"url": settings.homeserver.url, "server_name": synapse.server_name},
                "bot": {"user_id": settings.bot.user_id, "password_file": "secrets/bot_password"},
                "secrets": {
                    "pickle_key_file": "secrets/pickle_key",
                    "data_key_file": "secrets/data_key",
                },
                "data": {"dir": str(data_dir)},
                "database": {"url_file": "database_url"},
                "health": {"port": health_port},
                "guard": {
                    "enabled": True,
                    "port": guard_port,
                    "shared_secret_file": str(guard_secret),
                },
                "email": {**DEV_EMAIL, "relay_port": mail.port, "listen_port": smtp_port},
                "ha": {"enabled": True},
            }
            if settings.admin.synapse_admin_token is not None:
                doc["admin"] = {"synapse_admin_token_file": "secrets/synapse_admin_token"}
            config.write_text(_toml(doc))
            os.chmod(config, 0o600)
            load_settings(config, env)  # every mistake here, before any process starts
            bots.append(
                BotProcess(
                    name, config, data_dir / "logs" / f"{name}.log", health_port, smtp_port, env
                )
            )

        def remember() -> None:
            facts["bots"] = {b.name: b.describe() for b in bots}
            write_private(accounts, json.dumps(facts, indent=2, ensure_ascii=False))

        facts["database"] = _where(bot_url)
        facts["mail_dir"] = str(mail.folder)
        # The listener of the active bot only: the principal's at first (both listed below).
        facts["smtp_inbound"] = {"host": "127.0.0.1", "port": bots[0].smtp_port}
        supervisor = Supervisor(bots, remember, stop)
        timeout = aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            principal, secours = bots
            print("Démarrage du bot « principal » (il prendra le bail)…", flush=True)
            await principal.start()
            if await _unless_stopped(supervisor.wait_role(principal, ACTIVE, http), stop):
                print("Démarrage du bot « secours »…", flush=True)
                await secours.start()
                if await _unless_stopped(supervisor.wait_role(secours, STANDBY, http), stop):
                    supervisor.watch(http)
                    print_welcome(facts, data_dir, _failover_help(bots))
                    await stop.wait()
            print("Arrêt demandé : les deux bots s'arrêtent proprement.", flush=True)
            await supervisor.stop()
    except BotFailed as exc:
        raise SystemExit(str(exc)) from None
    finally:
        if supervisor is not None and not supervisor.stopping:
            await supervisor.stop()
        await mail.close()
        await synapse.stop()
        (synapse.data_dir / SYNAPSE_PID_FILE).unlink(missing_ok=True)
