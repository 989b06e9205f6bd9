"""Directory: groups, organisations and départements."""

from __future__ import annotations

import re

from bot.commands.admin.context import ADMIN, SECTION_DIRECTORY, AdminCtx, Args, Flags, table
from bot.commands.admin.lookups import group_named
from bot.commands.framework import Arg, CommandSpec, Listing, Reply, listing_reply, page_word
from bot.domain.directory_csv import is_valid_email
from bot.domain.directory_search import group_matches, search_words, unquoted
from bot.domain.model import DirectoryConflict, Group


@ADMIN.command(
    CommandSpec(
        "groupes",
        (
            Arg(
                "recherche",
                "rest",
                "Des mots du nom, de l'organisation, des départements ou de la BAL ; "
                "page=N pour une autre page.",
                optional=True,
            ),
        ),
        "Lister ou chercher les groupes. Une longue liste s'affiche par pages, complète en "
        "fichier CSV.",
        section=SECTION_DIRECTORY,
    )
)
async def _groupes(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    try:
        typed, page = page_word(args["recherche"])
    except ValueError as exc:
        return Reply.error(str(exc))
    typed = unquoted(typed)
    async with ctx.store.transaction() as tx:
        groups = await tx.list_groups()
        counts = await tx.agent_counts_by_group()
    orgs = ctx.policies.organisations

    def organisation(g: Group) -> str:
        return orgs[g.organisation_id].name if g.organisation_id in orgs else g.organisation_id

    title = "Groupes"
    if typed:
        words = search_words(typed)
        groups = [g for g in groups if group_matches(g, organisation(g), words)]
        title = f"Groupes trouvés pour « {typed} »"
    rows = [
        [
            g.name,
            organisation(g),
            ", ".join(sorted(g.departements)),
            g.bal or "—",
            str(counts.get(g.id, 0)),
        ]
        for g in groups
    ]
    command = f"!groupes {typed}".strip().replace("{", "{{").replace("}", "}}")
    listing = Listing(
        title=f"{title} ({len(groups)})",
        headers=("Groupe", "Organisation", "Départements", "BAL", "Agents actifs"),
        rows=rows,
        command=command + " page={page}",
        filename="groupes.csv",
        empty="Aucun groupe ne correspond.",
    )
    return listing_reply(listing, page)


def _group_values(
    ctx: AdminCtx, organisation: str, departements: str, bal: str | None
) -> tuple[str, frozenset[str], str | None]:
    org = ctx.policies.find_organisation(organisation)
    if org is None:
        raise ValueError(f"Organisation inconnue « {organisation} » (voir !organisations).")
    codes = set()
    for code in re.split(r"[\s,;]+", departements.strip()):
        if not code:
            continue
        dep = ctx.policies.departement(code)
        if dep is None:
            raise ValueError(f"Département inconnu « {code} » (voir !departements).")
        codes.add(dep.code)
    if not codes:
        raise ValueError("Au moins un département.")
    if bal is not None and bal != "-" and not is_valid_email(bal.lower()):
        raise ValueError(f"BAL invalide « {bal} » : une adresse e-mail est attendue.")
    return org.id, frozenset(codes), None if bal in (None, "-") else bal.lower()


@ADMIN.command(
    CommandSpec(
        "groupe-creer",
        (
            Arg("nom", "text", "Nom du groupe (entre guillemets s'il a des espaces)."),
            Arg("organisation", "text", "L'organisation (voir !organisations)."),
            Arg("departements", "text", "Codes séparés par des virgules : 95,78"),
            Arg("bal", "email", "Boîte aux lettres partagée du groupe.", optional=True),
        ),
        "Créer un groupe.",
        section=SECTION_DIRECTORY,
    )
)
async def _groupe_creer(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    try:
        org, deps, bal = _group_values(ctx, args["organisation"], args["departements"], args["bal"])
    except ValueError as exc:
        return Reply.error(str(exc))
    name = " ".join(str(args["nom"]).split())
    async with ctx.store.transaction() as tx:
        if await group_named(tx, name) is not None:
            return Reply.error(f"Le groupe « {name} » existe déjà : utilisez !groupe-modifier.")
        group = await tx.upsert_group(name=name, organisation_id=org, departements=deps, bal=bal)
        await tx.audit(
            "group_created", actor=ctx.sender, details={"group": group.id}, now=ctx.clock.now()
        )
    return Reply(f"Groupe « {name} » créé.")


@ADMIN.command(
    CommandSpec(
        "groupe-modifier",
        (
            Arg("groupe", "text", "Le groupe (entre guillemets s'il a des espaces)."),
            Arg(
                "champ",
                "choice",
                "Ce qui change.",
                choices=("nom", "organisation", "departements", "bal"),
            ),
            Arg("valeur", "rest", "La nouvelle valeur (- pour retirer la BAL)."),
        ),
        "Modifier un groupe.",
        section=SECTION_DIRECTORY,
    )
)
async def _groupe_modifier(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    field, value = args["champ"], str(args["valeur"]).strip()
    async with ctx.store.transaction() as tx:
        group = await group_named(tx, args["groupe"])
        if group is None:
            return Reply.error(f"Groupe « {args['groupe']} » inconnu (voir !groupes).")
        name = " ".join(value.split()) if field == "nom" else group.name
        try:
            org, deps, bal = _group_values(
                ctx,
                value if field == "organisation" else group.organisation_id,
                value if field == "departements" else ",".join(group.departements),
                value if field == "bal" else group.bal,
            )
            await tx.update_group(
                group.id, name=name, organisation_id=org, departements=deps, bal=bal
            )
        except (ValueError, DirectoryConflict) as exc:
            return Reply.error(str(exc))
        await tx.audit(
            "group_changed",
            actor=ctx.sender,
            details={"group": group.id, "field": field},
            now=ctx.clock.now(),
        )
    return Reply(f"Groupe « {name} » modifié ({field}).")


@ADMIN.command(
    CommandSpec("organisations", (), "Lister les organisations.", section=SECTION_DIRECTORY)
)
async def _organisations(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    rows = [
        [o.id, o.name, "aidant" if o.kind.value == "aidant" else "opérateur"]
        for o in ctx.policies.organisations.values()
    ]
    return table(f"Organisations ({len(rows)})", ("Code", "Nom", "Côté"), rows)


@ADMIN.command(
    CommandSpec("departements", (), "Lister les départements.", section=SECTION_DIRECTORY)
)
async def _departements(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    rows = [[d.code, d.name] for d in ctx.policies.departements.values()]
    return table(f"Départements ({len(rows)})", ("Code", "Nom"), rows)
