"""What end-to-end encryption tests look at on a nio device: withheld keys, late keys."""

from __future__ import annotations

import io
from typing import Any

import nio

from bot.domain.model import Role
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.world import World


class Withheld:
    """`m.room_key.withheld` received by a nio device since it was built.

    Read from the client's inbox, which listens from before the first sync: the bot may
    answer a new device's key upload before that device's first sync returns.
    """

    def __init__(self, client: nio.AsyncClient) -> None:
        self._inbox = matrix.inbox(client)

    @property
    def events(self) -> list[dict[str, Any]]:
        return self._inbox.withheld


def decrypted_later(client: nio.AsyncClient, room_id: str, sender: str) -> list[str]:
    """Bodies of `sender`'s events the client could not decrypt when they arrived and can
    decrypt now (nio does not try an event again by itself once its key comes)."""
    bodies = []
    for event in matrix.inbox(client).undecryptable[room_id]:
        if event.sender != sender:
            continue
        try:
            clear = client.decrypt_event(event)
        except nio.EncryptionError:
            continue
        body = getattr(clear, "body", None)
        if isinstance(body, str):
            bodies.append(body)
    return bodies


async def post_file(
    client: nio.AsyncClient, room_id: str, data: bytes, *, name: str, size: int | None = None
) -> dict[str, Any]:
    """Upload encrypted and send, as Element does; returns the message content."""
    resp, keys = await client.upload(
        io.BytesIO(data),
        content_type="application/octet-stream",
        filename=name,
        encrypt=True,
        filesize=len(data),
    )
    assert isinstance(resp, nio.UploadResponse) and keys is not None, resp
    content = {
        "msgtype": "m.file",
        "body": name,
        "filename": name,
        "info": {"mimetype": "application/pdf", "size": len(data) if size is None else size},
        "file": {"url": resp.content_uri, **keys},
    }
    sent = await client.room_send(room_id, "m.room.message", content, None, True)
    assert isinstance(sent, nio.RoomSendResponse), sent
    return content


async def operator_in_admin_room(
    clients: matrix.Clients, runner: botsupport.BotRunner, world: World
) -> tuple[nio.AsyncClient, str]:
    """An operator of the directory, joined to the bot's admin room: (client, room ID)."""
    operator = await clients.client("operateur")
    await botsupport.add_agent(
        runner.store,
        world.directory,
        "operateur",
        matrix_id=operator.user_id,
        roles=[Role.OPERATEUR],
        group=None,
    )
    assert runner.app is not None
    await runner.app.admin.room.sync_members()
    room_id = runner.app.admin.room.room_id
    assert room_id is not None
    await matrix.accept_invite(operator, room_id)
    return operator, room_id
