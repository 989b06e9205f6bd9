"""Typed, frozen settings, read once at start-up from a TOML file.

Every problem found in the file is collected and reported together in one
``SettingsError`` (dotted key + French message), so an operator fixes the whole
file in one pass instead of one error per restart.

Secrets never live in the TOML file: each comes from an environment variable or
from a ``*_file`` readable by its owner only. When both are given, the
environment variable wins and the file is not read (the usual container /
systemd convention; documented in ``deploy/config.example.toml``).

The package, one concern per module: ``schema`` (constants, ``Secret``, the sections'
dataclasses), ``checks`` (single values), ``table`` (typed reads, every problem
collected), ``parsers`` (one function per section) and ``loader`` (``Settings``,
``load_settings``, ``Settings.for_dev``).

Adding a section: one frozen dataclass in ``schema``, one small ``@section("name")``
function in ``parsers`` that reads it through ``Table``, and one field of that name on
``Settings`` (``loader``). Sections are parsed in registration order, so a section may
use an earlier one (``bot`` checks its user ID against ``homeserver``).
"""

from bot.settings.checks import DATA_KEY_BYTES, MIN_PICKLE_KEY_CHARS
from bot.settings.loader import DEV_EMAIL, Settings, load_settings
from bot.settings.schema import (
    DEFAULT_ALLOWED_ATTACHMENT_TYPES,
    DEFAULT_ALLOWED_PEERS,
    DEFAULT_MAX_ATTACHMENT_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    ENV_BOT_ACCESS_TOKEN,
    ENV_BOT_PASSWORD,
    ENV_DATA_KEY,
    ENV_DATABASE_URL,
    ENV_DKIM_PRIVATE_KEY,
    ENV_GUARD_SECRET,
    ENV_PICKLE_KEY,
    ENV_SMTP_PASSWORD,
    ENV_SYNAPSE_ADMIN_TOKEN,
    LOG_LEVELS,
    PLACEHOLDER,
    REPO_POLICIES_DIR,
    SECRET_ENV_VARS,
    AdminSettings,
    BotSettings,
    DatabaseSettings,
    DataSettings,
    EmailSettings,
    GuardSettings,
    HaSettings,
    HealthSettings,
    HomeserverSettings,
    LoggingSettings,
    OnboardingSettings,
    PoliciesSettings,
    Secret,
    SecretsSettings,
    SettingsError,
)

__all__ = [
    "DATA_KEY_BYTES",
    "DEFAULT_ALLOWED_ATTACHMENT_TYPES",
    "DEFAULT_ALLOWED_PEERS",
    "DEFAULT_MAX_ATTACHMENT_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEV_EMAIL",
    "ENV_BOT_ACCESS_TOKEN",
    "ENV_BOT_PASSWORD",
    "ENV_DATABASE_URL",
    "ENV_DATA_KEY",
    "ENV_DKIM_PRIVATE_KEY",
    "ENV_GUARD_SECRET",
    "ENV_PICKLE_KEY",
    "ENV_SMTP_PASSWORD",
    "ENV_SYNAPSE_ADMIN_TOKEN",
    "LOG_LEVELS",
    "MIN_PICKLE_KEY_CHARS",
    "PLACEHOLDER",
    "REPO_POLICIES_DIR",
    "SECRET_ENV_VARS",
    "AdminSettings",
    "BotSettings",
    "DataSettings",
    "DatabaseSettings",
    "EmailSettings",
    "GuardSettings",
    "HaSettings",
    "HealthSettings",
    "HomeserverSettings",
    "LoggingSettings",
    "OnboardingSettings",
    "PoliciesSettings",
    "Secret",
    "SecretsSettings",
    "Settings",
    "SettingsError",
    "load_settings",
]
