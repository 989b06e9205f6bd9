"""The bot's cross-signing against Element's own crypto stack and the real homeserver.

A raw nio E2EE client stands in for the bot; `ElementClient` runs matrix-js-sdk with
Rust crypto in "exclude insecure devices" mode (MSC4153), as Element does.
"""

from __future__ import annotations

import nio
import pytest

from bot.devserver import LocalSynapse
from bot.matrix.cross_signing import (
    SEED_SECRET_NAME,
    CrossSigningConflict,
    CrossSigningSeeds,
    cross_signing_status,
    ensure_cross_signing,
)
from tests.support import matrix
from tests.support.e2ee import Withheld
from tests.support.interop import ElementClient
from tests.support.matrix import TEST_PASSWORD, Clients


class MemorySecretStore:
    """The `SecretStore` seam, in memory; records how often each secret was written."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.writes = 0

    async def get_secret(self, key: str) -> bytes | None:
        return self.values.get(key)

    async def set_secret(self, key: str, value: bytes) -> None:
        self.values[key] = value
        self.writes += 1


def localpart(user_id: str) -> str:
    return user_id[1:].split(":", 1)[0]


async def open_room_with_element(bot: nio.AsyncClient, element: ElementClient) -> str:
    """The bot creates an encrypted room, Element joins, the bot sees the join."""
    room_id = await matrix.create_encrypted_room(bot, invite=[element.user_id])
    await element.join(room_id)
    await matrix.sync_until(
        bot,
        lambda: matrix.has_joined(bot, room_id, element.user_id),
        what=f"{element.user_id} joined",
    )
    return room_id


async def test_element_exchanges_messages_with_a_cross_signed_bot(
    synapse: LocalSynapse, clients: Clients
) -> None:
    bot = await clients.client("robot", cross_signed=False)
    status = await ensure_cross_signing(bot, MemorySecretStore(), password=TEST_PASSWORD)
    assert status.action == "created"
    assert status.device_signed
    assert status.device_id == bot.device_id

    agent = await clients.user("agent")
    async with ElementClient.start(synapse.base_url, agent.user_id, TEST_PASSWORD) as element:
        room_id = await open_room_with_element(bot, element)
        device = await element.device_status(bot.user_id, bot.device_id)
        assert device.known
        assert device.signed_by_owner

        await matrix.send_text(bot, room_id, "Bonjour, votre demande est ouverte.")
        received = await element.wait_message(room_id, "Bonjour", sender=bot.user_id)
        assert received.status == "decrypted", received
        assert received.event is not None
        assert received.event.body == "Bonjour, votre demande est ouverte."
        assert received.event.encrypted

        await element.send(room_id, "Réponse de l'agent (Element)")
        await matrix.sync_until(
            bot,
            lambda: "Réponse de l'agent (Element)" in matrix.texts(bot, room_id),
            what="the agent's message, decrypted",
        )
        assert not matrix.inbox(bot).undecryptable[room_id]


async def test_element_excludes_a_bot_that_is_not_cross_signed(
    synapse: LocalSynapse, clients: Clients
) -> None:
    bot = await clients.client("robot", cross_signed=False)
    withheld = Withheld(bot)
    agent = await clients.user("agent")
    async with ElementClient.start(synapse.base_url, agent.user_id, TEST_PASSWORD) as element:
        room_id = await open_room_with_element(bot, element)
        device = await element.device_status(bot.user_id, bot.device_id)
        assert device.known
        assert not device.signed_by_owner

        await matrix.send_text(bot, room_id, "Bonjour, votre demande est ouverte.")
        refused = await element.wait_message(room_id, "Bonjour", sender=bot.user_id)
        assert refused.status == "failed", refused
        assert refused.event is not None
        assert refused.event.failure == "UNSIGNED_SENDER_DEVICE"
        assert refused.event.body is None

        await element.send(room_id, "Réponse de l'agent (Element)")
        undecryptable = matrix.inbox(bot).undecryptable[room_id]
        await matrix.sync_until(
            bot,
            lambda: bool(withheld.events) and bool(undecryptable),
            what="a withheld room key and the undecryptable message",
        )
        assert withheld.events[0]["code"] == "m.unverified"
        assert withheld.events[0]["room_id"] == room_id
        assert withheld.events[0]["session_id"] == undecryptable[0].session_id
        assert undecryptable[0].sender == agent.user_id
        assert "Réponse de l'agent (Element)" not in matrix.texts(bot, room_id)


async def test_isolation_mode_is_what_excludes_the_unsigned_bot(
    synapse: LocalSynapse, clients: Clients
) -> None:
    # Control for the test above: same unsigned bot, Element trusting all devices.
    bot = await clients.client("robot", cross_signed=False)
    agent = await clients.user("agent")
    async with ElementClient.start(
        synapse.base_url, agent.user_id, TEST_PASSWORD, isolation="all"
    ) as element:
        room_id = await open_room_with_element(bot, element)
        await matrix.send_text(bot, room_id, "Bonjour, votre demande est ouverte.")
        received = await element.wait_message(room_id, "Bonjour", sender=bot.user_id)
        assert received.status == "decrypted", received


async def test_restart_and_new_device_reuse_the_stored_identity(
    synapse: LocalSynapse, clients: Clients
) -> None:
    user = await clients.user("robot")
    bot = await clients.client(user, cross_signed=False)
    secrets = MemorySecretStore()
    created = await ensure_cross_signing(bot, secrets, password=TEST_PASSWORD)
    assert created.action == "created"
    stored = secrets.values[SEED_SECRET_NAME]
    devices = await bot.devices()
    assert isinstance(devices, nio.DevicesResponse)
    device_ids = {d.id for d in devices.devices}

    # Restart on the same device, from the same store: nothing to do.
    restarted = await clients.reopen(bot)
    again = await ensure_cross_signing(restarted, secrets, password=None)
    assert again.action == "unchanged"
    assert again.master_key == created.master_key
    assert again.device_id == created.device_id
    devices = await restarted.devices()
    assert isinstance(devices, nio.DevicesResponse)
    assert {d.id for d in devices.devices} == device_ids

    # A new device with the stored seeds: signed without any password (no auth prompt).
    login = await synapse.login(localpart(user.user_id), TEST_PASSWORD)
    new_bot = await clients.client(login, cross_signed=False)
    assert new_bot.device_id != bot.device_id
    repaired = await ensure_cross_signing(new_bot, secrets, password=None)
    assert repaired.action == "repaired"
    assert repaired.master_key == created.master_key
    assert repaired.device_signed
    assert secrets.values[SEED_SECRET_NAME] == stored
    assert secrets.writes == 1

    report = await cross_signing_status(new_bot, secrets)
    assert report.master_key == created.master_key
    assert report.device_signed
    assert report.matches_stored_keys is True

    agent = await clients.user("agent")
    async with ElementClient.start(synapse.base_url, agent.user_id, TEST_PASSWORD) as element:
        await open_room_with_element(new_bot, element)
        for device_id in (bot.device_id, new_bot.device_id):
            device = await element.device_status(user.user_id, device_id)
            assert device.signed_by_owner, device_id


async def test_stored_seeds_are_uploaded_when_the_server_has_none(
    clients: Clients,
) -> None:
    secrets = MemorySecretStore()
    seeds = CrossSigningSeeds.generate()
    await secrets.set_secret(SEED_SECRET_NAME, seeds.to_bytes())
    bot = await clients.client("robot", cross_signed=False)
    status = await ensure_cross_signing(bot, secrets, password=TEST_PASSWORD)
    assert status.action == "repaired"
    assert status.master_key == seeds.master_public
    report = await cross_signing_status(bot, secrets)
    assert report.master_key == seeds.master_public
    assert report.user_signing_key == seeds.user_signing_public
    assert report.device_signed


async def test_another_master_key_on_the_server_is_never_replaced(
    synapse: LocalSynapse, clients: Clients
) -> None:
    user = await clients.user("robot")
    # Someone set up cross-signing for the bot's account from Element.
    async with ElementClient.start(synapse.base_url, user.user_id, TEST_PASSWORD):
        pass
    bot = await clients.client(user, cross_signed=False)
    before = await cross_signing_status(bot)
    assert before.master_key is not None

    empty = MemorySecretStore()
    with pytest.raises(CrossSigningConflict, match="ne la remplace pas"):
        await ensure_cross_signing(bot, empty, password=TEST_PASSWORD)
    assert empty.values == {}

    other = MemorySecretStore()
    await other.set_secret(SEED_SECRET_NAME, CrossSigningSeeds.generate().to_bytes())
    with pytest.raises(CrossSigningConflict, match="ne correspond pas"):
        await ensure_cross_signing(bot, other, password=TEST_PASSWORD)

    after = await cross_signing_status(bot, other)
    assert after.master_key == before.master_key
    assert after.self_signing_key == before.self_signing_key
    assert after.matches_stored_keys is False
    assert not after.device_signed
