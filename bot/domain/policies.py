"""Policies as data: the validated content of the `policies/` folder.

`validate_policies` turns the parsed TOML of each file into typed, frozen
objects, or raises `PolicyError` listing every problem at once, each naming the
file and the dotted key path, so an operator fixes a bad deploy in one pass.
Pure: the files are read by `bot.policy_loader`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from bot.domain.model import Departement, Organisation, OrganisationKind, Role

ORGANISATIONS_FILE = "organisations.toml"
DEPARTEMENTS_FILE = "departements.toml"
ROUTING_FILE = "routing.toml"
MEMBERSHIP_FILE = "membership.toml"
POLICY_FILES: tuple[str, ...] = (
    ORGANISATIONS_FILE,
    DEPARTEMENTS_FILE,
    ROUTING_FILE,
    MEMBERSHIP_FILE,
)

# The usager identifiers an organisation may require or suggest (policies' ids).
USAGER_IDENTIFIERS: tuple[str, ...] = ("nir", "numero_allocataire_caf", "nif")

_SLUG = re.compile(r"[a-z][a-z0-9_]*\Z")
# Metropolitan 01-95 (no 20 since 1976: Corsica is 2A/2B); overseas 971-974 and 976
# (975, Saint-Pierre-et-Miquelon, is a collectivité, not a département).
_DEPARTEMENT_CODE = re.compile(r"(?:0[1-9]|1[0-9]|2[1-9AB]|[3-8][0-9]|9[0-5]|97[1-46])\Z")
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_SERVER_NAME = re.compile(
    rf"(?P<host>\[[0-9A-Fa-f:.]{{2,45}}\]|{_DNS_LABEL}(?:\.{_DNS_LABEL})*)(?::(?P<port>[0-9]{{1,5}}))?\Z"
)
# Matrix user IDs created today use this lowercase grammar; we accept nothing wider.
_MATRIX_LOCALPART = re.compile(r"[a-z0-9._=/+-]+\Z")


# --- small shared helpers -------------------------------------------------------


def fold(text: str) -> str:
    """Comparison key ignoring case, accents and punctuation.

    "France Rénov'", "france_renov" and "FRANCE RENOV" all fold to "france renov":
    spreadsheets and people spell names every way.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^0-9a-z]+", " ", bare.casefold()).split())


def normalise_departement_code(text: str) -> str:
    """Canonical form of a typed code: "2a" → "2A", "1" → "01" (Excel drops zeros)."""
    code = text.strip().upper()
    if len(code) == 1 and code.isdigit():
        code = "0" + code
    return code


def is_valid_departement_code(code: str) -> bool:
    return _DEPARTEMENT_CODE.match(code) is not None


def is_valid_server_name(name: str) -> bool:
    """Matrix server name: DNS name, IPv4 or [IPv6] literal, optional port."""
    match = _SERVER_NAME.match(name)
    if match is None or len(match.group("host")) > 255:
        return False
    port = match.group("port")
    return port is None or 1 <= int(port) <= 65535


def is_valid_matrix_user_id(user_id: str) -> bool:
    if not user_id.startswith("@") or ":" not in user_id or len(user_id) > 255:
        return False
    localpart, server = user_id[1:].split(":", 1)
    return _MATRIX_LOCALPART.match(localpart) is not None and is_valid_server_name(server)


def server_name_of(user_id: str) -> str:
    """The homeserver part of "@local:server" (the caller has validated the ID)."""
    return user_id.split(":", 1)[1]


# --- validated policy objects ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Category:
    id: str
    label: str
    organisations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MembershipRules:
    """Who may join a demande.

    `allowed_homeservers` holds the configured servers only: the bot's own server
    is not in the file and the caller adds it with `with_homeserver`.
    """

    allowed_homeservers: tuple[str, ...]  # lowercase, in file order
    cross_departement_invitations: bool
    invitable_roles: frozenset[Role]
    invitable_organisation_kinds: frozenset[OrganisationKind]
    max_participants: int

    def with_homeserver(self, server_name: str) -> MembershipRules:
        name = server_name.lower()
        return MembershipRules(
            allowed_homeservers=tuple(dict.fromkeys([*self.allowed_homeservers, name])),
            cross_departement_invitations=self.cross_departement_invitations,
            invitable_roles=self.invitable_roles,
            invitable_organisation_kinds=self.invitable_organisation_kinds,
            max_participants=self.max_participants,
        )

    def homeserver_allowed(self, server_name: str) -> bool:
        return server_name.lower() in self.allowed_homeservers


@dataclass(frozen=True)
class Policies:
    organisations: Mapping[str, Organisation]
    departements: Mapping[str, Departement]
    categories: Mapping[str, Category]
    membership: MembershipRules
    _by_folded: Mapping[str, Organisation] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        index: dict[str, Organisation] = {}
        for organisation in self.organisations.values():
            index.setdefault(fold(organisation.name), organisation)
            index[fold(organisation.id)] = organisation
        for organisation in self.organisations.values():
            for alias in organisation.aliases:
                index.setdefault(fold(alias), organisation)
        object.__setattr__(self, "_by_folded", MappingProxyType(index))

    def organisation(self, organisation_id: str) -> Organisation | None:
        return self.organisations.get(organisation_id)

    def find_organisation(self, text: str) -> Organisation | None:
        """By id, display name or alias, ignoring case, accents and punctuation."""
        return self._by_folded.get(fold(text))

    def organisation_names(self) -> Mapping[str, Organisation]:
        """Every folded id, name and alias, with its organisation (for suggestions)."""
        return self._by_folded

    def find_departement(self, text: str) -> Departement | None:
        """By code or name, in any case, with or without accents, hyphens, apostrophes."""
        found = self.departement(text)
        if found is not None:
            return found
        wanted = fold(text)
        return next((d for d in self.departements.values() if fold(d.name) == wanted), None)

    def departement(self, code: str) -> Departement | None:
        return self.departements.get(normalise_departement_code(code))

    def category(self, category_id: str) -> Category | None:
        return self.categories.get(category_id)


# --- problems ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        if self.key:
            return f"{self.file}: {self.key}: {self.message}"
        return f"{self.file}: {self.message}"


class PolicyError(Exception):
    def __init__(self, problems: Iterable[PolicyProblem]) -> None:
        self.problems: tuple[PolicyProblem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def key_path(*parts: str | int) -> str:
    """Dotted path as written in TOML: `categories.logement.organisations[2]`."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        shown = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
        out = f"{out}.{shown}" if out else shown
    return out


class _Report:
    """Collects problems for one file, so each check stays a one-liner."""

    def __init__(self, file: str, sink: list[PolicyProblem]) -> None:
        self.file = file
        self.sink = sink

    def add(self, key: str, message: str) -> None:
        self.sink.append(PolicyProblem(self.file, key, message))

    def table(self, value: Any, key: str) -> Mapping[str, Any] | None:
        if isinstance(value, Mapping):
            return value
        self.add(key, f"table attendue, {_describe(value)} trouvé")
        return None

    def string(self, value: Any, key: str) -> str | None:
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, str):
            self.add(key, "texte vide")
        else:
            self.add(key, f"texte attendu, {_describe(value)} trouvé")
        return None

    def string_list(self, value: Any, key: str) -> list[tuple[int, str]] | None:
        if not isinstance(value, list):
            self.add(key, f"liste attendue, {_describe(value)} trouvé")
            return None
        items: list[tuple[int, str]] = []
        for index, item in enumerate(value):
            text = self.string(item, f"{key}[{index}]")
            if text is not None:
                items.append((index, text))
        return items

    def keys(
        self,
        table: Mapping[str, Any],
        prefix: tuple[str, ...],
        required: tuple[str, ...],
        optional: tuple[str, ...] = (),
    ) -> None:
        for name in required:
            if name not in table:
                self.add(key_path(*prefix, name), "clé obligatoire manquante")
        for name in table:
            if name not in required and name not in optional:
                self.add(key_path(*prefix, name), "clé inconnue")


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "un booléen"
    if isinstance(value, int):
        return "un entier"
    if isinstance(value, float):
        return "un nombre décimal"
    if isinstance(value, str):
        return "un texte"
    if isinstance(value, list):
        return "une liste"
    if isinstance(value, Mapping):
        return "une table"
    return "une date" if value is not None else "rien"


# --- per-file validation -----------------------------------------------------------

# What an organisation's email-only agents and shared mailboxes get of the optional
# identifiers (NIR, address, phone) in the dossier email.
EMAIL_IDENTIFIERS = ("full", "withheld")


def _organisations(
    content: Mapping[str, Any], sink: list[PolicyProblem]
) -> dict[str, Organisation]:
    report = _Report(ORGANISATIONS_FILE, sink)
    report.keys(content, (), ("organisations",))
    table = report.table(content.get("organisations", {}), "organisations")
    result: dict[str, Organisation] = {}
    if table is None:
        return result
    if not table and "organisations" in content:
        report.add("organisations", "aucune organisation déclarée")
    kinds = ", ".join(k.value for k in OrganisationKind)
    seen: dict[str, str] = {}  # folded id or name → id that owns it
    for org_id, entry in table.items():
        path = ("organisations", org_id)
        if not _SLUG.match(org_id):
            report.add(key_path(*path), "identifiant invalide (minuscules ASCII, chiffres et _)")
        body = report.table(entry, key_path(*path))
        if body is None:
            continue
        report.keys(
            body,
            path,
            ("name", "kind"),
            ("aliases", "required_identifiers", "suggested_identifiers", "email_identifiers"),
        )
        name = report.string(body["name"], key_path(*path, "name")) if "name" in body else None
        aliases = [
            text
            for _index, text in (
                report.string_list(body["aliases"], key_path(*path, "aliases"))
                if "aliases" in body
                else []
            )
            or []
        ]
        identifiers: dict[str, tuple[str, ...]] = {}
        for which in ("required_identifiers", "suggested_identifiers"):
            found: list[str] = []
            for index, text in (
                report.string_list(body[which], key_path(*path, which)) if which in body else []
            ) or []:
                if text not in USAGER_IDENTIFIERS:
                    report.add(
                        key_path(*path, which, index),
                        f"identifiant « {text} » inconnu (attendu : "
                        + ", ".join(USAGER_IDENTIFIERS)
                        + ")",
                    )
                elif text not in found:
                    found.append(text)
            identifiers[which] = tuple(found)
        withheld = False
        if "email_identifiers" in body:
            where = key_path(*path, "email_identifiers")
            raw = report.string(body["email_identifiers"], where)
            if raw is not None and raw not in EMAIL_IDENTIFIERS:
                choices = ", ".join(EMAIL_IDENTIFIERS)
                report.add(where, f"valeur « {raw} » inconnue (attendu : {choices})")
            withheld = raw == "withheld"
        kind: OrganisationKind | None = None
        if "kind" in body:
            raw_kind = report.string(body["kind"], key_path(*path, "kind"))
            if raw_kind is not None:
                try:
                    kind = OrganisationKind(raw_kind)
                except ValueError:
                    report.add(
                        key_path(*path, "kind"),
                        f"type « {raw_kind} » inconnu (attendu : {kinds})",
                    )
        # The CSV import finds organisations by id or name: both must be unambiguous.
        names: list[tuple[str, str | None]] = [("identifiant", org_id), ("nom", name)]
        names += [("alias", a) for a in aliases]
        for label, spelled in names:
            if spelled is None:
                continue
            owner = seen.setdefault(fold(spelled), org_id)
            if owner != org_id:
                where = {"nom": key_path(*path, "name"), "alias": key_path(*path, "aliases")}.get(
                    label, key_path(*path)
                )
                report.add(where, f"{label} « {spelled} » confondu avec l'organisation « {owner} »")
        if name is not None and kind is not None and _SLUG.match(org_id):
            result[org_id] = Organisation(
                id=org_id,
                name=name,
                kind=kind,
                aliases=tuple(aliases),
                required_identifiers=identifiers["required_identifiers"],
                suggested_identifiers=identifiers["suggested_identifiers"],
                withholds_identifiers=withheld,
            )
    return result


def _departements(content: Mapping[str, Any], sink: list[PolicyProblem]) -> dict[str, Departement]:
    report = _Report(DEPARTEMENTS_FILE, sink)
    report.keys(content, (), ("departements",))
    table = report.table(content.get("departements", {}), "departements")
    result: dict[str, Departement] = {}
    if table is None:
        return result
    if not table and "departements" in content:
        report.add("departements", "aucun département déclaré")
    names: dict[str, str] = {}
    for code, value in table.items():
        path = key_path("departements", code)
        name = report.string(value, path)
        if not is_valid_departement_code(code):
            report.add(path, f"code de département invalide « {code} » (ex. 01, 2A, 974)")
            continue
        if name is None:
            continue
        other = names.setdefault(fold(name), code)
        if other != code:
            report.add(path, f"nom « {name} » déjà utilisé par le département {other}")
            continue
        result[code] = Departement(code=code, name=name)
    return result


def _categories(
    content: Mapping[str, Any],
    organisations: Mapping[str, Organisation] | None,
    sink: list[PolicyProblem],
) -> dict[str, Category]:
    report = _Report(ROUTING_FILE, sink)
    report.keys(content, (), ("categories",))
    table = report.table(content.get("categories", {}), "categories")
    result: dict[str, Category] = {}
    if table is None:
        return result
    labels: dict[str, str] = {}
    for cat_id, entry in table.items():
        path = ("categories", cat_id)
        valid_id = _SLUG.match(cat_id) is not None
        if not valid_id:
            report.add(key_path(*path), "identifiant invalide (minuscules ASCII, chiffres et _)")
        body = report.table(entry, key_path(*path))
        if body is None:
            continue
        report.keys(body, path, ("label", "organisations"))
        label = None
        if "label" in body:
            label = report.string(body["label"], key_path(*path, "label"))
            if label is not None:
                other = labels.setdefault(fold(label), cat_id)
                if other != cat_id:
                    report.add(
                        key_path(*path, "label"),
                        f"libellé « {label} » déjà utilisé par la catégorie « {other} »",
                    )
        members: list[str] = []
        ok = True
        if "organisations" in body:
            items = report.string_list(body["organisations"], key_path(*path, "organisations"))
            ok = items is not None and len(items) == len(body["organisations"])
            for index, org_id in items or []:
                where = key_path(*path, "organisations", index)
                if org_id in members:
                    report.add(where, f"organisation « {org_id} » en double")
                    ok = False
                    continue
                members.append(org_id)
                # Cross-references are checked only when organisations.toml itself parsed.
                if organisations is None:
                    continue
                organisation = organisations.get(org_id)
                if organisation is None:
                    report.add(where, f"organisation inconnue « {org_id} »")
                    ok = False
                elif organisation.kind is not OrganisationKind.OPERATEUR:
                    report.add(
                        where,
                        f"« {org_id} » est une organisation côté aidant : "
                        "elle ne reçoit pas de demandes",
                    )
                    ok = False
        if valid_id and label is not None and ok and "organisations" in body:
            result[cat_id] = Category(id=cat_id, label=label, organisations=tuple(members))
    return result


def _membership(content: Mapping[str, Any], sink: list[PolicyProblem]) -> MembershipRules | None:
    report = _Report(MEMBERSHIP_FILE, sink)
    fields = (
        "allowed_homeservers",
        "cross_departement_invitations",
        "invitable_roles",
        "invitable_organisation_kinds",
        "max_participants",
    )
    report.keys(content, (), fields)
    before = len(sink)

    servers: list[str] = []
    if "allowed_homeservers" in content:
        items = report.string_list(content["allowed_homeservers"], "allowed_homeservers")
        for index, server in items or []:
            where = f"allowed_homeservers[{index}]"
            if not is_valid_server_name(server):
                report.add(where, f"nom de serveur invalide « {server} » (ex. matrix.gouv.fr)")
            elif server.lower() in servers:
                report.add(where, f"serveur « {server} » en double")
            else:
                servers.append(server.lower())

    cross = content.get("cross_departement_invitations")
    if "cross_departement_invitations" in content and not isinstance(cross, bool):
        report.add(
            "cross_departement_invitations",
            f"booléen attendu (true/false), {_describe(cross)} trouvé",
        )

    roles = _enum_set(report, content, "invitable_roles", Role)
    kinds = _enum_set(report, content, "invitable_organisation_kinds", OrganisationKind)

    maximum = content.get("max_participants")
    if "max_participants" in content:
        if not isinstance(maximum, int) or isinstance(maximum, bool):
            report.add("max_participants", f"entier attendu, {_describe(maximum)} trouvé")
        elif maximum < 2:
            report.add("max_participants", f"au moins 2 participants (trouvé : {maximum})")

    if len(sink) != before or not all(name in content for name in fields):
        return None
    assert isinstance(cross, bool) and isinstance(maximum, int)
    return MembershipRules(
        allowed_homeservers=tuple(servers),
        cross_departement_invitations=cross,
        invitable_roles=frozenset(roles),
        invitable_organisation_kinds=frozenset(kinds),
        max_participants=maximum,
    )


_E = TypeVar("_E", Role, OrganisationKind)


def _enum_set(report: _Report, content: Mapping[str, Any], key: str, enum: type[_E]) -> set[_E]:
    found: set[_E] = set()
    if key not in content:
        return found
    allowed = ", ".join(member.value for member in enum)
    for index, text in report.string_list(content[key], key) or []:
        try:
            member = enum(text)
        except ValueError:
            report.add(f"{key}[{index}]", f"valeur « {text} » inconnue (attendu : {allowed})")
            continue
        if member in found:
            report.add(f"{key}[{index}]", f"valeur « {text} » en double")
        found.add(member)
    return found


# --- entry points -------------------------------------------------------------------


def check_policies(
    raw: Mapping[str, Mapping[str, Any]],
) -> tuple[Policies | None, tuple[PolicyProblem, ...]]:
    """Validate what was parsed; a file absent from `raw` is reported as missing.

    Returns the policies only when there is no problem at all.
    """
    problems: list[PolicyProblem] = []
    for name in raw:
        if name not in POLICY_FILES:
            problems.append(PolicyProblem(name, "", "fichier de politique inattendu"))
    for name in POLICY_FILES:
        if name not in raw:
            problems.append(PolicyProblem(name, "", "fichier manquant"))

    organisations = (
        _organisations(raw[ORGANISATIONS_FILE], problems) if ORGANISATIONS_FILE in raw else None
    )
    organisations_ok = ORGANISATIONS_FILE in raw and not any(
        p.file == ORGANISATIONS_FILE for p in problems
    )
    departements = (
        _departements(raw[DEPARTEMENTS_FILE], problems) if DEPARTEMENTS_FILE in raw else {}
    )
    categories = (
        # Without a sound catalogue every reference would look unknown: skip that noise.
        _categories(raw[ROUTING_FILE], organisations if organisations_ok else None, problems)
        if ROUTING_FILE in raw
        else {}
    )
    membership = _membership(raw[MEMBERSHIP_FILE], problems) if MEMBERSHIP_FILE in raw else None

    if problems or organisations is None or membership is None:
        return None, tuple(problems)
    return (
        Policies(
            organisations=MappingProxyType(organisations),
            departements=MappingProxyType(departements),
            categories=MappingProxyType(categories),
            membership=membership,
        ),
        (),
    )


def validate_policies(raw: Mapping[str, Mapping[str, Any]]) -> Policies:
    """Typed policies from the parsed content of each file, keyed by file name.

    Raises `PolicyError` carrying every problem found.
    """
    policies, problems = check_policies(raw)
    if policies is None:
        raise PolicyError(problems)
    return policies
