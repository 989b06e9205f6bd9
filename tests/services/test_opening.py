"""Opening a demande and routing it, through the real services over the fake gateway."""

from __future__ import annotations

from bot.domain.model import Role, Status
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


async def test_a_room_that_cannot_be_built_is_told_and_the_next_demande_opens(
    world: World,
) -> None:
    # The homeserver refuses the first createRoom for a reason of its own (not an outage).
    world.gw.fail("create_room", raise_matrix(400, "M_INVALID_PARAM"))
    dm = await world.direct_chat()
    form = filled_form(date_mandat=world.clock.now().strftime("%d/%m/%Y"))
    await world.receive(dm, world.text(dm, AIDANT, form))
    await world.receive(dm, world.text(dm, AIDANT, "!confirmer"))
    await world.flush()
    told = [s.body for s in world.replies(dm)]
    assert any("n'a pas encore pu être créé" in b for b in told), told
    async with world.store.transaction() as tx:
        [stuck] = await tx.demandes_in_creation()
    assert "demande_opening_problem" in await world.audit(stuck.reference)
    # The next demande is not held back by the first one.
    second = await world.open_demande()
    assert second.reference != stuck.reference
