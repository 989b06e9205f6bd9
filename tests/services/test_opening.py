"""Opening a demande and routing it, through the real services over the fake gateway."""

from __future__ import annotations

from bot.domain.model import Demande, Role, Status
from bot.matrix.errors import HomeserverUnavailable
from tests.services.conftest import AIDANT, BOT, INSTR1, INSTR2, World
from tests.services.fakes import raise_matrix
from tests.support.bot import filled_form


async def test_form_confirmed_opens_a_room_with_the_routed_instructeurs(world: World) -> None:
    demande = await world.open_demande()
    assert demande.status == Status.NOUVELLE
    room_id = demande.room_id
    assert room_id is not None
    # One createRoom, inviting exactly the aidant and the CAF's Matrix instructeurs.
    [body] = world.gw.created
    assert sorted(body["invite"]) == sorted([AIDANT, INSTR1, INSTR2])
    # The dossier went straight out, encrypted for the ledger only.
    [dossier] = world.replies(room_id)
    assert dossier.encrypted
    assert dossier.recipients == frozenset({AIDANT, INSTR1, INSTR2, BOT})
    assert demande.reference in dossier.body
    actions = await world.audit(demande.reference)
    assert {"demande_opened", "mandate_recorded", "room_created"} <= set(actions)


async def test_an_instructeur_on_a_server_not_allowed_is_skipped_not_fatal(world: World) -> None:
    async with world.store.transaction() as tx:
        await tx.upsert_agent(
            first_name="Eve",
            last_name="Ailleurs",
            email=None,
            matrix_id="@eve:evil.test",
            group_id=world.groups["caf"].id,
            roles=frozenset({Role.INSTRUCTEUR}),
        )
    demande = await world.open_demande()
    [body] = world.gw.created
    assert "@eve:evil.test" not in body["invite"]
    assert sorted(body["invite"]) == sorted([AIDANT, INSTR1, INSTR2])
    assert "routing_skipped" in await world.audit(demande.reference)


async def _confirm(world: World) -> str:
    """Form and !confirmer in a new direct chat, without waiting for the room."""
    dm = await world.direct_chat()
    form = filled_form(date_mandat=world.clock.now().strftime("%d/%m/%Y"))
    await world.receive(dm, world.text(dm, AIDANT, form))
    await world.flush()
    world.later(seconds=1)
    await world.receive(dm, world.text(dm, AIDANT, "!confirmer"))
    await world.flush()
    return dm


async def _stuck(world: World) -> Demande:
    async with world.store.transaction() as tx:
        [stuck] = await tx.demandes_in_creation()
    return stuck


async def _queued_or_sent(world: World, txn_id: str) -> bool:
    async with world.store.transaction() as tx:
        if await tx.message_event_id(txn_id) is not None:
            return True
        return any(m.txn_id == txn_id for m in await tx.pending_messages())


async def test_a_room_that_cannot_be_built_is_told_and_the_next_demande_opens(
    world: World,
) -> None:
    # The homeserver refuses the first createRoom for a reason of its own (not an outage).
    world.gw.fail("create_room", raise_matrix(400, "M_INVALID_PARAM"))
    dm = await _confirm(world)
    told = [s.body for s in world.replies(dm)]
    # Not « ouverte »: there is no room. Recorded, its room on the way.
    assert not any("ouverte" in b for b in told), told
    assert "enregistrée" in told[-1] and "en cours de création" in told[-1], told
    stuck = await _stuck(world)
    assert "demande_opening_problem" in await world.audit(stuck.reference)
    # The next demande is not held back by the first one.
    second = await world.open_demande()
    assert second.reference != stuck.reference


async def test_a_refused_room_is_retried_with_a_backoff_then_reported_for_good(
    world: World,
) -> None:
    """Defect 2 follow-up: the aidant was told « ouverte » with no room, and every recovery
    pass waited for an orphan room that a refused createRoom never makes."""
    world.gw.fail("create_room", raise_matrix(403, "M_FORBIDDEN"), times=1000)
    world.parts.admin.room.room_id = "!admin:localhost"
    dm = await _confirm(world)
    stuck = await _stuck(world)
    ref = stuck.reference
    assert len(world.gw.calls_of("create_room")) == 1
    [recorded] = [s.body for s in world.replies(dm)][1:]
    assert ref in recorded and "enregistrée" in recorded and "ouverte" not in recorded

    # Too early for the next attempt: nothing is asked of the homeserver.
    await world.parts.opening.resume_all()
    assert len(world.gw.calls_of("create_room")) == 1
    # Then a doubling delay, each attempt asked once, the aidant not told again meanwhile.
    for attempt, wait in ((2, 30), (3, 60), (4, 120)):
        world.later(seconds=wait)
        calls = len(world.gw.calls)
        await world.parts.opening.resume_all()
        assert len(world.gw.calls_of("create_room")) == attempt
        # The homeserver answered: no room of this attempt to wait for, one look only.
        assert [c.method for c in world.gw.calls[calls:]].count("joined_rooms") == 1
        await world.flush()
        if attempt < 4:
            assert len(world.replies(dm)) == 2, [s.body for s in world.replies(dm)]
    # Given up: the aidant, the operators (reference only) and the audit are told, once.
    told = [s.body for s in world.replies(dm)]
    assert len(told) == 3, told
    assert ref in told[-1] and "n'a pas pu être créé" in told[-1]
    assert "rien à renvoyer" in told[-1] and "prévenue" in told[-1]
    assert await _queued_or_sent(world, f"alert-opening-problem-{ref}")
    actions = await world.audit(ref)
    assert actions.count("demande_opening_problem") == 1
    assert actions.count("demande_opening_given_up") == 1

    # Still tried now and then (the cause may be fixed), silently.
    world.later(hours=1)
    await world.parts.opening.resume_all()
    await world.flush()
    assert len(world.gw.calls_of("create_room")) == 5
    assert len(world.replies(dm)) == 3
    # Fixed: the room is made, the aidant gets « ouverte », the operators are told.
    world.gw._script["create_room"].clear()
    world.later(hours=1)
    await world.parts.opening.resume_all()
    await world.flush()
    assert (await world.demande(ref)).creation_step == "ready"
    assert "ouverte" in world.replies(dm)[-1].body
    assert await _queued_or_sent(world, f"alert-opening-solved-{ref}")
    assert (await world.audit(ref)).count("demande_opening_given_up") == 1


async def test_an_outage_at_creation_is_not_counted_as_a_refusal(world: World) -> None:
    world.gw.fail("create_room", HomeserverUnavailable("connection refused"))
    world.gw.fail("create_room", raise_matrix(502, "M_UNKNOWN"))
    world.gw.fail("create_room", raise_matrix(500, "M_UNKNOWN"))
    dm = await _confirm(world)
    ref = (await _stuck(world)).reference
    # Each recovery pass tries again, with no backoff and no problem recorded.
    for attempt in (2, 3):
        await world.parts.opening.resume_all()
        assert len(world.gw.calls_of("create_room")) == attempt
    async with world.store.transaction() as tx:
        assert await tx.work_problems("opening") == []
    world.later(seconds=1)
    await world.parts.opening.resume_all()
    await world.flush()
    assert (await world.demande(ref)).creation_step == "ready"
    told = [s.body for s in world.replies(dm)][1:]
    assert len(told) == 2 and "enregistrée" in told[0] and "ouverte" in told[1], told
    assert "demande_opening_problem" not in await world.audit(ref)


async def test_a_room_made_at_once_gets_one_reply_opened(world: World) -> None:
    """The usual case: one reply to !confirmer, sent once the room exists."""
    demande = await world.open_demande()
    dm = world.gw.sent[0].room_id
    told = [s.body for s in world.replies(dm)]
    assert len(told) == 2 and demande.reference in told[1] and "ouverte" in told[1], told
