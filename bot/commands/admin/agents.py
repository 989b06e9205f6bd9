"""Directory: the agents (list, add, change, deactivate, reactivate)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from bot.commands.admin.context import (
    ADMIN,
    SECTION_DIRECTORY,
    AdminCtx,
    Args,
    Flags,
)
from bot.commands.admin.lookups import find_agent, group_named
from bot.commands.framework import Arg, CommandSpec, Flag, Listing, Reply, listing_reply, page_word
from bot.domain.agent_entry import parse_contacts, parse_roles
from bot.domain.directory_csv import is_valid_email
from bot.domain.directory_search import agent_matches, search_words, unquoted
from bot.domain.mail_volume import digest_hour
from bot.domain.model import Agent, DirectoryConflict, Group, Role
from bot.domain.policies import is_valid_matrix_user_id
from bot.ports import ConsoleTx


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
        (
            Arg(
                "recherche",
                "rest",
                "Un groupe (son nom), ou des mots du nom, de l'adresse e-mail, de "
                "l'identifiant Matrix ou du groupe ; page=N pour une autre page.",
                optional=True,
            ),
        ),
        "Lister ou chercher les agents de l'annuaire (les actifs ; --tous pour les "
        "désactivés aussi). Une longue liste s'affiche par pages, complète en fichier CSV.",
        flags=(Flag("tous", "Inclure les agents désactivés."),),
        section=SECTION_DIRECTORY,
    )
)
async def _agents(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    try:
        typed, page = page_word(args["recherche"])
    except ValueError as exc:
        return Reply.error(str(exc))
    typed = unquoted(typed)
    async with ctx.store.transaction() as tx:
        groups = {g.id: g for g in await tx.list_groups()}
        agents = await tx.list_agents(active_only="tous" not in flags)
        group = await group_named(tx, typed) if typed else None
    if group is not None:
        agents = [a for a in agents if a.group_id == group.id]
        title, again = f"Agents du groupe « {group.name} »", f'"{group.name}"'
    elif typed:
        words = search_words(typed)
        agents = [
            a
            for a in agents
            if agent_matches(a, groups.get(a.group_id) if a.group_id else None, words)
        ]
        title, again = f"Agents trouvés pour « {typed} »", typed
    else:
        title, again = "Agents", ""
    command = " ".join(w for w in ("!agents", "--tous" if "tous" in flags else "", again) if w)
    listing = Listing(
        title=f"{title} ({len(agents)})",
        headers=("N°", "Nom", "Matrix", "Courriel", "Groupe", "Rôles", "État"),
        rows=[_agent_row(a, groups) for a in agents],
        command=command.replace("{", "{{").replace("}", "}}") + " page={page}",
        filename="agents.csv",
        empty="Aucun agent ne correspond (les groupes : !groupes).",
    )
    return listing_reply(listing, page)


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
        roles = parse_roles(args["roles"])
        matrix_id, email = parse_contacts([args["contact"], args["contact2"]])
    except ValueError as exc:
        return Reply.error(str(exc))
    if matrix_id and (refusal := _server_refusal(ctx, matrix_id)):
        return Reply.error(refusal)
    async with ctx.store.transaction() as tx:
        group = None
        if args["groupe"] != "-":
            group = await group_named(tx, args["groupe"])
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
    await ctx.sync_members()
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
        agent = await find_agent(tx, args["agent"])
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


@ADMIN.command(
    CommandSpec(
        "agent-courriels",
        (
            Arg("agent", "text", "L'agent : identifiant Matrix, adresse e-mail ou n°."),
            Arg("rythme", "choice", "immediat ou quotidien", choices=("immediat", "quotidien")),
            Arg("heure", "rest", "L'heure du résumé quotidien (par exemple 17).", optional=True),
        ),
        "Régler les courriels d'un agent : chaque message (immediat) ou un résumé par jour "
        "et par demande (quotidien) ; dossier, invitations et rappels restent immédiats.",
        section=SECTION_DIRECTORY,
    )
)
async def _agent_courriels(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    daily = str(args["rythme"]).lower() == "quotidien"
    hour = digest_hour(str(args.get("heure") or "")) if daily else None
    if daily and hour is None:
        return Reply.error("Heure non comprise : écrivez par exemple quotidien 17.")
    async with ctx.store.transaction() as tx:
        agent = await find_agent(tx, args["agent"])
        if agent is None:
            return Reply.error(f"Agent « {args['agent']} » introuvable (voir !agents --tous).")
        if not agent.email:
            return Reply.error(f"{agent.display_name} n'a pas d'adresse électronique.")
        now = ctx.clock.now()
        await tx.set_email_digest(agent.id, hour, now)
        await tx.audit(
            "email_volume_set",
            actor=ctx.sender,
            details={"agent": agent.id, "digest_hour": hour},
            now=now,
        )
    if hour is None:
        return Reply(f"{agent.display_name} recevra chaque courriel aussitôt.")
    return Reply(f"{agent.display_name} recevra chaque jour à {hour} h un résumé par demande.")


async def _changed(tx: ConsoleTx, agent: Agent, field: str, value: str) -> Agent:
    if field in ("prenom", "nom"):
        if not value:
            raise ValueError("La valeur ne peut pas être vide.")
        if field == "prenom":
            return replace(agent, first_name=value)
        return replace(agent, last_name=value)
    if field == "roles":
        return replace(agent, roles=parse_roles(value))
    if field == "groupe":
        if value == "-":
            return replace(agent, group_id=None)
        group = await group_named(tx, value)
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
        agent = await find_agent(tx, args["agent"])
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
        agent = await find_agent(tx, args["agent"])
        if agent is None:
            return Reply.error(f"Agent « {args['agent']} » introuvable (voir !agents --tous).")
        if agent.active:
            return Reply.error(f"{agent.display_name} est déjà actif.")
        await tx.set_agent_active(agent.id, True)
        await tx.audit(
            "agent_reactivated", actor=ctx.sender, details={"agent": agent.id}, now=ctx.clock.now()
        )
    return await _after_change(ctx, replace(agent, active=True), f"{agent.display_name} réactivé.")
