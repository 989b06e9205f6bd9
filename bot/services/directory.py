"""Loading the directory from an Administration+ CSV file: all lines or none.

An import follows the ledger rules of the operators' commands, line by line:
- `!agent-modifier`'s rule: the contacts (Matrix ID, email) of an agent who takes part in
  demandes never change, since each ledger knows them by those contacts (the old Matrix ID
  would stay authorised and keep receiving room keys). Such a line refuses the import; the
  way out is the audited one: deactivate (leaves every demande, kicked), import, reactivate.
- `!agent-reactiver`'s rule: only that command reactivates. An import leaves a
  deactivated agent deactivated, and says so in its preview.
- Only `!agent-modifier` erases a contact: an empty cell, or a file without the Matrix
  column (an Administration+ export), keeps what the directory knows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from bot.domain.directory_csv import DirectoryImport, ImportRow, parse_directory_csv
from bot.domain.directory_import import (
    REFS_SHOWN,
    ImportOutcome,
    ImportPlan,
    ImportRefused,
    PlannedLine,
    inactive_text,
    refusal_text,
)
from bot.domain.model import Agent, Demande, DirectoryConflict
from bot.domain.policies import Policies, fold
from bot.policy_loader import load_policies
from bot.ports import ConsoleTx
from bot.settings import Settings
from bot.store.crypto import FieldCipher
from bot.store.db import Store


@dataclass(frozen=True, slots=True)
class ImportReport:
    ok: bool
    text: str


async def taking_part(tx: ConsoleTx, agent_id: int) -> list[Demande]:
    """Demandes whose ledger lists the agent as an active participant."""
    out = []
    for demande in await tx.demandes_of_agent(agent_id):
        if any(p.agent_id == agent_id for p in await tx.participants(demande.id)):
            out.append(demande)
    return out


def _kept(agent: Agent | None, row: ImportRow) -> tuple[str | None, str | None]:
    """The line's (Matrix ID, email); an empty cell, or a file without the Matrix column
    (an Administration+ export), keeps what the directory knows: only !agent-modifier
    erases a contact."""
    if agent is None:
        return row.matrix_id, row.email
    return row.matrix_id or agent.matrix_id, row.email or agent.email


def _contact_change(agent: Agent, row: ImportRow) -> tuple[tuple[str, ...], str]:
    """The contact fields the line changes, and how, in French."""
    matrix_id, email = _kept(agent, row)
    changed, said = [], []
    if matrix_id != agent.matrix_id:
        changed.append("matrix")
        said.append(f"identifiant Matrix {agent.matrix_id or '(aucun)'} → {matrix_id}")
    if email != agent.email:
        changed.append("email")
        said.append(f"adresse e-mail {agent.email or '(aucune)'} → {email}")
    return tuple(changed), ", ".join(said)


@dataclass(frozen=True, slots=True)
class _Directory:
    """Every agent, read once (a national file has thousands of lines)."""

    by_matrix_id: dict[str, Agent]
    by_email: dict[str, Agent]
    by_id: dict[int, Agent]

    @classmethod
    async def read(cls, tx: ConsoleTx) -> _Directory:
        agents = await tx.list_agents(active_only=False)
        return cls(
            {a.matrix_id: a for a in agents if a.matrix_id},
            {a.email: a for a in agents if a.email},
            {a.id: a for a in agents},
        )


async def _plan_line(
    tx: ConsoleTx, known: _Directory, row: ImportRow, first_line_of: dict[int, int]
) -> PlannedLine:
    base = PlannedLine(
        line=row.line,
        who=f"{row.first_name} {row.last_name}",
        group=row.group_name,
        roles=", ".join(sorted(r.value for r in row.roles)),
    )
    by_mx = known.by_matrix_id.get(row.matrix_id) if row.matrix_id else None
    by_email = known.by_email.get(row.email) if row.email else None
    if by_mx is not None and by_email is not None and by_mx.id != by_email.id:
        return _refuse(
            base,
            f"{row.matrix_id} et {row.email} désignent deux agents différents de l'annuaire "
            f"(n° {by_mx.id} et n° {by_email.id}) : corrigez la ligne.",
        )
    agent = by_mx or by_email
    if agent is None:
        return base
    first = first_line_of.setdefault(agent.id, row.line)
    if first != row.line:
        return _refuse(
            base, f"désigne le même agent (n° {agent.id}) que la ligne {first} : gardez-en une."
        )
    changed, said = _contact_change(agent, row)
    planned = replace(base, agent_id=agent.id, changed=changed, stays_inactive=not agent.active)
    if not changed:
        return planned
    demandes = await taking_part(tx, agent.id)
    if not demandes:
        return planned
    refs = ", ".join(d.reference for d in demandes[:REFS_SHOWN])
    if len(demandes) > REFS_SHOWN:
        refs += ", …"
    return _refuse(
        planned,
        f"{agent.display_name} (n° {agent.id}) participe à {len(demandes)} demande(s) "
        f"({refs}) sous son contact actuel ; ce fichier le change ({said}). "
        f"Comme pour !agent-modifier : désactivez cet agent (!agent-desactiver {agent.id}), "
        f"importez de nouveau le fichier, puis réactivez-le (!agent-reactiver {agent.id}).",
    )


def _refuse(planned: PlannedLine, why: str) -> PlannedLine:
    return replace(planned, refusal=why)


async def plan_import(tx: ConsoleTx, parsed: DirectoryImport) -> ImportPlan:
    """Each line checked against the directory and the ledgers, nothing written."""
    return (await _plan(tx, parsed))[0]


async def _plan(tx: ConsoleTx, parsed: DirectoryImport) -> tuple[ImportPlan, _Directory]:
    known = await _Directory.read(tx)
    first_line_of: dict[int, int] = {}
    lines = [await _plan_line(tx, known, row, first_line_of) for row in parsed.rows]
    groups = {fold(g.name) for g in await tx.list_groups()}
    new_groups = tuple(g.name for g in parsed.groups() if fold(g.name) not in groups)
    return ImportPlan(tuple(lines), new_groups), known


async def apply_import(
    tx: ConsoleTx, parsed: DirectoryImport, *, actor: str, now: datetime
) -> ImportOutcome:
    """Upsert groups then agents in one transaction; raises `ImportRefused` (before any
    write, or so that the caller's transaction is undone) when a line breaks a rule."""
    plan, directory = await _plan(tx, parsed)
    if plan.refused:
        raise ImportRefused(plan.refused)
    groups = {}
    for g in parsed.groups():
        groups[g.name] = await tx.upsert_group(
            name=g.name, organisation_id=g.organisation_id, departements=g.departements, bal=g.bal
        )
    created = updated = 0
    ids: list[int] = []
    for row, planned in zip(parsed.rows, plan.lines, strict=True):
        group = groups.get(row.group_name) or await tx.get_group_by_name(row.group_name)
        found = directory.by_id.get(planned.agent_id) if planned.agent_id is not None else None
        matrix_id, email = _kept(found, row)
        try:
            agent, is_new = await tx.upsert_agent(
                first_name=row.first_name,
                last_name=row.last_name,
                email=email,
                matrix_id=matrix_id,
                group_id=group.id if group else None,
                roles=row.roles,
                # Only !agent-reactiver reactivates: an import leaves `active` as it is.
                active=not planned.stays_inactive,
            )
        except DirectoryConflict as exc:
            raise ImportRefused((_refuse(planned, str(exc)),)) from exc
        ids.append(agent.id)
        created += is_new
        updated += not is_new
        for field in planned.changed:
            await tx.audit(
                "agent_changed",
                actor=actor,
                details={"agent": agent.id, "field": field, "via": "import"},
                now=now,
            )
    inactive = tuple(p for p in plan.lines if p.stays_inactive)
    await tx.audit(
        "directory_imported",
        actor=actor,
        details={
            "groups": len(groups),
            "created": created,
            "updated": updated,
            "left_inactive": len(inactive),
        },
        now=now,
    )
    return ImportOutcome(len(groups), created, updated, tuple(ids), inactive)


async def record_refusal(
    store: Store, refused: tuple[PlannedLine, ...], *, actor: str, now: datetime, file: str | None
) -> None:
    """Audited with the line numbers only (the reasons name people)."""
    details: dict[str, object] = {
        "errors": len(refused),
        "lines": [p.line for p in refused],
        "why": "ledger_rules",
    }
    if file is not None:
        details["file"] = file
    async with store.transaction() as tx:
        await tx.audit("directory_import_refused", actor=actor, details=details, now=now)


def report_errors(parsed: DirectoryImport) -> str:
    lines = [f"Import refusé : {len(parsed.errors)} ligne(s) à corriger, rien n'a été importé."]
    lines += [f"  ligne {p.line} : {p.message}" for p in parsed.errors]
    return "\n".join(lines)


async def import_directory_text(
    store: Store,
    text: str,
    policies: Policies,
    *,
    actor: str,
    now: datetime,
    own_server: str | None = None,
) -> ImportReport:
    """`own_server`: the bot's homeserver, always allowed besides the policy's list."""
    rules = policies.membership.with_homeserver(own_server) if own_server else None
    parsed = parse_directory_csv(text, policies, rules)
    if not parsed.ok:
        async with store.transaction() as tx:
            await tx.audit(
                "directory_import_refused",
                actor=actor,
                details={"errors": len(parsed.errors)},
                now=now,
            )
        return ImportReport(False, report_errors(parsed))
    try:
        async with store.transaction() as tx:
            outcome = await apply_import(tx, parsed, actor=actor, now=now)
    except ImportRefused as exc:
        await record_refusal(store, exc.refused, actor=actor, now=now, file=None)
        return ImportReport(False, refusal_text(exc.refused))
    return ImportReport(
        True,
        f"Import réussi : {outcome.groups} groupe(s), {outcome.created} agent(s) créé(s), "
        f"{outcome.updated} agent(s) mis à jour." + inactive_text(outcome.inactive),
    )


async def import_directory_file(settings: Settings, path: Path) -> ImportReport:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return ImportReport(False, f"Fichier illisible : {path} ({exc.strerror}).")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Excel on Windows still saves CSV as Windows-1252.
        text = raw.decode("cp1252", errors="replace")
    policies = load_policies(settings.policies.dir)
    store = await Store.open(
        settings.database.url.reveal(), FieldCipher.from_secret(settings.secrets.data_key.reveal())
    )
    try:
        return await import_directory_text(
            store,
            text,
            policies,
            actor="cli",
            now=datetime.now(UTC),
            own_server=settings.bot.user_id.split(":", 1)[1],
        )
    finally:
        await store.close()
