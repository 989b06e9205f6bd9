"""Health: the state of the service's components."""

from __future__ import annotations

from bot.commands.admin.context import ADMIN, SECTION_HEALTH, AdminCtx, Args, Flags, table
from bot.commands.framework import CommandSpec, Reply


@ADMIN.command(
    CommandSpec(
        "sante",
        (),
        "État du service : serveur Matrix, base de données, relais SMTP, file d'envoi.",
        section=SECTION_HEALTH,
    )
)
async def _sante(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    checks = await ctx.health.checks()
    snapshot = await ctx.health.snapshot()
    rows = [[name, r.state, r.detail or ""] for name, r in checks.items()]
    rows.append(["file d'envoi", f"{snapshot.outbox_pending} message(s)", ""])
    rows.append(["demandes en retard", str(snapshot.late_demandes), ""])
    return table("Santé du service", ("Composant", "État", "Détail"), rows)
