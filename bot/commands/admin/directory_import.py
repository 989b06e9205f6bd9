"""Directory: the CSV import (`!import-annuaire`), previewed then applied all or nothing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from bot.commands.admin.context import ADMIN, SECTION_DIRECTORY, AdminCtx, Args, Flags
from bot.commands.framework import LISTING_BUDGET, CommandSpec, Reply, message_size
from bot.domain.directory_csv import parse_directory_csv
from bot.domain.directory_import import (
    PREVIEW_HEADERS,
    ImportRefused,
    PlannedLine,
    inactive_text,
    refusal_headline,
)
from bot.ports import AttachmentError


@ADMIN.destructive(
    CommandSpec(
        "import-annuaire",
        (),
        "Importer l'annuaire depuis le dernier fichier CSV que vous avez joint dans ce salon "
        "(en-têtes Administration+). Montre un aperçu ligne par ligne ; tout ou rien. Mêmes "
        "règles que !agent-modifier et !agent-reactiver : les contacts d'un agent qui "
        "participe à des demandes ne changent pas, un agent désactivé le reste.",
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
        headline = (
            f"Import de « {name} » refusé : {len(parsed.errors)} problème(s), rien ne sera "
            "importé. Corrigez le fichier et joignez-le à nouveau."
        )
        return _problems(headline, [(p.line, p.message) for p in parsed.errors])
    plan = await ctx.directory.preview_import(parsed, actor=ctx.sender, file=name)
    if plan.refused:
        return _refused(plan.refused, name)
    if dry_run:
        # A national file: the first lines here, every line of the preview in the file.
        return Reply.table(
            PREVIEW_HEADERS,
            plan.preview_rows(),
            title=f"Aperçu de l'import de « {name} » : {len(parsed.rows)} agent(s), "
            f"{len(parsed.groups())} groupe(s) dont {len(plan.new_groups)} nouveau(x)",
            filename="apercu-import.csv",
        )
    try:
        done = await ctx.directory.import_directory(parsed, actor=ctx.sender, file=name)
    except ImportRefused as exc:  # the directory changed since the preview
        return _refused(exc.refused, name)
    joined = (
        f" {len(done.joined)} participation(s) ajoutée(s) aux demandes ouvertes."
        if done.joined
        else ""
    )
    return Reply(
        f"Import de « {name} » réussi : {done.groups} groupe(s), {done.created} agent(s) "
        f"créé(s), {done.updated} mis à jour." + joined + inactive_text(done.inactive)
    )


def _refused(refused: tuple[PlannedLine, ...], name: str) -> Reply:
    return _problems(refusal_headline(refused, name), [(p.line, p.refusal or "") for p in refused])


def _problems(headline: str, problems: Sequence[tuple[int, str]]) -> Reply:
    """Every problem with its line; past the listing budget, the first ones and a file."""
    text = "\n".join([headline, *(f"  ligne {line} : {message}" for line, message in problems)])
    if message_size(text, None) <= LISTING_BUDGET:
        return Reply.error(text)
    listing = Reply.table(
        ("Ligne", "Problème"),
        [[str(line), message] for line, message in problems],
        title=headline,
        filename="problemes-import.csv",
    )
    return replace(listing, is_error=True)
