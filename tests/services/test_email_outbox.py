"""The email outbox against the relay: exactly once, retried on 4xx, told on 5xx."""

from __future__ import annotations

from email.parser import BytesParser

from tests.services.conftest import MAILONLY, World


def _message_ids(world: World) -> list[str]:
    return [
        str(BytesParser().parsebytes(d.message, headersonly=True)["Message-ID"])
        for d in world.relay.delivered
    ]


async def test_a_4xx_is_retried_later_and_delivered_once(email_world: World) -> None:
    world = email_world
    await world.open_demande()
    world.relay.answer(451)
    assert await world.deliver_emails() == 1  # one attempt, answered "later"
    assert world.relay.delivered == [] and len(world.relay.attempts) == 1
    assert await world.deliver_emails() == 0  # not due yet: no second attempt at once
    assert len(world.relay.attempts) == 1
    world.later(minutes=5)
    assert await world.deliver_emails() == 1
    world.later(hours=1)
    await world.deliver_emails()
    assert [d.recipients for d in world.relay.delivered] == [(MAILONLY,)]
    assert len(set(_message_ids(world))) == 1
    assert world.parts.email is not None
    assert world.parts.email.delivery.relay_state == "ok"


async def test_a_5xx_is_a_failure_audited_and_told_in_the_room(email_world: World) -> None:
    world = email_world
    demande = await world.open_demande()
    room = demande.room_id
    assert room
    world.relay.answer(550)
    await world.deliver_emails()
    world.later(hours=1)
    await world.deliver_emails()
    assert world.relay.delivered == [] and len(world.relay.attempts) == 1  # never again
    assert "email_delivery_failed" in await world.audit(demande.reference)
    await world.flush()
    told = [s.body for s in world.replies(room)]
    assert any("n'a pas pu être remis" in b and MAILONLY in b for b in told), told


async def test_an_unreachable_relay_keeps_the_mail_and_says_so(email_world: World) -> None:
    world = email_world
    await world.open_demande()
    world.relay.unreachable(times=2)
    await world.deliver_emails()
    assert world.parts.email is not None
    assert world.parts.email.delivery.relay_state == "unreachable"
    world.later(minutes=5)
    await world.deliver_emails()
    assert world.relay.delivered == []
    world.later(minutes=10)
    await world.deliver_emails()
    assert [d.recipients for d in world.relay.delivered] == [(MAILONLY,)]
    assert world.parts.email.delivery.relay_state == "ok"
