"""The room guard: membership back to the ledger, protected state back to the bot's."""

from __future__ import annotations

from tests.services.conftest import AIDANT, BOT, World

INTRUDER = "@mallory:localhost"


async def test_an_intruder_forced_in_is_kicked_then_banned_the_second_time(world: World) -> None:
    demande = await world.open_demande()
    room = demande.room_id
    assert room
    # A server admin forces someone in: the bot sees the join in its sync.
    world.gw.force_join(room, INTRUDER, seen=True)
    await world.receive(room, world.member(room, INTRUDER, "join"))
    assert "intruder_detected" in await world.audit(demande.reference)
    await world.parts.guard.reconcile(room)
    assert world.gw.kicked[-1][:2] == (room, INTRUDER)
    assert world.gw.server[room][INTRUDER] == "leave"
    await world.flush()
    assert any(INTRUDER in s.body for s in world.replies(room))  # the room is told
    # Again: this time a ban.
    world.gw.force_join(room, INTRUDER, seen=True)
    await world.receive(room, world.member(room, INTRUDER, "join"))
    await world.parts.guard.reconcile(room)
    assert world.gw.banned[-1][:2] == (room, INTRUDER)
    actions = await world.audit(demande.reference)
    assert {"intruder_kicked", "intruder_banned"} <= set(actions)


async def test_reconcile_twice_changes_nothing_more(world: World) -> None:
    demande = await world.open_demande()
    room = demande.room_id
    assert room
    world.gw.force_join(room, INTRUDER)
    first = await world.parts.guard.reconcile(room)
    second = await world.parts.guard.reconcile(room)
    assert len(first) == 1 and second == []
    assert len(world.gw.kicked) == 1


async def test_power_levels_changed_in_the_timeline_are_reverted(world: World) -> None:
    demande = await world.open_demande()
    room = demande.room_id
    assert room
    pl = dict(world.gw.state[room][("m.room.power_levels", "")])
    hijacked = {**pl, "users": {INTRUDER: 100}, "invite": 0}
    event = world.event(
        room, BOT, hijacked, type="m.room.power_levels", state_key=""
    )  # make_room_admin writes as the room's creator
    await world.receive(room, event)
    [put] = [p for p in world.gw.state_puts if p[1] == "m.room.power_levels"]
    assert put[3]["invite"] == 100 and INTRUDER not in put[3].get("users", {})
    assert "state_reverted" in await world.audit(demande.reference)


async def test_state_changed_while_the_bot_was_away_is_reverted_at_start(world: World) -> None:
    demande = await world.open_demande()
    other = await world.open_demande()
    assert demande.room_id and other.room_id
    # Changed behind the bot's back (no event ever reaches it): join rules opened up.
    world.gw.state[demande.room_id][("m.room.join_rules", "")] = {"join_rule": "public"}
    reverted = await world.parts.guard.check_open_rooms()
    assert reverted == 1
    assert world.gw.state[demande.room_id][("m.room.join_rules", "")]["join_rule"] == "invite"
    assert [p[0] for p in world.gw.state_puts] == [demande.room_id]
    # Level-triggered: a second look finds nothing to do.
    assert await world.parts.guard.check_open_rooms() == 0


async def test_the_bots_own_earlier_room_name_is_not_reverted(world: World) -> None:
    """The spaces service renames a room at each status change; when two changes come
    close, the first rename reaches the sync after the second status is stored: that
    is the bot's own naming, not a drift (no revert, no audit, no warning)."""
    demande = await world.open_demande()
    room = demande.room_id
    assert room
    before = len(world.gw.state_puts)
    stale = {"name": f"Demande {demande.reference} · CAF · 95 · en attente"}
    await world.receive(room, world.event(room, BOT, stale, type="m.room.name", state_key=""))
    assert world.gw.state_puts[before:] == []
    assert "state_reverted" not in await world.audit(demande.reference)


async def test_a_room_name_set_by_someone_else_is_reverted(world: World) -> None:
    demande = await world.open_demande()
    room = demande.room_id
    assert room
    renamed = {"name": "Dossier de Jeanne Dupontel"}
    await world.receive(room, world.event(room, AIDANT, renamed, type="m.room.name", state_key=""))
    [put] = [p for p in world.gw.state_puts if p[1] == "m.room.name"][-1:]
    assert "Dupontel" not in put[3]["name"] and demande.reference in put[3]["name"]
    assert "state_reverted" in await world.audit(demande.reference)
