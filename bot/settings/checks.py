"""The checks of single values (URLs, names, keys, addresses): each returns the French
message of the problem, or None; and the redaction of a database URL for logs."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Final
from urllib.parse import parse_qsl, urlsplit

DATA_KEY_BYTES: Final = 32
MIN_PICKLE_KEY_CHARS: Final = 16


_LOCAL_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})
_SERVER_NAME_RE: Final = re.compile(
    r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::[0-9]{1,5})?$"
)
_USER_ID_RE: Final = re.compile(r"^@([a-z0-9._=/+-]+):(.+)$")
_ROOM_VERSION_RE: Final = re.compile(r"^[0-9a-z.-]+$")


def check_homeserver_url(value: str) -> str | None:
    message = "doit commencer par https:// (ou http:// sur 127.0.0.1/localhost)"
    try:
        parts = urlsplit(value)
        host = parts.hostname
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return message
    if not host or parts.query or parts.fragment:
        return message
    if parts.scheme == "https" or (parts.scheme == "http" and host in _LOCAL_HOSTS):
        return None
    return message


def check_server_name(value: str) -> str | None:
    if _SERVER_NAME_RE.match(value):
        return None
    return "nom de serveur Matrix invalide (ex. : administration-plus.fr, sans https://)"


def check_user_id(value: str) -> str | None:
    match = _USER_ID_RE.match(value)
    if match and _SERVER_NAME_RE.match(match.group(2)):
        return None
    return "identifiant Matrix invalide : attendu @nom:serveur (nom en minuscules)"


def check_room_version(value: str) -> str | None:
    return None if _ROOM_VERSION_RE.match(value) else 'version de salon invalide (ex. : "12")'


def check_pickle_key(value: str) -> str | None:
    if len(value) < MIN_PICKLE_KEY_CHARS:
        return f"trop courte : au moins {MIN_PICKLE_KEY_CHARS} caractères"
    return None


def check_data_key(value: str) -> str | None:
    message = (
        f"doit être le base64 de {DATA_KEY_BYTES} octets (générer avec : openssl rand -base64 32)"
    )
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return message
    return None if len(decoded) == DATA_KEY_BYTES else message


def check_database_url(value: str) -> str | None:
    message = "schéma non pris en charge : sqlite+aiosqlite:///chemin ou postgresql+asyncpg://…"
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        return "URL de base de données invalide"
    if parts.scheme == "sqlite+aiosqlite":
        return None if value.startswith("sqlite+aiosqlite:///") else message
    if parts.scheme == "postgresql+asyncpg":
        return None if parts.hostname or "host=" in parts.query else "hôte PostgreSQL manquant"
    return message


# Query keys libpq (and asyncpg, through SQLAlchemy) read a password from.
_PASSWORD_QUERY_KEYS: Final = frozenset({"password", "passfile"})


def _query_keys(query: str) -> set[str]:
    return {key.strip().lower() for key, _ in parse_qsl(query, keep_blank_values=True)}


def url_has_password(value: str) -> bool:
    """A password in the user-info (``user:pw@``) or in the query (``?password=``)."""
    try:
        parts = urlsplit(value)
        in_userinfo = parts.password is not None
    except ValueError:
        return False
    return in_userinfo or bool(_query_keys(parts.query) & _PASSWORD_QUERY_KEYS)


def redact_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return "<URL illisible>"
    if _query_keys(parts.query) & _PASSWORD_QUERY_KEYS:
        query = "&".join(
            f"{key}=***" if key.strip().lower() in _PASSWORD_QUERY_KEYS else f"{key}={val}"
            for key, val in parse_qsl(parts.query, keep_blank_values=True)
        )
        parts = parts._replace(query=query)
    if password:
        userinfo, _, host = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}:***@{host}")
    return parts.geturl()


_MAIL_DOMAIN_RE: Final = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
_MAIL_ADDRESS_RE: Final = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@(.+)$")
_LOOP_MARKER_RE: Final = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def check_mail_domain(value: str) -> str | None:
    return (
        None
        if _MAIL_DOMAIN_RE.match(value)
        else "nom de domaine invalide (ex. : reponse.exemple.fr)"
    )


def check_mail_address(value: str) -> str | None:
    match = _MAIL_ADDRESS_RE.match(value)
    if match and _MAIL_DOMAIN_RE.match(match.group(1)):
        return None
    return "adresse électronique invalide (ex. : ne-pas-repondre@exemple.fr)"


def check_loop_marker(value: str) -> str | None:
    return None if _LOOP_MARKER_RE.match(value) else "lettres, chiffres, . _ - (64 au plus)"


_ROOM_ID_RE: Final = re.compile(r"^![A-Za-z0-9._~=/+-]+(?::.+)?$")


def check_room_id(value: str) -> str | None:
    if _ROOM_ID_RE.match(value):
        return None
    return "identifiant de salon invalide (ex. : !abc:serveur)"


_GUARD_SECRET_MIN_CHARS: Final = 32


def check_guard_host(value: str) -> str | None:
    message = (
        "seulement 127.0.0.1, ::1 ou une adresse IP privée : Synapse est seul à appeler "
        "ce point d'accès"
    )
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return message
    if address.is_unspecified:  # 0.0.0.0 or ::, every interface: counts as "private"
        return message
    return None if address.is_loopback or address.is_private else message


def check_guard_secret(value: str) -> str | None:
    if len(value) < _GUARD_SECRET_MIN_CHARS:
        return (
            f"trop court : au moins {_GUARD_SECRET_MIN_CHARS} caractères "
            "(générer avec : openssl rand -base64 32)"
        )
    return None
