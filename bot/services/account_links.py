"""Linking the Matrix accounts made at the agents' first sign-in (ProConnect) to the
directory.

In production the homeserver creates an account at an agent's first SSO login, with
the email ProConnect vouches for as a verified third-party ID (the production issue's
Synapse configuration). Accounts are reconciled by that email, never by the SSO
subject (ProConnect's `sub` differs per service and identity provider). Every
`account_link_seconds`, the accounts created since the last look are read through the
Synapse admin API (admin token); one whose verified email is an email-only agent's is
linked (`DirectoryAdmin.link_account`). The position is kept in `bot_state`. An agent
added after their first sign-in is linked when added (`DirectoryAdmin` asks the admin
API for the account of their email).
"""

from __future__ import annotations

import asyncio
import logging

from bot.matrix.errors import MatrixError
from bot.services.directory_admin import DirectoryAdmin
from bot.services.failures import homeserver_outage
from bot.services.synapse_admin import SynapseAdmin
from bot.store.db import Store

log = logging.getLogger(__name__)

CURSOR_KEY = "accounts.linked_until_ms"
ACTOR = "job:account-links"


class AccountLinks:
    def __init__(
        self,
        *,
        store: Store,
        synapse: SynapseAdmin,
        directory: DirectoryAdmin,
        bot_user_id: str,
        every_seconds: float,
    ) -> None:
        self.store = store
        self.synapse = synapse
        self.directory = directory
        self.bot_user_id = bot_user_id
        self.every_seconds = every_seconds

    async def run_once(self) -> int:
        """Look at the accounts created since the last look; returns how many were linked."""
        async with self.store.transaction() as tx:
            raw = await tx.get_state(CURSOR_KEY)
        since = int(raw) if raw else 0
        linked = 0
        for user_id, created in await self.synapse.new_users(since):
            if user_id != self.bot_user_id:
                for email in await self.synapse.verified_emails(user_id):
                    async with self.store.transaction() as tx:
                        agent = await tx.get_agent_by_email(email)
                    if agent is not None and agent.active and agent.email_only:
                        await self.directory.link_account(email, user_id, actor=ACTOR)
                        linked += 1
                        break
            # Moved after each account, so that a stop resumes where it was.
            async with self.store.transaction() as tx:
                await tx.set_state(CURSOR_KEY, str(created))
        return linked

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except MatrixError as exc:
                level = logging.INFO if homeserver_outage(exc) else logging.WARNING
                log.log(level, "account links: %s %s", exc.status, exc.errcode)
            except Exception:
                log.exception("account links failed; next look in %s s", self.every_seconds)
            await asyncio.sleep(self.every_seconds)
