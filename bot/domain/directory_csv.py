"""Parse a directory CSV (Administration+ headers) into validated rows.

All or nothing: if any line is wrong the result carries every problem and no
row, so an import never leaves the directory half-updated. Pure: the caller
reads the file and applies the rows.

Columns (header matching ignores case, accents and spacing): Prénom, Nom, Email,
Instructeur, Responsable, Territoire, Organisation, Groupe, BAL; optional Matrix
and Opérateur. Qualité, Téléphone and Compte partagé, found in Administration+
exports, are accepted and ignored.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass

from bot.domain.model import OrganisationKind, Role
from bot.domain.policies import (
    MembershipRules,
    Policies,
    fold,
    is_valid_matrix_user_id,
    server_name_of,
)

# Column key → accepted spellings (already folded).
_COLUMNS: dict[str, tuple[str, ...]] = {
    "prenom": ("prenom",),
    "nom": ("nom",),
    "email": ("email", "e mail", "courriel", "adresse email", "adresse e mail", "mail"),
    "matrix": ("matrix", "identifiant matrix", "matrix id", "compte matrix"),
    "instructeur": ("instructeur",),
    "responsable": ("responsable", "responsable de groupe"),
    "territoire": ("territoire", "territoires", "territoire departements", "departements"),
    "organisation": ("organisation",),
    "groupe": ("groupe",),
    "bal": ("bal", "boite aux lettres", "bal email"),
    "operateur": ("operateur",),
}
_REQUIRED = (
    "prenom",
    "nom",
    "email",
    "instructeur",
    "responsable",
    "territoire",
    "organisation",
    "groupe",
    "bal",
)
_IGNORED = frozenset({"qualite", "telephone", "compte partage"})
_HEADER_LABELS = {
    "prenom": "Prénom",
    "nom": "Nom",
    "email": "Email",
    "matrix": "Matrix",
    "instructeur": "Instructeur",
    "responsable": "Responsable",
    "territoire": "Territoire",
    "organisation": "Organisation",
    "groupe": "Groupe",
    "bal": "BAL",
    "operateur": "Opérateur",
}
_YES = frozenset({"oui", "o", "x", "1", "true", "vrai", "yes", "y"})
_NO = frozenset({"", "non", "n", "0", "false", "faux", "no"})
# Pragmatic address check: one @, no spaces, a dotted domain of sane labels.
_EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+\Z"
)
_TERRITOIRE_SEPARATORS = re.compile(r"[\s,;]+")


@dataclass(frozen=True, slots=True)
class ImportRow:
    line: int
    first_name: str
    last_name: str
    email: str | None
    matrix_id: str | None
    roles: frozenset[Role]
    departements: frozenset[str]
    organisation_id: str
    group_name: str
    bal: str | None


@dataclass(frozen=True, slots=True)
class ImportProblem:
    line: int  # the header is line 1
    message: str

    def __str__(self) -> str:
        return f"ligne {self.line} : {self.message}"


@dataclass(frozen=True, slots=True)
class ImportGroup:
    """A group as the file describes it, gathered from its agents' lines."""

    name: str
    organisation_id: str
    departements: frozenset[str]
    bal: str | None


@dataclass(frozen=True, slots=True)
class DirectoryImport:
    rows: tuple[ImportRow, ...] = ()
    errors: tuple[ImportProblem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    def groups(self) -> tuple[ImportGroup, ...]:
        """One entry per group, in order of first appearance."""
        gathered: dict[str, ImportGroup] = {}
        for row in self.rows:
            key = fold(row.group_name)
            known = gathered.get(key)
            if known is None:
                gathered[key] = ImportGroup(
                    row.group_name, row.organisation_id, row.departements, row.bal
                )
            else:
                gathered[key] = ImportGroup(
                    known.name,
                    known.organisation_id,
                    known.departements | row.departements,
                    known.bal or row.bal,
                )
        return tuple(gathered.values())


def is_valid_email(address: str) -> bool:
    return len(address) <= 254 and _EMAIL.match(address) is not None


def parse_directory_csv(
    text: str, policies: Policies, rules: MembershipRules | None = None
) -> DirectoryImport:
    """Every problem of the file at once, with its line; `rules` (the bot's own
    homeserver included) refuses a Matrix account on a homeserver that may not join."""
    text = text.removeprefix("\ufeff")
    if not text.strip():
        return _failed(ImportProblem(1, "fichier vide : la ligne d'en-têtes est absente"))
    records = list(_records(text))
    header_line, header = records[0]
    columns, problems = _match_header(header)
    if problems:
        return DirectoryImport(errors=tuple(ImportProblem(header_line, p) for p in problems))

    rows: list[ImportRow] = []
    errors: list[ImportProblem] = []
    for line, cells in records[1:]:
        if not any(cell.strip() for cell in cells):
            continue  # spreadsheets leave blank lines and ";;;;" trails
        if len(cells) > len(header) and any(c.strip() for c in cells[len(header) :]):
            errors.append(ImportProblem(line, f"{len(cells)} colonnes pour {len(header)} en-têtes"))
            continue
        values = {
            key: cells[index].strip() if index < len(cells) else ""
            for key, index in columns.items()
        }
        row, row_problems = _row(line, values, policies, rules)
        errors.extend(ImportProblem(line, p) for p in row_problems)
        if row is not None:
            rows.append(row)
    if not rows and not errors:
        return _failed(ImportProblem(header_line, "le fichier ne contient aucun agent"))
    errors.extend(_cross_row_problems(rows))
    if errors:
        return DirectoryImport(errors=tuple(sorted(errors, key=lambda e: e.line)))
    return DirectoryImport(rows=tuple(rows))


def _failed(problem: ImportProblem) -> DirectoryImport:
    return DirectoryImport(errors=(problem,))


def _records(text: str) -> Iterator[tuple[int, list[str]]]:
    """CSV records with the line each starts on (a quoted cell may span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    previous_end = 0
    for cells in reader:
        yield previous_end + 1, cells
        previous_end = reader.line_num


def _delimiter(text: str) -> str:
    """French Excel writes `;`; everything else writes `,`: judge by the header."""
    first_line = text.split("\n", 1)[0]
    counts = {sep: first_line.count(sep) for sep in (";", ",", "\t")}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] else ","


def _match_header(header: list[str]) -> tuple[dict[str, int], list[str]]:
    spelling = {alias: key for key, aliases in _COLUMNS.items() for alias in aliases}
    columns: dict[str, int] = {}
    problems: list[str] = []
    for index, cell in enumerate(header):
        folded = fold(cell)
        if not folded or folded in _IGNORED:
            continue
        key = spelling.get(folded)
        if key is None:
            problems.append(f"colonne inconnue « {cell.strip()} »")
        elif key in columns:
            problems.append(f"colonne « {cell.strip()} » en double")
        else:
            columns[key] = index
    missing = [_HEADER_LABELS[key] for key in _REQUIRED if key not in columns]
    if missing:
        problems.append("colonnes manquantes : " + ", ".join(missing))
    return columns, problems


def _flag(value: str, column: str, problems: list[str]) -> bool:
    folded = fold(value)
    if folded in _YES:
        return True
    if folded not in _NO:
        problems.append(f"{column} : valeur « {value} » non comprise (oui ou non attendu)")
    return False


def _row(
    line: int, values: dict[str, str], policies: Policies, rules: MembershipRules | None
) -> tuple[ImportRow | None, list[str]]:
    problems: list[str] = []
    first_name, last_name = " ".join(values["prenom"].split()), " ".join(values["nom"].split())
    if not first_name:
        problems.append("Prénom manquant")
    if not last_name:
        problems.append("Nom manquant")

    email = values["email"].lower() or None
    if email is not None and not is_valid_email(email):
        problems.append(f"adresse email invalide « {values['email']} »")
    matrix_id = values.get("matrix", "") or None
    if matrix_id is not None and not is_valid_matrix_user_id(matrix_id):
        problems.append(
            f"identifiant Matrix invalide « {matrix_id} » (attendu : @identifiant:serveur, "
            "en minuscules)"
        )
    elif matrix_id is not None and rules is not None:
        server = server_name_of(matrix_id)
        if not rules.homeserver_allowed(server):
            problems.append(
                f"le serveur Matrix « {server} » de {matrix_id} n'est pas autorisé pour ce "
                "service (politique allowed_homeservers)"
            )
    if email is None and matrix_id is None:
        problems.append("ni email ni identifiant Matrix : au moins l'un des deux est requis")

    organisation = None
    if not values["organisation"]:
        problems.append("Organisation manquante")
    else:
        organisation = policies.find_organisation(values["organisation"])
        if organisation is None:
            problems.append(f"organisation inconnue « {values['organisation']} »")

    roles: set[Role] = set()
    if organisation is not None and organisation.kind is OrganisationKind.AIDANT:
        roles.add(Role.AIDANT)
    if _flag(values["instructeur"], "Instructeur", problems):
        roles.add(Role.INSTRUCTEUR)
        # Routing sends demandes to instructeurs: they must sit on the operator side.
        if organisation is not None and organisation.kind is OrganisationKind.AIDANT:
            problems.append(
                f"un instructeur ne peut pas appartenir à « {organisation.name} », "
                "organisation côté aidant"
            )
    if _flag(values["responsable"], "Responsable", problems):
        roles.add(Role.RESPONSABLE)
    if _flag(values.get("operateur", ""), "Opérateur", problems):
        roles.add(Role.OPERATEUR)

    departements: set[str] = set()
    for code in _TERRITOIRE_SEPARATORS.split(values["territoire"].strip()):
        if not code:
            continue
        departement = policies.departement(code)
        if departement is None:
            problems.append(f"département inconnu « {code} »")
        else:
            departements.add(departement.code)
    if not values["territoire"].strip():
        problems.append("Territoire manquant (au moins un département)")

    group_name = " ".join(values["groupe"].split())
    if not group_name:
        problems.append("Groupe manquant")

    bal = values["bal"].lower() or None
    if bal is not None and not is_valid_email(bal):
        problems.append(f"BAL invalide « {values['bal']} » (adresse email attendue)")

    if problems or organisation is None:
        return None, problems
    return (
        ImportRow(
            line=line,
            first_name=first_name,
            last_name=last_name,
            email=email,
            matrix_id=matrix_id,
            roles=frozenset(roles),
            departements=frozenset(departements),
            organisation_id=organisation.id,
            group_name=group_name,
            bal=bal,
        ),
        [],
    )


def _cross_row_problems(rows: list[ImportRow]) -> Iterator[ImportProblem]:
    emails: dict[str, int] = {}
    matrix_ids: dict[str, int] = {}
    groups: dict[str, ImportRow] = {}
    bals: dict[str, ImportRow] = {}
    for row in rows:
        if row.email is not None:
            first = emails.setdefault(row.email, row.line)
            if first != row.line:
                yield ImportProblem(row.line, f"email « {row.email} » déjà présent ligne {first}")
        if row.matrix_id is not None:
            first = matrix_ids.setdefault(row.matrix_id, row.line)
            if first != row.line:
                yield ImportProblem(
                    row.line, f"identifiant Matrix « {row.matrix_id} » déjà présent ligne {first}"
                )
        key = fold(row.group_name)
        owner = groups.setdefault(key, row)
        if owner.organisation_id != row.organisation_id:
            yield ImportProblem(
                row.line,
                f"le groupe « {row.group_name} » est rattaché à une autre organisation "
                f"ligne {owner.line}",
            )
        # A group has one shared mailbox: two different ones is a typo somewhere.
        if row.bal is not None:
            with_bal = bals.setdefault(key, row)
            if with_bal.bal != row.bal:
                yield ImportProblem(
                    row.line,
                    f"le groupe « {row.group_name} » a déjà la BAL « {with_bal.bal} » "
                    f"ligne {with_bal.line}",
                )
