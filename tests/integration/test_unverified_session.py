"""An unverified session of an instructeur is told why it reads nothing (issue 12, item 3).

Once per session, in French, where that session can read it (a notice in clear in the
demande room); the withheld reasons sent to the session are French too. Once its owner
verifies it (cross-signs it), it gets the keys, the earlier ones included.
"""

from __future__ import annotations

from pathlib import Path

from bot.devserver import LocalSynapse
from bot.matrix.content import APLUS_KEY
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, reply_with, say
from tests.support.e2ee import Withheld, decrypted_later
from tests.support.world import demande_of, make_world, open_demande


def _told(client: object, room_id: str, bot_id: str, device_id: str) -> list[object]:
    return [
        e
        for e in matrix.inbox(client).events(room_id)  # type: ignore[arg-type]
        if e.sender == bot_id
        and (e.source.get("content", {}).get(APLUS_KEY) or {}).get("unverified_session")
        == device_id
    ]


async def test_unverified_session_is_told_in_french_then_gets_keys_once_verified(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        bot_id, instr1 = world.bot_id, world.instr1
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        assert room_id
        await matrix.join_and_read(instr1, room_id, 1)

        # instr1 logs in on a second computer and does not verify that session.
        unverified = await clients.new_device(instr1.user_id, cross_signed=False)
        withheld = Withheld(unverified)
        device = unverified.device_id
        await matrix.sync_until(
            unverified,
            lambda: bool(_told(unverified, room_id, bot_id, device)),
            what="the explanation, readable on the unverified session itself",
        )
        [notice] = _told(unverified, room_id, bot_id, device)
        content = notice.source["content"]  # type: ignore[attr-defined]
        assert notice.source["type"] == "m.room.message"  # type: ignore[attr-defined]
        assert content["msgtype"] == "m.notice"
        assert f"votre session {device} ne peut pas lire les messages" in content["body"]
        assert "n'est pas vérifiée" in content["body"]
        assert "clé de récupération" in content["body"]
        assert content["m.mentions"] == {"user_ids": [instr1.user_id]}
        assert "Dupontel" not in content["body"] and reference not in content["body"]
        await matrix.sync_until(unverified, lambda: bool(withheld.events), what="withheld keys")
        reasons = {e["reason"] for e in withheld.events}
        assert all(r.startswith("Cette session n'est pas vérifiée") for r in reasons), reasons
        assert decrypted_later(unverified, room_id, bot_id) == []

        # A new message is withheld too, and the person is not told a second time.
        n = count_from(instr1, room_id, bot_id)
        await say(instr1, room_id, "!statut")
        answer = await reply_with(instr1, room_id, bot_id, f"Demande {reference} :", after=n)
        before = len(withheld.events)
        await matrix.sync_until(
            unverified, lambda: len(withheld.events) > before, what="the next key withheld"
        )
        await matrix.sync_until(instr1, lambda: bool(_told(instr1, room_id, bot_id, device)))
        assert len(_told(unverified, room_id, bot_id, device)) == 1
        async with runner.store.transaction() as tx:
            audited = await tx.audit_entries(action="unverified_session_told")
        assert [(e.details["user"], e.details["device"]) for e in audited] == [
            (instr1.user_id, device)
        ]

        # instr1 verifies the session (signs it with the cross-signing keys): keys follow.
        await matrix.cross_sign(unverified)

        def reads() -> bool:
            bodies = decrypted_later(unverified, room_id, bot_id)
            return answer in bodies and any("Dupontel" in b for b in bodies)

        await matrix.sync_until(unverified, reads, what="the keys, once the session verified")
        await runner.check_alive()
