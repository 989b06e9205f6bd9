"""The module's configuration, validated before Synapse starts (no Synapse import here).

Messages are in French, for the operator who reads Synapse's start-up error. The
adapter turns a ``GuardConfigError`` into Synapse's ``ConfigError`` with the key's
path, so Synapse (and ``python -m synapse.config -c``) refuses to start and names it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_TIMEOUT_SECONDS = 5.0
DEFAULT_TIMEOUT_SECONDS = 2.0
MIN_SECRET_CHARS = 32

KEYS = ("bot_user_id", "api_urls", "shared_secret_path", "timeout_seconds")

_USER_ID_RE = re.compile(r"^@[a-z0-9._=/+-]+:[A-Za-z0-9.\-\[\]:]+$")


class GuardConfigError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key} : {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class GuardConfig:
    bot_user_id: str
    api_urls: tuple[str, ...]
    timeout_seconds: float
    shared_secret: str = field(repr=False)

    @property
    def budget_per_url(self) -> float:
        """Each URL gets its share of the timeout: a hung first bot leaves time for the next."""
        return self.timeout_seconds / len(self.api_urls)


def parse_guard_config(raw: object) -> GuardConfig:
    """Validate the ``config:`` mapping of the module; raise on the first problem."""
    if not isinstance(raw, Mapping):
        raise GuardConfigError("config", "doit être une table (bot_user_id, api_urls, …)")
    unknown = sorted(str(k) for k in raw if k not in KEYS)
    if unknown:
        raise GuardConfigError(unknown[0], f"clé inconnue ; clés possibles : {', '.join(KEYS)}")
    return GuardConfig(
        bot_user_id=_bot_user_id(raw.get("bot_user_id")),
        api_urls=_api_urls(raw.get("api_urls")),
        timeout_seconds=_timeout(raw.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)),
        shared_secret=_secret(raw.get("shared_secret_path")),
    )


def _bot_user_id(value: object) -> str:
    if value is None:
        raise GuardConfigError("bot_user_id", "clé obligatoire : l'identifiant Matrix du bot")
    if not isinstance(value, str) or not _USER_ID_RE.match(value):
        raise GuardConfigError(
            "bot_user_id",
            "identifiant Matrix invalide : attendu @nom:serveur (ex. @aplus:exemple.fr)",
        )
    return value


def _api_urls(value: object) -> tuple[str, ...]:
    key = "api_urls"
    if value is None:
        raise GuardConfigError(
            key, "clé obligatoire : la liste des adresses du bot (et du secours)"
        )
    if not isinstance(value, list) or not value:
        raise GuardConfigError(
            key, 'doit être une liste non vide d\'adresses, ex. ["http://127.0.0.1:9181"]'
        )
    urls: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise GuardConfigError(key, "chaque adresse doit être une chaîne")
        problem = _url_problem(item)
        if problem is not None:
            raise GuardConfigError(key, f"« {item} » : {problem}")
        if item.rstrip("/") not in urls:
            urls.append(item.rstrip("/"))
    return tuple(urls)


def _url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "adresse invalide"
    if parts.scheme not in ("http", "https") or not host:
        return "attendu http://adresse:port ou https://nom:port"
    if parts.query or parts.fragment or parts.username or parts.password:
        return "ni paramètres, ni fragment, ni identifiants dans l'adresse"
    if parts.path not in ("", "/"):
        return "seulement l'adresse de base du bot, sans chemin"
    if port is None and parts.scheme == "http":
        return "port manquant (ex. http://127.0.0.1:9181)"
    if parts.scheme == "http" and not _private_host(host):
        # The shared secret travels in the clear over http: only on this machine or a
        # private network.
        return "http:// seulement vers 127.0.0.1, localhost ou une adresse privée (sinon https://)"
    return None


def _private_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not address.is_unspecified and (address.is_loopback or address.is_private)


def _timeout(value: object) -> float:
    key = "timeout_seconds"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GuardConfigError(key, "doit être un nombre de secondes (ex. 2)")
    if not 0 < value <= MAX_TIMEOUT_SECONDS:
        raise GuardConfigError(
            key,
            f"doit être supérieur à 0 et au plus {MAX_TIMEOUT_SECONDS:g} secondes : une "
            "invitation attend la réponse du bot pendant ce temps",
        )
    return float(value)


def _secret(value: object) -> str:
    key = "shared_secret_path"
    if value is None:
        raise GuardConfigError(key, "clé obligatoire : le fichier du secret partagé avec le bot")
    if not isinstance(value, str) or not value.strip():
        raise GuardConfigError(key, "doit être un chemin de fichier")
    try:
        fd = os.open(value, os.O_RDONLY)
    except OSError as exc:
        raise GuardConfigError(key, f"fichier illisible : {value} ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise GuardConfigError(key, f"n'est pas un fichier ordinaire : {value}")
        if mode & 0o077:
            raise GuardConfigError(
                key,
                f"droits trop ouverts ({stat.S_IMODE(mode):04o}) sur {value} : lisible par "
                f"le seul compte de Synapse (chmod 600 {value})",
            )
        try:
            secret = handle.read().decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise GuardConfigError(key, f"fichier illisible (pas de l'UTF-8) : {value}") from None
    if len(secret) < MIN_SECRET_CHARS:
        raise GuardConfigError(
            key,
            f"secret trop court dans {value} : au moins {MIN_SECRET_CHARS} caractères "
            "(ex. openssl rand -base64 32)",
        )
    return secret
