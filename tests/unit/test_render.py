"""Matrix → email rendering: headers, threading, sanitising, templates."""

from __future__ import annotations

from datetime import UTC, date, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.domain.model import DemandeForm, Mandat, MandatType, Usager
from bridge.render import (
    LOOP_HEADER,
    MAX_BODY_CHARS,
    Attachment,
    Footer,
    UnsupportedContent,
    action_email,
    build_email,
    clean_header_value,
    closed_email,
    edited_message_email,
    finish,
    footer,
    mailbox,
    matrix_to_email_html,
    message_id,
    new_demande_email,
    new_message_email,
    redacted_message_email,
    reopened_email,
    root_message_id,
    sanitise_html,
    subject,
    thread_headers,
)

DOMAIN = "aplus.example.fr"


def _build(**overrides: object) -> EmailMessage:
    args: dict[str, object] = {
        "from_addr": mailbox("Administration+", "notifications@aplus.example.fr"),
        "to_addr": "marie.durand@caf.fr",
        "reply_to": "reply+abcdefghijklmnopqrstuvwxyz234567@reponse.aplus.example.fr",
        "subject": "[A+] Demande A-2026-000042 · CAF · 95 — nouveau message",
        "message_id": message_id("$event:example.org", DOMAIN),
        "in_reply_to": root_message_id("A-2026-000042", DOMAIN),
        "references": root_message_id("A-2026-000042", DOMAIN),
        "text": "Bonjour",
        "html": "<p>Bonjour</p>",
        "loop_marker": "aplus-prod",
    }
    args.update(overrides)
    return build_email(**args)  # type: ignore[arg-type]


def _header_lines(msg: EmailMessage) -> list[bytes]:
    raw = msg.as_bytes()
    head = raw.split(b"\r\n\r\n", 1)[0]
    return head.split(b"\r\n")


# --------------------------------------------------------------------------- subject


def test_subject_format() -> None:
    assert (
        subject("A-2026-000042", ["CAF"], "95", "nouveau message")
        == "[A+] Demande A-2026-000042 · CAF · 95 — nouveau message"
    )
    assert subject("A-1", ["CAF", "CPAM"], "2A", "") == "[A+] Demande A-1 · CAF, CPAM · 2A"


@pytest.mark.parametrize(
    "evil", ["a\r\nBcc: x@evil.fr", "a\nb", "a\x00b", "a\u2028b", "a\x85b", "a\u202eb"]
)
def test_subject_cannot_carry_line_breaks(evil: str) -> None:
    for text in (
        subject(evil, [evil], evil, evil),
        clean_header_value(evil),
    ):
        assert not any(c in text for c in "\r\n\x00\u2028\x85\u202e")


def test_subject_is_bounded() -> None:
    assert len(subject("A-1", ["X" * 1000] * 10, "95", "y" * 1000)) <= 250


# --------------------------------------------------------------------------- message ids


def test_message_ids_are_stable_and_distinct() -> None:
    a = message_id("$abc:example.org", DOMAIN)
    assert a == message_id("$abc:example.org", DOMAIN.upper())
    assert a != message_id("$abd:example.org", DOMAIN)
    assert a.startswith("<ev.") and a.endswith(f"@{DOMAIN}>")
    assert "abc" not in a  # hashed, the event id does not leak
    root = root_message_id("A-2026-000042", DOMAIN)
    assert root == root_message_id("A-2026-000042", DOMAIN)
    assert root != root_message_id("A-2026-000043", DOMAIN)
    with pytest.raises(ValueError):
        message_id("$x", "bad domain")


def test_thread_headers_keep_one_thread_per_demande() -> None:
    root = root_message_id("A-1", DOMAIN)
    first = thread_headers("A-1", DOMAIN, [])
    assert first.in_reply_to == root and first.references == root
    p1, p2 = message_id("$1", DOMAIN), message_id("$2", DOMAIN)
    later = thread_headers("A-1", DOMAIN, [p1, "garbage\r\nX: y", p1, root, p2])
    assert later.in_reply_to == p2
    assert later.references == f"{root} {p1} {p2}"
    many = thread_headers("A-1", DOMAIN, [message_id(f"${i}", DOMAIN) for i in range(50)])
    refs = many.references.split()
    assert refs[0] == root and len(refs) == 10
    assert refs[-1] == message_id("$49", DOMAIN)


# --------------------------------------------------------------------------- build_email


def test_build_email_structure_and_headers() -> None:
    msg = _build(date=datetime(2026, 3, 3, 10, 0, tzinfo=UTC))
    assert msg.get_content_type() == "multipart/alternative"
    types = [p.get_content_type() for p in msg.iter_parts()]
    assert types == ["text/plain", "text/html"]
    assert msg[LOOP_HEADER] == "aplus-prod"
    assert msg["Auto-Submitted"] is None
    assert msg["Date"] == "Tue, 03 Mar 2026 10:00:00 +0000"
    assert msg["Reply-To"].startswith("reply+")
    assert msg["X-Auto-Response-Suppress"] == "OOF, AutoReply"
    assert msg.policy.linesep == "\r\n"
    for line in _header_lines(msg):
        assert b"\r" not in line and b"\n" not in line


def test_notifications_are_auto_generated() -> None:
    msg = _build(auto_generated=True)
    assert msg["Auto-Submitted"] == "auto-generated"


def test_build_email_with_attachments_is_mixed() -> None:
    msg = _build(
        attachments=[
            Attachment("réponse.pdf", "application/pdf", b"%PDF-1.7 ..."),
            Attachment("../../etc/passwd\r\nX: y", "text/html\r\nX: y", b"data"),
        ]
    )
    assert msg.get_content_type() == "multipart/mixed"
    parts = list(msg.iter_parts())
    assert parts[0].get_content_type() == "multipart/alternative"
    assert parts[1].get_filename() == "réponse.pdf"
    assert parts[1].get_content() == b"%PDF-1.7 ..."
    assert parts[2].get_content_type() == "application/octet-stream"
    assert "/" not in (parts[2].get_filename() or "")
    assert "\n" not in (parts[2].get_filename() or "")
    reparsed = BytesParser(policy=policy.default).parsebytes(msg.as_bytes())
    assert not reparsed.defects
    for line in _header_lines(msg):
        assert not line.startswith(b"X: y")


def test_display_name_injection_is_neutralised() -> None:
    msg = _build(from_addr=mailbox("Marie\r\nBcc: victim@example.org", "n@aplus.example.fr"))
    raw = msg.as_bytes()
    assert b"\r\nBcc:" not in raw
    assert b"Marie Bcc" in raw or b"Marie" in raw


@pytest.mark.parametrize(
    "overrides",
    [
        {"message_id": "<a@b>\r\nBcc: x@y"},
        {"message_id": "no-brackets@x"},
        {"in_reply_to": "<a@b> \r\nBcc: x@y"},
        {"references": "junk"},
        {"loop_marker": "a b"},
        {"loop_marker": "x\r\nBcc: y"},
        {"to_addr": "a@b.fr\r\nBcc: x@y.fr"},
        {"to_addr": "a@b.fr, c@d.fr"},
    ],
)
def test_build_email_refuses_malformed_identifiers(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _build(**overrides)


def test_body_controls_are_removed_and_long_lines_are_encoded() -> None:
    msg = _build(text="a\x00b\r\nc" + "x" * 5000, html="<p>" + "y" * 5000 + "</p>")
    for line in msg.as_bytes().split(b"\r\n"):
        assert len(line) <= 998
    plain = next(iter(msg.iter_parts()))
    assert "\x00" not in plain.get_content()


# --------------------------------------------------------------------------- Matrix content


def test_plain_text_message() -> None:
    text, html = matrix_to_email_html({"msgtype": "m.text", "body": "Bonjour\n\n<b>x</b> & co"})
    assert text == "Bonjour\n\n<b>x</b> & co"
    assert html == "<p>Bonjour</p><p>&lt;b&gt;x&lt;/b&gt; &amp; co</p>"


def test_html_is_sanitised() -> None:
    evil = (
        '<p onclick="steal()">Bonjour <a href="javascript:alert(1)">clic</a> '
        '<a href="https://caf.fr/x" target="_blank">ok</a> '
        '<img src="https://tracker.example/pixel.gif"> <iframe src="https://x"></iframe>'
        "<style>p{display:none}</style><script>alert(1)</script>"
        '<svg onload="x()"><script>y()</script></svg><a href="/relative">r</a>'
        '<font color="red">rouge</font><span style="background:url(http://x)">s</span></p>'
    )
    text, html = matrix_to_email_html(
        {"msgtype": "m.text", "body": "Bonjour", "format": "org.matrix.custom.html",
         "formatted_body": evil}
    )  # fmt: skip
    lowered = html.lower()
    for forbidden in ("script", "style", "iframe", "img", "onclick", "onload", "javascript:",
                      "tracker", "svg", "/relative", "target="):  # fmt: skip
        assert forbidden not in lowered, forbidden
    assert '<a href="https://caf.fr/x" rel="noopener noreferrer">ok</a>' in html
    assert "rouge" in html
    assert text == "Bonjour"


def test_reply_fallbacks_are_stripped() -> None:
    content = {
        "msgtype": "m.text",
        "body": "> <@paul:example.org> Question ?\n> suite\n\nMa réponse",
        "format": "org.matrix.custom.html",
        "formatted_body": "<mx-reply><blockquote><a href='https://matrix.to/#/x'>In reply to</a>"
        "Question ?</blockquote></mx-reply>Ma réponse",
        "m.relates_to": {"m.in_reply_to": {"event_id": "$x"}},
    }
    text, html = matrix_to_email_html(content)
    assert text == "Ma réponse"
    assert html == "Ma réponse"


def test_quotes_are_kept_when_not_a_reply() -> None:
    text, _ = matrix_to_email_html({"msgtype": "m.text", "body": "> citation\n\nréponse"})
    assert text.startswith("> citation")


def test_emote_notice_and_files() -> None:
    assert matrix_to_email_html({"msgtype": "m.emote", "body": "arrive"})[0] == "* arrive"
    assert matrix_to_email_html({"msgtype": "m.notice", "body": "info"})[0] == "info"
    text, html = matrix_to_email_html(
        {"msgtype": "m.file", "body": "x", "filename": "avis<script>.pdf\r\n"}
    )
    assert text == "Pièce jointe : avis<script>.pdf"
    assert "<script" not in html
    assert matrix_to_email_html({"msgtype": "m.image", "body": "photo.jpg"})[0].endswith(
        "photo.jpg"
    )


@pytest.mark.parametrize(
    "content",
    [
        {},
        {"msgtype": "m.text"},
        {"msgtype": "m.text", "body": 42},
        {"msgtype": 3, "body": "x"},
        {"msgtype": "m.location", "body": "geo"},
        {"msgtype": "m.key.verification.request", "body": "x"},
    ],
)
def test_unsupported_content_is_reported(content: dict[str, object]) -> None:
    with pytest.raises(UnsupportedContent):
        matrix_to_email_html(content)


def test_huge_body_is_truncated() -> None:
    text, html = matrix_to_email_html({"msgtype": "m.text", "body": "a" * (MAX_BODY_CHARS * 3)})
    assert len(text) < MAX_BODY_CHARS + 100
    assert text.endswith("[… message tronqué]")
    assert len(html) < MAX_BODY_CHARS + 200


def test_html_falls_back_to_text_when_sanitising_leaves_nothing() -> None:
    _, html = matrix_to_email_html(
        {"msgtype": "m.text", "body": "visible", "format": "org.matrix.custom.html",
         "formatted_body": "<script>x</script>"}
    )  # fmt: skip
    assert html == "<p>visible</p>"


# --------------------------------------------------------------------------- templates

FORM = DemandeForm(
    territoire="95",
    organisations=("caf",),
    categorie="Social/Famille",
    objet="Blocage du versement",
    usager=Usager(
        prenom="Jeanne",
        nom="Martin",
        date_naissance=date(1980, 2, 1),
        numero_allocataire_caf="1234567",
    ),
    description="Ligne 1\n<script>x</script>",
    mandat=Mandat(type=MandatType.PAPIER, date=date(2026, 3, 1), attestation=True),
)


def test_footer_explains_reply_and_quick_answers() -> None:
    text, html = footer()
    assert text.startswith("-- \n")
    for cmd in ("!jemenoccupe", "!traitee", "!pasleboninterlocuteur"):
        assert cmd in text and cmd in html
    assert "répondre directement" in text
    assert "première ligne" in text


def test_new_demande_dossier() -> None:
    rendered = new_demande_email(
        reference="A-2026-000042", form=FORM, organisation_names=["CAF"],
        aidant_name="Paul Leroy", aidant_affiliation="France Services 95",
        attachment_names=["avis.pdf"],
    )  # fmt: skip
    assert rendered.what == "nouvelle demande"
    assert not rendered.auto_generated
    assert "Jeanne" in rendered.text and "01/02/1980" in rendered.text
    assert "Numéro allocataire CAF : 1234567" in rendered.text
    assert "papier, recueilli le 01/03/2026" in rendered.text
    assert "Paul Leroy (France Services 95)" in rendered.text
    assert "avis.pdf" in rendered.text
    assert "<script>" not in rendered.html and "&lt;script&gt;" in rendered.html
    # The subject built from the same call carries no usager data.
    subj = subject("A-2026-000042", ["CAF"], "95", rendered.what)
    assert "Jeanne" not in subj and "Martin" not in subj


def test_message_templates() -> None:
    msg = new_message_email(
        author_name="Marie Durand", author_affiliation="CAF 95",
        content={"msgtype": "m.text", "body": "Dossier débloqué"},
    )  # fmt: skip
    assert msg.text.startswith("Marie Durand (CAF 95) a écrit :\n\nDossier débloqué")
    assert not msg.auto_generated and msg.what == "nouveau message"
    edit = edited_message_email(
        author_name="Marie Durand", author_affiliation="CAF 95",
        new_content={"msgtype": "m.text", "body": "Corrigé"},
    )  # fmt: skip
    assert edit.what == "message corrigé" and "Corrigé" in edit.text
    gone = redacted_message_email(author_name="Marie Durand", author_affiliation="CAF 95")
    assert gone.what == "message retiré" and gone.auto_generated
    assert "retiré" in gone.text
    closed = closed_email(reference="A-1", by_name="Paul", by_affiliation="")
    assert closed.auto_generated and "clôturée par Paul." in closed.text
    reopened = reopened_email(reference="A-1", by_name="Paul", by_affiliation="FS")
    assert "rouverte par Paul (FS)" in reopened.text
    for r in (msg, edit, gone, closed, reopened):
        text, html = finish(r, kind=Footer.REPLY, reference="A-1", room_id="!r:srv.test")
        assert "!jemenoccupe" in text and html.startswith("<!DOCTYPE html>")


def test_the_room_link_is_in_the_html_only_and_each_footer_promises_what_it_can() -> None:
    body = action_email("prise en charge", "Marie Durand s'occupe de la demande.")
    text, html = finish(body, kind=Footer.REPLY, reference="A-1", room_id="!abc:srv.test")
    assert 'href="https://matrix.to/#/!abc:srv.test"' in html
    assert "http" not in text and "salon de la demande A-1" in text
    for cmd in ("!statut", "!inviter", "!notifications non", "!courriels"):
        assert cmd in text and cmd in html
    shared, shared_html = finish(body, kind=Footer.SHARED, reference="A-1", room_id=None)
    assert "répondre directement" not in shared and "on ne peut pas y répondre" in shared
    assert "!jemenoccupe" in shared and "matrix.to" not in shared_html
    notice, _ = finish(body, kind=Footer.NOTICE, reference="A-1", room_id=None)
    assert "répondre directement" not in notice and "Ne répondez pas" in notice


def test_the_dossier_lists_the_participants() -> None:
    rendered = new_demande_email(
        reference="A-2026-000042", form=FORM, organisation_names=["CAF"],
        aidant_name="Paul Leroy", aidant_affiliation="France Services 95",
        participants=["Paul Leroy (France Services 95)", "Sophie Test (CAF 95), par courriel"],
    )  # fmt: skip
    assert "Participants :\n  - Paul Leroy (France Services 95)\n  - Sophie Test" in rendered.text
    assert "<li>Sophie Test (CAF 95), par courriel</li>" in rendered.html


def test_template_names_cannot_inject_html() -> None:
    msg = new_message_email(
        author_name="<img src=x onerror=alert(1)>", author_affiliation="</p><script>",
        content={"msgtype": "m.text", "body": "x"},
    )  # fmt: skip
    assert "<img" not in msg.html and "<script" not in msg.html


# --------------------------------------------------------------------------- properties

header_text = st.text(
    alphabet=st.characters(codec="utf-8", categories=None), max_size=80
) | st.sampled_from(["\r\n", "=?utf-8?q?a=0D=0AX:y?=", "\u2028", "\x85", "a\rb"])


@settings(max_examples=150, deadline=None)
@given(header_text, header_text, header_text, header_text, header_text)
def test_built_headers_never_contain_line_breaks(
    ref: str, org: str, what: str, name: str, filename: str
) -> None:
    subj = subject(ref, [org], "95", what)
    assert "\r" not in subj and "\n" not in subj
    msg = _build(
        subject=subj,
        from_addr=mailbox(name, "notifications@aplus.example.fr"),
        to_addr=Address(display_name="x", addr_spec="a@b.fr"),
        attachments=[Attachment(filename, org, b"x")],
        message_id=message_id(ref, DOMAIN),
        in_reply_to=thread_headers(ref, DOMAIN, [org, what]).in_reply_to,
        references=thread_headers(ref, DOMAIN, [org, what]).references,
    )
    for line in _header_lines(msg):
        assert b"\r" not in line and b"\n" not in line
    for part in msg.walk():
        for value in part.values():
            assert "\r" not in str(value) and "\n" not in str(value)


class _TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def assert_inert(markup: str) -> None:
    collector = _TagCollector()
    collector.feed(markup)
    collector.close()
    for tag, attrs in collector.tags:
        assert tag not in ("script", "style", "iframe", "img", "object", "embed", "svg"), tag
        for name, value in attrs:
            assert not name.startswith("on"), name
            assert name in ("href", "rel", "start", "colspan"), name
            if name == "href":
                assert (value or "").lower().startswith(("http:", "https:", "mailto:")), value


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_sanitised_html_is_never_active(fragment: str) -> None:
    for candidate in (
        fragment,
        f"<script>{fragment}</script>",
        f'<a href="{fragment}" onclick="{fragment}">x</a>',
        f"<p {fragment}>y</p>",
        f"<img src={fragment}>",
    ):
        assert_inert(sanitise_html(candidate))


def test_assert_inert_detects_active_markup() -> None:
    with pytest.raises(AssertionError):
        assert_inert('<a href="javascript:x">y</a>')
    with pytest.raises(AssertionError):
        assert_inert('<p onclick="x">y</p>')


@pytest.mark.parametrize(
    "evil",
    ["=?utf-8?q?a=0D=0ABcc:_x@evil.fr?=", "=?utf-8?b?YQ0KQmNjOiB4QGV2aWwuZnI=?=", "=??Q?=0D"],
)
def test_encoded_words_in_our_strings_are_not_decoded(evil: str) -> None:
    msg = _build(
        subject=subject("A-1", [evil], "95", evil),
        from_addr=mailbox(evil, "notifications@aplus.example.fr"),
        attachments=[Attachment(evil, "application/pdf", b"x")],
    )
    raw = msg.as_bytes()
    assert b"\r\nBcc:" not in raw and b"\nBcc:" not in raw
    reparsed = BytesParser(policy=policy.default).parsebytes(raw)
    for value in reparsed.values():
        assert "\r" not in str(value) and "\n" not in str(value)
    assert "Bcc" not in reparsed


FULL_FORM = DemandeForm(
    territoire="95",
    organisations=("cpam",),
    categorie=None,
    objet="Carte Vitale",
    usager=Usager(
        prenom="Jeanne",
        nom="Martin",
        date_naissance=date(1980, 2, 1),
        nir="2 80 02 95 123 456 78",
        adresse="12 rue des Lilas, 95000 Cergy",
        telephone="06 12 34 56 78",
    ),
    description="Carte perdue.",
    mandat=Mandat(type=MandatType.PAPIER, date=date(2026, 3, 1), attestation=True),
)


@pytest.mark.parametrize("can_reply", [True, False])
def test_a_withheld_dossier_leaves_out_nir_address_and_phone_and_says_how_to_ask(
    can_reply: bool,
) -> None:
    full = new_demande_email(
        reference="A-1", form=FULL_FORM, organisation_names=["CPAM"], aidant_name="Paul",
        aidant_affiliation="FS",
    )  # fmt: skip
    assert "2 80 02 95 123 456 78" in full.text and "rue des Lilas" in full.text
    kept = new_demande_email(
        reference="A-1", form=FULL_FORM, organisation_names=["CPAM"], aidant_name="Paul",
        aidant_affiliation="FS", withhold_identifiers=True, can_reply=can_reply,
    )  # fmt: skip
    for value in ("2 80 02 95", "rue des Lilas", "06 12 34"):
        assert value not in kept.text and value not in kept.html
    assert "Jeanne" in kept.text  # the name stays: the demande is about her
    line = "ne contient pas le NIR, l'adresse ni le téléphone de l'usager"
    assert line in kept.text and line.replace("'", "&#x27;") in kept.html
    assert ("en répondant à ce courriel" in kept.text) is can_reply


def test_the_room_link_opens_the_configured_client() -> None:
    body = action_email("prise en charge", "Marie Durand s'occupe de la demande.")
    _, html = finish(
        body, kind=Footer.REPLY, reference="A-1", room_id="!abc:srv.test",
        client_url="https://element.example.fr/#/room/",
    )  # fmt: skip
    assert 'href="https://element.example.fr/#/room/!abc:srv.test"' in html
