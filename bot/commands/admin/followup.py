"""Follow-up: late demandes, reminders, the weekly digest."""

from __future__ import annotations

from collections.abc import Sequence

from bot.commands.admin.context import ADMIN, SECTION_FOLLOWUP, AdminCtx, Args, Flags, table
from bot.commands.framework import CommandSpec, Reply
from bot.domain.calendar import PARIS
from bot.domain.followup import Late
from bot.domain.model import Demande

_LATE_HEADERS = ("Référence", "Territoire", "Statut", "Retard", "Depuis le", "En retard depuis")


def _late_rows(items: Sequence[tuple[Demande, Late]]) -> list[list[str]]:
    return [
        [
            d.reference,
            d.territoire,
            d.status.label,
            late.kind.label,
            late.since.astimezone(PARIS).strftime("%d/%m/%Y"),
            late.deadline.astimezone(PARIS).strftime("%d/%m/%Y %H:%M"),
        ]
        for d, late in items
    ]


@ADMIN.command(
    CommandSpec(
        "retards",
        (),
        "Lister les demandes en retard (jours ouvrés, jours fériés exclus).",
        section=SECTION_FOLLOWUP,
    )
)
async def _retards(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    late = await ctx.followup.late_now()
    rows = _late_rows(late)
    return table(f"Demandes en retard ({len(rows)})", _LATE_HEADERS, rows, empty="Aucune.")


@ADMIN.destructive(
    CommandSpec(
        "relances",
        (),
        "Relancer maintenant les demandes en retard (dans leur salon, auprès des responsables "
        "de groupe) ; la tâche quotidienne le fait aussi. Une seule relance par retard.",
        destructive=True,
        section=SECTION_FOLLOWUP,
    )
)
async def _relances(ctx: AdminCtx, args: Args, flags: Flags, *, dry_run: bool) -> Reply:
    if dry_run:
        due = await ctx.followup.due()
        if not due:
            return Reply.error("Aucune relance à envoyer : aucun nouveau retard.")
        refs = ", ".join(f"{r.demande.reference} ({r.late.kind.label})" for r in due)
        return Reply(f"{len(due)} relance(s) à envoyer : {refs}.")
    report = await ctx.followup.remind(actor=ctx.sender)
    return Reply(
        f"{len(report.reminders)} relance(s) envoyée(s) ; {report.responsables_told} "
        f"responsable(s) prévenu(s) ; {report.emails} courriel(s)."
    )


@ADMIN.destructive(
    CommandSpec(
        "recapitulatif",
        (),
        "Envoyer maintenant le récapitulatif hebdomadaire aux aidants (demandes qui ont eu une "
        "réponse et qu'ils pourraient clore).",
        destructive=True,
        section=SECTION_FOLLOWUP,
    )
)
async def _recapitulatif(ctx: AdminCtx, args: Args, flags: Flags, *, dry_run: bool) -> Reply:
    if dry_run:
        plan = await ctx.followup.digest_plan()
        n = sum(len(v) for v in plan.values())
        if not plan:
            return Reply.error("Aucun récapitulatif à envoyer.")
        return Reply(f"Récapitulatif pour {len(plan)} aidant(s), {n} demande(s) à clore.")
    sent = await ctx.followup.send_digest(actor=ctx.sender)
    return Reply(f"Récapitulatif envoyé à {sent} aidant(s).")
