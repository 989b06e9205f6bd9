"""Directory: the CSV import (`!import-annuaire`), previewed then applied all or nothing."""

from __future__ import annotations

from bot.commands.admin.context import ADMIN, SECTION_DIRECTORY, AdminCtx, Args, Flags
from bot.commands.admin.lookups import group_named
from bot.commands.framework import CommandSpec, Reply, render_table
from bot.domain.directory_csv import parse_directory_csv
from bot.ports import AttachmentError


@ADMIN.destructive(
    CommandSpec(
        "import-annuaire",
        (),
        "Importer l'annuaire depuis le dernier fichier CSV que vous avez joint dans ce salon "
        "(en-têtes Administration+). Montre un aperçu ligne par ligne ; tout ou rien.",
        destructive=True,
        section=SECTION_DIRECTORY,
    )
)
async def _import_annuaire(ctx: AdminCtx, args: Args, flags: Flags, *, dry_run: bool) -> Reply:
    if ctx.file is None:
        return Reply.error(
            "Aucun fichier : joignez d'abord le fichier CSV dans ce salon, puis tapez "
            "!import-annuaire."
        )
    try:
        _, _, raw = await ctx.fetch_attachment(ctx.file.content, max_bytes=ctx.max_file_bytes)
    except AttachmentError as exc:
        return Reply.error(f"Fichier « {ctx.file.filename} » illisible. {exc}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")  # Excel on Windows
    parsed = parse_directory_csv(text, ctx.policies, ctx.membership())
    name = ctx.file.filename
    if not parsed.ok:
        async with ctx.store.transaction() as tx:
            await tx.audit(
                "directory_import_refused",
                actor=ctx.sender,
                details={"errors": len(parsed.errors), "file": name},
                now=ctx.clock.now(),
            )
        lines = [
            f"Import de « {name} » refusé : {len(parsed.errors)} problème(s), rien ne sera "
            "importé. Corrigez le fichier et joignez-le à nouveau."
        ]
        lines += [f"  ligne {p.line} : {p.message}" for p in parsed.errors]
        return Reply.error("\n".join(lines))
    if dry_run:
        async with ctx.store.transaction() as tx:
            rows = []
            for row in parsed.rows:
                found = None
                if row.matrix_id:
                    found = await tx.get_agent_by_matrix_id(row.matrix_id)
                if found is None and row.email:
                    found = await tx.get_agent_by_email(row.email)
                what = "création" if found is None else f"mise à jour (n° {found.id})"
                roles = ", ".join(sorted(r.value for r in row.roles))
                who = f"{row.first_name} {row.last_name}"
                rows.append([str(row.line), who, row.group_name, roles, what])
            new_groups = [g.name for g in parsed.groups() if await group_named(tx, g.name) is None]
        text_, markup = render_table(
            ("Ligne", "Agent", "Groupe", "Rôles", "Action"),
            rows,
            title=f"Aperçu de l'import de « {name} » : {len(parsed.rows)} agent(s), "
            f"{len(parsed.groups())} groupe(s) dont {len(new_groups)} nouveau(x)",
        )
        return Reply(text_, markup)
    async with ctx.store.transaction() as tx:
        groups, created, updated = await ctx.import_directory(
            tx, parsed, actor=ctx.sender, now=ctx.clock.now()
        )
        ids = []
        for row in parsed.rows:
            agent = (await tx.get_agent_by_matrix_id(row.matrix_id) if row.matrix_id else None) or (
                await tx.get_agent_by_email(row.email) if row.email else None
            )
            if agent is not None:
                ids.append(agent.id)
    joined = await ctx.directory.join_group_demandes(ids, actor=ctx.sender)
    await ctx.sync_members()
    return Reply(
        f"Import de « {name} » réussi : {groups} groupe(s), {created} agent(s) créé(s), "
        f"{updated} mis à jour."
        + (f" {len(joined)} participation(s) ajoutée(s) aux demandes ouvertes." if joined else "")
    )
