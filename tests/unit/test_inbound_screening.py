"""The cheap read of a mail (`outline`) and the listener's rules before any parse."""

from __future__ import annotations

from bridge.inbound.mail import Kind
from bridge.inbound.mime import MAX_PARTS
from bridge.inbound.outline import MAX_BODY_HEADER_LINES, MAX_HEADER_LINES, MAX_LINES, outline
from bridge.inbound.screening import (
    AFTER_AUTHENTICATION,
    BEFORE_AUTHENTICATION,
    Context,
    Step,
    screen,
)

TRUSTED = ("mx.aplus.test",)
AGENT = "sophie@caf95.example.test"


def view(raw: bytes, mail_from: str | None = AGENT):  # type: ignore[no-untyped-def]
    return outline(raw, mail_from=mail_from, trusted_authserv_ids=TRUSTED)


def mail(headers: str, body: str = "Bonjour.\r\n") -> bytes:
    return (headers + "\r\n" + body).encode()


def test_parts_are_counted_without_parsing_as_the_parser_would_build_them() -> None:
    raw = mail(
        f"From: {AGENT}\r\nContent-Type: multipart/mixed; boundary=outer\r\n",
        "préambule\r\n--outer\r\nContent-Type: text/plain\r\n\r\ntexte\r\n-- \r\nsignature\r\n"
        '--outer\r\nContent-Type: multipart/alternative; boundary="in ner"\r\n\r\n'
        "--in ner\r\n\r\na\r\n--in ner\r\nContent-Type: text/html\r\n\r\n<p>a</p>\r\n"
        "--in ner--\r\n--outer--\r\n--pas-une-limite\r\n",
    )
    assert view(raw).parts == 4 and view(raw).too_complex is None
    flat = mail(
        f"From: {AGENT}\r\nContent-Type: multipart/mixed; boundary=b\r\n",
        "--b\r\n\r\nx\r\n" * (MAX_PARTS + 1) + "--b--\r\n",
    )
    assert view(flat).too_complex == f"more than {MAX_PARTS} MIME parts"


def test_header_and_line_bounds() -> None:
    long_head = mail("X-A: 1\r\n" * MAX_HEADER_LINES + f"From: {AGENT}\r\n")
    refused = view(long_head)
    assert refused.kind_reason == "not read" and "header lines" in (refused.too_complex or "")
    nested_headers = mail(
        f"From: {AGENT}\r\nContent-Type: multipart/mixed; boundary=b\r\n",
        "--b\r\nContent-Type: message/rfc822\r\n\r\n"
        + "X-A: 1\r\n" * (MAX_BODY_HEADER_LINES + 1)
        + "\r\nx\r\n--b--\r\n",
    )
    assert "header lines below the top" in (view(nested_headers).too_complex or "")
    lines = mail(f"From: {AGENT}\r\n", "\r\n" * (MAX_LINES + 1))
    assert f"(at most {MAX_LINES})" in (view(lines).too_complex or "")


def test_the_outline_reads_sender_kind_and_authentication_from_the_headers() -> None:
    raw = mail(
        "Authentication-Results: mx.aplus.test; dmarc=pass header.from=caf95.example.test\r\n"
        f"From: Sophie <{AGENT}>\r\nMessage-ID: <a@b.test>\r\nSubject: =?utf-8?q?R=C3=A9?=\r\n"
    )
    v = view(raw)
    assert v.from_header == f"Sophie <{AGENT}>" and v.message_id == "<a@b.test>"
    assert v.subject == "Ré" and v.kind is Kind.HUMAN and v.auth.authenticated
    assert view(mail(f"From: {AGENT}\r\nAuto-Submitted: auto-replied\r\n")).kind is Kind.AUTO_REPLY
    assert view(mail(f"From: {AGENT}\r\n"), mail_from="").kind is Kind.BOUNCE


def _step(raw: bytes, *, authenticated: bool, mail_from: str | None = AGENT) -> Step | None:
    v = view(raw, mail_from)
    ctx = Context(AGENT, ("aplus.test", "reponse.aplus.test"))
    verdict = screen(BEFORE_AUTHENTICATION, v, ctx)
    if verdict is None:
        ctx = Context(AGENT, ctx.own_domains, authenticated=authenticated)
        verdict = screen(AFTER_AUTHENTICATION, v, ctx)
    return verdict.step if verdict else None


def test_rules_in_order() -> None:
    human = mail(f"From: {AGENT}\r\n")
    assert _step(human, authenticated=True) is None  # parsed
    assert _step(human, authenticated=False) is Step.REFUSE_SENDER
    assert _step(mail("From: pirate@caf95.example.test\r\n"), authenticated=True) is (
        Step.REFUSE_SENDER
    )
    # A loop is filed whoever sent it; an auto-reply is never posted.
    loop = mail("From: pirate@x.test\r\n" + "Received: x\r\n" * 31)
    assert _step(loop, authenticated=False) is Step.FILE_LOOP
    auto = mail(f"From: {AGENT}\r\nPrecedence: bulk\r\n")
    assert _step(auto, authenticated=False) is Step.FILE_AUTOMATED
    # Structure is judged once the sender is known and authenticated.
    big = mail(
        f"From: {AGENT}\r\nContent-Type: multipart/mixed; boundary=b\r\n",
        "--b\r\n\r\nx\r\n" * (MAX_PARTS + 1),
    )
    assert _step(big, authenticated=False) is Step.REFUSE_SENDER
    assert _step(big, authenticated=True) is Step.REFUSE_CONTENT


def test_a_bounce_is_believed_only_from_a_known_mail_system_and_authenticated() -> None:
    def bounce(sender: str) -> bytes:
        return mail(
            f"From: {sender}\r\nContent-Type: multipart/report; report-type=delivery-status\r\n"
        )

    for sender in (
        "MAILER-DAEMON@mx.caf95.example.test",  # below the agent's domain
        "postmaster@caf95.example.test",
        "MAILER-DAEMON@relais.aplus.test",  # our relay
    ):
        assert _step(bounce(sender), authenticated=True) is None, sender  # parsed, then used
        assert _step(bounce(sender), authenticated=False) is Step.FILE_BOUNCE_UNVERIFIED
    for sender in ("MAILER-DAEMON@mx.attaquant.example", "x@autre.test", "sans-arobase"):
        assert _step(bounce(sender), authenticated=True) is Step.FILE_BOUNCE_UNVERIFIED, sender


def test_every_rule_says_in_french_what_it_protects() -> None:
    names = [r.name for r in (*BEFORE_AUTHENTICATION, *AFTER_AUTHENTICATION)]
    assert len(names) == len(set(names))
    assert all(r.description.endswith(".") for r in (*BEFORE_AUTHENTICATION, *AFTER_AUTHENTICATION))


def test_kind_rules_are_named_and_described_in_french() -> None:
    from bridge.inbound.rules import KIND_RULES

    names = [r.name for r in KIND_RULES]
    assert len(names) == len(set(names)) and names[0] == "our_loop_marker"
    assert all(r.description.endswith(".") for r in KIND_RULES)


def test_no_way_around_the_part_count() -> None:
    """What the stdlib parser accepts as delimiters, the count sees too."""
    flat = "--b\r\n\r\nx\r\n" * (MAX_PARTS + 1)
    head = f"From: {AGENT}\r\nContent-Type: multipart/mixed; "
    for declared, body in (
        ('boundary="b   "', flat),  # trailing spaces: dropped by the parser
        ("boundary*=utf-8''b", flat),  # RFC 2231
        ('boundary*0="b"', flat),
        ("BOUNDARY=" + "b" * 300, flat.replace("--b", "--" + "b" * 300)),  # long
        ("boundary=b", flat.replace("\r\n", "\r")),  # bare CR line ends
    ):
        raw = mail(head + declared + "\r\n", body)
        assert view(raw).too_complex == f"more than {MAX_PARTS} MIME parts", declared
    # Lines ended by a bare CR count as lines.
    assert "lines" in (view(mail(f"From: {AGENT}\r\n", "\r" * (MAX_LINES + 2))).too_complex or "")
