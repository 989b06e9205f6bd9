"""What the settings are: the constants and defaults, `Secret`, `SettingsError`, and
one frozen dataclass per section of the file."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final

from bot.settings.checks import redact_url

PLACEHOLDER: Final = "CHANGE_ME"
REPO_POLICIES_DIR: Final = Path(__file__).resolve().parents[2] / "policies"
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
    # Links to a room (`!mesdemandes`): this prefix followed by the room ID, e.g.
    # "https://element.example.gouv.fr/#/room/"; None: https://matrix.to/#/ (any client).
    client_url: str | None = None


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    url: Secret  # may embed a password

    @property
    def redacted_url(self) -> str:
        """The URL with any password masked, fit for logs."""
        return redact_url(self.url.reveal())

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
class HaSettings:
    """Two bot processes on one PostgreSQL database, one active (`bot.services.lease`)."""

    enabled: bool
    renew_seconds: int  # the active renews its lease this often
    ttl_seconds: int  # each renewal is valid this long (by the database's clock)


@dataclass(frozen=True, slots=True)
class OnboardingSettings:
    """Welcoming agents, linking the accounts made at first sign-in, inactivity."""

    account_link_seconds: int  # how often new Matrix accounts are looked at
    inactivity_months: int  # 0: no deactivation for inactivity
    inactivity_email_only_bal: bool  # also for email-only agents of a group with a BAL
