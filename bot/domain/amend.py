"""`!completer <champ> : <valeur>`: one field of an open demande's dossier amended (pure).

The amended dossier goes through the very validation of the opening form (the form is
rendered, its line replaced, and parsed again), so a corrected NIR is checked like a
first one. The territory and the organisations are not amended here: they decide who
is in the room (`!inviter` brings in another group).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import date

from bot.domain import form as form_rules
from bot.domain.model import DemandeForm

NOT_AMENDABLE = frozenset({form_rules.TERRITOIRE, form_rules.ORGANISMES, form_rules.CATEGORIE})


@dataclass(frozen=True, slots=True)
class Change:
    field: str
    before: str
    after: str


@dataclass(frozen=True, slots=True)
class Amended:
    form: DemandeForm
    change: Change


@dataclass(frozen=True, slots=True)
class Refused:
    messages: tuple[str, ...]


def amend(
    form: DemandeForm,
    line: str,
    *,
    today: date,
    known_departements: Collection[str],
    organisation_lookup: Callable[[str], str | None],
    categories: Collection[str],
) -> Amended | Refused:
    if ":" not in line:
        return Refused(("Écrivez le champ puis sa valeur, par exemple : !completer NIR : …",))
    name, value = (part.strip() for part in line.split(":", 1))
    field = form_rules.canonical_field(name)
    if field is None:
        known = ", ".join(f for f in form_rules.FIELDS if f not in NOT_AMENDABLE)
        return Refused((f"Le champ « {name} » n'existe pas. Champs possibles : {known}.",))
    if field in NOT_AMENDABLE:
        return Refused(
            (
                f"Le champ « {field} » ne se modifie pas après l'ouverture : pour un autre "
                "organisme, invitez son groupe avec !inviter.",
            )
        )
    lines = form_rules.render_form(form).split("\n")
    before = _value(lines, field)
    replaced = _replace(lines, field, value)
    parsed = form_rules.parse_form(
        "\n".join(replaced),
        today=today,
        known_departements=known_departements,
        organisation_lookup=organisation_lookup,
        categories=categories,
    )
    if isinstance(parsed, form_rules.FormErrors):
        return Refused(tuple(parsed.messages))
    if isinstance(parsed, form_rules.NotAForm):  # cannot happen: the form has its keys
        return Refused(("Le dossier n'a pas pu être relu.",))
    after = _value(form_rules.render_form(parsed).split("\n"), field)
    return Amended(parsed, Change(field, before, after))


def _index(lines: list[str], field: str) -> int:
    prefix = f"{field} :"
    return next(i for i, line in enumerate(lines) if line.startswith(prefix))


def _value(lines: list[str], field: str) -> str:
    i = _index(lines, field)
    if field == form_rules.DESCRIPTION:
        return "\n".join(lines[i + 1 : _description_end(lines)]).strip()
    return lines[i].split(":", 1)[1].strip()


def _description_end(lines: list[str]) -> int:
    # The rendered form ends with a blank line and the attestation (or nothing).
    return len(lines) - 2


def _replace(lines: list[str], field: str, value: str) -> list[str]:
    i = _index(lines, field)
    if field == form_rules.DESCRIPTION:
        return [*lines[: i + 1], value, *lines[_description_end(lines) :]]
    return [*lines[:i], f"{field} : {value}", *lines[i + 1 :]]
