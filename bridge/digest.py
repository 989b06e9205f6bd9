"""The daily digest: an agent who chose it gets, once a day at their hour (Paris time),
one email per demande with what was held for them since the last one.

What is held (`EmailBridge._hold`) is decided when the email would have been queued:
messages, corrections, colleagues' actions. The dossier, invitations, reminders and the
answers to the agent's own commands are never held. An agent who goes back to « every
message » gets what was held at the next pass; one who left the demande, or was
deactivated, gets nothing more of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import datetime, timedelta

from bot.domain.calendar import PARIS
from bot.services.clock import Clock
from bot.services.worker import Worker
from bot.store.db import Store
from bot.store.email_tx import DigestItem
from bot.store.repository import Tx
from bridge import render
from bridge.outbound import EmailBridge, Recipient

log = logging.getLogger(__name__)


def last_digest_time(now: datetime, hour: int) -> datetime:
    """The latest `hour`:00 (Paris) at or before `now`: items held before it are due."""
    local = now.astimezone(PARIS)
    at = local.replace(hour=hour, minute=0, second=0, microsecond=0)
    if at > local:
        at -= timedelta(days=1)  # wall-clock arithmetic: the same hour across DST changes
    return at


class EmailDigests:
    def __init__(self, *, store: Store, bridge: EmailBridge, clock: Clock) -> None:
        self.store = store
        self.bridge = bridge
        self.clock = clock
        self._lock = asyncio.Lock()
        # Checked every few minutes: the hour is what the agent chose, not to the second.
        self.worker = Worker("email digest", self.send_due, idle_seconds=300.0)

    def wake(self) -> None:
        self.worker.wake()

    async def run(self) -> None:
        await self.worker.run()

    async def send_due(self) -> int:
        """Queue each digest that is due; returns how many were queued."""
        async with self._lock:
            now = self.clock.now()
            sent = 0
            async with self.store.transaction() as tx:
                items = await tx.pending_digest_items()
                if not items:
                    return 0
                hours = await tx.email_digest_hours({i.agent_id for i in items})
                batches: dict[tuple[int, int], list[DigestItem]] = defaultdict(list)
                for item in items:
                    batches[(item.agent_id, item.demande_id)].append(item)
                for (agent_id, demande_id), batch in batches.items():
                    hour = hours.get(agent_id)
                    cutoff = now if hour is None else last_digest_time(now, hour)
                    due = [i for i in batch if i.created_at < cutoff]
                    if not due:
                        continue
                    if await self._send(tx, agent_id, demande_id, due, cutoff):
                        sent += 1
                    await tx.mark_digest_sent([i.id for i in due], now)
            if sent:
                log.info("email digest: %d queued", sent)
            return sent

    async def _send(
        self, tx: Tx, agent_id: int, demande_id: int, due: list[DigestItem], at: datetime
    ) -> bool:
        agent = await tx.get_agent(agent_id)
        demande = await tx.get_demande(demande_id)
        if agent is None or demande is None or not agent.active or not agent.email:
            return False
        if agent_id not in {p.agent_id for p in await tx.participants(demande_id)}:
            return False  # left the demande: nothing more of it
        rendered = render.digest_email([i.body for i in due], reference=demande.reference)
        day = at.astimezone(PARIS).strftime("%Y-%m-%d-%H")
        key = f"digest-{demande.reference}-{agent_id}-{day}-{due[0].id}"
        return await self.bridge.queue(
            tx,
            demande,
            Recipient(agent.email, agent, full=True, replies=True),
            rendered,
            event_key=key,
            kind="digest",
        )
