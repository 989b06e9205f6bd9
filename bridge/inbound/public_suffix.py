"""Public suffixes (registries such as ``gouv.fr``, ``co.uk``), from the Public Suffix List.

The list is shipped as data (``data/public_suffix_list.dat``: its header says which
version, from where, and how to refresh it) and read once. The lookup follows the
list's algorithm: the longest matching rule prevails, an exception rule (``!www.ck``)
beats any other, a wildcard (``*.ck``) matches one label, and an unlisted top-level
label is a suffix by the implicit ``*`` rule. Rules are matched in their Unicode and
their punycode (``xn--``) forms, since mail carries either.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DATA_FILE", "is_public_suffix", "public_suffix"]

DATA_FILE = Path(__file__).with_name("data") / "public_suffix_list.dat"


@dataclass(frozen=True, slots=True)
class _Rules:
    exact: frozenset[str]
    wildcard_parents: frozenset[str]  # "ck" for the rule "*.ck"
    exceptions: frozenset[str]  # "www.ck" for the rule "!www.ck"


def _forms(rule: str) -> set[str]:
    forms = {rule}
    # A rule Python's IDNA 2003 codec cannot encode keeps its Unicode form only.
    with contextlib.suppress(UnicodeError):
        forms.add(".".join(label.encode("idna").decode("ascii") for label in rule.split(".")))
    return forms


@functools.cache
def _rules() -> _Rules:
    exact: set[str] = set()
    wildcard: set[str] = set()
    exceptions: set[str] = set()
    for line in DATA_FILE.read_text(encoding="utf-8").splitlines():
        rule = line.strip().lower()
        if not rule or rule.startswith("//"):
            continue
        if rule.startswith("!"):
            exceptions |= _forms(rule[1:])
        elif rule.startswith("*."):
            wildcard |= _forms(rule[2:])
        else:
            exact |= _forms(rule)
    return _Rules(frozenset(exact), frozenset(wildcard), frozenset(exceptions))


def public_suffix(domain: str) -> str:
    """The public suffix of ``domain`` (``gouv.fr`` for ``caf.interieur.gouv.fr``)."""
    labels = domain.strip().strip(".").lower().split(".")
    rules = _rules()
    for i in range(len(labels)):
        if ".".join(labels[i:]) in rules.exceptions:
            return ".".join(labels[i + 1 :])
    for i in range(len(labels)):
        candidate = ".".join(labels[i:])
        parent = ".".join(labels[i + 1 :])
        if candidate in rules.exact or (i + 1 < len(labels) and parent in rules.wildcard_parents):
            return candidate
    return labels[-1]


def is_public_suffix(domain: str) -> bool:
    """True for a registry (``gouv.fr``, ``fr``, ``eu.org``), false for an organisation."""
    d = domain.strip().strip(".").lower()
    return bool(d) and public_suffix(d) == d
