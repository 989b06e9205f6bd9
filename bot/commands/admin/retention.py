"""Retention: apply the data retention rules (dry run shows what would be done)."""

from __future__ import annotations

from bot.commands.admin.context import ADMIN, SECTION_RETENTION, AdminCtx, Args, Flags, fmt_moment
from bot.commands.framework import CommandSpec, Reply


@ADMIN.destructive(
    CommandSpec(
        "retention",
        (),
        "Appliquer la conservation des données : données de l'usager et mandat effacés après "
        "le délai suivant la clôture, salon vidé et purgé du serveur, pièces jointes supprimées, "
        "journal d'audit ancien supprimé. --dry-run montre ce qui serait fait.",
        destructive=True,
        section=SECTION_RETENTION,
    )
)
async def _retention(ctx: AdminCtx, args: Args, flags: Flags, *, dry_run: bool) -> Reply:
    if dry_run:
        p = await ctx.retention.plan()
        waiting = await ctx.retention.rooms_waiting()
        rules = ctx.retention.rules
        lines = [
            "Conservation — ce qui serait fait :",
            f"  - données de l'usager effacées et salon purgé ({rules.usager_months} mois après "
            f"la clôture) : {len(p.wipe)} demande(s)"
            + (" : " + ", ".join(d.reference for d in p.wipe) if p.wipe else ""),
            f"  - pièces jointes supprimées (après {rules.attachment_days} jours) : "
            f"{len(p.attachments)}",
            f"  - salons déjà effacés, purge à reprendre : {len(waiting)}",
            "  - brouillons non confirmés effacés s'ils datent d'avant le "
            f"{fmt_moment(p.drafts_before)}",
            f"  - journal d'audit : entrées d'avant le {fmt_moment(p.audit_before)} supprimées",
        ]
        if not ctx.retention.purge_configured:
            lines.append(
                "  ⚠ jeton d'administration Synapse absent (admin.synapse_admin_token) : la purge "
                "des salons et des fichiers sur le serveur attendra."
            )
        return Reply("\n".join(lines))
    report = await ctx.retention.run(actor=ctx.sender)
    text = (
        f"Conservation appliquée : {len(report.wiped)} demande(s) effacée(s), "
        f"{len(report.rooms_purged)} salon(s) purgé(s), {report.attachments_deleted} pièce(s) "
        f"jointe(s) supprimée(s), {report.drafts_wiped} brouillon(s) effacé(s), "
        f"{report.audit_purged} entrée(s) d'audit supprimée(s)."
    )
    if report.rooms_waiting or report.attachments_waiting:
        text += (
            f" En attente (serveur indisponible ou jeton d'administration absent) : "
            f"{len(report.rooms_waiting)} salon(s), {report.attachments_waiting} fichier(s)."
        )
    if report.problems:
        text += " Problèmes : " + "; ".join(report.problems)
    return Reply(text)
