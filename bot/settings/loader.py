"""The whole `Settings` object and the two ways to get one: `load_settings` (the TOML
file) and `Settings.for_dev` (`aplus dev` and tests, no file)."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bot.settings.parsers import SECTIONS
from bot.settings.schema import (
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
    SecretsSettings,
    SettingsError,
)
from bot.settings.table import Loader, Table, unknown_hint

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
    ha: HaSettings
    onboarding: OnboardingSettings
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
        return build(doc, config_dir=data_dir, env=secrets, config_path=None)


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
    return build(doc, config_dir=path.resolve().parent, env=env, config_path=path)


def build(
    doc: Mapping[str, Any], *, config_dir: Path, env: Mapping[str, str], config_path: Path | None
) -> Settings:
    loader = Loader(config_dir, env)
    for name, value in doc.items():
        if name not in SECTIONS:
            loader.error(name, unknown_hint("section inconnue", name, SECTIONS))
        elif not isinstance(value, dict):
            loader.error(name, f"doit être une section [{name}]")
    for name, parse in SECTIONS.items():
        raw = doc.get(name, {})
        table = Table(loader, name, raw if isinstance(raw, dict) else {})
        loader.parsed[name] = parse(table)
        table.report_unknown_keys()
    if loader.problems:
        raise SettingsError(loader.problems)
    return Settings(**loader.parsed, config_path=config_path)  # type: ignore[arg-type]
