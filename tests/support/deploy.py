"""The shipped deploy/ files, rendered with test values, and the Debian packages they need.

- `bot_doc` / `values_doc`: a bot ``config.toml`` and deployment values, as dicts, with
  private ports and directories (`deploy.render.collect` reads the same dicts as files);
- `render` writes every template of ``deploy/`` under a directory, as an operator would;
- `ensure_debian_packages` installs what a test needs with apt-get (as root, idempotent,
  services not started), or skips with the install command when that cannot be done;
- `TemplateSynapse`: a Synapse started from the rendered ``homeserver.yaml`` on a fresh
  PostgreSQL database, as ``deploy/README.md`` says to create it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from deploy import render as deploy_render

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_ADMIN = "postgres"
REPO = Path(__file__).resolve().parents[2]
# Package → the command that provides it (what `ensure_debian_packages` checks first).
_PROVIDES = {
    "postfix": "/usr/sbin/postfix",
    "postfix-pcre": "/usr/lib/postfix/postfix-pcre.so",
    "rspamd": "/usr/bin/rspamd",
    "dnsmasq-base": "/usr/sbin/dnsmasq",
    "swaks": "/usr/bin/swaks",
    "systemd": "/usr/bin/systemd-analyze",
    "docker-compose": "/usr/bin/docker-compose",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def shared_dir(prefix: str) -> Path:
    """A fresh directory that daemons dropping root (postfix, _rspamd) can traverse.

    pytest's own temporary directories sit under a 0700 directory of root's.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------- packages


def _installed(package: str) -> bool:
    marker = _PROVIDES.get(package)
    if marker is not None:
        return Path(marker).exists()
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return result.returncode == 0 and "install ok installed" in result.stdout


_APT_LOCK = Path(tempfile.gettempdir()) / "aplus-apt.lock"


def ensure_debian_packages(*packages: str) -> None:
    """apt-get install what is missing (as root); skip the test with the command otherwise.

    Services are not started (policy-rc.d answers 101 during the install) and Postfix is
    preseeded to "No configuration": the system's port 25 and /etc are left alone.
    """
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return
    command = "apt-get install -y --no-install-recommends " + " ".join(missing)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"paquets Debian absents ({', '.join(missing)}) : en root, {command}")
    import fcntl

    with open(_APT_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes must not run apt at once
        missing = [p for p in missing if not _installed(p)]
        if not missing:
            return
        policy = Path("/usr/sbin/policy-rc.d")
        created = not policy.exists()
        if created:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(
                ["debconf-set-selections"],
                input="postfix postfix/main_mailer_type select No configuration\n",
                text=True,
                check=False,
                env=env,
            )
            result = subprocess.run(
                ["apt-get", "install", "-y", "--no-install-recommends", *missing],
                capture_output=True,
                text=True,
                env=env,
                timeout=600,
            )
            if result.returncode != 0:
                update = subprocess.run(
                    ["apt-get", "update"], capture_output=True, text=True, env=env, timeout=300
                )
                if update.returncode == 0:
                    result = subprocess.run(
                        ["apt-get", "install", "-y", "--no-install-recommends", *missing],
                        capture_output=True,
                        text=True,
                        env=env,
                        timeout=600,
                    )
        finally:
            if created:
                policy.unlink()
    if result.returncode != 0:
        pytest.skip(
            f"installation impossible de {', '.join(missing)} ({result.stderr.strip()[-300:]})"
            f" : en root, {command}"
        )


# --------------------------------------------------------------------------- rendering


def bot_doc(**sections: Mapping[str, Any]) -> dict[str, Any]:
    """A bot config.toml (as a dict) for tests; `sections` replace keys per section."""
    doc: dict[str, Any] = {
        "homeserver": {"url": "https://matrix.aplus.test", "server_name": "aplus.test"},
        "bot": {"user_id": "@aplus:aplus.test", "max_attachment_bytes": 10 * 1024 * 1024},
        "guard": {"enabled": True, "host": "127.0.0.1", "port": 9181},
        "email": {
            "enabled": True,
            "from_address": "ne-pas-repondre@aplus.test",
            "reply_domain": "reponse.aplus.test",
            "relay_host": "127.0.0.1",
            "relay_port": 2587,
            "relay_security": "none",
            "listen_host": "127.0.0.1",
            "listen_port": 2525,
            "listen_protocol": "lmtp",
            "max_message_bytes": 26214400,
            "trusted_authserv_ids": ["mx.aplus.test"],
        },
    }
    for name, keys in sections.items():
        doc.setdefault(name, {}).update(keys)
    return doc


def values_doc(base: Path, **sections: Mapping[str, Any]) -> dict[str, Any]:
    """Deployment values (as a dict) with every directory under `base`."""
    doc: dict[str, Any] = {
        "install": {"aplus_prefix": str(REPO), "synapse_venv": str(REPO / ".venv")},
        "synapse": {
            "config_dir": str(base / "synapse-config"),
            "data_dir": str(base / "synapse-data"),
            "listen_address": "127.0.0.1",
            "listen_port": 8008,
            "admin_contact": "mailto:exploitation@aplus.test",
            "federation": "aucune",
            "federation_allowed": [],
            "log_file": str(base / "synapse-log" / "homeserver.log"),
            "database": {
                "host": PG_HOST,
                "port": PG_PORT,
                "name": "synapse",
                "user": "synapse",
                "passfile": str(base / "synapse-config" / "secrets" / "pgpass"),
                "cp_min": 1,
                "cp_max": 5,
            },
        },
        "proconnect": {
            "enabled": True,
            "issuer": "https://proconnect.aplus.test/api/v2",
            "client_id": "client-aplus-test",
            "client_secret_path": str(base / "synapse-config" / "secrets" / "proconnect"),
        },
        "guard": {
            "enabled": True,
            "api_urls": [],
            "shared_secret_path": str(base / "synapse-config" / "secrets" / "aplus_guard_secret"),
            "timeout_seconds": 2,
        },
        "element": {"url": "https://element.aplus.test", "brand": "Administration+"},
        "mail": {
            "hostname": "mx.aplus.test",
            "mx_listen": "127.0.0.1:2500",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "submission_listen": "127.0.0.1:2587",
            "bot_networks": ["127.0.0.1/32"],
            "bot_listeners": [],
            "relayhost": "",
            "tls_cert_file": "/etc/ssl/certs/ssl-cert-snakeoil.pem",
            "tls_key_file": "/etc/ssl/private/ssl-cert-snakeoil.key",
            "config_directory": str(base / "postfix"),
            "queue_directory": str(base / "postfix-queue"),
            "data_directory": str(base / "postfix-data"),
            "maillog_file": str(base / "postfix-log" / "maillog"),
        },
        "rspamd": {
            "milter": "127.0.0.1:11432",
            "normal_socket": "127.0.0.1:11433",
            "controller_socket": "127.0.0.1:11434",
            "nameserver": "",
        },
    }
    for name, keys in sections.items():
        doc.setdefault(name, {}).update(keys)
    return doc


def render(out: Path, bot: Mapping[str, Any], values: Mapping[str, Any]) -> list[Path]:
    """Render every shipped template under `out` (as `python -m deploy.render` does)."""
    rendering = deploy_render.collect(bot, values)
    return deploy_render.render_all(rendering, out)


def write_toml(path: Path, doc: Mapping[str, Any]) -> Path:
    """A TOML file of `doc` (strings, integers, booleans, lists, nested tables)."""

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, str):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(value, list):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        raise TypeError(value)

    lines: list[str] = []

    def table(prefix: str, node: Mapping[str, Any]) -> None:
        plain = {k: v for k, v in node.items() if not isinstance(v, Mapping)}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {scalar(v)}" for k, v in plain.items())
        for k, v in node.items():
            if isinstance(v, Mapping):
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", doc)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_secret(path: Path, value: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return path


# --------------------------------------------------------------------------- PostgreSQL


def create_synapse_database(name: str, role: str, password: str) -> None:
    """As deploy/README.md says: a role, then createdb UTF8 / locale C / template0."""
    env = {**os.environ, "PGHOST": PG_HOST, "PGPORT": str(PG_PORT), "PGUSER": PG_ADMIN}
    subprocess.run(
        [
            "psql",
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    subprocess.run(
        [
            "createdb",
            "--encoding=UTF8",
            "--locale=C",
            "--template=template0",
            f"--owner={role}",
            name,
        ],
        check=True,
        env=env,
        capture_output=True,
    )


def drop_synapse_database(name: str, role: str) -> None:
    env = {**os.environ, "PGHOST": PG_HOST, "PGPORT": str(PG_PORT), "PGUSER": PG_ADMIN}
    subprocess.run(["dropdb", "--if-exists", "--force", name], env=env, capture_output=True)
    subprocess.run(["psql", "-qc", f'DROP ROLE IF EXISTS "{role}"'], env=env, capture_output=True)


# --------------------------------------------------------------------------- Synapse


class TemplateSynapse:
    """Synapse run from a rendered deploy/synapse/homeserver.yaml (a child process)."""

    def __init__(self, config: Path, port: int, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.port = port
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.console = config.parent / "console.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
            cwd=self.config.parent,
        )

    def generate_keys(self) -> None:
        """`--generate-keys`, as the README's installation step does (signing key, secret)."""
        result = self.run("-m", "synapse.app.homeserver", "-c", str(self.config), "--generate-keys")
        assert result.returncode == 0, result.stdout + result.stderr

    def start(self, timeout: float = 90) -> None:
        """Start and wait until the client API answers (blocking: used by fixtures)."""
        with open(self.console, "ab") as console:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=self.config.parent,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        url = self.base_url + "/_matrix/client/versions"
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"Synapse exited ({self.process.returncode}):\n{self.tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(url, timeout=2) as response,  # noqa: S310
            ):
                if response.status == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"Synapse not answering after {timeout} s:\n{self.tail()}")
            time.sleep(0.2)

    def tail(self, lines: int = 40) -> str:
        text = self.console.read_text(errors="replace") if self.console.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def random_name(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"
