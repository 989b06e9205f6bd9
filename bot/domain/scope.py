"""An operator's scope (pure): national, or territorial (a list of départements).

A territorial operator sees and changes only what belongs to their départements: a
demande by its territoire, a group when all its départements are theirs, an agent by
their group (an agent without a group is national business). Commands that act on the
whole service (retention, policies, reminders, identities) are national only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bot.domain.model import Demande, Group

# Admin commands a territorial operator may not run: they act on the whole service.
NATIONAL_ONLY = frozenset(
    {
        "retention",
        "relances",
        "recapitulatif",
        "retards",
        "politiques-recharger",
        "identite-accepter",
        "inactifs",
        "operateur-perimetre",
    }
)


class OutOfScope(PermissionError):
    """A territorial operator's command touched what is not theirs (French message)."""


@dataclass(frozen=True, slots=True)
class OperatorScope:
    departements: frozenset[str] | None = None  # None: national

    @staticmethod
    def of(codes: Iterable[str] | None) -> OperatorScope:
        return OperatorScope(None if codes is None else frozenset(codes))

    @property
    def national(self) -> bool:
        return self.departements is None

    def label(self) -> str:
        """What the audit records."""
        return "national" if self.departements is None else ",".join(sorted(self.departements))

    def covers_territoire(self, code: str) -> bool:
        return self.departements is None or code in self.departements

    def covers_departements(self, codes: Iterable[str]) -> bool:
        wanted = frozenset(codes)
        return self.departements is None or (bool(wanted) and wanted <= self.departements)

    def covers_group(self, group: Group | None) -> bool:
        if self.departements is None:
            return True
        return group is not None and self.covers_departements(group.departements)

    def covers_demande(self, demande: Demande) -> bool:
        return self.covers_territoire(demande.territoire)

    def allows_command(self, name: str) -> bool:
        return self.departements is None or name not in NATIONAL_ONLY


REFUSED_NATIONAL_ONLY = (
    "Commande réservée aux opérateurs nationaux : votre périmètre est limité aux "
    "départements {codes}."
)
