"""Commands of an agent's direct chat with the bot: opening a demande (aidants), and
« mes demandes » (aidants in their direct chat, instructeurs in their follow-up room).

A leaf, like the room's commands: declarations, a small context, one handler each.
The draft itself (keeping, confirming, dropping it) is the opening service's: the
handlers reach it through `DraftOps`, bound by the service to this message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from bot.commands.framework import Arg, CommandSet, CommandSpec, Reply
from bot.domain import board
from bot.domain import dossier as texts
from bot.domain.followup import FollowUpRules, lateness
from bot.domain.model import Agent, Role
from bot.domain.policies import Policies, fold
from bot.ports import DemandeTx

SECTION = "Ouvrir une demande"
SECTION_BOARD = "Mes demandes"
# Who may run a command (checked by `gate`): an active aidant, in an encrypted chat.
AIDANT = "aidant"
# Any active agent of the directory, in an encrypted chat.
AGENT = "agent"


class DraftOps(Protocol):
    async def confirm(self) -> Reply:
        """Open the demande of the pending draft."""
        ...

    async def cancel(self) -> Reply:
        """Drop the pending draft."""
        ...

    async def show(self) -> Reply:
        """The demande in preparation, and what it still lacks."""
        ...

    async def in_preparation(self) -> bool:
        """Whether a demande is being prepared in this chat."""
        ...

    async def guide(self) -> Reply:
        """Start (or resume) the guided path: one question per missing field."""
        ...

    async def organisations(self, departement: str) -> Reply:
        """The organisations a demande of that département can be sent to."""
        ...


@dataclass(frozen=True)
class DirectCtx:
    agent: Agent | None
    encrypted: bool
    drafts: DraftOps
    tx: DemandeTx
    policies: Policies
    rules: FollowUpRules
    now: datetime
    # The agent's own direct chat (not their follow-up room): encrypted to them alone,
    # so `!mesdemandes` may search their usagers' names there.
    private: bool = False
    client_url: str | None = None  # room links: None → https://matrix.to/#/
    has_draft: bool = False  # a demande is being prepared in this chat

    @property
    def is_aidant(self) -> bool:
        return self.agent is not None and self.agent.active and self.agent.has(Role.AIDANT)


def refusal(ctx: DirectCtx) -> tuple[str, str] | None:
    """Why this person may not open a demande here: (audit action, French text)."""
    if not ctx.is_aidant:
        return "demande_refused_not_aidant", texts.REFUSAL_NOT_AIDANT
    if not ctx.encrypted:
        # Personal data must never travel in clear, not even once.
        return "form_refused_unencrypted", texts.REFUSAL_UNENCRYPTED_ROOM
    return None


def gate(ctx: DirectCtx, spec: CommandSpec) -> str | None:
    if spec.audience == AGENT:
        if ctx.agent is None or not ctx.agent.active:
            return "Cette commande est réservée aux agents inscrits dans l'annuaire du service."
        if not ctx.encrypted:
            return texts.REFUSAL_UNENCRYPTED_ROOM
        return None
    found = refusal(ctx) if spec.audience == AIDANT else None
    return found[1] if found else None


def applies(ctx: DirectCtx, spec: CommandSpec) -> bool:
    """`!confirmer`, `!annuler` and `!brouillon` are listed while a draft is prepared."""
    if spec.name in ("confirmer", "annuler", "brouillon"):
        return ctx.has_draft
    return True


DIRECT: CommandSet[DirectCtx] = CommandSet(gate=gate, confirmations=False, applies=applies)

Args = Mapping[str, Any]
Flags = frozenset[str]


@DIRECT.command(
    CommandSpec(
        "demande",
        (),
        "Recevoir le formulaire à remplir pour ouvrir une demande.\n"
        "Renvoyez-le complété : je vous montre un récapitulatif, puis !confirmer "
        "ouvre la demande et !annuler l'abandonne. Une correction peut s'envoyer seule, "
        "sur une ligne (« date de naissance : 12/03/1961 ») ; les fichiers envoyés ici "
        "pendant la préparation sont joints à la demande.",
        section=SECTION,
        audience=AIDANT,
    )
)
async def _demande(ctx: DirectCtx, args: Args, flags: Flags) -> Reply:
    template = texts.render_form_template()
    if await ctx.drafts.in_preparation():
        return Reply(
            f"{DRAFT_KEPT}\n\n{template.body}",
            f"<p>{DRAFT_KEPT}</p>{template.formatted_body}",
        )
    return Reply(template.body, template.formatted_body)


DRAFT_KEPT = (
    "Vous avez déjà une demande en préparation (!brouillon pour la voir) : ce que vous "
    "renverrez la complétera ; !annuler pour repartir de zéro."
)


@DIRECT.command(
    CommandSpec(
        "confirmer",
        (),
        "Ouvrir la demande que vous venez de préparer (après son récapitulatif).",
        section=SECTION,
        audience=AIDANT,
    )
)
async def _confirmer(ctx: DirectCtx, args: Args, flags: Flags) -> Reply:
    return await ctx.drafts.confirm()


@DIRECT.command(
    CommandSpec(
        "annuler",
        (),
        "Abandonner la demande en préparation (rien n'est envoyé).",
        section=SECTION,
        audience=AIDANT,
    )
)
async def _annuler(ctx: DirectCtx, args: Args, flags: Flags) -> Reply:
    return await ctx.drafts.cancel()


@DIRECT.command(
    CommandSpec(
        "brouillon",
        (),
        "Voir la demande en préparation, ses fichiers joints et ce qu'il reste à compléter.",
        section=SECTION,
        audience=AIDANT,
    )
)
async def _brouillon(ctx: DirectCtx, args: Args, flags: Flags) -> Reply:
    return await ctx.drafts.show()


@DIRECT.command(
    CommandSpec(
        "guider",
        (),
        "Préparer la demande pas à pas : je pose les questions une à une.",
        section=SECTION,
        audience=AIDANT,
    )
)
async def _guider(ctx: DirectCtx, args: Args, flags: Flags) -> Reply:
    return await ctx.drafts.guide()


@DIRECT.command(
    CommandSpec(
        "organismes",
        (Arg("departement", "rest", "numéro ou nom du département (95, Val-d'Oise)"),),
        "Lister les organismes qui reçoivent les demandes d'un département.",
        section=SECTION,
        audience=AIDANT,
    )
)
async def _organismes(ctx: DirectCtx, args: Args, flags: Flags) -> Reply:
    return await ctx.drafts.organisations(str(args["departement"]))


@DIRECT.command(
    CommandSpec(
        "mesdemandes",
        (Arg("filtres", "rest", "statut, « retard », département ou texte", optional=True),),
        "Lister vos demandes : statut, organismes, ancienneté, qui doit agir, retard, lien.\n"
        "Sans filtre : les demandes ouvertes. Filtres possibles, dans n'importe quel ordre : "
        "un statut (nouvelle, en cours, traitée, clôturée ; « ouvertes »), « retard », un "
        "département (95 ou Val d'Oise), ou un texte (référence, organisme, groupe ; dans "
        "votre conversation avec le bot, aussi le nom de l'usager). Exemple : "
        "!mesdemandes traitée 95",
        aliases=("md",),
        section=SECTION_BOARD,
        audience=AGENT,
    )
)
async def _mesdemandes(ctx: DirectCtx, args: Args, flags: Flags) -> Reply:
    assert ctx.agent is not None
    me = ctx.agent
    wanted = board.parse_filter(str(args["filtres"] or ""), lambda t: _departement(ctx, t))
    demandes = [d for d in await ctx.tx.demandes_of_agent(me.id) if d.creation_step == "ready"]
    groups = {g.id: g for g in await ctx.tx.list_groups()}
    rows = []
    for d in demandes:
        mine_as_aidant = d.aidant_agent_id == me.id
        expected, mine = board.expected_actor(d.status, caller_is_aidant=mine_as_aidant)
        orgs = tuple(
            (o.name if (o := ctx.policies.organisation(oid)) else oid) for oid in d.organisations
        )
        searched = [d.reference, *orgs, *d.organisations]
        taking_part = {p.group_id for p in await ctx.tx.participants(d.id)}
        searched += [groups[g].name for g in {*d.group_ids, *taking_part} if g in groups]
        private = ""
        if ctx.private and mine_as_aidant and wanted.words:
            usager = (await ctx.tx.load_form(d.id)).usager
            private = fold(f"{usager.prenom} {usager.nom}")
        rows.append(
            board.BoardRow(
                reference=d.reference,
                status=d.status,
                territoire=d.territoire,
                organisations=orgs,
                created_at=d.times.created_at,
                expected=expected,
                mine=mine,
                late=lateness(d.status, d.times, d.territoire, ctx.now, ctx.rules) is not None,
                link=board.room_link(d.room_id, ctx.client_url) if d.room_id else None,
                search_text=fold(" ".join(searched)),
                private_text=private,
            )
        )
    kept = board.select(rows, wanted, private=ctx.private)
    shown = board.render(kept, wanted, ctx.now, total=len(rows))
    return Reply(shown.text, shown.html)


def _departement(ctx: DirectCtx, text: str) -> str | None:
    found = ctx.policies.find_departement(text)
    return found.code if found else None
