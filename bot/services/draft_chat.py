"""The demande in preparation, in the aidant's direct chat: a whole form or a few
`champ : valeur` lines merged into the draft kept for this aidant in this chat, the
answer (the recap, or only what is still missing or wrong), `!brouillon`,
`!organismes`, and the guided path (`!guider`: one question per missing field, each
answer checked at once).

A part of `Opening` (its mixin, like the parts of `Tx`): it uses the opening's store,
clock, policies and room specs, and is never built on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from bot.commands.framework import Reply
from bot.domain import dossier as texts
from bot.domain import drafting
from bot.domain import form as form_rules
from bot.domain.model import Agent, DemandeForm
from bot.domain.routing import RoutingResult, email_copies, route
from bot.ports import EmailHooks, PoliciesRef
from bot.services import drafts
from bot.services.clock import Clock
from bot.services.dossier_view import view_of
from bot.services.room_specs import RoomSpecs
from bot.store.draft_tx import DraftFile, DraftInput
from bot.store.repository import Tx


class Message(Protocol):
    """What the draft needs of a direct message (`opening.Incoming`)."""

    @property
    def room_id(self) -> str: ...
    @property
    def sender(self) -> str: ...
    @property
    def body(self) -> str: ...


def draft_reference_key(draft_id: int) -> str:
    """Where the reference announced with a draft's recap is kept for `!confirmer`."""
    return f"draft.{draft_id}.reference"


def file_line(file: DraftFile) -> str:
    return drafting.file_line(file.filename, file.size)


class DraftChat:
    # Set by `Opening.__init__`.
    clock: Clock
    policies: PoliciesRef
    specs: RoomSpecs
    email: EmailHooks

    def _route(self, form: DemandeForm, groups: Any, agents: Any) -> RoutingResult:
        return route(
            form.territoire,
            form.organisations,
            form.categorie,
            groups,
            agents,
            self.policies.current,
            self.specs.membership_rules(),
        )

    async def _take_form(self, tx: Tx, agent: Agent, msg: Message) -> Reply:
        """A whole form or a few `clé : valeur` lines: merged into the draft kept for
        this aidant in this chat; the answer is the recap, or what is still missing."""
        update = form_rules.read_fields(msg.body)
        current = await tx.draft_input(aidant_agent_id=agent.id, dm_room_id=msg.room_id)
        if not update.any_key:
            if current is not None and current.asking is not None:
                return await self._guided_answer(tx, agent, msg, current)
            return Reply(drafting.NOT_A_FORM if current is None else drafting.NOT_A_FORM_WITH_DRAFT)
        base = current.fields if current is not None else form_rules.DraftFields()
        fields = base.merged(update)
        if current is not None and current.asking is not None:
            # Lines « champ : valeur » during the guided path: taken, and the path goes on.
            return await self._guide_next(tx, agent, msg, fields)
        saved = await tx.save_draft_input(
            aidant_agent_id=agent.id,
            dm_room_id=msg.room_id,
            fields=fields,
            asking=None,
            now=self.clock.now(),
        )
        noted = [k for k in form_rules.FIELDS if k in update.values] if current else []
        if update.attested and current is not None:
            noted.append(form_rules.ACCORD)
        return await self._answer(
            tx, agent, msg, saved, extra=form_rules.message_problems(update), noted=noted
        )

    async def _directory(self, tx: Tx) -> drafts.Directory:
        return drafts.Directory(
            groups=await tx.list_groups(),
            agents=await tx.list_agents(),
            policies=self.policies.current,
            rules=self.specs.membership_rules(),
        )

    async def _assess(self, tx: Tx, fields: form_rules.DraftFields) -> drafts.Assessment:
        return drafts.assess(
            fields, today=self.clock.now().date(), directory=await self._directory(tx)
        )

    async def _answer(
        self,
        tx: Tx,
        agent: Agent,
        msg: Message,
        saved: DraftInput,
        *,
        extra: Sequence[form_rules.Problem] = (),
        noted: Sequence[str] = (),
    ) -> Reply:
        now = self.clock.now()
        policies = self.policies.current
        directory = await self._directory(tx)
        assessment = drafts.assess(saved.fields, today=now.date(), directory=directory)
        problems = [*extra, *assessment.problems]
        form = assessment.form
        routing = self._route(form, directory.groups, directory.agents) if form else None
        if routing is not None and routing.errors:
            problems += [form_rules.Problem(form_rules.ORGANISMES, e) for e in routing.errors]
        if problems or form is None or routing is None:
            # A recap shown earlier no longer holds: !confirmer must not open it.
            await self._drop_recap(tx, agent, msg)
            shown = drafting.still_missing(problems, noted)
            return Reply(shown.body, shown.formatted_body)
        previous = await tx.pending_draft(aidant_agent_id=agent.id, dm_room_id=msg.room_id)
        kept = await tx.get_state(draft_reference_key(previous.id)) if previous else None
        draft = await tx.save_draft(
            aidant_agent_id=agent.id,
            dm_room_id=msg.room_id,
            form=form,
            group_ids=[g.id for g in routing.groups],
            now=now,
        )
        groups_by_id = {g.id: g for g in directory.groups}
        # The reference is given with the recap (as Administration+ does) and kept for
        # `!confirmer` (and through corrections); a cancelled draft leaves a gap in the
        # sequence, never a reuse.
        reference = kept or await tx.next_reference(now.year)
        await tx.set_state(draft_reference_key(draft.id), reference)
        category = policies.category(form.categorie) if form.categorie else None
        recap = texts.render_recap(
            reference,
            form,
            [g.name for g in routing.groups],
            [
                view_of(a, groups_by_id.get(a.group_id or -1), policies)
                for a in routing.matrix_instructeurs
            ],
            [
                view_of(a, groups_by_id.get(a.group_id or -1), policies)
                for a in routing.email_instructeurs
            ],
            organisation_names={k: v.name for k, v in policies.organisations.items()},
            left_out=[f"{a.display_name} ({a.matrix_id}) : {why}" for a, why in routing.skipped],
            understood=assessment.understood,
            files=[file_line(x) for x in await tx.draft_files(saved.id)],
            advice=assessment.advice,
            categorie_label=category.label if category else None,
            by_email=email_copies(routing, groups_by_id, policies) if self.email.enabled else (),
        )
        await tx.audit("draft_saved", actor=msg.sender, details={"draft": draft.id}, now=now)
        return Reply(recap.body, recap.formatted_body)

    async def _drop_recap(self, tx: Tx, agent: Agent, msg: Message) -> None:
        previous = await tx.pending_draft(aidant_agent_id=agent.id, dm_room_id=msg.room_id)
        if previous is not None:
            await tx.set_draft_state(previous.id, "cancelled", now=self.clock.now())

    async def show_draft(self, tx: Tx, agent: Agent, msg: Message) -> Reply:
        """`!brouillon`: the draft as it stands, its files, and what is still missing."""
        current = await tx.draft_input(aidant_agent_id=agent.id, dm_room_id=msg.room_id)
        if current is None:
            return Reply(drafting.NO_DRAFT)
        assessment = await self._assess(tx, current.fields)
        files = [file_line(x) for x in await tx.draft_files(current.id)]
        shown = drafting.draft_view(current.fields, assessment.problems, files)
        return Reply(shown.body, shown.formatted_body)

    async def organisations_in(self, tx: Tx, text: str) -> Reply:
        """`!organismes <département>`: where a demande of that département can go."""
        policies = self.policies.current
        departement = policies.find_departement(text.strip())
        if departement is None:
            return Reply.error(drafting.unknown_departement(text.strip()))
        directory = await self._directory(tx)
        available = directory.available(departement.code)
        ids = {o.id for o in available}
        categories = [
            f"{c.label} : " + ", ".join(o.name for o in available if o.id in c.organisations)
            for c in policies.categories.values()
            if ids & set(c.organisations)
        ]
        shown = drafting.organisations_available(
            departement.code, departement.name, [o.name for o in available], categories
        )
        return Reply(shown.body, shown.formatted_body)

    # ------------------------------------------------------------ guided path
    async def start_guided(self, tx: Tx, agent: Agent, msg: Message) -> Reply:
        """`!guider`: the bot asks each missing field in turn (the draft so far is kept)."""
        current = await tx.draft_input(aidant_agent_id=agent.id, dm_room_id=msg.room_id)
        fields = current.fields if current is not None else form_rules.DraftFields()
        return await self._guide_next(tx, agent, msg, fields, intro=drafting.GUIDED_START)

    async def _guided_answer(
        self, tx: Tx, agent: Agent, msg: Message, current: DraftInput
    ) -> Reply:
        """A plain answer to the question last asked: checked at once, then the next one."""
        asked = current.asking
        assert asked is not None
        answer = msg.body.strip()
        if asked == form_rules.ACCORD:
            word = form_rules.loose(answer)
            if word in ("oui", "o", "yes", "j atteste", "je confirme", "d accord"):
                fields = current.fields.with_attestation(True)
            elif word in ("non", "n", "no"):
                fields = current.fields.with_attestation(False)
            else:
                shown = drafting.question(asked, form_rules.Problem(asked, drafting.YES_OR_NO))
                return Reply(shown.body, shown.formatted_body)
        else:
            value = answer if asked == form_rules.DESCRIPTION else " ".join(answer.split())
            fields = current.fields.with_value(asked, value)
        return await self._guide_next(tx, agent, msg, fields, noted=asked)

    async def _guide_next(
        self,
        tx: Tx,
        agent: Agent,
        msg: Message,
        fields: form_rules.DraftFields,
        *,
        intro: str | None = None,
        noted: str | None = None,
    ) -> Reply:
        assessment = await self._assess(tx, fields)
        wrong = {p.field: p for p in assessment.problems}
        order = (*form_rules.FIELDS, form_rules.ACCORD)
        following = next((k for k in order if k in wrong), None)
        saved = await tx.save_draft_input(
            aidant_agent_id=agent.id,
            dm_room_id=msg.room_id,
            fields=fields,
            asking=following,
            now=self.clock.now(),
        )
        if following is None:
            # Everything is there: the recap, as for a whole form.
            return await self._answer(tx, agent, msg, saved)
        await self._drop_recap(tx, agent, msg)
        problem = wrong[following]
        # A field never answered gets its question alone; a wrong answer, why first.
        given = following == noted or bool(fields.values.get(following, "").strip())
        if following == form_rules.ACCORD:
            given = fields.attested is False
        if following == form_rules.ORGANISMES and "catégorie" in problem.message:
            given = True
        shown = drafting.question(
            following,
            problem if given else None,
            noted=None if following == noted or noted is None else noted,
        )
        if intro:
            shown = texts.RenderedMessage(
                f"{intro}\n\n{shown.body}", f"<p>{intro}</p>{shown.formatted_body}"
            )
        return Reply(shown.body, shown.formatted_body)
