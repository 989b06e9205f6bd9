"""A second real Synapse, with the homeserver guard loaded, for the guard's tests.

The guard's configuration names one bot account and fixed endpoint URLs, so it cannot
share the session's Synapse (where every test has its own bot). This homeserver is
started once, and only when a test asks for it (the `guarded` fixture of
tests/conftest.py); its bot account and both endpoint ports are chosen before Synapse
starts. Each guard test runs the real bot on that account with the same data folder
(same device, same cross-signing identity): a start after another test is a restart.
Tests keep apart by their own agents and their own territoire (`next_territoire`).

`primary_port` is the bot's endpoint; `standby_port` is listed second in the module's
`api_urls`, with nothing listening unless a test starts a standby there.
"""

from __future__ import annotations

import base64
import itertools
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from bot.devserver import (
    LocalSynapse,
    RegisteredUser,
    ensure_guard_secret,
    free_port,
    guard_module,
)
from bot.policy_loader import load_policies
from bot.settings import REPO_POLICIES_DIR
from tests.support import bot as botsupport
from tests.support import matrix

GUARD_TIMEOUT_S = 2.0

# One territoire per test: the bot's database is shared, and routing goes by territoire.
_TERRITOIRES = itertools.cycle(sorted(load_policies(REPO_POLICIES_DIR).departements))


def next_territoire() -> str:
    return next(_TERRITOIRES)


@dataclass
class GuardedHomeserver:
    synapse: LocalSynapse
    bot_localpart: str
    bot_password: str
    secret_path: Path
    primary_port: int
    standby_port: int
    bot_dir: Path
    bot_secrets: dict[str, str] = field(repr=False)
    # The bot's database, kept for the session like its data folder; None: SQLite there.
    database_url: str | None = None
    bot: RegisteredUser | None = None

    @property
    def bot_user_id(self) -> str:
        return f"@{self.bot_localpart}:{self.synapse.server_name}"

    def runner(self) -> botsupport.BotRunner:
        """The real bot on the guard's account and data folder, its endpoint on
        `primary_port` (not started)."""
        assert self.bot is not None
        return botsupport.BotRunner(
            self.synapse,
            self.bot_dir,
            self.bot,
            self.bot_password,
            database_url=self.database_url,
            secrets=dict(self.bot_secrets),
            guard={"port": self.primary_port, "shared_secret_file": str(self.secret_path)},
        )


def prepare(root: Path, *, database_url: str | None = None) -> GuardedHomeserver:
    """Everything chosen before Synapse starts: the bot's account name, ports, secret."""
    localpart = matrix.unique("guardbot")
    secret = ensure_guard_secret(root / "guard_shared_secret")
    primary, standby = free_port(), free_port()
    while standby == primary:
        standby = free_port()
    synapse = LocalSynapse(
        root / "synapse",
        fast_hashing=True,
        modules=[
            guard_module(
                bot_user_id=f"@{localpart}:localhost",
                api_urls=[f"http://127.0.0.1:{primary}", f"http://127.0.0.1:{standby}"],
                shared_secret_path=secret,
                timeout_seconds=GUARD_TIMEOUT_S,
            )
        ],
    )
    return GuardedHomeserver(
        synapse=synapse,
        bot_localpart=localpart,
        bot_password=secrets.token_urlsafe(16),
        secret_path=secret,
        primary_port=primary,
        standby_port=standby,
        bot_dir=root / "bot",
        database_url=database_url,
        bot_secrets={
            "APLUS_PICKLE_KEY": secrets.token_urlsafe(24),
            "APLUS_DATA_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        },
    )


async def start(env: GuardedHomeserver) -> None:
    """Start Synapse and register the bot (an ordinary account: never a server admin)."""
    await env.synapse.start()
    user = await env.synapse.register(env.bot_localpart, env.bot_password)
    assert user.user_id == env.bot_user_id
    # Registration leaves a device; the bot makes its own, for life.
    resp = await env.synapse.admin_request(
        "POST", "/_matrix/client/v3/logout", user.access_token, json={}
    )
    assert resp.ok, resp
    env.bot = user
    env.bot_secrets["APLUS_BOT_PASSWORD"] = env.bot_password
