"""`!identite-accepter`: an operator accepts a participant's new cross-signing identity.

A separate module registered on the admin room's command set (`ADMIN`), imported by
the admin wiring. See `bot.services.identity_pins` for why keys stop when a
participant's identity changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.commands.admin import ADMIN, SECTION_DIRECTORY, AdminCtx
from bot.commands.framework import Arg, CommandSpec, Reply
from bot.services.identity_pins import ACCEPT_COMMAND, IdentityPins


@ADMIN.command(
    CommandSpec(
        ACCEPT_COMMAND,
        (Arg("utilisateur", "matrix_id", "L'identifiant de la personne (@nom:serveur)."),),
        "Accepter la nouvelle identité de chiffrement d'un participant, après avoir vérifié "
        "avec lui qu'il l'a bien réinitialisée : ses appareils reçoivent de nouveau les clés.",
        section=SECTION_DIRECTORY,
    )
)
async def _identite_accepter(
    ctx: AdminCtx, args: Mapping[str, Any], flags: frozenset[str]
) -> Reply:
    user = str(args["utilisateur"])
    gateway = ctx.admin.gateway
    pins = gateway.device_trust.pins
    if not isinstance(pins, IdentityPins):
        return Reply.error("Le contrôle des identités de chiffrement n'est pas actif.")
    previous = await pins.accept(user, actor=ctx.sender)
    if previous is None:
        return Reply.error(f"Aucun changement d'identité de chiffrement en attente pour {user}.")
    # Their devices are looked at again, and get the keys they missed meanwhile.
    gateway.device_trust.invalidate([user])
    await gateway.catch_up_room_keys([user])
    return Reply(
        f"Nouvelle identité de chiffrement de {user} acceptée : ses appareils qu'elle a "
        "vérifiés reçoivent de nouveau les clés de ses demandes."
    )
