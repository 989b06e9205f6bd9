"""Values as aidants write them: dates (« 12 mars 1961 », « hier »), départements by
number or name, mandate types and their synonyms, NIR, phone numbers.

Pure: `today` is a parameter. Used by the opening form (`bot.domain.form`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Mapping
from datetime import date, timedelta

from bot.domain.model import MandatType


def _fold(text: str) -> str:
    """Lowercase, accent-free, single-spaced, straight apostrophes: for matching only."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    stripped = stripped.replace("’", "'").replace("ʼ", "'").replace("`", "'")
    return " ".join(stripped.lower().split())


_DATE_FORMATS = (
    re.compile(r"(?P<d>\d{1,2})[/.-](?P<m>\d{1,2})[/.-](?P<y>\d{4})"),
    re.compile(r"(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})"),
)
_NATURAL_DATE_FORMATS = (
    *_DATE_FORMATS,
    re.compile(r"(?P<d>\d{1,2}) (?P<m>\d{1,2}) (?P<y>\d{4})"),
    re.compile(r"(?P<d>\d{2})(?P<m>\d{2})(?P<y>\d{4})"),
    re.compile(r"(?P<d>\d{1,2})[/.-](?P<m>\d{1,2})[/.-](?P<yy>\d{2})"),
)
_MONTHS = {
    "janvier": 1,
    "janv": 1,
    "fevrier": 2,
    "fevr": 2,
    "fev": 2,
    "mars": 3,
    "avril": 4,
    "avr": 4,
    "mai": 5,
    "juin": 6,
    "juillet": 7,
    "juil": 7,
    "aout": 8,
    "septembre": 9,
    "sept": 9,
    "octobre": 10,
    "oct": 10,
    "novembre": 11,
    "nov": 11,
    "decembre": 12,
    "dec": 12,
}
_RELATIVE_DAYS = {"aujourd'hui": 0, "aujourdhui": 0, "ce jour": 0, "hier": 1, "avant-hier": 2}


def parse_date(text: str) -> date | None:
    """JJ/MM/AAAA, JJ-MM-AAAA, JJ.MM.AAAA or AAAA-MM-JJ; None if unreadable."""
    compact = text.strip()
    for pattern in _DATE_FORMATS:
        if m := pattern.fullmatch(compact):
            try:
                return date(int(m["y"]), int(m["m"]), int(m["d"]))
            except ValueError:
                return None
    return None


def parse_natural_date(text: str, today: date) -> date | None:
    """`parse_date`, plus « aujourd'hui », « hier », « avant-hier », « 12 mars 1961 »,
    « 1er mars 1961 », « 12 03 1961 », « 12031961 » and JJ/MM/AA (the past century
    when the date would otherwise be in the future)."""
    folded = _fold(text).strip(" .")
    folded = re.sub(r"^(?:le|du)\s+", "", folded)
    if folded in _RELATIVE_DAYS:
        return today - timedelta(days=_RELATIVE_DAYS[folded])
    if m := re.fullmatch(r"(\d{1,2})(?:er)?\s+([a-z]+)\.?\s+(\d{4})", folded):
        month = _MONTHS.get(m.group(2))
        if month is None:
            return None
        try:
            return date(int(m.group(3)), month, int(m.group(1)))
        except ValueError:
            return None
    for pattern in _NATURAL_DATE_FORMATS:
        if m := pattern.fullmatch(folded):
            if "yy" in pattern.groupindex:
                year = 2000 + int(m["yy"])
                try:
                    found = date(year, int(m["m"]), int(m["d"]))
                except ValueError:
                    return None
                return found if found <= today else date(year - 100, found.month, found.day)
            try:
                return date(int(m["y"]), int(m["m"]), int(m["d"]))
            except ValueError:
                return None
    return None


def format_date(value: date) -> str:
    return f"{value.day:02d}/{value.month:02d}/{value.year:04d}"


def _age(born: date, today: date) -> int:
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def normalise_nir(text: str) -> str:
    return re.sub(r"[\s.\-]", "", text).upper()


def nir_problem(nir: str) -> str | None:
    """Why a normalised NIR is invalid, or None. Corsica: 2A/2B count as 19/18 for the key."""
    if len(nir) != 15:
        return (
            f"Le NIR doit compter 15 caractères (13 pour le numéro et 2 pour la clé) : "
            f"vous en avez saisi {len(nir)}."
        )
    body, key = nir[:13], nir[13:]
    numeric = body
    if body[5:7] in ("2A", "2B"):
        numeric = body[:5] + ("19" if body[5:7] == "2A" else "18") + body[7:]
    if not numeric.isdigit() or not key.isdigit():
        return "Le NIR ne peut contenir que des chiffres (et 2A ou 2B pour un usager né en Corse)."
    if numeric[0] not in "12345678":
        return "Le NIR doit commencer par 1 ou 2 (sexe de l'usager) : vérifiez le numéro."
    if 97 - int(numeric) % 97 != int(key):
        return (
            "La clé du NIR (les 2 derniers chiffres) ne correspond pas au numéro : "
            "vérifiez le NIR sur la carte Vitale ou l'attestation de droits."
        )
    return None


_OVERSEAS_PREFIXES = ("262", "269", "590", "594", "596", "508", "681", "687", "689")


def normalise_phone(text: str) -> str | None:
    """A French number as "06 12 34 56 78", or None if it is not one."""
    digits = re.sub(r"[\s.\-()/]", "", text)
    if digits.startswith("+"):
        digits = "00" + digits[1:]
    national: str | None = None
    if digits.startswith("0033"):
        national = "0" + digits[4:]
    else:
        for prefix in _OVERSEAS_PREFIXES:
            if digits.startswith("00" + prefix):
                national = "0" + digits[2 + len(prefix) :]
                break
        else:
            if not digits.startswith("00"):
                national = digits
    if national is None or not re.fullmatch(r"0[1-9]\d{8}", national):
        return None
    return " ".join(national[i : i + 2] for i in range(0, 10, 2))


# How aidants name the ways an usager gives their accord (folded, punctuation as spaces).
_MANDAT_ALIASES: dict[str, MandatType] = {
    "papier": MandatType.PAPIER,
    "ecrit": MandatType.PAPIER,
    "par ecrit": MandatType.PAPIER,
    "mandat papier": MandatType.PAPIER,
    "mandat ecrit": MandatType.PAPIER,
    "signe": MandatType.PAPIER,
    "mandat signe": MandatType.PAPIER,
    "formulaire": MandatType.PAPIER,
    "formulaire signe": MandatType.PAPIER,
    "oral": MandatType.ORAL,
    "orale": MandatType.ORAL,
    "a l oral": MandatType.ORAL,
    "oralement": MandatType.ORAL,
    "verbal": MandatType.ORAL,
    "verbalement": MandatType.ORAL,
    "mandat oral": MandatType.ORAL,
    "telephone": MandatType.ORAL,
    "par telephone": MandatType.ORAL,
    "sms": MandatType.SMS,
    "par sms": MandatType.SMS,
    "texto": MandatType.SMS,
    "par texto": MandatType.SMS,
    "mandat sms": MandatType.SMS,
}

MANDAT_LABELS: dict[MandatType, str] = {
    MandatType.PAPIER: "papier (mandat écrit)",
    MandatType.ORAL: "oral",
    MandatType.SMS: "SMS",
}


def loose(text: str) -> str:
    """Folded, every punctuation mark a space: « Val-d'Oise » and « val d oise » meet."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", _fold(text)).split())


_loose = loose


def parse_mandat(text: str) -> MandatType | None:
    return _MANDAT_ALIASES.get(_loose(text))


def find_departement(text: str, departements: Mapping[str, str]) -> str | None:
    """The code of a département written as a code or a name, in any case, with or
    without accents, hyphens or apostrophes (« 95 », « Val d'Oise », « val-d-oise »,
    « 95 - Val-d'Oise »)."""
    code = _normalise_territoire(text, departements.keys())
    if code is not None:
        return code
    by_name = {_loose(name): c for c, name in departements.items()}
    wanted = _loose(text)
    found = by_name.get(wanted) or by_name.get(re.sub(r"^(?:le |la |les |l )", "", wanted))
    if found is not None:
        return found
    if m := re.fullmatch(r"(.+?)\s*\(\s*[0-9ab]{2,3}\s*\)", wanted):
        return by_name.get(m.group(1))
    return None


def _normalise_territoire(value: str, known: Collection[str]) -> str | None:
    code = value.strip().upper()
    candidates = [code]
    if m := re.search(r"\(([0-9AB]{1,3})\)", code):
        candidates.append(m.group(1))
    if m := re.match(r"([0-9][0-9AB]?[0-9]?)\b", code):
        candidates.append(m.group(1))
    for candidate in candidates:
        for variant in (candidate, candidate.zfill(2)):
            if variant in known:
                return variant
    return None
