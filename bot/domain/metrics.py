"""The service's metrics in the Prometheus text format (pure rendering).

Counts taken from the audit trail cover its retention window (one year):
they are exposed as gauges, not counters, because the retention job makes
them go down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bot.domain.model import Status


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One component's state, as `/healthz` and `!sante` show it."""

    state: str  # ok | en panne | non configuré
    detail: str = ""
    required: bool = True


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    demandes_by_status: Mapping[Status, int]
    share_resolved_7_days: float | None
    late_demandes: int
    outbox_pending: int
    outbox_oldest_age_seconds: float
    delivery_failures: int
    intruders_removed: int
    undecryptable_events: int
    extra: Mapping[str, float] = field(default_factory=dict)  # name → value, gauges


def _value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _metric(name: str, help_: str, kind: str, samples: list[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {_value(v)}" for labels, v in samples]
    return lines


def render_prometheus(s: MetricsSnapshot) -> str:
    lines: list[str] = []
    lines += _metric(
        "aplus_demandes",
        "Demandes by status.",
        "gauge",
        [(f'{{status="{st.value}"}}', float(s.demandes_by_status.get(st, 0))) for st in Status],
    )
    share = s.share_resolved_7_days
    lines += _metric(
        "aplus_resolved_within_7_days_ratio",
        "Share of demandes resolved in under 7 days (NaN while unknown).",
        "gauge",
        [("", float("nan") if share is None else share)],
    )
    lines += _metric("aplus_demandes_late", "Demandes late now.", "gauge", [("", s.late_demandes)])
    lines += _metric(
        "aplus_outbox_queue_length",
        "Messages waiting in the outbox.",
        "gauge",
        [("", s.outbox_pending)],
    )
    lines += _metric(
        "aplus_outbox_oldest_age_seconds",
        "Age of the oldest message waiting in the outbox (0 when empty).",
        "gauge",
        [("", s.outbox_oldest_age_seconds)],
    )
    lines += _metric(
        "aplus_delivery_failures",
        "Messages the homeserver or the mail relay refused for good (audit window).",
        "gauge",
        [("", s.delivery_failures)],
    )
    lines += _metric(
        "aplus_intruders_removed",
        "Intruders kicked or banned from demande rooms (audit window).",
        "gauge",
        [("", s.intruders_removed)],
    )
    lines += _metric(
        "aplus_undecryptable_events",
        "Events the bot could not decrypt (audit window).",
        "gauge",
        [("", s.undecryptable_events)],
    )
    for name, value in sorted(s.extra.items()):
        lines += _metric(name, name.replace("_", " ") + ".", "gauge", [("", value)])
    return "\n".join(lines) + "\n"
