"""Commands of the aidant's direct chat with the bot (opening a demande).

A leaf, like the room's commands: declarations, a small context, one handler each.
The draft itself (keeping, confirming, dropping it) is the opening service's: the
handlers reach it through `DraftOps`, bound by the service to this message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from bot.commands.framework import Arg, CommandSet, CommandSpec, Reply
from bot.domain import dossier as texts
from bot.domain.model import Agent, Role

SECTION = "Ouvrir une demande"
# Who may run a command (checked by `gate`): an active aidant, in an encrypted chat.
AIDANT = "aidant"


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
    found = refusal(ctx) if spec.audience == AIDANT else None
    return found[1] if found else None


DIRECT: CommandSet[DirectCtx] = CommandSet(gate=gate, confirmations=False)

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
