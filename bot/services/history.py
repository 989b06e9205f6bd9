"""The earlier exchange of a demande, copied for a participant who joins later.

`DemandeRooms` calls `on_join` in the transaction where it sees the newcomer join
(the same one that marks the join event processed), then `run_pending`: the room's
history is read back from the homeserver (`/messages`, from the newcomer's join
backwards), decrypted with the bot's own keys, and re-posted through
the outbox in parts (`bot.domain.history`), in one transaction that also clears
the pending entry. A crash in between leaves the entry pending: the recovery round
does it again, and the outbox's stable transaction IDs keep it exactly once.

Only for a participant the ledger authorises when the copy is made, once they
joined; only messages of ledger participants (present or past) and of the bot,
never commands, never the dossier (re-posted on its own) nor an earlier copy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from nio import Event, MegolmEvent, RoomMemberEvent

from bot.domain.history import EarlierMessage, FilePart, history_parts
from bot.domain.model import Demande
from bot.matrix import content as mx
from bot.matrix.errors import MatrixError
from bot.matrix.port import Gateway
from bot.ports import PoliciesRef, Sender
from bot.services.clock import Clock
from bot.store.db import Store
from bot.store.repository import Tx

log = logging.getLogger(__name__)

PARIS = ZoneInfo("Europe/Paris")
PAGE = 100
MAX_EVENTS = 5_000  # a bound on what is read back; a demande room holds far fewer
FILE_TYPES = ("m.file", "m.image", "m.video", "m.audio")
BOT_LABEL = "Administration+"
# Answers that only told the asker something (help, status, errors): not copied.
QUESTION_COMMANDS = frozenset({"aide", "statut", "notifications", "confirmer", "annuler", "?"})
HISTORY_FILTER = json.dumps({"types": ["m.room.message", "m.room.encrypted"]})


class HistoryCopies:
    def __init__(
        self,
        *,
        store: Store,
        gateway: Gateway,
        policies: PoliciesRef,
        clock: Clock,
        bot_user_id: str,
        sender: Sender,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.policies = policies
        self.clock = clock
        self.bot_user_id = bot_user_id
        self.sender = sender

    async def on_join(
        self, tx: Tx, demande: Demande, event: RoomMemberEvent, kind: str | None
    ) -> None:
        """In the transaction handling a join: a participant who came after the opening
        (kind « invite ») and was not already in the room gets the copy."""
        if (
            event.membership != "join"
            or event.prev_membership == "join"  # a profile change, not an arrival
            or kind != "invite"
            or demande.creation_step != "ready"
            or demande.room_id is None
        ):
            return
        await self.schedule(tx, demande.room_id, event.state_key, event.event_id)

    async def schedule(self, tx: Tx, room_id: str, user_id: str, join_event_id: str) -> None:
        """Record, in the caller's transaction, that `user_id` needs the copy."""
        await tx.add_history_copy(room_id, user_id, join_event_id, self.clock.now())

    async def run_pending(self) -> None:
        """Make every pending copy; a homeserver outage leaves them for the next round."""
        async with self.store.transaction() as tx:
            pending = [
                {"room_id": room, "user": user, "event_id": join}
                for room, user, join in await tx.history_copies()
            ]
        for item in pending:
            try:
                await self._copy(item)
            except MatrixError as exc:
                if exc.transient:
                    log.warning("history copy postponed, homeserver unavailable: %s", exc)
                    return
                log.warning("history copy for %s abandoned: %s", item["room_id"], exc)
                await self._done(item)

    async def _done(self, item: Mapping[str, str], tx: Tx | None = None) -> None:
        if tx is None:
            async with self.store.transaction() as own:
                await self._done(item, own)
            return
        await tx.history_copy_done(item["room_id"], item["user"])

    async def _copy(self, item: Mapping[str, str]) -> None:
        room_id, user, join_id = item["room_id"], item["user"], item["event_id"]
        events = await self._before_join(room_id, join_id)
        now = self.clock.now()
        async with self.store.transaction() as tx:
            demande = await tx.get_demande_by_room(room_id)
            current = await tx.participants(demande.id) if demande else []
            if demande is None or user not in {p.matrix_id for p in current}:
                await self._done(item, tx)
                return
            everyone = await tx.participants(demande.id, active_only=False)
            senders = {p.matrix_id for p in everyone if p.matrix_id} | {self.bot_user_id}
            messages = self._messages(room_id, events, senders)
            labels = {s: await self._label(tx, s) for s in {m[0] for m in messages} | {user}}
            earlier = [
                EarlierMessage(at=at, author=labels[sender], text=text, file=file)
                for sender, at, text, file in messages
            ]
            parts = history_parts(earlier, newcomer=labels[user])
            for i, part in enumerate(parts):
                if isinstance(part, FilePart):
                    content = dict(part.content)
                    content[mx.APLUS_KEY] = {"history_copy": demande.reference}
                else:
                    content = mx.notice(part.body, part.html, history_copy=demande.reference)
                    content["m.mentions"] = {}
                await self.sender.enqueue(
                    tx, txn_id=f"history-{join_id}-{i}", room_id=room_id, content=content
                )
            await tx.audit(
                "history_copied",
                actor=self.bot_user_id,
                reference=demande.reference,
                details={"for": user, "messages": len(earlier), "parts": len(parts)},
                now=now,
            )
            await self._done(item, tx)
        log.info(
            "demande %s: earlier exchange copied for a newcomer (%d message(s), %d part(s))",
            demande.reference,
            len(earlier),
            len(parts),
        )

    # ------------------------------------------------------------ reading back

    async def _before_join(self, room_id: str, join_id: str) -> list[dict[str, Any]]:
        """The room's events before the join (oldest first), read back from the homeserver.

        Up to the join, not the invitation: a message another participant sent while
        the newcomer was invited but had no session yet (Element opened later) was
        encrypted for none of their devices, and only this copy lets them read it.
        """
        room = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}"
        context = await self.gateway.request(
            "GET", f"{room}/context/{quote(join_id, safe='')}", query={"limit": "0"}
        )
        token = context.get("start")
        newest_first: list[dict[str, Any]] = []
        while isinstance(token, str) and len(newest_first) < MAX_EVENTS:
            page = await self.gateway.request(
                "GET",
                f"{room}/messages",
                query={"dir": "b", "from": token, "limit": str(PAGE), "filter": HISTORY_FILTER},
            )
            chunk = [raw for raw in page.get("chunk") or [] if isinstance(raw, dict)]
            if not chunk:
                break
            newest_first.extend(chunk)
            token = page.get("end")
        return list(reversed(newest_first))

    def _messages(
        self, room_id: str, events: list[dict[str, Any]], senders: set[str]
    ) -> list[tuple[str, datetime, str | None, Mapping[str, Any] | None]]:
        """(sender, time, text, file content) of the messages worth copying, in order."""
        out: list[tuple[str, datetime, str | None, Mapping[str, Any] | None]] = []
        index: dict[str, int] = {}
        for raw in events:
            sender = raw.get("sender")
            if not isinstance(sender, str) or sender not in senders:
                continue
            clear = self._clear(room_id, raw)
            at = _time(raw.get("origin_server_ts"))
            if clear is None:
                if raw.get("type") == "m.room.encrypted":
                    out.append((sender, at, None, None))
                continue
            content = clear.get("content")
            if clear.get("type") != "m.room.message" or not isinstance(content, Mapping):
                continue
            relation = content.get("m.relates_to") or {}
            if isinstance(relation, Mapping) and relation.get("rel_type") == "m.replace":
                original = index.get(str(relation.get("event_id")))
                new = content.get("m.new_content") or {}
                if original is not None and isinstance(new.get("body"), str):
                    s, t, _, f = out[original]
                    if s == sender and f is None:
                        out[original] = (s, t, new["body"], None)
                continue
            marker = content.get(mx.APLUS_KEY) or {}
            if isinstance(marker, Mapping) and (
                "dossier" in marker
                or "history_copy" in marker
                or "unverified_session" in marker
                or marker.get("error")
                or marker.get("reply") in QUESTION_COMMANDS
            ):
                continue
            body = content.get("body")
            if not isinstance(body, str) or not body.strip():
                continue  # redacted, or nothing to show
            if content.get("msgtype") in FILE_TYPES and ("file" in content or "url" in content):
                file = {k: v for k, v in content.items() if k != mx.APLUS_KEY}
                out.append((sender, at, None, file))
            elif sender != self.bot_user_id and body.lstrip().startswith("!"):
                continue  # a command: what it did is in the bot's answer
            else:
                out.append((sender, at, body, None))
            event_id = raw.get("event_id")
            if isinstance(event_id, str):
                index[event_id] = len(out) - 1
        return out

    def _clear(self, room_id: str, raw: dict[str, Any]) -> dict[str, Any] | None:
        if raw.get("type") != "m.room.encrypted":
            return raw
        event = Event.parse_encrypted_event(raw)
        if not isinstance(event, MegolmEvent):
            return None
        clear = self.gateway.try_decrypt(event, room_id)
        source = getattr(clear, "source", None)
        return source if isinstance(source, dict) else None

    async def _label(self, tx: Tx, matrix_id: str) -> str:
        if matrix_id == self.bot_user_id:
            return BOT_LABEL
        agent = await tx.get_agent_by_matrix_id(matrix_id)
        if agent is None:
            return matrix_id
        name = f"{agent.first_name} {agent.last_name}".strip() or matrix_id
        group = await tx.get_group(agent.group_id) if agent.group_id else None
        organisations = self.policies.current.organisations
        organisation = organisations.get(group.organisation_id) if group else None
        return f"{name} ({organisation.name})" if organisation else name


def _time(ts: Any) -> datetime:
    if not isinstance(ts, int):
        return datetime.now(UTC).astimezone(PARIS)
    return datetime.fromtimestamp(ts / 1000, UTC).astimezone(PARIS)
