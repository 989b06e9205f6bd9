"""A participant's message in a demande room, from Matrix or by email: one path."""

from __future__ import annotations

from bot.domain.model import Status
from tests.services.conftest import AIDANT, INSTR1, MAILONLY, World


async def test_a_matrix_quick_answer_moves_the_status_and_answers_the_room(world: World) -> None:
    demande = await world.open_demande()
    room = demande.room_id
    assert room is not None
    before = len(world.replies(room))
    assert await world.receive(room, world.text(room, INSTR1, "!jemenoccupe"))
    await world.flush()
    assert (await world.demande(demande.reference)).status == Status.EN_COURS
    answers = [s.body for s in world.replies(room)[before:]]
    assert any("s'occupe de la demande" in b for b in answers), answers
    assert {"status_en_cours", "command_jemenoccupe"} <= set(await world.audit(demande.reference))


async def test_the_same_event_twice_is_handled_once(world: World) -> None:
    demande = await world.open_demande()
    room = demande.room_id
    assert room is not None
    event = world.text(room, INSTR1, "!pasleboninterlocuteur")
    await world.receive(room, event)
    await world.receive(room, event)  # a batch seen again after a crash
    await world.flush()
    replies = [s for s in world.replies(room) if s.txn_id == f"reply-{event.event_id}"]
    assert len(replies) == 1
    assert (await world.audit(demande.reference)).count("not_the_right_contact") == 1


async def test_a_message_from_outside_the_ledger_is_not_acted_on(world: World) -> None:
    demande = await world.open_demande()
    room = demande.room_id
    assert room is not None
    before = len(world.replies(room))
    await world.receive(room, world.text(room, "@mallory:localhost", "!traitee"))
    await world.flush()
    assert (await world.demande(demande.reference)).status == Status.NOUVELLE
    assert world.replies(room)[before:] == []
    assert "message_from_unauthorised" in await world.audit(demande.reference)
    async with world.store.transaction() as tx:
        assert room in [r for r, _ in await tx.guard_requests()]


async def test_an_email_quick_answer_takes_the_same_path(email_world: World) -> None:
    world = email_world
    demande = await world.open_demande()
    room = demande.room_id
    assert room is not None
    await world.deliver_emails()
    [announce] = world.emails_to(MAILONLY)  # the new demande, to the email-only instructeur
    before = len(world.replies(room))
    answer = await world.email_reply(announce, MAILONLY, "!jemenoccupe\nJe regarde demain.")
    assert answer.startswith("250"), answer
    assert (await world.demande(demande.reference)).status == Status.EN_COURS
    posted = [s.body for s in world.replies(room)[before:]]
    assert any("s'occupe de la demande" in b for b in posted), posted
    assert any("Je regarde demain." in b for b in posted), posted
    actions = await world.audit(demande.reference)
    assert {"status_en_cours", "command_jemenoccupe"} <= set(actions)
    # The aidant gets nothing by email (a Matrix participant); the reply is not echoed back.
    assert not world.emails_to(AIDANT)
