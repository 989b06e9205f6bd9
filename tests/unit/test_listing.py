"""Listings stay within the message budget: whole when small, else pages plus a CSV file."""

from __future__ import annotations

import csv
import io

import pytest

from bot.commands.framework import (
    LISTING_BUDGET,
    PAGE_ROWS,
    Listing,
    Reply,
    listing_reply,
    message_size,
    page_word,
)

HEADERS = ("N°", "Nom", "Courriel")


def rows(n: int, name: str = "Agent") -> list[list[object]]:
    return [[i, f"{name} Élodie n° {i}", f"agent{i}@caf.example.test"] for i in range(1, n + 1)]


def listing(n: int, **kw: object) -> Listing:
    return Listing(
        title=f"Agents ({n})",
        headers=HEADERS,
        rows=kw.pop("rows", None) or rows(n),  # type: ignore[arg-type]
        command="!agents page={page}",
        filename="agents.csv",
    )


def test_a_small_listing_is_one_message_without_file() -> None:
    reply = listing_reply(listing(120))
    assert "Agent Élodie n° 120" in reply.text and reply.attachments == ()
    assert "page" not in reply.text
    assert message_size(reply.text, reply.html) <= LISTING_BUDGET


def test_a_national_listing_is_paged_within_the_budget_with_every_row_in_a_file() -> None:
    big = listing(8000)
    first = listing_reply(big)
    assert message_size(first.text, first.html) <= LISTING_BUDGET
    assert "page 1/160, lignes 1 à 50" in first.text and "!agents page=2" in first.text
    (attached,) = first.attachments
    assert attached.filename == "agents.csv" and attached.content_type == "text/csv"
    table = list(csv.reader(io.StringIO(attached.data.decode("utf-8-sig")), delimiter=";"))
    assert tuple(table[0]) == HEADERS and len(table) == 8001 and table[-1][0] == "8000"

    last = listing_reply(big, 160)
    assert "lignes 7951 à 8000" in last.text and "dernière page" in last.text
    assert "Agent Élodie n° 8000" in last.text and "n° 7950 " not in last.text
    assert listing_reply(big, 161).is_error


def test_long_cells_shrink_the_pages_and_are_cut_in_the_message_only() -> None:
    long = rows(300, name="Très-long-nom-à-rallonge " * 30)
    reply = listing_reply(listing(300, rows=long))
    assert message_size(reply.text, reply.html) <= LISTING_BUDGET
    shown = int(reply.text.split("lignes 1 à ", 1)[1].split()[0])
    assert 1 <= shown < PAGE_ROWS
    assert "…" in reply.text
    assert b"rallonge Tr" in reply.attachments[0].data  # whole in the file


def test_a_formula_in_a_cell_is_neutralised_in_the_file() -> None:
    evil = [[i, '=HYPERLINK("http://x")', "a@b.test"] for i in range(3000)]
    (attached,) = listing_reply(listing(3000, rows=evil)).attachments
    assert "'=HYPERLINK" in attached.data.decode("utf-8-sig")


def test_page_word() -> None:
    assert page_word("dupont page=3 caf") == ("dupont caf", 3)
    assert page_word(None) == ("", 1)
    assert page_word("PAGE=2") == ("", 2)
    for bad in ("page=0", "page=x", "page="):
        with pytest.raises(ValueError, match="page"):
            page_word(bad)


def test_every_table_reply_is_bounded_even_without_pages() -> None:
    reply = Reply.table(HEADERS, rows(8000), title="Journal d'audit (8000)")
    assert message_size(reply.text, reply.html) <= LISTING_BUDGET
    assert "les 50 premières lignes sur 8000" in reply.text and "page" not in reply.text
    (attached,) = reply.attachments
    assert attached.filename == "journal-d-audit.csv"
    assert attached.data.decode("utf-8-sig").count("\r\n") == 8001
    small = Reply.table(HEADERS, rows(3), title="Agents (3)")
    assert small.attachments == () and "Agent Élodie n° 3" in small.text
    assert Reply.table(HEADERS, rows(3), title="Agents (3)", page=2).is_error
