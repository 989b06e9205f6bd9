"""One small function per section of the file, registered with `@section`: it reads its
keys through a `Table` and returns the section's dataclass. Registration order is parse
order, so a section may use an earlier one (`bot` checks its user ID against
`homeserver`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from bot.domain.lease import timing_problem
from bot.settings.checks import (
    check_data_key,
    check_database_url,
    check_guard_host,
    check_guard_secret,
    check_homeserver_url,
    check_loop_marker,
    check_mail_address,
    check_mail_domain,
    check_pickle_key,
    check_room_id,
    check_room_version,
    check_server_name,
    check_user_id,
    url_has_password,
)
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
    REPO_POLICIES_DIR,
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
)
from bot.settings.table import Table

SectionParser = Callable[["Table"], object]
SECTIONS: dict[str, SectionParser] = {}


def section(name: str) -> Callable[[SectionParser], SectionParser]:
    def register(parse: SectionParser) -> SectionParser:
        SECTIONS[name] = parse
        return parse

    return register


@section("homeserver")
def _parse_homeserver(t: Table) -> HomeserverSettings:
    url = t.text("url", check=check_homeserver_url)
    server_name = t.text("server_name", check=check_server_name)
    return HomeserverSettings(url=url.rstrip("/"), server_name=server_name)


@section("data")
def _parse_data(t: Table) -> DataSettings:
    return DataSettings(dir=t.path("dir", t.loader.config_dir / "data"))


@section("bot")
def _parse_bot(t: Table) -> BotSettings:
    homeserver = t.loader.section(HomeserverSettings)
    data = t.loader.section(DataSettings)
    user_id = t.text("user_id", check=check_user_id)
    server_name_ok = not t.loader.has_problem("homeserver.server_name")
    if not t.has_problem("user_id") and server_name_ok:
        server = user_id.split(":", 1)[1]
        if server != homeserver.server_name:
            t.error(
                "user_id",
                f"le serveur de l'identifiant ({server}) doit être homeserver.server_name "
                f"({homeserver.server_name})",
            )
    password = t.secret("password", ENV_BOT_PASSWORD, required=True)
    access_token = t.secret("access_token", ENV_BOT_ACCESS_TOKEN, required=False)
    return BotSettings(
        user_id=user_id,
        device_name=t.text("device_name", "Administration+"),
        store_dir=t.path("store_dir", data.dir / "nio-store"),
        room_version=t.text("room_version", "12", check=check_room_version),
        require_cross_signed_devices=t.boolean("require_cross_signed_devices", True),
        max_attachment_bytes=t.integer(
            "max_attachment_bytes", DEFAULT_MAX_ATTACHMENT_BYTES, minimum=1
        ),
        undecryptable_notice_after_seconds=t.integer(
            "undecryptable_notice_after_seconds", 300, minimum=1
        ),
        password=password or Secret(""),
        access_token=access_token,
        event_retry_attempts=t.integer("event_retry_attempts", 8, minimum=1),
        event_retry_base_seconds=t.integer("event_retry_base_seconds", 30, minimum=1),
        room_concurrency=t.integer("room_concurrency", 8, minimum=1),
        client_url=_client_url(t),
    )


def _client_url(t: Table) -> str | None:
    value = t.optional_text("client_url")
    if value is None:
        return None
    if not value.startswith("https://"):
        t.error(
            "client_url", "doit commencer par https:// (par ex. https://element.example/#/room/)"
        )
        return None
    return value


@section("database")
def _parse_database(t: Table) -> DatabaseSettings:
    data = t.loader.section(DataSettings)
    from_secret = t.secret("url", ENV_DATABASE_URL, required=False, inline_forbidden=False)
    inline = t.optional_text("url")
    if inline is not None and t.has_key("url_file"):
        t.error("url", "indiquez url ou url_file, pas les deux")
    if from_secret is not None:
        value = from_secret.reveal()
    elif inline is not None:
        value = inline
        if url_has_password(inline):
            t.error(
                "url",
                "contient un mot de passe : mettez l'URL complète dans database.url_file "
                f"ou la variable d'environnement {ENV_DATABASE_URL}",
            )
    else:
        value = f"sqlite+aiosqlite:///{data.dir / 'aplus.db'}"
    if not t.has_problem("url") and (message := check_database_url(value)) is not None:
        t.error("url", message)
    return DatabaseSettings(url=Secret(value))


@section("policies")
def _parse_policies(t: Table) -> PoliciesSettings:
    directory = t.path("dir", REPO_POLICIES_DIR)
    if not t.has_problem("dir") and not directory.is_dir():
        t.error("dir", f"dossier introuvable : {directory}")
    return PoliciesSettings(dir=directory)


@section("logging")
def _parse_logging(t: Table) -> LoggingSettings:
    return LoggingSettings(
        level=t.choice("level", LOG_LEVELS, "INFO"),
        json=t.boolean("json", False),
    )


@section("secrets")
def _parse_secrets(t: Table) -> SecretsSettings:
    pickle_key = t.secret("pickle_key", ENV_PICKLE_KEY, required=True, check=check_pickle_key)
    data_key = t.secret("data_key", ENV_DATA_KEY, required=True, check=check_data_key)
    return SecretsSettings(
        pickle_key=pickle_key or Secret(""),
        data_key=data_key or Secret(""),
    )


@section("email")
def _parse_email(t: Table) -> EmailSettings:
    enabled = t.boolean("enabled", False)

    def needed(key: str, check: Callable[[str], str | None]) -> str:
        # Required only when the bridge is on; always checked when given.
        return (
            t.text(key, None if enabled else "", check=check) if enabled or t.has_key(key) else ""
        )

    from_address = needed("from_address", check_mail_address)
    reply_domain = needed("reply_domain", check_mail_domain)
    relay_host = needed("relay_host", check_server_name)
    security = t.choice("relay_security", ("NONE", "STARTTLS", "TLS"), "STARTTLS").lower()
    username = t.optional_text("relay_username")
    password = t.secret("relay_password", ENV_SMTP_PASSWORD, required=False)
    if username and password is None and not t.has_problem("relay_password"):
        t.error(
            "relay_password",
            f"relay_username est donné : indiquez relay_password_file ou {ENV_SMTP_PASSWORD}",
        )
    dkim_domain = t.optional_text("dkim_domain")
    dkim_selector = t.optional_text("dkim_selector")
    dkim_key = t.secret("dkim_private_key", ENV_DKIM_PRIVATE_KEY, required=False)
    if (dkim_domain is None) != (dkim_selector is None) or (dkim_domain and dkim_key is None):
        t.error(
            "dkim_domain", "la signature DKIM demande dkim_domain, dkim_selector et la clé privée"
        )
    protocol = t.choice("listen_protocol", ("SMTP", "LMTP"), "SMTP").lower()
    return EmailSettings(
        enabled=enabled,
        from_address=from_address.lower(),
        from_name=t.text("from_name", "Administration+"),
        reply_domain=reply_domain.lower(),
        loop_marker=t.text("loop_marker", "aplus", check=check_loop_marker),
        relay_host=relay_host,
        relay_port=t.integer("relay_port", 587, minimum=1),
        relay_security=security,
        relay_username=username,
        relay_password=password,
        relay_timeout_seconds=t.integer("relay_timeout_seconds", 60, minimum=1),
        delivery_lifetime_seconds=t.integer("delivery_lifetime_seconds", 5 * 86400, minimum=1),
        retry_initial_seconds=t.integer("retry_initial_seconds", 60, minimum=1),
        retry_max_seconds=t.integer("retry_max_seconds", 3600, minimum=1),
        max_outbound_attachment_bytes=t.integer(
            "max_outbound_attachment_bytes", DEFAULT_MAX_ATTACHMENT_BYTES, minimum=0
        ),
        dkim_domain=dkim_domain,
        dkim_selector=dkim_selector,
        dkim_private_key=dkim_key,
        listen_host=t.text("listen_host", "127.0.0.1"),
        listen_port=t.integer("listen_port", 2525, minimum=0),
        listen_protocol=protocol,
        listen_allowed_peers=_allowed_peers(t),
        listen_max_connections=t.integer("listen_max_connections", 20, minimum=1),
        listen_idle_timeout_seconds=t.integer("listen_idle_timeout_seconds", 60, minimum=5),
        max_message_bytes=t.integer("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES, minimum=1024),
        max_inbound_attachment_bytes=t.integer(
            "max_inbound_attachment_bytes", DEFAULT_MAX_ATTACHMENT_BYTES, minimum=1
        ),
        allowed_attachment_types=tuple(
            v.lower()
            for v in t.strings("allowed_attachment_types", DEFAULT_ALLOWED_ATTACHMENT_TYPES)
        ),
        trusted_authserv_ids=t.strings("trusted_authserv_ids", ()),
        dkim_verify=t.boolean("dkim_verify", False),
    )


def _allowed_peers(t: Table) -> tuple[str, ...]:
    """``listen_allowed_peers``: addresses or networks (``10.0.0.5``, ``192.0.2.0/28``)."""
    peers = t.strings("listen_allowed_peers", DEFAULT_ALLOWED_PEERS)
    wrong = []
    for peer in peers:
        try:
            ipaddress.ip_network(peer, strict=False)
        except ValueError:
            wrong.append(peer)
    if wrong:
        t.error(
            "listen_allowed_peers",
            f"adresse ou réseau IP invalide : {', '.join(wrong[:3])} "
            "(ex. : 10.0.0.5, 192.0.2.0/28)",
        )
        return DEFAULT_ALLOWED_PEERS
    return peers


def _hour(t: Table, key: str, default: int) -> int:
    value = t.integer(key, default, minimum=0)
    if value > 23:
        t.error(key, "doit être une heure entre 0 et 23 (heure de Paris)")
        return default
    return value


@section("admin")
def _parse_admin(t: Table) -> AdminSettings:
    room_id = t.optional_text("room_id")
    if room_id is not None and (message := check_room_id(room_id)) is not None:
        t.error("room_id", message)
    weekday = t.integer("digest_weekday", 1, minimum=1)
    if weekday > 7:
        t.error("digest_weekday", "doit être entre 1 (lundi) et 7 (dimanche)")
        weekday = 1
    return AdminSettings(
        room_id=room_id,
        room_name=t.text("room_name", "Administration+ · exploitation"),
        synapse_admin_token=t.secret(
            "synapse_admin_token", ENV_SYNAPSE_ADMIN_TOKEN, required=False
        ),
        confirmation_minutes=t.integer("confirmation_minutes", 10, minimum=1),
        jobs_enabled=t.boolean("jobs_enabled", True),
        late_first_answer_business_days=t.integer("late_first_answer_business_days", 3, minimum=1),
        late_followup_business_days=t.integer("late_followup_business_days", 15, minimum=1),
        digest_after_days=t.integer("digest_after_days", 10, minimum=1),
        digest_weekday=weekday,
        digest_hour=_hour(t, "digest_hour", 8),
        followup_hour=_hour(t, "followup_hour", 9),
        retention_hour=_hour(t, "retention_hour", 3),
        retention_usager_months=t.integer("retention_usager_months", 6, minimum=1),
        retention_attachment_days=t.integer("retention_attachment_days", 15, minimum=1),
        retention_draft_days=t.integer("retention_draft_days", 30, minimum=1),
        retention_audit_days=t.integer("retention_audit_days", 365, minimum=1),
    )


@section("health")
def _parse_health(t: Table) -> HealthSettings:
    port = t.integer("port", 9180, minimum=0)
    if port > 65535:
        t.error("port", "doit être un port entre 0 et 65535")
        port = 9180
    return HealthSettings(
        enabled=t.boolean("enabled", True),
        host=t.text("host", "127.0.0.1"),
        port=port,
    )


@section("guard")
def _parse_guard(t: Table) -> GuardSettings:
    enabled = t.boolean("enabled", False)
    port = t.integer("port", 9181, minimum=0)
    if port > 65535:
        t.error("port", "doit être un port entre 0 et 65535")
        port = 9181
    secret = t.secret("shared_secret", ENV_GUARD_SECRET, required=enabled, check=check_guard_secret)
    return GuardSettings(
        enabled=enabled,
        host=t.text("host", "127.0.0.1", check=check_guard_host),
        port=port,
        shared_secret=secret,
    )


@section("ha")
def _parse_ha(t: Table) -> HaSettings:
    database = t.loader.section(DatabaseSettings)
    enabled = t.boolean("enabled", False)
    renew = t.integer("renew_seconds", 1, minimum=1)
    ttl = t.integer("ttl_seconds", 5, minimum=1)
    if enabled and database.is_sqlite:
        t.error(
            "enabled",
            "deux bots (un actif, un en attente) demandent une base PostgreSQL "
            "(database.url) : une base SQLite ne se partage pas entre deux processus",
        )
    problem = None if t.has_problem("ttl_seconds") else timing_problem(renew, ttl)
    if problem is not None and not t.has_problem("renew_seconds"):
        t.error("renew_seconds", problem)
    return HaSettings(enabled=enabled, renew_seconds=renew, ttl_seconds=ttl)


@section("onboarding")
def _parse_onboarding(t: Table) -> OnboardingSettings:
    return OnboardingSettings(
        account_link_seconds=t.integer("account_link_seconds", 60, minimum=5),
        inactivity_months=t.integer("inactivity_months", 5, minimum=0),
        inactivity_email_only_bal=t.boolean("inactivity_email_only_bal", False),
    )
