"""The gateway's room cache: which rooms leave memory, and in which order (no network).

The end-to-end behaviour (a forgotten room still served, its session rotated) is in
tests/integration/test_room_cache.py; here only the bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bot.matrix.gateway import MatrixGateway


def gateway(
    tmp_path: Path,
    cache: int | None,
    forgettable: Callable[[str], bool] = lambda room_id: room_id.startswith("!demande"),
) -> MatrixGateway:
    gw = MatrixGateway(
        homeserver="http://127.0.0.1:1",
        user_id="@bot:localhost",
        device_name="test",
        store_dir=tmp_path,
        pickle_key="k" * 32,
        room_cache=cache,
        forgettable=forgettable,
    )
    gw.client.restore_login("@bot:localhost", "DEVICE", "token")  # loads the crypto store
    return gw


def test_least_recently_active_demande_rooms_leave_first_and_others_stay(
    tmp_path: Path,
) -> None:
    gw = gateway(tmp_path, cache=2)
    for room in ("!dm:x", "!demande1:x", "!demande2:x", "!demande3:x"):
        gw.track_new_room(room, invited=["@a:x"])
    gw.track_new_room("!demande1:x", invited=[])  # active again: now the most recent

    assert gw.forget_idle_rooms() == 1
    assert set(gw.client.rooms) == {"!dm:x", "!demande1:x", "!demande3:x"}
    assert gw.present_members("!demande2:x") is None  # rebuilt from the homeserver on use
    assert gw.forget_idle_rooms() == 0
    assert gw.forget_idle_rooms(keep=0) == 2
    assert set(gw.client.rooms) == {"!dm:x"}  # not a demande room: never forgotten


async def test_a_room_with_a_send_in_progress_stays(tmp_path: Path) -> None:
    gw = gateway(tmp_path, cache=0)
    gw.track_new_room("!demande1:x", invited=[])
    gw.track_new_room("!demande2:x", invited=[])
    async with gw._lock("!demande1:x"):
        assert gw.forget_idle_rooms() == 1
        assert set(gw.client.rooms) == {"!demande1:x"}
    assert gw.forget_idle_rooms() == 1
    assert gw.client.rooms == {}


def test_no_cache_keeps_every_room(tmp_path: Path) -> None:
    gw = gateway(tmp_path, cache=None, forgettable=lambda _room_id: True)
    for i in range(5):
        gw.track_new_room(f"!demande{i}:x", invited=[])
    assert gw.forget_idle_rooms() == 0 and len(gw.client.rooms) == 5
