"""`aplus dev --standby` before anything starts: the PostgreSQL server it needs, and the
configuration files it writes for its two `aplus run` processes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bot.dev_standby import _toml, ensure_database
from bot.settings import DEV_EMAIL, load_settings


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on leaving: nobody listens there


async def test_no_postgresql_server_is_a_french_error_saying_what_to_install() -> None:
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/aplus_dev"
    with pytest.raises(SystemExit) as raised:
        await ensure_database(url)
    message = str(raised.value)
    assert "PostgreSQL injoignable sur 127.0.0.1:" in message, message
    assert "apt install postgresql" in message and "--database-url" in message, message


async def test_a_database_url_that_is_not_postgresql_is_refused() -> None:
    with pytest.raises(SystemExit) as raised:
        await ensure_database("sqlite:///aplus.db")
    assert "une URL PostgreSQL est attendue" in str(raised.value)


def test_the_written_configuration_is_read_back_by_the_product_loader(tmp_path: Path) -> None:
    (tmp_path / "database_url").write_text("postgresql+asyncpg://postgres@127.0.0.1/aplus_dev\n")
    (tmp_path / "guard").write_text("g" * 40)
    for secret in ("database_url", "guard"):
        (tmp_path / secret).chmod(0o600)
    config = tmp_path / "principal.toml"
    config.write_text(
        _toml(
            {
                "homeserver": {"url": "http://127.0.0.1:8008", "server_name": "localhost"},
                "bot": {"user_id": "@aplus:localhost"},
                "data": {"dir": str(tmp_path / "données « démo »")},
                "database": {"url_file": "database_url"},
                "health": {"port": 4001},
                "guard": {"enabled": True, "port": 4002, "shared_secret_file": "guard"},
                "email": {**DEV_EMAIL, "relay_port": 4003, "listen_port": 4004},
                "ha": {"enabled": True},
            }
        )
    )
    env = {
        "APLUS_BOT_PASSWORD": "mot de passe",
        "APLUS_PICKLE_KEY": "p" * 32,
        "APLUS_DATA_KEY": "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU=",
    }
    settings = load_settings(config, env)
    assert settings.ha.enabled and settings.health.port == 4001
    assert settings.guard.port == 4002 and settings.email.listen_port == 4004
    assert settings.data.dir == tmp_path / "données « démo »"
    assert settings.database.url.reveal().endswith("/aplus_dev")
