"""Linking the Matrix accounts made at the agents' first sign-in (ProConnect) to the
directory.

In production the homeserver creates an account at an agent's first SSO login, with
the email ProConnect vouches for as a verified third-party ID (the production issue's
Synapse configuration). Accounts are reconciled by that email, never by the SSO
subject (ProConnect's `sub` differs per service and identity provider). Every
`account_link_seconds`, the accounts created since the last look are read through the
Synapse admin API (admin token); one whose verified email is an email-only agent's is
linked (`DirectoryAdmin.link_account`). The position is kept in `bot_state`. The first
look (no position yet) asks instead for the account of each email-only agent's email,
once, rather than reading every account of the homeserver. An agent added after their
first sign-in is linked when added (`DirectoryAdmin` asks the admin API the same way).
"""

from __future__ import annotations

import asyncio
import logging

from bot.matrix.errors import MatrixError
from bot.services.directory_admin import DirectoryAdmin
from bot.services.failures import homeserver_outage, stop_if_requested
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
        if raw is None:
            return await self._first_look()
        since = int(raw)
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

    async def _first_look(self) -> int:
        newest = await self.synapse.newest_user_ms()  # taken first: none is missed
        async with self.store.transaction() as tx:
            emails = [a.email for a in await tx.list_agents() if a.email_only and a.email]
        linked = 0
        for email in emails:
            user_id = await self.synapse.user_by_email(email)
            if user_id is not None and user_id != self.bot_user_id:
                await self.directory.link_account(email, user_id, actor=ACTOR)
                linked += 1
        async with self.store.transaction() as tx:
            await tx.set_state(CURSOR_KEY, str(newest))
        return linked

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except MatrixError as exc:
                level = logging.INFO if homeserver_outage(exc) else logging.WARNING
                log.log(level, "account links: %s %s", exc.status, exc.errcode)
            except Exception as exc:
                stop_if_requested(exc)  # a failed cleanup after the stop: the stop goes on
                log.exception("account links failed; next look in %s s", self.every_seconds)
            await asyncio.sleep(self.every_seconds)
