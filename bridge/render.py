"""Matrix → email rendering (pure: no I/O, no clock; ``date`` is a parameter).

Rules this module keeps:

* Every header value is built here from our own data and stripped of control
  characters (CR, LF, NUL, Unicode line separators, bidi controls). No inbound
  header is ever copied: CPython < 3.11.10 re-serialises an encoded newline as
  a real one (CVE-2024-6923).
* Subjects carry only the reference, organisation names, territory and what
  happened: never the usager's data (mail subjects end up in logs and previews).
* Each demande is one thread: a stable root Message-ID derived from the
  reference, and one stable Message-ID per bridged Matrix event.
* HTML coming from Matrix is sanitised with nh3 against a strict allow-list;
  remote images, scripts, styles and event handlers never reach a mailbox.

``Auto-Submitted`` (RFC 3834): a message relaying what a *person* wrote (the
dossier of a new demande, a message, a correction) gets no ``Auto-Submitted``
field — RFC 3834 §5 reserves ``auto-generated`` for messages made by an
automatic process, and a relay is no more "automatic" than a mailing list
forwarding a post; marking it would also have some clients file it away as
robot mail and hide it from the agent. Notifications the bot itself composes
(a message withdrawn, demande closed or reopened) are ``auto-generated``.
Every message asks Exchange not to send out-of-office replies
(``X-Auto-Response-Suppress``): the inbound side would only drop them.
"""

from __future__ import annotations

import hashlib
import html as html_lib
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date as Date
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from enum import StrEnum
from typing import NamedTuple

import nh3

from bot.domain.board import room_link
from bot.domain.calendar import PARIS
from bot.domain.model import DemandeForm, MandatType

__all__ = [
    "EMAIL_COMMANDS",
    "LOOP_HEADER",
    "MAX_BODY_CHARS",
    "Attachment",
    "Footer",
    "RenderedEmail",
    "ThreadHeaders",
    "UnsupportedContent",
    "action_email",
    "build_email",
    "clean_header_value",
    "closed_email",
    "command_answer_email",
    "digest_email",
    "digest_entry",
    "edited_message_email",
    "finish",
    "footer",
    "mailbox",
    "matrix_to_email_html",
    "message_id",
    "new_demande_email",
    "new_message_email",
    "notice_email",
    "redacted_message_email",
    "reopened_email",
    "room_url",
    "root_message_id",
    "sanitise_html",
    "subject",
    "thread_headers",
]

LOOP_HEADER = "X-Aplus-Loop"
MAX_BODY_CHARS = 100_000
_MAX_SUBJECT_CHARS = 250
_MAX_REFERENCES = 10
_TRUNCATED_NOTE = "[… message tronqué]"

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_MSGID_RE = re.compile(r"<[!-;=?-~]{1,200}@[A-Za-z0-9.-]{1,253}>")
_LOOP_MARKER_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CONTENT_TYPE_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_WS_RE = re.compile(r"\s+")


class UnsupportedContent(ValueError):
    """A Matrix event content we do not bridge (caller: ignore and log)."""


# --------------------------------------------------------------------------- headers


def _is_unsafe_char(ch: str) -> bool:
    # Cc: C0/C1 controls incl. CR, LF, NUL, NEL; Zl/Zp: U+2028/2029;
    # Cf: bidi overrides and zero-width characters (spoofing).
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs")


def clean_header_value(value: str, max_chars: int = 500) -> str:
    """One line of inert text: controls become spaces, runs of space collapse."""
    cleaned = "".join(" " if _is_unsafe_char(ch) else ch for ch in value)
    # The email package decodes "=?...?=" found in any header string it is
    # given, so an encoded CR/LF would come back: break every "=?".
    cleaned = cleaned.replace("=?", "= ?")
    cleaned = _WS_RE.sub(" ", cleaned).strip()
    if len(cleaned) > max_chars:
        cleaned = cleaned[: max_chars - 1].rstrip() + "…"
    return cleaned


def _check_domain(domain: str) -> str:
    if not domain.isascii() or _DOMAIN_RE.fullmatch(domain) is None:
        raise ValueError("invalid mail domain")
    return domain.lower()


def mailbox(display_name: str, addr_spec: str) -> Address:
    """An address with a cleaned display name; ``ValueError`` if ``addr_spec`` is bad."""
    addr = clean_header_value(addr_spec, 320)
    if addr != addr_spec.strip() or " " in addr:
        raise ValueError("invalid address")
    return Address(display_name=clean_header_value(display_name, 120), addr_spec=addr)


def _as_address(value: Address | str) -> Address:
    if isinstance(value, Address):
        return mailbox(value.display_name, value.addr_spec)
    return mailbox("", value)


def subject(reference: str, organisation_names: Sequence[str], territoire: str, what: str) -> str:
    """``[A+] Demande A-2026-000042 · CAF · 95 — nouveau message``.

    Callers pass metadata only; this function cannot tell a name from an
    organisation, so the rule "no usager data in subjects" is kept by passing
    nothing else (``what`` is one of the template labels).
    """
    orgs = ", ".join(o for o in (clean_header_value(n, 60) for n in organisation_names) if o)
    parts = [f"Demande {clean_header_value(reference, 40)}"]
    if orgs:
        parts.append(orgs)
    terr = clean_header_value(territoire, 10)
    if terr:
        parts.append(terr)
    text = "[A+] " + " · ".join(parts)
    label = clean_header_value(what, 80)
    if label:
        text += f" — {label}"
    return clean_header_value(text, _MAX_SUBJECT_CHARS)


def _hash_id(kind: bytes, value: str) -> str:
    data = b"aplus-" + kind + b"-v1\x00" + value.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:40]


def message_id(event_id: str, domain: str) -> str:
    """Stable Message-ID of the email bridging one Matrix event."""
    return f"<ev.{_hash_id(b'event', event_id)}@{_check_domain(domain)}>"


def root_message_id(reference: str, domain: str) -> str:
    """Stable Message-ID of a demande's first email: the root of its thread."""
    return f"<demande.{_hash_id(b'demande', reference)}@{_check_domain(domain)}>"


class ThreadHeaders(NamedTuple):
    in_reply_to: str
    references: str


def thread_headers(reference: str, domain: str, parent_message_ids: Sequence[str]) -> ThreadHeaders:
    """``In-Reply-To`` / ``References`` keeping every email of a demande in one thread.

    The root always comes first; then the most recent valid parents (anything
    not shaped like a msg-id is dropped, so nothing odd can ride along).
    """
    root = root_message_id(reference, domain)
    parents: list[str] = []
    for mid in parent_message_ids:
        mid = mid.strip()
        if _MSGID_RE.fullmatch(mid) and mid != root and mid not in parents:
            parents.append(mid)
    refs = [root, *parents[-(_MAX_REFERENCES - 1) :]]
    return ThreadHeaders(in_reply_to=refs[-1], references=" ".join(refs))


def _check_msgids(value: str) -> str:
    ids = value.split()
    if not ids or not all(_MSGID_RE.fullmatch(i) for i in ids):
        raise ValueError("invalid message-id list")
    return " ".join(ids)


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


def _attachment_filename(name: str) -> str:
    cleaned = clean_header_value(name.replace("/", "_").replace("\\", "_"), 150)
    cleaned = cleaned.lstrip(". ")
    return cleaned or "piece-jointe"


def _attachment_type(content_type: str) -> tuple[str, str]:
    ctype = content_type.strip().lower()
    if not _CONTENT_TYPE_RE.fullmatch(ctype) or ctype.split("/")[0] in ("multipart", "message"):
        ctype = "application/octet-stream"
    maintype, _, subtype = ctype.partition("/")
    return maintype, subtype


def _body_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(ch for ch in text if ch in "\n\t" or not _is_unsafe_char(ch))


def build_email(
    *,
    from_addr: Address | str,
    to_addr: Address | str,
    reply_to: Address | str | None,
    subject: str,
    message_id: str,
    in_reply_to: str | None,
    references: str | None,
    text: str,
    html: str,
    attachments: Sequence[Attachment] = (),
    loop_marker: str,
    auto_generated: bool = False,
    date: datetime | None = None,
) -> EmailMessage:
    """The outbound email: text + HTML alternative, attachments in multipart/mixed.

    ``ValueError`` for malformed addresses, Message-IDs or loop marker (those
    are ours: a bad one is a bug upstream); free text is cleaned, never refused.
    """
    if not _LOOP_MARKER_RE.fullmatch(loop_marker):
        raise ValueError("invalid loop marker")
    if _MSGID_RE.fullmatch(message_id) is None:
        raise ValueError("invalid message-id")
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = _as_address(from_addr)
    msg["To"] = _as_address(to_addr)
    if reply_to is not None:
        msg["Reply-To"] = _as_address(reply_to)
    msg["Subject"] = clean_header_value(subject, _MAX_SUBJECT_CHARS)
    if date is not None:
        msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = _check_msgids(in_reply_to)
    if references:
        msg["References"] = _check_msgids(references)
    if auto_generated:
        msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "OOF, AutoReply"
    msg[LOOP_HEADER] = loop_marker
    msg.set_content(_body_text(text), subtype="plain", charset="utf-8")
    msg.add_alternative(_body_text(html), subtype="html", charset="utf-8")
    for att in attachments:
        maintype, subtype = _attachment_type(att.content_type)
        msg.add_attachment(
            att.data,
            maintype=maintype,
            subtype=subtype,
            filename=_attachment_filename(att.filename),
        )
    return msg


# --------------------------------------------------------------------------- Matrix content

_ALLOWED_TAGS = {
    "a", "b", "blockquote", "br", "caption", "code", "del", "div", "em",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "li", "ol", "p", "pre",
    "s", "span", "strike", "strong", "sub", "sup", "table", "tbody", "td",
    "tfoot", "th", "thead", "tr", "u", "ul",
}  # fmt: skip
# Removed together with everything inside them.
_DROPPED_WITH_CONTENT = {
    "embed", "frame", "frameset", "head", "iframe", "math", "mx-reply",
    "noembed", "noframes", "noscript", "object", "plaintext", "script",
    "select", "style", "svg", "template", "textarea", "title", "xmp",
}  # fmt: skip
_CLEANER = nh3.Cleaner(
    tags=_ALLOWED_TAGS,
    clean_content_tags=_DROPPED_WITH_CONTENT,
    attributes={"a": {"href"}, "ol": {"start"}, "td": {"colspan"}, "th": {"colspan"}},
    url_schemes={"http", "https", "mailto"},
    url_relative="deny",
    link_rel="noopener noreferrer",
    strip_comments=True,
)


def sanitise_html(fragment: str) -> str:
    """Sanitised HTML fragment: allow-listed tags, http(s)/mailto links only."""
    return _CLEANER.clean(fragment)


def _truncate(text: str) -> str:
    if len(text) <= MAX_BODY_CHARS:
        return text
    return text[:MAX_BODY_CHARS] + "\n" + _TRUNCATED_NOTE


def _strip_reply_fallback(body: str) -> str:
    """Drop the leading ``> `` block a Matrix reply carries, and the blank line after."""
    lines = body.split("\n")
    i = 0
    while i < len(lines) and lines[i].startswith(">"):
        i += 1
    if i == 0:
        return body
    if i < len(lines) and lines[i].strip() == "":
        i += 1
    return "\n".join(lines[i:])


def _text_to_html(text: str) -> str:
    paragraphs = [p for p in re.split(r"\n{2,}", text) if p.strip()]
    return "".join(
        "<p>" + "<br>".join(html_lib.escape(line) for line in p.split("\n")) + "</p>"
        for p in paragraphs
    )


def _is_reply(content: Mapping[str, object]) -> bool:
    rel = content.get("m.relates_to")
    return isinstance(rel, Mapping) and isinstance(rel.get("m.in_reply_to"), Mapping)


def matrix_to_email_html(content: Mapping[str, object]) -> tuple[str, str]:
    """``(text, sanitised html)`` of an ``m.room.message`` content.

    Raises :class:`UnsupportedContent` for missing fields or unknown msgtypes.
    Files are announced by name only; the caller attaches the decrypted file.
    """
    msgtype = content.get("msgtype")
    body = content.get("body")
    if not isinstance(msgtype, str) or not isinstance(body, str):
        raise UnsupportedContent("missing msgtype or body")
    if msgtype in ("m.file", "m.image", "m.audio", "m.video"):
        filename = content.get("filename")
        name = clean_header_value(filename if isinstance(filename, str) and filename else body, 150)
        text = f"Pièce jointe : {name or 'fichier'}"
        return text, f"<p>{html_lib.escape(text)}</p>"
    if msgtype not in ("m.text", "m.notice", "m.emote"):
        raise UnsupportedContent(f"unsupported msgtype {msgtype[:50]!r}")
    text = _body_text(_truncate(body))
    if _is_reply(content):
        text = _strip_reply_fallback(text)
    text = text.strip("\n")
    html = ""
    formatted = content.get("formatted_body")
    if content.get("format") == "org.matrix.custom.html" and isinstance(formatted, str):
        html = sanitise_html(_truncate(formatted)).strip()
    if not html:
        html = _text_to_html(text)
    if msgtype == "m.emote":
        text = f"* {text}"
        html = f"<p>* </p>{html}"
    return text, html


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    """A rendered body; ``what`` is the subject's label (see :func:`subject`)."""

    what: str
    text: str
    html: str
    auto_generated: bool


QUICK_ANSWERS = (
    ("!jemenoccupe", "je m'en occupe"),
    ("!traitee", "j'ai traité la demande"),
    ("!pasleboninterlocuteur", "je ne suis pas le bon interlocuteur"),
)
# Other commands an email-only participant may write on the first line (the room's own).
EMAIL_COMMANDS = (
    ("!statut", "le statut et les participants, par courriel"),
    ("!inviter <groupe, nom ou courriel>", "inviter un groupe ou un collègue"),
    ("!notifications non", "ne plus recevoir les courriels de cette demande (oui : reprendre)"),
    ("!courriels quotidien 17", "un résumé par jour à 17 h (immediat : chaque message)"),
)
_SIGNATURE = "Administration+ — messagerie sécurisée des services publics."


class Footer(StrEnum):
    """Who the email is for, hence what its footer may promise."""

    REPLY = "reply"  # an email-only participant, with a reply address of their own
    SHARED = "shared"  # a group's shared mailbox (BAL): no reply address
    NOTICE = "notice"  # a Matrix agent's notice: no content, no reply address


def footer(kind: Footer = Footer.REPLY) -> tuple[str, str]:
    """(text, html) of the footer of an email for `kind` of recipient."""
    esc = html_lib.escape
    if kind is Footer.SHARED:
        paragraphs = [
            "Ce courriel est adressé à la boîte partagée de votre groupe : on ne peut pas "
            "y répondre (aucune adresse de réponse).",
            "Pour répondre ou prendre la demande, un instructeur de votre groupe qui participe "
            "à la demande écrit dans le salon Matrix de la demande, ou répond au courriel reçu "
            "à sa propre adresse en écrivant !jemenoccupe sur la première ligne.",
            _SIGNATURE,
        ]
        text = "-- \n" + "\n".join(paragraphs)
        return text, "<hr>" + "".join(f"<p>{esc(p)}</p>" for p in paragraphs)
    if kind is Footer.NOTICE:
        paragraphs = [
            "Pour ne plus recevoir ces avis, écrivez !notifications non dans le salon de la "
            "demande. Ne répondez pas à ce courriel (aucune adresse de réponse).",
            _SIGNATURE,
        ]
        text = "-- \n" + "\n".join(paragraphs)
        return text, "<hr>" + "".join(f"<p>{esc(p)}</p>" for p in paragraphs)
    lines = [
        "Vous pouvez répondre directement à ce courriel : votre réponse sera ajoutée "
        "à la demande et lue par les autres participants.",
        "Réponses rapides : écrivez seule, sur la première ligne de votre réponse, "
        "l'une de ces commandes :",
        *(f"  {cmd} ({label})" for cmd, label in QUICK_ANSWERS),
        "Autres commandes, de la même façon :",
        *(f"  {cmd} ({label})" for cmd, label in EMAIL_COMMANDS),
        "Cette adresse de réponse vous est personnelle : ne transférez pas ce courriel, "
        "une réponse envoyée depuis une autre adresse serait refusée.",
        _SIGNATURE,
    ]
    text = "-- \n" + "\n".join(lines)

    def items(pairs: Sequence[tuple[str, str]]) -> str:
        return "".join(f"<li><code>{esc(cmd)}</code> ({esc(label)})</li>" for cmd, label in pairs)

    html = (
        f"<hr><p>{esc(lines[0])}</p><p>{esc(lines[1])}</p><ul>{items(QUICK_ANSWERS)}</ul>"
        f"<p>{esc('Autres commandes, de la même façon :')}</p><ul>{items(EMAIL_COMMANDS)}</ul>"
        f"<p>{esc(lines[-2])}</p><p>{esc(lines[-1])}</p>"
    )
    return text, html


def room_url(room_id: str, client_url: str | None = None) -> str:
    """The link that opens a room: the configured client's (`bot.client_url`), or
    matrix.to (Element and other clients open it)."""
    return room_link(room_id, client_url)


def finish(
    rendered: RenderedEmail,
    *,
    kind: Footer,
    reference: str,
    room_id: str | None,
    client_url: str | None = None,
) -> tuple[str, str]:
    """(text, html) as sent: the body, where the room is, the footer for `kind`.

    The plain text has no link at all (some mail systems rewrite or flag them); the
    HTML part links to the demande's room for agents who also use Matrix."""
    foot_text, foot_html = footer(kind)
    ref = clean_header_value(reference, 40)
    text = rendered.text.rstrip()
    html_body = rendered.html
    if room_id:
        where = f"Si vous utilisez aussi Matrix (Element) : salon de la demande {ref}."
        text += f"\n\n{where}"
        href = html_lib.escape(room_url(room_id, client_url), quote=True)
        html_body += (
            f'<p>Si vous utilisez aussi Matrix (Element) : <a href="{href}">ouvrir le salon '
            f"de la demande {html_lib.escape(ref)}</a>.</p>"
        )
    document = (
        '<!DOCTYPE html><html lang="fr"><head><meta charset="utf-8">'
        f"<title>{html_lib.escape(rendered.what)}</title></head>"
        f"<body>{html_body}{foot_html}</body></html>"
    )
    return f"{text}\n\n{foot_text}\n", document


def _render(what: str, text: str, html_body: str, *, auto_generated: bool) -> RenderedEmail:
    """A body without footer (see `finish`)."""
    return RenderedEmail(
        what=what, text=text.rstrip(), html=html_body, auto_generated=auto_generated
    )


def _label(name: str, affiliation: str) -> str:
    """« Marie Durand (CAF 95) »."""
    name = clean_header_value(name, 120) or "Un participant"
    affiliation = clean_header_value(affiliation, 120)
    return f"{name} ({affiliation})" if affiliation else name


def _fr_date(d: Date) -> str:
    return d.strftime("%d/%m/%Y")


_MANDAT_LABELS = {
    MandatType.PAPIER: "papier",
    MandatType.ORAL: "oral",
    MandatType.SMS: "SMS",
}


def new_demande_email(
    *,
    reference: str,
    form: DemandeForm,
    organisation_names: Sequence[str],
    aidant_name: str,
    aidant_affiliation: str,
    attachment_names: Sequence[str] = (),
    participants: Sequence[str] = (),
    withhold_identifiers: bool = False,
    can_reply: bool = True,
) -> RenderedEmail:
    """The dossier sent to an email-only agent when a demande reaches them.

    `participants`: who takes part (« Marie Durand (CAF 95) »), as the Matrix dossier
    lists them."""
    usager = form.usager
    fields: list[tuple[str, str]] = [
        ("Prénom", usager.prenom),
        ("Nom", usager.nom),
        ("Date de naissance", _fr_date(usager.date_naissance)),
    ]
    optional = (
        ("NIR", usager.nir),
        ("Numéro allocataire CAF", usager.numero_allocataire_caf),
        ("Numéro fiscal (NIF)", usager.nif),
        ("Adresse", usager.adresse),
        ("Téléphone", usager.telephone),
    )
    withheld = [k for k, v in optional if v and withhold_identifiers and k in WITHHELD]
    fields += [(k, v) for k, v in optional if v and k not in withheld]
    mandat = form.mandat
    mandat_text = (
        f"{_MANDAT_LABELS.get(mandat.type, str(mandat.type))}, recueilli le {_fr_date(mandat.date)}"
    )
    if mandat.attestation:
        mandat_text += " (attesté par l'aidant)"
    ref = clean_header_value(reference, 40)
    orgs = ", ".join(clean_header_value(o, 60) for o in organisation_names)
    aidant = _label(aidant_name, aidant_affiliation)
    head = [
        f"Nouvelle demande {ref} (territoire {clean_header_value(form.territoire, 10)})",
        f"Ouverte par {aidant}, à l'attention de : {orgs}",
        "",
        f"Objet : {clean_header_value(form.objet, 200)}",
    ]
    if form.categorie:
        head.append(f"Catégorie : {clean_header_value(form.categorie, 80)}")
    description = _body_text(_truncate(form.description)).strip()
    text_lines = [
        *head,
        "",
        "Usager",
        *(f"  {k} : {clean_header_value(v, 300)}" for k, v in fields),
        f"Mandat : {mandat_text}",
        "",
        "Description :",
        description,
    ]
    names = [clean_header_value(n, 150) for n in attachment_names]
    if names:
        text_lines += ["", "Pièces jointes : " + ", ".join(names)]
    withheld_line = ""
    if withheld:
        ask = (
            "demandez-les en répondant à ce courriel : l'aidant les lira dans la demande."
            if can_reply
            else "un instructeur de la demande peut les demander à l'aidant."
        )
        withheld_line = (
            "Par confidentialité, ce courriel ne contient pas "
            + _french_list([WITHHELD[k] for k in withheld])
            + f" de l'usager : {ask}"
        )
        text_lines += ["", withheld_line]
    people = [clean_header_value(n, 160) for n in participants]
    if people:
        text_lines += ["", "Participants :", *(f"  - {n}" for n in people)]
    esc = html_lib.escape
    html = (
        f"<h1>{esc(head[0])}</h1><p>{esc(head[1])}</p>"
        + "".join(f"<p>{esc(line)}</p>" for line in head[3:])
        + "<h2>Usager</h2><ul>"
        + "".join(f"<li>{esc(k)} : {esc(clean_header_value(v, 300))}</li>" for k, v in fields)
        + f"</ul><p>Mandat : {esc(mandat_text)}</p><h2>Description</h2>"
        + _text_to_html(description)
    )
    if names:
        html += f"<p>Pièces jointes : {esc(', '.join(names))}</p>"
    if withheld_line:
        html += f"<p>{esc(withheld_line)}</p>"
    if people:
        html += "<h2>Participants</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in people)
        html += "</ul>"
    return _render("nouvelle demande", "\n".join(text_lines), html, auto_generated=False)


# The optional identifiers an organisation may keep out of emails, as the dossier names them.
WITHHELD = {"NIR": "le NIR", "Adresse": "l'adresse", "Téléphone": "le téléphone"}


def _french_list(items: Sequence[str]) -> str:
    """« le NIR, l'adresse ni le téléphone » (a negative sentence's list)."""
    if len(items) < 2:
        return "".join(items)
    return ", ".join(items[:-1]) + " ni " + items[-1]


def new_message_email(
    *, author_name: str, author_affiliation: str, content: Mapping[str, object]
) -> RenderedEmail:
    """« Marie Durand (CAF 95) a écrit : … ». Raises :class:`UnsupportedContent`."""
    text, html = matrix_to_email_html(content)
    intro = f"{_label(author_name, author_affiliation)} a écrit :"
    return _render(
        "nouveau message",
        f"{intro}\n\n{text}",
        f"<p>{html_lib.escape(intro)}</p><blockquote>{html}</blockquote>",
        auto_generated=False,
    )


def edited_message_email(
    *, author_name: str, author_affiliation: str, new_content: Mapping[str, object]
) -> RenderedEmail:
    """A correction (``m.new_content`` of an edit). Raises :class:`UnsupportedContent`."""
    text, html = matrix_to_email_html(new_content)
    intro = f"{_label(author_name, author_affiliation)} a corrigé son message. Nouvelle version :"
    return _render(
        "message corrigé",
        f"{intro}\n\n{text}",
        f"<p>{html_lib.escape(intro)}</p><blockquote>{html}</blockquote>",
        auto_generated=False,
    )


def agent_notice_email(what: str, text: str, html_body: str) -> RenderedEmail:
    """A message from the service to one agent, outside any demande (no reply address)."""
    note = (
        "Ce message vous est adressé par le service ; il ne contient aucune donnée "
        "d'usager. N'y répondez pas : ouvrez la demande concernée pour agir."
    )
    signature = "Administration+ — messagerie sécurisée des services publics."
    return RenderedEmail(
        what=what,
        text=f"{text.rstrip()}\n\n-- \n{note}\n{signature}\n",
        html=(
            '<!DOCTYPE html><html lang="fr"><head><meta charset="utf-8">'
            f"<title>{html_lib.escape(what)}</title></head><body>{html_body}"
            f"<hr><p>{html_lib.escape(note)}</p><p>{html_lib.escape(signature)}</p></body></html>"
        ),
        auto_generated=True,
    )


def redacted_message_email(*, author_name: str, author_affiliation: str) -> RenderedEmail:
    text = (
        f"Un message de {_label(author_name, author_affiliation)} a été retiré de la demande. "
        "Merci de ne plus en tenir compte."
    )
    return _render("message retiré", text, f"<p>{html_lib.escape(text)}</p>", auto_generated=True)


def closed_email(*, reference: str, by_name: str, by_affiliation: str) -> RenderedEmail:
    text = (
        f"La demande {clean_header_value(reference, 40)} a été clôturée par "
        f"{_label(by_name, by_affiliation)}."
    )
    return _render("demande clôturée", text, f"<p>{html_lib.escape(text)}</p>", auto_generated=True)


def reopened_email(*, reference: str, by_name: str, by_affiliation: str) -> RenderedEmail:
    text = (
        f"La demande {clean_header_value(reference, 40)} a été rouverte par "
        f"{_label(by_name, by_affiliation)}."
    )
    return _render("demande rouverte", text, f"<p>{html_lib.escape(text)}</p>", auto_generated=True)


def notice_email(reference: str, what: str, happened: str) -> RenderedEmail:
    """A Matrix agent's notice (``!notifications oui``): that something happened, no content."""
    ref = clean_header_value(reference, 40)
    text = (
        f"{happened} (demande {ref}).\n\n"
        "Ouvrez Element, votre messagerie Matrix, pour la lire : ce courriel n'en contient "
        "rien, par confidentialité."
    )
    return _render(what, text, _text_to_html(text), auto_generated=True)


def action_email(what: str, text: str) -> RenderedEmail:
    """What a colleague did (« Marie Durand s'occupe de la demande. »), short."""
    body = _body_text(text).strip()
    return _render(what, body, _text_to_html(body), auto_generated=True)


def command_answer_email(command: str, text: str) -> RenderedEmail:
    """The answer to a command an agent sent by email."""
    cmd = clean_header_value(command, 60)
    intro = f"Réponse à votre commande {cmd} :" if cmd else "Réponse à votre courriel :"
    body = f"{intro}\n\n{_body_text(text).strip()}"
    return _render("réponse à votre commande", body, _text_to_html(body), auto_generated=True)


def digest_entry(rendered: RenderedEmail, *, at: datetime) -> bytes:
    """One email held for a digest, as stored (sealed by the store): JSON."""
    return json.dumps(
        {"what": rendered.what, "text": rendered.text, "html": rendered.html, "at": at.isoformat()},
        ensure_ascii=False,
    ).encode("utf-8")


def digest_email(entries: Sequence[bytes], *, reference: str) -> RenderedEmail:
    """A day's emails of one demande in one: each with its time (Paris) and what it was."""
    items = [json.loads(e) for e in entries]
    ref = clean_header_value(reference, 40)
    intro = f"Résumé du jour de la demande {ref} : {len(items)} message(s)."
    texts = [intro]
    htmls = [f"<p>{html_lib.escape(intro)}</p>"]
    for item in items:
        when = datetime.fromisoformat(item["at"]).astimezone(PARIS).strftime("%d/%m à %H:%M")
        head = f"— {when} · {clean_header_value(str(item['what']), 80)}"
        texts += ["", head, str(item["text"])]
        htmls.append(f"<h3>{html_lib.escape(head)}</h3><div>{item['html']}</div>")
    return _render("résumé du jour", "\n".join(texts), "".join(htmls), auto_generated=True)
