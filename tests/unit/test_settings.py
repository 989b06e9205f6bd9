"""The settings loader: typed values, every problem at once, secrets kept out of sight."""

from __future__ import annotations

import base64
import dataclasses
import re
from pathlib import Path

import pytest

from bot.settings import (
    DEFAULT_MAX_ATTACHMENT_BYTES,
    REPO_POLICIES_DIR,
    Secret,
    Settings,
    SettingsError,
    load_settings,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "config.example.toml"

PASSWORD = "bot-password-Zx81"
TOKEN = "syt_access_token_Qw72"
PICKLE_KEY = "pickle-key-long-enough-Rt55"
DATA_KEY = base64.b64encode(bytes(range(32))).decode()
DB_PASSWORD = "db-password-Lm39"

VALID = """
[homeserver]
url = "https://matrix.aplus.example"
server_name = "aplus.example"

[bot]
user_id = "@aplus:aplus.example"
password_file = "secrets/bot_password"

[secrets]
pickle_key_file = "secrets/pickle_key"
data_key_file = "secrets/data_key"
"""


def write_secret(path: Path, value: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    write_secret(tmp_path / "secrets" / "bot_password", PASSWORD)
    write_secret(tmp_path / "secrets" / "pickle_key", PICKLE_KEY)
    write_secret(tmp_path / "secrets" / "data_key", DATA_KEY)
    return tmp_path


def write_config(directory: Path, text: str) -> Path:
    path = directory / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(SettingsError) as caught:
        load_settings(path, env=env or {})
    keys = [key for key, _ in caught.value.problems]
    assert len(keys) == len(set(keys)), caught.value.problems
    return dict(caught.value.problems)


def test_valid_file_loads_with_defaults(config_dir: Path) -> None:
    settings = load_settings(write_config(config_dir, VALID), env={})

    assert settings.homeserver.url == "https://matrix.aplus.example"
    assert settings.homeserver.server_name == "aplus.example"
    assert settings.bot.user_id == "@aplus:aplus.example"
    assert settings.bot.device_name == "Administration+"
    assert settings.bot.room_version == "12"
    assert settings.bot.require_cross_signed_devices is True
    assert settings.bot.max_attachment_bytes == DEFAULT_MAX_ATTACHMENT_BYTES == 10 * 1024 * 1024
    assert settings.bot.undecryptable_notice_after_seconds == 300
    assert settings.data.dir == config_dir / "data"
    assert settings.bot.store_dir == config_dir / "data" / "nio-store"
    assert settings.database.url.reveal() == f"sqlite+aiosqlite:///{config_dir}/data/aplus.db"
    assert settings.database.is_sqlite
    assert settings.policies.dir == REPO_POLICIES_DIR
    assert settings.logging.level == "INFO"
    assert settings.logging.json is False
    assert settings.bot.password.reveal() == PASSWORD
    assert settings.bot.access_token is None
    assert settings.secrets.pickle_key.reveal() == PICKLE_KEY
    assert settings.secrets.data_key_bytes() == bytes(range(32))
    assert settings.config_path == config_dir / "config.toml"


def test_settings_are_frozen(config_dir: Path) -> None:
    settings = load_settings(write_config(config_dir, VALID), env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.bot.device_name = "autre"  # type: ignore[misc]


def test_explicit_values_are_read(config_dir: Path, tmp_path: Path) -> None:
    text = VALID.replace(
        "[secrets]",
        """device_name = "Bot A+"
store_dir = "/var/lib/aplus/store"
room_version = "11"
require_cross_signed_devices = false
max_attachment_bytes = 2048
undecryptable_notice_after_seconds = 60

[database]
url = "postgresql+asyncpg://aplus@db.internal/aplus"

[data]
dir = "var"

[policies]
dir = "."

[logging]
level = "debug"
json = true

[secrets]""",
    )
    settings = load_settings(write_config(config_dir, text), env={})
    assert settings.bot.device_name == "Bot A+"
    assert settings.bot.store_dir == Path("/var/lib/aplus/store")
    assert settings.bot.room_version == "11"
    assert settings.bot.require_cross_signed_devices is False
    assert settings.bot.max_attachment_bytes == 2048
    assert settings.bot.undecryptable_notice_after_seconds == 60
    assert settings.database.url.reveal() == "postgresql+asyncpg://aplus@db.internal/aplus"
    assert not settings.database.is_sqlite
    assert settings.data.dir == config_dir / "var"
    assert settings.policies.dir == config_dir / "."
    assert settings.logging.level == "DEBUG"
    assert settings.logging.json is True


def test_five_distinct_errors_are_reported_together(config_dir: Path) -> None:
    text = """
[homeserver]
url = "http://matrix.aplus.example"
server_name = "aplus.example"

[bot]
user_id = "@aplus:autre.example"
password_file = "secrets/bot_password"
max_attachment_bytes = "beaucoup"
devise_name = "faute de frappe"

[loging]
level = "INFO"

[secrets]
pickle_key_file = "secrets/pickle_key"
data_key_file = "secrets/data_key"
"""
    problems = problems_of(write_config(config_dir, text))
    assert problems == {
        "homeserver.url": "doit commencer par https:// (ou http:// sur 127.0.0.1/localhost)",
        "bot.user_id": (
            "le serveur de l'identifiant (autre.example) doit être homeserver.server_name "
            "(aplus.example)"
        ),
        "bot.max_attachment_bytes": "doit être un nombre entier, pas une chaîne",
        "bot.devise_name": "clé inconnue (vouliez-vous dire « device_name » ?)",
        "loging": "section inconnue (vouliez-vous dire « logging » ?)",
    }


def test_error_message_lists_every_problem_with_its_key(config_dir: Path) -> None:
    path = write_config(config_dir, "[homeserver]\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(path, env={})
    message = str(caught.value)
    assert message.startswith("Configuration invalide (")
    for key in ("homeserver.url", "homeserver.server_name", "bot.user_id", "bot.password"):
        assert f"  - {key} : " in message
    assert "secrets.pickle_key : secret manquant" in message


def test_missing_secret_names_both_ways(config_dir: Path) -> None:
    text = VALID.replace('password_file = "secrets/bot_password"\n', "")
    problems = problems_of(write_config(config_dir, text))
    assert problems == {
        "bot.password": (
            "secret manquant : indiquez bot.password_file "
            "ou la variable d'environnement APLUS_BOT_PASSWORD"
        )
    }


def test_http_is_accepted_on_localhost_only(config_dir: Path) -> None:
    for url in ("http://127.0.0.1:8008", "http://localhost:8008/", "https://hs.example:8448"):
        settings = load_settings(
            write_config(config_dir, VALID.replace("https://matrix.aplus.example", url)), env={}
        )
        assert settings.homeserver.url == url.rstrip("/")
    for url in ("http://10.0.0.1:8008", "ftp://matrix.aplus.example", "matrix.aplus.example"):
        problems = problems_of(
            write_config(config_dir, VALID.replace("https://matrix.aplus.example", url))
        )
        assert set(problems) == {"homeserver.url"}


def test_secrets_from_environment(config_dir: Path) -> None:
    text = """
[homeserver]
url = "https://matrix.aplus.example"
server_name = "aplus.example"

[bot]
user_id = "@aplus:aplus.example"
"""
    env = {
        "APLUS_BOT_PASSWORD": PASSWORD,
        "APLUS_BOT_ACCESS_TOKEN": TOKEN,
        "APLUS_PICKLE_KEY": PICKLE_KEY,
        "APLUS_DATA_KEY": DATA_KEY,
        "APLUS_DATABASE_URL": f"postgresql+asyncpg://aplus:{DB_PASSWORD}@db/aplus",
    }
    settings = load_settings(write_config(config_dir, text), env=env)
    assert settings.bot.password.reveal() == PASSWORD
    assert settings.bot.access_token is not None
    assert settings.bot.access_token.reveal() == TOKEN
    assert settings.secrets.pickle_key.reveal() == PICKLE_KEY
    assert settings.secrets.data_key.reveal() == DATA_KEY
    assert settings.database.url.reveal().endswith(f":{DB_PASSWORD}@db/aplus")
    assert settings.database.redacted_url == "postgresql+asyncpg://aplus:***@db/aplus"


def test_secrets_from_files(config_dir: Path) -> None:
    write_secret(config_dir / "secrets" / "token", TOKEN)
    write_secret(
        config_dir / "secrets" / "db_url", f"postgresql+asyncpg://aplus:{DB_PASSWORD}@db/aplus"
    )
    text = (
        VALID.replace(
            'password_file = "secrets/bot_password"',
            'password_file = "secrets/bot_password"\naccess_token_file = "secrets/token"',
        )
        + '\n[database]\nurl_file = "secrets/db_url"\n'
    )
    settings = load_settings(write_config(config_dir, text), env={})
    assert settings.bot.password.reveal() == PASSWORD  # trailing newline stripped
    assert settings.bot.access_token is not None
    assert settings.bot.access_token.reveal() == TOKEN
    assert settings.database.url.reveal() == f"postgresql+asyncpg://aplus:{DB_PASSWORD}@db/aplus"


def test_environment_wins_over_file_and_file_is_not_read(config_dir: Path) -> None:
    # The file would be refused (world-readable) if it were read at all.
    write_secret(config_dir / "secrets" / "bot_password", "from-file", mode=0o644)
    path = write_config(config_dir, VALID)
    settings = load_settings(path, env={"APLUS_BOT_PASSWORD": "from-env"})
    assert settings.bot.password.reveal() == "from-env"


def test_world_or_group_readable_secret_file_is_refused(config_dir: Path) -> None:
    write_secret(config_dir / "secrets" / "bot_password", PASSWORD, mode=0o644)
    write_secret(config_dir / "secrets" / "pickle_key", PICKLE_KEY, mode=0o640)
    problems = problems_of(write_config(config_dir, VALID))
    assert set(problems) == {"bot.password_file", "secrets.pickle_key_file"}
    assert "droits trop ouverts (0644)" in problems["bot.password_file"]
    assert "chmod 600" in problems["bot.password_file"]
    assert "droits trop ouverts (0640)" in problems["secrets.pickle_key_file"]


def test_missing_and_empty_secret_files_are_refused(config_dir: Path) -> None:
    (config_dir / "secrets" / "bot_password").unlink()
    write_secret(config_dir / "secrets" / "pickle_key", "")
    problems = problems_of(write_config(config_dir, VALID))
    assert problems["bot.password_file"].startswith("fichier introuvable : ")
    assert problems["secrets.pickle_key_file"].startswith("fichier vide : ")


def test_inline_secrets_are_refused_with_an_explanation(config_dir: Path) -> None:
    text = (
        VALID.replace('password_file = "secrets/bot_password"', f'password = "{PASSWORD}"')
        + f'\n[database]\nurl = "postgresql+asyncpg://aplus:{DB_PASSWORD}@db/aplus"\n'
    )
    problems = problems_of(write_config(config_dir, text))
    assert set(problems) == {"bot.password", "database.url"}
    assert problems["bot.password"].startswith(
        "un secret ne doit jamais être écrit dans le fichier de configuration : "
        "indiquez bot.password_file ou la variable d'environnement APLUS_BOT_PASSWORD"
    )
    assert "APLUS_DATABASE_URL" in problems["database.url"]
    assert PASSWORD not in str(problems) and DB_PASSWORD not in str(problems)


def test_bad_secret_values_are_refused_without_echoing_them(config_dir: Path) -> None:
    short_key = base64.b64encode(b"x" * 16).decode()
    env = {"APLUS_DATA_KEY": short_key, "APLUS_PICKLE_KEY": "court"}
    problems = problems_of(write_config(config_dir, VALID), env=env)
    assert set(problems) == {"secrets.data_key", "secrets.pickle_key"}
    assert problems["secrets.data_key"].startswith("doit être le base64 de 32 octets")
    assert problems["secrets.data_key"].endswith("(variable APLUS_DATA_KEY)")
    assert "au moins 16 caractères" in problems["secrets.pickle_key"]
    assert short_key not in str(problems) and "court (" not in str(problems)

    problems = problems_of(
        write_config(config_dir, VALID), env={"APLUS_DATA_KEY": "pas du base64!"}
    )
    assert set(problems) == {"secrets.data_key"}


def test_empty_environment_variable_is_an_error(config_dir: Path) -> None:
    problems = problems_of(write_config(config_dir, VALID), env={"APLUS_BOT_PASSWORD": " "})
    assert problems == {
        "bot.password": "la variable d'environnement APLUS_BOT_PASSWORD est définie mais vide"
    }


def test_example_config_refuses_to_start_while_placeholders_remain() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(EXAMPLE, env={})
    problems = dict(caught.value.problems)
    for key in ("homeserver.url", "homeserver.server_name", "bot.user_id"):
        assert problems[key] == "valeur d'exemple « CHANGE_ME… » à remplacer avant de démarrer"


def test_placeholder_in_a_secret_is_refused(config_dir: Path) -> None:
    write_secret(config_dir / "secrets" / "pickle_key", "CHANGE_ME-pickle-key-0000")
    problems = problems_of(write_config(config_dir, VALID))
    assert problems == {
        "secrets.pickle_key": (
            "valeur d'exemple « CHANGE_ME… » à remplacer (secrets.pickle_key_file)"
        )
    }


def test_example_config_loads_once_placeholders_are_replaced(tmp_path: Path) -> None:
    # Keeps the example in step with the loader: every key in it must be known.
    text = EXAMPLE.read_text(encoding="utf-8").replace("CHANGE_ME.example", "aplus.example")
    for name, value in (
        ("bot_password", PASSWORD),
        ("pickle_key", PICKLE_KEY),
        ("data_key", DATA_KEY),
        ("guard_shared_secret", "guard-secret-long-enough-for-the-module-0123"),
    ):
        secret = write_secret(tmp_path / "secrets" / name, value)
        text = text.replace(f"/etc/aplus/secrets/{name}", str(secret))
    assert "CHANGE_ME" not in re.sub(r"#.*", "", text)
    settings = load_settings(write_config(tmp_path, text), env={})
    assert settings.bot.user_id == "@aplus:aplus.example"
    assert settings.bot.store_dir == tmp_path / "data" / "nio-store"
    assert settings.guard.enabled and settings.guard.port == 9181


def test_wrong_types_and_values(config_dir: Path) -> None:
    text = VALID.replace(
        "[secrets]",
        """require_cross_signed_devices = "oui"
undecryptable_notice_after_seconds = 0
room_version = 12

[logging]
level = "BAVARD"

[policies]
dir = "nulle-part"

[secrets]""",
    )
    problems = problems_of(write_config(config_dir, text))
    assert problems == {
        "bot.require_cross_signed_devices": "doit être true ou false, pas une chaîne",
        "bot.undecryptable_notice_after_seconds": "doit être au moins 1",
        "bot.room_version": (
            "doit être une chaîne de caractères (entre guillemets), pas un nombre entier"
        ),
        "logging.level": "valeur « BAVARD » inconnue ; possibles : DEBUG, INFO, WARNING, ERROR",
        "policies.dir": f"dossier introuvable : {config_dir / 'nulle-part'}",
    }


def test_database_url_checks(config_dir: Path) -> None:
    text = VALID + '\n[database]\nurl = "mysql://db/aplus"\nurl_file = "secrets/bot_password"\n'
    problems = problems_of(write_config(config_dir, text))
    assert problems == {"database.url": "indiquez url ou url_file, pas les deux"}

    text = VALID + '\n[database]\nurl = "mysql://db/aplus"\n'
    problems = problems_of(write_config(config_dir, text))
    assert problems["database.url"].startswith("schéma non pris en charge")


def test_unreadable_or_invalid_toml_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    assert problems_of(missing) == {str(missing): "fichier de configuration introuvable"}
    broken = write_config(tmp_path, "[homeserver\nurl = ")
    (message,) = problems_of(broken).values()
    assert message.startswith("TOML invalide : ")


def test_repr_and_str_never_show_secret_values(config_dir: Path) -> None:
    write_secret(config_dir / "secrets" / "token", TOKEN)
    text = VALID.replace(
        'password_file = "secrets/bot_password"',
        'password_file = "secrets/bot_password"\naccess_token_file = "secrets/token"',
    )
    env = {"APLUS_DATABASE_URL": f"postgresql+asyncpg://aplus:{DB_PASSWORD}@db/aplus"}
    settings = load_settings(write_config(config_dir, text), env=env)
    shown = repr(settings) + str(settings) + f"{settings}" + repr(settings.secrets)
    for value in (PASSWORD, TOKEN, PICKLE_KEY, DATA_KEY, DB_PASSWORD):
        assert value not in shown
    assert "Secret('**********')" in shown


def test_secret_type() -> None:
    secret = Secret("s3cr3t")
    assert secret.reveal() == "s3cr3t"
    assert repr(secret) == str(secret) == f"{secret}" == "Secret('**********')"
    assert secret != "s3cr3t"  # never equal to the bare value
    assert secret == Secret("s3cr3t")
    assert secret != Secret("other")
    with pytest.raises(TypeError):
        hash(secret)


def test_for_dev_builds_validated_settings(tmp_path: Path) -> None:
    secrets = {
        "APLUS_BOT_PASSWORD": PASSWORD,
        "APLUS_PICKLE_KEY": PICKLE_KEY,
        "APLUS_DATA_KEY": DATA_KEY,
    }
    settings = Settings.for_dev(
        tmp_path, "http://127.0.0.1:8008", "localhost", "@aplus:localhost", secrets
    )
    assert settings.data.dir == tmp_path
    assert settings.bot.password.reveal() == PASSWORD
    assert settings.database.url.reveal() == f"sqlite+aiosqlite:///{tmp_path}/aplus.db"
    assert settings.config_path is None

    with pytest.raises(SettingsError) as caught:
        Settings.for_dev(tmp_path, "http://10.1.1.1", "localhost", "@aplus:other", secrets)
    assert {key for key, _ in caught.value.problems} == {"homeserver.url", "bot.user_id"}

    with pytest.raises(SettingsError) as caught:
        Settings.for_dev(tmp_path, "http://localhost", "localhost", "@a:localhost", {"X": "y"})
    assert caught.value.problems[0][0] == "secrets['X']"


def test_every_settings_field_has_a_registered_section() -> None:
    from bot.settings.parsers import SECTIONS

    names = [f.name for f in dataclasses.fields(Settings) if f.name != "config_path"]
    assert sorted(names) == sorted(SECTIONS)


# -- [guard]: the homeserver guard's endpoint ------------------------------------------

GUARD_SECRET = "guard-secret-long-enough-for-the-module-0123"


def test_guard_is_off_by_default(config_dir: Path) -> None:
    guard = load_settings(write_config(config_dir, VALID), env={}).guard
    assert (guard.enabled, guard.host, guard.port, guard.shared_secret) == (
        False,
        "127.0.0.1",
        9181,
        None,
    )


def test_guard_reads_its_secret_from_a_file(config_dir: Path) -> None:
    write_secret(config_dir / "secrets" / "guard", GUARD_SECRET)
    text = VALID + '\n[guard]\nenabled = true\nhost = "10.0.0.12"\nport = 9200\n'
    text += 'shared_secret_file = "secrets/guard"\n'
    guard = load_settings(write_config(config_dir, text), env={}).guard
    assert guard.enabled and guard.host == "10.0.0.12" and guard.port == 9200
    assert guard.shared_secret is not None and guard.shared_secret.reveal() == GUARD_SECRET


def test_guard_errors_all_at_once(config_dir: Path) -> None:
    write_secret(config_dir / "secrets" / "guard", "trop-court")
    text = VALID + '\n[guard]\nenabled = true\nhost = "0.0.0.0"\nport = 70000\n'
    text += 'shared_secret_file = "secrets/guard"\n'
    problems = problems_of(write_config(config_dir, text))
    assert set(problems) == {"guard.host", "guard.port", "guard.shared_secret"}
    assert "adresse IP privée" in problems["guard.host"]
    assert "au moins 32 caractères" in problems["guard.shared_secret"]
    for host in ("8.8.8.8", "bot.example.fr"):
        text = VALID + f'\n[guard]\nhost = "{host}"\n'
        assert set(problems_of(write_config(config_dir, text))) == {"guard.host"}


def test_guard_enabled_needs_its_secret(config_dir: Path) -> None:
    problems = problems_of(write_config(config_dir, VALID + "\n[guard]\nenabled = true\n"))
    assert problems == {
        "guard.shared_secret": (
            "secret manquant : indiquez guard.shared_secret_file ou la variable "
            "d'environnement APLUS_GUARD_SHARED_SECRET"
        )
    }
    env = {"APLUS_GUARD_SHARED_SECRET": GUARD_SECRET}
    text = VALID + "\n[guard]\nenabled = true\n"
    assert load_settings(write_config(config_dir, text), env=env).guard.shared_secret is not None


def test_a_password_in_the_database_url_query_is_refused_like_one_in_its_user_info(
    config_dir: Path,
) -> None:
    for query in (f"password={DB_PASSWORD}", f"sslmode=require&PassWord={DB_PASSWORD}"):
        text = VALID + f'\n[database]\nurl = "postgresql+asyncpg://aplus@db/aplus?{query}"\n'
        problems = problems_of(write_config(config_dir, text))
        assert set(problems) == {"database.url"}, problems
        assert "contient un mot de passe" in problems["database.url"]
        assert "APLUS_DATABASE_URL" in problems["database.url"]
        assert DB_PASSWORD not in str(problems)
    text = VALID + '\n[database]\nurl = "postgresql+asyncpg://aplus@db/aplus?passfile=/x"\n'
    assert set(problems_of(write_config(config_dir, text))) == {"database.url"}
    # From a secret, it is accepted, and never shown in logs.
    env = {"APLUS_DATABASE_URL": f"postgresql+asyncpg://aplus@db/aplus?password={DB_PASSWORD}"}
    settings = load_settings(write_config(config_dir, VALID), env=env)
    assert settings.database.redacted_url == "postgresql+asyncpg://aplus@db/aplus?password=***"


# -- [ha]: two processes, one active ----------------------------------------------------

PG_URL = 'url = "postgresql+asyncpg://aplus@127.0.0.1:5432/aplus"'


def test_ha_is_off_by_default_and_renews_every_second_for_five(config_dir: Path) -> None:
    ha = load_settings(write_config(config_dir, VALID), env={}).ha
    assert (ha.enabled, ha.renew_seconds, ha.ttl_seconds) == (False, 1, 5)


def test_ha_on_postgresql_loads(config_dir: Path) -> None:
    text = VALID + f"\n[database]\n{PG_URL}\n\n[ha]\nenabled = true\nttl_seconds = 7\n"
    ha = load_settings(write_config(config_dir, text), env={}).ha
    assert (ha.enabled, ha.renew_seconds, ha.ttl_seconds) == (True, 1, 7)


def test_ha_is_refused_on_sqlite_in_french(config_dir: Path) -> None:
    problems = problems_of(write_config(config_dir, VALID + "\n[ha]\nenabled = true\n"))
    assert set(problems) == {"ha.enabled"}
    assert "PostgreSQL" in problems["ha.enabled"] and "SQLite" in problems["ha.enabled"]


@pytest.mark.parametrize(("renew", "ttl"), [(2, 6), (3, 5), (5, 5)])
def test_ha_renewal_must_be_under_a_third_of_the_ttl(
    config_dir: Path, renew: int, ttl: int
) -> None:
    text = VALID + f"\n[database]\n{PG_URL}\n\n[ha]\nenabled = true\n"
    text += f"renew_seconds = {renew}\nttl_seconds = {ttl}\n"
    problems = problems_of(write_config(config_dir, text))
    assert set(problems) == {"ha.renew_seconds"}
    assert "tiers de la durée du bail" in problems["ha.renew_seconds"]
