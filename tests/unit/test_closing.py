"""Closing words, reactions and poll answers all mean the same three answers."""

from __future__ import annotations

import pytest

from bot.domain import closing
from bot.domain.dossier import NOTICE_TRAITEE, notice_closed
from bot.domain.model import Usefulness


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("oui", Usefulness.UTILE),
        ("OUI", Usefulness.UTILE),
        ("utile", Usefulness.UTILE),
        ("non", Usefulness.INUTILE),
        ("Inutile", Usefulness.INUTILE),
        ("je ne sais pas", Usefulness.NESAISPAS),
        ("Je ne sais pas.", Usefulness.NESAISPAS),
        ("nesaispas", Usefulness.NESAISPAS),
        ("jsp", Usefulness.NESAISPAS),
        ("peut-être", None),
        ("", None),
    ],
)
def test_the_words_of_clore(typed: str, meant: Usefulness | None) -> None:
    assert closing.usefulness_of(typed) is meant


def test_the_notice_offers_the_words_clore_takes() -> None:
    for usefulness, word in closing.WORDS.items():
        assert f"!clore {word}" in NOTICE_TRAITEE
        assert closing.usefulness_of(word) is usefulness
        assert notice_closed(usefulness).endswith(f"utile pour l'usager : {word}.")


def test_reactions_with_variation_selectors_and_skin_tones() -> None:
    assert closing.of_reaction("👍") is Usefulness.UTILE
    assert closing.of_reaction("👍\ufe0f") is Usefulness.UTILE
    assert closing.of_reaction("👎🏽") is Usefulness.INUTILE
    assert closing.of_reaction("🤷") is Usefulness.NESAISPAS
    assert closing.of_reaction("🎉") is None


def test_poll_content_has_the_spec_and_element_forms() -> None:
    content = closing.poll_content("A-2026-000042")
    stable = content["m.poll"]["answers"]
    unstable = content["org.matrix.msc3381.poll.start"]["answers"]
    assert [a["m.id"] for a in stable] == [a["id"] for a in unstable]
    assert {a["m.id"] for a in stable} == {u.value for u in Usefulness}
    assert "A-2026-000042" in content["m.text"][0]["body"]
    assert content["m.mentions"] == {}


def test_poll_answers_in_either_form() -> None:
    relates = {"rel_type": "m.reference", "event_id": "$poll"}
    stable = {"m.relates_to": relates, "m.selections": ["inutile"]}
    unstable = {
        "m.relates_to": relates,
        "org.matrix.msc3381.poll.response": {"answers": ["nesaispas"]},
    }
    assert closing.poll_answer(stable) == ("$poll", Usefulness.INUTILE)
    assert closing.poll_answer(unstable) == ("$poll", Usefulness.NESAISPAS)
    assert closing.poll_answer({"m.relates_to": relates, "m.selections": []}) is None
    assert closing.poll_answer({"m.selections": ["utile"]}) is None
    assert closing.poll_answer({"m.relates_to": relates, "m.selections": ["bof"]}) is None
