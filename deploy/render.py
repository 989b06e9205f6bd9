"""Render deploy/'s templates with the bot's configuration and the deployment values.

    python -m deploy.render --config /etc/aplus/config.toml \\
        --values /etc/aplus/deploiement.toml --out /etc/aplus/rendu

Every ``*.template`` file under ``deploy/`` becomes the same path without ``.template``
under ``--out`` (``synapse/homeserver.yaml``, ``element/config.json``, ``postfix/main.cf``,
``rspamd/local.d/...``). What the bot's ``config.toml`` already says (server name,
homeserver URL, the bot's account, attachment and message sizes, reply domain, trusted
authserv-id, listener, relay) is read from it, never repeated, so the homeserver, the
mail gateway and the bot cannot disagree. The tests render the same templates with test
values: what is tested is what is shipped.

Template syntax: ``@NAME@`` is replaced by a value (an unknown name is an error); the
lines between ``#@if FLAG`` and ``#@endif`` are kept only when FLAG is on, and the
marker lines themselves are dropped. Rendered files hold no secret (only paths to
secret files), so they are written 0644.

Every problem (missing key, wrong type, ``CHANGE_ME`` left, inconsistency with the bot's
configuration) is reported at once, in French, with the key to fix.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from bot.settings import DEFAULT_MAX_ATTACHMENT_BYTES, DEFAULT_MAX_MESSAGE_BYTES, PLACEHOLDER

TEMPLATES_DIR: Final = Path(__file__).resolve().parent
TEMPLATE_SUFFIX: Final = ".template"
# Postfix counts the envelope and adds headers (Received, Authentication-Results) before
# handing the mail to the bot: keep its limit this much below the bot's, so that Postfix
# refuses at SMTP time what the bot would refuse later (a bounce instead of a 552).
POSTFIX_SIZE_MARGIN: Final = 64 * 1024
# What the bot's settings use when config.toml leaves a key out (bot/settings/parsers.py;
# tests/deploy/test_render.py checks the two agree).
BOT_DEFAULTS: Final[Mapping[str, Any]] = {
    "bot.max_attachment_bytes": DEFAULT_MAX_ATTACHMENT_BYTES,
    "email.enabled": False,
    "email.max_message_bytes": DEFAULT_MAX_MESSAGE_BYTES,
    "email.listen_host": "127.0.0.1",
    "email.listen_port": 2525,
    "email.listen_protocol": "smtp",
    "email.relay_port": 587,
    "email.relay_security": "starttls",
    "email.trusted_authserv_ids": [],
    "guard.enabled": False,
    "guard.host": "127.0.0.1",
    "guard.port": 9181,
}

_PLACEHOLDER_RE: Final = re.compile(r"@([A-Z][A-Z0-9_]*)@")
_IF_RE: Final = re.compile(r"^\s*#@if\s+([a-z_]+)\s*$")
_ENDIF_RE: Final = re.compile(r"^\s*#@endif\s*$")
_HOST_RE: Final = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
# Values end up inside quoted YAML/JSON strings and Postfix lines: none of these.
_UNSAFE_CHARS: Final = frozenset('"\\\n\r\t')


class RenderError(Exception):
    """Every problem found, as (key, French message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(problems)
        self.problems = problems

    def __str__(self) -> str:
        lines = [f"{len(self.problems)} problème(s) :"]
        lines += [f"  - {key} : {message}" for key, message in self.problems]
        return "\n".join(lines)


@dataclass
class Rendering:
    """The flat values (``@NAME@``) and the block flags (``#@if flag``) of one deployment."""

    values: dict[str, str] = field(default_factory=dict)
    flags: dict[str, bool] = field(default_factory=dict)


# --------------------------------------------------------------------------- reading


class _Reader:
    """Typed access to one TOML document; collects problems instead of raising."""

    def __init__(self, doc: Mapping[str, Any], where: str, problems: list[tuple[str, str]]):
        self.doc = doc
        self.where = where
        self.problems = problems

    def error(self, key: str, message: str) -> None:
        self.problems.append((f"{self.where} {key}", message))

    def _raw(self, key: str) -> Any:
        node: Any = self.doc
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return _MISSING
            node = node[part]
        return node

    def get(self, key: str, kind: type, default: Any = None) -> Any:
        value = self._raw(key)
        if value is _MISSING:
            if default is not None:
                return default
            self.error(key, "clé manquante")
            return _invalid(kind)
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
            self.error(key, f"doit être {_KIND_FR[kind]}")
            return _invalid(kind)
        if isinstance(value, str):
            if PLACEHOLDER in value:
                self.error(key, f"remplacez « {PLACEHOLDER} » par la vraie valeur")
            elif _UNSAFE_CHARS & set(value):
                self.error(key, "guillemet, barre oblique inverse ou saut de ligne interdit")
        if isinstance(value, list):
            for item in value:
                if not isinstance(item, str):
                    self.error(key, "doit être une liste de textes")
                    return []
                if PLACEHOLDER in item:
                    self.error(key, f"remplacez « {PLACEHOLDER} » par la vraie valeur")
        return value

    def text(self, key: str, check: Callable[[str], str | None] | None = None) -> str:
        value: str = self.get(key, str)
        if PLACEHOLDER in value:  # already reported; checking it too would say it twice
            return value
        if value and check is not None and (message := check(value)) is not None:
            self.error(key, message)
        return value

    def integer(self, key: str, minimum: int = 0, maximum: int = 2**31) -> int:
        value: int = self.get(key, int)
        if not minimum <= value <= maximum:
            self.error(key, f"doit être entre {minimum} et {maximum}")
        return value


_MISSING: Final = object()
_KIND_FR: Final = {str: "un texte", int: "un entier", bool: "true ou false", list: "une liste"}


def _invalid(kind: type) -> Any:
    return {str: "", int: 0, bool: False, list: []}[kind]


def _check_https(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        return "doit être une adresse https://…"
    return None


def _check_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "doit être une adresse http(s)://…"
    return None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _check_host(value: str) -> str | None:
    return None if _HOST_RE.match(value) else "nom d'hôte invalide"


def _check_abs_path(value: str) -> str | None:
    return None if value.startswith("/") else "doit être un chemin absolu (commençant par /)"


def _check_listen(value: str) -> str | None:
    """Postfix master.cf service address: a service name, or host:port."""
    if re.fullmatch(r"[a-z]+", value):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        return "attendu : « smtp », ou adresse:port (ex. 127.0.0.1:587)"
    return None


def _host_port(value: str) -> tuple[str, int] | None:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def _check_network(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"réseau invalide « {value} » (attendu : 10.0.0.5/32)"
    return None


# --------------------------------------------------------------------------- values


def collect(bot_doc: Mapping[str, Any], values_doc: Mapping[str, Any]) -> Rendering:
    """The rendering of one deployment, or `RenderError` with every problem."""
    problems: list[tuple[str, str]] = []
    bot = _Reader(bot_doc, "config.toml", problems)
    val = _Reader(values_doc, "valeurs", problems)
    r = Rendering()
    v = r.values

    def bot_get(key: str, kind: type) -> Any:
        return bot.get(key, kind, BOT_DEFAULTS.get(key))

    # -- from the bot's configuration
    server_name = bot.text("homeserver.server_name", _check_host)
    homeserver_url = bot.text("homeserver.url", _check_url).rstrip("/")
    bot_user_id = bot.text("bot.user_id")
    v["SERVER_NAME"] = server_name
    v["HOMESERVER_URL"] = homeserver_url
    v["PUBLIC_BASEURL"] = homeserver_url + "/"
    v["BOT_USER_ID"] = bot_user_id
    v["MAX_ATTACHMENT_BYTES"] = str(bot_get("bot.max_attachment_bytes", int))

    # -- Synapse
    v["SYNAPSE_CONFIG_DIR"] = val.text("synapse.config_dir", _check_abs_path)
    v["SYNAPSE_DATA_DIR"] = val.text("synapse.data_dir", _check_abs_path)
    v["SYNAPSE_LISTEN_ADDRESS"] = val.text("synapse.listen_address")
    v["SYNAPSE_LISTEN_PORT"] = str(val.integer("synapse.listen_port", 1, 65535))
    v["ADMIN_CONTACT"] = val.text("synapse.admin_contact")
    v["SYNAPSE_LOG_FILE"] = val.text("synapse.log_file", _check_abs_path)
    v["SYNAPSE_LOG_DIR"] = str(Path(v["SYNAPSE_LOG_FILE"] or "/").parent)
    federation = val.text("synapse.federation")
    allowed: list[str] = val.get("synapse.federation_allowed", list, [])
    for host in allowed:
        if _check_host(host):
            val.error("synapse.federation_allowed", f"nom de serveur invalide « {host} »")
    if federation == "aucune":
        if allowed:
            val.error("synapse.federation_allowed", 'doit être vide quand federation = "aucune"')
        v["FEDERATION_WHITELIST"] = "federation_domain_whitelist: []"
        v["LISTENER_RESOURCES"] = "[client]"
    elif federation == "liste":
        if not allowed:
            val.error(
                "synapse.federation_allowed",
                'federation = "liste" : indiquez au moins un serveur (sinon "aucune")',
            )
        v["FEDERATION_WHITELIST"] = "federation_domain_whitelist: " + json.dumps(allowed)
        v["LISTENER_RESOURCES"] = "[client, federation]"
    elif federation == "toutes":
        v["FEDERATION_WHITELIST"] = "# federation_domain_whitelist absent : tous les serveurs"
        v["LISTENER_RESOURCES"] = "[client, federation]"
    elif federation:
        val.error("synapse.federation", 'attendu : "aucune", "liste" ou "toutes"')
    r.flags["federation"] = federation != "aucune"

    v["DB_HOST"] = val.text("synapse.database.host")
    v["DB_PORT"] = str(val.integer("synapse.database.port", 1, 65535))
    v["DB_NAME"] = val.text("synapse.database.name")
    v["DB_USER"] = val.text("synapse.database.user")
    v["DB_PASSFILE"] = val.text("synapse.database.passfile", _check_abs_path)
    cp_min = val.integer("synapse.database.cp_min", 1, 100)
    cp_max = val.integer("synapse.database.cp_max", 1, 100)
    if cp_min > cp_max:
        val.error("synapse.database.cp_min", "doit être au plus cp_max")
    v["DB_CP_MIN"], v["DB_CP_MAX"] = str(cp_min), str(cp_max)

    # -- ProConnect
    proconnect = bool(val.get("proconnect.enabled", bool))
    r.flags["proconnect"] = proconnect
    if proconnect:
        issuer = val.text("proconnect.issuer", _check_https).rstrip("/")
        if issuer and not issuer.endswith("/api/v2"):
            val.error("proconnect.issuer", "l'émetteur ProConnect finit par /api/v2")
        v["PROCONNECT_ISSUER"] = issuer
        v["PROCONNECT_CLIENT_ID"] = val.text("proconnect.client_id")
        v["PROCONNECT_CLIENT_SECRET_PATH"] = val.text(
            "proconnect.client_secret_path", _check_abs_path
        )

    # -- the guard module (synapse_module/, deploy/synapse-module.md)
    guard = bool(val.get("guard.enabled", bool))
    r.flags["guard"] = guard
    if guard:
        if not bot_get("guard.enabled", bool):
            bot.error(
                "guard.enabled",
                "le module de garde est activé : le bot doit répondre "
                "(enabled = true dans [guard])",
            )
        own = f"http://{_url_host(str(bot_get('guard.host', str)))}:{bot_get('guard.port', int)}"
        urls: list[str] = val.get("guard.api_urls", list, []) or [own]
        for url in urls:
            if _check_url(url) or urlsplit(url).path not in ("", "/"):
                val.error("guard.api_urls", f"« {url} » : attendu http://adresse:port, sans chemin")
        if urls and urls[0].rstrip("/") != own:
            val.error(
                "guard.api_urls",
                f"la première adresse doit être celle du bot ({own}, "
                "[guard] host et port de config.toml)",
            )
        v["GUARD_API_URLS"] = json.dumps(urls)
        v["GUARD_SHARED_SECRET_PATH"] = val.text("guard.shared_secret_path", _check_abs_path)
        v["GUARD_TIMEOUT_SECONDS"] = str(val.integer("guard.timeout_seconds", 1, 5))

    # -- where things are installed (systemd units)
    v["APLUS_PREFIX"] = val.text("install.aplus_prefix", _check_abs_path).rstrip("/")
    v["SYNAPSE_VENV"] = val.text("install.synapse_venv", _check_abs_path).rstrip("/")

    # -- Element Web
    v["ELEMENT_URL"] = val.text("element.url", _check_https).rstrip("/")
    v["ELEMENT_BRAND"] = val.text("element.brand")
    v["ELEMENT_SSO_IMMEDIATE"] = "true" if proconnect else "false"

    # -- the mail gateway, only when the bridge is on
    email_on = bool(bot_get("email.enabled", bool))
    r.flags["email"] = email_on
    if email_on:
        _collect_mail(r, bot, bot_get, val)

    if problems:
        raise RenderError(problems)
    return r


def _collect_mail(
    r: Rendering, bot: _Reader, bot_get: Callable[[str, type], Any], val: _Reader
) -> None:
    v = r.values
    reply_domain = bot.text("email.reply_domain", _check_host).lower()
    v["REPLY_DOMAIN"] = reply_domain
    ids: list[str] = bot_get("email.trusted_authserv_ids", list)
    if not ids:
        bot.error(
            "email.trusted_authserv_ids",
            "indiquez l'authserv-id de la passerelle (celui qu'écrit rspamd)",
        )
        ids = [""]
    authserv_id = ids[0].strip().lower()
    v["AUTHSERV_ID"] = authserv_id
    v["AUTHSERV_ID_PCRE"] = re.escape(authserv_id)
    max_message = int(bot_get("email.max_message_bytes", int))
    if max_message <= 2 * POSTFIX_SIZE_MARGIN:
        bot.error("email.max_message_bytes", f"doit dépasser {2 * POSTFIX_SIZE_MARGIN} octets")
    v["MESSAGE_SIZE_LIMIT"] = str(max_message - POSTFIX_SIZE_MARGIN)

    protocol = str(bot_get("email.listen_protocol", str)).lower()
    if protocol not in ("smtp", "lmtp"):
        bot.error("email.listen_protocol", 'attendu : "smtp" ou "lmtp"')
    listen_host = str(bot_get("email.listen_host", str))
    listen_port = int(bot_get("email.listen_port", int))
    if not 0 < listen_port < 65536:
        bot.error("email.listen_port", "la passerelle a besoin d'un port fixe (1 à 65535)")
    listeners: list[str] = val.get("mail.bot_listeners", list, [])
    hops: list[tuple[str, int]] = []
    for item in listeners or [f"{listen_host}:{listen_port}"]:
        hop = _host_port(item)
        if hop is None:
            val.error("mail.bot_listeners", f"« {item} » : attendu adresse:port")
            continue
        hops.append(hop)
    if listeners and hops and hops[0][1] != listen_port:
        val.error(
            "mail.bot_listeners",
            f"la première écoute doit être celle du bot (port {listen_port} de config.toml)",
        )
    # Postfix >= 3.5: a list of next hops, tried in order (the standby when the active
    # bot's port is refused, instead of deferring for minimal_backoff_time). For LMTP only
    # the first one takes "inet:": Postfix 3.7's lmtp(8) dies on "inet:" in a later one
    # ("valid hostname or network address required"), whatever its manual says.
    if protocol == "lmtp":
        v["BOT_TRANSPORT_DAEMON"] = "lmtp"
        v["BOT_NEXTHOPS"] = ", ".join(
            (f"inet:[{h}]:{p}" if i == 0 else f"[{h}]:{p}") for i, (h, p) in enumerate(hops)
        )
    else:
        v["BOT_TRANSPORT_DAEMON"] = "smtp"
        v["BOT_NEXTHOPS"] = ", ".join(f"[{h}]:{p}" for h, p in hops)

    hostname = val.text("mail.hostname", _check_host).lower()
    if hostname and hostname == reply_domain:
        val.error(
            "mail.hostname",
            "doit différer de email.reply_domain (le bot se présente sous ce nom : "
            "Postfix croirait se parler à lui-même)",
        )
    v["MAIL_HOSTNAME"] = hostname
    v["MX_LISTEN"] = val.text("mail.mx_listen", _check_listen)
    v["INET_INTERFACES"] = val.text("mail.inet_interfaces")
    v["INET_PROTOCOLS"] = val.text("mail.inet_protocols")
    submission = val.text("mail.submission_listen", _check_listen)
    v["SUBMISSION_LISTEN"] = submission
    relay_port = int(bot_get("email.relay_port", int))
    sub = _host_port(submission)
    if sub is not None and sub[1] != relay_port:
        val.error(
            "mail.submission_listen",
            f"le port doit être email.relay_port de config.toml ({relay_port})",
        )
    security = str(bot_get("email.relay_security", str)).lower()
    v["SUBMISSION_TLS_LEVEL"] = {"none": "none", "starttls": "encrypt"}.get(security, "none")
    v["SUBMISSION_WRAPPERMODE"] = "yes" if security == "tls" else "no"
    networks: list[str] = val.get("mail.bot_networks", list)
    for net in networks:
        if (message := _check_network(net)) is not None:
            val.error("mail.bot_networks", message)
    if not networks:
        val.error("mail.bot_networks", "au moins le réseau du bot")
    v["BOT_NETWORKS"] = " ".join(networks)
    v["RELAYHOST"] = val.get("mail.relayhost", str, "")
    v["TLS_CERT_FILE"] = val.text("mail.tls_cert_file", _check_abs_path)
    v["TLS_KEY_FILE"] = val.text("mail.tls_key_file", _check_abs_path)
    v["POSTFIX_CONFIG_DIR"] = val.text("mail.config_directory", _check_abs_path)
    v["POSTFIX_QUEUE_DIR"] = val.text("mail.queue_directory", _check_abs_path)
    v["POSTFIX_DATA_DIR"] = val.text("mail.data_directory", _check_abs_path)
    maillog = val.get("mail.maillog_file", str, "")
    if maillog and _check_abs_path(maillog):
        val.error("mail.maillog_file", "doit être vide (syslog) ou un chemin absolu")
    v["MAILLOG_FILE"] = maillog
    v["MAILLOG_FILE_PREFIXES"] = str(Path(maillog).parent) if maillog else "/var, /dev/stdout"

    milter = val.text("rspamd.milter")
    if milter and _host_port(milter) is None:
        val.error("rspamd.milter", "attendu adresse:port")
    v["RSPAMD_MILTER"] = milter
    v["RSPAMD_NORMAL_SOCKET"] = val.text("rspamd.normal_socket")
    v["RSPAMD_CONTROLLER_SOCKET"] = val.text("rspamd.controller_socket")
    nameserver = val.get("rspamd.nameserver", str, "")
    r.flags["rspamd_nameserver"] = bool(nameserver)
    v["RSPAMD_NAMESERVER"] = nameserver


# --------------------------------------------------------------------------- templates


def templates(root: Path = TEMPLATES_DIR) -> Iterator[Path]:
    """Every template under `root`, in a stable order."""
    yield from sorted(p for p in root.rglob("*" + TEMPLATE_SUFFIX) if p.is_file())


def render_text(text: str, rendering: Rendering, name: str = "modèle") -> str:
    """One template's text, rendered; `RenderError` names unknown values and flags."""
    problems: list[tuple[str, str]] = []
    out: list[str] = []
    keep: list[bool] = []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if m := _IF_RE.match(line):
            flag = m.group(1)
            if flag not in rendering.flags:
                problems.append((f"{name}:{number}", f"condition inconnue « {flag} »"))
            keep.append(rendering.flags.get(flag, False))
            continue
        if _ENDIF_RE.match(line):
            if not keep:
                problems.append((f"{name}:{number}", "#@endif sans #@if"))
            else:
                keep.pop()
            continue
        if not all(keep):
            continue

        def value(m: re.Match[str], number: int = number) -> str:
            key = m.group(1)
            if key not in rendering.values:
                problems.append((f"{name}:{number}", f"valeur inconnue « {key} »"))
                return m.group(0)
            return rendering.values[key]

        out.append(_PLACEHOLDER_RE.sub(value, line))
    if keep:
        problems.append((name, "#@if sans #@endif"))
    if problems:
        raise RenderError(problems)
    return "".join(out)


def wanted(path: Path, rendering: Rendering, root: Path = TEMPLATES_DIR) -> bool:
    """The mail gateway's files only when the email bridge is on."""
    top = path.relative_to(root).parts[0]
    return rendering.flags.get("email", False) or top not in ("postfix", "rspamd")


def render_all(rendering: Rendering, out: Path, root: Path = TEMPLATES_DIR) -> list[Path]:
    """Write every wanted template under `out`; returns the files written."""
    written: list[Path] = []
    problems: list[tuple[str, str]] = []
    results: list[tuple[Path, str]] = []
    for template in templates(root):
        if not wanted(template, rendering, root):
            continue
        relative = template.relative_to(root)
        try:
            text = render_text(template.read_text(encoding="utf-8"), rendering, str(relative))
        except RenderError as exc:
            problems += exc.problems
            continue
        results.append((out / str(relative)[: -len(TEMPLATE_SUFFIX)], text))
    if problems:
        raise RenderError(problems)
    for target, text in results:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        target.chmod(0o644)
        written.append(target)
    return written


def load_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RenderError([(str(path), f"{what} introuvable")]) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RenderError([(str(path), f"{what} illisible ({exc})")]) from None


def render_files(config: Path, values: Path, out: Path) -> list[Path]:
    rendering = collect(load_toml(config, "configuration du bot"), load_toml(values, "valeurs"))
    return render_all(rendering, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.render",
        description="Produit les fichiers de configuration (Synapse, Element, Postfix, "
        "rspamd) à partir de config.toml et des valeurs de déploiement.",
    )
    parser.add_argument("--config", required=True, type=Path, help="config.toml du bot")
    parser.add_argument("--values", required=True, type=Path, help="valeurs de déploiement")
    parser.add_argument("--out", required=True, type=Path, help="dossier de sortie")
    args = parser.parse_args(argv)
    try:
        written = render_files(args.config, args.values, args.out)
    except RenderError as exc:
        print(f"Rendu impossible, {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
