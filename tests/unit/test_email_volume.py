"""How much mail an email-only agent gets: the digest's hour, the digest itself (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.domain.mail_volume import digest_hour
from bridge.render import Footer, action_email, digest_email, digest_entry, finish


@pytest.mark.parametrize(
    ("text", "hour"),
    [("", 17), ("17", 17), ("17h", 17), ("17 h", 17), ("8h00", 8), ("0", 0), ("23h", 23)],
)
def test_digest_hours_are_read_as_written(text: str, hour: int) -> None:
    assert digest_hour(text) == hour


@pytest.mark.parametrize("text", ["24", "midi", "-1", "17h30", "h"])
def test_what_is_not_an_hour_is_refused(text: str) -> None:
    assert digest_hour(text) is None


def test_a_digest_holds_each_email_of_the_day_with_its_time() -> None:
    entries = [
        digest_entry(action_email("prise en charge", "Marie s'occupe de la demande."),
                     at=datetime(2026, 3, 2, 8, 5, tzinfo=UTC)),
        digest_entry(action_email("nouveau message", "Le <b>dossier</b> est complet."),
                     at=datetime(2026, 3, 2, 13, 40, tzinfo=UTC)),
    ]  # fmt: skip
    digest = digest_email(entries, reference="A-2026-000042")
    assert digest.what == "résumé du jour" and digest.auto_generated
    text, html = finish(digest, kind=Footer.REPLY, reference="A-2026-000042", room_id="!r:s")
    assert "2 message(s)" in text
    assert "02/03 à 09:05 · prise en charge" in text  # Paris time
    assert "02/03 à 14:40 · nouveau message" in text
    assert text.index("Marie s'occupe") < text.index("dossier")
    assert "&lt;b&gt;dossier&lt;/b&gt;" in html and "<b>" not in html
