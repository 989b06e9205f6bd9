"""The opening form goes through Element's composer unchanged: rendered with the
Markdown library Element Web uses (commonmark.js, tests/interop/markdown.mjs), the
template, a filled form and the draft that `!brouillon` shows are plain text, where
the « # » explanation lines of the old template were headings."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from bot.domain import form as f
from tests.support.interop import INTEROP_DIR, ensure_node_modules

OLD_TEMPLATE_LINES = (
    "# FORMULAIRE DE DEMANDE — copiez tout ce message.\n# Code du département.\nterritoire :"
)


def _element_markdown(text: str) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed to render with Element's Markdown library")
    ensure_node_modules()
    result = subprocess.run(
        [node, str(INTEROP_DIR / "markdown.mjs")],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rendered: dict[str, Any] = json.loads(result.stdout)
    return rendered


def test_the_old_template_became_headings() -> None:
    rendered = _element_markdown(OLD_TEMPLATE_LINES)
    assert not rendered["plain"]
    assert "heading" in rendered["types"] and "<h1>" in rendered["html"]


def test_template_filled_form_and_draft_stay_plain_text_in_element() -> None:
    filled = (
        f.FORM_TEMPLATE.replace("territoire :", "territoire : Val-d'Oise")
        .replace("nom :", "nom : Dupontel")
        .replace("date du mandat :", "date du mandat : aujourd'hui")
        .replace("description :", "description :\nLe versement est suspendu.\n")
    )
    draft = f.DraftFields().merged(f.read_fields(filled))
    for text in (f.FORM_TEMPLATE, filled, f.render_draft(draft)):
        rendered = _element_markdown(text)
        assert rendered["plain"], rendered["types"]
        assert "<h1>" not in rendered["html"] and "<ul>" not in rendered["html"]
    # What the aidant writes in the description is theirs (a list stays a list), and the
    # explanation lines around it stay plain.
    listed = filled.replace("Le versement est suspendu.", "- le versement est suspendu")
    rendered = _element_markdown(listed)
    assert "heading" not in rendered["types"] and "block_quote" not in rendered["types"]
