"""Inbound email parsing: never raises, classifies, extracts the reply, checks auth."""

from __future__ import annotations

import base64
import hashlib
import re
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.inbound.attachments import sanitise_filename
from bridge.inbound.authres import auth_results, dkim_aligned
from bridge.inbound.html_text import html_to_text
from bridge.inbound.mail import Command, InboundMail, Kind, RefusalReason
from bridge.inbound.parse import parse_inbound
from bridge.inbound.quotes import strip_quoted
from bridge.render import LOOP_HEADER

CORPUS = Path(__file__).parent / "corpus"
ALLOWED = frozenset({"application/pdf", "image/jpeg", "image/png", "text/plain"})
TRUSTED = ("mx.aplus.example.fr",)
HEAD = (
    "From: Marie Durand <marie.durand@caf.fr>\n"
    "To: reply+abcdefghijklmnopqrstuvwxyz234567@reponse.aplus.example.fr\n"
    "Message-ID: <m1@caf.fr>\n"
)


def parse(raw: bytes | str, **kw: object) -> InboundMail:
    data = raw.replace("\n", "\r\n").encode("utf-8") if isinstance(raw, str) else raw
    args: dict[str, object] = {
        "max_attachment_bytes": 1_000_000,
        "allowed_types": ALLOWED,
        "trusted_authserv_ids": TRUSTED,
    }
    args.update(kw)
    return parse_inbound(data, **args)  # type: ignore[arg-type]


def plain(body: str, headers: str = "", charset: str = "utf-8") -> str:
    return f"{HEAD}{headers}Subject: Re: x\nContent-Type: text/plain; charset={charset}\n\n{body}\n"


_ALLOWED_BRACKETS = re.compile(
    r"<(?:https?://|mailto:)[^\s<>\"']*>|<[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+>"
)


def assert_inert_text(text: str) -> None:
    """No tag can start anywhere, apart from bracketed URLs and addresses."""
    assert "<script" not in text.lower()
    rest = _ALLOWED_BRACKETS.sub(" ", text)
    assert re.search(r"<[A-Za-z/!?]", rest) is None, text[:200]


def assert_invariants(mail: InboundMail) -> None:
    assert "\r" not in mail.subject and "\n" not in mail.subject
    assert_inert_text(mail.text)
    assert isinstance(mail.kind, Kind)
    assert len(mail.content_hash) == 64
    for att in mail.attachments:
        assert att.size == len(att.data) <= 1_000_000
        assert att.content_type in ALLOWED
        assert "/" not in att.filename and "\\" not in att.filename
    names = [a.filename for a in mail.attachments] + [r.filename for r in mail.refused_attachments]
    for name in names:
        assert not any(ord(c) < 32 for c in name)
    if mail.message_id is not None:
        assert re.fullmatch(r"<[^<>\s]+@[^<>\s]+>", mail.message_id)


# --------------------------------------------------------------------------- corpus


CORPUS_FILES = sorted(CORPUS.glob("*.eml"))


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS_FILES) >= 15


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.stem)
def test_corpus_message(path: Path) -> None:
    mail = parse(path.read_bytes())
    assert_invariants(mail)
    expected = path.stem.split("-")[0]
    assert mail.kind.value == expected, mail.kind_reason


def test_corpus_details() -> None:
    def load(name: str) -> InboundMail:
        return parse((CORPUS / f"{name}.eml").read_bytes())

    injected = load("human-header-injection-subject")
    assert "X-Injected: yes" in injected.subject  # flattened onto one line, harmless
    assert injected.auth.reason == "no single valid From address"

    zipped = load("human-zip-bomb-by-name")
    reasons = {r.filename: r.reason for r in zipped.refused_attachments}
    assert reasons == {
        "bomb.zip": RefusalReason.ARCHIVE,
        "facture.pdf.exe": RefusalReason.DOUBLE_EXTENSION,
        "facturefdp.exe": RefusalReason.DANGEROUS_EXTENSION,  # U+202E removed
        "archive.7z": RefusalReason.ARCHIVE,
        "photos.rar": RefusalReason.ARCHIVE,
        "macro.docm": RefusalReason.DANGEROUS_EXTENSION,
    }
    assert [a.filename for a in zipped.attachments] == ["avis.pdf", "passwd.pdf"]

    dsn = load("bounce-dsn")
    assert [(r.address, r.action, r.status) for r in dsn.bounce_recipients] == [
        ("marie.durand@caf.fr", "failed", "5.1.1")
    ]
    assert dsn.bounced_message_id == (
        "<ev.0123456789abcdef0123456789abcdef01234567@aplus.example.fr>"
    )

    outlook = load("human-outlook-plain-reply")
    assert outlook.command is Command.JEMENOCCUPE
    assert outlook.text == "Bonjour, je prends le dossier.\n\nMarie Durand\nCAF du Val-d'Oise"

    gmail = load("human-gmail-html-reply")
    assert gmail.text == "C'est traité."

    html = load("human-html-script")
    assert "steal" not in html.text and "display:none" not in html.text
    assert "tracker" not in html.text and "javascript" not in html.text
    assert "(https://caf.fr/doc)" in html.text

    two = load("human-multiple-from")
    assert two.from_addresses == ("marie.durand@caf.fr", "attacker@evil.example")
    assert two.from_header is None and two.message_id is None
    assert "several From fields" in two.defects

    assert load("human-nested-50-levels").text == "Au fond du puits"
    assert load("human-unknown-8bit").text == "Le dossier est traité, à bientôt."
    mixed = load("human-mislabelled-charsets").text
    assert mixed.count("Déjà vu") == 2


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        ("Auto-Submitted: auto-replied\n", Kind.AUTO_REPLY),
        ("Auto-Submitted: auto-generated; owner-email=x@y\n", Kind.AUTO_REPLY),
        ("Auto-Submitted: No\n", Kind.HUMAN),
        ("Precedence: bulk\n", Kind.AUTO_REPLY),
        ("Precedence: junk\n", Kind.AUTO_REPLY),
        ("Precedence: list\n", Kind.LIST),
        ("List-Id: <x.example>\n", Kind.LIST),
        ("List-Unsubscribe: <mailto:u@x>\n", Kind.LIST),
        ("Return-Path: <>\n", Kind.BOUNCE),
        (f"{LOOP_HEADER}: other-deployment\n", Kind.LOOP),
        ("X-Autoreply: yes\n", Kind.AUTO_REPLY),
        ("", Kind.HUMAN),
    ],
)
def test_classification_headers(headers: str, kind: Kind) -> None:
    mail = parse(plain("Bonjour", headers))
    assert mail.kind is kind, mail.kind_reason


def test_envelope_sender_and_received_count() -> None:
    assert parse(plain("x"), mail_from="").kind is Kind.BOUNCE
    assert parse(plain("x"), mail_from="<>").kind is Kind.BOUNCE
    assert parse(plain("x"), mail_from="marie.durand@caf.fr").kind is Kind.HUMAN
    received = "".join(f"Received: from h{i}\n" for i in range(5))
    assert parse(plain("x", received), max_received=4).kind is Kind.LOOP
    assert parse(plain("x", received), max_received=5).kind is Kind.HUMAN


def test_outlook_style_auto_reply_subject() -> None:
    raw = plain("Absente").replace("Subject: Re: x", "Subject: Réponse automatique : [A+] x")
    assert parse(raw).kind is Kind.AUTO_REPLY


# --------------------------------------------------------------------------- text extraction


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("Merci.\n\nLe lun. 2 mars 2026 à 09:00, A+ <n@a.fr> a\nécrit :\n> vieux", "Merci."),
        ("Merci.\n\nLe 02/03/2026 à 09:00, Paul a écrit :\n> vieux\n> texte", "Merci."),
        ("Thanks.\n\nOn Mon, Mar 2, 2026 at 9:00 AM Paul <p@x.fr> wrote:\n> old", "Thanks."),
        ("Vu.\n\n-----Original Message-----\nFrom: x\nSent: y\nTo: z\n\nold", "Vu."),
        ("Vu.\n\n-------- Message d'origine --------\nDe : x\nold", "Vu."),
        ("Vu.\n-----Message d'origine-----\nold", "Vu."),
        ("Vu.\n\nDe : Paul\nEnvoyé : lundi\nÀ : Marie\nObjet : x\n\nold", "Vu."),
        ("Vu.\n\nFrom: Paul\nSent: Monday\nTo: Marie\nSubject: x\n\nold", "Vu."),
        ("Réponse\n-- \nMarie Durand\nCAF 95", "Réponse"),
        ("Réponse\n--\nMarie", "Réponse"),
        ("> cité\nmilieu\n> cité\nfin", "milieu\nfin"),
        ("\n\n  Bonjour  \n\n\n\n\nfin\n\n", "Bonjour\n\nfin"),
        ("Le dossier a été transmis, Paul a écrit :\nsuite", None),  # no date: kept
    ],
)
def test_strip_quoted(body: str, expected: str | None) -> None:
    assert strip_quoted(body) == (expected if expected is not None else body)


@pytest.mark.parametrize(
    ("first_line", "command"),
    [
        ("!traitee", Command.TRAITEE),
        ("!TRAITEE", Command.TRAITEE),
        ("  !traitée  ", Command.TRAITEE),
        ("! jemenoccupe", Command.JEMENOCCUPE),
        ("!PasLeBonInterlocuteur", Command.PASLEBONINTERLOCUTEUR),
        ("!traitee merci", None),
        ("traitee", None),
        ("!jemenoccupe.", None),
        ("!inconnu", None),
    ],
)
def test_commands_on_first_line(first_line: str, command: Command | None) -> None:
    mail = parse(plain(f"\n{first_line}\nLe reste."))
    assert mail.command is command
    if command is not None:
        assert mail.text == "Le reste." and mail.command_line is None
    elif first_line.strip().startswith("!"):
        # Any other command line is the room's to read (it answers unknown ones).
        assert mail.command_line == first_line.strip() and mail.text == "Le reste."
    else:
        assert mail.text.startswith(first_line.strip()) and mail.command_line is None


def test_a_command_line_changes_what_counts_as_a_duplicate() -> None:
    one = parse(plain("!inviter CPAM 95\nMerci."))
    other = parse(plain("!inviter CAF 95\nMerci."))
    assert one.command_line == "!inviter CPAM 95" and one.text == "Merci."
    assert one.content_hash != other.content_hash


def test_command_on_second_line_is_text() -> None:
    mail = parse(plain("Bonjour\n!traitee"))
    assert mail.command is None and mail.text == "Bonjour\n!traitee"


def test_plain_text_preferred_over_html() -> None:
    raw = (
        f"{HEAD}Subject: x\nContent-Type: multipart/alternative; boundary=A\n\n"
        "--A\nContent-Type: text/html\n\n<p>version HTML</p>\n"
        "--A\nContent-Type: text/plain\n\nversion texte\n--A--\n"
    )
    assert parse(raw).text == "version texte"


def test_html_only_becomes_text_never_markup() -> None:
    html = (
        "<p>Bonjour&nbsp;<b>Paul</b></p><ul><li>un</li><li>deux</li></ul>"
        "<p><a href='https://caf.fr'>https://caf.fr</a> <a href='javascript:x()'>x</a></p>"
        "<blockquote>cité</blockquote><p>fin</p><img src='cid:logo' alt='Logo CAF'>"
        "<style>p{}</style><script>a()</script><!-- commentaire -->&lt;b&gt;"
    )
    text = html_to_text(html)
    assert "Bonjour Paul" in text
    assert "- un\n- deux" in text
    assert "> cité" in text
    assert "a()" not in text and "p{}" not in text and "commentaire" not in text
    mail = parse(f"{HEAD}Subject: x\nContent-Type: text/html; charset=utf-8\n\n{html}\n")
    assert "cité" not in mail.text
    assert_inert_text(mail.text)
    assert "‹b>" in mail.text


def test_html_to_text_survives_broken_markup() -> None:
    for markup in ("<svg", "<p <a", "<!--", "<![CDATA[x", "<" * 10_000, "</" + "a" * 100_000):
        assert_inert_text(parse(f"{HEAD}Content-Type: text/html\n\n{markup}\n").text)


@pytest.mark.parametrize(
    "evil",
    [
        "<script>alert(1)</script>",
        "<SCRIPT SRC=//x/y.js>",
        "<img src=x onerror=alert(1)>",
        "<iframe src=https://x>",
        "<a href='javascript:x'>y</a>",
        "</p><svg/onload=x>",
        "<!--><script>x</script>",
    ],
)
def test_markup_in_plain_text_is_defanged(evil: str) -> None:
    mail = parse(plain(f"Voici : {evil} <https://caf.fr/a?b=c> <marie@caf.fr> a < b"))
    assert_inert_text(mail.text)
    assert "<https://caf.fr/a?b=c>" in mail.text and "<marie@caf.fr>" in mail.text
    assert "a < b" in mail.text


def test_encoded_markup_is_defanged_whatever_the_encoding() -> None:
    body = base64.b64encode(b"<script>x()</script>").decode()
    raw = f"{HEAD}Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n{body}\n"
    assert_inert_text(parse(raw).text)
    raw = f"{HEAD}Content-Type: text/plain; charset=utf-7\n\n+ADw-script+AD4-\n"
    mail = parse(raw)
    assert_inert_text(mail.text)
    assert any("utf-7" in d for d in mail.defects)


def test_huge_line_is_bounded() -> None:
    mail = parse(plain("B" * 3_000_000))
    assert len(mail.text) <= 20_100
    assert mail.text.endswith("[… message tronqué]")
    assert "text truncated" in mail.defects


def test_deep_nesting_is_bounded() -> None:
    depth = 300
    raw = HEAD + "Subject: deep\n"
    for i in range(depth):
        raw += f"Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n"
    raw += "Content-Type: text/plain\n\nfond\n"
    for i in reversed(range(depth)):
        raw += f"--b{i}--\n"
    mail = parse(raw)
    assert "MIME tree too deep" in mail.defects
    assert_invariants(mail)


def test_subject_decoding_and_injection() -> None:
    raw = plain("x").replace(
        "Subject: Re: x", "Subject: =?utf-8?q?R=C3=A9p=0D=0ABcc:_x@y?= =?bogus?q?z?="
    )
    mail = parse(raw)
    assert mail.subject.startswith("Rép Bcc: x@y")
    assert "\r" not in mail.subject and "\n" not in mail.subject


def test_message_id_normalisation() -> None:
    assert parse(plain("x")).message_id == "<m1@caf.fr>"
    for bad in ("no-brackets@x", "<a b@c>", "<a@b> <c@d>", "<" + "a" * 300 + "@b>"):
        raw = plain("x").replace("<m1@caf.fr>", bad)
        mail = parse(raw)
        assert mail.message_id is None
        assert "malformed Message-ID" in mail.defects


def test_content_hash_dedups_same_reply() -> None:
    a = parse(plain("Même réponse\n\n> citation A"))
    b = parse(plain("Même réponse\n\n> citation B").replace("<m1@caf.fr>", "<m2@caf.fr>"))
    c = parse(plain("Autre réponse"))
    d = parse(plain("!traitee\nMême réponse"))
    assert a.content_hash == b.content_hash
    assert len({a.content_hash, c.content_hash, d.content_hash}) == 3


def _with_attachment(name: str, ctype: str, data: bytes) -> str:
    return (
        f"{HEAD}Subject: pj\nContent-Type: multipart/mixed; boundary=M\n\n"
        "--M\nContent-Type: text/plain\n\nCi-joint.\n"
        f'--M\nContent-Type: {ctype}\nContent-Disposition: attachment; filename="{name}"\n'
        f"Content-Transfer-Encoding: base64\n\n{base64.b64encode(data).decode()}\n--M--\n"
    )


@pytest.mark.parametrize(
    ("name", "ctype", "data", "reason"),
    [
        ("avis.pdf", "application/pdf", b"%PDF-1.7", None),
        ("photo.JPG", "image/jpg", b"\xff\xd8\xff", None),
        ("scan.pdf", "application/octet-stream", b"%PDF", None),
        ("gros.pdf", "application/pdf", b"%PDF" + b"x" * 2000, RefusalReason.TOO_BIG),
        ("page.html", "text/html", b"<script>", RefusalReason.DANGEROUS_EXTENSION),
        ("facture.pdf.exe", "application/pdf", b"MZ", RefusalReason.DOUBLE_EXTENSION),
        ("facture.exe.pdf", "application/pdf", b"%PDF", RefusalReason.DOUBLE_EXTENSION),
        ("facture.pdf.zip", "application/zip", b"PK\x03\x04", RefusalReason.ARCHIVE),
        ("bombe.zip", "application/pdf", b"%PDF", RefusalReason.ARCHIVE),
        ("data.tar.gz", "application/gzip", b"\x1f\x8b", RefusalReason.ARCHIVE),
        ("rapport.pdf", "application/pdf", b"PK\x03\x04zip", RefusalReason.ARCHIVE),
        ("rapport.pdf", "application/pdf", b"MZ\x90", RefusalReason.DANGEROUS_EXTENSION),
        ("rapport.pdf", "image/png", b"%PDF", RefusalReason.TYPE_MISMATCH),
        ("a.odt", "application/vnd.oasis.opendocument.text", b"PK", RefusalReason.TYPE_NOT_ALLOWED),
        ("script.exe.", "application/pdf", b"MZ", RefusalReason.DANGEROUS_EXTENSION),
    ],
)  # fmt: skip
def test_attachment_policy(
    name: str, ctype: str, data: bytes, reason: RefusalReason | None
) -> None:
    mail = parse(_with_attachment(name, ctype, data), max_attachment_bytes=1000)
    assert mail.text == "Ci-joint."
    if reason is None:
        assert len(mail.attachments) == 1 and not mail.refused_attachments
        att = mail.attachments[0]
        assert att.data == data and att.sha256 == hashlib.sha256(data).hexdigest()
    else:
        assert not mail.attachments
        assert [r.reason for r in mail.refused_attachments] == [reason]


def test_signature_logos_in_related_parts_are_ignored() -> None:
    raw = (
        f"{HEAD}Subject: x\nContent-Type: multipart/related; boundary=R\n\n"
        "--R\nContent-Type: text/html\n\n<p>Texte</p><img src='cid:logo'>\n"
        "--R\nContent-Type: image/png\nContent-ID: <logo>\nContent-Disposition: inline; "
        'filename="image001.png"\n\n\x89PNG\n--R--\n'
    )
    mail = parse(raw)
    assert mail.text == "Texte" and not mail.attachments and not mail.refused_attachments


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\virus.exe", "virus.exe"),
        ("facture\u202efdp.exe", "facturefdp.exe"),
        ("a\r\nb.pdf", "ab.pdf"),
        ("  ..cachée.pdf...  ", "cachée.pdf"),
        ('x<>:"|?*.pdf', "x_______.pdf"),
        ("", "piece-jointe"),
        (None, "piece-jointe"),
        ("a" * 300 + ".pdf", "a" * 107 + ".pdf"),
    ],
)
def test_sanitise_filename(raw: str | None, expected: str) -> None:
    assert sanitise_filename(raw) == expected


# --------------------------------------------------------------------------- authentication


def _auth(ar_lines: list[str], from_line: str = "From: Marie <marie.durand@caf.fr>") -> str:
    head = "".join(f"Authentication-Results: {line}\n" for line in ar_lines)
    return f"{head}{from_line}\nSubject: x\n\nbody\n"


def _verdict(raw: str, trusted: tuple[str, ...] = TRUSTED) -> tuple[bool, bool]:
    msg = BytesParser(policy=policy.default).parsebytes(raw.encode())
    verdict = auth_results(msg, trusted)
    return verdict.dmarc_pass, verdict.dkim_aligned_pass


def test_trusted_dmarc_and_dkim_pass() -> None:
    line = "mx.aplus.example.fr; spf=pass smtp.mailfrom=caf.fr; dkim=pass header.d=caf.fr; dmarc=pass (p=reject) header.from=caf.fr"  # noqa: E501
    assert _verdict(_auth([line])) == (True, True)
    assert parse(_auth([line])).auth.authenticated


def test_untrusted_headers_are_ignored() -> None:
    assert _verdict(
        _auth(["evil.example; dmarc=pass header.from=caf.fr; dkim=pass header.d=caf.fr"])
    ) == (False, False)
    assert _verdict(_auth(["mx.aplus.example.fr.evil; dmarc=pass"])) == (False, False)


def test_trusted_header_below_an_untrusted_one_still_counts() -> None:
    lines = ["filter.internal; spam=clean", "MX.APLUS.EXAMPLE.FR 1; dmarc=pass header.from=caf.fr"]
    assert _verdict(_auth(lines)) == (True, False)


def test_only_the_topmost_trusted_header_counts() -> None:
    genuine = "mx.aplus.example.fr; dkim=none; dmarc=fail header.from=caf.fr"
    forged = "mx.aplus.example.fr; dkim=pass header.d=caf.fr; dmarc=pass header.from=caf.fr"
    assert _verdict(_auth([genuine, forged])) == (False, False)
    assert _verdict(_auth([forged, genuine])) == (True, True)


def test_dmarc_must_match_the_from_domain() -> None:
    line = "mx.aplus.example.fr; dmarc=pass header.from=evil.example"
    assert _verdict(_auth([line])) == (False, False)


def test_dmarc_pass_must_name_the_from_domain() -> None:
    # A trusted pass that does not say for which domain (security review, L6).
    assert _verdict(_auth(["mx.aplus.example.fr; dmarc=pass"])) == (False, False)
    assert _verdict(_auth(["mx.aplus.example.fr; dmarc=pass header.from="])) == (False, False)
    line = "mx.aplus.example.fr; dmarc=pass header.from=CAF.FR"
    assert _verdict(_auth([line])) == (True, False)


def test_dkim_must_be_aligned() -> None:
    for d, aligned in [("caf.fr", True), ("evil.example", False), ("sub.caf.fr", False)]:
        line = f"mx.aplus.example.fr; dkim=pass header.d={d}"
        assert _verdict(_auth([line])) == (False, aligned), d
    parent = "mx.aplus.example.fr; dkim=pass header.i=@caf.fr"
    assert _verdict(_auth([parent], "From: m@val-doise.caf.fr")) == (False, True)
    failing = "mx.aplus.example.fr; dkim=fail header.d=caf.fr"
    assert _verdict(_auth([failing])) == (False, False)


def test_comments_and_quotes_do_not_confuse_the_parser() -> None:
    line = 'mx.aplus.example.fr (our "mx"; dmarc=pass); dkim=fail (reason="x; dmarc=pass") header.d=caf.fr'  # noqa: E501
    assert _verdict(_auth([line])) == (False, False)
    line = "mx.aplus.example.fr; dmarc = pass (p=none) header.from = caf.fr"
    assert _verdict(_auth([line])) == (True, False)


def test_auth_needs_a_single_valid_from() -> None:
    line = "mx.aplus.example.fr; dmarc=pass header.from=caf.fr"
    assert _verdict(_auth([line], "From: a@caf.fr, b@caf.fr")) == (False, False)
    two_froms = _auth([line], "From: a@caf.fr\nFrom: b@caf.fr")
    assert _verdict(two_froms) == (False, False)
    assert _verdict(_auth([line]), trusted=()) == (False, False)


@pytest.mark.parametrize(
    ("d", "from_domain", "aligned"),
    [
        ("caf.fr", "caf.fr", True),
        ("CAF.FR.", "caf.fr", True),
        ("caf.fr", "mail.caf.fr", True),
        ("mail.caf.fr", "caf.fr", False),
        ("other.caf.fr", "mail.caf.fr", False),
        ("gouv.fr", "interieur.gouv.fr", False),
        ("interieur.gouv.fr", "caf.gouv.fr", False),
        ("fr", "caf.fr", False),
        ("evilcaf.fr", "caf.fr", False),
        ("", "caf.fr", False),
    ],
)
def test_dkim_alignment_rule(d: str, from_domain: str, aligned: bool) -> None:
    assert dkim_aligned(d, from_domain) is aligned


# --------------------------------------------------------------------------- properties

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes_never_raise(raw: bytes) -> None:
    assert_invariants(parse(raw))


header_names = st.sampled_from(
    ["From", "Subject", "Message-ID", "Auto-Submitted", "Authentication-Results",
     "Return-Path", "List-Id", "Received", "Content-Type", "Content-Transfer-Encoding",
     "Content-Disposition", "Precedence", LOOP_HEADER]
)  # fmt: skip
header_values = st.text(max_size=80) | st.sampled_from(
    [
        "=?utf-8?q?a=0D=0AX:y?=",
        "=?unknown-8bit?b?/w==?=",
        "multipart/mixed; boundary=",
        'text/html; charset="utf-7"',
        "<>",
        "mx.aplus.example.fr; dmarc=pass",
        "attachment; filename*=utf-8''%0D%0Ax.exe",
    ]
)


@st.composite
def mime_leaf(draw: st.DrawFn) -> bytes:
    ctype = draw(st.sampled_from(["text/plain", "text/html", "application/pdf",
                                  "application/zip", "image/png", "message/rfc822",
                                  "text/x-odd", "multipart/mixed"]))  # fmt: skip
    charset = draw(st.sampled_from(["utf-8", "latin-1", "unknown-8bit", "utf-7", "bogus", ""]))
    cte = draw(st.sampled_from(["7bit", "base64", "quoted-printable", "x-garbage"]))
    name = draw(st.sampled_from([None, "a.pdf", "x.pdf.exe", "b.zip", "=?utf-8?q?a=0D=0Ab?="]))
    body = draw(
        st.binary(max_size=200)
        | st.sampled_from([b"<script>alert(1)</script>", b"PGJvZHk+", b"=3Cscript=3E", b"!traitee"])
    )
    head = f"Content-Type: {ctype}; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n"
    if name:
        head += f'Content-Disposition: attachment; filename="{name}"\r\n'
    return head.encode() + b"\r\n" + body


def mime_multipart(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        subtype = draw(st.sampled_from(["mixed", "alternative", "related", "report"]))
        parts = draw(st.lists(children, max_size=4))
        broken = draw(st.booleans())
        boundary = "b" + hashlib.sha256(b"".join(parts) + subtype.encode()).hexdigest()[:16]
        out = f"Content-Type: multipart/{subtype}; boundary={boundary}\r\n\r\n".encode()
        for part in parts:
            out += f"--{boundary}\r\n".encode() + part + b"\r\n"
        if not broken:
            out += f"--{boundary}--\r\n".encode()
        return out

    return build()


mime_trees = st.recursive(mime_leaf(), mime_multipart, max_leaves=8)


@FUZZ
@given(st.lists(st.tuples(header_names, header_values), max_size=8), mime_trees)
def test_random_mime_trees_and_headers_never_raise(
    headers: list[tuple[str, str]], tree: bytes
) -> None:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("utf-8", "surrogatepass")
    mail = parse(head + tree)
    assert_invariants(mail)


@FUZZ
@given(st.text(max_size=400))
def test_any_plain_text_comes_out_inert(body: str) -> None:
    mail = parse(plain(body))
    assert_invariants(mail)


@FUZZ
@given(st.text(max_size=400))
def test_any_html_comes_out_inert(body: str) -> None:
    raw = f"{HEAD}Content-Type: text/html; charset=utf-8\n\n<p>{body}</p><script>{body}</script>"
    assert_invariants(parse(raw))


@pytest.mark.parametrize(
    "answer",
    [
        "Le versement reprend le mois prochain.",
        "Le dossier est complet depuis le 3 mars.",
        "Le dossier est complet.\nLe reste suit.",
    ],
)
def test_an_answer_starting_with_le_is_not_taken_for_the_attribution(answer: str) -> None:
    """A reply beginning « Le … » was joined with the attribution line below it and cut."""
    body = f"{answer}\n\nLe 2 mars 2026 à 10:00, Administration+ a écrit :\n> Bonjour"
    assert strip_quoted(body) == answer
    tight = f"{answer}\nLe 2 mars 2026 à 10:00, Administration+ a écrit :\n> Bonjour"
    assert strip_quoted(tight) == answer
