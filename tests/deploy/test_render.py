"""`python -m deploy.render`: what an operator runs to get the configuration files.

The renderer reads the bot's config.toml (never repeating it) and the deployment values;
every problem is reported at once with its key, in French.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot.settings import load_settings
from deploy import render as deploy_render
from tests.support import deploy

DEPLOY = deploy.REPO / "deploy"
DUMMY_SECRETS = {
    "APLUS_BOT_PASSWORD": "mot-de-passe-du-bot",
    "APLUS_PICKLE_KEY": "cle-du-magasin-nio-0123456789",
    "APLUS_DATA_KEY": base64.b64encode(b"k" * 32).decode(),
    "APLUS_DATABASE_URL": "sqlite+aiosqlite:////tmp/x.db",
    "APLUS_GUARD_SHARED_SECRET": "secret-partage-de-test-" + "x" * 16,
}


def filled(tmp_path: Path) -> tuple[Path, Path]:
    """The shipped examples with every CHANGE_ME filled in, as an operator would."""
    config = tmp_path / "config.toml"
    config.write_text((DEPLOY / "config.example.toml").read_text().replace("CHANGE_ME", "exemple"))
    values = tmp_path / "deploiement.toml"
    values.write_text((DEPLOY / "values.example.toml").read_text().replace("CHANGE_ME", "exemple"))
    return config, values


def test_the_shipped_examples_render_every_template(tmp_path: Path) -> None:
    config, values = filled(tmp_path)
    out = tmp_path / "rendu"
    written = deploy_render.render_files(config, values, out)
    expected = {str(p.relative_to(DEPLOY))[: -len(".template")] for p in deploy_render.templates()}
    assert {str(p.relative_to(out)) for p in written} == expected
    for path in written:
        text = path.read_text()
        assert not re.search(r"@[A-Z][A-Z0-9_]*@", text), path
        assert "#@if" not in text and "#@endif" not in text, path
        assert path.stat().st_mode & 0o777 == 0o644
    homeserver = yaml.safe_load((out / "synapse" / "homeserver.yaml").read_text())
    assert homeserver["server_name"] == "exemple.example"
    assert homeserver["oidc_providers"][0]["issuer"] == "https://exemple.example/api/v2"
    json.loads((out / "element" / "config.json").read_text())


def test_every_placeholder_left_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(deploy_render.RenderError) as caught:
        deploy_render.render_files(
            DEPLOY / "config.example.toml", DEPLOY / "values.example.toml", tmp_path / "rendu"
        )
    keys = {key for key, _ in caught.value.problems}
    assert {
        "config.toml homeserver.url",
        "config.toml email.reply_domain",
        "valeurs proconnect.client_id",
        "valeurs element.url",
    } <= keys
    assert all("CHANGE_ME" in message for _, message in caught.value.problems)
    assert not (tmp_path / "rendu").exists()  # nothing half-written


def test_the_renderer_defaults_are_the_bot_settings_defaults(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[homeserver]\nurl = "https://matrix.a.test"\nserver_name = "a.test"\n'
        '[bot]\nuser_id = "@aplus:a.test"\n'
        '[email]\nfrom_address = "n@a.test"\nreply_domain = "r.a.test"\n'
        'relay_host = "smtp.a.test"\n'
    )
    settings = load_settings(config, env=DUMMY_SECRETS)
    actual = {
        "bot.max_attachment_bytes": settings.bot.max_attachment_bytes,
        "email.enabled": settings.email.enabled,
        "email.max_message_bytes": settings.email.max_message_bytes,
        "email.listen_host": settings.email.listen_host,
        "email.listen_port": settings.email.listen_port,
        "email.listen_protocol": settings.email.listen_protocol,
        "email.relay_port": settings.email.relay_port,
        "email.relay_security": settings.email.relay_security,
        "email.trusted_authserv_ids": list(settings.email.trusted_authserv_ids),
        "guard.enabled": settings.guard.enabled,
        "guard.host": settings.guard.host,
        "guard.port": settings.guard.port,
    }
    assert actual == dict(deploy_render.BOT_DEFAULTS)


def homeserver(tmp_path: Path, **values: object) -> dict[str, object]:
    doc = deploy.values_doc(tmp_path)
    for key, value in values.items():
        section, _, name = key.partition("__")
        doc[section][name] = value
    out = tmp_path / f"rendu-{len(list(tmp_path.iterdir()))}"
    deploy.render(out, deploy.bot_doc(), doc)
    loaded: dict[str, object] = yaml.safe_load((out / "synapse" / "homeserver.yaml").read_text())
    return loaded


def test_federation_none_list_or_all(tmp_path: Path) -> None:
    none = homeserver(tmp_path, synapse__federation="aucune")
    assert none["federation_domain_whitelist"] == []
    assert none["listeners"][0]["resources"][0]["names"] == ["client"]  # type: ignore[index]
    some = homeserver(
        tmp_path, synapse__federation="liste", synapse__federation_allowed=["agent.tchap.gouv.fr"]
    )
    assert some["federation_domain_whitelist"] == ["agent.tchap.gouv.fr"]
    everyone = homeserver(tmp_path, synapse__federation="toutes")
    # Absent, which is what opens the server to every other server.
    assert "federation_domain_whitelist" not in everyone
    assert everyone["listeners"][0]["resources"][0]["names"] == [  # type: ignore[index]
        "client",
        "federation",
    ]
    with pytest.raises(deploy_render.RenderError) as caught:
        homeserver(tmp_path, synapse__federation="liste")
    assert caught.value.problems[0][0] == "valeurs synapse.federation_allowed"


def test_the_guard_module_entry(tmp_path: Path) -> None:
    off = homeserver(tmp_path, guard__enabled=False)
    assert "modules" not in off
    alone = homeserver(tmp_path)  # api_urls empty: the bot's own [guard] host and port
    assert alone["modules"][0]["config"]["api_urls"] == ["http://127.0.0.1:9181"]  # type: ignore[index]
    on = homeserver(
        tmp_path,
        guard__enabled=True,
        guard__api_urls=["http://127.0.0.1:9181", "http://10.0.0.6:9181"],
        guard__shared_secret_path="/etc/matrix-synapse/secrets/garde",
        guard__timeout_seconds=5,
    )
    [module] = on["modules"]  # type: ignore[misc]
    assert module["module"] == "synapse_module.aplus_guard.AplusGuard"
    assert module["config"] == {
        "bot_user_id": "@aplus:aplus.test",
        "api_urls": ["http://127.0.0.1:9181", "http://10.0.0.6:9181"],
        "shared_secret_path": "/etc/matrix-synapse/secrets/garde",
        "timeout_seconds": 5,
    }


def test_the_guard_must_match_the_bot_s_endpoint(tmp_path: Path) -> None:
    values = deploy.values_doc(
        tmp_path,
        guard={
            "enabled": True,
            "shared_secret_path": "/s",
            "timeout_seconds": 9,
            "api_urls": ["http://10.0.0.6:9181/x"],
        },
    )
    bot = deploy.bot_doc(guard={"enabled": False})
    with pytest.raises(deploy_render.RenderError) as caught:
        deploy_render.collect(bot, values)
    assert [key for key, _ in caught.value.problems] == [
        "config.toml guard.enabled",
        "valeurs guard.api_urls",
        "valeurs guard.api_urls",
        "valeurs guard.timeout_seconds",
    ]


def test_values_inconsistent_with_the_bot_configuration_are_refused(tmp_path: Path) -> None:
    values = deploy.values_doc(
        tmp_path,
        mail={
            "submission_listen": "127.0.0.1:25",
            "hostname": "reponse.aplus.test",
            "bot_listeners": ["10.0.0.9:2600"],
            "bot_networks": ["pas-un-reseau"],
        },
    )
    bot = deploy.bot_doc(email={"trusted_authserv_ids": []})
    with pytest.raises(deploy_render.RenderError) as caught:
        deploy_render.collect(bot, values)
    keys = [key for key, _ in caught.value.problems]
    assert keys == [
        "config.toml email.trusted_authserv_ids",
        "valeurs mail.bot_listeners",
        "valeurs mail.hostname",
        "valeurs mail.submission_listen",
        "valeurs mail.bot_networks",
    ]
    text = str(caught.value)
    assert "email.relay_port de config.toml (2587)" in text
    assert "port 2525 de config.toml" in text


def test_sizes_follow_the_bot(tmp_path: Path) -> None:
    bot = deploy.bot_doc(
        bot={"max_attachment_bytes": 5_000_000}, email={"max_message_bytes": 20_000_000}
    )
    rendering = deploy_render.collect(bot, deploy.values_doc(tmp_path))
    assert rendering.values["MAX_ATTACHMENT_BYTES"] == "5000000"
    assert rendering.values["MESSAGE_SIZE_LIMIT"] == str(20_000_000 - 64 * 1024)


def test_command_line(tmp_path: Path) -> None:
    config, values = filled(tmp_path)
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy.render",
            "--config",
            str(config),
            "--values",
            str(values),
            "--out",
            str(tmp_path / "rendu"),
        ],
        capture_output=True,
        text=True,
        cwd=deploy.REPO,
        env={**os.environ},
    )
    assert ok.returncode == 0, ok.stderr
    assert str(tmp_path / "rendu" / "synapse" / "homeserver.yaml") in ok.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy.render",
            "--config",
            str(DEPLOY / "config.example.toml"),
            "--values",
            str(values),
            "--out",
            str(tmp_path / "autre"),
        ],
        capture_output=True,
        text=True,
        cwd=deploy.REPO,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("Rendu impossible,")
    assert "remplacez « CHANGE_ME »" in bad.stderr
