"""Policies: check the files, reload them (an invalid file changes nothing)."""

from __future__ import annotations

from bot.commands.admin.context import ADMIN, SECTION_POLICIES, AdminCtx, Args, Flags
from bot.commands.framework import CommandSpec, Reply
from bot.domain.policies import PolicyError


@ADMIN.command(
    CommandSpec(
        "politiques-verifier",
        (),
        "Vérifier les fichiers de politiques sans rien changer.",
        section=SECTION_POLICIES,
    )
)
async def _politiques_verifier(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    try:
        ctx.load_policies(ctx.policies_dir)
    except PolicyError as exc:
        return Reply.error(_policy_problems(ctx, exc, "invalides"))
    return Reply(f"Politiques valides ({ctx.policies_dir}).")


def _policy_problems(ctx: AdminCtx, exc: PolicyError, what: str) -> str:
    lines = [f"Politiques {what} ({ctx.policies_dir}) :"]
    lines += [f"  - {p}" for p in exc.problems]
    return "\n".join(lines)


@ADMIN.command(
    CommandSpec(
        "politiques-recharger",
        (),
        "Recharger les politiques ; un fichier invalide est refusé et les politiques en "
        "vigueur restent appliquées.",
        section=SECTION_POLICIES,
    )
)
async def _politiques_recharger(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    now = ctx.clock.now()
    try:
        policies = ctx.load_policies(ctx.policies_dir)
    except PolicyError as exc:
        async with ctx.store.transaction() as tx:
            await tx.audit(
                "policies_reload_refused",
                actor=ctx.sender,
                details={"problems": [str(p) for p in exc.problems][:20]},
                now=now,
            )
        return Reply.error(
            _policy_problems(ctx, exc, "refusées")
            + "\nRien n'a changé : les politiques précédentes restent en vigueur."
        )
    ctx.policies_ref.replace(policies)
    async with ctx.store.transaction() as tx:
        await tx.audit("policies_reloaded", actor=ctx.sender, now=now)
    return Reply(
        f"Politiques rechargées : {len(policies.organisations)} organisations, "
        f"{len(policies.departements)} départements, {len(policies.categories)} catégories."
    )
