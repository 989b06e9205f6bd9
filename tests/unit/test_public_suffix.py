"""The Public Suffix List, shipped as data: registries never vouch for the domains below."""

from __future__ import annotations

from bridge.inbound.authres import dkim_aligned
from bridge.inbound.public_suffix import DATA_FILE, is_public_suffix, public_suffix


def test_the_shipped_list_says_where_it_comes_from() -> None:
    head = DATA_FILE.read_text(encoding="utf-8")[:2000]
    assert "publicsuffix.org" in head and "VERSION 2026-10-22" in head


def test_suffixes_by_the_lists_algorithm() -> None:
    for suffix in ("fr", "gouv.fr", "asso.fr", "co.uk", "eu.org", "com.mx", "xn--p1ai"):
        assert is_public_suffix(suffix), suffix
    for organisation in ("caf.fr", "interieur.gouv.fr", "caf95.example.test", "www.ck"):
        assert not is_public_suffix(organisation), organisation
    assert public_suffix("mail.caf.interieur.gouv.fr") == "gouv.fr"
    assert public_suffix("anything.ck") == "anything.ck"  # *.ck
    assert public_suffix("www.ck") == "ck"  # !www.ck
    assert public_suffix("a.b.unlisted-tld") == "unlisted-tld"  # the implicit "*"
    assert public_suffix("ville.xn--p1ai") == "xn--p1ai"  # .рф, in punycode
    assert public_suffix("ville.рф") == "рф"


def test_dkim_alignment_refuses_every_registry_not_only_thirteen() -> None:
    assert dkim_aligned("caf.fr", "mail.caf.fr")
    assert dkim_aligned("interieur.gouv.fr", "prefecture.interieur.gouv.fr")
    assert not dkim_aligned("gouv.fr", "interieur.gouv.fr")
    # Registries the former hard-coded list of 13 did not know.
    assert not dkim_aligned("com.mx", "pirate.com.mx")
    assert not dkim_aligned("gov.uk", "hmrc.gov.uk")
    assert not dkim_aligned("nom.es", "victime.nom.es")
