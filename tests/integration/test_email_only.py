"""Email-only agents and shared mailboxes take full part (issue 11), end to end.

A real Synapse, the real bot with its listener, the relay sink; every email is read as
the `.eml` a mail client would show (`tests.support.email.as_eml`): one thread per
demande, a subject without personal data, a text part without links, an HTML part with
the link to the demande's room.
"""

from __future__ import annotations

from pathlib import Path

from bot.devserver import LocalSynapse
from bot.domain.model import Role
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, reply_with, say
from tests.support.email import as_eml, email_bot, mailonly, relay
from tests.support.smtp import Received, RelaySink
from tests.support.world import audit_actions, demande_of, make_world, open_demande


async def _next(sink: RelaySink, address: str, label: str) -> Received:
    """The first email to `address` whose subject ends with `label`."""

    def found() -> list[Received]:
        return [m for m in sink.to(address) if m.header("Subject").endswith(f"— {label}")]

    await sink.wait_for(lambda: bool(found()), what=f"« {label} » to {address}")
    return found()[0]


async def test_colleagues_actions_reach_the_email_only_instructeur_and_the_shared_mailbox(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        await runner.start()
        world = await make_world(clients, runner)
        sophie = mailonly(world)
        bal = f"{matrix.unique('bal')}@caf95.example.test"
        caf = world.directory.groups["caf"]
        async with runner.store.transaction() as tx:
            await tx.upsert_group(
                name=caf.name, organisation_id="caf", departements=frozenset({"95"}), bal=bal
            )
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        for client in (world.aidant, world.instr1):
            await matrix.join_and_read(client, room_id, 1)

        # The dossier lists the participants and links to the room (HTML part only).
        dossier_mail = await _next(sink, sophie, "nouvelle demande")
        root = dossier_mail.header("Message-ID")
        dossier = as_eml(dossier_mail, reference, room_id=room_id, root=root)
        assert "Participants :" in dossier.text and "Instr1 Test" in dossier.text
        assert "Sophie Test" in dossier.text and "par courriel" in dossier.text
        assert "Dupontel" in dossier.text and dossier.reply_to.startswith("reply+")
        # The shared mailbox is not told to reply: it has no reply address.
        shared = as_eml(
            await _next(sink, bal, "nouvelle demande"), reference, room_id=room_id, root=root
        )
        assert shared.reply_to == "" and "répondre directement" not in shared.text
        assert "on ne peut pas y répondre" in shared.text and "!jemenoccupe" in shared.text

        # A colleague takes the demande: she and the shared mailbox learn it, in the thread.
        await say(world.instr1, room_id, "!jemenoccupe")
        taken = as_eml(
            await _next(sink, sophie, "prise en charge"), reference, room_id=room_id, root=root
        )
        assert "Instr1 Test s'occupe de la demande." in taken.text
        assert taken.reply_to.startswith("reply+")  # she may answer it
        told = as_eml(
            await _next(sink, bal, "prise en charge"), reference, room_id=room_id, root=root
        )
        assert "Instr1 Test s'occupe de la demande." in told.text and told.reply_to == ""

        await say(world.instr1, room_id, "!pasleboninterlocuteur")
        wrong = await _next(sink, sophie, "pas le bon interlocuteur")
        assert (
            "ne pas être le bon interlocuteur"
            in as_eml(wrong, reference, room_id=room_id, root=root).text
        )

        # Another group is invited: she learns who came.
        cpam = world.directory.groups["cpam"]
        paul = await botsupport.add_agent(
            runner.store, world.directory, "paul", matrix_id=None,
            email=f"{matrix.unique('paul')}@cpam95.example.test",
            roles=[Role.INSTRUCTEUR], group="cpam",
        )  # fmt: skip
        n = count_from(world.instr1, room_id, world.bot_id)
        await say(world.instr1, room_id, f"!inviter {cpam.name}")
        await reply_with(world.instr1, room_id, world.bot_id, "Invité", after=n)
        invited = as_eml(
            await _next(sink, sophie, "participant invité"), reference, room_id=room_id, root=root
        )
        assert "Instr1 Test (" in invited.text and "a invité" in invited.text
        assert "Paul Test" in invited.text
        assert paul.email is not None
        paul_dossier = as_eml(
            await _next(sink, paul.email, "nouvelle demande"), reference, room_id=room_id, root=root
        )
        assert "Sophie Test" in paul_dossier.text and "Paul Test" in paul_dossier.text

        await say(world.instr1, room_id, "!traitee")
        treated = await _next(sink, sophie, "demande traitée")
        assert "a traité la demande" in as_eml(treated, reference, room_id=room_id, root=root).text
        await _next(sink, bal, "demande traitée")

        await say(world.aidant, room_id, "!clore utile")
        closed = await _next(sink, sophie, "demande clôturée")
        assert (
            "clôturée par Aidant Test" in as_eml(closed, reference, room_id=room_id, root=root).text
        )
        await say(world.aidant, room_id, "!rouvrir")
        reopened = await _next(sink, sophie, "demande rouverte")
        assert "rouverte" in as_eml(reopened, reference, room_id=room_id, root=root).text

        # Each once; the shared mailbox got the dossier and the two answers, nothing else.
        subjects = [m.header("Subject") for m in sink.to(sophie)]
        assert len(subjects) == len(set(subjects)), subjects
        assert len(sink.to(bal)) == 3
        assert "command_jemenoccupe" in await audit_actions(world, reference)
        await runner.check_alive()
