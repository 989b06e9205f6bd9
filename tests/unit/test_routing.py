"""Routing of a new demande and the `!inviter` decisions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bot.domain.model import Agent, Group, OrganisationKind, Participant, Role
from bot.domain.policies import MembershipRules, Policies
from bot.domain.routing import (
    InviteDecision,
    RoutingResult,
    may_invite_agent,
    may_invite_group,
    route,
)
from bot.policy_loader import default_policies_dir, load_policies

CAF_95 = Group(1, "CAF 95", "caf", frozenset({"95"}), bal="caf95@caf.fr")
CAF_IDF = Group(2, "CAF Île-de-France", "caf", frozenset({"95", "78"}))
CAF_78 = Group(3, "CAF 78", "caf", frozenset({"78"}))
CPAM_95 = Group(4, "CPAM 95", "cpam", frozenset({"95"}))
MSA_95 = Group(5, "MSA 95", "msa", frozenset({"95"}))
FS_CERGY = Group(6, "FS Cergy", "france_services", frozenset({"95"}))
GROUPS = (CAF_95, CAF_IDF, CAF_78, CPAM_95, MSA_95, FS_CERGY)

INSTRUCTEUR_ONLY = frozenset({Role.INSTRUCTEUR})


def agent(
    agent_id: int,
    group: Group,
    matrix: str | None = None,
    email: str | None = None,
    roles: frozenset[Role] = INSTRUCTEUR_ONLY,
    active: bool = True,
) -> Agent:
    return Agent(
        agent_id, f"Prénom{agent_id}", f"Nom{agent_id}", email, matrix, group.id, roles, active
    )


JEANNE = agent(10, CAF_95, "@jeanne:bot.example.org", "jeanne@caf.fr")
PAUL = agent(11, CAF_95, email="paul@caf.fr")  # email-only
OLD = agent(12, CAF_95, "@old:bot.example.org", active=False)
BOSS = agent(13, CAF_95, "@boss:bot.example.org", roles=frozenset({Role.RESPONSABLE}))
LEA = agent(14, CAF_IDF, "@lea:partner.example.org")
MARC = agent(15, CAF_78, "@marc:bot.example.org")
CPAM_GONE = agent(16, CPAM_95, "@gone:bot.example.org", active=False)
MSA_ONLY_BOSS = agent(17, MSA_95, "@msa:bot.example.org", roles=frozenset({Role.RESPONSABLE}))
AWA = agent(18, FS_CERGY, "@awa:bot.example.org", roles=frozenset({Role.AIDANT}))
AGENTS = (JEANNE, PAUL, OLD, BOSS, LEA, MARC, CPAM_GONE, MSA_ONLY_BOSS, AWA)


@pytest.fixture(scope="module")
def policies() -> Policies:
    return load_policies(default_policies_dir())


def rules(**changes: object) -> MembershipRules:
    base = MembershipRules(
        allowed_homeservers=("bot.example.org",),
        cross_departement_invitations=True,
        invitable_roles=frozenset({Role.INSTRUCTEUR, Role.RESPONSABLE, Role.AIDANT}),
        invitable_organisation_kinds=frozenset(OrganisationKind),
        max_participants=10,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# --- route ------------------------------------------------------------------------------


def test_named_organisation_routes_to_every_covering_group(policies: Policies) -> None:
    result = route("95", ["caf"], None, GROUPS, AGENTS, policies)
    assert result == RoutingResult(
        groups=(CAF_95, CAF_IDF),
        matrix_instructeurs=(JEANNE, LEA),
        email_instructeurs=(PAUL,),
    )
    assert result.ok


def test_organisation_found_by_name_and_deduplicated(policies: Policies) -> None:
    result = route("78", ["CAF", "caf"], None, GROUPS, AGENTS, policies)
    assert result.groups == (CAF_IDF, CAF_78)
    assert result.matrix_instructeurs == (LEA, MARC)


def test_named_organisations_win_over_the_category(policies: Policies) -> None:
    result = route("95", ["caf"], "sante_handicap", GROUPS, AGENTS, policies)
    assert result.groups == (CAF_95, CAF_IDF)


def test_category_targets_all_its_organisations(policies: Policies) -> None:
    # Santé/Handicap = CPAM, MSA, MDPH: none has an active instructeur in the 95.
    result = route("95", [], "sante_handicap", GROUPS, AGENTS, policies)
    assert result.groups == () and result.matrix_instructeurs == ()
    assert result.errors == (
        "aucun groupe de l'organisation CPAM avec des instructeurs dans le 95 (Val-d'Oise)",
        "aucun groupe de l'organisation MSA avec des instructeurs dans le 95 (Val-d'Oise)",
        "aucun groupe de l'organisation MDPH avec des instructeurs dans le 95 (Val-d'Oise)",
    )


def test_category_routing_succeeds_when_groups_exist(policies: Policies) -> None:
    cpam_agent = agent(20, CPAM_95, "@cpam:bot.example.org")
    msa_agent = agent(21, MSA_95, email="msa@msa.fr")
    mdph = Group(7, "MDPH 95", "mdph", frozenset({"95"}))
    mdph_agent = agent(22, mdph, "@mdph:bot.example.org")
    result = route(
        "95",
        (),
        "sante_handicap",
        (*GROUPS, mdph),
        (*AGENTS, cpam_agent, msa_agent, mdph_agent),
        policies,
    )
    assert result.groups == (CPAM_95, MSA_95, mdph)
    assert result.matrix_instructeurs == (cpam_agent, mdph_agent)
    assert result.email_instructeurs == (msa_agent,)


def test_territoire_typed_loosely(policies: Policies) -> None:
    ain = Group(8, "CAF Ain", "caf", frozenset({"01"}))
    instructeur = agent(23, ain, "@ain:bot.example.org")
    assert route("1", ["caf"], None, [ain], [instructeur], policies).groups == (ain,)


def test_all_errors_at_once(policies: Policies) -> None:
    result = route("95", ["caf", "cafx", "MSA"], "inconnue", GROUPS, AGENTS, policies)
    assert result.errors == (
        "catégorie inconnue « inconnue »",
        "organisation inconnue « cafx »",
        "aucun groupe de l'organisation MSA avec des instructeurs dans le 95 (Val-d'Oise)",
    )
    assert (
        result.groups == () and result.matrix_instructeurs == () and result.email_instructeurs == ()
    )
    assert not result.ok


def test_unknown_territoire(policies: Policies) -> None:
    result = route("20", ["cafx"], None, GROUPS, AGENTS, policies)
    assert result.errors == ("territoire inconnu « 20 »", "organisation inconnue « cafx »")


def test_neither_organisations_nor_category(policies: Policies) -> None:
    result = route("95", [], None, GROUPS, AGENTS, policies)
    assert result.errors == (
        "ni organisation ni catégorie : impossible de choisir les destinataires",
    )


def test_category_without_organisations(policies: Policies) -> None:
    result = route("95", [], "autre", GROUPS, AGENTS, policies)
    assert result.errors == (
        "la catégorie « Autre » ne propose aucune organisation : "
        "choisissez les organisations destinataires",
    )


def test_groups_of_other_departements_and_unreachable_agents_ignored(policies: Policies) -> None:
    nowhere = agent(24, CAF_78, None, None)  # neither Matrix nor email: cannot be reached
    result = route("78", ["caf"], None, [CAF_78], [nowhere], policies)
    assert result.errors == (
        "aucun groupe de l'organisation CAF avec des instructeurs dans le 78 (Yvelines)",
    )


# --- may_invite_agent -----------------------------------------------------------------


def test_agent_invitation_allowed(policies: Policies) -> None:
    decision = may_invite_agent("95", MARC, CAF_78, [], rules(), policies)
    assert decision == InviteDecision(allowed=True, agents=(MARC,))


def test_cross_departement_refused_when_rule_says_so(policies: Policies) -> None:
    decision = may_invite_agent(
        "95", MARC, CAF_78, [], rules(cross_departement_invitations=False), policies
    )
    assert decision == InviteDecision(
        allowed=False,
        reason="le groupe « CAF 78 » ne couvre pas le 95, département de la demande, "
        "et les invitations hors du département ne sont pas autorisées",
    )
    same = may_invite_agent(
        "95", JEANNE, CAF_95, [], rules(cross_departement_invitations=False), policies
    )
    assert same.allowed


@pytest.mark.parametrize(
    ("target", "group", "membership", "reason"),
    [
        (OLD, CAF_95, rules(), "le compte de Prénom12 Nom12 est désactivé"),
        (
            AWA,
            FS_CERGY,
            rules(invitable_organisation_kinds=frozenset({OrganisationKind.OPERATEUR})),
            "les groupes des organisations côté aidant ne peuvent pas être invités "
            "(« FS Cergy », France Services)",
        ),
        (
            BOSS,
            CAF_95,
            rules(invitable_roles=frozenset({Role.INSTRUCTEUR})),
            "Prénom13 Nom13 n'a aucun rôle pouvant être invité",
        ),
        (
            LEA,
            CAF_IDF,
            rules(),
            "le serveur Matrix « partner.example.org » de Prénom14 Nom14 n'est pas autorisé",
        ),
        (JEANNE, None, rules(), "Prénom10 Nom10 n'appartient à aucun groupe"),
        (JEANNE, CAF_78, rules(), "Prénom10 Nom10 n'appartient à aucun groupe"),
    ],
)
def test_agent_invitation_refusals(
    policies: Policies,
    target: Agent,
    group: Group | None,
    membership: MembershipRules,
    reason: str,
) -> None:
    decision = may_invite_agent("95", target, group, [], membership, policies)
    assert decision == InviteDecision(allowed=False, reason=reason)


def test_allowed_homeserver_and_email_only_agents(policies: Policies) -> None:
    partner = rules().with_homeserver("partner.example.org")
    assert may_invite_agent("95", LEA, CAF_IDF, [], partner, policies).allowed
    # No Matrix account, no server to check: reached by email.
    assert may_invite_agent("95", PAUL, CAF_95, [], rules(), policies).allowed


def participant(agent_id: int, active: bool = True) -> Participant:
    return Participant(agent_id, None, None, None, "instructeur", active)


def test_participant_limit_and_already_present(policies: Policies) -> None:
    two = [participant(1), participant(2), participant(3, active=False)]
    decision = may_invite_agent("95", MARC, CAF_78, two, rules(max_participants=2), policies)
    assert decision.reason == "la demande compterait 3 participants, au-delà de la limite de 2"
    assert may_invite_agent("95", MARC, CAF_78, two, rules(max_participants=3), policies).allowed
    again = may_invite_agent("95", MARC, CAF_78, [participant(15)], rules(), policies)
    assert again.reason == "Prénom15 Nom15 participe déjà à la demande"


def test_unknown_organisation_of_group(policies: Policies) -> None:
    ghost = Group(9, "Fantôme", "cnaf", frozenset({"95"}))
    decision = may_invite_group("95", ghost, [], [], rules(), policies)
    assert decision.reason == "organisation inconnue « cnaf » pour le groupe « Fantôme »"


# --- may_invite_group -------------------------------------------------------------------


def test_group_invitation_adds_new_active_instructeurs_and_reports_skipped(
    policies: Policies,
) -> None:
    members = [JEANNE, PAUL, OLD, BOSS, agent(30, CAF_95, "@x:elsewhere.org")]
    decision = may_invite_group("95", CAF_95, members, [participant(10)], rules(), policies)
    assert decision.allowed and decision.reason is None
    assert decision.agents == (PAUL,)  # Jeanne is already in; Boss is no instructeur
    ((skipped, why),) = decision.skipped
    assert skipped.id == 30
    assert why == "le serveur Matrix « elsewhere.org » de Prénom30 Nom30 n'est pas autorisé"


def test_group_invitation_refusals(policies: Policies) -> None:
    no_cross = rules(cross_departement_invitations=False)
    assert may_invite_group("95", CAF_78, [MARC], [], no_cross, policies).reason == (
        "le groupe « CAF 78 » ne couvre pas le 95, département de la demande, "
        "et les invitations hors du département ne sont pas autorisées"
    )
    no_instructeurs = rules(invitable_roles=frozenset({Role.RESPONSABLE}))
    assert may_invite_group("95", CAF_95, [JEANNE], [], no_instructeurs, policies).reason == (
        "les instructeurs ne peuvent pas être invités"
    )
    empty = may_invite_group("95", MSA_95, [MSA_ONLY_BOSS], [], rules(), policies)
    assert empty == InviteDecision(
        allowed=False, reason="aucun nouvel instructeur actif à inviter dans le groupe « MSA 95 »"
    )
    full = may_invite_group(
        "95", CAF_95, [JEANNE, PAUL], [participant(1)], rules(max_participants=2), policies
    )
    assert full.reason == "la demande compterait 3 participants, au-delà de la limite de 2"
    assert full.agents == ()
