"""`!identite-accepter`: an operator accepts a participant's new cross-signing identity.

Why keys stop when a participant's identity changes: see `bot.services.identity_pins`.
"""

from __future__ import annotations

from bot.commands.admin.context import ADMIN, SECTION_DIRECTORY, AdminCtx, Args, Flags
from bot.commands.framework import Arg, CommandSpec, Reply
from bot.ports import ACCEPT_IDENTITY_COMMAND


@ADMIN.command(
    CommandSpec(
        ACCEPT_IDENTITY_COMMAND,
        (Arg("utilisateur", "matrix_id", "L'identifiant de la personne (@nom:serveur)."),),
        "Accepter la nouvelle identité de chiffrement d'un participant, après avoir vérifié "
        "avec lui qu'il l'a bien réinitialisée : ses appareils reçoivent de nouveau les clés.",
        section=SECTION_DIRECTORY,
    )
)
async def _identite_accepter(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    user = str(args["utilisateur"])
    if ctx.identities is None:
        return Reply.error("Le contrôle des identités de chiffrement n'est pas actif.")
    if not await ctx.identities.accept(user, actor=ctx.sender):
        return Reply.error(f"Aucun changement d'identité de chiffrement en attente pour {user}.")
    return Reply(
        f"Nouvelle identité de chiffrement de {user} acceptée : ses appareils qu'elle a "
        "vérifiés reçoivent de nouveau les clés de ses demandes."
    )
