"""French public holidays and business days (pure: no clock, no I/O).

Delays of Administration+ ("3 jours ouvrés") skip weekends and public holidays.
The national holidays are fixed dates plus three that follow Easter (Monday
after Easter, Ascension, Whit Monday), computed here rather than listed, so
the calendar never runs out. Some territories have more: Alsace-Moselle
(57, 67, 68) keeps Good Friday and Saint Stephen's day, and each overseas
département the day slavery was abolished there.

Times are read in Paris time: a demande opened on Friday at 23:30 UTC was
opened on Saturday for the agents.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

PARIS = ZoneInfo("Europe/Paris")

_FIXED: tuple[tuple[int, int, str], ...] = (
    (1, 1, "Jour de l'an"),
    (5, 1, "Fête du travail"),
    (5, 8, "Victoire 1945"),
    (7, 14, "Fête nationale"),
    (8, 15, "Assomption"),
    (11, 1, "Toussaint"),
    (11, 11, "Armistice 1918"),
    (12, 25, "Noël"),
)
_ALSACE_MOSELLE = frozenset({"57", "67", "68"})
# Abolition of slavery, a public holiday in each overseas département (law of 1983).
_ABOLITION: dict[str, tuple[int, int]] = {
    "971": (5, 27),  # Guadeloupe
    "972": (5, 22),  # Martinique
    "973": (6, 10),  # Guyane
    "974": (12, 20),  # La Réunion
    "976": (4, 27),  # Mayotte
}


def easter_sunday(year: int) -> date:
    """Gregorian Easter (the anonymous algorithm, a.k.a. Meeus/Jones/Butcher)."""
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    leap = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * leap) // 451
    month, day = divmod(h + leap - 7 * m + 114, 31)
    return date(year, month, day + 1)


@lru_cache(maxsize=256)
def public_holidays(year: int, territoire: str | None = None) -> dict[date, str]:
    """The public holidays of `year`, nationally or in a département (its code)."""
    easter = easter_sunday(year)
    days = {date(year, m, d): name for m, d, name in _FIXED}
    days[easter + timedelta(days=1)] = "Lundi de Pâques"
    days[easter + timedelta(days=39)] = "Ascension"
    days[easter + timedelta(days=50)] = "Lundi de Pentecôte"
    if territoire in _ALSACE_MOSELLE:
        days[easter - timedelta(days=2)] = "Vendredi saint"
        days[date(year, 12, 26)] = "Saint-Étienne"
    if territoire in _ABOLITION:
        month, day = _ABOLITION[territoire]
        days[date(year, month, day)] = "Abolition de l'esclavage"
    return dict(sorted(days.items()))


def is_business_day(day: date, territoire: str | None = None) -> bool:
    return day.weekday() < 5 and day not in public_holidays(day.year, territoire)


def next_business_day(day: date, territoire: str | None = None) -> date:
    """`day` itself if it is a business day, else the next one."""
    while not is_business_day(day, territoire):
        day += timedelta(days=1)
    return day


def add_business_days(day: date, count: int, territoire: str | None = None) -> date:
    """The business day `count` business days after `day` (count ≥ 0)."""
    if count < 0:
        raise ValueError("count must be >= 0")
    while count:
        day += timedelta(days=1)
        if is_business_day(day, territoire):
            count -= 1
    return day


def business_days_between(start: date, end: date, territoire: str | None = None) -> int:
    """Business days in (start, end]: 0 when end <= start."""
    count = 0
    day = start
    while day < end:
        day += timedelta(days=1)
        if is_business_day(day, territoire):
            count += 1
    return count


def business_deadline(start: datetime, count: int, territoire: str | None = None) -> datetime:
    """`count` business days after `start`, at the same Paris time of day.

    Something that happens on a weekend or a holiday starts counting at the
    beginning of the next business day: a demande opened on Saturday with a
    3-day delay is late from Thursday 00:00 (Monday + 3), not from Wednesday.
    """
    if start.tzinfo is None:
        raise ValueError("aware datetime expected")
    local = start.astimezone(PARIS)
    day = local.date()
    clock = local.time().replace(tzinfo=None)
    if not is_business_day(day, territoire):
        day, clock = next_business_day(day, territoire), time(0, 0)
    target = add_business_days(day, count, territoire)
    return datetime.combine(target, clock, tzinfo=PARIS).astimezone(start.tzinfo)


def paris_date(moment: datetime) -> date:
    return moment.astimezone(PARIS).date()
