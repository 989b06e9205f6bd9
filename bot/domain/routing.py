"""Routing of a new demande, and the decisions behind `!inviter`.

Pure functions over the directory (groups, agents) and the policies: the
caller loads them and applies the result (invites, ledger lines, emails).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bot.domain.model import Agent, Group, Organisation, Participant, Role
from bot.domain.policies import MembershipRules, Policies, fold, server_name_of

_KIND_LABELS = {"aidant": "côté aidant", "operateur": "opératrices"}


@dataclass(frozen=True, slots=True)
class RoutingResult:
    """Either where the demande goes, or why it cannot go anywhere (never both)."""

    groups: tuple[Group, ...] = ()
    matrix_instructeurs: tuple[Agent, ...] = ()  # invited to the room
    email_instructeurs: tuple[Agent, ...] = ()  # recorded as participants, reached by email
    errors: tuple[str, ...] = ()
    # Instructeurs of the routed groups who cannot take part, with why (shown in the
    # recap; the demande goes to the others).
    skipped: tuple[tuple[Agent, str], ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


def route(
    territoire: str,
    organisations: Sequence[str],
    categorie: str | None,
    groups: Sequence[Group],
    agents: Sequence[Agent],
    policies: Policies,
    rules: MembershipRules | None = None,
) -> RoutingResult:
    """Groups and instructeurs a demande of `territoire` goes to.

    Targets are the named organisations, or the category's when none is named.
    Every instructeur of every routed group takes part: there is no assignee.
    `rules` (with the bot's own homeserver added) leaves out, and reports, an
    instructeur whose Matrix account is on a homeserver that may not join.
    """
    errors: list[str] = []
    departement = policies.departement(territoire)
    if departement is None:
        errors.append(f"territoire inconnu « {territoire} »")

    category = None
    if categorie is not None:
        category = policies.category(categorie)
        if category is None:
            errors.append(f"catégorie inconnue « {categorie} »")

    targets: list[Organisation] = []
    if organisations:
        for text in organisations:
            organisation = policies.find_organisation(text)
            if organisation is None:
                errors.append(f"organisation inconnue « {text} »")
            elif organisation not in targets:
                targets.append(organisation)
    elif category is not None:
        for org_id in category.organisations:
            organisation = policies.organisation(org_id)
            if organisation is not None:  # validated policies: always found
                targets.append(organisation)
        if not targets:
            errors.append(
                f"la catégorie « {category.label} » ne propose aucune organisation : "
                "choisissez les organisations destinataires"
            )
    elif categorie is None:
        errors.append("ni organisation ni catégorie : impossible de choisir les destinataires")

    if departement is None:
        return RoutingResult(errors=tuple(errors))

    routed: list[Group] = []
    members: list[Agent] = []
    skipped: list[tuple[Agent, str]] = []
    for organisation in targets:
        found = False
        for group in sorted(groups, key=lambda g: g.id):
            if (
                group.organisation_id != organisation.id
                or departement.code not in group.departements
            ):
                continue
            instructeurs = []
            for agent in _instructeurs(group, agents):
                why = _server_refusal(agent, rules) if rules is not None else None
                if why is None:
                    instructeurs.append(agent)
                elif all(a is not agent for a, _ in skipped):
                    skipped.append((agent, why))
            if instructeurs:
                found = True
                if group not in routed:
                    routed.append(group)
                    members.extend(a for a in instructeurs if a not in members)
        if not found:
            errors.append(
                f"aucun groupe de l'organisation {organisation.name} avec des instructeurs "
                f"dans le {departement.code} ({departement.name})"
            )
    if errors:
        return RoutingResult(errors=tuple(errors))
    return RoutingResult(
        groups=tuple(routed),
        matrix_instructeurs=tuple(a for a in members if a.matrix_id is not None),
        email_instructeurs=tuple(a for a in members if a.matrix_id is None),
        skipped=tuple(skipped),
    )


def _instructeurs(group: Group, agents: Iterable[Agent]) -> list[Agent]:
    """Active instructeurs of the group who can be reached (Matrix or email)."""
    return sorted(
        (
            a
            for a in agents
            if a.group_id == group.id
            and a.active
            and a.has(Role.INSTRUCTEUR)
            and (a.matrix_id is not None or a.email is not None)
        ),
        key=lambda a: a.id,
    )


# --- invitations ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InviteDecision:
    """Whether an invitation may go ahead; `reason` (French) when it may not.

    `agents` are the people to add when allowed; `skipped` lists members of an
    invited group left out, with why, so the inviter can be told.
    """

    allowed: bool
    reason: str | None = None
    agents: tuple[Agent, ...] = ()
    skipped: tuple[tuple[Agent, str], ...] = ()


def _refused(reason: str) -> InviteDecision:
    return InviteDecision(allowed=False, reason=reason)


def _group_refusal(
    territoire: str, group: Group, rules: MembershipRules, policies: Policies
) -> str | None:
    organisation = policies.organisation(group.organisation_id)
    if organisation is None:
        return f"organisation inconnue « {group.organisation_id} » pour le groupe « {group.name} »"
    if organisation.kind not in rules.invitable_organisation_kinds:
        return (
            f"les groupes des organisations {_KIND_LABELS[organisation.kind.value]} "
            f"ne peuvent pas être invités (« {group.name} », {organisation.name})"
        )
    if not rules.cross_departement_invitations and territoire not in group.departements:
        return (
            f"le groupe « {group.name} » ne couvre pas le {territoire}, département de la "
            "demande, et les invitations hors du département ne sont pas autorisées"
        )
    return None


def _server_refusal(agent: Agent, rules: MembershipRules) -> str | None:
    if agent.matrix_id is not None:
        server = server_name_of(agent.matrix_id)
        if not rules.homeserver_allowed(server):
            return f"le serveur Matrix « {server} » de {agent.display_name} n'est pas autorisé"
    return None


def _agent_refusal(agent: Agent, rules: MembershipRules) -> str | None:
    if not agent.active:
        return f"le compte de {agent.display_name} est désactivé"
    if not agent.roles & rules.invitable_roles:
        return f"{agent.display_name} n'a aucun rôle pouvant être invité"
    if agent.matrix_id is None and agent.email is None:
        return f"{agent.display_name} n'a ni identifiant Matrix ni email"
    return _server_refusal(agent, rules)


def _limit_refusal(current: int, adding: int, rules: MembershipRules) -> str | None:
    if current + adding > rules.max_participants:
        return (
            f"la demande compterait {current + adding} participants, "
            f"au-delà de la limite de {rules.max_participants}"
        )
    return None


def _active_ids(participants: Iterable[Participant]) -> set[int]:
    return {p.agent_id for p in participants if p.active}


def may_invite_agent(
    territoire: str,
    agent: Agent,
    agent_group: Group | None,
    participants: Sequence[Participant],
    rules: MembershipRules,
    policies: Policies,
) -> InviteDecision:
    """May `agent` (member of `agent_group`) join a demande of `territoire`?

    `rules` must already include the bot's own homeserver.
    """
    present = _active_ids(participants)
    if agent.id in present:
        return _refused(f"{agent.display_name} participe déjà à la demande")
    if agent_group is None or agent_group.id != agent.group_id:
        return _refused(f"{agent.display_name} n'appartient à aucun groupe")
    reason = (
        _group_refusal(territoire, agent_group, rules, policies)
        or _agent_refusal(agent, rules)
        or _limit_refusal(len(present), 1, rules)
    )
    if reason is not None:
        return _refused(reason)
    return InviteDecision(allowed=True, agents=(agent,))


def may_invite_group(
    territoire: str,
    group: Group,
    group_agents: Sequence[Agent],
    participants: Sequence[Participant],
    rules: MembershipRules,
    policies: Policies,
) -> InviteDecision:
    """May `group` be invited into a demande of `territoire`? Adds its instructeurs.

    Members already in the demande are not counted twice; members that may not
    join (server not allowed…) are skipped and reported, not fatal.
    """
    reason = _group_refusal(territoire, group, rules, policies)
    if reason is not None:
        return _refused(reason)
    if Role.INSTRUCTEUR not in rules.invitable_roles:
        return _refused("les instructeurs ne peuvent pas être invités")
    present = _active_ids(participants)
    adding: list[Agent] = []
    skipped: list[tuple[Agent, str]] = []
    for agent in _instructeurs(group, group_agents):
        if agent.id in present:
            continue
        refusal = _agent_refusal(agent, rules)
        if refusal is None:
            adding.append(agent)
        else:
            skipped.append((agent, refusal))
    if not adding:
        return InviteDecision(
            allowed=False,
            reason=f"aucun nouvel instructeur actif à inviter dans le groupe « {group.name} »",
            skipped=tuple(skipped),
        )
    reason = _limit_refusal(len(present), len(adding), rules)
    if reason is not None:
        return InviteDecision(allowed=False, reason=reason, skipped=tuple(skipped))
    return InviteDecision(allowed=True, agents=tuple(adding), skipped=tuple(skipped))


# --- what is available where (the opening form's suggestions) -------------------------


def available_organisations(
    territoire: str,
    groups: Sequence[Group],
    agents: Sequence[Agent],
    policies: Policies,
    rules: MembershipRules | None = None,
) -> tuple[Organisation, ...]:
    """The organisations that have a group with reachable instructeurs in `territoire`,
    in the catalogue's order: where a demande of that département can go."""
    present: set[str] = set()
    for group in groups:
        if territoire not in group.departements or group.organisation_id in present:
            continue
        for agent in _instructeurs(group, agents):
            if rules is None or _server_refusal(agent, rules) is None:
                present.add(group.organisation_id)
                break
    return tuple(o for o in policies.organisations.values() if o.id in present)


def closest_organisations(
    text: str, available: Sequence[Organisation], *, limit: int = 3
) -> tuple[Organisation, ...]:
    """The available organisations whose name or alias is closest to `text`."""
    names: dict[str, Organisation] = {}
    for organisation in available:
        for name in (organisation.name, organisation.id, *organisation.aliases):
            names.setdefault(fold(name), organisation)
    wanted = fold(text)
    found: list[Organisation] = []
    for name in difflib.get_close_matches(wanted, list(names), n=limit * 3, cutoff=0.5):
        if names[name] not in found:
            found.append(names[name])
    for name, organisation in names.items():  # « CAF 95 », « la caf de Cergy »
        contained = name in wanted.split() or wanted in name.split()
        if len(name) >= 3 and contained and organisation not in found:
            found.insert(0, organisation)
    return tuple(found[:limit])


def email_copies(
    routing: RoutingResult, groups: Mapping[int, Group], policies: Policies
) -> list[str]:
    """Who gets the dossier by email when the demande opens, for the aidant's recap: the
    email-only instructeurs and the groups' shared mailboxes, each saying whether the
    optional identifiers (NIR, address, phone) are left out (their organisation's policy)."""

    def suffix(group: Group | None) -> str:
        org = policies.organisation(group.organisation_id) if group else None
        if org is not None and org.withholds_identifiers:
            return " : sans NIR, adresse ni téléphone"
        return " : dossier complet"

    lines = []
    for agent in routing.email_instructeurs:
        group = groups.get(agent.group_id) if agent.group_id is not None else None
        where = f" ({group.name})" if group else ""
        lines.append(f"{agent.display_name}{where}{suffix(group)}")
    for group in routing.groups:
        if group.bal:
            lines.append(f"la boîte partagée de {group.name} ({group.bal}){suffix(group)}")
    return lines
