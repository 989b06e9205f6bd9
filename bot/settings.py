"""Typed, frozen settings, read once at start-up from a TOML file.

Every problem found in the file is collected and reported together in one
``SettingsError`` (dotted key + French message), so an operator fixes the whole
file in one pass instead of one error per restart.

Secrets never live in the TOML file: each comes from an environment variable or
from a ``*_file`` readable by its owner only. When both are given, the
environment variable wins and the file is not read (the usual container /
systemd convention; documented in ``deploy/config.example.toml``).

Adding a section: one frozen dataclass, one small ``@_section("name")``
function that reads it through ``_Table``, and one field of that name on
``Settings``. Sections are parsed in registration order, so a section may use
an earlier one (``bot`` checks its user ID against ``homeserver``).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hmac
import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar
from urllib.parse import parse_qsl, urlsplit

PLACEHOLDER: Final = "CHANGE_ME"
REPO_POLICIES_DIR: Final = Path(__file__).resolve().parent.parent / "policies"
DEFAULT_MAX_ATTACHMENT_BYTES: Final = 10 * 1024 * 1024
# What a reply needs: one attachment at the inbound limit (10 MiB), base64-encoded
# (x 1.37 with its line breaks: 13.7 MiB), plus text, HTML and quoted history.
DEFAULT_MAX_MESSAGE_BYTES: Final = 15 * 1024 * 1024
# The listener listens on loopback by default: only a local MTA may connect.
DEFAULT_ALLOWED_PEERS: Final = ("127.0.0.0/8", "::1")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")

ENV_BOT_PASSWORD: Final = "APLUS_BOT_PASSWORD"  # noqa: S105 (a variable name)
ENV_BOT_ACCESS_TOKEN: Final = "APLUS_BOT_ACCESS_TOKEN"  # noqa: S105 (a variable name)
ENV_PICKLE_KEY: Final = "APLUS_PICKLE_KEY"
ENV_DATA_KEY: Final = "APLUS_DATA_KEY"
ENV_DATABASE_URL: Final = "APLUS_DATABASE_URL"
ENV_SMTP_PASSWORD: Final = "APLUS_SMTP_PASSWORD"  # noqa: S105 (a variable name)
ENV_DKIM_PRIVATE_KEY: Final = "APLUS_DKIM_PRIVATE_KEY"
ENV_SYNAPSE_ADMIN_TOKEN: Final = "APLUS_SYNAPSE_ADMIN_TOKEN"  # noqa: S105 (a variable name)
ENV_GUARD_SECRET: Final = "APLUS_GUARD_SHARED_SECRET"  # noqa: S105 (a variable name)
SECRET_ENV_VARS: Final = frozenset(
    {
        ENV_BOT_PASSWORD,
        ENV_BOT_ACCESS_TOKEN,
        ENV_PICKLE_KEY,
        ENV_DATA_KEY,
        ENV_DATABASE_URL,
        ENV_SMTP_PASSWORD,
        ENV_DKIM_PRIVATE_KEY,
        ENV_SYNAPSE_ADMIN_TOKEN,
        ENV_GUARD_SECRET,
    }
)

DEFAULT_ALLOWED_ATTACHMENT_TYPES: Final = (
    "application/pdf",
    "image/jpeg",
    "image/png",
    "text/plain",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/msword",
)
# `Settings.for_dev(email=...)`: the bridge on loopback, for `aplus dev` and tests.
DEV_EMAIL: Final[Mapping[str, Any]] = {
    "enabled": True,
    "from_address": "ne-pas-repondre@aplus.test",
    "reply_domain": "reponse.aplus.test",
    "loop_marker": "aplus-dev",
    "relay_host": "127.0.0.1",
    "relay_port": 2525,
    "relay_security": "none",
    "retry_initial_seconds": 1,
    "retry_max_seconds": 30,
    "listen_host": "127.0.0.1",
    "listen_port": 0,
    "trusted_authserv_ids": ["aplus-dev"],
}

DATA_KEY_BYTES: Final = 32
MIN_PICKLE_KEY_CHARS: Final = 16


class Secret:
    """A secret value that never shows up in ``repr``, ``str`` or f-strings."""

    __slots__ = ("_value",)
    __hash__: ClassVar[None]  # type: ignore[assignment]

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret holds a str")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        # Only another Secret compares, in constant time: `secret == "guess"` is
        # always False, so a value cannot be probed or leaked by comparison.
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())


class SettingsError(Exception):
    """All the problems of a configuration, as ``(dotted key, French message)``."""

    def __init__(self, problems: Iterable[tuple[str, str]]) -> None:
        self.problems: tuple[tuple[str, str], ...] = tuple(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        n = len(self.problems)
        head = f"Configuration invalide ({n} problème{'s' if n > 1 else ''}) :"
        return "\n".join([head, *(f"  - {key} : {message}" for key, message in self.problems)])


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True)
class HomeserverSettings:
    url: str
    server_name: str


@dataclass(frozen=True, slots=True)
class DataSettings:
    dir: Path


@dataclass(frozen=True, slots=True)
class BotSettings:
    user_id: str
    device_name: str
    store_dir: Path
    room_version: str
    require_cross_signed_devices: bool
    max_attachment_bytes: int
    undecryptable_notice_after_seconds: int
    password: Secret
    access_token: Secret | None
    # An event whose handling fails is retried on its own this many times (a doubling
    # delay from the base), then given up, audited and told in the room.
    event_retry_attempts: int = 8
    event_retry_base_seconds: int = 30
    # How many rooms' events are handled at once (those of one room, in order).
    room_concurrency: int = 8


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    url: Secret  # may embed a password

    @property
    def redacted_url(self) -> str:
        """The URL with any password masked, fit for logs."""
        return _redact_url(self.url.reveal())

    @property
    def is_sqlite(self) -> bool:
        return self.url.reveal().startswith("sqlite")


@dataclass(frozen=True, slots=True)
class PoliciesSettings:
    dir: Path


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str
    json: bool


@dataclass(frozen=True, slots=True)
class SecretsSettings:
    pickle_key: Secret
    data_key: Secret  # base64 of 32 bytes

    def data_key_bytes(self) -> bytes:
        return base64.b64decode(self.data_key.reveal(), validate=True)


@dataclass(frozen=True, slots=True)
class EmailSettings:
    """The email bridge: outgoing relay, inbound listener, sender authentication."""

    enabled: bool
    from_address: str  # From of every outgoing email (its domain names the Message-IDs)
    from_name: str
    reply_domain: str  # reply+<token>@reply_domain
    loop_marker: str  # value of our X-Aplus-Loop header
    # Outgoing relay.
    relay_host: str
    relay_port: int
    relay_security: str  # "none" | "starttls" | "tls"
    relay_username: str | None
    relay_password: Secret | None
    relay_timeout_seconds: int
    delivery_lifetime_seconds: int
    retry_initial_seconds: int
    retry_max_seconds: int
    max_outbound_attachment_bytes: int
    dkim_domain: str | None
    dkim_selector: str | None
    dkim_private_key: Secret | None
    # Inbound listener.
    listen_host: str
    listen_port: int  # 0: a free port, chosen at start (tests, demo)
    listen_protocol: str  # "smtp" | "lmtp"
    listen_allowed_peers: tuple[str, ...]  # IP networks the MTA connects from
    listen_max_connections: int
    listen_idle_timeout_seconds: int
    max_message_bytes: int
    max_inbound_attachment_bytes: int
    allowed_attachment_types: tuple[str, ...]
    trusted_authserv_ids: tuple[str, ...]
    dkim_verify: bool

    @property
    def from_domain(self) -> str:
        return self.from_address.rpartition("@")[2].lower()


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """The admin room, the follow-up and retention jobs, the homeserver's admin API."""

    room_id: str | None  # None: the bot creates the room and remembers it
    room_name: str
    # A Synapse server-admin token: purging rooms and media needs one (secret).
    synapse_admin_token: Secret | None
    confirmation_minutes: int
    jobs_enabled: bool
    late_first_answer_business_days: int
    late_followup_business_days: int
    digest_after_days: int
    digest_weekday: int  # 1 = lundi … 7 = dimanche
    digest_hour: int  # Paris time
    followup_hour: int
    retention_hour: int
    retention_usager_months: int
    retention_attachment_days: int
    retention_draft_days: int
    retention_audit_days: int


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """The HTTP endpoint with /healthz and /metrics."""

    enabled: bool
    host: str
    port: int  # 0: a free port, chosen at start (tests, demo)


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """The answers to the homeserver guard (the Synapse module of `synapse_module/`)."""

    enabled: bool
    host: str  # loopback or a private address: Synapse alone calls it
    port: int  # 0: a free port, chosen at start (tests)
    shared_secret: Secret | None  # required when enabled; the module reads the same value


@dataclass(frozen=True, slots=True)
class Settings:
    homeserver: HomeserverSettings
    data: DataSettings
    bot: BotSettings
    database: DatabaseSettings
    policies: PoliciesSettings
    logging: LoggingSettings
    secrets: SecretsSettings
    email: EmailSettings
    admin: AdminSettings
    health: HealthSettings
    guard: GuardSettings
    config_path: Path | None = None

    @staticmethod
    def for_dev(
        data_dir: Path,
        homeserver_url: str,
        server_name: str,
        bot_user_id: str,
        secrets: Mapping[str, str],
        email: Mapping[str, Any] | None = None,
        guard: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Settings without a file, for ``aplus dev`` and tests.

        ``secrets`` is keyed by the environment variable names (``APLUS_BOT_PASSWORD``,
        ``APLUS_PICKLE_KEY``, ``APLUS_DATA_KEY``, optionally ``APLUS_BOT_ACCESS_TOKEN``
        and ``APLUS_DATABASE_URL``); the real environment is not read. Values go
        through the same validation as a file.

        ``email``: ``None`` leaves the email bridge off; a mapping (even empty) turns
        it on with ``DEV_EMAIL`` (loopback listener on a free port, trusted
        authserv-id ``aplus-dev``) overridden by the given ``[email]`` keys.

        ``guard``: ``None`` leaves the homeserver guard's endpoint off; a mapping turns
        it on with the given ``[guard]`` keys (``port``, ``shared_secret_file``).
        """
        unknown = sorted(set(secrets) - SECRET_ENV_VARS)
        if unknown:
            raise SettingsError(
                (
                    f"secrets[{name!r}]",
                    f"secret inconnu ; attendus : {', '.join(sorted(SECRET_ENV_VARS))}",
                )
                for name in unknown
            )
        doc: dict[str, Any] = {
            "homeserver": {"url": homeserver_url, "server_name": server_name},
            "bot": {"user_id": bot_user_id},
            "data": {"dir": str(data_dir)},
            # Loopback on a free port: several bots (tests) never collide.
            "health": {"port": 0},
        }
        if email is not None:
            doc["email"] = {**DEV_EMAIL, **email}
        if guard is not None:
            doc["guard"] = {"enabled": True, **guard}
        return _build(doc, config_dir=data_dir, env=secrets, config_path=None)


def load_settings(path: Path, env: Mapping[str, str] = os.environ) -> Settings:
    """Read and validate the TOML file; raise ``SettingsError`` listing every problem."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError([(where, "fichier de configuration introuvable")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError([(where, f"fichier illisible ({exc})")]) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError([(where, f"TOML invalide : {exc}")]) from None
    return _build(doc, config_dir=path.resolve().parent, env=env, config_path=path)


# --------------------------------------------------------------------------- machinery

_T = TypeVar("_T")
_SectionParser = Callable[["_Table"], object]
_SECTIONS: dict[str, _SectionParser] = {}


def _section(name: str) -> Callable[[_SectionParser], _SectionParser]:
    def register(parse: _SectionParser) -> _SectionParser:
        _SECTIONS[name] = parse
        return parse

    return register


class _Absent:
    """Marker: the key is not in the file."""


class _Invalid:
    """Marker: the key is there but already reported as wrong."""


_ABSENT: Final = _Absent()
_INVALID: Final = _Invalid()


class _Loader:
    def __init__(self, config_dir: Path, env: Mapping[str, str]) -> None:
        self.config_dir = config_dir
        self.env = env
        self.problems: list[tuple[str, str]] = []
        self.parsed: dict[str, object] = {}

    def error(self, key: str, message: str) -> None:
        if (key, message) not in self.problems:
            self.problems.append((key, message))

    def has_problem(self, key: str) -> bool:
        return any(k == key for k, _ in self.problems)

    def section(self, cls: type[_T]) -> _T:
        for value in self.parsed.values():
            if isinstance(value, cls):
                return value
        raise LookupError(f"section {cls.__name__} must be registered before its users")

    def resolve(self, raw: str) -> Path:
        path = Path(raw).expanduser()
        return path if path.is_absolute() else self.config_dir / path


def _build(
    doc: Mapping[str, Any], *, config_dir: Path, env: Mapping[str, str], config_path: Path | None
) -> Settings:
    loader = _Loader(config_dir, env)
    for name, value in doc.items():
        if name not in _SECTIONS:
            loader.error(name, _unknown("section inconnue", name, _SECTIONS))
        elif not isinstance(value, dict):
            loader.error(name, f"doit être une section [{name}]")
    for name, parse in _SECTIONS.items():
        raw = doc.get(name, {})
        table = _Table(loader, name, raw if isinstance(raw, dict) else {})
        loader.parsed[name] = parse(table)
        table.report_unknown_keys()
    if loader.problems:
        raise SettingsError(loader.problems)
    return Settings(**loader.parsed, config_path=config_path)  # type: ignore[arg-type]


def _unknown(what: str, name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (vouliez-vous dire « {close[0]} » ?)" if close else ""
    return f"{what}{hint}"


def _type_fr(value: object) -> str:
    names: list[tuple[type, str]] = [
        (bool, "un booléen"),
        (int, "un nombre entier"),
        (float, "un nombre décimal"),
        (str, "une chaîne"),
        (list, "une liste"),
        (dict, "une section"),
        (datetime, "une date-heure"),
        (date, "une date"),
        (time, "une heure"),
    ]
    return next((label for kind, label in names if isinstance(value, kind)), "une valeur")


class _Table:
    """Typed reads of one section; each read records the key as known."""

    def __init__(self, loader: _Loader, name: str, raw: Mapping[str, object]) -> None:
        self.loader = loader
        self.name = name
        self._raw = raw
        self._known: set[str] = set()

    def key(self, key: str) -> str:
        return f"{self.name}.{key}"

    def error(self, key: str, message: str) -> None:
        self.loader.error(self.key(key), message)

    def has_problem(self, key: str) -> bool:
        return self.loader.has_problem(self.key(key))

    def has_key(self, key: str) -> bool:
        return key in self._raw

    def report_unknown_keys(self) -> None:
        for key in self._raw:
            if key not in self._known:
                self.error(key, _unknown("clé inconnue", key, self._known))

    def _get(self, key: str) -> object:
        self._known.add(key)
        if key not in self._raw:
            return _ABSENT
        value = self._raw[key]
        if isinstance(value, str) and PLACEHOLDER in value:
            self.error(key, f"valeur d'exemple « {PLACEHOLDER}… » à remplacer avant de démarrer")
            return _INVALID
        return value

    def _typed(self, key: str, kind: type[_T], label: str) -> _T | _Absent | _Invalid:
        value = self._get(key)
        if isinstance(value, _Absent | _Invalid):
            return value
        # bool is an int in Python: never accept `true` where a number is expected.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.error(key, f"doit être {label}, pas {_type_fr(value)}")
            return _INVALID
        return value

    def text(
        self,
        key: str,
        default: str | None = None,
        *,
        check: Callable[[str], str | None] | None = None,
    ) -> str:
        value = self._typed(key, str, "une chaîne de caractères (entre guillemets)")
        if isinstance(value, _Absent):
            if default is None:
                self.error(key, "clé obligatoire manquante")
            return default or ""
        if isinstance(value, _Invalid):
            return default or ""
        if not value.strip():
            self.error(key, "ne doit pas être vide")
        elif check is not None and (message := check(value)) is not None:
            self.error(key, message)
        return value

    def optional_text(self, key: str) -> str | None:
        value = self._typed(key, str, "une chaîne de caractères (entre guillemets)")
        return value if isinstance(value, str) else None

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """A list of non-empty strings (``["a", "b"]``)."""
        value = self._typed(key, list, "une liste de chaînes")
        if not isinstance(value, list):
            return default
        if not all(isinstance(v, str) and v.strip() for v in value):
            self.error(key, "doit être une liste de chaînes non vides")
            return default
        return tuple(v.strip() for v in value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._typed(key, bool, "true ou false")
        return value if isinstance(value, bool) else default

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        value = self._typed(key, int, "un nombre entier")
        if not isinstance(value, int):
            return default
        if value < minimum:
            self.error(key, f"doit être au moins {minimum}")
        return value

    def choice(self, key: str, choices: Iterable[str], default: str) -> str:
        allowed = tuple(choices)
        value = self.text(key, default)
        if value.upper() not in allowed:
            self.error(key, f"valeur « {value} » inconnue ; possibles : {', '.join(allowed)}")
            return default
        return value.upper()

    def path(self, key: str, default: Path) -> Path:
        value = self.optional_text(key)
        if value is None or not value.strip():
            if value is not None:
                self.error(key, "ne doit pas être vide")
            return default
        return self.loader.resolve(value)

    def secret(
        self,
        name: str,
        env_var: str,
        *,
        required: bool,
        inline_forbidden: bool = True,
        check: Callable[[str], str | None] | None = None,
    ) -> Secret | None:
        """A secret from ``env_var`` (wins) or from the ``<name>_file`` key."""
        file_key = f"{name}_file"
        ways = f"indiquez {self.key(file_key)} ou la variable d'environnement {env_var}"
        inline_given = inline_forbidden and name in self._raw
        if inline_forbidden:
            self._known.add(name)
            if inline_given:
                self.error(
                    name,
                    "un secret ne doit jamais être écrit dans le fichier de configuration : "
                    f"{ways} (fichier lisible par son seul propriétaire, chmod 600)",
                )
        raw_file = self._typed(file_key, str, "un chemin de fichier (chaîne)")
        env_value = self.loader.env.get(env_var)
        if env_value is not None:
            if not env_value.strip():
                self.error(name, f"la variable d'environnement {env_var} est définie mais vide")
                return None
            value, origin = env_value, f"variable {env_var}"
        elif isinstance(raw_file, str):
            read = self._read_secret_file(file_key, raw_file)
            if read is None:
                return None
            value, origin = read, self.key(file_key)
        else:
            if isinstance(raw_file, _Absent) and required and not inline_given:
                self.error(name, f"secret manquant : {ways}")
            return None
        if PLACEHOLDER in value:
            self.error(name, f"valeur d'exemple « {PLACEHOLDER}… » à remplacer ({origin})")
            return None
        if check is not None and (message := check(value)) is not None:
            self.error(name, f"{message} ({origin})")
            return None
        return Secret(value)

    def _read_secret_file(self, file_key: str, raw: str) -> str | None:
        path = self.loader.resolve(raw)
        try:
            # One descriptor for the check and the read: no swap in between.
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            self.error(file_key, f"fichier introuvable : {path}")
            return None
        except OSError as exc:
            self.error(file_key, f"fichier illisible : {path} ({exc.strerror})")
            return None
        with os.fdopen(fd, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if not stat.S_ISREG(mode):
                self.error(file_key, f"n'est pas un fichier ordinaire : {path}")
                return None
            if mode & 0o077:
                self.error(
                    file_key,
                    f"droits trop ouverts ({stat.S_IMODE(mode):04o}) sur {path} : le fichier "
                    f"doit être lisible par son seul propriétaire (chmod 600 {path})",
                )
                return None
            try:
                value = handle.read().decode("utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                self.error(file_key, f"fichier illisible : {path} ({exc})")
                return None
        if not value:
            self.error(file_key, f"fichier vide : {path}")
            return None
        return value


# --------------------------------------------------------------------------- checks

_LOCAL_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})
_SERVER_NAME_RE: Final = re.compile(
    r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::[0-9]{1,5})?$"
)
_USER_ID_RE: Final = re.compile(r"^@([a-z0-9._=/+-]+):(.+)$")
_ROOM_VERSION_RE: Final = re.compile(r"^[0-9a-z.-]+$")


def _check_homeserver_url(value: str) -> str | None:
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


def _check_server_name(value: str) -> str | None:
    if _SERVER_NAME_RE.match(value):
        return None
    return "nom de serveur Matrix invalide (ex. : administration-plus.fr, sans https://)"


def _check_user_id(value: str) -> str | None:
    match = _USER_ID_RE.match(value)
    if match and _SERVER_NAME_RE.match(match.group(2)):
        return None
    return "identifiant Matrix invalide : attendu @nom:serveur (nom en minuscules)"


def _check_room_version(value: str) -> str | None:
    return None if _ROOM_VERSION_RE.match(value) else 'version de salon invalide (ex. : "12")'


def _check_pickle_key(value: str) -> str | None:
    if len(value) < MIN_PICKLE_KEY_CHARS:
        return f"trop courte : au moins {MIN_PICKLE_KEY_CHARS} caractères"
    return None


def _check_data_key(value: str) -> str | None:
    message = (
        f"doit être le base64 de {DATA_KEY_BYTES} octets (générer avec : openssl rand -base64 32)"
    )
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return message
    return None if len(decoded) == DATA_KEY_BYTES else message


def _check_database_url(value: str) -> str | None:
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


def _url_has_password(value: str) -> bool:
    """A password in the user-info (``user:pw@``) or in the query (``?password=``)."""
    try:
        parts = urlsplit(value)
        in_userinfo = parts.password is not None
    except ValueError:
        return False
    return in_userinfo or bool(_query_keys(parts.query) & _PASSWORD_QUERY_KEYS)


def _redact_url(value: str) -> str:
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


# --------------------------------------------------------------------------- parsers
# Registration order is parse order: a section may read those above it.


@_section("homeserver")
def _parse_homeserver(t: _Table) -> HomeserverSettings:
    url = t.text("url", check=_check_homeserver_url)
    server_name = t.text("server_name", check=_check_server_name)
    return HomeserverSettings(url=url.rstrip("/"), server_name=server_name)


@_section("data")
def _parse_data(t: _Table) -> DataSettings:
    return DataSettings(dir=t.path("dir", t.loader.config_dir / "data"))


@_section("bot")
def _parse_bot(t: _Table) -> BotSettings:
    homeserver = t.loader.section(HomeserverSettings)
    data = t.loader.section(DataSettings)
    user_id = t.text("user_id", check=_check_user_id)
    server_name_ok = not t.loader.has_problem("homeserver.server_name")
    if not t.has_problem("user_id") and server_name_ok:
        server = user_id.split(":", 1)[1]
        if server != homeserver.server_name:
            t.error(
                "user_id",
                f"le serveur de l'identifiant ({server}) doit être homeserver.server_name "
                f"({homeserver.server_name})",
            )
    password = t.secret("password", ENV_BOT_PASSWORD, required=True)
    access_token = t.secret("access_token", ENV_BOT_ACCESS_TOKEN, required=False)
    return BotSettings(
        user_id=user_id,
        device_name=t.text("device_name", "Administration+"),
        store_dir=t.path("store_dir", data.dir / "nio-store"),
        room_version=t.text("room_version", "12", check=_check_room_version),
        require_cross_signed_devices=t.boolean("require_cross_signed_devices", True),
        max_attachment_bytes=t.integer(
            "max_attachment_bytes", DEFAULT_MAX_ATTACHMENT_BYTES, minimum=1
        ),
        undecryptable_notice_after_seconds=t.integer(
            "undecryptable_notice_after_seconds", 300, minimum=1
        ),
        password=password or Secret(""),
        access_token=access_token,
        event_retry_attempts=t.integer("event_retry_attempts", 8, minimum=1),
        event_retry_base_seconds=t.integer("event_retry_base_seconds", 30, minimum=1),
        room_concurrency=t.integer("room_concurrency", 8, minimum=1),
    )


@_section("database")
def _parse_database(t: _Table) -> DatabaseSettings:
    data = t.loader.section(DataSettings)
    from_secret = t.secret("url", ENV_DATABASE_URL, required=False, inline_forbidden=False)
    inline = t.optional_text("url")
    if inline is not None and t.has_key("url_file"):
        t.error("url", "indiquez url ou url_file, pas les deux")
    if from_secret is not None:
        value = from_secret.reveal()
    elif inline is not None:
        value = inline
        if _url_has_password(inline):
            t.error(
                "url",
                "contient un mot de passe : mettez l'URL complète dans database.url_file "
                f"ou la variable d'environnement {ENV_DATABASE_URL}",
            )
    else:
        value = f"sqlite+aiosqlite:///{data.dir / 'aplus.db'}"
    if not t.has_problem("url") and (message := _check_database_url(value)) is not None:
        t.error("url", message)
    return DatabaseSettings(url=Secret(value))


@_section("policies")
def _parse_policies(t: _Table) -> PoliciesSettings:
    directory = t.path("dir", REPO_POLICIES_DIR)
    if not t.has_problem("dir") and not directory.is_dir():
        t.error("dir", f"dossier introuvable : {directory}")
    return PoliciesSettings(dir=directory)


@_section("logging")
def _parse_logging(t: _Table) -> LoggingSettings:
    return LoggingSettings(
        level=t.choice("level", LOG_LEVELS, "INFO"),
        json=t.boolean("json", False),
    )


@_section("secrets")
def _parse_secrets(t: _Table) -> SecretsSettings:
    pickle_key = t.secret("pickle_key", ENV_PICKLE_KEY, required=True, check=_check_pickle_key)
    data_key = t.secret("data_key", ENV_DATA_KEY, required=True, check=_check_data_key)
    return SecretsSettings(
        pickle_key=pickle_key or Secret(""),
        data_key=data_key or Secret(""),
    )


_MAIL_DOMAIN_RE: Final = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
_MAIL_ADDRESS_RE: Final = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@(.+)$")
_LOOP_MARKER_RE: Final = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _check_mail_domain(value: str) -> str | None:
    return (
        None
        if _MAIL_DOMAIN_RE.match(value)
        else "nom de domaine invalide (ex. : reponse.exemple.fr)"
    )


def _check_mail_address(value: str) -> str | None:
    match = _MAIL_ADDRESS_RE.match(value)
    if match and _MAIL_DOMAIN_RE.match(match.group(1)):
        return None
    return "adresse électronique invalide (ex. : ne-pas-repondre@exemple.fr)"


def _check_loop_marker(value: str) -> str | None:
    return None if _LOOP_MARKER_RE.match(value) else "lettres, chiffres, . _ - (64 au plus)"


@_section("email")
def _parse_email(t: _Table) -> EmailSettings:
    enabled = t.boolean("enabled", False)

    def needed(key: str, check: Callable[[str], str | None]) -> str:
        # Required only when the bridge is on; always checked when given.
        return (
            t.text(key, None if enabled else "", check=check) if enabled or t.has_key(key) else ""
        )

    from_address = needed("from_address", _check_mail_address)
    reply_domain = needed("reply_domain", _check_mail_domain)
    relay_host = needed("relay_host", _check_server_name)
    security = t.choice("relay_security", ("NONE", "STARTTLS", "TLS"), "STARTTLS").lower()
    username = t.optional_text("relay_username")
    password = t.secret("relay_password", ENV_SMTP_PASSWORD, required=False)
    if username and password is None and not t.has_problem("relay_password"):
        t.error(
            "relay_password",
            f"relay_username est donné : indiquez relay_password_file ou {ENV_SMTP_PASSWORD}",
        )
    dkim_domain = t.optional_text("dkim_domain")
    dkim_selector = t.optional_text("dkim_selector")
    dkim_key = t.secret("dkim_private_key", ENV_DKIM_PRIVATE_KEY, required=False)
    if (dkim_domain is None) != (dkim_selector is None) or (dkim_domain and dkim_key is None):
        t.error(
            "dkim_domain", "la signature DKIM demande dkim_domain, dkim_selector et la clé privée"
        )
    protocol = t.choice("listen_protocol", ("SMTP", "LMTP"), "SMTP").lower()
    return EmailSettings(
        enabled=enabled,
        from_address=from_address.lower(),
        from_name=t.text("from_name", "Administration+"),
        reply_domain=reply_domain.lower(),
        loop_marker=t.text("loop_marker", "aplus", check=_check_loop_marker),
        relay_host=relay_host,
        relay_port=t.integer("relay_port", 587, minimum=1),
        relay_security=security,
        relay_username=username,
        relay_password=password,
        relay_timeout_seconds=t.integer("relay_timeout_seconds", 60, minimum=1),
        delivery_lifetime_seconds=t.integer("delivery_lifetime_seconds", 5 * 86400, minimum=1),
        retry_initial_seconds=t.integer("retry_initial_seconds", 60, minimum=1),
        retry_max_seconds=t.integer("retry_max_seconds", 3600, minimum=1),
        max_outbound_attachment_bytes=t.integer(
            "max_outbound_attachment_bytes", DEFAULT_MAX_ATTACHMENT_BYTES, minimum=0
        ),
        dkim_domain=dkim_domain,
        dkim_selector=dkim_selector,
        dkim_private_key=dkim_key,
        listen_host=t.text("listen_host", "127.0.0.1"),
        listen_port=t.integer("listen_port", 2525, minimum=0),
        listen_protocol=protocol,
        listen_allowed_peers=_allowed_peers(t),
        listen_max_connections=t.integer("listen_max_connections", 20, minimum=1),
        listen_idle_timeout_seconds=t.integer("listen_idle_timeout_seconds", 60, minimum=5),
        max_message_bytes=t.integer("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES, minimum=1024),
        max_inbound_attachment_bytes=t.integer(
            "max_inbound_attachment_bytes", DEFAULT_MAX_ATTACHMENT_BYTES, minimum=1
        ),
        allowed_attachment_types=tuple(
            v.lower()
            for v in t.strings("allowed_attachment_types", DEFAULT_ALLOWED_ATTACHMENT_TYPES)
        ),
        trusted_authserv_ids=t.strings("trusted_authserv_ids", ()),
        dkim_verify=t.boolean("dkim_verify", False),
    )


def _allowed_peers(t: _Table) -> tuple[str, ...]:
    """``listen_allowed_peers``: addresses or networks (``10.0.0.5``, ``192.0.2.0/28``)."""
    peers = t.strings("listen_allowed_peers", DEFAULT_ALLOWED_PEERS)
    wrong = []
    for peer in peers:
        try:
            ipaddress.ip_network(peer, strict=False)
        except ValueError:
            wrong.append(peer)
    if wrong:
        t.error(
            "listen_allowed_peers",
            f"adresse ou réseau IP invalide : {', '.join(wrong[:3])} "
            "(ex. : 10.0.0.5, 192.0.2.0/28)",
        )
        return DEFAULT_ALLOWED_PEERS
    return peers


_ROOM_ID_RE: Final = re.compile(r"^![A-Za-z0-9._~=/+-]+(?::.+)?$")


def _check_room_id(value: str) -> str | None:
    if _ROOM_ID_RE.match(value):
        return None
    return "identifiant de salon invalide (ex. : !abc:serveur)"


def _hour(t: _Table, key: str, default: int) -> int:
    value = t.integer(key, default, minimum=0)
    if value > 23:
        t.error(key, "doit être une heure entre 0 et 23 (heure de Paris)")
        return default
    return value


@_section("admin")
def _parse_admin(t: _Table) -> AdminSettings:
    room_id = t.optional_text("room_id")
    if room_id is not None and (message := _check_room_id(room_id)) is not None:
        t.error("room_id", message)
    weekday = t.integer("digest_weekday", 1, minimum=1)
    if weekday > 7:
        t.error("digest_weekday", "doit être entre 1 (lundi) et 7 (dimanche)")
        weekday = 1
    return AdminSettings(
        room_id=room_id,
        room_name=t.text("room_name", "Administration+ · exploitation"),
        synapse_admin_token=t.secret(
            "synapse_admin_token", ENV_SYNAPSE_ADMIN_TOKEN, required=False
        ),
        confirmation_minutes=t.integer("confirmation_minutes", 10, minimum=1),
        jobs_enabled=t.boolean("jobs_enabled", True),
        late_first_answer_business_days=t.integer("late_first_answer_business_days", 3, minimum=1),
        late_followup_business_days=t.integer("late_followup_business_days", 15, minimum=1),
        digest_after_days=t.integer("digest_after_days", 10, minimum=1),
        digest_weekday=weekday,
        digest_hour=_hour(t, "digest_hour", 8),
        followup_hour=_hour(t, "followup_hour", 9),
        retention_hour=_hour(t, "retention_hour", 3),
        retention_usager_months=t.integer("retention_usager_months", 6, minimum=1),
        retention_attachment_days=t.integer("retention_attachment_days", 15, minimum=1),
        retention_draft_days=t.integer("retention_draft_days", 30, minimum=1),
        retention_audit_days=t.integer("retention_audit_days", 365, minimum=1),
    )


@_section("health")
def _parse_health(t: _Table) -> HealthSettings:
    port = t.integer("port", 9180, minimum=0)
    if port > 65535:
        t.error("port", "doit être un port entre 0 et 65535")
        port = 9180
    return HealthSettings(
        enabled=t.boolean("enabled", True),
        host=t.text("host", "127.0.0.1"),
        port=port,
    )


_GUARD_SECRET_MIN_CHARS: Final = 32


def _check_guard_host(value: str) -> str | None:
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


def _check_guard_secret(value: str) -> str | None:
    if len(value) < _GUARD_SECRET_MIN_CHARS:
        return (
            f"trop court : au moins {_GUARD_SECRET_MIN_CHARS} caractères "
            "(générer avec : openssl rand -base64 32)"
        )
    return None


@_section("guard")
def _parse_guard(t: _Table) -> GuardSettings:
    enabled = t.boolean("enabled", False)
    port = t.integer("port", 9181, minimum=0)
    if port > 65535:
        t.error("port", "doit être un port entre 0 et 65535")
        port = 9181
    secret = t.secret(
        "shared_secret", ENV_GUARD_SECRET, required=enabled, check=_check_guard_secret
    )
    return GuardSettings(
        enabled=enabled,
        host=t.text("host", "127.0.0.1", check=_check_guard_host),
        port=port,
        shared_secret=secret,
    )
