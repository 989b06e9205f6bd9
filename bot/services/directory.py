"""Loading the directory from an Administration+ CSV file: all lines or none."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bot.domain.directory_csv import DirectoryImport, parse_directory_csv
from bot.domain.policies import Policies
from bot.policy_loader import load_policies
from bot.ports import ConsoleTx
from bot.settings import Settings
from bot.store.crypto import FieldCipher
from bot.store.db import Store


@dataclass(frozen=True, slots=True)
class ImportReport:
    ok: bool
    text: str


async def apply_import(
    tx: ConsoleTx, parsed: DirectoryImport, *, actor: str, now: datetime
) -> tuple[int, int, int]:
    """Upsert groups then agents in one transaction. Returns (groups, created, updated)."""
    groups = {}
    for g in parsed.groups():
        groups[g.name] = await tx.upsert_group(
            name=g.name, organisation_id=g.organisation_id, departements=g.departements, bal=g.bal
        )
    created = updated = 0
    for row in parsed.rows:
        group = groups.get(row.group_name) or await tx.get_group_by_name(row.group_name)
        _, is_new = await tx.upsert_agent(
            first_name=row.first_name,
            last_name=row.last_name,
            email=row.email,
            matrix_id=row.matrix_id,
            group_id=group.id if group else None,
            roles=row.roles,
        )
        created += is_new
        updated += not is_new
    await tx.audit(
        "directory_imported",
        actor=actor,
        details={"groups": len(groups), "created": created, "updated": updated},
        now=now,
    )
    return len(groups), created, updated


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
    async with store.transaction() as tx:
        groups, created, updated = await apply_import(tx, parsed, actor=actor, now=now)
    return ImportReport(
        True,
        f"Import réussi : {groups} groupe(s), {created} agent(s) créé(s), "
        f"{updated} agent(s) mis à jour.",
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
