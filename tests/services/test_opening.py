"""Opening a demande and routing it, through the real services over the fake gateway."""

from __future__ import annotations

from bot.domain.model import Status
from tests.services.conftest import AIDANT, BOT, INSTR1, INSTR2, World


async def test_form_confirmed_opens_a_room_with_the_routed_instructeurs(world: World) -> None:
    demande = await world.open_demande()
    assert demande.status == Status.NOUVELLE
    room_id = demande.room_id
    assert room_id is not None
    # One createRoom, inviting exactly the aidant and the CAF's Matrix instructeurs.
    [body] = [c for c in world.gw.created if not c.get("is_direct")]
    assert sorted(body["invite"]) == sorted([AIDANT, INSTR1, INSTR2])
    # The dossier went straight out, encrypted for the ledger only.
    [dossier] = world.replies(room_id)
    assert dossier.encrypted
    assert dossier.recipients == frozenset({AIDANT, INSTR1, INSTR2, BOT})
    assert demande.reference in dossier.body
    actions = await world.audit(demande.reference)
    assert {"demande_opened", "mandate_recorded", "room_created"} <= set(actions)
