"""What the listener does with a mail before parsing it: small named rules, in order (pure).

Each rule looks at the header-level `Outline` of the mail and the reply address it came
to, and either decides (a `Screening`) or passes. `BEFORE_AUTHENTICATION` needs nothing
costly; `AFTER_AUTHENTICATION` is asked only once the listener knows whether the mail is
authenticated (our MTA's `Authentication-Results`, or our own DKIM check when
configured, which is DNS and a hash of the whole body). A mail no rule stops is parsed.

Bounces are believed only when authenticated and sent by the agent's own mail system
(the From domain at, above or below the agent's domain) or by ours: anyone who knows a
reply address can write a delivery status notification.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import Enum

from bridge.addressing import check_sender, parse_single_mailbox
from bridge.inbound.authres import dkim_aligned
from bridge.inbound.mail import Kind
from bridge.inbound.outline import Outline

__all__ = [
    "AFTER_AUTHENTICATION",
    "BEFORE_AUTHENTICATION",
    "Context",
    "Rule",
    "Screening",
    "Step",
    "from_domain",
    "screen",
]


class Step(Enum):
    REFUSE_CONTENT = "refuse_content"  # 554: not parsed, nothing kept
    REFUSE_SENDER = "refuse_sender"  # 550 5.7.1: not the agent, or not authenticated
    FILE_LOOP = "file_loop"  # 250, kept, dropped
    FILE_AUTOMATED = "file_automated"  # 250, kept, never posted
    FILE_BOUNCE_UNVERIFIED = "file_bounce_unverified"  # 250, kept, nobody marked failing


@dataclass(frozen=True, slots=True)
class Screening:
    step: Step
    rule: str
    why: str  # English, for the audit's details and the log (no personal data)


@dataclass(frozen=True, slots=True)
class Context:
    agent_email: str  # the reply address's agent
    own_domains: Collection[str]  # our From and reply domains: our relay's bounces
    authenticated: bool = False  # meaningful in AFTER_AUTHENTICATION only


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    description: str  # French: what the rule protects
    check: Callable[[Outline, Context], Screening | None]


def from_domain(view: Outline) -> str | None:
    parsed = parse_single_mailbox(view.from_header) if view.from_header else None
    return parsed[1].rpartition("@")[2] if parsed else None


def _related(domain: str, other: str) -> bool:
    return dkim_aligned(other, domain) or dkim_aligned(domain, other)


def _bounce_from_a_known_system(view: Outline, ctx: Context) -> bool:
    domain = from_domain(view)
    if domain is None:
        return False
    agent_domain = ctx.agent_email.rpartition("@")[2]
    return any(_related(domain, d) for d in (agent_domain, *ctx.own_domains))


def _unreadable(view: Outline, ctx: Context) -> Screening | None:
    if view.kind_reason == "not read":
        return Screening(Step.REFUSE_CONTENT, "unreadable", view.too_complex or "headers")
    return None


def _loop(view: Outline, ctx: Context) -> Screening | None:
    if view.kind is Kind.LOOP:
        return Screening(Step.FILE_LOOP, "loop", view.kind_reason)
    return None


def _automated(view: Outline, ctx: Context) -> Screening | None:
    if view.kind in (Kind.AUTO_REPLY, Kind.LIST):
        return Screening(Step.FILE_AUTOMATED, "automated", view.kind_reason)
    return None


def _wrong_sender(view: Outline, ctx: Context) -> Screening | None:
    if view.kind is Kind.HUMAN and not check_sender(ctx.agent_email, view.from_header or ""):
        return Screening(Step.REFUSE_SENDER, "wrong_sender", "sender is not the token's agent")
    return None


def _bounce_from_elsewhere(view: Outline, ctx: Context) -> Screening | None:
    if view.kind is Kind.BOUNCE and not _bounce_from_a_known_system(view, ctx):
        why = f"bounce not from the agent's or our mail system ({view.kind_reason})"
        return Screening(Step.FILE_BOUNCE_UNVERIFIED, "bounce_from_elsewhere", why)
    return None


def _unauthenticated(view: Outline, ctx: Context) -> Screening | None:
    if view.kind is Kind.HUMAN and not ctx.authenticated:
        why = f"unauthenticated: {view.auth.reason}"
        return Screening(Step.REFUSE_SENDER, "unauthenticated", why)
    return None


def _bounce_unauthenticated(view: Outline, ctx: Context) -> Screening | None:
    if view.kind is Kind.BOUNCE and not ctx.authenticated:
        why = f"unauthenticated bounce: {view.auth.reason}"
        return Screening(Step.FILE_BOUNCE_UNVERIFIED, "bounce_unauthenticated", why)
    return None


def _too_complex(view: Outline, ctx: Context) -> Screening | None:
    if view.too_complex:
        return Screening(Step.REFUSE_CONTENT, "too_complex", view.too_complex)
    return None


BEFORE_AUTHENTICATION: Sequence[Rule] = (
    Rule("unreadable", "En-têtes illisibles ou démesurés : refusé sans lecture.", _unreadable),
    Rule("loop", "Boucle de messagerie : gardé, jamais posté.", _loop),
    Rule("automated", "Réponse automatique ou liste : gardé, jamais posté.", _automated),
    Rule("wrong_sender", "L'expéditeur n'est pas l'agent de l'adresse : refusé.", _wrong_sender),
    Rule(
        "bounce_from_elsewhere",
        "Avis de non-remise venu d'ailleurs que la messagerie de l'agent ou la nôtre : "
        "gardé, sans effet.",
        _bounce_from_elsewhere,
    ),
)
AFTER_AUTHENTICATION: Sequence[Rule] = (
    Rule("unauthenticated", "Réponse non authentifiée : refusée.", _unauthenticated),
    Rule(
        "bounce_unauthenticated",
        "Avis de non-remise non authentifié : gardé, sans effet.",
        _bounce_unauthenticated,
    ),
    Rule("too_complex", "Trop de parties ou de lignes : refusé avant lecture.", _too_complex),
)


def screen(rules: Sequence[Rule], view: Outline, ctx: Context) -> Screening | None:
    """The first rule that decides, else None."""
    for rule in rules:
        verdict = rule.check(view, ctx)
        if verdict is not None:
            return verdict
    return None
