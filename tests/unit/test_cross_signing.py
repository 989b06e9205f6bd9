"""The pure part of the bot's cross-signing: encoding, signatures, request bodies, decisions."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import nio
import pytest
import signedjson.key
import signedjson.sign
from aiohttp import test_utils, web
from nio.api import Api
from nio.store import SqliteMemoryStore

from bot.matrix.cross_signing import (
    SEED_SECRET_NAME,
    CrossSigningConflict,
    CrossSigningError,
    CrossSigningSeeds,
    Plan,
    ServerIdentity,
    b64_decode,
    b64_encode,
    canonical_json,
    device_signing_upload_body,
    ensure_cross_signing,
    key_id,
    password_auth,
    plan_repair,
    public_key_of,
    sign_json,
    signature_upload_body,
    signing_payload,
    verify_signature,
)

BOT = "@aplus:localhost"
# The signing example of the Matrix specification (appendix "Signing JSON").
SPEC_SEED = b64_decode("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
SEEDS = CrossSigningSeeds(bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96)))


# --- canonical JSON ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({}, "{}"),
        ({"b": "2", "a": "1"}, '{"a":"1","b":"2"}'),
        (
            {"auth": {"success": True, "mxid": "@j:x", "profile": {"b": [3, {"z": 1, "y": None}]}}},
            '{"auth":{"mxid":"@j:x","profile":{"b":[3,{"y":null,"z":1}]},"success":true}}',
        ),
        ({"a": "日本語"}, '{"a":"日本語"}'),
        ({"本": 2, "日": 1}, '{"日":1,"本":2}'),
        ({"a": "\u65e5"}, '{"a":"日"}'),
        ({"a": "démarche « urgente » 🙂"}, '{"a":"démarche « urgente » 🙂"}'),
        ({"a": 'quote " back \\ nl \n'}, '{"a":"quote \\" back \\\\ nl \\n"}'),
        ({"a": -(2**53) + 1, "b": [2**53 - 1]}, '{"a":-9007199254740991,"b":[9007199254740991]}'),
    ],
)
def test_canonical_json(value: object, expected: str) -> None:
    assert canonical_json(value) == expected.encode("utf-8")


def test_canonical_json_matches_nio() -> None:
    value = {"z": {"é": [1, "ü"], "a": None}, "signatures": {"x": {}}, "A": True}
    assert canonical_json(value).decode("utf-8") == Api.to_canonical_json(value)


@pytest.mark.parametrize("value", [{"a": 1.5}, {"a": [{"b": 0.0}]}])
def test_canonical_json_refuses_floats(value: object) -> None:
    with pytest.raises(ValueError, match="floating-point"):
        canonical_json(value)


def test_signing_payload_drops_only_top_level_signatures_and_unsigned() -> None:
    obj = {
        "b": {"signatures": "kept", "unsigned": "kept"},
        "signatures": {"@u:x": {"ed25519:A": "sig"}},
        "unsigned": {"age": 3},
        "a": 1,
    }
    assert signing_payload(obj) == b'{"a":1,"b":{"signatures":"kept","unsigned":"kept"}}'


# --- base64, key IDs ---------------------------------------------------------------------


def test_base64_is_standard_and_unpadded() -> None:
    data = b"\xfb\xff\xbf"  # '+' and '/' in standard base64, '-' and '_' in URL-safe
    assert b64_encode(data) == "+/+/"
    assert b64_encode(b"a") == "YQ"
    assert b64_decode("YQ") == b"a"
    for size in range(0, 40):
        assert b64_decode(b64_encode(bytes(range(size)))) == bytes(range(size))


def test_key_id_is_ed25519_and_public_key() -> None:
    assert key_id("AbC+/9") == "ed25519:AbC+/9"
    assert public_key_of(SPEC_SEED) == "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"


def test_seed_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        public_key_of(b"short")


# --- signatures --------------------------------------------------------------------------


def test_signatures_match_the_specification_examples() -> None:
    kid = key_id(public_key_of(SPEC_SEED))
    assert sign_json({}, user_id="domain", seed=SPEC_SEED)["signatures"]["domain"][kid] == (
        "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
    )
    signed = sign_json({"one": 1, "two": "Two"}, user_id="domain", seed=SPEC_SEED)
    assert signed["signatures"]["domain"][kid] == (
        "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
    )


def test_sign_keeps_existing_signatures_drops_unsigned_and_leaves_input_alone() -> None:
    original: dict[str, Any] = {
        "device_id": "DEV",
        "signatures": {BOT: {"ed25519:DEV": "devsig"}, "@other:x": {"ed25519:K": "o"}},
        "unsigned": {"device_display_name": "robot"},
    }
    signed = sign_json(original, user_id=BOT, seed=SEEDS.self_signing)
    assert "unsigned" not in signed
    assert signed["signatures"]["@other:x"] == {"ed25519:K": "o"}
    assert signed["signatures"][BOT]["ed25519:DEV"] == "devsig"
    assert set(signed["signatures"][BOT]) == {"ed25519:DEV", key_id(SEEDS.self_signing_public)}
    assert original["signatures"][BOT] == {"ed25519:DEV": "devsig"}
    assert "unsigned" in original


def test_verify_round_trip_and_rejections() -> None:
    pub = SEEDS.master_public
    signed = sign_json({"content": "démarche", "n": 1}, user_id=BOT, seed=SEEDS.master)
    assert verify_signature(signed, user_id=BOT, public_key=pub)
    # `unsigned` is not covered by the signature.
    assert verify_signature({**signed, "unsigned": {"x": 1}}, user_id=BOT, public_key=pub)
    assert not verify_signature({**signed, "n": 2}, user_id=BOT, public_key=pub)
    assert not verify_signature(signed, user_id="@someone:else", public_key=pub)
    assert not verify_signature(signed, user_id=BOT, public_key=SEEDS.self_signing_public)
    garbage = {**signed, "signatures": {BOT: {key_id(pub): "not base64!"}}}
    assert not verify_signature(garbage, user_id=BOT, public_key=pub)


def test_signatures_verify_with_synapse_signedjson() -> None:
    pub = SEEDS.master_public
    signed = sign_json({"usage": ["self_signing"], "x": "日本"}, user_id=BOT, seed=SEEDS.master)
    verify_key = signedjson.key.decode_verify_key_bytes(key_id(pub), b64_decode(pub))
    signedjson.sign.verify_signed_json(signed, BOT, verify_key)  # raises when invalid


# --- seeds -------------------------------------------------------------------------------


def test_seeds_serialise_round_trip_and_stay_out_of_repr() -> None:
    assert CrossSigningSeeds.from_bytes(SEEDS.to_bytes()) == SEEDS
    assert len(SEEDS.to_bytes()) == 97
    assert SEEDS.master.hex() not in repr(SEEDS)
    assert repr(SEEDS) == "CrossSigningSeeds()"


def test_generated_seeds_are_distinct() -> None:
    a, b = CrossSigningSeeds.generate(), CrossSigningSeeds.generate()
    assert a != b
    assert len({a.master, a.self_signing, a.user_signing}) == 3


@pytest.mark.parametrize("data", [b"", b"\x02" + bytes(96), b"\x01" + bytes(95)])
def test_seeds_refuse_unknown_formats(data: bytes) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        CrossSigningSeeds.from_bytes(data)


# --- request bodies ----------------------------------------------------------------------


def test_device_signing_upload_body_shape() -> None:
    body = device_signing_upload_body(BOT, SEEDS)
    m, s, u = SEEDS.master_public, SEEDS.self_signing_public, SEEDS.user_signing_public
    ssk_sig = body["self_signing_key"]["signatures"][BOT][key_id(m)]
    usk_sig = body["user_signing_key"]["signatures"][BOT][key_id(m)]
    assert body == {
        "master_key": {"user_id": BOT, "usage": ["master"], "keys": {key_id(m): m}},
        "self_signing_key": {
            "user_id": BOT,
            "usage": ["self_signing"],
            "keys": {key_id(s): s},
            "signatures": {BOT: {key_id(m): ssk_sig}},
        },
        "user_signing_key": {
            "user_id": BOT,
            "usage": ["user_signing"],
            "keys": {key_id(u): u},
            "signatures": {BOT: {key_id(m): usk_sig}},
        },
    }
    assert verify_signature(body["self_signing_key"], user_id=BOT, public_key=m)
    assert verify_signature(body["user_signing_key"], user_id=BOT, public_key=m)


def _device(device_id: str = "BOTDEVICE") -> dict[str, object]:
    return {
        "user_id": BOT,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"curve25519:{device_id}": "curve", f"ed25519:{device_id}": "edkey"},
        "signatures": {BOT: {f"ed25519:{device_id}": "selfsig"}},
        "unsigned": {"device_display_name": "Administration+"},
    }


def test_signature_upload_body_shape() -> None:
    body = signature_upload_body(BOT, _device(), SEEDS)
    assert list(body) == [BOT]
    assert list(body[BOT]) == ["BOTDEVICE"]
    signed = body[BOT]["BOTDEVICE"]
    expected = {k: v for k, v in _device().items() if k not in ("unsigned", "signatures")}
    assert {k: v for k, v in signed.items() if k != "signatures"} == expected
    assert set(signed["signatures"][BOT]) == {
        "ed25519:BOTDEVICE",
        key_id(SEEDS.self_signing_public),
    }
    assert verify_signature(signed, user_id=BOT, public_key=SEEDS.self_signing_public)


def test_password_auth_shape() -> None:
    assert password_auth(BOT, "pw", "sess") == {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": BOT},
        "password": "pw",
        "session": "sess",
    }
    assert "session" not in password_auth(BOT, "pw", None)


# --- reading the server and deciding -----------------------------------------------------


def _query(seeds: CrossSigningSeeds | None, device: dict[str, object] | None) -> dict[str, object]:
    response: dict[str, object] = {
        "device_keys": {BOT: {"BOTDEVICE": device} if device else {}},
        "failures": {},
    }
    if seeds is not None:
        body = device_signing_upload_body(BOT, seeds)
        response["master_keys"] = {BOT: body["master_key"]}
        response["self_signing_keys"] = {BOT: body["self_signing_key"]}
        response["user_signing_keys"] = {BOT: body["user_signing_key"]}
    return response


def test_server_identity_from_query() -> None:
    identity = ServerIdentity.from_query(_query(SEEDS, _device()), BOT, "BOTDEVICE")
    assert identity.master_key == SEEDS.master_public
    assert identity.self_signing_key == SEEDS.self_signing_public
    assert identity.user_signing_key == SEEDS.user_signing_public
    assert identity.device_keys == _device()
    empty = ServerIdentity.from_query({}, BOT, "BOTDEVICE")
    assert empty == ServerIdentity(None, None, None, None)
    assert not empty.device_signed(BOT)


def test_plan_on_an_empty_server_uploads_and_signs() -> None:
    identity = ServerIdentity.from_query(_query(None, _device()), BOT, "BOTDEVICE")
    assert plan_repair(SEEDS, identity, BOT) == Plan(upload_keys=True, sign_device=True)


def test_plan_with_our_keys_signs_only_an_unsigned_device() -> None:
    unsigned = ServerIdentity.from_query(_query(SEEDS, _device()), BOT, "BOTDEVICE")
    assert not unsigned.device_signed(BOT)
    assert plan_repair(SEEDS, unsigned, BOT) == Plan(upload_keys=False, sign_device=True)

    signed_device = signature_upload_body(BOT, _device(), SEEDS)[BOT]["BOTDEVICE"]
    signed = ServerIdentity.from_query(_query(SEEDS, signed_device), BOT, "BOTDEVICE")
    assert signed.device_signed(BOT)
    assert plan_repair(SEEDS, signed, BOT) == Plan(upload_keys=False, sign_device=False)


def test_plan_does_not_trust_a_signature_by_another_key() -> None:
    other = CrossSigningSeeds.generate()
    forged = signature_upload_body(BOT, _device(), other)[BOT]["BOTDEVICE"]
    # Pretend the signature is under our self-signing key ID: it must not verify.
    sig = forged["signatures"][BOT].pop(key_id(other.self_signing_public))
    forged["signatures"][BOT][key_id(SEEDS.self_signing_public)] = sig
    identity = ServerIdentity.from_query(_query(SEEDS, forged), BOT, "BOTDEVICE")
    assert plan_repair(SEEDS, identity, BOT) == Plan(upload_keys=False, sign_device=True)


def test_plan_refuses_to_replace_another_master_key() -> None:
    other = CrossSigningSeeds.generate()
    identity = ServerIdentity.from_query(_query(other, _device()), BOT, "BOTDEVICE")
    with pytest.raises(CrossSigningConflict, match="ne correspond pas") as excinfo:
        plan_repair(SEEDS, identity, BOT)
    assert other.master_public in str(excinfo.value)
    assert SEEDS.master_public in str(excinfo.value)


def test_plan_refuses_a_different_self_signing_key_under_our_master() -> None:
    mixed = CrossSigningSeeds(SEEDS.master, bytes(32), SEEDS.user_signing)
    identity = ServerIdentity.from_query(_query(mixed, _device()), BOT, "BOTDEVICE")
    with pytest.raises(CrossSigningConflict):
        plan_repair(SEEDS, identity, BOT)


# --- the I/O part against a recording fake homeserver -------------------------------------
# Synapse never asks for interactive auth on a first upload and never rejects our own
# signatures, so these two paths are exercised against a fake at the HTTP seam.


class FakeHomeserver:
    """Just the three key endpoints; records every request body."""

    def __init__(self, *, require_auth: bool = False, reject_signatures: bool = False) -> None:
        self.require_auth = require_auth
        self.reject_signatures = reject_signatures
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.cross_signing: dict[str, Any] = {}
        self.device: dict[str, Any] = {}
        app = web.Application()
        app.router.add_post("/_matrix/client/v3/keys/query", self._query)
        app.router.add_post("/_matrix/client/v3/keys/device_signing/upload", self._upload)
        app.router.add_post("/_matrix/client/v3/keys/signatures/upload", self._signatures)
        self.server = test_utils.TestServer(app, host="127.0.0.1")

    async def _record(self, request: web.Request) -> dict[str, Any]:
        body: dict[str, Any] = await request.json()
        self.requests.append((request.path.rsplit("/keys/", 1)[1], body))
        return body

    async def _query(self, request: web.Request) -> web.Response:
        await self._record(request)
        response: dict[str, Any] = {"device_keys": {BOT: {self.device["device_id"]: self.device}}}
        for field_name, key in self.cross_signing.items():
            response[field_name + "s"] = {BOT: key}
        return web.json_response(response)

    async def _upload(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if self.require_auth and "auth" not in body:
            flows = [{"stages": ["m.login.password"]}]
            return web.json_response({"flows": flows, "params": {}, "session": "S1"}, status=401)
        self.cross_signing = {k: v for k, v in body.items() if k != "auth"}
        return web.json_response({})

    async def _signatures(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if self.reject_signatures:
            failure = {"errcode": "M_INVALID_SIGNATURE", "error": "Invalid signature"}
            return web.json_response({"failures": {BOT: {self.device["device_id"]: failure}}})
        self.device = body[BOT][self.device["device_id"]]
        return web.json_response({"failures": {}})


@pytest.fixture
async def fake() -> AsyncIterator[FakeHomeserver]:
    server = FakeHomeserver()
    await server.server.start_server()
    yield server
    await server.server.close()


@pytest.fixture
async def bot(fake: FakeHomeserver) -> AsyncIterator[nio.AsyncClient]:
    config = nio.AsyncClientConfig(store=SqliteMemoryStore, store_sync_tokens=False)
    client = nio.AsyncClient(str(fake.server.make_url("")).rstrip("/"), BOT, config=config)
    client.restore_login(BOT, "BOTDEVICE", "token")  # a local vodozemac account, no network
    assert client.olm is not None
    ed25519 = client.olm.account.identity_keys["ed25519"]
    fake.device = {**_device(), "keys": {"ed25519:BOTDEVICE": ed25519}}
    yield client
    await client.close()


class Secrets:
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    async def get_secret(self, key: str) -> bytes | None:
        return self.values.get(key)

    async def set_secret(self, key: str, value: bytes) -> None:
        self.values[key] = value


async def test_interactive_auth_is_answered_with_the_password(
    fake: FakeHomeserver, bot: nio.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    fake.require_auth = True
    secrets = Secrets()
    caplog.set_level(logging.DEBUG)
    status = await ensure_cross_signing(bot, secrets, password="secret-pw-123")
    assert status.action == "created"
    uploads = [body for path, body in fake.requests if path == "device_signing/upload"]
    assert len(uploads) == 2
    assert "auth" not in uploads[0]
    assert uploads[1]["auth"] == password_auth(BOT, "secret-pw-123", "S1")
    assert [path for path, _ in fake.requests][-1] == "signatures/upload"
    seeds = CrossSigningSeeds.from_bytes(secrets.values[SEED_SECRET_NAME])
    assert verify_signature(fake.device, user_id=BOT, public_key=seeds.self_signing_public)
    # Neither the password nor any private key reaches the logs.
    assert "secret-pw-123" not in caplog.text
    for seed in (seeds.master, seeds.self_signing, seeds.user_signing):
        assert b64_encode(seed) not in caplog.text
        assert seed.hex() not in caplog.text


async def test_interactive_auth_without_password_is_a_clear_error(
    fake: FakeHomeserver, bot: nio.AsyncClient
) -> None:
    fake.require_auth = True
    with pytest.raises(CrossSigningError, match="exige une authentification"):
        await ensure_cross_signing(bot, Secrets(), password=None)
    assert not [path for path, _ in fake.requests if path == "signatures/upload"]


async def test_rejected_signature_in_a_200_answer_is_an_error(
    fake: FakeHomeserver, bot: nio.AsyncClient
) -> None:
    fake.reject_signatures = True
    with pytest.raises(CrossSigningError, match="M_INVALID_SIGNATURE"):
        await ensure_cross_signing(bot, Secrets(), password="pw")


async def test_a_device_key_that_is_not_ours_is_never_signed(
    fake: FakeHomeserver, bot: nio.AsyncClient
) -> None:
    fake.device["keys"] = {"ed25519:BOTDEVICE": "someone-else"}
    secrets = Secrets()
    with pytest.raises(CrossSigningError, match="ne sont pas celles du robot"):
        await ensure_cross_signing(bot, secrets, password="pw")
    assert [path for path, _ in fake.requests] == ["query"]
    assert secrets.values == {}
