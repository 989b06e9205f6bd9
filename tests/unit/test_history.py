"""The copy of the earlier exchange for a late participant: parts, files, size limit."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import vodozemac

from bot.domain.history import (
    PART_BUDGET_BYTES,
    UNREADABLE,
    EarlierMessage,
    FilePart,
    TextPart,
    history_parts,
)
from bot.matrix import content as mx

T0 = datetime(2026, 3, 10, 14, 2, tzinfo=UTC)
FILE = {"msgtype": "m.file", "body": "avis.pdf", "file": {"url": "mxc://hs/abc"}}
MATRIX_EVENT_LIMIT = 65_536


def msg(i: int, text: str | None = "Bonjour", **kw: object) -> EarlierMessage:
    return EarlierMessage(at=T0 + timedelta(minutes=i), author=f"Agent {i}", text=text, **kw)  # type: ignore[arg-type]


def test_nothing_to_copy() -> None:
    assert history_parts([], newcomer="Céline") == []


def test_one_part_with_author_time_and_text_escaped() -> None:
    [part] = history_parts([msg(0, "a < b & c"), msg(1, None)], newcomer="Céline Test (CPAM)")
    assert isinstance(part, TextPart)
    assert part.body.startswith("Copie des échanges précédents, pour Céline Test (CPAM)")
    assert "— Agent 0, le 10/03/2026 à 14:02 :\na < b & c" in part.body
    assert "a &lt; b &amp; c" in part.html and "<strong>Agent 0, le 10/03/2026" in part.html
    assert UNREADABLE in part.body


def test_files_keep_their_place_between_numbered_text_parts() -> None:
    parts = history_parts(
        [msg(0, "avant"), msg(1, None, file=FILE), msg(2, "après")], newcomer="Céline"
    )
    assert [type(p) for p in parts] == [TextPart, FilePart, TextPart]
    first, file, last = parts
    assert isinstance(first, TextPart) and isinstance(last, TextPart)
    assert "(1/2)" in first.body and "Fichier « avis.pdf » (recopié ci-après)" in first.body
    assert isinstance(file, FilePart) and file.content == FILE
    assert "(2/2)" in last.body and "après" in last.body


def test_long_exchanges_split_under_the_event_size_limit() -> None:
    # 400 messages of 1,000 accented characters (2 bytes each in UTF-8), one of 30,000.
    messages = [msg(i, "é" * 1_000) for i in range(400)] + [msg(401, "z" * 30_000)]
    parts = history_parts(messages, newcomer="Céline")
    assert len(parts) > 10
    session = vodozemac.GroupSession()
    for part in parts:
        assert isinstance(part, TextPart)
        assert len(part.body.encode()) + len(part.html.encode()) <= PART_BUDGET_BYTES
        # As the bot sends it: the notice, encrypted in an m.room.encrypted event.
        plaintext = json.dumps(
            {
                "type": "m.room.message",
                "room_id": "!r:hs",
                "content": mx.notice(part.body, part.html),
            },
            ensure_ascii=False,
        ).encode()
        ciphertext = session.encrypt(plaintext).to_base64()
        event = {
            "type": "m.room.encrypted",
            "content": {
                "algorithm": "m.megolm.v1.aes-sha2",
                "ciphertext": ciphertext,
                "sender_key": "k" * 43,
                "device_id": "ABCDEFGHIJ",
                "session_id": "s" * 43,
            },
            "sender": "@bot:serveur.example",
            "room_id": "!" + "r" * 40 + ":serveur.example",
            "event_id": "$" + "e" * 43,
            "origin_server_ts": 1_770_000_000_000,
        }
        assert len(json.dumps(event).encode()) < MATRIX_EVENT_LIMIT * 0.75
    bodies = "".join(p.body for p in parts if isinstance(p, TextPart))
    assert bodies.count("é" * 1_000) == 400
    assert bodies.count("z") >= 30_000 and "(suite)" in bodies
    assert f"({len(parts)}/{len(parts)})" in parts[-1].body  # type: ignore[union-attr]
