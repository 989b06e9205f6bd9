"""The systemd units and the compose file of deploy/, checked by the tools that run them.

- `systemd-analyze verify` (works without systemd as PID 1) on the rendered units: the
  bot's template unit as two instances (principal, secours) and Synapse's unit, rendered
  with this checkout as the install prefix so that every ExecStart is a real executable;
- `docker-compose config` (Debian's docker-compose 1.29.2) on deploy/compose.yml, fed the
  files `deploy.render` produces from deploy/compose/config.toml and values.toml: every
  bind-mounted configuration file is one the renderer wrote (the same templates the other
  tests start for real). Images cannot be pulled here, so nothing is started.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy import render as deploy_render
from tests.support import deploy

DEPLOY = deploy.REPO / "deploy"
# The first test may install Debian packages (systemd, docker-compose).
pytestmark = pytest.mark.timeout(900)


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def rendered_units(tmp_path: Path, prefix: Path) -> Path:
    values = deploy.values_doc(
        tmp_path, install={"aplus_prefix": str(prefix), "synapse_venv": str(prefix / ".venv")}
    )
    deploy.render(tmp_path / "rendu", deploy.bot_doc(), values)
    units = tmp_path / "rendu" / "systemd"
    # A template unit is verified through instances, as systemctl would load them.
    for instance in ("principal", "secours"):
        (units / f"aplus@{instance}.service").symlink_to(units / "aplus@.service")
    return units


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    deploy.ensure_debian_packages("systemd")
    units = rendered_units(tmp_path, deploy.REPO)
    assert (deploy.REPO / ".venv" / "bin" / "aplus").exists()
    result = verify(
        units / "aplus@principal.service",
        units / "aplus@secours.service",
        units / "matrix-synapse.service",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Not even a warning (unknown key, bad section…) about our units.
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "aplus@" in line or "matrix-synapse.service" in line
    ]
    assert ours == [], ours
    text = (units / "aplus@.service").read_text()
    assert "--config /etc/aplus/%i.toml" in text and "StateDirectory=aplus/%i" in text


def test_systemd_analyze_verify_catches_a_wrong_install_prefix(tmp_path: Path) -> None:
    deploy.ensure_debian_packages("systemd")
    units = rendered_units(tmp_path, Path("/nonexistent/aplus"))
    result = verify(units / "aplus@principal.service")
    assert result.returncode != 0
    assert "/nonexistent/aplus/.venv/bin/aplus" in result.stdout + result.stderr


def test_compose_file_is_valid_and_mounts_the_rendered_files(tmp_path: Path) -> None:
    deploy.ensure_debian_packages("docker-compose")
    rendu = tmp_path / "rendu"
    deploy_render.render_files(
        DEPLOY / "compose" / "config.toml", DEPLOY / "compose" / "values.toml", rendu
    )
    env = {**os.environ, "APLUS_RENDU": str(rendu), "APLUS_SECRETS": str(tmp_path / "s")}
    result = subprocess.run(
        ["docker-compose", "-f", str(DEPLOY / "compose.yml"), "config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert set(config["services"]) == {"postgres", "synapse", "aplus", "mail"}
    mounted = []
    for service in config["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if source.startswith(str(rendu)):
                mounted.append(Path(source))
    assert len(mounted) >= 8
    missing = [str(p) for p in mounted if not p.exists()]
    assert missing == []
    # The gateway shares the bot's network: LMTP and the relay on 127.0.0.1, as tested.
    assert config["services"]["mail"]["network_mode"] == "service:aplus"
    transport = (rendu / "postfix" / "transport").read_text()
    assert "aplus:inet:[127.0.0.1]:2525" in transport
    # The bot's own config in the compose set is valid for the bot itself.
    homeserver = yaml.safe_load((rendu / "synapse" / "homeserver.yaml").read_text())
    assert homeserver["database"]["args"]["host"] == "postgres"


def test_a_broken_compose_file_is_refused(tmp_path: Path) -> None:
    deploy.ensure_debian_packages("docker-compose")
    broken = tmp_path / "compose.yml"
    broken.write_text(
        (DEPLOY / "compose.yml")
        .read_text()
        .replace('network_mode: "service:aplus"', 'network_mode: "service:absent"')
    )
    result = subprocess.run(
        ["docker-compose", "-f", str(broken), "--project-directory", str(DEPLOY), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "APLUS_RENDU": str(tmp_path)},
    )
    assert result.returncode != 0
    assert "absent" in result.stderr
