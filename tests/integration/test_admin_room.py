"""The admin room on the real homeserver: operators and non-operators with real E2EE
clients, every command family, files both ways, the health endpoint, follow-up with an
injected clock, and retention checked in the bot's database and in Synapse's."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import io
import shutil
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import nio
from nio.crypto.attachments import decrypt_attachment, encrypt_attachment
from PIL import Image

from bot.app import App
from bot.devserver import LocalSynapse
from bot.domain.calendar import PARIS
from bot.domain.model import Role, Status
from bot.domain.stats import EXPORT_COLUMNS
from bot.settings import PoliciesSettings, Settings
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, filled_form, reply_with, say
from tests.support.clock import FakeClock
from tests.support.email import relay
from tests.support.world import World, audit_actions, demande_of, make_world, open_demande

REPO_POLICIES = Path(__file__).resolve().parents[2] / "policies"


@dataclass
class AdminRunner(botsupport.BotRunner):
    clock: FakeClock | None = None
    policies_dir: Path | None = None
    admin_token: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> Settings:
        if self.admin_token:
            self.secrets["APLUS_SYNAPSE_ADMIN_TOKEN"] = self.admin_token
        s = super().settings()
        # The periodic jobs are driven by the tests (`jobs.tick()`), not by the wall clock.
        s = dataclasses.replace(s, admin=dataclasses.replace(s.admin, jobs_enabled=False))
        if self.policies_dir is not None:
            s = dataclasses.replace(s, policies=PoliciesSettings(dir=self.policies_dir))
        return s

    async def start(self) -> App:
        app = App(self.settings(), clock=self.clock) if self.clock else App(self.settings())
        await app.start()
        self.app = app
        self.task = asyncio.create_task(app.run(), name="bot")
        await matrix.wait_for(lambda: app.sync.synced.is_set() or self.task.done(), 30, "sync")
        if self.task.done():
            self.task.result()
        return app


@contextlib.asynccontextmanager
async def admin_bot(synapse: LocalSynapse, data_dir: Path, **kw: Any) -> AsyncIterator[AdminRunner]:
    base = await botsupport.new_bot(synapse, data_dir)
    runner = AdminRunner(
        base.synapse, base.data_dir, base.user, base.password, secrets=base.secrets, **kw
    )
    try:
        yield runner
    finally:
        await runner.stop()


@dataclass
class Admin:
    runner: AdminRunner
    world: World
    operator: nio.AsyncClient
    room_id: str
    files: list[Any] = field(default_factory=list)

    @property
    def bot_id(self) -> str:
        return self.runner.user_id

    async def command(self, text: str, expect: str, client: nio.AsyncClient | None = None) -> str:
        client = client or self.operator
        n = count_from(client, self.room_id, self.bot_id)
        await say(client, self.room_id, text)
        return await reply_with(client, self.room_id, self.bot_id, expect, after=n)

    async def confirm(self, pending: str, expect: str) -> str:
        """`!confirmer <code>` with the code the summary `pending` gave."""
        code = pending.split("!confirmer ", 1)[1].split()[0]
        return await self.command(f"!confirmer {code}", expect)


async def _admin(clients: matrix.Clients, runner: AdminRunner) -> Admin:
    world = await make_world(clients, runner)
    operator = await clients.client("operateur")
    await botsupport.add_agent(
        runner.store, world.directory, "operateur", matrix_id=operator.user_id,
        roles=[Role.OPERATEUR], group=None,
    )  # fmt: skip
    assert runner.app is not None
    await runner.app.admin.room.sync_members()
    room_id = runner.app.admin.room.room_id
    assert room_id is not None
    await matrix.accept_invite(operator, room_id)
    admin = Admin(runner, world, operator, room_id)

    def on_file(room: nio.MatrixRoom, event: Any) -> None:
        if room.room_id == room_id:
            admin.files.append(event)

    operator.add_event_callback(on_file, (nio.RoomEncryptedImage, nio.RoomEncryptedFile))
    return admin


async def _download(client: nio.AsyncClient, event: Any) -> bytes:
    resp = await client.download(mxc=event.url)
    assert isinstance(resp, nio.MemoryDownloadResponse), resp
    return bytes(decrypt_attachment(resp.body, event.key["k"], event.hashes["sha256"], event.iv))


async def _next_file(admin: Admin, after: int) -> Any:
    await matrix.sync_until(admin.operator, lambda: len(admin.files) > after, 30, "a file")
    return admin.files[after]


async def _send_file(
    client: nio.AsyncClient, room_id: str, data: bytes, name: str, mimetype: str
) -> str:
    resp, keys = await client.upload(
        io.BytesIO(data), content_type=mimetype, filename=name, encrypt=True, filesize=len(data)
    )
    assert isinstance(resp, nio.UploadResponse), resp
    content = {
        "msgtype": "m.file",
        "body": name,
        "filename": name,
        "info": {"mimetype": mimetype, "size": len(data)},
        "file": {"url": resp.content_uri, **keys},
    }
    sent = await client.room_send(
        room_id, "m.room.message", content, ignore_unverified_devices=True
    )
    assert isinstance(sent, nio.RoomSendResponse), sent
    return str(resp.content_uri)


async def _actions(runner: AdminRunner, action: str) -> list[dict[str, Any]]:
    async with runner.store.transaction() as tx:
        return [e.details for e in await tx.audit_entries(action=action)]


GOOD_CSV = (
    "Prénom;Nom;Email;Instructeur;Responsable;Territoire;Organisation;Groupe;BAL\n"
    "Paul;Import;paul.import@cpam95.example.test;oui;non;95;CPAM;CPAM Import 95;\n"
    "Lea;Import;lea.import@cpam95.example.test;oui;oui;95;CPAM;CPAM Import 95;\n"
)
BAD_CSV = (
    "Prénom;Nom;Email;Instructeur;Responsable;Territoire;Organisation;Groupe;BAL\n"
    "Paul;Import;paul.import@cpam95.example.test;oui;non;95;CPAM;CPAM Import 95;\n"
    ";Sans;pas-une-adresse;peut-etre;non;99;NASA;G;\n"
)


async def test_admin_room_commands(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO_POLICIES, policies)
    async with admin_bot(synapse, tmp_path / "bot", policies_dir=policies) as runner:
        await runner.start()
        admin = await _admin(clients, runner)
        world, bot_id = admin.world, admin.bot_id
        assert runner.app is not None

        # --- the room: encrypted, invite-only, the bot and the operator only
        state = {
            (e["type"], e.get("state_key", "")): e["content"]
            for e in (await admin.operator.room_get_state(admin.room_id)).events  # type: ignore[union-attr]
        }
        assert state[("m.room.encryption", "")]["algorithm"] == "m.megolm.v1.aes-sha2"
        assert state[("m.room.join_rules", "")]["join_rule"] == "invite"
        members = await runner.app.gateway.members(admin.room_id)
        assert set(members) == {bot_id, admin.operator.user_id}

        # --- generated help
        help_text = await admin.command("!aide", "Annuaire")
        for name in ("!stats", "!retention", "!import-annuaire", "!politiques-recharger"):
            assert name in help_text, name
        assert "demande confirmation" in await admin.command("!aide agent-desactiver", "Usage")
        await admin.command("!agent-ajouter Paul", "manquant")  # strict parsing: the usage

        # --- an admin command elsewhere: refused, audited, nothing done
        dm, reference = await open_demande(world)
        n = count_from(world.aidant, dm, bot_id)
        await say(world.aidant, dm, "!agent-desactiver " + world.instr1.user_id)
        assert "salon d'administration" in await reply_with(
            world.aidant, dm, bot_id, "refusée", after=n
        )
        assert any(
            d.get("why") == "wrong_room" for d in await _actions(runner, "admin_command_refused")
        )
        async with runner.store.transaction() as tx:
            instr1 = await tx.get_agent_by_matrix_id(world.instr1.user_id)
            assert instr1 is not None and instr1.active

        # --- a non-operator in the room (their role was removed behind the bot's back)
        other = await clients.client("ex-operateur")
        await botsupport.add_agent(
            runner.store, world.directory, "exop", matrix_id=other.user_id,
            roles=[Role.OPERATEUR], group=None,
        )  # fmt: skip
        await runner.app.admin.room.sync_members()
        await matrix.accept_invite(other, admin.room_id)
        async with runner.store.transaction() as tx:
            agent = await tx.get_agent_by_matrix_id(other.user_id)
            assert agent is not None
            await tx.update_agent(dataclasses.replace(agent, roles=frozenset({Role.AIDANT})))
        await say(other, admin.room_id, "!agent-desactiver " + world.instr1.user_id)

        async def other_removed() -> bool:
            members = await runner.app.gateway.members(admin.room_id)  # type: ignore[union-attr]
            return members.get(other.user_id) == "leave"

        await matrix.wait_for(other_removed, 30, "the non-operator removed")

        # The removal may come first (the bot also reconciles the room when it sees the
        # join): the command sent before it is refused and audited all the same.
        async def refused() -> bool:
            entries = await _actions(runner, "admin_command_refused")
            return any(d.get("why") == "not_operator" for d in entries)

        await matrix.wait_for(refused, 30, "the non-operator's command refused")
        async with runner.store.transaction() as tx:
            instr1 = await tx.get_agent_by_matrix_id(world.instr1.user_id)
            assert instr1 is not None and instr1.active

        # --- directory: list, add an instructeur (joins the open demande of the group)
        caf = world.directory.groups["caf"].name
        listing = await admin.command("!agents", "Agents")
        assert world.instr1.user_id in listing
        nina = await clients.client("nina")
        added = await admin.command(
            f'!agent-ajouter Nina Nouvelle "{caf}" instructeur {nina.user_id}', "ajouté"
        )
        assert reference in added
        demande = await demande_of(world, reference)
        # She is a participant now: she reads the dossier.
        await matrix.join_and_find(nina, demande.room_id, "Dupontel")
        assert "déjà" in await admin.command(
            f'!agent-ajouter Nina Bis "{caf}" instructeur {nina.user_id}', "déjà"
        )
        await admin.command('!groupe-creer "CPAM Test 95" CPAM 95', "créé")
        await admin.command('!groupe-modifier "CPAM Test 95" departements 95,78', "modifié")
        assert "78, 95" in await admin.command("!groupes", "Groupes")
        await admin.command("!groupe-creer X NASA 95", "Organisation inconnue")
        assert "CAF" in await admin.command("!organisations", "Organisations")
        assert "2A" in await admin.command("!departements", "Départements (101)")

        # --- deactivation: dry run changes nothing, then confirm
        instr2 = world.instr2.user_id
        await matrix.join_and_read(world.instr2, demande.room_id, 1)
        dry = await admin.command(f"!agent-desactiver {instr2} --dry-run", "Désactivation")
        assert reference in dry and "!confirmer" not in dry
        async with runner.store.transaction() as tx:
            assert (await tx.get_agent_by_matrix_id(instr2)).active  # type: ignore[union-attr]
        pending = await admin.command(f"!agent-desactiver {instr2}", "!confirmer")
        code = pending.split("!confirmer ", 1)[1].split()[0]
        await admin.command(f"!confirmer {code}", "désactivé")

        async def instr2_gone() -> bool:
            members = await runner.app.gateway.members(demande.room_id)  # type: ignore[union-attr]
            return members.get(instr2) == "leave"

        await matrix.wait_for(instr2_gone, 30, "the deactivated agent kicked")
        async with runner.store.transaction() as tx:
            ledger = {p.matrix_id for p in await tx.participants(demande.id)}
        assert instr2 not in ledger and nina.user_id in ledger
        assert "Aucune commande" in await admin.command("!confirmer", "Aucune commande")

        # --- CSV import: bad lines refused with their numbers, nothing imported
        await _send_file(admin.operator, admin.room_id, BAD_CSV.encode(), "agents.csv", "text/csv")
        await reply_with(admin.operator, admin.room_id, bot_id, "!import-annuaire")
        report = await admin.command("!import-annuaire", "refusé")
        assert "ligne 3" in report and "NASA" in report and "ligne 2" not in report
        async with runner.store.transaction() as tx:
            assert await tx.get_agent_by_email("paul.import@cpam95.example.test") is None
        # A good file: a line-by-line preview, then the confirmation.
        await _send_file(admin.operator, admin.room_id, GOOD_CSV.encode(), "ok.csv", "text/csv")
        await reply_with(admin.operator, admin.room_id, bot_id, "ok.csv")
        preview = await admin.command("!import-annuaire", "Aperçu")
        assert "Paul Import" in preview and "création" in preview
        async with runner.store.transaction() as tx:
            assert await tx.get_agent_by_email("paul.import@cpam95.example.test") is None
        # The code is required: without it, nothing happens.
        assert "code" in await admin.command("!confirmer", "écrivez le code")
        await admin.confirm(preview, "réussi")
        async with runner.store.transaction() as tx:
            assert await tx.get_agent_by_email("lea.import@cpam95.example.test") is not None

        # --- demandes: metadata only
        listing = await admin.command("!demandes statut=nouvelle territoire=95", reference)
        assert "Dupontel" not in listing
        timeline = await admin.command(f"!demande {reference}", "Chronologie")
        assert "Nina Nouvelle" in timeline and "Dupontel" not in timeline
        trail = await admin.command(f"!audit {reference}", "demande_opened")
        assert "Dupontel" not in trail
        await admin.command("!demandes statut=perdue", "Statut inconnu")

        # --- statistics: a table and a PNG chart; the export holds no personal data
        n_files = len(admin.files)
        table = await admin.command("!stats periode=30j territoire=95", "Résolues en moins de 7")
        assert "Demandes ouvertes" in table
        image = await _next_file(admin, n_files)
        assert isinstance(image, nio.RoomEncryptedImage)
        png = await _download(admin.operator, image)
        assert png.startswith(b"\x89PNG")
        with Image.open(io.BytesIO(png)) as picture:
            picture.load()
            assert picture.format == "PNG" and picture.size[0] > 100
        await admin.command("!export", "Export de 1 demande")
        export = await _download(admin.operator, await _next_file(admin, n_files + 1))
        text = export.decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text), delimiter=";"))
        assert tuple(rows[0]) == EXPORT_COLUMNS and rows[1][0] == reference
        for personal in ("Dupontel", "Jeanne", "1961", "allocation logement", "Camille"):
            assert personal not in text, personal

        # --- policies: a broken file is refused with its error, the old policy stays
        before = runner.app.policies
        (policies / "organisations.toml").write_text("[organisations\ncaf = 1\n")
        await admin.command("!politiques-verifier", "organisations.toml")
        refused_reload = await admin.command("!politiques-recharger", "refusées")
        assert "organisations.toml" in refused_reload and "ligne 1" in refused_reload
        assert runner.app.policies is before and runner.app.rooms.policies.current is before
        shutil.copy(REPO_POLICIES / "organisations.toml", policies / "organisations.toml")
        await admin.command("!politiques-recharger", "rechargées")
        assert runner.app.policies is not before
        assert runner.app.rooms.policies.current is runner.app.policies
        assert runner.app.opening.policies.current is runner.app.policies

        # --- retention preview changes nothing; health
        preview = await admin.command("!retention --dry-run", "ce qui serait fait")
        assert "jeton d'administration Synapse absent" in preview
        assert await _actions(runner, "retention_run") == []
        await admin.command("!sante", "Santé du service")
        server = runner.app.admin.server
        assert server is not None and server.port
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{server.port}/healthz") as resp:
                health = await resp.json()
                assert resp.status == 200, health
            async with http.get(f"http://127.0.0.1:{server.port}/metrics") as resp:
                metrics = await resp.text()
        assert health["checks"]["homeserver"]["state"] == "ok"
        assert health["checks"]["database"]["state"] == "ok"
        assert health["checks"]["smtp"]["state"] == "non configuré"
        assert 'aplus_demandes{status="nouvelle"} 1' in metrics
        assert "aplus_outbox_queue_length" in metrics
        assert "aplus_intruders_removed" in metrics
        await runner.check_alive()


def paris(y: int, m: int, d: int, h: int = 10) -> datetime:
    return datetime(y, m, d, h, tzinfo=PARIS).astimezone(UTC)


async def test_late_reminders_and_digest_with_an_injected_clock(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    # Thursday 2 April 2026: Good Friday is not a holiday in the 95, Easter Monday is.
    clock = FakeClock(paris(2026, 4, 2))
    async with admin_bot(synapse, tmp_path / "bot", clock=clock) as runner:
        await runner.start()
        admin = await _admin(clients, runner)
        world, bot_id = admin.world, admin.bot_id
        assert runner.app is not None
        responsable = await clients.client("responsable")
        await botsupport.add_agent(
            runner.store, world.directory, "resp", matrix_id=responsable.user_id,
            roles=[Role.RESPONSABLE], group="caf",
        )  # fmt: skip
        _, reference = await open_demande(world, filled_form(date_mandat="01/03/2026"))
        demande = await demande_of(world, reference)

        # Wednesday 8 April 9:59: Fri 3, Tue 7 are the only business days so far.
        clock.at = paris(2026, 4, 8, 9) + timedelta(minutes=59)
        await admin.command("!relances --dry-run", "Aucune relance")
        assert "Aucune" in await admin.command("!retards", "Demandes en retard (0)")
        # 10:00: 3 business days (Fri 3, Tue 7, Wed 8) without a first answer.
        clock.at = paris(2026, 4, 8, 10)
        assert reference in await admin.command("!retards", "Demandes en retard (1)")
        pending = await admin.command("!relances", "!confirmer")
        await admin.confirm(pending, "1 relance(s) envoyée(s) ; 1 responsable")
        await matrix.join_and_read(world.instr1, demande.room_id, 1)
        reminder = await reply_with(world.instr1, demande.room_id, bot_id, "Relance")
        assert reference in reminder and "Dupontel" not in reminder

        # The group's responsable is told in a private room.
        # (The group's spaces invite them too: the follow-up room is the one so named.)
        def follow_up_rooms() -> list[str]:
            rooms = responsable.invited_rooms.items()
            return [r for r, room in rooms if room.name == "Administration+ · suivi"]

        await matrix.sync_until(
            responsable, lambda: bool(follow_up_rooms()), 30, "the follow-up room"
        )
        [notice_room] = follow_up_rooms()
        await matrix.accept_invite(responsable, notice_room)
        told = await reply_with(responsable, notice_room, bot_id, reference)
        assert "en retard" in told
        # Once per episode: the job finds nothing new.
        assert "followup" in await runner.app.admin.jobs.tick()
        assert len(await _actions(runner, "late_reminded")) == 1

        # The instructeur answers; the aidant hears nothing for 10+ days: weekly digest.
        n = count_from(world.instr1, demande.room_id, bot_id)
        await say(world.instr1, demande.room_id, "Je regarde le dossier.")
        await reply_with(world.instr1, demande.room_id, bot_id, "en cours", after=n)
        clock.at = paris(2026, 4, 20, 9)  # Monday, 12 days later
        plan = await admin.command("!recapitulatif --dry-run", "Récapitulatif pour 1 aidant")
        assert "1 demande" in plan
        ran = await runner.app.admin.jobs.tick()
        assert "digest" in ran
        async with runner.store.transaction() as tx:
            digest_room = await tx.get_state(f"notices.room.{world.directory.agents['aidant'].id}")
        assert digest_room is not None
        await matrix.accept_invite(world.aidant, digest_room)
        digest = await reply_with(world.aidant, digest_room, bot_id, reference)
        assert "clore" in digest
        # 15 business days after the answer (8 April + Easter is behind; 1 and 8 May ahead).
        clock.at = paris(2026, 4, 29, 9)
        assert "Aucune" in await admin.command("!retards", "Demandes en retard (0)")
        clock.at = paris(2026, 4, 29, 10)  # 8 April 10:xx + 15 business days
        await admin.command("!relances --dry-run", "sans nouvelle réponse")
        await runner.check_alive()


def _synapse_rows(synapse: LocalSynapse, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(f"file:{synapse.database_path}?mode=ro", uri=True)
    try:
        return list(con.execute(sql, params).fetchall())
    finally:
        con.close()


def _bytes_under(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())


async def test_retention_wipes_and_purges_a_closed_demande(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    # The homeserver stamps events with its own clock: the bot's follows the real time,
    # shifted, so that "up to the form's confirmation" means the same moment on both sides.
    clock = FakeClock(None)
    token = (await clients.user("srvadmin", admin=True)).access_token
    async with admin_bot(synapse, tmp_path / "bot", clock=clock, admin_token=token) as runner:
        await runner.start()
        admin = await _admin(clients, runner)
        world, bot_id = admin.world, admin.bot_id
        assert runner.app is not None
        old_dm, old_ref = await open_demande(world)
        _, kept_ref = await open_demande(world, filled_form(nom="Zyskowska", prenom="Gwenaelle"))
        old, kept = await demande_of(world, old_ref), await demande_of(world, kept_ref)
        await matrix.accept_invite(world.aidant, old.room_id)
        await matrix.accept_invite(world.aidant, kept.room_id)
        # A file in the room that will be purged (encrypted, as Element sends it).
        mxc = await _send_file(
            world.aidant, old.room_id, b"Attestation de Jeanne Dupontel", "piece.txt", "text/plain"
        )

        async def recorded() -> bool:
            return bool(await _actions(runner, "attachment_posted"))

        await matrix.wait_for(recorded, 30, "the attachment recorded")
        n = count_from(world.aidant, old.room_id, bot_id)
        await say(world.aidant, old.room_id, "!clore utile")
        await reply_with(world.aidant, old.room_id, bot_id, "a clôturé la demande", after=n)
        clock.offset = timedelta(days=40)
        n = count_from(world.aidant, kept.room_id, bot_id)
        await say(world.aidant, kept.room_id, "!clore inutile")
        await reply_with(world.aidant, kept.room_id, bot_id, "a clôturé la demande", after=n)
        assert (await demande_of(world, old_ref)).status is Status.CLOTUREE

        # Six months and a day after the first closing; the second is 40 days younger.
        clock.offset = timedelta(days=183)
        preview = await admin.command("!retention --dry-run", "ce qui serait fait")
        assert old_ref in preview and kept_ref not in preview
        async with runner.store.transaction() as tx:
            assert await tx.wiped_demande_ids() == set()
        pending = await admin.command("!retention", "!confirmer")
        done = await admin.confirm(pending, "Conservation appliquée")
        assert "1 demande(s) effacée(s), 1 salon(s) purgé(s), 1 pièce(s)" in done

        # --- the bot's database: the sealed columns are gone, the other demande is intact
        async with runner.store.engine.connect() as conn:
            from sqlalchemy import text as sql

            rows = (
                await conn.execute(sql("SELECT reference, objet_enc, dossier_enc FROM demandes"))
            ).all()
            drafts = (await conn.execute(sql("SELECT demande_id, form_enc FROM drafts"))).all()
            outbox = (
                await conn.execute(
                    sql("SELECT content_enc FROM outbox_messages WHERE room_id = :r"),
                    {"r": old.room_id},
                )
            ).all()
        sealed = {ref: (bytes(o), bytes(d)) for ref, o, d in rows}
        assert sealed[old_ref] == (b"", b"")
        assert all(len(v) > 20 for v in sealed[kept_ref])
        assert {bytes(f) for did, f in drafts if did == old.id} == {b""}
        assert outbox and all(bytes(c) == b"" for (c,) in outbox)
        async with runner.store.transaction() as tx:
            assert (await tx.load_form(kept.id)).usager.nom == "Zyskowska"
        db_file = runner.settings().database.url.reveal().split("///", 1)[1]
        raw = b"".join(
            Path(p).read_bytes() for p in (db_file, db_file + "-wal") if Path(p).exists()
        )
        assert b"Dupontel" not in raw and b"Jeanne" not in raw

        # --- the homeserver: the room and its events are purged, the media deleted
        assert (
            _synapse_rows(synapse, "SELECT room_id FROM rooms WHERE room_id = ?", old.room_id) == []
        )
        assert (
            _synapse_rows(synapse, "SELECT event_id FROM events WHERE room_id = ?", old.room_id)
            == []
        )
        assert _synapse_rows(synapse, "SELECT room_id FROM rooms WHERE room_id = ?", kept.room_id)
        media_id = mxc.rsplit("/", 1)[1]
        assert (
            _synapse_rows(
                synapse, "SELECT media_id FROM local_media_repository WHERE media_id = ?", media_id
            )
            == []
        )
        media_store = synapse.data_dir / "media_store"
        assert not any(media_id in p.name for p in media_store.rglob("*"))
        homeserver_bytes = _bytes_under(media_store) + Path(synapse.database_path).read_bytes()
        for personal in (b"Dupontel", b"Jeanne"):
            assert personal not in homeserver_bytes
        # The aidant's direct chat no longer holds the form (nor the confirmation).
        dm_events = _synapse_rows(
            synapse,
            "SELECT count(*) FROM events WHERE room_id = ? AND sender = ? "
            "AND type = 'm.room.encrypted'",
            old_dm, world.aidant.user_id,
        )  # fmt: skip
        assert dm_events[0][0] == 0

        actions = [e for e in ("usager_data_wiped", "room_purged", "attachment_deleted")]
        for action in actions:
            assert await _actions(runner, action), action
        assert len(await _actions(runner, "retention_run")) == 1
        # A second run has nothing left to do.
        again = await runner.app.admin.retention.run(actor="test")
        assert again.wiped == [] and again.rooms_purged == []
        await runner.check_alive()


async def test_retention_deletes_only_the_media_of_the_demande(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    """Security review M1: any member could name someone else's media (an avatar) in a
    file message, and the job deleted it with the server's admin token 15 days later."""
    clock = FakeClock(None)
    token = (await clients.user("srvadmin", admin=True)).access_token
    async with admin_bot(synapse, tmp_path / "bot", clock=clock, admin_token=token) as runner:
        await runner.start()
        admin = await _admin(clients, runner)
        world = admin.world
        _, reference = await open_demande(world)
        demande = await demande_of(world, reference)
        await matrix.join_and_read(world.instr1, demande.room_id, 1)

        # Someone with nothing to do with the service uploads an avatar.
        victim = await clients.client("victim")
        avatar_bytes = b"\x89PNG avatar"
        upload, _ = await victim.upload(
            io.BytesIO(avatar_bytes),
            content_type="image/png",
            filename="me.png",
            filesize=len(avatar_bytes),
        )
        assert isinstance(upload, nio.UploadResponse), upload
        avatar = upload.content_uri
        # A participant names it in an encrypted file message of the demande...
        _, keys = encrypt_attachment(b"x")
        sent = await world.instr1.room_send(
            demande.room_id,
            "m.room.message",
            {"msgtype": "m.image", "body": "photo.png", "file": {"url": avatar, **keys}},
            ignore_unverified_devices=True,
        )
        assert isinstance(sent, nio.RoomSendResponse), sent
        # ... and posts a real file of their own.
        own = await _send_file(
            world.instr1, demande.room_id, b"Courrier de la CAF", "courrier.txt", "text/plain"
        )

        async def both_recorded() -> bool:
            return len(await _actions(runner, "attachment_posted")) >= 2

        await matrix.wait_for(both_recorded, 30, "the files recorded")
        clock.offset = timedelta(days=16)
        report = await runner.app.admin.retention.run(actor="test")  # type: ignore[union-attr]

        def local(mxc: str) -> list[tuple[Any, ...]]:
            return _synapse_rows(
                synapse,
                "SELECT media_id FROM local_media_repository WHERE media_id = ?",
                mxc.rsplit("/", 1)[1],
            )

        assert local(avatar), "another user's media was deleted"
        assert local(own) == [] and report.attachments_deleted == 1
        kept = [d for d in await _actions(runner, "attachment_deleted") if d.get("kept")]
        assert [d["kept"] for d in kept] == ["not_uploaded_by_a_participant"]
        # The next run does not look at it again.
        again = await runner.app.admin.retention.run(actor="test")  # type: ignore[union-attr]
        assert again.attachments_deleted == 0 and local(avatar)
        await runner.check_alive()


async def test_the_operator_sets_an_agents_mail_volume(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with relay() as sink, admin_bot(synapse, tmp_path / "bot") as runner:
        runner.email = {"relay_port": sink.port}
        await runner.start()
        admin = await _admin(clients, runner)
        sophie = admin.world.directory.agents["mailonly"]
        assert sophie.email is not None
        await admin.command(f"!agent-courriels {sophie.email} quotidien 8h", "chaque jour à 8 h")
        async with runner.store.transaction() as tx:
            assert await tx.email_digest_hours([sophie.id]) == {sophie.id: 8}
        await admin.command(f"!agent-courriels {sophie.id} immediat", "aussitôt")
        async with runner.store.transaction() as tx:
            assert await tx.email_digest_hours([sophie.id]) == {}
        refused = await admin.command(f"!agent-courriels {sophie.id} quotidien midi", "Heure")
        assert "non comprise" in refused
        assert "email_volume_set" in await audit_actions(admin.world)
