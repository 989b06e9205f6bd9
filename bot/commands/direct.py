"""Commands of the aidant's direct chat with the bot (opening a demande)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.commands.framework import (
    CommandSet,
    CommandSpec,
    NotACommand,
    ParseFailure,
    Reply,
)
from bot.domain.dossier import render_form_template

SECTION = "Ouvrir une demande"


async def _demande(ctx: object, args: Mapping[str, Any], flags: frozenset[str]) -> Reply:
    template = render_form_template()
    return Reply(template.body, template.formatted_body)


DIRECT: CommandSet[object] = CommandSet()
DIRECT.add(
    CommandSpec(
        "demande",
        (),
        "Recevoir le formulaire à remplir pour ouvrir une demande.\n"
        "Renvoyez-le complété : je vous montre un récapitulatif, puis !confirmer "
        "ouvre la demande et !annuler l'abandonne.",
        section=SECTION,
    ),
    _demande,
)


@dataclass(frozen=True, slots=True)
class DirectParsed:
    """`command`: demande | confirmer | annuler | aide | None (free text: maybe a form)."""

    command: str | None
    error: Reply | None = None
    help_topic: str | None = None


def parse(body: str) -> DirectParsed:
    result = DIRECT.parse(body)
    if isinstance(result, NotACommand):
        return DirectParsed(None)
    if isinstance(result, ParseFailure):
        return DirectParsed("erreur", error=result.reply())
    name = result.spec.name
    if name == "aide":
        return DirectParsed("aide", help_topic=result.args.get("commande"))
    return DirectParsed(name)


def help_reply(topic: str | None) -> Reply:
    text = DIRECT.help_text(topic)
    if topic and DIRECT.find(topic) is None:
        return Reply.error(text)
    return Reply(text)
