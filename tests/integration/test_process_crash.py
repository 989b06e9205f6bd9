"""A bot process killed while it builds a demande room finishes the job on restart.

The real `aplus run --config …` runs as a child process against the session's real
Synapse. It dies at a named crash point (`APLUS_CRASH_AT`, `bot.faults`: an
`os._exit(137)`, no cleanup, like a kill -9) or from a real SIGKILL sent right after
the aidant's `!confirmer`. Restarted without the crash point, it must finish the
opening with exactly one room, one invitation per participant, one dossier, one
reply to the aidant and still one device. Everything is checked from the outside:
the Synapse admin API, the bot's database, and the participants' own E2EE clients.
"""

from __future__ import annotations

import signal
from pathlib import Path

import nio
import pytest

from bot.devserver import LocalSynapse
from bot.domain.model import Demande, Role
from bot.matrix.content import APLUS_KEY
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support import process as proc
from tests.support.bot import count_from, filled_form, next_reply, say
from tests.support.e2ee import post_file

DEMANDE_STATE = "fr.aplus.demande"
KILLED_BY_CRASH_POINT = 137


async def _directory(files: proc.BotFiles, clients: matrix.Clients) -> dict[str, nio.AsyncClient]:
    """The aidant and two instructeurs, with their E2EE clients, in the bot's directory."""
    people = {
        "aidant": await clients.client("aidant"),
        "instr1": await clients.client("instr1"),
        "instr2": await clients.client("instr2"),
    }
    directory = botsupport.Directory()
    async with files.store() as store:
        await botsupport.add_group(store, directory, "fs", "france_services", ["95"])
        await botsupport.add_group(store, directory, "caf", "caf", ["95"])
        roles = {"aidant": ([Role.AIDANT], "fs")}
        for key, client in people.items():
            role, group = roles.get(key, ([Role.INSTRUCTEUR], "caf"))
            await botsupport.add_agent(
                store, directory, key, matrix_id=client.user_id, roles=role, group=group
            )
    return people


async def _demandes(files: proc.BotFiles) -> list[Demande]:
    async with files.store() as store, store.transaction() as tx:
        return await tx.list_demandes()


async def _has_demande(files: proc.BotFiles) -> bool:
    return bool(await _demandes(files))


async def _opened_and_idle(files: proc.BotFiles) -> bool:
    """One demande whose room is ready, and nothing left in the bot's outbox."""
    async with files.store() as store, store.transaction() as tx:
        demandes = await tx.list_demandes()
        pending = await tx.pending_messages()
    return len(demandes) == 1 and demandes[0].creation_step == "ready" and not pending


def _dossiers(client: nio.AsyncClient, room_id: str) -> list[str]:
    """References of the dossier messages this client decrypted in the room."""
    return [
        event.source["content"][APLUS_KEY]["dossier"]
        for event in matrix.inbox(client).events(room_id)
        if "dossier" in (event.source.get("content", {}).get(APLUS_KEY) or {})
    ]


@pytest.mark.parametrize(
    "death", ["after_create_room", "after_invites", "sigkill", "sigkill_after_commit"]
)
async def test_a_bot_killed_mid_creation_finishes_on_restart_without_duplicates(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path, death: str
) -> None:
    admin = proc.AdminApi.of(synapse, await clients.user("admin", admin=True))
    files = await proc.register_bot(synapse, tmp_path / "bot")
    people = await _directory(files, clients)
    aidant = people["aidant"]
    killed = death.startswith("sigkill")
    crash_env = {} if killed else {"APLUS_CRASH_AT": death}
    first = proc.bot_process(files, env=crash_env)
    second = proc.bot_process(files)

    with proc.killed_at_exit(first, second):
        first.start()
        dm = await botsupport.open_direct_chat(aidant, files.user_id)
        await say(aidant, dm, filled_form())
        recap = await next_reply(aidant, dm, files.user_id, after=0)
        assert "!confirmer" in recap, recap
        await say(aidant, dm, "!confirmer")
        if killed:
            if death == "sigkill_after_commit":
                # Aim between the commit of !confirmer and the finished room.
                await matrix.wait_for(
                    lambda: _has_demande(files), 30, "the demande committed", interval=0.01
                )
            # Best effort: anywhere between "not received yet" and "room finished".
            first.send(signal.SIGKILL)
            assert await first.wait_exit() == -signal.SIGKILL
        else:
            assert await first.wait_exit() == KILLED_BY_CRASH_POINT, first.describe()
            # Died between the commit of !confirmer and its reply: the demande exists.
            [demande] = await _demandes(files)
            assert demande.creation_step == (
                "pending" if death == "after_create_room" else "invited"
            )
            # ... and the aidant has had the recap only, no answer to !confirmer yet.
            dm_so_far = await admin.timeline(dm)
            assert len(proc.sent_by(dm_so_far, files.user_id, "m.room.encrypted")) == 1

        second.start()
        opened = await next_reply(aidant, dm, files.user_id, after=1, wait=60)
        await matrix.wait_for(
            lambda: _opened_and_idle(files), 60, "the demande ready and the outbox empty"
        )
        assert await second.stop(signal.SIGTERM) == 0, second.describe()

    # Nothing of the usager nor any secret in the service's log, whatever happened.
    for run in (first, second):
        for leak in ("Dupontel", "12/03/1961", files.password, "syt_"):
            assert leak not in run.log(), (leak, run.log_path)

    # The end state, frozen: the bot is stopped.
    [demande] = await _demandes(files)
    assert demande.reference in opened and "ouverte" in opened, opened
    room_id = demande.room_id
    assert room_id is not None

    # One room carries this demande, and it is the one recorded.
    assert await admin.rooms_with_state(
        files.user_id, DEMANDE_STATE, reference=demande.reference
    ) == [room_id]

    # One invitation per participant, none for anyone else.
    timeline = await admin.timeline(room_id)
    participants = {c.user_id for c in people.values()}
    assert proc.invites_per_user(timeline) == dict.fromkeys(participants, 1)

    # One device for the bot, across the crash and the restart.
    assert len(await admin.devices(files.user_id)) == 1

    # The bot posted one message in the room, the dossier, and each instructeur reads it.
    bot_messages = proc.sent_by(timeline, files.user_id, "m.room.encrypted")
    assert len(bot_messages) == 1, timeline
    for key in ("instr1", "instr2"):
        instructeur = people[key]
        texts = await matrix.join_and_read(instructeur, room_id, len(bot_messages))
        assert "Dupontel" in texts[0], texts
        assert _dossiers(instructeur, room_id) == [demande.reference]

    # In the direct chat: the recap and exactly one "opened" reply, both decrypted.
    dm_from_bot = proc.sent_by(await admin.timeline(dm), files.user_id, "m.room.encrypted")
    assert len(dm_from_bot) == 2
    await matrix.sync_until(
        aidant,
        lambda: count_from(aidant, dm, files.user_id) == len(dm_from_bot),
        what="every bot message of the direct chat decrypted",
    )
    assert not matrix.inbox(aidant).undecryptable[dm]


@pytest.mark.parametrize("death", ["before_draft_files", "after_draft_file_upload"])
async def test_the_letter_sent_with_the_draft_is_posted_once_after_a_crash(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path, death: str
) -> None:
    admin = proc.AdminApi.of(synapse, await clients.user("admin", admin=True))
    files = await proc.register_bot(synapse, tmp_path / "bot")
    people = await _directory(files, clients)
    aidant = people["aidant"]
    first = proc.bot_process(files, env={"APLUS_CRASH_AT": death})
    second = proc.bot_process(files)
    letter = b"%PDF-1.4 courrier " + bytes(range(256)) * 20

    with proc.killed_at_exit(first, second):
        first.start()
        dm = await botsupport.open_direct_chat(aidant, files.user_id)
        await say(aidant, dm, "nom : Dupontel")
        await next_reply(aidant, dm, files.user_id, after=0)
        await post_file(aidant, dm, letter, name="courrier.pdf")
        kept = await next_reply(aidant, dm, files.user_id, after=1)
        assert "courrier.pdf" in kept, kept
        await say(aidant, dm, filled_form())
        assert "courrier.pdf" in await next_reply(aidant, dm, files.user_id, after=2)
        await say(aidant, dm, "!confirmer")
        assert await first.wait_exit() == KILLED_BY_CRASH_POINT, first.describe()

        second.start()
        await matrix.wait_for(
            lambda: _opened_and_idle(files), 60, "the demande ready and the outbox empty"
        )
        # The letter leaves the draft's files when it is queued: sent once the outbox is
        # empty again (a stop before that leaves it queued, sent at the next start).
        await matrix.wait_for(lambda: _no_draft_files(files), 60, "the letter queued and sent")
        assert await second.stop(signal.SIGTERM) == 0, second.describe()

    [demande] = await _demandes(files)
    assert demande.room_id is not None
    # The dossier, then the letter: two messages from the bot, never the letter twice.
    timeline = await admin.timeline(demande.room_id)
    assert len(proc.sent_by(timeline, files.user_id, "m.room.encrypted")) == 2, timeline
    instr1 = people["instr1"]
    received: list[nio.RoomEncryptedFile] = []
    instr1.add_event_callback(lambda _r, e: received.append(e), nio.RoomEncryptedFile)
    await matrix.join_and_read(instr1, demande.room_id, 1)
    await matrix.sync_until(instr1, lambda: bool(received), what="the letter")
    assert [e.body for e in received] == ["courrier.pdf"]


async def _no_draft_files(files: proc.BotFiles) -> bool:
    """The draft's files all posted: none left to post, and the outbox empty."""
    async with files.store() as store, store.transaction() as tx:
        return await tx.demandes_with_files_to_post() == [] and not await tx.pending_messages()
