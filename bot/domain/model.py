"""Business vocabulary shared by every layer: pure data, no I/O.

Names follow Administration+: demande, mandat, aidant, instructeur, groupe,
organisation, territoire (a département code).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum


class DirectoryConflict(ValueError):
    """A directory change would give one agent (or group) what belongs to another:
    an email, a Matrix ID or a group name (French message, for the operator)."""


class OrganisationKind(StrEnum):
    AIDANT = "aidant"
    OPERATEUR = "operateur"


class Role(StrEnum):
    AIDANT = "aidant"
    INSTRUCTEUR = "instructeur"
    RESPONSABLE = "responsable"
    OPERATEUR = "operateur"


class Status(StrEnum):
    NOUVELLE = "nouvelle"
    EN_COURS = "en_cours"
    TRAITEE = "traitee"
    CLOTUREE = "cloturee"

    @property
    def label(self) -> str:
        return STATUS_LABELS[self]


STATUS_LABELS: dict[Status, str] = {
    Status.NOUVELLE: "nouvelle",
    Status.EN_COURS: "en cours",
    Status.TRAITEE: "traitée",
    Status.CLOTUREE: "clôturée",
}


class MandatType(StrEnum):
    PAPIER = "papier"
    ORAL = "oral"
    SMS = "sms"


class Usefulness(StrEnum):
    """Answer to « La réponse vous semble-t-elle utile pour l'usager ? »."""

    UTILE = "utile"
    NESAISPAS = "nesaispas"
    INUTILE = "inutile"


@dataclass(frozen=True, slots=True)
class Organisation:
    id: str
    name: str
    kind: OrganisationKind
    # Other names aidants use (« sécu », « Pôle emploi »), found like the name.
    aliases: tuple[str, ...] = ()
    # Usager identifiers (ids of `USAGER_IDENTIFIERS`) this body requires or suggests.
    required_identifiers: tuple[str, ...] = ()
    suggested_identifiers: tuple[str, ...] = ()
    # Its agents and shared mailboxes get a dossier by email without the optional
    # identifiers (NIR, address, phone): a line asks them to ask in reply.
    withholds_identifiers: bool = False


@dataclass(frozen=True, slots=True)
class Departement:
    code: str
    name: str


@dataclass(frozen=True, slots=True)
class Group:
    id: int
    name: str
    organisation_id: str
    departements: frozenset[str]
    bal: str | None = None


@dataclass(frozen=True, slots=True)
class Agent:
    """A person in the directory. Matrix ID and email are each optional, not both."""

    id: int
    first_name: str
    last_name: str
    email: str | None
    matrix_id: str | None
    group_id: int | None
    roles: frozenset[Role]
    active: bool = True

    @property
    def display_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    @property
    def email_only(self) -> bool:
        return self.matrix_id is None

    def has(self, role: Role) -> bool:
        return role in self.roles


@dataclass(frozen=True, slots=True)
class Usager:
    prenom: str
    nom: str
    date_naissance: date
    nir: str | None = None
    numero_allocataire_caf: str | None = None
    nif: str | None = None
    adresse: str | None = None
    telephone: str | None = None


@dataclass(frozen=True, slots=True)
class Mandat:
    type: MandatType
    date: date
    attestation: bool


@dataclass(frozen=True, slots=True)
class DemandeForm:
    """A validated opening form: everything needed to open a demande."""

    territoire: str
    organisations: tuple[str, ...]
    categorie: str | None
    objet: str
    usager: Usager
    description: str
    mandat: Mandat


@dataclass(frozen=True, slots=True)
class StatusTimes:
    """When each step happened; the headline metric needs created → traitée/clôturée."""

    created_at: datetime
    first_answer_at: datetime | None = None
    last_answer_at: datetime | None = None
    treated_at: datetime | None = None
    closed_at: datetime | None = None
    reopened_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Participant:
    """One line of a demande's ledger of authorised participants."""

    agent_id: int
    matrix_id: str | None
    email: str | None
    group_id: int | None
    kind: str  # "aidant" | "instructeur" | "invite"
    active: bool = True


@dataclass(frozen=True, slots=True)
class Demande:
    """A demande's metadata: never the usager's data (only reachable through the store's
    `load_form`), so that it may be logged, shown to operators and passed anywhere."""

    id: int
    reference: str
    territoire: str
    organisations: tuple[str, ...]
    categorie: str | None
    status: Status
    times: StatusTimes
    usefulness: Usefulness | None
    aidant_agent_id: int
    room_id: str | None
    creation_step: str  # "pending" | "room_created" | "invited" | "ready"
    dossier_event_id: str | None
    group_ids: tuple[int, ...]
    draft_id: int | None
