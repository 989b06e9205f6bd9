"""What a directory import would do, line by line, and why a line may not (pure).

The service (`bot.services.directory`) checks each line against the directory and the
ledgers; these are the answers, and their French wording for the operators.
"""

from __future__ import annotations

from dataclasses import dataclass

PREVIEW_HEADERS = ("Ligne", "Agent", "Groupe", "Rôles", "Action")
REFS_SHOWN = 5


@dataclass(frozen=True, slots=True)
class PlannedLine:
    """What one line of the file does to the directory, or why it may not."""

    line: int
    who: str
    group: str
    roles: str
    agent_id: int | None = None  # None: a new agent
    changed: tuple[str, ...] = ()  # contact fields that change: "matrix", "email"
    stays_inactive: bool = False
    refusal: str | None = None

    @property
    def action(self) -> str:
        if self.refusal is not None:
            return "refusée : " + self.refusal
        if self.agent_id is None:
            return "création"
        text = f"mise à jour (n° {self.agent_id})"
        if self.changed:
            labels = {"matrix": "identifiant Matrix", "email": "adresse e-mail"}
            text += ", nouveau contact : " + " et ".join(labels[c] for c in self.changed)
        if self.stays_inactive:
            text += f" ; reste désactivé (pour le réactiver : !agent-reactiver {self.agent_id})"
        return text


@dataclass(frozen=True, slots=True)
class ImportPlan:
    lines: tuple[PlannedLine, ...]
    new_groups: tuple[str, ...]

    @property
    def refused(self) -> tuple[PlannedLine, ...]:
        return tuple(p for p in self.lines if p.refusal is not None)

    def preview_rows(self) -> list[list[str]]:
        return [[str(p.line), p.who, p.group, p.roles, p.action] for p in self.lines]


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    groups: int
    created: int
    updated: int
    agent_ids: tuple[int, ...]
    inactive: tuple[PlannedLine, ...]
    joined: tuple[str, ...] = ()  # references of the open demandes instructeurs joined


class ImportRefused(Exception):
    """Lines against the ledger rules: nothing was written (the transaction is undone)."""

    def __init__(self, refused: tuple[PlannedLine, ...]) -> None:
        super().__init__(f"{len(refused)} line(s) refused")
        self.refused = refused


def refusal_headline(refused: tuple[PlannedLine, ...], name: str | None = None) -> str:
    what = f"Import de « {name} » refusé" if name else "Import refusé"
    return (
        f"{what} : {len(refused)} ligne(s) contraire(s) aux règles de l'annuaire, rien ne "
        "sera importé."
    )


def refusal_text(refused: tuple[PlannedLine, ...], name: str | None = None) -> str:
    lines = [refusal_headline(refused, name)]
    lines += [f"  ligne {p.line} : {p.refusal}" for p in refused]
    return "\n".join(lines)


def inactive_text(inactive: tuple[PlannedLine, ...]) -> str:
    """The deactivated agents the import updated and left deactivated."""
    if not inactive:
        return ""
    listed = ", ".join(f"ligne {p.line} (n° {p.agent_id})" for p in inactive[:REFS_SHOWN])
    if len(inactive) > REFS_SHOWN:
        listed += ", …"
    return (
        f" {len(inactive)} agent(s) désactivé(s) le reste(nt) : {listed} ; pour réactiver : "
        "!agent-reactiver <n°>."
    )
