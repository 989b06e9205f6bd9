"""Matrix → email, the enqueue side: who gets which email, built and queued in the
transaction of the Matrix event that caused it (delivery: `bridge.delivery`).

Recipients of a demande:

* email-only participants: the whole conversation, each with their own reply
  address (``reply+<token>@<reply_domain>``, see `bridge.addressing`);
* the shared mailbox (BAL) of a routed or invited group: the dossier only;
* Matrix participants who asked for it (``!notifications oui``): a notice that
  something was posted, never the content.

A token is derived, not stored: ``HMAC(key, demande, address, generation)``.
The database keeps its digest only; revoking it and bringing the agent back
later starts a new generation, hence a new address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html as html_lib
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from bot.domain.model import Agent, Demande, Group, Status
from bot.domain.policies import Policies
from bot.ports import (
    AttachmentFetcher,
    Author,
    DemandeTx,
    FileAttachment,
    MailTx,
    PoliciesRef,
    Transactions,
)
from bot.services.clock import Clock
from bot.settings import EmailSettings
from bridge import render
from bridge.addressing import reply_address, token_digest
from bridge.inbound.attachments import REFUSAL_LABELS, file_refusal

log = logging.getLogger(__name__)


class BridgeTx(MailTx, Protocol):
    """What the bridge's own transactions add: its secret key, events handled once."""

    async def get_secret(self, key: str) -> bytes | None: ...
    async def set_secret(self, key: str, value: bytes) -> None: ...
    async def mark_processed(self, event_id: str, room_id: str, now: datetime) -> bool: ...


TOKEN_KEY_SECRET = "email.reply_token_key"  # noqa: S105 (a key name)


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str
    agent: Agent | None  # None: a group's shared mailbox
    full: bool  # the content (email-only participant, BAL) or a notice only
    replies: bool  # gets a personal reply address

    @property
    def footer(self) -> render.Footer:
        if self.replies:
            return render.Footer.REPLY
        if self.agent is None:
            return render.Footer.SHARED
        return render.Footer.NOTICE


# Commands whose effect the email-only participants are told of (subject label, and the
# sentence put before the room's answer when that answer does not name who did it).
TOLD: dict[str, tuple[str, str]] = {
    "jemenoccupe": ("prise en charge", ""),
    "pasleboninterlocuteur": ("pas le bon interlocuteur", ""),
    "traitee": ("demande traitée", ""),
    "inviter": ("participant invité", "{who} a invité de nouveaux participants."),
}
# (`!completer` mails what changed itself, through `room_message`.)
# Told to the groups' shared mailboxes too: someone took the demande, or answered it.
TOLD_TO_SHARED = frozenset({"jemenoccupe", "traitee"})
# Always sent at once, whatever the agent chose: the dossier (and invitations), the
# answer to their own command, reminders. The rest may be stopped or held for the digest.
AT_ONCE = frozenset({"dossier", "answer", "reminder", "digest"})
# Quick answers: done by email, they need no answer by email (the thread shows them).
QUICK = frozenset({"jemenoccupe", "traitee", "pasleboninterlocuteur"})


def withholds_identifiers(
    recipient: Recipient, groups: Mapping[int, Group], policies: Policies
) -> bool:
    """Per organisation (`policies/organisations.toml`, ``email_identifiers``): the
    recipient's group's organisation, or the shared mailbox's."""
    if recipient.agent is not None:
        group = groups.get(recipient.agent.group_id) if recipient.agent.group_id else None
    else:
        group = next(
            (g for g in groups.values() if (g.bal or "").lower() == recipient.address), None
        )
    organisation = policies.organisation(group.organisation_id) if group else None
    return organisation is not None and organisation.withholds_identifiers


def _affiliation(agent: Agent | None, groups: Mapping[int, Group]) -> str:
    if agent is None or agent.group_id is None:
        return ""
    group = groups.get(agent.group_id)
    return group.name if group else ""


class EmailBridge:
    """The `EmailHooks` of the email bridge: the Matrix handlers call them inside their
    transaction, and each enqueues emails (delivered after the commit)."""

    def __init__(
        self,
        *,
        settings: EmailSettings,
        store: Transactions[BridgeTx],
        policies: PoliciesRef,
        clock: Clock,
        fetch_attachment: AttachmentFetcher,
        wake_delivery: Callable[[], None],
        client_url: str | None = None,
    ) -> None:
        self.client_url = client_url  # room links (`bot.client_url`); None: matrix.to
        self.settings = settings
        self.store = store
        self.policies = policies
        self.clock = clock
        self.fetch_attachment = fetch_attachment
        self._wake_delivery = wake_delivery
        self._key: bytes | None = None

    @property
    def enabled(self) -> bool:
        return True

    async def load_key(self) -> None:
        """The secret reply tokens derive from: created once, kept sealed with the others."""
        async with self.store.transaction() as tx:
            key = await tx.get_secret(TOKEN_KEY_SECRET)
            if key is None:
                key = secrets.token_bytes(32)
                await tx.set_secret(TOKEN_KEY_SECRET, key)
        self._key = key

    # ------------------------------------------------------------------ tokens

    def _derive(self, demande_id: int, address: str, generation: int) -> str:
        assert self._key is not None, "load_key() first"
        data = f"{demande_id}\x00{address.lower()}\x00{generation}".encode()
        raw = hmac.new(self._key, data, hashlib.sha256).digest()[:20]
        return base64.b32encode(raw).decode("ascii").rstrip("=").lower()

    async def reply_token(self, tx: MailTx, demande_id: int, address: str) -> str:
        """The live reply token of (demande, agent address), created on first use."""
        generation = await tx.reply_token_generation(demande_id, address)
        if generation is None:
            generation = await tx.last_reply_token_generation(demande_id, address) + 1
            token = self._derive(demande_id, address, generation)
            await tx.add_reply_token(
                digest=token_digest(token),
                demande_id=demande_id,
                agent_email=address,
                generation=generation,
                now=self.clock.now(),
            )
            return token
        return self._derive(demande_id, address, generation)

    # ------------------------------------------------------------------ recipients

    async def _groups(self, tx: DemandeTx) -> dict[int, Group]:
        return {g.id: g for g in await tx.list_groups()}

    async def _people(self, tx: MailTx, demande: Demande) -> list[Recipient]:
        """Email-only participants (content + reply address), notified Matrix participants."""
        out: list[Recipient] = []
        matrix_agents: list[Agent] = []
        for p in await tx.participants(demande.id):
            agent = await tx.get_agent(p.agent_id)
            if agent is None or not agent.active or not agent.email:
                continue
            if agent.email_only:
                out.append(Recipient(agent.email, agent, full=True, replies=True))
            else:
                matrix_agents.append(agent)
        notified = await tx.agents_notified_by_email(a.id for a in matrix_agents)
        out += [
            Recipient(str(a.email), a, full=False, replies=False)
            for a in matrix_agents
            if a.id in notified
        ]
        return out

    @staticmethod
    def _bals(groups: Iterable[Group]) -> list[Recipient]:
        return [Recipient(g.bal.lower(), None, full=True, replies=False) for g in groups if g.bal]

    # ------------------------------------------------------------------ composing

    def _org_names(self, demande: Demande) -> list[str]:
        orgs = self.policies.current.organisations
        return [orgs[o].name if o in orgs else o for o in demande.organisations]

    async def _enqueue(
        self,
        tx: MailTx,
        demande: Demande,
        recipient: Recipient,
        rendered: render.RenderedEmail,
        *,
        event_key: str,
        kind: str,
        author: str | None,
        message_id: str,
        parents: Sequence[str] = (),
        attachments: Sequence[render.Attachment] = (),
    ) -> bool:
        s = self.settings
        agent = recipient.agent
        if agent is not None and kind not in AT_ONCE and not attachments:
            if agent.id in await tx.muted_agents(demande.id):
                return False  # `!notifications non` for this demande
            hour = (await tx.email_digest_hours([agent.id])).get(agent.id)
            if hour is not None and recipient.full:
                return await self._hold(tx, demande, agent, rendered, event_key=event_key)
        reply_to: str | None = None
        envelope_from = s.from_address
        if recipient.replies:
            token = await self.reply_token(tx, demande.id, recipient.address)
            reply_to = reply_address(token, s.reply_domain)
            # Bounces come back to the same address: the listener knows whose they are.
            envelope_from = reply_to
        threads = render.thread_headers(demande.reference, s.from_domain, parents)
        in_reply_to: str | None = threads.in_reply_to
        references: str | None = threads.references
        if message_id == render.root_message_id(demande.reference, s.from_domain):
            in_reply_to = references = None
        name = recipient.agent.display_name if recipient.agent else ""
        text, html = render.finish(
            rendered,
            kind=recipient.footer,
            reference=demande.reference,
            room_id=demande.room_id,
            client_url=self.client_url,
        )
        msg = render.build_email(
            from_addr=render.mailbox(s.from_name, s.from_address),
            to_addr=render.mailbox(name, recipient.address),
            reply_to=reply_to,
            subject=render.subject(
                demande.reference, self._org_names(demande), demande.territoire, rendered.what
            ),
            message_id=message_id,
            in_reply_to=in_reply_to,
            references=references,
            text=text,
            html=html,
            attachments=attachments,
            loop_marker=s.loop_marker,
            auto_generated=rendered.auto_generated,
            date=self.clock.now(),
        )
        queued: bool = await tx.enqueue_email(
            event_key=event_key,
            recipient=recipient.address,
            kind=kind,
            demande_id=demande.id,
            author=author,
            message_id=message_id,
            envelope_from=envelope_from,
            message=msg.as_bytes(),
            now=self.clock.now(),
        )
        if queued:
            tx.after_commit(self._wake_delivery)
        return queued

    async def queue(
        self,
        tx: MailTx,
        demande: Demande,
        recipient: Recipient,
        rendered: render.RenderedEmail,
        *,
        event_key: str,
        kind: str,
    ) -> bool:
        """One email of the demande's thread to one recipient (the digest's)."""
        return await self._enqueue(
            tx,
            demande,
            recipient,
            rendered,
            event_key=event_key,
            kind=kind,
            author=None,
            message_id=render.message_id(event_key, self._domain),
        )

    async def _hold(
        self,
        tx: MailTx,
        demande: Demande,
        agent: Agent,
        rendered: render.RenderedEmail,
        *,
        event_key: str,
    ) -> bool:
        """Keep an email for the agent's daily digest of this demande (`bridge.digest`)."""
        body = render.digest_entry(rendered, at=self.clock.now())
        return await tx.add_digest_item(
            agent_id=agent.id,
            demande_id=demande.id,
            event_key=event_key,
            body=body,
            now=self.clock.now(),
        )

    @staticmethod
    def _notice(demande: Demande, what: str = "nouveau message") -> render.RenderedEmail:
        happened = {
            "nouveau message": "Un nouveau message a été publié",
            "nouvelle demande": "Une nouvelle demande attend votre groupe",
            "invitation": "Vous avez été invité dans une demande",
        }[what]
        return render.notice_email(demande.reference, what, happened)

    async def _participant_labels(
        self, tx: DemandeTx, demande: Demande, groups: Mapping[int, Group]
    ) -> list[str]:
        labels = []
        for p in await tx.participants(demande.id):
            agent = await tx.get_agent(p.agent_id)
            if agent is None:
                continue
            affiliation = _affiliation(agent, groups)
            label = agent.display_name + (f" ({affiliation})" if affiliation else "")
            labels.append(label + (", par courriel" if agent.email_only else ""))
        return labels

    # ------------------------------------------------------------------ hooks

    async def demande_ready(self, tx: MailTx, demande: Demande) -> None:
        """The room is ready: the dossier goes to email-only instructeurs and the BALs; a
        notice (no content) to Matrix participants who asked for email notices."""
        groups = await self._groups(tx)
        people = await self._people(tx, demande)
        bals = self._bals(groups[g] for g in demande.group_ids if g in groups)
        await self._send_dossier(
            tx,
            demande,
            [*people, *bals],
            event_key=f"dossier-{demande.reference}",
            message_id=render.root_message_id(demande.reference, self.settings.from_domain),
            groups=groups,
            notice="nouvelle demande",
        )

    async def participants_added(
        self, tx: MailTx, demande: Demande, agents: Sequence[Agent], *, key: str
    ) -> None:
        """Invited later (`!inviter`): email-only agents and their groups' BALs get the
        dossier; invited Matrix agents who asked for email notices, a notice."""
        current = await tx.get_demande(demande.id)
        if current is None or current.creation_step != "ready":
            return  # the opening sends it when the room becomes ready
        groups = await self._groups(tx)
        people = [
            Recipient(a.email, a, full=True, replies=True)
            for a in agents
            if a.email_only and a.email and a.active
        ]
        matrix_agents = [a for a in agents if not a.email_only and a.email and a.active]
        notified = await tx.agents_notified_by_email(a.id for a in matrix_agents)
        people += [
            Recipient(str(a.email), a, full=False, replies=False)
            for a in matrix_agents
            if a.id in notified
        ]
        new_groups = {a.group_id for a in agents if a.group_id is not None} - set(current.group_ids)
        bals = self._bals(groups[g] for g in sorted(new_groups) if g in groups)
        await self._send_dossier(
            tx,
            current,
            [*people, *bals],
            event_key=f"dossier-{demande.reference}-{key}",
            message_id=render.message_id(f"dossier-{key}", self.settings.from_domain),
            groups=groups,
            notice="invitation",
        )

    async def _send_dossier(
        self,
        tx: MailTx,
        demande: Demande,
        recipients: Sequence[Recipient],
        *,
        event_key: str,
        message_id: str,
        groups: Mapping[int, Group],
        notice: str,
    ) -> None:
        if not recipients:
            return
        form = await tx.load_form(demande.id)
        aidant = await tx.get_agent(demande.aidant_agent_id)
        participants = await self._participant_labels(tx, demande, groups)

        def dossier(r: Recipient) -> render.RenderedEmail:
            return render.new_demande_email(
                reference=demande.reference,
                form=form,
                organisation_names=self._org_names(demande),
                aidant_name=aidant.display_name if aidant else "",
                aidant_affiliation=_affiliation(aidant, groups),
                participants=participants,
                withhold_identifiers=self._withholds(r, groups),
                can_reply=r.replies,
            )

        seen: set[str] = set()
        for r in recipients:
            if r.address in seen:
                continue
            seen.add(r.address)
            await self._enqueue(
                tx,
                demande,
                r,
                dossier(r) if r.full else self._notice(demande, notice),
                event_key=event_key,
                kind="dossier" if r.full else "notification",
                author=None,
                message_id=message_id,
            )

    def _withholds(self, recipient: Recipient, groups: Mapping[int, Group]) -> bool:
        """The recipient's organisation keeps the optional identifiers out of emails."""
        return withholds_identifiers(recipient, groups, self.policies.current)

    async def command_answered(
        self,
        tx: MailTx,
        demande: Demande,
        *,
        author: Author,
        command: str,
        text: str,
        error: bool,
        key: str,
    ) -> None:
        """A participant's command was answered in the room. By email, its author gets the
        answer; the email-only colleagues (and, for some, the shared mailboxes) are told
        what it did."""
        answer = error or command not in QUICK
        if answer and author.via == "email" and author.agent.email and author.agent.active:
            me = Recipient(author.agent.email, author.agent, full=True, replies=True)
            await self._enqueue(
                tx,
                demande,
                me,
                render.command_answer_email(f"!{command}" if command != "?" else "", text),
                event_key=f"answer-{key}",
                kind="answer",
                author=None,
                message_id=render.message_id(f"answer-{key}", self._domain),
            )
        if error or command not in TOLD:
            return
        groups = await self._groups(tx)
        what, intro = TOLD[command]
        who = author.agent.display_name
        affiliation = _affiliation(author.agent, groups)
        label = who + (f" ({affiliation})" if affiliation else "")
        body = (intro.format(who=label) + "\n\n" + text) if intro else text
        rendered = render.action_email(what, body)
        recipients = [
            r
            for r in await self._people(tx, demande)
            if r.full and r.agent is not None and r.agent.id != author.agent.id
        ]
        if command in TOLD_TO_SHARED:
            recipients += self._bals(groups[g] for g in demande.group_ids if g in groups)
        event_key = f"action-{key}"
        for r in recipients:
            await self._enqueue(
                tx,
                demande,
                r,
                rendered,
                event_key=event_key,
                kind="action",
                author=author.address,
                message_id=render.message_id(event_key, self._domain),
            )

    async def room_message(
        self,
        tx: MailTx,
        demande: Demande,
        *,
        event_key: str,
        author: Agent | None,
        author_id: str,
        content: Mapping[str, Any],
        attachments: Sequence[FileAttachment] = (),
    ) -> None:
        """A participant's message (or a correction of one): to everyone else by email."""
        groups = await self._groups(tx)
        name = author.display_name if author else author_id
        affiliation = _affiliation(author, groups)
        relates = content.get("m.relates_to")
        new_content = content.get("m.new_content")
        parents: list[str] = []
        kind = "message"
        try:
            if author is None:
                # The service's own notice (a reminder of a late demande).
                rendered = render.action_email("relance", str(content.get("body") or ""))
            elif (
                isinstance(relates, Mapping)
                and relates.get("rel_type") == "m.replace"
                and isinstance(new_content, Mapping)
            ):
                original = await tx.emails_of_event(str(relates.get("event_id")))
                if original and original[0].author != author_id:
                    # Only the author may correct a message (a federated server could send
                    # an edit in someone else's name: it is not bridged).
                    log.warning(
                        "demande %s: edit of %s by someone else than its author, not bridged",
                        demande.reference,
                        relates.get("event_id"),
                    )
                    return
                kind = "edit"
                parents.append(render.message_id(str(relates.get("event_id")), self._domain))
                rendered = render.edited_message_email(
                    author_name=name, author_affiliation=affiliation, new_content=new_content
                )
            else:
                rendered = render.new_message_email(
                    author_name=name, author_affiliation=affiliation, content=content
                )
        except render.UnsupportedContent as exc:
            log.info("demande %s: event %s not bridged: %s", demande.reference, event_key, exc)
            return
        message_id = render.message_id(event_key, self._domain)
        if author is None and kind == "message":
            kind = "reminder"  # the service's own notice (a late demande): at once
        for r in await self._people(tx, demande):
            if author is not None and r.agent is not None and r.agent.id == author.id:
                continue
            await self._enqueue(
                tx,
                demande,
                r,
                rendered if r.full else self._notice(demande),
                event_key=event_key,
                kind=kind if r.full else "notification",
                author=author_id,
                message_id=message_id,
                parents=parents,
                attachments=[
                    render.Attachment(a.filename, a.content_type, a.data) for a in attachments
                ]
                if r.full
                else (),
            )

    async def redaction(
        self,
        tx: MailTx,
        demande: Demande,
        *,
        redacted_event_id: str,
        redaction_event_id: str,
        sender: str,
    ) -> None:
        """A bridged message was withdrawn by its author: those who got it are told to
        disregard it (a withdrawal by anyone else is not bridged)."""
        # Held for a digest and not sent yet: it simply never goes out. (Only its author or
        # the bot may redact in a demande room: participants have no moderator power.)
        await tx.drop_digest_items(redacted_event_id)
        sent = [e for e in await tx.emails_of_event(redacted_event_id) if e.kind != "notification"]
        if not sent:
            return
        author_id = sent[0].author or ""
        if sender != author_id:
            log.warning(
                "demande %s: withdrawal of %s by someone else than its author, not bridged",
                demande.reference,
                redacted_event_id,
            )
            return
        groups = await self._groups(tx)
        author = await self._agent_of(tx, author_id)
        rendered = render.redacted_message_email(
            author_name=author.display_name if author else author_id,
            author_affiliation=_affiliation(author, groups),
        )
        parent = render.message_id(redacted_event_id, self._domain)
        people = {r.address: r for r in await self._people(tx, demande) if r.full}
        for email in sent:
            recipient = people.get(email.recipient)
            if recipient is None:
                continue  # left the demande since
            await self._enqueue(
                tx,
                demande,
                recipient,
                rendered,
                event_key=redaction_event_id,
                kind="redaction",
                author=author_id,
                message_id=render.message_id(redaction_event_id, self._domain),
                parents=[parent],
            )

    async def status_changed(
        self,
        tx: MailTx,
        demande: Demande,
        *,
        old: Status,
        new: Status,
        actor: str,
        key: str,
    ) -> None:
        """Closing and reopening reach the email-only participants."""
        if (old == Status.CLOTUREE) == (new == Status.CLOTUREE):
            return
        groups = await self._groups(tx)
        agent = await self._agent_of(tx, actor)
        by = {
            "reference": demande.reference,
            "by_name": agent.display_name if agent else actor,
            "by_affiliation": _affiliation(agent, groups),
        }
        closing = new == Status.CLOTUREE
        rendered = render.closed_email(**by) if closing else render.reopened_email(**by)
        event_key = f"status-{key}"
        for r in await self._people(tx, demande):
            if not r.full or (agent is not None and r.agent is not None and r.agent.id == agent.id):
                continue
            await self._enqueue(
                tx,
                demande,
                r,
                rendered,
                event_key=event_key,
                kind="closed" if closing else "reopened",
                author=actor,
                message_id=render.message_id(event_key, self._domain),
            )

    async def participant_removed(
        self, tx: MailTx, demande: Demande, agent: Agent, *, why: str, key: str
    ) -> None:
        """A participant left the demande: the email-only participants are told."""
        groups = await self._groups(tx)
        affiliation = _affiliation(agent, groups)
        label = agent.display_name + (f" ({affiliation})" if affiliation else "")
        rendered = render.action_email(
            "participant retiré", f"{label} ne participe plus à cette demande ({why})."
        )
        event_key = f"removed-{key}"
        for r in await self._people(tx, demande):
            if not r.full or r.agent is None or r.agent.id == agent.id:
                continue
            await self._enqueue(
                tx,
                demande,
                r,
                rendered,
                event_key=event_key,
                kind="action",
                author=None,
                message_id=render.message_id(event_key, self._domain),
            )

    @property
    def _domain(self) -> str:
        return self.settings.from_domain

    @staticmethod
    async def _agent_of(tx: DemandeTx, actor: str) -> Agent | None:
        """Actors are Matrix IDs, or the address of an email-only agent."""
        if actor.startswith("@"):
            agent: Agent | None = await tx.get_agent_by_matrix_id(actor)
        else:
            agent = await tx.get_agent_by_email(actor) if "@" in actor else None
        return agent

    # ------------------------------------------------------------------ files

    async def room_file(
        self, demande: Demande, *, event_id: str, author: Agent, content: Mapping[str, Any]
    ) -> None:
        """A participant's encrypted file: attached to the email when small enough.

        The download happens outside any transaction; when the media cannot be fetched
        the error is raised (the event is retried on its own), never hidden.
        """
        name = str(content.get("filename") or content.get("body") or "piece-jointe")
        info = content.get("info") if isinstance(content.get("info"), Mapping) else {}
        size = info.get("size") if isinstance(info, Mapping) else None
        ctype = str((info or {}).get("mimetype") or "application/octet-stream")
        limit = self.settings.max_outbound_attachment_bytes
        attachments: list[FileAttachment] = []
        bridged: Mapping[str, Any] = content
        file = content.get("file")
        too_big = not isinstance(size, int) or size > limit
        refused: str | None = None
        if not too_big and isinstance(file, Mapping):
            try:
                _, _, data = await self.fetch_attachment(content, max_bytes=limit)
            except ValueError as exc:
                log.warning(
                    "demande %s: file %s not attached: %s", demande.reference, event_id, exc
                )
                too_big = True
            else:
                # The rules of the files that come in by email apply to those going out:
                # an email client opens what Element would only show.
                ctype, reason = file_refusal(
                    name, ctype, data, limit, frozenset(self.settings.allowed_attachment_types)
                )
                if reason is None:
                    attachments.append(FileAttachment(name, ctype, data))
                else:
                    refused = REFUSAL_LABELS[reason]
        if not attachments:
            mib = limit / (1024 * 1024)
            shown = render.clean_header_value(name, 150)
            if refused is not None:
                body = (
                    f"Pièce jointe « {shown} » non jointe à ce courriel ({refused}) : "
                    "consultez-la dans le salon de la demande, ou demandez-la autrement à "
                    "son auteur."
                )
            elif too_big:
                body = (
                    f"Pièce jointe « {shown} » : trop volumineuse ou illisible pour être jointe "
                    f"à ce courriel (limite {mib:.0f} Mo). Demandez-la à son auteur."
                )
            else:
                body = f"Pièce jointe « {shown} » (non jointe à ce courriel)."
            bridged = {"msgtype": "m.text", "body": body}
        assert author.matrix_id is not None and demande.room_id is not None
        async with self.store.transaction() as tx:
            if not await tx.mark_processed(event_id, demande.room_id, self.clock.now()):
                return
            await self.room_message(
                tx,
                demande,
                event_key=event_id,
                author=author,
                author_id=author.matrix_id,
                content=bridged,
                attachments=attachments,
            )

    async def notify_agent(
        self, tx: MailTx, agent: Agent, subject: str, text: str, *, key: str
    ) -> bool:
        """A message to one email-only agent that belongs to no demande (a reminder of
        late demandes to a responsable, the weekly digest to an aidant)."""
        if not agent.email or not agent.active:
            return False
        s = self.settings
        paragraphs = [p for p in text.split("\n\n") if p.strip()]
        html_body = "".join(
            f"<p>{html_lib.escape(p).replace(chr(10), '<br>')}</p>" for p in paragraphs
        )
        rendered = render.agent_notice_email(subject, text, html_body)
        message_id = render.message_id(f"agent-{key}", s.from_domain)
        msg = render.build_email(
            from_addr=render.mailbox(s.from_name, s.from_address),
            to_addr=render.mailbox(agent.display_name, agent.email),
            reply_to=None,
            subject=render.clean_header_value(f"[A+] {subject}", 120),
            message_id=message_id,
            in_reply_to=None,
            references=None,
            text=rendered.text,
            html=rendered.html,
            loop_marker=s.loop_marker,
            auto_generated=True,
            date=self.clock.now(),
        )
        queued: bool = await tx.enqueue_email(
            event_key=f"agent-{key}",
            recipient=agent.email,
            kind="agent_notice",
            demande_id=None,
            author=None,
            message_id=message_id,
            envelope_from=s.from_address,
            message=msg.as_bytes(),
            now=self.clock.now(),
        )
        if queued:
            tx.after_commit(self._wake_delivery)
        return queued
