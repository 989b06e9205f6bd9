"""Reply tokens, reply addresses and the strict sender check."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.addressing import (
    TOKEN_LENGTH,
    check_sender,
    digest_matches,
    extract_token,
    is_valid_token,
    new_token,
    normalise_address,
    parse_single_mailbox,
    reply_address,
    token_digest,
)

DOMAIN = "reponse.aplus.example.fr"
BOUND = "marie.durand@caf.fr"


def test_new_token_shape_and_entropy() -> None:
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert len(token) == TOKEN_LENGTH  # 32 base32 chars = 160 bits
        assert set(token) <= set(string.ascii_lowercase + "234567")
        assert token == token.lower()
        assert is_valid_token(token)


def test_reply_address_round_trip_and_case_folding() -> None:
    token = new_token()
    address = reply_address(token, "Reponse.Aplus.Example.FR")
    assert address == f"reply+{token}@{DOMAIN}"
    assert extract_token(address, DOMAIN) == token
    # An MTA that upper-cases the whole address must not break replies.
    assert extract_token(address.upper(), DOMAIN.upper()) == token


@pytest.mark.parametrize("token", ["", "abc", "A" * 32 + "!", "1" * 32, "a" * 33])
def test_reply_address_refuses_bad_tokens(token: str) -> None:
    with pytest.raises(ValueError):
        reply_address(token, DOMAIN)


@pytest.mark.parametrize("domain", ["", "localhost", "exa mple.fr", "é.fr", "a..fr", "-a.fr"])
def test_reply_address_refuses_bad_domains(domain: str) -> None:
    with pytest.raises(ValueError):
        reply_address(new_token(), domain)


@pytest.mark.parametrize(
    "rcpt",
    [
        "reply+{t}@other.example.fr",
        "reply+{t}@{d}.",
        "reply+{t}@sub.{d}",
        "reply+{t}@{d}.evil.fr",
        "<reply+{t}@{d}>",
        " reply+{t}@{d}",
        "reply+{t}+x@{d}",
        "reply-{t}@{d}",
        "replies+{t}@{d}",
        "{t}@{d}",
        "reply+{t}@{d}@{d}",
        "reply+{t}1@{d}",
        "reply+@{d}",
        '"reply+{t}"@{d}',
        "reply+{t}\r\n@{d}",
        "reply+{t}\u0130@{d}",
    ],
)
def test_extract_token_is_strict(rcpt: str) -> None:
    token = new_token()
    assert extract_token(rcpt.format(t=token, d=DOMAIN), DOMAIN) is None


def test_extract_token_with_invalid_configured_domain_is_none() -> None:
    assert extract_token(f"reply+{new_token()}@x", "x") is None


def test_digest_is_stable_hex_and_constant_time_comparable() -> None:
    token = new_token()
    digest = token_digest(token)
    assert len(digest) == 64 and set(digest) <= set("0123456789abcdef")
    assert token not in digest
    assert digest == token_digest(token.upper())  # MTAs may case-fold
    assert digest_matches(token, digest)
    assert digest_matches(token, digest.upper())
    assert not digest_matches(new_token(), digest)
    assert not digest_matches(token, "")


@pytest.mark.parametrize(
    "from_value",
    [
        "marie.durand@caf.fr",
        "MARIE.Durand@CAF.FR",
        "Marie Durand <marie.durand@caf.fr>",
        '"Durand, Marie" <marie.durand@caf.fr>',
        '"marie.durand@caf.fr" <marie.durand@caf.fr>',
        "Marie Durand (CAF 95) <marie.durand@caf.fr>",
        "=?utf-8?q?Marie_Dur=C3=A9?= <marie.durand@caf.fr>",
        "=?iso-8859-1?q?H=E9l=E8ne?= <Marie.Durand@caf.fr>",
        "Hélène =?utf-8?q?Dur=C3=A9?= <marie.durand@caf.fr>",
        "Marie Durand\r\n <marie.durand@caf.fr>",
        "  <marie.durand@caf.fr>  ",
    ],
)
def test_check_sender_accepts_the_bound_agent(from_value: str) -> None:
    assert check_sender(BOUND, from_value)


@pytest.mark.parametrize(
    "from_value",
    [
        "",
        "attacker@evil.fr",
        "marie.durand@caf.fr.evil.fr",
        "marie.durand@caf.fr, attacker@evil.fr",
        "attacker@evil.fr, marie.durand@caf.fr",
        "marie.durand@caf.fr <attacker@evil.fr>",
        '"marie.durand@caf.fr" <attacker@evil.fr>',
        '"boss@caf.fr" <marie.durand@caf.fr>',
        "<marie.durand@caf.fr> attacker@evil.fr",
        "<marie.durand@caf.fr><attacker@evil.fr>",
        "Team: marie.durand@caf.fr;",
        "marie.durand@caf.fr (attacker@evil.fr)",
        '"marie.durand@caf.fr"@evil.fr',
        "marie.durand@caf.fr@evil.fr",
        "=?utf-8?q?marie.durand=40caf.fr?= <attacker@evil.fr>",
        "=?utf-8?q?marie.durand=40caf.fr?=@evil.fr",
        "=?utf-8?b?bWFyaWUuZHVyYW5kQGNhZi5mcg==?=",
        "=?utf-8?q?Marie=0D=0ABcc:_x@evil.fr?= <marie.durand@caf.fr>",
        "=?utf-8?q?Marie=3Cx=3E?= <marie.durand@caf.fr>",
        "=?utf-8?q?Marie <marie.durand@caf.fr>",
        "=?unknown-8bit?q?Marie=E9?= <marie.durand@caf.fr>",
        "Marie\r\nBcc: x@evil.fr <marie.durand@caf.fr>",
        "Marie\x00 <marie.durand@caf.fr>",
        "Marie\u202e <marie.durand@caf.fr>",
        "Marie <marie.durand@[192.0.2.1]>",
        "Marie <marie.durand@caf.fr",
        'Marie <"m d"@caf.fr>',
        "Marie <marie.durand@caf.fr> trailing",
        "Marie <marié@caf.fr>",
    ],
)
def test_check_sender_refuses_tricks(from_value: str) -> None:
    assert not check_sender(BOUND, from_value)


def test_check_sender_with_invalid_bound_address_refuses() -> None:
    assert not check_sender("not an address", "not an address")
    assert not check_sender("", "")


def test_parse_single_mailbox_returns_decoded_name() -> None:
    assert parse_single_mailbox("=?utf-8?q?Marie_Dur=C3=A9?= <M@Caf.fr>") == (
        "Marie Duré",
        "m@caf.fr",
    )


def test_normalise_address() -> None:
    assert normalise_address("A.B+tag@Caf.FR") == "a.b+tag@caf.fr"
    assert normalise_address("a@localhost") is None
    assert normalise_address("a" * 65 + "@caf.fr") is None


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20))
def test_round_trip_property(label: str) -> None:
    domain = f"x{label}x.fr"
    token = new_token()
    assert extract_token(reply_address(token, domain), domain) == token


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.text(max_size=100))
def test_extract_token_and_check_sender_never_raise(rcpt: str, from_value: str) -> None:
    result = extract_token(rcpt, DOMAIN)
    assert result is None or (is_valid_token(result) and rcpt.lower().endswith("@" + DOMAIN))
    assert check_sender(BOUND, from_value) in (True, False)
    parsed = parse_single_mailbox(from_value)
    if parsed is not None:
        assert "\r" not in parsed[0] and "\n" not in parsed[0]
