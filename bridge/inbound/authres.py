"""`Authentication-Results` written by our own border MTA, and DKIM alignment (pure)."""

from __future__ import annotations

import re
from collections.abc import Collection
from email.message import Message

from bridge.addressing import parse_single_mailbox
from bridge.inbound.mail import AuthVerdict
from bridge.inbound.mime import field_values, header_fields
from bridge.inbound.public_suffix import is_public_suffix


def _strip_comments(value: str) -> str:
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for ch in value:
        if escaped:
            escaped = False
            if not depth:
                out.append(ch)
            continue
        if ch == "\\":
            escaped = True
            if not depth:
                out.append(ch)
            continue
        if quoted:
            out.append(ch)
            if ch == '"':
                quoted = False
            continue
        if ch == "(":
            depth += 1
            continue
        if ch == ")" and depth:
            depth -= 1
            continue
        if depth:
            continue
        if ch == '"':
            quoted = True
        out.append(ch)
    return "".join(out)


def _split_outside_quotes(value: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _parse_auth_header(value: str) -> tuple[str, list[tuple[str, str, dict[str, str]]]] | None:
    """RFC 8601 ``authserv-id; method=result prop=value ...`` → (id, results)."""
    body = _strip_comments(value.replace("\r", " ").replace("\n", " "))
    segments = _split_outside_quotes(body, ";")
    head = segments[0].split()
    if not head:
        return None
    authserv_id = head[0].lower()
    results: list[tuple[str, str, dict[str, str]]] = []
    for segment in segments[1:]:
        segment = re.sub(r"\s*=\s*", "=", segment.strip())
        tokens = [t for t in _split_outside_quotes(segment, " ") if t]
        if not tokens or "=" not in tokens[0]:
            continue
        method, _, result = tokens[0].partition("=")
        props: dict[str, str] = {}
        for token in tokens[1:]:
            key, eq, val = token.partition("=")
            if eq:
                props.setdefault(key.lower(), val.strip('"').lower())
        results.append((method.split("/")[0].lower(), result.strip('"').lower(), props))
    return authserv_id, results


def dkim_aligned(signing_domain: str, from_domain: str) -> bool:
    """DKIM ``d=`` aligned with the From domain: equal, or a parent of it.

    A parent must not be a public suffix such as ``gouv.fr`` (the plain "last two
    labels" rule would align every ``*.gouv.fr`` sender with every other one).
    """
    d = signing_domain.strip().strip(".").lower()
    f = from_domain.strip().strip(".").lower()
    if not d or not f or "." not in d:
        return False
    if d == f:
        return True
    return f.endswith("." + d) and not is_public_suffix(d)


def auth_results(msg: Message, trusted_authserv_ids: Collection[str]) -> AuthVerdict:
    """Verdict from ``Authentication-Results`` written by our own border MTA only.

    Headers are read top to bottom. Untrusted authserv-ids are ignored
    wherever they are (an internal hop may add one above ours). For each
    trusted id only the *topmost* header counts: our MTA prepends its header
    above anything the sender wrote, so a lower header with our id is a forgery
    the MTA failed to remove.
    """
    trusted = {t.strip().lower() for t in trusted_authserv_ids if t.strip()}
    if not trusted:
        return AuthVerdict(False, False, "no trusted authserv-id configured")
    try:
        headers = header_fields(msg)
    except Exception:
        return AuthVerdict(False, False, "unreadable headers")
    froms = field_values(headers, "from")
    parsed_from = parse_single_mailbox(froms[0]) if len(froms) == 1 else None
    if parsed_from is None:
        return AuthVerdict(False, False, "no single valid From address")
    from_domain = parsed_from[1].rpartition("@")[2]
    seen: set[str] = set()
    dmarc = dkim = False
    notes: list[str] = []
    for name, value in headers:
        if name != "authentication-results":
            continue
        parsed = _parse_auth_header(value)
        if parsed is None or parsed[0] not in trusted:
            continue
        authserv_id, results = parsed
        if authserv_id in seen:
            notes.append(f"ignored lower header from {authserv_id}")
            continue
        seen.add(authserv_id)
        for method, result, props in results:
            if method == "dmarc" and result == "pass":
                # Only a verdict about this very From domain counts (RFC 7489 11.2):
                # a pass that does not say for which domain vouches for nothing.
                if props.get("header.from") == from_domain:
                    dmarc = True
            elif method == "dkim" and result == "pass":
                d = props.get("header.d") or props.get("header.i", "").rpartition("@")[2]
                if d and dkim_aligned(d, from_domain):
                    dkim = True
    if not seen:
        reason = "no Authentication-Results from a trusted authserv-id"
    elif dmarc or dkim:
        reason = "dmarc=pass" if dmarc else "aligned dkim=pass"
    else:
        reason = "neither dmarc=pass nor aligned dkim=pass"
    if notes:
        reason += "; " + "; ".join(notes)
    return AuthVerdict(dmarc, dkim, reason)
