"""The retention job: carry out `bot.domain.retention.plan`, audit every step.

Order matters, so that a crash or a homeserver outage never leaves personal
data behind a "done":

1. in one transaction, the demande's sealed data is overwritten (demande,
   draft, outbox copies, email copies), the wipe is audited and the room is
   recorded as "to purge";
2. then the homeserver purges the room (every member kicked, every event
   deleted) and the media it held; the aidant's direct chat with the bot is
   purged up to the form's confirmation. A room still to purge (no admin
   token, homeserver down) is retried on the next run.

Attachments are known from the `attachment_posted` audit entries (recorded
when the bot sees a file in a demande room): the homeserver cannot list the
media of an encrypted room by itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bot.domain.retention import (
    RetainedAttachment,
    RetainedDemande,
    RetentionPlan,
    RetentionReport,
    RetentionRules,
    may_delete_media,
    plan,
)
from bot.matrix.errors import MatrixError
from bot.services.clock import Clock
from bot.services.synapse_admin import NoAdminToken, SynapseAdmin
from bot.store.db import Store
from bot.store.repository import Tx

log = logging.getLogger(__name__)

ROOMS_TO_PURGE_KEY = "retention.rooms_to_purge"
ATTACHMENT_POSTED = "attachment_posted"
ATTACHMENT_DELETED = "attachment_deleted"


class Retention:
    def __init__(
        self,
        *,
        store: Store,
        synapse: SynapseAdmin,
        clock: Clock,
        rules: RetentionRules,
        bot_user_id: str,
    ) -> None:
        self.store = store
        self.synapse = synapse
        self.clock = clock
        self.rules = rules
        self.bot_user_id = bot_user_id

    @property
    def purge_configured(self) -> bool:
        """Whether the homeserver may be asked to purge rooms and media (admin token)."""
        return self.synapse.configured

    # ------------------------------------------------------------ attachments seen
    async def record_attachment(
        self,
        *,
        reference: str,
        room_id: str,
        event_id: str,
        sender: str,
        content: Mapping[str, Any],
    ) -> None:
        """Called for every file posted in a demande room: kept in mind for its deletion
        only when a participant (or the bot) posted it, encrypted. An unencrypted `url`
        or a file posted by someone outside the ledger names nothing the job may delete."""
        file = content.get("file") if isinstance(content.get("file"), Mapping) else None
        mxc = (file or {}).get("url")
        if not isinstance(mxc, str) or not mxc.startswith("mxc://"):
            return
        now = self.clock.now()
        async with self.store.transaction() as tx:
            demande = await tx.get_demande_by_reference(reference)
            participants = (
                {p.matrix_id for p in await tx.participants(demande.id)} if demande else set()
            )
            if sender != self.bot_user_id and sender not in participants:
                return  # the guard deals with whoever posted it
            if not await tx.mark_processed(f"attachment:{event_id}", room_id, now):
                return
            await tx.audit(
                ATTACHMENT_POSTED,
                actor="bot",
                reference=reference,
                details={"event_id": event_id, "room_id": room_id, "mxc": mxc, "sender": sender},
                now=now,
            )

    # ------------------------------------------------------------ the plan
    async def plan(self) -> RetentionPlan:
        now = self.clock.now()
        async with self.store.transaction() as tx:
            wiped = await tx.wiped_demande_ids()
            demandes = [
                RetainedDemande(d.reference, d.status, d.times.closed_at, d.room_id, d.id in wiped)
                for d in await tx.list_demandes()
            ]
            deleted = {
                str(details.get("event_id"))
                for _, _, details in await tx.audit_details(ATTACHMENT_DELETED)
            }
            files = [
                RetainedAttachment(
                    reference=ref or "",
                    room_id=str(details.get("room_id")),
                    event_id=str(details.get("event_id")),
                    mxc=str(details.get("mxc")),
                    posted_at=at,
                    sender=details.get("sender"),
                )
                for ref, at, details in await tx.audit_details(ATTACHMENT_POSTED)
                if str(details.get("event_id")) not in deleted
            ]
        return plan(demandes, files, now, self.rules)

    async def rooms_waiting(self) -> list[str]:
        async with self.store.transaction() as tx:
            return list(json.loads(await tx.get_state(ROOMS_TO_PURGE_KEY) or "[]"))

    # ------------------------------------------------------------ carrying it out
    async def run(self, *, actor: str) -> RetentionReport:
        p = await self.plan()
        report = RetentionReport()
        now = self.clock.now()
        for d in p.wipe:
            async with self.store.transaction() as tx:
                demande = await tx.get_demande_by_reference(d.reference)
                assert demande is not None
                draft = None
                if demande.draft_id is not None:
                    draft = await self._draft_room(tx, demande.draft_id)
                result = await tx.wipe_demande(demande.id, now=now)
                # The bot's session keys of the room would decrypt its purged messages.
                room_keys = await tx.forget_room_keys(demande.room_id) if demande.room_id else 0
                # The instructeurs' companion room goes with the demande's (same retention).
                companion = await tx.companion_room(demande.id)
                if companion:
                    room_keys += await tx.forget_room_keys(companion)
                await tx.audit(
                    "usager_data_wiped",
                    actor=actor,
                    reference=d.reference,
                    details={
                        "closed_at": d.closed_at.isoformat() if d.closed_at else None,
                        "drafts": result.drafts,
                        "outbox_messages": result.outbox_messages,
                        "emails": result.emails,
                        "room_keys": room_keys,
                    },
                    now=now,
                )
                waiting = json.loads(await tx.get_state(ROOMS_TO_PURGE_KEY) or "[]")
                entry = {"reference": d.reference, "room_id": d.room_id, "dm": draft}
                if companion:
                    entry["companion"] = companion
                if entry not in waiting:
                    waiting.append(entry)
                await tx.set_state(ROOMS_TO_PURGE_KEY, json.dumps(waiting))
            report.wiped.append(d.reference)
        deleted, waiting_files, problems = await self._delete_attachments(p, actor, now)
        report.attachments_deleted += deleted
        report.attachments_waiting += waiting_files
        report.problems.extend(problems)
        purged, waiting_rooms = await self._purge_rooms(actor, now)
        report.rooms_purged.extend(purged)
        report.rooms_waiting.extend(waiting_rooms)
        async with self.store.transaction() as tx:
            report.drafts_wiped = await tx.wipe_stale_drafts(p.drafts_before, now=now)
            # The same delay for a demande still in preparation, and the files sent with it.
            report.drafts_wiped += await tx.wipe_stale_draft_inputs(p.drafts_before)
            report.outbox_blanked = await tx.blank_sent_outbox(p.drafts_before, now=now)
            report.audit_purged = await tx.purge_audit_before(p.audit_before)
            await tx.audit(
                "retention_run",
                actor=actor,
                details={
                    "wiped": report.wiped,
                    "rooms_purged": len(report.rooms_purged),
                    "rooms_waiting": len(report.rooms_waiting),
                    "attachments_deleted": report.attachments_deleted,
                    "drafts_wiped": report.drafts_wiped,
                    "outbox_blanked": report.outbox_blanked,
                    "audit_purged": report.audit_purged,
                    "audit_before": p.audit_before.isoformat(),
                },
                now=now,
            )
        return report

    async def _draft_room(self, tx: Tx, draft_id: int) -> dict[str, Any] | None:
        """The direct chat where the form was typed, and when it was confirmed."""
        found = await tx.draft_room(draft_id)
        if found is None:
            return None
        room_id, confirmed_at = found
        return {"room_id": room_id, "until_ms": int(confirmed_at.timestamp() * 1000) + 1}

    async def _delete_attachments(
        self, p: RetentionPlan, actor: str, now: datetime
    ) -> tuple[int, int, list[str]]:
        """(deleted, waiting, problems) of the attachments the plan says are due."""
        deleted = waiting = 0
        problems: list[str] = []
        for a in p.attachments:
            try:
                why = await self._keep_reason(a)
                if why is not None:
                    await self._kept(a, why, actor, now)
                    continue
                await self.synapse.delete_media(a.mxc)
            except NoAdminToken:
                waiting += 1
                continue
            except MatrixError as exc:
                if exc.transient:
                    waiting += 1
                    continue
                problems.append(f"pièce jointe {a.event_id} : {exc.errcode or exc.status}")
                continue
            async with self.store.transaction() as tx:
                await tx.audit(
                    ATTACHMENT_DELETED,
                    actor=actor,
                    reference=a.reference,
                    details={"event_id": a.event_id, "mxc": a.mxc},
                    now=now,
                )
            deleted += 1
        return deleted, waiting, problems

    async def _keep_reason(self, a: RetainedAttachment) -> str | None:
        """Why this attachment's media must stay (another user's, another demande's)."""
        uploader = await self.synapse.media_uploader(a.mxc)
        async with self.store.transaction() as tx:
            demande = await tx.get_demande_by_reference(a.reference)
            participants = (
                [p.matrix_id or "" for p in await tx.participants(demande.id, active_only=False)]
                if demande
                else []
            )
            elsewhere = [
                ref
                for ref, _, details in await tx.audit_details(ATTACHMENT_POSTED)
                if details.get("mxc") == a.mxc and ref not in (None, a.reference)
            ]
        return may_delete_media(
            uploader=uploader,
            bot_user_id=self.bot_user_id,
            participants=participants,
            other_references=elsewhere,
        )

    async def _kept(self, a: RetainedAttachment, why: str, actor: str, now: datetime) -> None:
        """Recorded once as deleted for the plan, with why nothing was deleted."""
        async with self.store.transaction() as tx:
            await tx.audit(
                ATTACHMENT_DELETED,
                actor=actor,
                reference=a.reference,
                details={"event_id": a.event_id, "mxc": a.mxc, "kept": why},
                now=now,
            )
        log.warning(
            "retention: media of %s kept (%s): not the demande's to delete", a.event_id, why
        )

    async def _purge_rooms(self, actor: str, now: datetime) -> tuple[list[str], list[str]]:
        """(purged, still waiting) references of the rooms recorded as to purge."""
        async with self.store.transaction() as tx:
            waiting = json.loads(await tx.get_state(ROOMS_TO_PURGE_KEY) or "[]")
        purged: list[str] = []
        postponed: list[str] = []
        done = []
        for entry in waiting:
            reference, room_id, dm = entry["reference"], entry.get("room_id"), entry.get("dm")
            try:
                if room_id:
                    await self.synapse.delete_room(room_id)
                if entry.get("companion"):
                    await self.synapse.delete_room(entry["companion"])
                if dm:
                    await self.synapse.purge_history(dm["room_id"], dm["until_ms"])
            except NoAdminToken:
                postponed.append(reference)
                continue
            except MatrixError as exc:
                log.warning("retention: purge of %s postponed: %s", reference, exc)
                postponed.append(reference)
                continue
            async with self.store.transaction() as tx:
                await tx.audit(
                    "room_purged",
                    actor=actor,
                    reference=reference,
                    details={"room_id": room_id, "direct_chat_purged": bool(dm)},
                    now=now,
                )
            purged.append(reference)
            done.append(entry)
        if done:
            async with self.store.transaction() as tx:
                current = json.loads(await tx.get_state(ROOMS_TO_PURGE_KEY) or "[]")
                await tx.set_state(
                    ROOMS_TO_PURGE_KEY, json.dumps([e for e in current if e not in done])
                )
        return purged, postponed
