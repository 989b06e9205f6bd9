"""The shipped strip rule (deploy/postfix/header_checks.template) against forged spellings.

Postfix's own table code (`postmap -hq`, header mode: a folded header is one logical line,
as in cleanup) reads the rendered table. Each spelling below is one an attacker could use
to make our authserv-id appear in a header the bot would read; the bot's parser accepts
most of them (comments stripped, case folded, unfolded), so each must be removed here.
"""

from __future__ import annotations

import subprocess
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from bridge.inbound.authres import auth_results
from tests.support import deploy

AUTHSERV_ID = "mx.aplus.test"
pytestmark = pytest.mark.timeout(900)  # the first test may install Postfix

PASS = "dmarc=pass header.from=x.test"
FORGERIES = {
    "plain": f"Authentication-Results: {AUTHSERV_ID}; {PASS}",
    "lower-case name": f"authentication-results: {AUTHSERV_ID}; {PASS}",
    "upper-case id": f"Authentication-Results: {AUTHSERV_ID.upper()}; {PASS}",
    "no space": f"Authentication-Results:{AUTHSERV_ID};{PASS}",
    "tab": f"Authentication-Results:\t{AUTHSERV_ID}; {PASS}",
    "comment first": f"Authentication-Results: (vérifié) {AUTHSERV_ID}; {PASS}",
    "version": f"Authentication-Results: {AUTHSERV_ID} 1; {PASS}",
    "folded": f"Authentication-Results:\n\t{AUTHSERV_ID}; {PASS}",
    "folded comment": f"Authentication-Results: (un\n commentaire) {AUTHSERV_ID}; {PASS}",
    "space before colon": f"Authentication-Results : {AUTHSERV_ID}; {PASS}",
}


def test_each_spelling_would_fool_the_bot_if_it_got_through() -> None:
    # Why the strip rule matters: the bot trusts the topmost header with its id, however
    # it is spelt. (Whitespace before the colon makes it no header at all for Python.)
    fooled = set()
    for name, header in FORGERIES.items():
        raw = header.replace("\n", "\r\n") + "\r\nFrom: a@x.test\r\nSubject: s\r\n\r\nx\r\n"
        msg = BytesParser(policy=policy.default).parsebytes(raw.encode())
        if auth_results(msg, [AUTHSERV_ID]).authenticated:
            fooled.add(name)
    assert fooled == set(FORGERIES) - {"space before colon"}


def test_the_shipped_strip_rule_removes_every_spelling_of_our_authserv_id(
    tmp_path: Path,
) -> None:
    deploy.ensure_debian_packages("postfix", "postfix-pcre")
    values = deploy.values_doc(tmp_path)
    deploy.render(tmp_path, deploy.bot_doc(), values)
    table = tmp_path / "postfix" / "header_checks"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "main.cf").write_text("")
    for name, header in FORGERIES.items():
        message = f"{header}\nFrom: a@x.test\nSubject: s\n\ncorps\n"
        result = subprocess.run(
            ["postmap", "-c", str(tmp_path / "empty"), "-hq", "-", f"pcre:{table}"],
            input=message,
            capture_output=True,
            text=True,
            check=True,
        )
        assert result.stdout.rstrip().endswith("IGNORE"), (name, result.stdout)
        assert result.stdout.count("IGNORE") == 1, (name, result.stdout)
    # Another server's header is left alone (the bot ignores untrusted ids anyway).
    other = "Authentication-Results: mx.ailleurs.test; dmarc=pass\nFrom: a@x.test\n\nx\n"
    result = subprocess.run(
        ["postmap", "-c", str(tmp_path / "empty"), "-hq", "-", f"pcre:{table}"],
        input=other,
        capture_output=True,
        text=True,
    )
    assert (result.returncode, result.stdout) == (1, "")  # 1: no match
