"""`aplus check`: is this installation ready to run, and if not, what to fix.

Each check gives one French sentence naming the setting or the thing to fix. Offline
checks need only the files; online ones talk to the homeserver, the database, the relay
and the bot's own endpoints. Nothing here changes anything: no login (the stored access
token is used as it is), no crypto store opened (a running bot is left alone), no
message sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import aiosmtplib
import yaml
from sqlalchemy.engine import make_url

from bot.matrix.cross_signing import SEED_SECRET_NAME, CrossSigningSeeds, ServerIdentity
from bot.services.login import saved_login
from bot.settings import Settings
from bot.store import lease as lease_sql
from bot.store.crypto import FieldCipher
from bot.store.db import Store, head_revision

GUARD_MODULE = "synapse_module.aplus_guard.AplusGuard"
CHECK_PATH = "/aplus-guard/v1/check"
TIMEOUT = aiohttp.ClientTimeout(total=10)
# A question the guard endpoint must refuse: nobody, in a demande that cannot exist.
REFUSED_QUESTION = {
    "action": "join",
    "reference": "A-0001-000001",
    "user": "@aplus-check:invalid.test",
}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool | None  # None: not applicable here, or could not be verified
    text: str


def render(checks: Sequence[Check]) -> str:
    marks = {True: "OK     ", False: "ÉCHEC  ", None: "—      "}
    failed = sum(1 for c in checks if c.ok is False)
    lines = [f"{marks[c.ok]}{c.name} : {c.text}" for c in checks]
    summary = (
        "Tout est prêt." if failed == 0 else f"{failed} point(s) à corriger avant de démarrer."
    )
    return "\n".join([*lines, "", summary])


# --------------------------------------------------------------------------- offline


def check_files(settings: Settings) -> list[Check]:
    """The data folder and the secret files: private to the service's account."""
    out = []
    data = settings.data.dir
    if data.exists():
        mode = stat.S_IMODE(data.stat().st_mode)
        if mode & 0o077:
            out.append(
                Check(
                    "dossier des données",
                    False,
                    f"{data} est lisible par d'autres comptes (droits {mode:o}) : "
                    f"chmod 700 {data} (data.dir).",
                )
            )
        else:
            out.append(Check("dossier des données", True, f"{data}, privé."))
    else:
        out.append(Check("dossier des données", None, f"{data} sera créé au premier démarrage."))
    return out


def check_module_config(settings: Settings, synapse_config: Path | None) -> list[Check]:
    """The guard module's configuration in homeserver.yaml agrees with the bot's."""
    name = "module de Synapse"
    if synapse_config is None:
        return [Check(name, None, "indiquez --synapse-config homeserver.yaml pour le vérifier.")]
    try:
        doc = yaml.safe_load(synapse_config.read_text())
    except (OSError, yaml.YAMLError) as exc:
        return [Check(name, False, f"{synapse_config} illisible ({exc}).")]
    modules = doc.get("modules") if isinstance(doc, Mapping) else None
    entry = next(
        (m for m in modules or [] if isinstance(m, Mapping) and m.get("module") == GUARD_MODULE),
        None,
    )
    if entry is None:
        return [
            Check(
                name,
                False,
                f"{synapse_config} ne charge pas {GUARD_MODULE} (section modules) : "
                "voir deploy/synapse-module.md.",
            )
        ]
    config = entry.get("config") or {}
    problems = []
    if config.get("bot_user_id") != settings.bot.user_id:
        problems.append(
            f"bot_user_id vaut {config.get('bot_user_id')!r} et bot.user_id "
            f"{settings.bot.user_id!r}"
        )
    guard = settings.guard
    if not guard.enabled:
        problems.append("le module est chargé mais guard.enabled est false dans la configuration")
    else:
        urls = [str(u).rstrip("/") for u in config.get("api_urls") or []]
        own = f"http://{guard.host}:{guard.port}"
        if own not in urls:
            problems.append(f"api_urls ({', '.join(urls) or 'vide'}) ne contient pas {own}")
        secret_path = config.get("shared_secret_path")
        try:
            module_secret = Path(str(secret_path)).read_text().strip()
        except OSError:
            problems.append(f"shared_secret_path ({secret_path}) illisible")
        else:
            expected = guard.shared_secret.reveal() if guard.shared_secret else ""
            if not hmac.compare_digest(module_secret.encode(), expected.encode()):
                problems.append("le secret de shared_secret_path diffère de guard.shared_secret")
    timeout = config.get("timeout_seconds", 2)
    if not isinstance(timeout, int | float) or not 0 < timeout <= 5:
        problems.append(f"timeout_seconds vaut {timeout!r} (entre 0 et 5 secondes)")
    if problems:
        return [Check(name, False, "; ".join(problems) + ".")]
    return [Check(name, True, "sa configuration correspond à celle du bot.")]


# --------------------------------------------------------------------------- online


class _Http:
    def __init__(self, base: str, token: str | None) -> None:
        self.base = base.rstrip("/")
        self.token = token

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        token: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        headers = {}
        if token or self.token:
            headers["Authorization"] = f"Bearer {token or self.token}"
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.request(method, self.base + path, json=body, headers=headers) as resp,
        ):
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = None
            return resp.status, data if isinstance(data, dict) else {}


async def check_online(settings: Settings, synapse_config: Path | None = None) -> list[Check]:
    s = settings
    out: list[Check] = []
    http = _Http(s.homeserver.url, None)
    try:
        status, versions = await http.call("GET", "/_matrix/client/versions")
        reachable = status == 200 and "versions" in versions
    except (aiohttp.ClientError, TimeoutError) as exc:
        reachable, status = False, 0
        out.append(
            Check(
                "serveur Matrix",
                False,
                f"{s.homeserver.url} injoignable ({exc}) : "
                "vérifiez homeserver.url et que Synapse tourne.",
            )
        )
    else:
        out.append(
            Check("serveur Matrix", True, f"{s.homeserver.url} répond.")
            if reachable
            else Check(
                "serveur Matrix",
                False,
                f"{s.homeserver.url} répond {status} à /versions : est-ce bien Synapse "
                "(homeserver.url) ?",
            )
        )
    store = await _open_store(s, out)
    if store is None:
        return out
    if await store.current_revision() != head_revision():
        await store.close()
        out.append(
            Check(
                "connexion du bot",
                None,
                "attend que le schéma de la base soit à jour (premier démarrage du bot).",
            )
        )
        return out
    try:
        login = await saved_login(store, s.bot.user_id)
        if reachable:
            out += await _bot_account(s, http, login)
            if login is not None:
                out += await _cross_signing(s, http, store, login.access_token, login)
                out += await _ratelimit(s, http)
        out += await _relay(s)
        out += await _listener(s)
        out += await _guard_endpoint(s, store, synapse_config)
        out += await _lease(s, store)
    finally:
        await store.close()
    return out


def _sqlite_file_to_come(url: str) -> Path | None:
    """The SQLite file of a bot that never started: its folder does not exist yet."""
    parsed = make_url(url)
    if not parsed.get_backend_name().startswith("sqlite") or not parsed.database:
        return None
    path = Path(parsed.database)
    return None if path.parent.exists() else path


async def _open_store(s: Settings, out: list[Check]) -> Store | None:
    name = "base de données"
    to_come = _sqlite_file_to_come(s.database.url.reveal())
    if to_come is not None:
        # Not an error, and not worth a connection attempt (aiosqlite's thread would
        # outlive a failed one): the bot creates the file at its first start.
        out.append(Check(name, None, f"{to_come} sera créée au premier démarrage."))
        return None
    try:
        cipher = FieldCipher.from_secret(s.secrets.data_key.reveal())
        store = await Store.connect(s.database.url.reveal(), cipher)
    except Exception as exc:
        out.append(
            Check(
                name,
                False,
                f"{s.database.redacted_url} : {type(exc).__name__} — vérifiez "
                "database.url et que la base répond.",
            )
        )
        return None
    revision = await store.current_revision()
    head = head_revision()
    if revision != head:
        out.append(
            Check(
                name,
                False,
                f"schéma en version {revision or 'vide'}, attendue {head} : le bot la met "
                "à jour à son démarrage (ou arrêtez l'ancienne version d'abord).",
            )
        )
    else:
        out.append(Check(name, True, f"{s.database.redacted_url}, schéma à jour ({head})."))
    return store


async def _bot_account(s: Settings, http: _Http, login: Any) -> list[Check]:
    out = []
    if login is None:
        out.append(
            Check(
                "connexion du bot",
                None,
                "le bot ne s'est encore jamais connecté : il créera son appareil au premier "
                "démarrage (bot.password).",
            )
        )
        return out
    status, who = await http.call(
        "GET", "/_matrix/client/v3/account/whoami", token=login.access_token
    )
    if status != 200:
        out.append(
            Check(
                "connexion du bot",
                False,
                f"le jeton enregistré est refusé (HTTP {status}) : le bot se reconnectera avec "
                "bot.password, sur le même appareil.",
            )
        )
        return out
    if who.get("user_id") != s.bot.user_id or who.get("device_id") != login.device_id:
        out.append(
            Check(
                "connexion du bot",
                False,
                f"le jeton enregistré est celui de {who.get('user_id')} ({who.get('device_id')}), "
                f"pas de {s.bot.user_id} ({login.device_id}) : vérifiez bot.user_id.",
            )
        )
        return out
    out.append(Check("connexion du bot", True, f"{s.bot.user_id}, appareil {login.device_id}."))
    user = quote(s.bot.user_id, safe="")
    status, _ = await http.call("GET", f"/_synapse/admin/v2/users/{user}", token=login.access_token)
    if status == 200:
        out.append(
            Check(
                "compte du bot",
                False,
                f"{s.bot.user_id} est administrateur du serveur : Synapse ne soumet pas ses "
                "demandes au module de garde. Retirez-lui ce droit (l'effacement des données "
                "garde son propre jeton, admin.synapse_admin_token_file).",
            )
        )
    else:
        out.append(Check("compte du bot", True, "compte ordinaire (pas administrateur)."))
    return out


async def _cross_signing(
    s: Settings, http: _Http, store: Store, token: str, login: Any
) -> list[Check]:
    name = "signature croisée"
    status, keys = await http.call(
        "POST",
        "/_matrix/client/v3/keys/query",
        body={"device_keys": {s.bot.user_id: []}},
        token=token,
    )
    if status != 200:
        return [Check(name, False, f"lecture des clés impossible (HTTP {status}).")]
    identity = ServerIdentity.from_query(keys, s.bot.user_id, login.device_id)
    async with store.transaction() as tx:
        stored = await tx.get_secret(SEED_SECRET_NAME)
    if identity.master_key is None:
        return [Check(name, False, "aucune identité publiée : le bot la crée à son démarrage.")]
    try:
        kept = CrossSigningSeeds.from_bytes(stored).master_public if stored else None
    except ValueError:
        kept = None  # unreadable: as good as absent
    if kept != identity.master_key:
        return [
            Check(
                name,
                False,
                "la clé maîtresse publiée n'est pas celle que le service conserve : une autre "
                "identité a été publiée pour le bot ; Element exclurait ses messages.",
            )
        ]
    if not identity.device_signed(s.bot.user_id):
        return [Check(name, False, f"l'appareil {login.device_id} n'est pas signé.")]
    return [Check(name, True, "publiée, conforme, appareil signé (Element l'accepte).")]


async def _ratelimit(s: Settings, http: _Http) -> list[Check]:
    name = "limites de débit"
    token = s.admin.synapse_admin_token.reveal() if s.admin.synapse_admin_token else None
    if token is None:
        return [
            Check(
                name,
                None,
                "non vérifiable sans jeton d'administration (admin.synapse_admin_token_file).",
            )
        ]
    user = quote(s.bot.user_id, safe="")
    status, body = await http.call(
        "GET", f"/_synapse/admin/v1/users/{user}/override_ratelimit", token=token
    )
    if status != 200:
        return [Check(name, False, f"lecture impossible (HTTP {status}) avec le jeton d'admin.")]
    if body.get("messages_per_second") == 0 and body.get("burst_count") == 0:
        return [Check(name, True, "levées pour le bot.")]
    return [
        Check(
            name,
            False,
            "le bot est soumis aux limites de débit de Synapse : levez-les (POST "
            f"/_synapse/admin/v1/users/{s.bot.user_id}/override_ratelimit, voir "
            "deploy/README.md).",
        )
    ]


async def _relay(s: Settings) -> list[Check]:
    e = s.email
    name = "relais SMTP"
    if not e.enabled:
        return [Check(name, None, "passerelle de courriel désactivée (email.enabled).")]
    client = aiosmtplib.SMTP(
        hostname=e.relay_host,
        port=e.relay_port,
        timeout=10,
        use_tls=e.relay_security == "tls",
        start_tls=False,
    )
    try:
        await client.connect()
        if e.relay_security == "starttls":
            await client.starttls()
        await client.ehlo()
    except (aiosmtplib.SMTPException, OSError) as exc:
        return [
            Check(
                name,
                False,
                f"{e.relay_host}:{e.relay_port} ne répond pas ({type(exc).__name__}) : vérifiez "
                "email.relay_host, email.relay_port et email.relay_security.",
            )
        ]
    finally:
        with contextlib.suppress(Exception):
            await client.quit()
    how = {"starttls": ", STARTTLS négocié", "tls": ", en TLS"}.get(e.relay_security, "")
    return [Check(name, True, f"{e.relay_host}:{e.relay_port} répond{how}.")]


async def _listener(s: Settings) -> list[Check]:
    e = s.email
    name = "réception des réponses"
    if not e.enabled:
        return []
    if e.listen_port == 0:
        return [Check(name, None, "port choisi au démarrage (email.listen_port = 0).")]
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(e.listen_host, e.listen_port), 5
        )
    except (OSError, TimeoutError):
        free = _port_free(e.listen_host, e.listen_port)
        if free:
            return [
                Check(
                    name,
                    True,
                    f"{e.listen_host}:{e.listen_port} libre : le bot y écoutera (le serveur de "
                    "courriel doit y remettre les réponses).",
                )
            ]
        return [Check(name, False, f"{e.listen_host}:{e.listen_port} n'est pas utilisable.")]
    try:
        banner = await asyncio.wait_for(reader.readline(), 5)
    except TimeoutError:
        banner = b""
    finally:
        writer.close()
    if banner.startswith(b"220"):
        return [Check(name, True, f"{e.listen_host}:{e.listen_port} : le bot écoute.")]
    return [
        Check(
            name,
            False,
            f"{e.listen_host}:{e.listen_port} est pris par un autre programme : changez "
            "email.listen_port.",
        )
    ]


async def _lease(s: Settings, store: Store) -> list[Check]:
    """Two processes, one active (`[ha]`): which one holds the lease now."""
    name = "bot actif"
    if not s.ha.enabled:
        return []
    async with store.engine.connect() as conn:
        state = await lease_sql.read(conn)
    if state is None:
        return [Check(name, None, "aucun bot n'a encore démarré sur cette base.")]
    if state.expired:
        return [
            Check(
                name,
                False,
                f"aucun : le bail (époque {state.epoch}, dernier actif {state.holder}) a "
                "expiré ; le bot de secours le reprend s'il tourne.",
            )
        ]
    return [Check(name, True, f"{state.holder} (époque {state.epoch}).")]


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


async def _guard_endpoint(s: Settings, store: Store, synapse_config: Path | None) -> list[Check]:
    name = "réponses au module"
    g = s.guard
    if not g.enabled or g.shared_secret is None:
        return [Check(name, None, "garde désactivée (guard.enabled).")]
    urls = _module_urls(synapse_config) or [f"http://{g.host}:{g.port}"]
    async with store.transaction() as tx:
        ready = [d for d in await tx.list_demandes() if d.room_id and d.creation_step == "ready"]
    allowed_question = (
        {"action": "join", "reference": ready[0].reference, "user": s.bot.user_id}
        if ready
        else None
    )
    out = []
    for url in urls:
        out.append(await _ask(url, g.shared_secret.reveal(), allowed_question, name))
    return out


async def _ask(
    url: str, secret: str, allowed_question: Mapping[str, Any] | None, name: str
) -> Check:
    http = _Http(url, secret)
    try:
        status, refused = await http.call("POST", CHECK_PATH, body=REFUSED_QUESTION)
    except (aiohttp.ClientError, TimeoutError):
        return Check(name, None, f"{url} ne répond pas : le bot est-il démarré ? (guard.port)")
    if status == 401:
        return Check(name, False, f"{url} refuse le secret partagé (guard.shared_secret_file).")
    if status != 200 or refused.get("allow") is not False:
        return Check(name, False, f"{url} n'a pas refusé une question qu'il doit refuser.")
    if allowed_question is None:
        return Check(name, True, f"{url} refuse ce qu'il doit refuser (aucune demande encore).")
    status, allowed = await http.call("POST", CHECK_PATH, body=allowed_question)
    if status != 200 or allowed.get("allow") is not True:
        return Check(name, False, f"{url} refuse ce que le registre autorise : vérifiez la base.")
    return Check(name, True, f"{url} répond selon le registre (refus et accord vérifiés).")


def _module_urls(synapse_config: Path | None) -> list[str]:
    if synapse_config is None:
        return []
    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError, TypeError):
        doc = yaml.safe_load(synapse_config.read_text())
        for m in doc.get("modules") or []:
            if m.get("module") == GUARD_MODULE:
                return [str(u).rstrip("/") for u in (m.get("config") or {}).get("api_urls", [])]
    return []
