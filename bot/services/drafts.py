"""The demande in preparation, read against the directory: which organisations are
available in the usager's département, what a category resolves to, which usager
identifiers the bodies require or suggest, and how each free value was understood.

Pure apart from its inputs (the directory and policies the caller loaded): the
opening service turns the result into a recap or into the list of what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date

from bot.domain import form as f
from bot.domain.form import DraftFields, Interpretation, Problem, Vocabulary
from bot.domain.model import Agent, DemandeForm, Group, Organisation, OrganisationKind
from bot.domain.policies import MembershipRules, Policies
from bot.domain.routing import available_organisations, closest_organisations

# Policy identifier ids → form fields, and what each one is, for the texts.
IDENTIFIER_FIELDS: Mapping[str, str] = {
    "nir": f.NIR,
    "numero_allocataire_caf": f.ALLOCATAIRE,
    "nif": f.NIF,
}
_IDENTIFIER_WHAT: Mapping[str, str] = {
    f.NIR: "le numéro de sécurité sociale de l'usager (15 caractères, sur la carte Vitale)",
    f.ALLOCATAIRE: "le numéro allocataire CAF de l'usager",
    f.NIF: "le numéro fiscal de l'usager (13 chiffres, en haut de l'avis d'impôt)",
}


@dataclass
class Directory:
    groups: Sequence[Group]
    agents: Sequence[Agent]
    policies: Policies
    rules: MembershipRules | None = None
    _available: dict[str, tuple[Organisation, ...]] = field(default_factory=dict)

    def available(self, code: str) -> tuple[Organisation, ...]:
        if code not in self._available:
            self._available[code] = available_organisations(
                code, self.groups, self.agents, self.policies, self.rules
            )
        return self._available[code]

    def departement_name(self, code: str) -> str:
        found = self.policies.departement(code)
        return found.name if found else code


@dataclass(frozen=True, slots=True)
class Assessment:
    form: DemandeForm | None
    problems: tuple[Problem, ...]
    understood: tuple[str, ...] = ()
    advice: tuple[str, ...] = ()


def _names(organisations: Sequence[Organisation]) -> str:
    return ", ".join(o.name for o in organisations)


def vocabulary(directory: Directory) -> Vocabulary:
    policies = directory.policies

    def organisation(text: str) -> tuple[str, str] | None:
        found = policies.find_organisation(text)
        if found is None or found.kind is not OrganisationKind.OPERATEUR:
            return None
        return found.id, found.name

    def suggest(text: str, territoire: str) -> list[str]:
        return [o.name for o in closest_organisations(text, directory.available(territoire))]

    def required(ids: Sequence[str]) -> dict[str, str]:
        needed: dict[str, list[str]] = {}
        for org_id in ids:
            org = policies.organisation(org_id)
            if org is None:
                continue
            for identifier in org.required_identifiers:
                needed.setdefault(IDENTIFIER_FIELDS[identifier], []).append(org.name)
        return {
            key: f"pour {', '.join(names)} : indiquez {_IDENTIFIER_WHAT[key]}"
            for key, names in needed.items()
        }

    return Vocabulary(
        departements={code: d.name for code, d in policies.departements.items()},
        organisation=organisation,
        categories={c.id: c.label for c in policies.categories.values()},
        suggest_organisations=suggest,
        required_identifiers=required,
    )


def _understood_line(item: Interpretation) -> str:
    return f"{item.field} : « {item.written} » → {item.understood}"


def assess(fields: DraftFields, *, today: date, directory: Directory) -> Assessment:
    """Everything still missing or wrong, or the form ready for its recap.

    The destination is checked against the directory as soon as the département and
    the organisations (or the category) are known, even before the rest is complete.
    """
    evaluation = f.evaluate(fields, today=today, vocabulary=vocabulary(directory))
    understood = [_understood_line(i) for i in evaluation.interpretations]
    problems = list(evaluation.problems)
    policies = directory.policies
    code = evaluation.territoire
    resolved: tuple[str, ...] = evaluation.organisations
    if code is not None:
        where = f"{code} ({directory.departement_name(code)})"
        available = directory.available(code)
        for org_id in evaluation.organisations:
            if any(o.id == org_id for o in available):
                continue
            org = policies.organisation(org_id)
            name = org.name if org else org_id
            close = [o for o in closest_organisations(name, available) if o.id != org_id]
            hint = (
                f" Organismes proches disponibles : {_names(close)}."
                if close
                else f" Envoyez !organismes {code} pour voir ceux qui le sont."
            )
            problems.append(
                Problem(
                    f.ORGANISMES,
                    f"Aucun groupe de l'organisme {name} n'a d'instructeurs dans le {where} : "
                    "la demande ne peut pas lui être envoyée." + hint,
                )
            )
        category = policies.category(evaluation.categorie) if evaluation.categorie else None
        named = any(p.field == f.ORGANISMES for p in evaluation.problems)
        if not evaluation.organisations and category is not None and not named:
            candidates = [o for o in available if o.id in category.organisations]
            if len(candidates) == 1:
                only = candidates[0]
                resolved = (only.id,)
                understood.append(
                    f"{f.ORGANISMES} : catégorie « {category.label} » → {only.name}, le seul "
                    f"organisme de cette catégorie disponible dans le {code}"
                )
                problems.extend(_missing_identifiers(resolved, fields, policies))
            elif not candidates:
                problems.append(
                    Problem(
                        f.ORGANISMES,
                        f"Aucun organisme de la catégorie « {category.label} » n'a "
                        f"d'instructeurs dans le {where} : indiquez l'organisme "
                        f"(« organismes : … ») ; !organismes {code} liste ceux qui sont "
                        "disponibles.",
                    )
                )
            else:
                problems.append(
                    Problem(
                        f.ORGANISMES,
                        f"Dans le {where}, la catégorie « {category.label} » regroupe : "
                        f"{_names(candidates)}. À quel(s) organisme(s) envoyer la demande ? "
                        f"Répondez par exemple « organismes : {candidates[0].name} ».",
                    )
                )
    form = evaluation.form
    if problems or form is None:
        return Assessment(None, tuple(problems), tuple(understood))
    form = replace(form, organisations=resolved)
    return Assessment(form, (), tuple(understood), tuple(_advice(form, policies)))


def _missing_identifiers(
    organisations: Sequence[str], fields: DraftFields, policies: Policies
) -> list[Problem]:
    """Identifiers required by organisations that a category resolved to."""
    found: list[Problem] = []
    for org_id in organisations:
        org = policies.organisation(org_id)
        if org is None:
            continue
        for identifier in org.required_identifiers:
            key = IDENTIFIER_FIELDS[identifier]
            if not fields.values.get(key, "").strip():
                found.append(
                    Problem(
                        key,
                        f"Le champ « {key} » est obligatoire pour {org.name} : "
                        f"indiquez {_IDENTIFIER_WHAT[key]}.",
                    )
                )
    return found


def _advice(form: DemandeForm, policies: Policies) -> list[str]:
    values = {
        f.NIR: form.usager.nir,
        f.ALLOCATAIRE: form.usager.numero_allocataire_caf,
        f.NIF: form.usager.nif,
    }
    lines: list[str] = []
    for org_id in form.organisations:
        org = policies.organisation(org_id)
        if org is None:
            continue
        for identifier in org.suggested_identifiers:
            key = IDENTIFIER_FIELDS[identifier]
            if not values.get(key):
                lines.append(
                    f"{org.name} traite plus vite la demande avec {_IDENTIFIER_WHAT[key]} : "
                    f"envoyez « {key} : … » pour l'ajouter (facultatif)."
                )
    return lines
