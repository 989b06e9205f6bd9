"""The admin room: where operators run the service, and nobody else.

The room is encrypted and invite-only; the bot creates it (or is given its ID
in the settings) and keeps its membership equal to the directory's active
operators: missing operators are invited, anyone else is removed. Every
message is checked again against the directory: a command from a
non-operator, or an admin command typed in any other room, is refused,
audited, and changes nothing.

Answers are encrypted for the operators only (the ledger of this room is the
directory), queued in the outbox like every other bot message. Files (a chart,
an export) are uploaded encrypted first.

Two parts: `AdminRoom` is the room itself (built early: other services post alerts in
it and follow its operators); `AdminConsole` takes the operators' messages and runs
their commands (built last, with the context factory the composition root gives it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from nio import MegolmEvent, RoomMemberEvent, RoomMessageText

from bot.commands.framework import (
    CommandFailed,
    CommandSet,
    NotACommand,
    ParseFailure,
    PendingConfirmation,
    Reply,
    failure_reply,
)
from bot.domain import membership as rules
from bot.domain.model import Role
from bot.domain.scope import REFUSED_NATIONAL_ONLY, OperatorScope, OutOfScope
from bot.matrix import attachments as files
from bot.matrix import content as mx
from bot.matrix.errors import MatrixError
from bot.matrix.port import Gateway
from bot.ports import ReceivedFile, Sender
from bot.services.clock import Clock
from bot.store.db import Store
from bot.store.repository import Tx

log = logging.getLogger(__name__)

ADMIN_ROOM_KEY = "admin.room_id"
ADMIN_STATE_TYPE = "fr.aplus.admin"
REFUSED_NOT_OPERATOR = (
    "Commande refusée : le salon d'administration est réservé aux opérateurs de l'annuaire."
)
REFUSED_WRONG_ROOM = (
    "Commande refusée : les commandes d'administration ne s'utilisent que dans le salon "
    "d'administration."
)
REASON_NOT_OPERATOR = "Salon réservé aux opérateurs du service."
FILE_MSGTYPES = ("m.file", "m.image")


# (operator, event ID, their last file, their scope) → the commands' context
CtxFactory = Callable[[str, str, "ReceivedFile | None", OperatorScope], Awaitable[Any]]


def admin_room_body(name: str, operators: list[str], room_version: str) -> dict[str, Any]:
    """An encrypted, invite-only room where only the bot (its creator) changes anything."""
    return {
        "name": name,
        "preset": "private_chat",
        "visibility": "private",
        "invite": operators,
        "room_version": room_version,
        "initial_state": [
            {
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            },
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "invite"}},
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "invited"},
            },
            {
                "type": "m.room.guest_access",
                "state_key": "",
                "content": {"guest_access": "forbidden"},
            },
            {"type": ADMIN_STATE_TYPE, "state_key": "", "content": {"version": 1}},
        ],
        "power_level_content_override": {
            "users_default": 0,
            "events_default": 0,
            "state_default": 100,
            "invite": 100,
            "kick": 100,
            "ban": 100,
            "redact": 100,
            "events": {},
        },
    }


class AdminRoom:
    def __init__(
        self,
        *,
        store: Store,
        gateway: Gateway,
        sender: Sender,
        clock: Clock,
        bot_user_id: str,
        configured_room_id: str | None,
        room_name: str,
        room_version: str,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.sender = sender
        self.clock = clock
        self.bot_user_id = bot_user_id
        self.configured_room_id = configured_room_id
        self.room_name = room_name
        self.room_version = room_version
        self.room_id: str | None = configured_room_id

    # ------------------------------------------------------------------ the room
    def is_admin_room(self, room_id: str) -> bool:
        return self.room_id is not None and room_id == self.room_id

    async def ensure(self) -> str:
        """The admin room's ID: the configured one, the one created earlier, or a new one."""
        if self.room_id is None:
            async with self.store.transaction() as tx:
                self.room_id = await tx.get_state(ADMIN_ROOM_KEY)
        if self.room_id is None:
            async with self.store.transaction() as tx:
                operators = await tx.operators()
            room_id = await self.gateway.create_room(
                admin_room_body(self.room_name, operators, self.room_version)
            )
            self.gateway.track_new_room(room_id, invited=operators)
            async with self.store.transaction() as tx:
                await tx.set_state(ADMIN_ROOM_KEY, room_id)
                await tx.audit(
                    "admin_room_created",
                    actor=self.bot_user_id,
                    details={"room_id": room_id, "operators": len(operators)},
                    now=self.clock.now(),
                )
            self.room_id = room_id
            log.info("admin room %s created, %d operator(s) invited", room_id, len(operators))
        else:
            members = await self.gateway.members(self.room_id)
            if members.get(self.bot_user_id) != "join":
                await self.gateway.join(self.room_id)
        await self.sync_members()
        return self.room_id

    async def operators(self) -> list[str]:
        async with self.store.transaction() as tx:
            return list(await tx.operators())

    async def sync_members(self) -> None:
        """Invite the operators who are missing; remove everyone else."""
        if self.room_id is None:
            return
        room_id = self.room_id
        operators = set(await self.operators())
        members = await self.gateway.members(room_id)
        now = self.clock.now()
        for user, membership in members.items():
            if user == self.bot_user_id or user in operators:
                continue
            if membership in rules.PRESENT or membership == rules.KNOCK:
                try:
                    await self.gateway.kick(room_id, user, REASON_NOT_OPERATOR)
                except MatrixError as exc:
                    if exc.transient:
                        raise
                    log.warning("admin room: kick of %s refused: %s", user, exc.errcode)
                    continue
                async with self.store.transaction() as tx:
                    await tx.audit(
                        "admin_room_member_removed",
                        actor=self.bot_user_id,
                        details={"user": user, "membership": membership},
                        now=now,
                    )
        for user in sorted(operators):
            if members.get(user) in ("join", "invite"):
                continue
            if members.get(user) == "ban":
                continue  # banned by hand: an operator lifts it, not the bot
            try:
                await self.gateway.invite(room_id, user)
            except MatrixError as exc:
                if exc.transient:
                    raise
                log.warning("admin room: invite of %s refused: %s", user, exc.errcode)
        await self.gateway.refresh_members(room_id)

    # ------------------------------------------------------------------ sending
    async def post(self, reply: Reply, *, txn: str) -> None:
        """Post a reply (and its files) to the operators."""
        assert self.room_id is not None
        contents = [mx.notice(reply.text, reply.html)]
        for attachment in reply.attachments:
            file = await self.gateway.upload_attachment(attachment.data, attachment.filename)
            contents.append(
                files.file_content(
                    file,
                    filename=attachment.filename,
                    mimetype=attachment.content_type,
                    size=len(attachment.data),
                )
            )
        async with self.store.transaction() as tx:
            await self._enqueue(tx, contents, txn=txn)

    async def _enqueue(self, tx: Tx, contents: list[dict[str, Any]], *, txn: str) -> None:
        assert self.room_id is not None
        recipients = await tx.operators()
        for i, content in enumerate(contents):
            await self.sender.enqueue(
                tx,
                txn_id=txn if i == 0 else f"{txn}-file{i}",
                room_id=self.room_id,
                content=content,
                recipients=recipients,
            )

    async def alert(self, key: str, text: str) -> None:
        """Tell the operators something they must look at (once per `key`)."""
        if self.room_id is None:
            log.warning("no admin room to tell the operators (%s)", key)
            return
        async with self.store.transaction() as tx:
            await self._enqueue(tx, [mx.notice(text)], txn=f"alert-{key}")


class AdminConsole:
    """The operators' messages in the admin room: commands, files, confirmations."""

    def __init__(
        self,
        *,
        room: AdminRoom,
        commands: CommandSet[Any],
        make_ctx: CtxFactory,
        confirmation_minutes: int,
    ) -> None:
        self.room = room
        self.store = room.store
        self.clock = room.clock
        self.sender = room.sender
        self.bot_user_id = room.bot_user_id
        self.commands = commands
        self.make_ctx = make_ctx
        self.confirmation = timedelta(minutes=confirmation_minutes)
        self._pending: dict[str, tuple[PendingConfirmation, datetime]] = {}
        self._files: dict[str, ReceivedFile] = {}

    def is_admin_room(self, room_id: str) -> bool:
        return self.room.is_admin_room(room_id)

    async def post(self, reply: Reply, *, txn: str) -> None:
        await self.room.post(reply, txn=txn)

    async def sync_members(self) -> None:
        await self.room.sync_members()

    async def operators(self) -> list[str]:
        return await self.room.operators()

    # ------------------------------------------------------------------ events
    async def on_event(self, room_id: str, event: Any) -> None:
        if isinstance(event, RoomMemberEvent):
            watched = event.membership in ("join", "invite", "knock")
            if (
                watched
                and event.state_key != self.bot_user_id
                and event.state_key not in set(await self.operators())
            ):
                async with self.store.transaction() as tx:
                    await tx.audit(
                        "admin_room_intruder",
                        actor=event.state_key,
                        details={"membership": event.membership, "by": event.sender},
                        now=self.clock.now(),
                    )
                await self.sync_members()
            return
        if isinstance(event, MegolmEvent):
            log.warning("admin room: undecryptable event %s", event.event_id)
            async with self.store.transaction() as tx:
                if await tx.mark_processed(event.event_id, room_id, self.clock.now()):
                    await tx.audit(
                        "undecryptable_event",
                        actor=event.sender,
                        details={"event_id": event.event_id, "room": "admin"},
                        now=self.clock.now(),
                    )
            return
        content = (getattr(event, "source", None) or {}).get("content") or {}
        if isinstance(event, RoomMessageText):
            body = event.body if isinstance(event.body, str) else ""
            await self._on_text(room_id, event.event_id, event.sender, body)
        elif content.get("msgtype") in FILE_MSGTYPES:
            await self._on_file(room_id, event.event_id, event.sender, content)

    async def _scope_of(self, sender: str) -> OperatorScope:
        async with self.store.transaction() as tx:
            agent = await tx.get_agent_by_matrix_id(sender)
            codes = await tx.operator_scope(agent.id) if agent is not None else None
        return OperatorScope.of(codes)

    async def _is_operator(self, tx: Tx, sender: str) -> bool:
        agent = await tx.get_agent_by_matrix_id(sender)
        return agent is not None and agent.active and agent.has(Role.OPERATEUR)

    async def _on_file(
        self, room_id: str, event_id: str, sender: str, content: Mapping[str, Any]
    ) -> None:
        now = self.clock.now()
        async with self.store.transaction() as tx:
            if not await tx.mark_processed(event_id, room_id, now):
                return
            allowed = await self._is_operator(tx, sender)
            await tx.audit(
                "admin_file_received" if allowed else "admin_command_refused",
                actor=sender,
                details={"event_id": event_id, "kind": "file"},
                now=now,
            )
        if not allowed:
            await self.post(Reply.error(REFUSED_NOT_OPERATOR), txn=f"admin-{event_id}")
            await self.sync_members()
            return
        name = str(content.get("filename") or content.get("body") or "fichier")
        self._files[sender] = ReceivedFile(event_id, dict(content), name, now)
        self._pending.pop(sender, None)  # a confirmation never applies to another file
        await self.post(
            Reply(
                f"Fichier « {name} » reçu. Pour importer l'annuaire qu'il contient : "
                "!import-annuaire (un aperçu est montré avant toute modification)."
            ),
            txn=f"admin-{event_id}",
        )

    async def _on_text(self, room_id: str, event_id: str, sender: str, body: str) -> None:
        parsed = self.commands.parse(body)
        if isinstance(parsed, NotACommand):
            return
        now = self.clock.now()
        async with self.store.transaction() as tx:
            if not await tx.mark_processed(event_id, room_id, now):
                return
            allowed = await self._is_operator(tx, sender)
            if not allowed:
                await tx.audit(
                    "admin_command_refused",
                    actor=sender,
                    details={
                        "why": "not_operator",
                        "command": getattr(getattr(parsed, "spec", None), "name", "?"),
                    },
                    now=now,
                )
        if not allowed:
            await self.post(Reply.error(REFUSED_NOT_OPERATOR), txn=f"admin-{event_id}")
            await self.sync_members()
            return
        if isinstance(parsed, ParseFailure):
            await self.post(parsed.reply(), txn=f"admin-{event_id}")
            return
        scope = await self._scope_of(sender)
        if not scope.allows_command(parsed.spec.name):
            async with self.store.transaction() as tx:
                await tx.audit(
                    "admin_command_refused",
                    actor=sender,
                    details={"why": "scope", "command": parsed.spec.name, "scope": scope.label()},
                    now=now,
                )
            text = REFUSED_NATIONAL_ONLY.format(codes=scope.label().replace(",", ", "))
            await self.post(Reply.error(text), txn=f"admin-{event_id}")
            return
        pending = self._pending_of(sender, now)
        ctx = await self.make_ctx(sender, event_id, self._files.get(sender), scope)
        # Admin commands run their own transactions (a directory change, then its effects
        # on the rooms): a failure half-way is told as such, with its reference.
        result: Reply | PendingConfirmation
        try:
            result = await self.commands.dispatch(parsed, ctx, pending=pending)
        except CommandFailed as failed:
            if isinstance(failed.__cause__, OutOfScope):
                # A territorial operator reached beyond their départements: nothing done.
                result = Reply.error(str(failed.__cause__))
            else:
                result = failure_reply(failed.reference, rolled_back=False)
        if parsed.settles_pending:
            self._pending.pop(sender, None)
        if isinstance(result, PendingConfirmation):
            self._pending[sender] = (result, now + self.confirmation)
            reply = result.summary
        else:
            reply = result
        name = parsed.spec.name
        if name != "aide":
            confirmed = name == "confirmer" and pending is not None
            async with self.store.transaction() as tx:
                await tx.audit(
                    "admin_command",
                    actor=sender,
                    details={
                        "command": pending.parsed.spec.name if confirmed and pending else name,
                        "dry_run": parsed.dry_run or isinstance(result, PendingConfirmation),
                        "confirmed": confirmed,
                        "ok": not reply.is_error,
                        "scope": scope.label(),
                    },
                    now=now,
                )
        await self.post(reply, txn=f"admin-{event_id}")

    def _pending_of(self, sender: str, now: datetime) -> PendingConfirmation | None:
        item = self._pending.get(sender)
        if item is None:
            return None
        pending, expires = item
        if now > expires:
            self._pending.pop(sender, None)
            return None
        return pending

    # ------------------------------------------------------------------ other rooms
    async def refuse_elsewhere(
        self,
        room_id: str,
        event: RoomMessageText,
        *,
        own_commands: CommandSet[Any],
        recipients: list[str] | None,
    ) -> bool:
        """An admin command typed in another room: refuse, audit, change nothing.

        Returns False when the message is not an admin-only command (the room's own
        handling then goes on). `recipients` None: the room's ledger (demande room).
        """
        body = event.body if isinstance(event.body, str) else ""
        parsed = self.commands.parse(body)
        if isinstance(parsed, NotACommand | ParseFailure):
            return False
        name = parsed.spec.name
        if own_commands.find(name) is not None:
            return False
        now = self.clock.now()
        async with self.store.transaction() as tx:
            if not await tx.mark_processed(event.event_id, room_id, now):
                return True
            await tx.audit(
                "admin_command_refused",
                actor=event.sender,
                details={"why": "wrong_room", "command": name, "room_id": room_id},
                now=now,
            )
            await self.sender.enqueue(
                tx,
                txn_id=f"reply-{event.event_id}",
                room_id=room_id,
                content=mx.notice(REFUSED_WRONG_ROOM),
                recipients=recipients,
                encrypted=bool(getattr(event, "decrypted", False)),
            )
        return True
