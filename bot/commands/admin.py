"""Commands of the admin room: directory, demandes (metadata), policies, follow-up,
statistics, retention, health.

Declared once here; `!aide` is generated from the declarations. Each handler
gets an `AdminCtx` (the services it may use, the operator, the last file they
attached) and returns a `Reply`; the admin room posts it, files included.
Operators see metadata only: nothing here reads a usager's data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from bot.commands.framework import (
    Arg,
    Attachment,
    CommandSet,
    CommandSpec,
    Flag,
    Reply,
    render_table,
)
from bot.domain.calendar import PARIS, paris_date
from bot.domain.directory_csv import is_valid_email, parse_directory_csv
from bot.domain.followup import FollowUpRules
from bot.domain.model import Agent, DirectoryConflict, Group, Role
from bot.domain.policies import (
    MembershipRules,
    Policies,
    PolicyError,
    fold,
    is_valid_matrix_user_id,
)
from bot.domain.stats import (
    DemandeFilter,
    FilterError,
    compute,
    export_csv,
    parse_filter,
    stats_rows,
)
from bot.matrix.attachments import AttachmentError
from bot.policy_loader import load_policies
from bot.ports import PoliciesRef
from bot.services.admin_room import AdminRoom, ReceivedFile
from bot.services.chart import render_png
from bot.services.clock import Clock
from bot.services.directory import apply_import
from bot.services.directory_admin import DirectoryAdmin
from bot.services.followup import FollowUp, describe_late
from bot.services.health import Health
from bot.services.retention import Retention
from bot.services.statistics import collect, select
from bot.store.db import Store
from bridge.outbound import AttachmentFetcher

SECTION_DIRECTORY = "Annuaire"
SECTION_DEMANDES = "Demandes (métadonnées)"
SECTION_POLICIES = "Politiques"
SECTION_FOLLOWUP = "Suivi"
SECTION_STATS = "Statistiques"
SECTION_RETENTION = "Conservation des données"
SECTION_HEALTH = "Santé du service"
LIST_LIMIT = 50
FILTERS_HELP = (
    "filtres : statut=…, territoire=…, organisation=…, periode=2026-03 | 2026 | 30j, "
    "du=JJ/MM/AAAA, au=JJ/MM/AAAA, retard"
)
ROLE_WORDS = {fold(r.value): r for r in Role} | {"operateur": Role.OPERATEUR}


@dataclass(frozen=True)
class AdminCtx:
    store: Store
    admin: AdminRoom
    directory: DirectoryAdmin
    followup: FollowUp
    retention: Retention
    health: Health
    clock: Clock
    rules: FollowUpRules
    policies_dir: Path
    policies_ref: PoliciesRef
    membership: Callable[[], MembershipRules]  # with the bot's own homeserver
    fetch_attachment: AttachmentFetcher
    max_file_bytes: int
    sender: str
    event_id: str
    file: ReceivedFile | None

    @property
    def policies(self) -> Policies:
        return self.policies_ref.current


ADMIN: CommandSet[AdminCtx] = CommandSet()
Args = Mapping[str, Any]
Flags = frozenset[str]


def _fmt(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(PARIS).strftime("%d/%m/%Y %H:%M")


def _table(title: str, headers: Sequence[str], rows: list[list[str]], **kw: Any) -> Reply:
    return Reply.table(headers, rows, title=title, **kw)


# --------------------------------------------------------------------------- directory


def _roles(text: str) -> frozenset[Role]:
    roles = set()
    for word in re.split(r"[\s,;+]+", text.strip()):
        if not word:
            continue
        role = ROLE_WORDS.get(fold(word))
        if role is None:
            raise ValueError(
                f"Rôle inconnu « {word} » : aidant, instructeur, responsable, operateur."
            )
        roles.add(role)
    if not roles:
        raise ValueError("Au moins un rôle : aidant, instructeur, responsable, operateur.")
    return frozenset(roles)


def _contacts(values: Sequence[str | None]) -> tuple[str | None, str | None]:
    matrix_id = email = None
    for value in values:
        if not value or value == "-":
            continue
        if value.startswith("@"):
            if not is_valid_matrix_user_id(value):
                raise ValueError(f"« {value} » n'est pas un identifiant Matrix (@nom:serveur).")
            matrix_id = value
        elif is_valid_email(value.lower()):
            email = value.lower()
        else:
            raise ValueError(f"« {value} » n'est ni un identifiant Matrix ni une adresse e-mail.")
    if matrix_id is None and email is None:
        raise ValueError("Indiquez un identifiant Matrix et/ou une adresse e-mail.")
    return matrix_id, email


async def _find_agent(tx: Any, text: str) -> Agent | None:
    text = text.strip()
    if text.startswith("@"):
        found: Agent | None = await tx.get_agent_by_matrix_id(text)
        return found
    if "@" in text:
        found = await tx.get_agent_by_email(text)
        return found
    number = text.removeprefix("n°").strip()
    if number.isdigit():
        found = await tx.get_agent(int(number))
        return found
    return None


async def _group_named(tx: Any, name: str) -> Group | None:
    found: Group | None = await tx.get_group_by_name(name)
    if found is not None:
        return found
    wanted = fold(name)
    for group in await tx.list_groups():
        if fold(group.name) == wanted:
            return group  # type: ignore[no-any-return]
    return None


def _agent_row(a: Agent, groups: Mapping[int, Group]) -> list[str]:
    group = groups.get(a.group_id) if a.group_id is not None else None
    return [
        str(a.id),
        a.display_name,
        a.matrix_id or "—",
        a.email or "—",
        group.name if group else "—",
        ", ".join(sorted(r.value for r in a.roles)),
        "actif" if a.active else "désactivé",
    ]


@ADMIN.command(
    CommandSpec(
        "agents",
        (Arg("groupe", "rest", "Ne lister que les agents de ce groupe.", optional=True),),
        "Lister les agents de l'annuaire (les actifs ; --tous pour les désactivés aussi).",
        flags=(Flag("tous", "Inclure les agents désactivés."),),
        section=SECTION_DIRECTORY,
    )
)
async def _agents(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    async with ctx.store.transaction() as tx:
        groups = {g.id: g for g in await tx.list_groups()}
        agents = await tx.list_agents(active_only="tous" not in flags)
        if args["groupe"]:
            group = await _group_named(tx, args["groupe"])
            if group is None:
                return Reply.error(f"Groupe « {args['groupe']} » inconnu (voir !groupes).")
            agents = [a for a in agents if a.group_id == group.id]
    headers = ("N°", "Nom", "Matrix", "Courriel", "Groupe", "Rôles", "État")
    return _table(f"Agents ({len(agents)})", headers, [_agent_row(a, groups) for a in agents])


@ADMIN.command(
    CommandSpec(
        "agent-ajouter",
        (
            Arg("prenom", "text", "Prénom."),
            Arg("nom", "text", "Nom."),
            Arg("groupe", "text", "Nom du groupe (entre guillemets), ou - sans groupe."),
            Arg("roles", "text", "Rôles séparés par des virgules : aidant,instructeur,…"),
            Arg("contact", "text", "Identifiant Matrix (@nom:serveur) ou adresse e-mail."),
            Arg("contact2", "text", "L'autre des deux, s'il y en a.", optional=True),
        ),
        "Ajouter un agent à l'annuaire. Un instructeur rejoint les demandes ouvertes de son "
        "groupe ; un opérateur est invité dans ce salon.",
        section=SECTION_DIRECTORY,
    )
)
async def _agent_ajouter(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    try:
        roles = _roles(args["roles"])
        matrix_id, email = _contacts([args["contact"], args["contact2"]])
    except ValueError as exc:
        return Reply.error(str(exc))
    if matrix_id and (refusal := _server_refusal(ctx, matrix_id)):
        return Reply.error(refusal)
    async with ctx.store.transaction() as tx:
        group = None
        if args["groupe"] != "-":
            group = await _group_named(tx, args["groupe"])
            if group is None:
                return Reply.error(f"Groupe « {args['groupe']} » inconnu (voir !groupes).")
        for value, lookup in (
            (matrix_id, tx.get_agent_by_matrix_id),
            (email, tx.get_agent_by_email),
        ):
            if value and await lookup(value) is not None:
                return Reply.error(f"{value} est déjà dans l'annuaire : utilisez !agent-modifier.")
        agent, _ = await tx.upsert_agent(
            first_name=args["prenom"].strip(),
            last_name=args["nom"].strip(),
            email=email,
            matrix_id=matrix_id,
            group_id=group.id if group else None,
            roles=roles,
        )
        await tx.audit(
            "agent_added",
            actor=ctx.sender,
            details={"agent": agent.id, "roles": sorted(r.value for r in roles)},
            now=ctx.clock.now(),
        )
    return await _after_change(ctx, agent, f"Agent n° {agent.id} ajouté : {agent.display_name}.")


async def _after_change(ctx: AdminCtx, agent: Agent, text: str) -> Reply:
    joined = await ctx.directory.join_group_demandes([agent.id], actor=ctx.sender)
    if joined:
        text += f" Il rejoint {len(joined)} demande(s) ouverte(s) de son groupe : " + ", ".join(
            joined
        )
        text += "."
    await ctx.admin.sync_members()
    return Reply(text)


def _server_refusal(ctx: AdminCtx, matrix_id: str) -> str | None:
    """A Matrix account on a homeserver that may not join demandes: refused at entry."""
    server = matrix_id.split(":", 1)[1].lower()
    if ctx.membership().homeserver_allowed(server):
        return None
    return (
        f"Le serveur Matrix « {server} » de {matrix_id} n'est pas autorisé pour ce service "
        "(politique allowed_homeservers) : cet agent ne pourrait entrer dans aucune demande. "
        "Ajoutez le serveur à la politique, ou enregistrez l'agent par son adresse e-mail."
    )


_CHANGEABLE = ("prenom", "nom", "groupe", "roles", "email", "matrix")


@ADMIN.command(
    CommandSpec(
        "agent-modifier",
        (
            Arg("agent", "text", "L'agent : identifiant Matrix, adresse e-mail ou n°."),
            Arg("champ", "choice", "Ce qui change.", choices=_CHANGEABLE),
            Arg("valeur", "rest", "La nouvelle valeur (- pour effacer email, matrix, groupe)."),
        ),
        "Modifier un agent (nom, groupe, rôles, contacts).",
        section=SECTION_DIRECTORY,
    )
)
async def _agent_modifier(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    field, value = args["champ"], str(args["valeur"]).strip()
    async with ctx.store.transaction() as tx:
        agent = await _find_agent(tx, args["agent"])
        if agent is None:
            return Reply.error(f"Agent « {args['agent']} » introuvable (voir !agents --tous).")
        try:
            changed = await _changed(tx, agent, field, value)
        except ValueError as exc:
            return Reply.error(str(exc))
        if changed.matrix_id and changed.matrix_id != agent.matrix_id:
            refusal = _server_refusal(ctx, changed.matrix_id)
            if refusal:
                return Reply.error(refusal)
        if (changed.matrix_id, changed.email) != (agent.matrix_id, agent.email) and (
            await ctx.directory.departures(tx, agent)
        ):
            return Reply.error(
                "Cet agent participe à des demandes où il est connu par son ancien contact : "
                "désactivez-le puis ajoutez-le à nouveau."
            )
        try:
            await tx.update_agent(changed)
        except DirectoryConflict as exc:
            return Reply.error(str(exc))
        await tx.audit(
            "agent_changed",
            actor=ctx.sender,
            details={"agent": agent.id, "field": field},
            now=ctx.clock.now(),
        )
    return await _after_change(ctx, changed, f"Agent n° {agent.id} modifié ({field}).")


async def _changed(tx: Any, agent: Agent, field: str, value: str) -> Agent:
    if field in ("prenom", "nom"):
        if not value:
            raise ValueError("La valeur ne peut pas être vide.")
        if field == "prenom":
            return replace(agent, first_name=value)
        return replace(agent, last_name=value)
    if field == "roles":
        return replace(agent, roles=_roles(value))
    if field == "groupe":
        if value == "-":
            return replace(agent, group_id=None)
        group = await _group_named(tx, value)
        if group is None:
            raise ValueError(f"Groupe « {value} » inconnu (voir !groupes).")
        return replace(agent, group_id=group.id)
    if field == "email":
        email = None if value == "-" else value.lower()
        if email is not None and not is_valid_email(email):
            raise ValueError(f"« {value} » n'est pas une adresse e-mail valide.")
        new = replace(agent, email=email)
    else:
        matrix_id = None if value == "-" else value
        if matrix_id is not None and not is_valid_matrix_user_id(matrix_id):
            raise ValueError(f"« {value} » n'est pas un identifiant Matrix (@nom:serveur).")
        new = replace(agent, matrix_id=matrix_id)
    if new.email is None and new.matrix_id is None:
        raise ValueError("Un agent garde au moins un identifiant Matrix ou une adresse e-mail.")
    return new


@ADMIN.destructive(
    CommandSpec(
        "agent-desactiver",
        (Arg("agent", "text", "L'agent : identifiant Matrix, adresse e-mail ou n°."),),
        "Désactiver un agent : il quitte toutes ses demandes (retiré du salon) et ses adresses "
        "de réponse par courriel sont révoquées.",
        destructive=True,
        section=SECTION_DIRECTORY,
    )
)
async def _agent_desactiver(ctx: AdminCtx, args: Args, flags: Flags, *, dry_run: bool) -> Reply:
    async with ctx.store.transaction() as tx:
        agent = await _find_agent(tx, args["agent"])
        if agent is None:
            return Reply.error(f"Agent « {args['agent']} » introuvable (voir !agents --tous).")
        if not agent.active:
            return Reply.error(f"{agent.display_name} est déjà désactivé.")
        departures = await ctx.directory.departures(tx, agent)
    refs = ", ".join(d.reference for d in departures) or "aucune"
    if dry_run:
        return Reply(
            f"Désactivation de {agent.display_name} (n° {agent.id}) : il sera retiré de "
            f"{len(departures)} demande(s) ({refs}) et ses adresses de réponse par courriel "
            "seront révoquées."
            + (" Il quittera aussi ce salon." if agent.has(Role.OPERATEUR) else "")
        )
    left = await ctx.directory.deactivate(agent.id, actor=ctx.sender)
    return Reply(
        f"{agent.display_name} est désactivé et a quitté {len(left)} demande(s) : "
        + (", ".join(d.reference for d in left) or "aucune")
        + "."
    )


@ADMIN.command(
    CommandSpec(
        "agent-reactiver",
        (Arg("agent", "text", "L'agent : identifiant Matrix, adresse e-mail ou n°."),),
        "Réactiver un agent désactivé (il ne retrouve que les demandes ouvertes de son groupe).",
        section=SECTION_DIRECTORY,
    )
)
async def _agent_reactiver(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    async with ctx.store.transaction() as tx:
        agent = await _find_agent(tx, args["agent"])
        if agent is None:
            return Reply.error(f"Agent « {args['agent']} » introuvable (voir !agents --tous).")
        if agent.active:
            return Reply.error(f"{agent.display_name} est déjà actif.")
        await tx.set_agent_active(agent.id, True)
        await tx.audit(
            "agent_reactivated", actor=ctx.sender, details={"agent": agent.id}, now=ctx.clock.now()
        )
    return await _after_change(ctx, replace(agent, active=True), f"{agent.display_name} réactivé.")


@ADMIN.command(CommandSpec("groupes", (), "Lister les groupes.", section=SECTION_DIRECTORY))
async def _groupes(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    async with ctx.store.transaction() as tx:
        groups = await tx.list_groups()
        counts = await tx.agent_counts_by_group()
    orgs = ctx.policies.organisations
    rows = [
        [
            g.name,
            orgs[g.organisation_id].name if g.organisation_id in orgs else g.organisation_id,
            ", ".join(sorted(g.departements)),
            g.bal or "—",
            str(counts.get(g.id, 0)),
        ]
        for g in groups
    ]
    headers = ("Groupe", "Organisation", "Départements", "BAL", "Agents actifs")
    return _table(f"Groupes ({len(groups)})", headers, rows)


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
        if await _group_named(tx, name) is not None:
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
        group = await _group_named(tx, args["groupe"])
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
    return _table(f"Organisations ({len(rows)})", ("Code", "Nom", "Côté"), rows)


@ADMIN.command(
    CommandSpec("departements", (), "Lister les départements.", section=SECTION_DIRECTORY)
)
async def _departements(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    rows = [[d.code, d.name] for d in ctx.policies.departements.values()]
    return _table(f"Départements ({len(rows)})", ("Code", "Nom"), rows)


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
            new_groups = [g.name for g in parsed.groups() if await _group_named(tx, g.name) is None]
        text_, markup = render_table(
            ("Ligne", "Agent", "Groupe", "Rôles", "Action"),
            rows,
            title=f"Aperçu de l'import de « {name} » : {len(parsed.rows)} agent(s), "
            f"{len(parsed.groups())} groupe(s) dont {len(new_groups)} nouveau(x)",
        )
        return Reply(text_, markup)
    async with ctx.store.transaction() as tx:
        groups, created, updated = await apply_import(
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
    await ctx.admin.sync_members()
    return Reply(
        f"Import de « {name} » réussi : {groups} groupe(s), {created} agent(s) créé(s), "
        f"{updated} mis à jour."
        + (f" {len(joined)} participation(s) ajoutée(s) aux demandes ouvertes." if joined else "")
    )


# --------------------------------------------------------------------------- demandes


def _filter(ctx: AdminCtx, text: str | None) -> DemandeFilter:
    policies = ctx.policies

    def organisation(value: str) -> str | None:
        org = policies.find_organisation(value)
        return org.id if org else None

    def territoire(value: str) -> str | None:
        dep = policies.departement(value)
        return dep.code if dep else None

    return parse_filter(
        text,
        today=paris_date(ctx.clock.now()),
        find_organisation=organisation,
        known_territoire=territoire,
    )


@ADMIN.command(
    CommandSpec(
        "demandes",
        (Arg("filtres", "rest", FILTERS_HELP, optional=True),),
        "Lister les demandes (métadonnées seulement), avec des filtres.",
        section=SECTION_DEMANDES,
    )
)
async def _demandes(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    try:
        f = _filter(ctx, args["filtres"])
    except FilterError as exc:
        return Reply.error(str(exc))
    async with ctx.store.transaction() as tx:
        found = select(await collect(tx, ctx.clock.now(), ctx.rules), f)
    rows = [
        [
            d.reference,
            d.territoire,
            ", ".join(d.organisations),
            d.status.label,
            _fmt(d.times.created_at),
            "oui" if d.late else "",
        ]
        for d in found[:LIST_LIMIT]
    ]
    title = f"Demandes — {f.describe()} : {len(found)}"
    if len(found) > LIST_LIMIT:
        title += f" (les {LIST_LIMIT} premières ; précisez les filtres ou utilisez !export)"
    headers = ("Référence", "Territoire", "Organisations", "Statut", "Ouverte le", "Retard")
    return _table(title, headers, rows)


@ADMIN.command(
    CommandSpec(
        "demande",
        (Arg("reference", "text", "La référence, ex. A-2026-000123."),),
        "Chronologie d'une demande : ouverture, invitations, statuts, participants.",
        section=SECTION_DEMANDES,
    )
)
async def _demande(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    reference = str(args["reference"]).strip().upper()
    async with ctx.store.transaction() as tx:
        d = await tx.get_demande_by_reference(reference)
        if d is None:
            return Reply.error(f"Demande {reference} introuvable.")
        events: list[tuple[datetime, str]] = [(d.times.created_at, "ouverture")]
        participants = []
        for p in await tx.participants(d.id, active_only=False):
            agent = await tx.get_agent(p.agent_id)
            name = agent.display_name if agent else f"agent n° {p.agent_id}"
            participants.append(
                f"{name} ({p.kind}{', par courriel' if p.matrix_id is None else ''}"
                f"{', retiré' if not p.active else ''})"
            )
        for entry in await tx.audit_entries(reference=reference):
            if entry.action.startswith("status_") or entry.action in (
                "participant_added",
                "participant_removed",
                "joined",
                "left",
                "intruder_kicked",
                "intruder_banned",
                "late_reminded",
                "usager_data_wiped",
                "room_purged",
            ):
                who = entry.actor
                label = entry.action.replace("_", " ")
                if "agent" in entry.details:
                    agent = await tx.get_agent(int(entry.details["agent"]))
                    label += f" : {agent.display_name if agent else entry.details['agent']}"
                events.append((entry.at, f"{label} (par {who})"))
    events.sort(key=lambda e: e[0])
    lines = [
        f"Demande {d.reference} — {d.status.label}, territoire {d.territoire}, "
        f"organisations {', '.join(d.organisations)}",
        "",
        "Chronologie :",
        *(f"  {_fmt(at)} — {what}" for at, what in events),
        "",
        "Participants : " + ("; ".join(participants) or "aucun"),
    ]
    return Reply("\n".join(lines))


@ADMIN.command(
    CommandSpec(
        "audit",
        (Arg("reference", "text", "La référence d'une demande."),),
        "Le journal d'audit d'une demande.",
        section=SECTION_DEMANDES,
    )
)
async def _audit(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    reference = str(args["reference"]).strip().upper()
    async with ctx.store.transaction() as tx:
        entries = await tx.audit_entries(reference=reference)
    rows = [
        [
            _fmt(e.at),
            e.actor,
            e.action,
            ", ".join(f"{k}={v}" for k, v in sorted(e.details.items()) if k != "mxc"),
        ]
        for e in entries
    ]
    return _table(
        f"Audit de {reference} ({len(rows)})", ("Quand", "Qui", "Action", "Détails"), rows
    )


# --------------------------------------------------------------------------- policies


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
        load_policies(ctx.policies_dir)
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
        policies = load_policies(ctx.policies_dir)
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


# --------------------------------------------------------------------------- follow-up

_LATE_HEADERS = ("Référence", "Territoire", "Statut", "Retard", "Depuis le", "En retard depuis")


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
    rows = describe_late(late, ctx.clock.now())
    return _table(f"Demandes en retard ({len(rows)})", _LATE_HEADERS, rows, empty="Aucune.")


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


# --------------------------------------------------------------------------- statistics


@ADMIN.command(
    CommandSpec(
        "stats",
        (Arg("filtres", "rest", FILTERS_HELP, optional=True),),
        "Statistiques (ouvertes, clôturées, résolues en moins de 7 jours, délais médians, "
        "utilité, retards) : un tableau et un graphique.",
        section=SECTION_STATS,
    )
)
async def _stats(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    try:
        f = _filter(ctx, args["filtres"])
    except FilterError as exc:
        return Reply.error(str(exc))
    now = ctx.clock.now()
    async with ctx.store.transaction() as tx:
        demandes = await collect(tx, now, ctx.rules)
    stats = compute(demandes, f, now)
    title = f"Statistiques — {f.describe()}"
    text, markup = render_table(("Indicateur", "Valeur"), stats_rows(stats), title=title)
    png = render_png(stats, title)
    stamp = now.astimezone(PARIS).strftime("%Y%m%d-%H%M")
    return Reply(text, markup, attachments=(Attachment(f"stats-{stamp}.png", "image/png", png),))


@ADMIN.command(
    CommandSpec(
        "export",
        (Arg("filtres", "rest", FILTERS_HELP, optional=True),),
        "Export CSV des métadonnées des demandes (colonnes Administration+, aucune donnée "
        "personnelle).",
        section=SECTION_STATS,
    )
)
async def _export(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    try:
        f = _filter(ctx, args["filtres"])
    except FilterError as exc:
        return Reply.error(str(exc))
    now = ctx.clock.now()
    async with ctx.store.transaction() as tx:
        found = select(await collect(tx, now, ctx.rules), f)
        await tx.audit(
            "demandes_exported", actor=ctx.sender, details={"count": len(found)}, now=now
        )
    stamp = now.astimezone(PARIS).strftime("%Y%m%d-%H%M")
    data = export_csv(found)
    return Reply(
        f"Export de {len(found)} demande(s) — {f.describe()}.",
        attachments=(Attachment(f"demandes-{stamp}.csv", "text/csv", data),),
    )


# --------------------------------------------------------------------------- retention


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
            f"  - brouillons non confirmés effacés s'ils datent d'avant le {_fmt(p.drafts_before)}",
            f"  - journal d'audit : entrées d'avant le {_fmt(p.audit_before)} supprimées",
        ]
        if not ctx.retention.synapse.configured:
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


# --------------------------------------------------------------------------- health


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
    return _table("Santé du service", ("Composant", "État", "Détail"), rows)
