"""Who gets the bot's room keys: the pure decision, and the cross-signing chain it relies on."""

from __future__ import annotations

from typing import Any

from bot.domain.key_sharing import (
    Device,
    WithheldCode,
    plan_key_sharing,
    withheld_content,
)
from bot.matrix.cross_signing import (
    CrossSigningSeeds,
    device_signing_upload_body,
    public_key_of,
    sign_json,
)
from bot.matrix.device_trust import DeviceTrust, devices_from_query

BOT = "@bot:localhost"
OWN = (BOT, "BOTDEV")
ALICE = "@alice:localhost"
BOB = "@bob:localhost"
EVE = "@eve:localhost"


def dev(user: str, device: str, *, signed: bool = True) -> Device:
    return Device(user, device, f"ed-{device}", f"cu-{device}", signed)


DEVICES = {
    ALICE: [dev(ALICE, "A1"), dev(ALICE, "A2", signed=False)],
    BOB: [dev(BOB, "B1")],
    EVE: [dev(EVE, "E1")],
    BOT: [dev(BOT, "BOTDEV")],
}


def plan(**overrides: Any) -> Any:
    args: dict[str, Any] = {
        "authorised": {BOT, ALICE, BOB},
        "present": {BOT, ALICE, BOB},
        "devices": DEVICES,
        "require_cross_signed": True,
        "own": OWN,
        "shared_with": set(),
        "withheld_from": set(),
    }
    args.update(overrides)
    return plan_key_sharing(**args)


def refs(devices: Any) -> set[tuple[str, str]]:
    return {d.ref for d in devices}


def test_new_session_goes_to_signed_devices_of_authorised_present_users() -> None:
    p = plan()
    assert refs(p.share) == {(ALICE, "A1"), (BOB, "B1")}
    assert [(w.ref, w.code) for w in p.withhold] == [((ALICE, "A2"), WithheldCode.UNVERIFIED)]
    assert not p.rotate


def test_without_the_requirement_unsigned_devices_get_the_key_too() -> None:
    p = plan(require_cross_signed=False)
    assert refs(p.share) == {(ALICE, "A1"), (ALICE, "A2"), (BOB, "B1")}
    assert p.withhold == ()


def test_intruders_get_nothing_not_even_a_withheld_notice() -> None:
    p = plan(present={BOT, ALICE, BOB, EVE})
    assert EVE not in {d.user_id for d in p.share}
    assert EVE not in {w.user_id for w in p.withhold}
    assert p.ignored_users == {EVE}


def test_authorised_but_absent_users_get_nothing() -> None:
    p = plan(present={BOT, ALICE})
    assert refs(p.share) == {(ALICE, "A1")}


def test_the_bot_never_shares_with_itself() -> None:
    p = plan(authorised={BOT, ALICE}, present={BOT, ALICE})
    assert BOT not in {d.user_id for d in p.share}


def test_current_session_is_extended_to_a_new_signed_device_only() -> None:
    devices = {**DEVICES, ALICE: [*DEVICES[ALICE], dev(ALICE, "A3")]}
    p = plan(
        devices=devices,
        shared_with={(ALICE, "A1"), (BOB, "B1")},
        withheld_from={(ALICE, "A2")},
    )
    assert not p.rotate
    assert refs(p.share) == {(ALICE, "A3")}
    assert p.withhold == ()


def test_nothing_to_do_when_everyone_has_it() -> None:
    p = plan(shared_with={(ALICE, "A1"), (BOB, "B1")}, withheld_from={(ALICE, "A2")})
    assert p.nothing_to_do


def test_a_removed_user_forces_a_new_session_for_everyone() -> None:
    p = plan(
        present={BOT, ALICE},
        shared_with={(ALICE, "A1"), (BOB, "B1")},
        withheld_from={(ALICE, "A2")},
    )
    assert p.rotate
    assert refs(p.share) == {(ALICE, "A1")}
    assert refs(p.withhold) == {(ALICE, "A2")}  # told again: it is a new session


def test_a_device_that_lost_its_signature_forces_a_new_session() -> None:
    devices = {**DEVICES, BOB: [dev(BOB, "B1", signed=False)]}
    p = plan(devices=devices, shared_with={(ALICE, "A1"), (BOB, "B1")})
    assert p.rotate
    assert refs(p.share) == {(ALICE, "A1")}
    assert refs(p.withhold) == {(ALICE, "A2"), (BOB, "B1")}


def test_a_device_listed_under_another_user_is_ignored() -> None:
    devices = {ALICE: [dev(EVE, "E1")]}
    p = plan(devices=devices)
    assert p.share == () and p.withhold == ()


def test_withheld_content_follows_the_spec() -> None:
    content = withheld_content(
        WithheldCode.UNVERIFIED, room_id="!r:localhost", session_id="S", sender_key="K"
    )
    assert content["code"] == "m.unverified"
    assert content["algorithm"] == "m.megolm.v1.aes-sha2"
    assert {"room_id", "session_id", "sender_key", "reason"} <= content.keys()


# -- the cross-signing chain, as `/keys/query` shows it -----------------------------

DEVICE_SEED = bytes(range(32))


def _device_obj(user: str, device_id: str, seed: bytes) -> dict[str, Any]:
    ed = public_key_of(seed)
    obj: dict[str, Any] = {
        "user_id": user,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"ed25519:{device_id}": ed, f"curve25519:{device_id}": "curvekey"},
    }
    # The device's own signature uses the key ID `ed25519:<device ID>`.
    signed = sign_json(obj, user_id=user, seed=seed)
    sig = signed["signatures"][user].pop(f"ed25519:{ed}")
    signed["signatures"][user][f"ed25519:{device_id}"] = sig
    obj_out: dict[str, Any] = signed
    return obj_out


def _query(
    user: str, seeds: CrossSigningSeeds, devices: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    body = device_signing_upload_body(user, seeds)
    return {
        "device_keys": {user: devices},
        "master_keys": {user: body["master_key"]},
        "self_signing_keys": {user: body["self_signing_key"]},
        "failures": {},
    }


def test_cross_signed_and_unsigned_devices_are_told_apart() -> None:
    seeds = CrossSigningSeeds.generate()
    signed = sign_json(
        _device_obj(ALICE, "A1", DEVICE_SEED), user_id=ALICE, seed=seeds.self_signing
    )
    unsigned = _device_obj(ALICE, "A2", bytes(range(1, 33)))
    found = devices_from_query(_query(ALICE, seeds, {"A1": signed, "A2": unsigned}), ALICE)
    assert [(d.device_id, d.cross_signed) for d in found] == [("A1", True), ("A2", False)]


def test_a_self_signing_key_not_signed_by_the_master_key_vouches_for_nothing() -> None:
    seeds = CrossSigningSeeds.generate()
    other = CrossSigningSeeds.generate()
    signed = sign_json(
        _device_obj(ALICE, "A1", DEVICE_SEED), user_id=ALICE, seed=seeds.self_signing
    )
    response = _query(ALICE, seeds, {"A1": signed})
    # A master key that did not sign this self-signing key.
    response["master_keys"] = _query(ALICE, other, {})["master_keys"]
    assert [d.cross_signed for d in devices_from_query(response, ALICE)] == [False]


def test_a_device_signed_by_another_users_key_is_not_cross_signed() -> None:
    seeds = CrossSigningSeeds.generate()
    mallory = CrossSigningSeeds.generate()
    forged = sign_json(
        _device_obj(ALICE, "A1", DEVICE_SEED), user_id=ALICE, seed=mallory.self_signing
    )
    found = devices_from_query(_query(ALICE, seeds, {"A1": forged}), ALICE)
    assert [d.cross_signed for d in found] == [False]


def test_malformed_or_self_unsigned_devices_are_left_out() -> None:
    seeds = CrossSigningSeeds.generate()
    good = _device_obj(ALICE, "A1", DEVICE_SEED)
    tampered = dict(good, algorithms=["other"])
    wrong_id = _device_obj(ALICE, "A3", DEVICE_SEED)
    response = _query(
        ALICE,
        seeds,
        {"A1": good, "A2": tampered, "A4": wrong_id, "A5": "junk"},  # type: ignore[dict-item]
    )
    assert [d.device_id for d in devices_from_query(response, ALICE)] == ["A1"]


async def test_the_trust_cache_queries_once_until_invalidated() -> None:
    seeds = CrossSigningSeeds.generate()
    response = _query(ALICE, seeds, {"A1": _device_obj(ALICE, "A1", DEVICE_SEED)})
    calls: list[Any] = []
    fed: list[Any] = []

    async def query(body: Any) -> dict[str, Any]:
        calls.append(body)
        return response

    async def feed(raw: dict[str, Any]) -> None:
        fed.append(raw)

    clock = [0.0]
    trust = DeviceTrust(query, on_response=feed, ttl_seconds=60, monotonic=lambda: clock[0])
    assert [d.device_id for d in (await trust.devices([ALICE]))[ALICE]] == ["A1"]
    await trust.devices([ALICE])
    assert len(calls) == 1 and fed == [response]
    trust.invalidate([ALICE])
    await trust.devices([ALICE])
    assert len(calls) == 2
    clock[0] = 61.0  # the safety net
    await trust.devices([ALICE])
    assert len(calls) == 3
    assert calls[0]["device_keys"] == {ALICE: []}


async def test_an_unreachable_server_is_not_cached() -> None:
    async def query(body: Any) -> dict[str, Any]:
        return {"device_keys": {}, "failures": {"localhost": {"errcode": "M_UNAVAILABLE"}}}

    trust = DeviceTrust(query)
    assert await trust.devices([ALICE]) == {ALICE: []}
    assert trust.cached(ALICE) is None


async def test_a_change_noticed_while_a_query_is_in_flight_is_not_lost() -> None:
    """The answer of a `/keys/query` sent before a device-list change must not be
    cached as if it were fresh: the next ask queries again (a stale cache would hide a
    new device from the bot until the cache expires)."""
    import asyncio

    started = asyncio.Event()
    release = asyncio.Event()
    calls: list[Any] = []

    async def query(body: Any) -> dict[str, Any]:
        calls.append(body)
        if len(calls) == 1:
            started.set()
            await release.wait()
        return {"device_keys": {}, "failures": {}}

    trust = DeviceTrust(query, ttl_seconds=60)
    first = asyncio.create_task(trust.devices([ALICE]))
    await started.wait()
    trust.invalidate([ALICE])  # the sync said ALICE's devices changed meanwhile
    release.set()
    assert await first == {ALICE: []}
    assert trust.cached(ALICE) is None
    await trust.devices([ALICE])
    assert len(calls) == 2
    assert trust.cached(ALICE) == []


# -------------------------------------------------------------- catching up


def catch_up(**overrides: Any) -> Any:
    from bot.domain.key_sharing import KeyToCatchUp, plan_catch_up

    args: dict[str, Any] = {
        "user_id": ALICE,
        "devices": DEVICES[ALICE],
        "keys": [KeyToCatchUp("!r1", "S1"), KeyToCatchUp("!r1", "S2"), KeyToCatchUp("!r2", "S3")],
        "authorised_rooms": {"!r1", "!r2"},
        "present_rooms": {"!r1", "!r2"},
        "delivered": set(),
        "told": set(),
        "require_cross_signed": True,
        "own": OWN,
    }
    args.update(overrides)
    return plan_catch_up(**args)


def test_catch_up_gives_signed_devices_every_missing_key() -> None:
    result = catch_up(delivered={("S1", "A1")})
    assert [(d.device_id, k.session_id) for d, k in result.send] == [("A1", "S2"), ("A1", "S3")]
    # The unsigned device is told, per session, that it will not get the key.
    assert [(w.device_id, w.code, k.session_id) for w, k in result.withhold] == [
        ("A2", WithheldCode.UNVERIFIED, "S1"),
        ("A2", WithheldCode.UNVERIFIED, "S2"),
        ("A2", WithheldCode.UNVERIFIED, "S3"),
    ]
    again = catch_up(
        delivered={("S1", "A1"), ("S2", "A1"), ("S3", "A1")},
        told={("S1", "A2"), ("S2", "A2"), ("S3", "A2")},
    )
    assert again.nothing_to_do


def test_catch_up_only_in_rooms_where_the_user_is_authorised_and_present() -> None:
    not_authorised = catch_up(authorised_rooms={"!r2"})
    assert {k.session_id for _, k in not_authorised.send} == {"S3"}
    gone = catch_up(present_rooms={"!r1"})
    assert {k.session_id for _, k in gone.send} == {"S1", "S2"}
    assert catch_up(authorised_rooms=set()).nothing_to_do
    # Another user's devices, or the bot's own, never get anything through this user.
    assert catch_up(devices=DEVICES[EVE]).nothing_to_do
    assert catch_up(user_id=BOT, devices=DEVICES[BOT]).nothing_to_do


def test_catch_up_without_cross_signing_required_shares_with_every_device() -> None:
    result = catch_up(require_cross_signed=False, keys=catch_up().send[0][1:])
    assert sorted(d.device_id for d, _ in result.send) == ["A1", "A2"]
    assert result.withhold == ()


# -------------------------------------------------------------- pinned identities


class MemoryPins:
    """The `IdentityCheck` seam in memory: first key seen is kept (the probe of M2)."""

    def __init__(self) -> None:
        self.pinned: dict[str, str] = {}

    async def check(self, user_id: str, master_key: str) -> bool:
        return self.pinned.setdefault(user_id, master_key) == master_key


async def test_a_second_master_key_for_the_same_user_vouches_for_nothing() -> None:
    first, second = CrossSigningSeeds.generate(), CrossSigningSeeds.generate()
    answers = [
        _query(ALICE, first, {"A1": sign_json(
            _device_obj(ALICE, "A1", DEVICE_SEED), user_id=ALICE, seed=first.self_signing
        )}),
        _query(ALICE, second, {"A9": sign_json(
            _device_obj(ALICE, "A9", bytes(range(2, 34))), user_id=ALICE, seed=second.self_signing
        )}),
    ]  # fmt: skip

    async def query(body: Any) -> dict[str, Any]:
        return answers.pop(0)

    pins = MemoryPins()
    trust = DeviceTrust(query, pins=pins)
    assert [(d.device_id, d.cross_signed) for d in (await trust.devices([ALICE]))[ALICE]] == [
        ("A1", True)
    ]
    trust.invalidate([ALICE])
    # Without the pin (the probe of security-review M2) A9 counted as cross-signed.
    assert [(d.device_id, d.cross_signed) for d in (await trust.devices([ALICE]))[ALICE]] == [
        ("A9", False)
    ]
    assert pins.pinned == {ALICE: public_key_of(first.master)}


def test_withheld_reasons_and_the_unverified_session_notice_are_french() -> None:
    from bot.domain.key_sharing import WITHHELD_REASONS, unverified_session_notice

    assert WITHHELD_REASONS[WithheldCode.UNVERIFIED].startswith("Cette session n'est pas vérifiée")
    assert "autorisé(e)" in WITHHELD_REASONS[WithheldCode.UNAUTHORISED]
    assert "canal chiffré" in WITHHELD_REASONS[WithheldCode.NO_OLM]
    body, html = unverified_session_notice("@marie:serveur.fr", "ABC<b>DEF")
    assert "votre session ABC<b>DEF ne peut pas lire" in body
    assert "Pourquoi" in body and "Que faire" in body and "clé de récupération" in body
    assert "ABC&lt;b&gt;DEF" in html and "<b>DEF" not in html
    assert 'href="https://matrix.to/#/@marie:serveur.fr"' in html
