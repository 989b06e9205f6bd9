"""The `[email]` settings section, DKIM signing of outgoing mail and DKIM checks of replies."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.services.clock import SystemClock
from bot.settings import Settings, SettingsError
from bridge.delivery import EmailDelivery
from bridge.inbound import dkim_aligned_pass


def _secrets(**extra: str) -> dict[str, str]:
    return {
        "APLUS_BOT_PASSWORD": "mot-de-passe",
        "APLUS_PICKLE_KEY": "x" * 24,
        "APLUS_DATA_KEY": base64.b64encode(os.urandom(32)).decode(),
        **extra,
    }


def _settings(tmp_path: Path, email: dict[str, Any] | None, **secrets: str) -> Settings:
    return Settings.for_dev(
        tmp_path, "http://127.0.0.1:8008", "localhost", "@aplus:localhost", _secrets(**secrets),
        email=email,
    )  # fmt: skip


def _key() -> tuple[str, bytes]:
    """A private key (PEM) and its DNS TXT record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def _dns(records: dict[bytes, bytes]) -> Any:
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    return lookup


def test_email_is_off_unless_asked_and_dev_defaults_are_complete(tmp_path: Path) -> None:
    assert not _settings(tmp_path, None).email.enabled
    email = _settings(tmp_path, {}).email
    assert email.enabled and email.listen_port == 0
    assert email.trusted_authserv_ids == ("aplus-dev",)
    assert email.delivery_lifetime_seconds == 5 * 86400
    assert email.from_domain == "aplus.test"


def test_the_listener_defaults_fit_a_reply_and_a_local_mta(tmp_path: Path) -> None:
    email = _settings(tmp_path, {}).email
    assert email.max_message_bytes == 15 * 1024 * 1024
    # One attachment at the inbound limit, base64 with line breaks, fits with room to spare.
    assert email.max_inbound_attachment_bytes * 78 / 57 < email.max_message_bytes - 1024 * 1024
    assert email.listen_allowed_peers == ("127.0.0.0/8", "::1")
    assert email.listen_max_connections == 20 and email.listen_idle_timeout_seconds == 60
    peers = _settings(tmp_path, {"listen_allowed_peers": ["10.0.0.5", "2001:db8::/32"]}).email
    assert peers.listen_allowed_peers == ("10.0.0.5", "2001:db8::/32")
    with pytest.raises(SettingsError) as caught:
        _settings(tmp_path, {"listen_allowed_peers": ["mx.caf.fr"], "listen_max_connections": 0})
    problems = dict(caught.value.problems)
    assert set(problems) == {"email.listen_allowed_peers", "email.listen_max_connections"}
    assert "adresse ou réseau IP invalide : mx.caf.fr" in problems["email.listen_allowed_peers"]


def test_email_problems_are_all_reported(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        _settings(
            tmp_path,
            {
                "from_address": "pas une adresse",
                "reply_domain": "https://x",
                "relay_security": "ssl",
                "relay_username": "aplus",
                "dkim_domain": "aplus.test",
                "loop_marker": "a b",
                "oops": 1,
            },
        )
    keys = {key for key, _ in caught.value.problems}
    assert keys == {
        "email.from_address",
        "email.reply_domain",
        "email.relay_security",
        "email.relay_password",
        "email.dkim_domain",
        "email.loop_marker",
        "email.oops",
    }


def test_outgoing_mail_is_dkim_signed_when_configured(tmp_path: Path) -> None:
    pem, record = _key()
    settings = _settings(
        tmp_path,
        {"dkim_domain": "aplus.test", "dkim_selector": "s2026"},
        APLUS_DKIM_PRIVATE_KEY=pem,
    )
    delivery = EmailDelivery(
        store=None,  # type: ignore[arg-type]
        settings=settings.email,
        clock=SystemClock(),
        wake_matrix=lambda: None,
    )
    message = (
        b"From: Administration+ <ne-pas-repondre@aplus.test>\r\nTo: a@caf.example.test\r\n"
        b"Subject: [A+] Demande A-2026-000001\r\nMessage-ID: <ev.1@aplus.test>\r\n\r\nBonjour\r\n"
    )
    signed = delivery.sign(message)
    assert signed.startswith(b"DKIM-Signature:") and signed.endswith(message)
    dns = _dns({b"s2026._domainkey.aplus.test.": record})
    assert dkim.verify(signed, dnsfunc=dns)
    assert not dkim.verify(signed.replace(b"Bonjour", b"Bonsoir"), dnsfunc=dns)
    unsigned = _settings(tmp_path, {}).email
    assert (
        EmailDelivery(
            store=None,  # type: ignore[arg-type]
            settings=unsigned,
            clock=SystemClock(),
            wake_matrix=lambda: None,
        ).sign(message)
        == message
    )


def test_inbound_dkim_must_verify_and_align_with_from() -> None:
    pem, record = _key()
    dns = _dns({b"sel._domainkey.caf95.example.test.": record})

    def signed(from_domain: str) -> bytes:
        msg = (
            f"From: Sophie <sophie@{from_domain}>\r\nTo: reply+x@reponse.aplus.test\r\n"
            "Subject: Re\r\nMessage-ID: <r.1@caf95.example.test>\r\n\r\nMerci\r\n"
        ).encode()
        sig: bytes = dkim.sign(msg, b"sel", b"caf95.example.test", pem.encode())
        return sig + msg

    assert dkim_aligned_pass(signed("caf95.example.test"), "caf95.example.test", dns)
    assert dkim_aligned_pass(signed("bureau.caf95.example.test"), "bureau.caf95.example.test", dns)
    assert not dkim_aligned_pass(signed("pirate.example"), "pirate.example", dns)
    tampered = signed("caf95.example.test").replace(b"Merci", b"Payez")
    assert not dkim_aligned_pass(tampered, "caf95.example.test", dns)
    unsigned = b"From: sophie@caf95.example.test\r\n\r\nMerci\r\n"
    assert not dkim_aligned_pass(unsigned, "caf95.example.test", dns)
