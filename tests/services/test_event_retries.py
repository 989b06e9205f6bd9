"""An event whose handling fails stays with itself: retried alone, then given up, told."""

from __future__ import annotations

import asyncio
from typing import Any

from nio import SyncResponse

from bot.matrix import attachments as files
from bot.sync_loop import SYNC_TOKEN_KEY
from tests.services.conftest import INSTR1, MAILONLY, World


async def _file_event(world: World, room: str, *, media_answers: bool) -> Any:
    data = b"%PDF-1.4 avis d'imposition\n"
    file = await world.gw.upload_attachment(data, "avis.pdf")
    if not media_answers:
        # The media server does not answer (502).
        _SAVED[file["url"]] = world.gw.media.pop(file["url"])
    content = files.file_content(
        file, filename="avis.pdf", mimetype="application/pdf", size=len(data)
    )
    return world.event(room, INSTR1, content)


async def _retry_due(world: World) -> list[str]:
    world.later(hours=2)  # past any backoff of the budget
    return await world.parts.router.handle_events(await world.parts.retries.due(), retried=True)


async def test_a_file_whose_media_fails_does_not_hold_back_the_room(email_world: World) -> None:
    world = email_world
    demande = await world.open_demande()
    room = demande.room_id
    assert room
    await world.deliver_emails()
    sent_before = len(world.emails_to(MAILONLY))
    file_event = await _file_event(world, room, media_answers=False)
    text_event = world.text(room, INSTR1, "!jemenoccupe")
    handled = await world.receive(room, file_event, text_event)
    # The file failed; the message after it, in the same room, was handled.
    assert handled == [text_event.event_id]
    async with world.store.transaction() as tx:
        assert await tx.event_failure_count(file_event.event_id) == 1
    # The media server answers again: the retry goes through, once.
    world.gw.media.update(_media_of(world, file_event))
    assert await _retry_due(world) == [file_event.event_id]
    assert await _retry_due(world) == []  # done: not tried again
    await world.deliver_emails()
    mails = world.emails_to(MAILONLY)[sent_before:]
    with_file = [m for m in mails if b"avis.pdf" in m.data]
    assert len(with_file) == 1


_SAVED: dict[str, bytes] = {}


def _media_of(world: World, event: Any) -> dict[str, bytes]:
    url = event.source["content"]["file"]["url"]
    return {url: _SAVED[url]}


async def test_a_file_that_never_comes_is_given_up_and_the_room_told(email_world: World) -> None:
    world = email_world
    demande = await world.open_demande()
    room = demande.room_id
    assert room
    file_event = await _file_event(world, room, media_answers=False)
    assert await world.receive(room, file_event) == []
    budget = world.parts.retries.policy.attempts
    for _ in range(budget + 2):
        assert await _retry_due(world) == []
    async with world.store.transaction() as tx:
        assert await tx.event_failure_count(file_event.event_id) == budget
        assert await tx.due_event_retries(world.clock.now()) == []
    actions = await world.audit(demande.reference)
    assert actions.count("event_given_up") == 1
    await world.flush()
    [notice] = [s for s in world.replies(room) if s.txn_id == f"given-up-{file_event.event_id}"]
    assert notice.body.startswith("La pièce jointe envoyée par Instr1 Test n'a pas pu être pris")


async def test_the_sync_position_moves_on_past_a_failing_event(email_world: World) -> None:
    world = email_world
    demande = await world.open_demande()
    room = demande.room_id
    assert room
    file_event = await _file_event(world, room, media_answers=False)
    text_event = world.text(room, INSTR1, "!jemenoccupe")
    await world.gw.syncs.put(_sync_response("s1", room, [file_event, text_event]))
    loop = asyncio.create_task(world.parts.sync.run())
    try:
        await asyncio.wait_for(world.parts.sync.synced.wait(), 30)
    finally:
        loop.cancel()
    async with world.store.transaction() as tx:
        assert await tx.get_state(SYNC_TOKEN_KEY) == "s1"
        assert await tx.event_failure_count(file_event.event_id) == 1
        assert await tx.is_processed(text_event.event_id)


def _sync_response(token: str, room: str, events: list[Any]) -> SyncResponse:
    """A /sync answer with these events in the room's timeline, as nio hands it over
    once it decrypted them (it replaces each encrypted event by its clear one)."""
    raw = {
        "next_batch": token,
        "rooms": {
            "join": {
                room: {
                    "timeline": {"events": [], "limited": False, "prev_batch": "p0"},
                    "state": {"events": []},
                    "ephemeral": {"events": []},
                    "account_data": {"events": []},
                    "summary": {},
                    "unread_notifications": {},
                }
            },
            "invite": {},
            "leave": {},
        },
        "to_device": {"events": []},
        "device_lists": {"changed": [], "left": []},
        "device_one_time_keys_count": {},
        "presence": {"events": []},
        "account_data": {"events": []},
    }
    resp = SyncResponse.from_dict(raw)
    assert isinstance(resp, SyncResponse), resp
    resp.rooms.join[room].timeline.events = events
    return resp


async def test_a_malformed_event_is_audited_once_and_the_room_goes_on(world: World) -> None:
    """A message nio cannot read (a body that is not text, a file object that is not one):
    nothing is done with it, but it is accounted for, once; the next message is handled."""
    demande = await world.open_demande()
    room = demande.room_id
    assert room
    bad_text = world.event(room, INSTR1, {"msgtype": "m.text", "body": 5})
    bad_file = world.event(room, INSTR1, {"msgtype": "m.file", "body": "x.pdf", "file": "nope"})
    good = world.text(room, INSTR1, "!jemenoccupe")
    handled = await world.receive(room, bad_text, bad_file, good, bad_text)
    assert good.event_id in handled
    async with world.store.transaction() as tx:
        entries = [e for e in await tx.audit_entries(reference=demande.reference)]
    malformed = [e for e in entries if e.action == "event_malformed"]
    assert sorted(e.details["event_id"] for e in malformed) == sorted(
        [bad_text.event_id, bad_file.event_id]
    )
    assert "status_en_cours" in [e.action for e in entries]
