"""deploy/element/config.json.template, rendered, checked against the bot's configuration."""

from __future__ import annotations

import json
from pathlib import Path

from bot.settings import load_settings
from deploy import render as deploy_render
from tests.deploy.test_render import DUMMY_SECRETS, filled
from tests.support import deploy


def element_config(tmp_path: Path, values: Path, config: Path) -> dict[str, object]:
    out = tmp_path / "rendu"
    deploy_render.render_files(config, values, out)
    loaded: dict[str, object] = json.loads((out / "element" / "config.json").read_text())
    return loaded


def test_element_points_at_the_bot_s_homeserver_and_closes_what_should_be(
    tmp_path: Path,
) -> None:
    config, values = filled(tmp_path)
    element = element_config(tmp_path, values, config)
    bot = load_settings(config, env=DUMMY_SECRETS)  # the bot's own reading of config.toml
    server = element["default_server_config"]["m.homeserver"]  # type: ignore[index]
    assert server["base_url"] == bot.homeserver.url
    assert server["server_name"] == bot.homeserver.server_name
    assert bot.bot.user_id.endswith(":" + server["server_name"])
    assert element["disable_custom_urls"] is True
    assert element["disable_guests"] is True
    assert element["disable_3pid_login"] is True
    assert element["default_federate"] is False
    assert element["permalink_prefix"] == "https://element.exemple.example"
    assert element["room_directory"] == {"servers": [bot.homeserver.server_name]}
    # ProConnect is on in the example: Element goes straight to it.
    assert element["sso_redirect_options"] == {"immediate": True, "on_welcome_page": True}
    features = element["setting_defaults"]
    for switch in (
        "registration",
        "passwordReset",
        "deactivate",
        "identityServer",
        "thirdPartyId",
        "roomHistorySettings",
        "urlPreviews",
        "widgets",
        "voip",
    ):
        assert features[f"UIFeature.{switch}"] is False, switch  # type: ignore[index]


def test_without_proconnect_element_shows_its_password_login(tmp_path: Path) -> None:
    bot = deploy.bot_doc()
    values = deploy.values_doc(tmp_path, proconnect={"enabled": False})
    rendering = deploy_render.collect(bot, values)
    deploy_render.render_all(rendering, tmp_path / "rendu")
    element = json.loads((tmp_path / "rendu" / "element" / "config.json").read_text())
    assert element["sso_redirect_options"]["immediate"] is False
    homeserver = (tmp_path / "rendu" / "synapse" / "homeserver.yaml").read_text()
    assert "oidc_providers" not in homeserver
