"""Onboarding on the real homeserver (issue 12): agents greeted once when they arrive,
email-only agents linked to the Matrix account they make at their first sign-in,
inactivity with an injected clock, the responsable's `!mongroupe`, territorial operators."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import nio
from sqlalchemy import text

from bot.devserver import LocalSynapse, RegisteredUser
from bot.domain.model import Role
from bot.services.account_links import CURSOR_KEY
from bot.settings import Settings
from tests.integration.test_admin_room import (
    Admin,
    AdminRunner,
    _actions,
    _admin,
    _send_file,
    admin_bot,
)
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, filled_form, reply_with, say
from tests.support.clock import FakeClock
from tests.support.email import relay
from tests.support.matrix import TEST_PASSWORD
from tests.support.world import demande_of, open_demande


async def _follow_up_room(runner: Any, agent_id: int) -> str:
    async with runner.store.transaction() as tx:
        room_id = await tx.get_state(f"notices.room.{agent_id}")
    assert room_id is not None
    return str(room_id)


async def _agent_id(admin: Admin, matrix_id: str | None = None, email: str | None = None) -> int:
    async with admin.runner.store.transaction() as tx:
        found = (
            await tx.get_agent_by_matrix_id(matrix_id)
            if matrix_id
            else await tx.get_agent_by_email(email or "")
        )
    assert found is not None
    return found.id


def _welcomes(client: nio.AsyncClient, room_id: str, bot_id: str) -> list[str]:
    return [
        e.body
        for e in matrix.inbox(client).events(room_id)
        if e.sender == bot_id and e.body.startswith("Bienvenue sur Administration+")
    ]


async def test_agents_added_imported_or_reactivated_are_greeted_once(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with relay() as sink, admin_bot(synapse, tmp_path / "bot") as runner:
        runner.email = {"relay_port": sink.port}
        await runner.start()
        admin = await _admin(clients, runner)
        bot_id, caf = admin.bot_id, admin.world.directory.groups["caf"].name

        # --- a Matrix instructeur added by an operator: greeted in a private chat
        nina = await clients.client("nina")
        await admin.command(
            f'!agent-ajouter Nina Nouvel "{caf}" instructeur {nina.user_id}', "ajouté"
        )
        nina_id = await _agent_id(admin, nina.user_id)
        await matrix.sync_until(nina, lambda: bool(nina.invited_rooms), 30, "the private chat")
        room_id = await _follow_up_room(runner, nina_id)
        await matrix.accept_invite(nina, room_id)
        welcome = await reply_with(nina, room_id, bot_id, "Bienvenue sur Administration+, Nina")
        assert "instructeur" in welcome and caf in welcome
        assert "!jemenoccupe" in welcome and "!demande" not in welcome
        assert "vérifiez la session" in welcome and "clé de récupération" in welcome

        # --- a later change greets nobody again
        await admin.command(f"!agent-modifier {nina.user_id} nom Nouvelle", "modifié")
        welcomed = [d for d in await _actions(runner, "agent_welcomed") if d["agent"] == nina_id]
        assert welcomed == [{"agent": nina_id, "channel": "matrix"}]

        # --- an email-only instructeur: greeted by email, without personal data in the subject
        eva = f"{matrix.unique('eva')}@caf95.example.test"
        await admin.command(f'!agent-ajouter Eva Courriel "{caf}" instructeur {eva}', "ajouté")
        await sink.wait_for(lambda: bool(sink.to(eva)), what="the welcome email")
        (mail,) = sink.to(eva)
        assert mail.header("Subject") == "[A+] Bienvenue sur Administration+"
        body = mail.text
        assert "Bonjour Eva" in body and "répondez simplement au courriel" in body

        # --- the CSV import greets the agents it creates, once
        csv_text = (
            "Prénom;Nom;Email;Instructeur;Responsable;Territoire;Organisation;Groupe;BAL\n"
            f"Paul;Import;{(paul := matrix.unique('paul') + '@cpam95.example.test')};"
            "oui;non;95;CPAM;CPAM Import 95;\n"
        )
        await _send_file(
            admin.operator, admin.room_id, csv_text.encode(), "annuaire.csv", "text/csv"
        )
        await reply_with(admin.operator, admin.room_id, bot_id, "annuaire.csv")
        pending = await admin.command("!import-annuaire", "!confirmer")
        await admin.confirm(pending, "réussi")
        await sink.wait_for(lambda: bool(sink.to(paul)), what="the imported agent's welcome")
        assert len(sink.to(paul)) == 1

        # --- deactivated then reactivated: greeted again, once
        pending = await admin.command(f"!agent-desactiver {nina.user_id}", "!confirmer")
        await admin.confirm(pending, "désactivé")
        await admin.command(f"!agent-reactiver {nina.user_id}", "réactivé")
        await matrix.sync_until(
            nina, lambda: len(_welcomes(nina, room_id, bot_id)) >= 2, 30, "the second welcome"
        )
        welcomed = [d for d in await _actions(runner, "agent_welcomed") if d["agent"] == nina_id]
        assert len(welcomed) == 2
        assert len(_welcomes(nina, room_id, bot_id)) == 2
        await runner.check_alive()


@dataclass
class OnboardingRunner(AdminRunner):
    onboarding: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> Settings:
        s = super().settings()
        return dataclasses.replace(
            s, onboarding=dataclasses.replace(s.onboarding, **self.onboarding)
        )


@contextlib.asynccontextmanager
async def onboarding_bot(
    synapse: LocalSynapse, data_dir: Path, **kw: Any
) -> AsyncIterator[OnboardingRunner]:
    base = await botsupport.new_bot(synapse, data_dir)
    runner = OnboardingRunner(
        base.synapse, base.data_dir, base.user, base.password, secrets=base.secrets, **kw
    )
    try:
        yield runner
    finally:
        await runner.stop()


async def _first_sign_in(
    synapse: LocalSynapse, admin_token: str, prefix: str, email: str
) -> RegisteredUser:
    """What the homeserver does at a first ProConnect login: an account made with the
    verified email as a threepid, in one step (the admin API), then a login."""
    user_id = f"@{matrix.unique(prefix)}:{synapse.server_name}"
    made = await synapse.admin_request(
        "PUT",
        f"/_synapse/admin/v2/users/{quote(user_id, safe='')}",
        admin_token,
        json={"password": TEST_PASSWORD, "threepids": [{"medium": "email", "address": email}]},
    )
    assert made.ok, made
    login = await synapse.admin_request(
        "POST",
        "/_matrix/client/v3/login",
        "",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": TEST_PASSWORD,
        },
    )
    assert login.ok, login
    return RegisteredUser(user_id, login.body["access_token"], login.body["device_id"])


async def test_an_email_only_agent_who_signs_in_is_linked_and_invited_to_their_demandes(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    token = (await clients.user("srvadmin", admin=True)).access_token
    async with (
        relay() as sink,
        onboarding_bot(
            synapse,
            tmp_path / "bot",
            admin_token=token,
            onboarding={"account_link_seconds": 5},
        ) as runner,
    ):
        runner.email = {"relay_port": sink.port}
        await runner.start()
        admin = await _admin(clients, runner)
        world, bot_id = admin.world, admin.bot_id
        sophie_email = world.directory.agents["mailonly"].email
        assert sophie_email is not None
        _, reference = await open_demande(world)
        demande = await demande_of(world, reference)
        await sink.wait_for(lambda: bool(sink.to(sophie_email)), what="the dossier by email")
        await matrix.accept_invite(world.instr1, demande.room_id)

        # Sophie signs in for the first time: the homeserver made her account, with her email.
        sophie = await clients.client(await _first_sign_in(synapse, token, "sophie", sophie_email))
        await matrix.sync_until(
            sophie, lambda: demande.room_id in sophie.invited_rooms, 60, "the demande's invite"
        )
        async with runner.store.transaction() as tx:
            linked = await tx.get_agent_by_email(sophie_email)
            assert linked is not None and linked.matrix_id == sophie.user_id
            ledger = await tx.participants(demande.id)
        assert any(p.matrix_id == sophie.user_id for p in ledger)
        (done,) = await _actions(runner, "agent_account_linked")
        assert done == {"agent": linked.id, "user": sophie.user_id, "demandes": 1}

        # She joins and reads what is said from then on; she is no longer emailed.
        await matrix.accept_invite(sophie, demande.room_id)
        emails_before = len(sink.to(sophie_email))
        await say(world.instr1, demande.room_id, "Bonjour Sophie, vous nous lisez sur Matrix ?")
        await reply_with(sophie, demande.room_id, world.instr1.user_id, "sur Matrix")
        # Her welcome, in her private chat with the bot.
        room_id = await _follow_up_room(runner, linked.id)
        await matrix.accept_invite(sophie, room_id)
        welcome = await reply_with(sophie, room_id, bot_id, "Bienvenue sur Administration+")
        assert "instructeur" in welcome
        assert len(sink.to(sophie_email)) == emails_before

        # An agent added by email after their first sign-in is linked at once.
        early_email = f"{matrix.unique('early')}@caf95.example.test"
        early = await clients.client(await _first_sign_in(synapse, token, "early", early_email))
        caf = world.directory.groups["caf"].name
        await admin.command(f'!agent-ajouter Elie Tot "{caf}" instructeur {early_email}', "ajouté")
        async with runner.store.transaction() as tx:
            found = await tx.get_agent_by_email(early_email)
        assert found is not None and found.matrix_id == early.user_id
        await matrix.sync_until(early, lambda: bool(early.invited_rooms), 30, "the private chat")
        assert not sink.to(early_email)  # greeted on Matrix, not by email

        # The first look (no position yet: agents who signed in before the bot could link)
        # asks for the account of each email-only agent's email.
        late_email = f"{matrix.unique('late')}@caf95.example.test"
        late_user = await _first_sign_in(synapse, token, "late", late_email)
        async with runner.store.transaction() as tx:
            late, _ = await tx.upsert_agent(
                first_name="Lou", last_name="Tard", email=late_email, matrix_id=None,
                group_id=world.directory.groups["caf"].id,
                roles=frozenset({Role.INSTRUCTEUR}),
            )  # fmt: skip
        async with runner.store.engine.begin() as conn:
            await conn.execute(text("DELETE FROM bot_state WHERE key = :k"), {"k": CURSOR_KEY})
        assert runner.app is not None and runner.app.admin.links is not None
        await runner.app.admin.links.run_once()
        async with runner.store.transaction() as tx:
            found = await tx.get_agent(late.id)
            assert await tx.get_state(CURSOR_KEY) is not None  # later looks start from here
        assert found is not None and found.matrix_id == late_user.user_id
        await runner.check_alive()


async def test_inactive_agents_are_told_then_deactivated_with_an_injected_clock(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    # The bot's clock follows the real time, shifted: the homeserver stamps events itself.
    clock = FakeClock(None)
    async with relay() as sink, admin_bot(synapse, tmp_path / "bot", clock=clock) as runner:
        runner.email = {"relay_port": sink.port}
        await runner.start()
        admin = await _admin(clients, runner)
        world, bot_id = admin.world, admin.bot_id
        assert runner.app is not None
        store, directory = runner.store, world.directory
        async with store.transaction() as tx:
            bal_group = await tx.upsert_group(
                name=matrix.unique("cpam-bal"),
                organisation_id="cpam",
                departements=frozenset({"95"}),
                bal=f"{matrix.unique('bal')}@cpam95.example.test",
            )
        directory.groups["bal"] = bal_group
        bal_agent = await botsupport.add_agent(
            store, directory, "balagent", matrix_id=None, roles=[Role.INSTRUCTEUR],
            group="bal", email=f"{matrix.unique('balagent')}@cpam95.example.test",
        )  # fmt: skip
        _, reference = await open_demande(world)
        demande = await demande_of(world, reference)
        instr1 = directory.agents["instr1"]
        mail_email = directory.agents["mailonly"].email
        assert mail_email is not None

        # Five months and a day later: nobody listed acted; the operators see it coming.
        clock.offset = timedelta(days=5 * 31 + 1)
        listed = await admin.command("!inactifs", "Agents sans activité")
        for key in ("instr1", "instr2", "mailonly"):
            assert directory.agents[key].display_name in listed, key
        assert bal_agent.display_name not in listed  # email-only agent of a BAL: left out
        assert "inactivity" in await runner.app.admin.jobs.tick()
        # The operators are told whom it warned, before anything happens.
        alert = await reply_with(admin.operator, admin.room_id, bot_id, "sans activité prévenus")
        assert f"n° {instr1.id} " in alert and "désactivation le" in alert
        warned = {d["agent"] for d in await _actions(runner, "inactivity_warned")}
        assert {instr1.id, directory.agents["mailonly"].id} <= warned
        assert bal_agent.id not in warned
        # Told on Matrix in their private chat, and by email for the email-only agent.
        room_id = await _follow_up_room(runner, instr1.id)
        await matrix.accept_invite(world.instr1, room_id)
        told = await reply_with(world.instr1, room_id, bot_id, "sera désactivé le")
        assert "!aide" in told
        await sink.wait_for(
            lambda: any("désactivé" in m.text for m in sink.to(mail_email)), what="the warning"
        )
        # instr2 acts: writes in the demande.
        await matrix.accept_invite(world.instr2, demande.room_id)
        await say(world.instr2, demande.room_id, "Je regarde le dossier.")

        async def instr2_acted() -> bool:
            async with store.transaction() as tx:
                _, was_warned = (await tx.last_activity())[directory.agents["instr2"].id]
            return was_warned is None

        await matrix.wait_for(instr2_acted, 30, "instr2's activity")

        # Six months and a week: those who did not act are deactivated, the others stay.
        clock.offset = timedelta(days=6 * 31 + 8)
        assert "inactivity" in await runner.app.admin.jobs.tick()
        deactivated = {d["agent"] for d in await _actions(runner, "inactivity_deactivated")}
        assert instr1.id in deactivated and directory.agents["mailonly"].id in deactivated
        assert directory.agents["instr2"].id not in deactivated
        async with store.transaction() as tx:
            ledger = {p.agent_id for p in await tx.participants(demande.id)}
            gone = await tx.get_agent(instr1.id)
            kept = await tx.get_agent(directory.agents["instr2"].id)
        assert gone is not None and not gone.active and instr1.id not in ledger
        assert kept is not None and kept.active and kept.id in ledger

        async def kicked() -> bool:
            members = await runner.app.gateway.members(demande.room_id)  # type: ignore[union-attr]
            return members.get(world.instr1.user_id) in ("leave", None)

        await matrix.wait_for(kicked, 30, "instr1 removed from the room")
        await runner.check_alive()


async def test_a_responsable_runs_their_group_from_their_follow_up_room(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with admin_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        admin = await _admin(clients, runner)
        world, bot_id = admin.world, admin.bot_id
        caf = world.directory.groups["caf"]
        _, reference = await open_demande(world)
        demande = await demande_of(world, reference)

        # The operators make her the CAF group's responsable: her welcome opens her room.
        resp = await clients.client("responsable")
        await admin.command(
            f'!agent-ajouter Rose Resp "{caf.name}" responsable {resp.user_id}', "ajouté"
        )
        room_id = await _follow_up_room(runner, await _agent_id(admin, resp.user_id))
        await matrix.accept_invite(resp, room_id)
        welcome = await reply_with(resp, room_id, bot_id, "Bienvenue")
        assert "!mongroupe" in welcome
        files: list[Any] = []

        def on_file(room: nio.MatrixRoom, event: Any) -> None:
            if room.room_id == room_id:
                files.append(event)

        resp.add_event_callback(on_file, (nio.RoomEncryptedImage, nio.RoomEncryptedFile))

        async def command(text: str, expect: str) -> str:
            n = count_from(resp, room_id, bot_id)
            await say(resp, room_id, text)
            return await reply_with(resp, room_id, bot_id, expect, after=n)

        helped = await command("!aide", "!mongroupe")
        assert "!agent-desactiver" in helped and "!mesdemandes" in helped

        # --- the group's demandes, statistics, chart and export (metadata only)
        board = await command("!mongroupe", "Demandes ouvertes (1)")
        assert reference in board and "Résolues en moins de 7 jours" in board
        assert "Dupontel" not in board  # never the usager's data
        await matrix.sync_until(resp, lambda: len(files) >= 2, 30, "the chart and the export")
        names = sorted(str(getattr(f, "body", "")) for f in files)
        assert names[0].startswith("groupe-demandes-") and names[0].endswith(".csv")
        assert names[1].startswith("groupe-stats-") and names[1].endswith(".png")

        # --- a colleague added to her group joins its open demande and is greeted
        colin = await clients.client("colin")
        await command(f"!agent-ajouter Colin Collegue instructeur {colin.user_id}", "ajouté")
        await matrix.sync_until(
            colin, lambda: demande.room_id in colin.invited_rooms, 30, "the demande's invite"
        )
        added = [d for d in await _actions(runner, "agent_added") if d.get("by") == "responsable"]
        assert added and added[0]["group"] == caf.id

        # --- limited to her group and her organisation's roles
        cpam_agent = await botsupport.add_agent(
            runner.store, world.directory, "cpamagent", matrix_id=None, roles=[Role.INSTRUCTEUR],
            group="cpam", email=f"{matrix.unique('cpam')}@cpam95.example.test",
        )  # fmt: skip
        await command(f"!agent-desactiver n°{cpam_agent.id}", "pas un agent de votre groupe")
        await command(f"!agent-ajouter Oscar Op operateur {matrix.unique('o')}@x.test", "rôle")
        async with runner.store.transaction() as tx:
            still = await tx.get_agent(cpam_agent.id)
        assert still is not None and still.active

        # --- deactivating a colleague: summary, code, audit
        pending = await command(f"!agent-desactiver {colin.user_id}", "!confirmer")
        assert reference in pending
        code = pending.split("!confirmer ", 1)[1].split()[0]
        await command(f"!confirmer {code}", "désactivé")
        async with runner.store.transaction() as tx:
            gone = await tx.get_agent_by_matrix_id(colin.user_id)
        assert gone is not None and not gone.active
        done = [
            d
            for d in await _actions(runner, "group_command")
            if d["command"] == "agent-desactiver" and d["confirmed"]
        ]
        assert done == [
            {
                "command": "agent-desactiver",
                "group": caf.id,
                "dry_run": False,
                "confirmed": True,
                "ok": True,
            }
        ]
        await runner.check_alive()


async def test_a_territorial_operator_sees_and_changes_only_their_departements(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with admin_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        admin = await _admin(clients, runner)
        world = admin.world
        assert runner.app is not None
        store, directory = runner.store, world.directory
        await botsupport.add_group(store, directory, "caf78", "caf", ["78"])
        instr78 = await clients.client("instr78")
        agent78 = await botsupport.add_agent(
            store, directory, "instr78", matrix_id=instr78.user_id, roles=[Role.INSTRUCTEUR],
            group="caf78",
        )  # fmt: skip
        _, ref95 = await open_demande(world)
        _, ref78 = await open_demande(world, filled_form(territoire="78"))
        # A second operator, made territorial (95) by the national one.
        op95 = await clients.client("op95")
        await botsupport.add_agent(
            store, directory, "op95", matrix_id=op95.user_id, roles=[Role.OPERATEUR], group=None
        )
        await runner.app.admin.room.sync_members()
        await matrix.accept_invite(op95, admin.room_id)
        await admin.command(f"!operateur-perimetre {op95.user_id} 95", "départements 95")

        async def as95(text: str, expect: str) -> str:
            return await admin.command(text, expect, client=op95)

        listed = await as95("!demandes", "Demandes")
        assert ref95 in listed and ref78 not in listed
        await as95(f"!demande {ref78}", "introuvable")
        assert "Aucun résultat" in await as95(f"!audit {ref78}", f"Audit de {ref78} (0)")
        agents = await as95("!agents", "Agents")
        assert world.directory.agents["instr1"].display_name in agents
        assert instr78.user_id not in agents
        assert directory.groups["caf78"].name not in await as95("!groupes", "Groupes")
        await as95(f"!agent-desactiver {instr78.user_id}", "introuvable")
        caf78 = directory.groups["caf78"].name
        await as95(f'!agent-ajouter Zoe Z "{caf78}" instructeur z@caf78.example.test', "inconnu")
        await as95(f'!groupe-creer "{matrix.unique("g")}" caf 78', "hors de votre périmètre")
        await as95("!retention --dry-run", "réservée aux opérateurs nationaux")
        await as95(f"!operateur-perimetre {op95.user_id} national", "réservée")
        # Within their départements they work as usual; the audit records the scope.
        await as95(f'!groupe-creer "{matrix.unique("g95")}" caf 95', "créé")
        async with store.transaction() as tx:
            still = await tx.get_agent(agent78.id)
        assert still is not None and still.active
        commands = [
            d for d in await _actions(runner, "admin_command") if d["command"] == "demandes"
        ]
        assert {d["scope"] for d in commands} == {"95"}
        created = await _actions(runner, "group_created")
        assert [d["scope"] for d in created] == ["95"]
        refused = await _actions(runner, "admin_command_refused")
        assert {"why": "scope", "command": "retention", "scope": "95"} in refused
        # The national operator still sees everything.
        assert ref78 in await admin.command("!demandes", "Demandes")
        await runner.check_alive()
