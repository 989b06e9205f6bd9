"""What the listener parsed, kept as bytes and read back by posting: nothing lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.inbound import stored
from bridge.inbound.parse import parse_inbound

CORPUS = Path(__file__).parent / "corpus"
ALLOWED = ("application/pdf", "image/jpeg", "image/png", "text/plain")


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.eml")), ids=lambda p: p.stem)
def test_every_corpus_mail_reads_back_as_parsed(path: Path) -> None:
    mail = parse_inbound(
        path.read_bytes(),
        max_attachment_bytes=1024 * 1024,
        allowed_types=ALLOWED,
        trusted_authserv_ids=("mx.aplus.example.fr",),
    )
    assert stored.decode(stored.encode(mail)) == mail


def test_attachments_keep_their_bytes_and_a_damaged_blob_is_refused() -> None:
    raw = (
        b"From: a@caf.fr\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\n!traitee\r\nVoici.\r\n"
        b'--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="a.pdf"'
        b"\r\n\r\n%PDF-1.4 un\r\n"
        b'--b\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename="b.png"'
        b"\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgoAAAANSUhEUgAAAAE=\r\n--b--\r\n"
    )
    mail = parse_inbound(raw, max_attachment_bytes=1024, allowed_types=ALLOWED)
    assert len(mail.attachments) == 2 and mail.command is not None
    back = stored.decode(stored.encode(mail))
    assert back == mail and [a.data for a in back.attachments] == [a.data for a in mail.attachments]
    with pytest.raises(ValueError):
        stored.decode(stored.encode(mail)[:-1])
