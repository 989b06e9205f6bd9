"""The opening form: the template the bot sends, its tolerant parser and its renderer.

Pure: `today` is a parameter and the directory is reached through the callables
and collections the caller passes in. Every problem is reported at once, in
French, because the reader is an aidant, not a developer.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import date

from bot.domain.model import DemandeForm, Mandat, MandatType, Usager

OBJET_MAX = 150
NAME_MAX = 100
ADRESSE_MAX = 300
DESCRIPTION_MAX = 10_000
MAX_AGE_YEARS = 130

ATTESTATION = "J'atteste avoir recueilli l'accord de l'usager"

DEFAULT_CATEGORIES: tuple[str, ...] = (
    "Social/Famille",
    "Santé/Handicap",
    "Emploi/Formation",
    "Logement",
    "Retraite",
    "Impôts/Argent",
    "Papiers/Titres",
    "Autre",
)


@dataclass(frozen=True, slots=True)
class FormErrors:
    """The form was recognised but cannot be accepted; `messages` lists every problem."""

    messages: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NotAForm:
    """The text holds no form key at all: an ordinary message, not a failed form."""


FormResult = DemandeForm | FormErrors | NotAForm


# Canonical field names, in the order the template shows them. The description
# comes last (only the attestation follows it) so that nothing the aidant leaves
# under it can be mistaken for another field.
TERRITOIRE = "territoire"
ORGANISMES = "organismes"
CATEGORIE = "catégorie"
OBJET = "objet"
PRENOM = "prénom"
NOM = "nom"
DATE_NAISSANCE = "date de naissance"
NIR = "NIR"
ALLOCATAIRE = "numéro allocataire CAF"
NIF = "NIF"
ADRESSE = "adresse"
TELEPHONE = "téléphone"
MANDAT = "mandat"
DATE_MANDAT = "date du mandat"
DESCRIPTION = "description"

FIELDS: tuple[str, ...] = (
    TERRITOIRE,
    ORGANISMES,
    CATEGORIE,
    OBJET,
    PRENOM,
    NOM,
    DATE_NAISSANCE,
    NIR,
    ALLOCATAIRE,
    NIF,
    ADRESSE,
    TELEPHONE,
    MANDAT,
    DATE_MANDAT,
    DESCRIPTION,
)


def _fold(text: str) -> str:
    """Lowercase, accent-free, single-spaced, straight apostrophes: for matching only."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    stripped = stripped.replace("’", "'").replace("ʼ", "'").replace("`", "'")
    return " ".join(stripped.lower().split())


_ALIASES: dict[str, str] = {
    "territoire": TERRITOIRE,
    "departement": TERRITOIRE,
    "organismes": ORGANISMES,
    "organisme": ORGANISMES,
    "organisations": ORGANISMES,
    "organisation": ORGANISMES,
    "categorie": CATEGORIE,
    "objet": OBJET,
    "prenom": PRENOM,
    "nom": NOM,
    "nom de famille": NOM,
    "date de naissance": DATE_NAISSANCE,
    "nir": NIR,
    "numero de securite sociale": NIR,
    "numero allocataire caf": ALLOCATAIRE,
    "numero allocataire": ALLOCATAIRE,
    "n° allocataire caf": ALLOCATAIRE,
    "no allocataire caf": ALLOCATAIRE,
    "nif": NIF,
    "numero fiscal": NIF,
    "adresse": ADRESSE,
    "telephone": TELEPHONE,
    "tel": TELEPHONE,
    "mandat": MANDAT,
    "type de mandat": MANDAT,
    "date du mandat": DATE_MANDAT,
    "description": DESCRIPTION,
}

# Leading list markers, quote markers and check boxes Element users type or paste.
_LEADING = re.compile(r"^\s*(?:(?:[-*+•>]|\d+[.)])\s+|\[[ xX]\]\s*)+")
_MARKUP = re.compile(r"[*_~`]+")
_FOLDED_ATTESTATION = _fold(ATTESTATION)


def _strip_markup(text: str) -> str:
    return _MARKUP.sub("", text).strip()


def _clean_value(raw: str) -> str:
    # "**Nom :** Dupont" leaves "** Dupont"; "nom : **Dupont**" leaves "**Dupont**".
    value = raw.strip()
    value = re.sub(r"^[*_]{1,3}\s*", "", value)
    if m := re.fullmatch(r"([*_`]{1,3})(.+?)\1", value):
        value = m.group(2)
    return value.strip()


def _key_of(line: str) -> tuple[str | None, str, str]:
    """(canonical key or None, folded key text, raw value) of a `clé : valeur` line."""
    body = _LEADING.sub("", line)
    if ":" not in body:
        return None, "", ""
    raw_key, raw_value = body.split(":", 1)
    folded = _fold(_strip_markup(raw_key))
    return _ALIASES.get(folded), folded, raw_value


def _is_attestation(line: str) -> bool:
    return _fold(_strip_markup(_LEADING.sub("", line))).startswith(_FOLDED_ATTESTATION)


def _strip_reply_fallback(lines: list[str]) -> list[str]:
    # A Matrix reply body starts with the quoted original ("> <@bot:hs> …"), which
    # would be the blank template: drop it.
    if lines and lines[0].startswith("> <@"):
        i = 0
        while i < len(lines) and lines[i].startswith(">"):
            i += 1
        return lines[i:]
    return lines


@dataclass(slots=True)
class _Scan:
    values: dict[str, str]
    duplicates: list[str]
    unknown: list[tuple[str, str]]
    attested: bool
    attestation_refused: bool
    any_key: bool


def _scan(text: str) -> _Scan:
    lines = _strip_reply_fallback(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    scan = _Scan({}, [], [], False, False, False)
    current: str | None = None
    description: list[str] = []
    pending_empty: str | None = None

    def store(key: str, value: str) -> None:
        previous = scan.values.get(key)
        if previous and value and previous != value:
            if key not in scan.duplicates:
                scan.duplicates.append(key)
            return
        if value or key not in scan.values:
            scan.values[key] = value

    for line in lines:
        if line.lstrip().startswith("#"):
            continue
        if _is_attestation(line):
            if current == DESCRIPTION:
                store(DESCRIPTION, "\n".join(description).strip("\n"))
                description = []
            scan.attested = True
            tail = _fold(line).split(_FOLDED_ATTESTATION, 1)[-1]
            if re.search(r"\bnon\b", tail):
                scan.attestation_refused = True
            current, pending_empty = None, None
            continue
        key, folded, raw_value = _key_of(line)
        if key is not None:
            scan.any_key = True
            if current == DESCRIPTION:
                store(DESCRIPTION, "\n".join(description).strip("\n"))
                description = []
            current = key
            if key == DESCRIPTION:
                first = raw_value.strip()
                description = [first] if first else []
                pending_empty = None
            else:
                value = _clean_value(raw_value)
                store(key, value)
                pending_empty = None if value else key
            continue
        if current == DESCRIPTION:
            description.append(line.rstrip())
            continue
        if not line.strip():
            continue
        if pending_empty is not None:
            # "adresse :" then the address on the next line: accept it.
            store(pending_empty, _clean_value(line))
            pending_empty = None
            continue
        if current is not None and folded and len(folded) <= 40:
            close = difflib.get_close_matches(folded, list(_ALIASES), n=1, cutoff=0.75)
            if close:
                scan.unknown.append((folded, _ALIASES[close[0]]))
    if current == DESCRIPTION:
        store(DESCRIPTION, "\n".join(description).strip("\n"))
    return scan


# ---------------------------------------------------------------------------
# Field validators: each returns the normalised value or appends French errors.


_DATE_FORMATS = (
    re.compile(r"(?P<d>\d{1,2})[/.-](?P<m>\d{1,2})[/.-](?P<y>\d{4})"),
    re.compile(r"(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})"),
)


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


_MANDAT_ALIASES: dict[str, MandatType] = {
    "papier": MandatType.PAPIER,
    "ecrit": MandatType.PAPIER,
    "oral": MandatType.ORAL,
    "orale": MandatType.ORAL,
    "sms": MandatType.SMS,
}


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


def _split_organismes(value: str) -> list[str]:
    # Aidants write "CAF, CPAM", "CAF; CPAM", "CAF / CPAM" or "CAF et CPAM".
    parts = re.split(r"[,;/]|\s+et\s+", value)
    return [part.strip() for part in parts if part.strip()]


def _single_line(value: str) -> str:
    return " ".join(value.split())


def _contains_word(haystack: str, needle: str) -> bool:
    folded = _fold(needle)
    if len(folded) < 2:
        return False
    return re.search(rf"(?<!\w){re.escape(folded)}(?!\w)", _fold(haystack)) is not None


def _objet_personal_data(objet: str, usager_values: Iterable[str]) -> bool:
    if re.search(r"\d{2}[\s.]?\d{2}[\s.]?\d{2}[\s.]?\d{2}[\s.]?\d{2}", objet):
        return True  # a phone number, a NIR or another long identifier
    return any(_contains_word(objet, value) for value in usager_values if value)


def parse_form(
    text: str,
    *,
    today: date,
    known_departements: Collection[str],
    organisation_lookup: Callable[[str], str | None],
    categories: Collection[str],
) -> FormResult:
    """Parse and validate an opening form sent back by an aidant."""
    scan = _scan(text)
    if not scan.any_key:
        return NotAForm()
    values = scan.values
    errors: list[str] = []

    def required(key: str, what: str) -> str:
        value = values.get(key, "")
        if not value:
            errors.append(f"Le champ « {key} » est obligatoire : indiquez {what}.")
        return value

    for folded, suggestion in scan.unknown:
        errors.append(
            f"Le champ « {folded} » n'est pas reconnu : vouliez-vous écrire « {suggestion} » ?"
        )
    for key in scan.duplicates:
        errors.append(
            f"Le champ « {key} » apparaît plusieurs fois avec des valeurs différentes : "
            "n'en gardez qu'un."
        )

    territoire = ""
    raw_territoire = required(TERRITOIRE, "le code du département (par exemple 95, 2A ou 974)")
    if raw_territoire:
        territoire = _normalise_territoire(raw_territoire, known_departements) or ""
        if not territoire:
            errors.append(
                f"Le département « {_single_line(raw_territoire)} » n'existe pas : "
                "indiquez son code (par exemple 95, 2A ou 974)."
            )

    organisations: list[str] = []
    for name in _split_organismes(values.get(ORGANISMES, "")):
        found = organisation_lookup(name)
        if found is None:
            errors.append(
                f"L'organisme « {name} » est inconnu : vérifiez son nom "
                "(par exemple CAF, CPAM, MSA, URSSAF)."
            )
        elif found not in organisations:
            organisations.append(found)

    categorie: str | None = None
    raw_categorie = _single_line(values.get(CATEGORIE, ""))
    if raw_categorie:
        by_fold = {_fold(c): c for c in categories}
        categorie = by_fold.get(_fold(raw_categorie))
        if categorie is None:
            errors.append(
                f"La catégorie « {raw_categorie} » est inconnue : choisissez parmi "
                + ", ".join(categories)
                + "."
            )
    if not values.get(ORGANISMES) and not raw_categorie:
        errors.append(
            "Indiquez au moins un organisme (champ « organismes ») ou, si vous ne savez pas "
            "lequel, une catégorie (champ « catégorie »)."
        )

    objet = _single_line(required(OBJET, "en quelques mots le sujet de la demande"))
    if len(objet) > OBJET_MAX:
        errors.append(
            f"L'objet fait {len(objet)} caractères, soit {len(objet) - OBJET_MAX} de trop "
            f"({OBJET_MAX} au maximum) : raccourcissez-le et mettez les détails "
            "dans la description."
        )

    prenom = _single_line(required(PRENOM, "le prénom de l'usager"))
    nom = _single_line(required(NOM, "le nom de l'usager"))
    for key, value in ((PRENOM, prenom), (NOM, nom)):
        if len(value) > NAME_MAX:
            errors.append(f"Le champ « {key} » est trop long ({NAME_MAX} caractères au maximum).")

    naissance = _date_field(values, DATE_NAISSANCE, "la date de naissance de l'usager", errors)
    if naissance is not None:
        if naissance > today:
            errors.append(
                f"La date de naissance ({format_date(naissance)}) est dans le futur : vérifiez-la."
            )
        elif _age(naissance, today) > MAX_AGE_YEARS:
            errors.append(
                f"La date de naissance ({format_date(naissance)}) donne un âge de plus de "
                f"{MAX_AGE_YEARS} ans : vérifiez l'année."
            )

    nir: str | None = None
    if raw := values.get(NIR, ""):
        nir = normalise_nir(raw)
        if problem := nir_problem(nir):
            errors.append(problem)

    allocataire: str | None = None
    if raw := values.get(ALLOCATAIRE, ""):
        allocataire = re.sub(r"\s", "", raw)
        if not re.fullmatch(r"\d{1,10}", allocataire):
            errors.append(
                "Le numéro allocataire CAF ne peut contenir que des chiffres "
                "(7 en général, sans lettres)."
            )

    nif: str | None = None
    if raw := values.get(NIF, ""):
        nif = re.sub(r"\s", "", raw)
        if not re.fullmatch(r"[0-3]\d{12}", nif):
            errors.append(
                "Le NIF (numéro fiscal) doit compter 13 chiffres et commencer par 0, 1, 2 ou 3 : "
                "il figure en haut de l'avis d'impôt."
            )

    adresse = _single_line(values.get(ADRESSE, "")) or None
    if adresse and len(adresse) > ADRESSE_MAX:
        errors.append(f"L'adresse est trop longue ({ADRESSE_MAX} caractères au maximum).")

    telephone: str | None = None
    if raw := values.get(TELEPHONE, ""):
        telephone = normalise_phone(raw)
        if telephone is None:
            errors.append(
                "Le numéro de téléphone n'est pas un numéro français valide : indiquez 10 chiffres "
                "commençant par 0 (par exemple 06 12 34 56 78) ou le format +33."
            )

    description = values.get(DESCRIPTION, "").strip()
    if not description:
        errors.append(
            "Le champ « description » est obligatoire : expliquez la situation de l'usager "
            "sur les lignes qui suivent « description : »."
        )
    elif len(description) > DESCRIPTION_MAX:
        errors.append(
            f"La description est trop longue ({len(description)} caractères, "
            f"{DESCRIPTION_MAX} au maximum)."
        )

    mandat_type: MandatType | None = None
    raw_mandat = _single_line(required(MANDAT, "le type de mandat : papier, oral ou sms"))
    if raw_mandat:
        mandat_type = _MANDAT_ALIASES.get(_fold(raw_mandat))
        if mandat_type is None:
            errors.append(
                f"Le type de mandat « {raw_mandat} » est inconnu : indiquez papier, oral ou sms."
            )

    date_mandat = _date_field(
        values, DATE_MANDAT, "la date à laquelle l'usager a donné son accord", errors
    )
    if date_mandat is not None and date_mandat > today:
        errors.append(
            f"La date du mandat ({format_date(date_mandat)}) est dans le futur : "
            "indiquez le jour où l'usager a donné son accord."
        )

    if not scan.attested:
        errors.append(
            f"La ligne « {ATTESTATION} » manque : gardez-la dans le formulaire pour attester "
            "que l'usager a donné son accord."
        )
    elif scan.attestation_refused:
        errors.append(
            "Sans l'accord de l'usager, la demande ne peut pas être ouverte : recueillez "
            "son accord puis renvoyez le formulaire."
        )

    if objet and _objet_personal_data(
        objet,
        (prenom, nom, nir or "", allocataire or "", nif or "", values.get(DATE_NAISSANCE, "")),
    ):
        errors.append(
            "L'objet ne doit contenir aucune donnée personnelle (nom, prénom, numéro, date…) : "
            "il apparaît dans les notifications. Mettez ces informations dans les champs prévus."
        )

    if errors or naissance is None or mandat_type is None or date_mandat is None:
        return FormErrors(tuple(errors))
    return DemandeForm(
        territoire=territoire,
        organisations=tuple(organisations),
        categorie=categorie,
        objet=objet,
        usager=Usager(
            prenom=prenom,
            nom=nom,
            date_naissance=naissance,
            nir=nir,
            numero_allocataire_caf=allocataire,
            nif=nif,
            adresse=adresse,
            telephone=telephone,
        ),
        description=description,
        mandat=Mandat(type=mandat_type, date=date_mandat, attestation=True),
    )


def _date_field(values: dict[str, str], key: str, what: str, errors: list[str]) -> date | None:
    raw = values.get(key, "").strip()
    if not raw:
        errors.append(f"Le champ « {key} » est obligatoire : indiquez {what} (JJ/MM/AAAA).")
        return None
    parsed = parse_date(raw)
    if parsed is None:
        errors.append(
            f"La {key} « {raw} » n'est pas une date valide : écrivez-la sous la forme "
            "JJ/MM/AAAA (par exemple 05/03/1980)."
        )
    return parsed


# ---------------------------------------------------------------------------
# Template and rendering


def form_template(categories: Iterable[str] = DEFAULT_CATEGORIES) -> str:
    """The blank form sent on `!demande`; comment lines start with « # »."""
    return "\n".join(
        [
            "# FORMULAIRE DE DEMANDE — copiez tout ce message, complétez-le et renvoyez-le ici.",
            "# Écrivez chaque réponse après les deux-points « : », sur la même ligne.",
            "# Les lignes qui commencent par « # » sont des explications : "
            "vous pouvez les laisser.",
            "# Les champs marqués (facultatif) peuvent rester vides.",
            "",
            "# Code du département où vit l'usager (par exemple 95, 2A ou 974).",
            f"{TERRITOIRE} :",
            "# Un ou plusieurs organismes, séparés par des virgules (par exemple : CAF, CPAM).",
            "# Vous ne savez pas lequel ? Laissez vide et choisissez une catégorie.",
            f"{ORGANISMES} :",
            "# (facultatif si un organisme est indiqué) " + ", ".join(categories) + ".",
            f"{CATEGORIE} :",
            f"# En quelques mots, {OBJET_MAX} caractères au maximum.",
            "# ATTENTION : aucune donnée personnelle dans l'objet (ni nom, ni numéro, ni date) :",
            "# il apparaît dans les notifications envoyées aux agents.",
            f"{OBJET} :",
            "# Identité de l'usager.",
            f"{PRENOM} :",
            f"{NOM} :",
            "# Au format JJ/MM/AAAA.",
            f"{DATE_NAISSANCE} :",
            "# (facultatif) Numéro de sécurité sociale : 15 caractères, clé comprise.",
            f"{NIR} :",
            "# (facultatif) Numéro allocataire, utile pour la CAF.",
            f"{ALLOCATAIRE} :",
            "# (facultatif) Numéro fiscal, 13 chiffres, utile pour les impôts.",
            f"{NIF} :",
            "# (facultatif) Adresse postale, sur une seule ligne.",
            f"{ADRESSE} :",
            "# (facultatif) Numéro français, par exemple 06 12 34 56 78.",
            f"{TELEPHONE} :",
            "# Comment l'usager vous a donné son accord : papier, oral ou sms.",
            f"{MANDAT} :",
            "# Jour où l'usager a donné son accord, au format JJ/MM/AAAA.",
            f"{DATE_MANDAT} :",
            "# Décrivez la situation et ce que vous attendez de l'organisme.",
            "# Vous pouvez écrire sur plusieurs lignes, sous « description : ».",
            f"{DESCRIPTION} :",
            "",
            "",
            "# Gardez la ligne suivante : elle atteste que l'usager a donné son accord.",
            ATTESTATION,
        ]
    )


FORM_TEMPLATE: str = form_template()


def render_form(form: DemandeForm, *, organisation_label: Callable[[str], str] = str) -> str:
    """A filled form as text; `parse_form` reads it back to the same `DemandeForm`."""
    usager = form.usager
    lines = [
        f"{TERRITOIRE} : {form.territoire}",
        f"{ORGANISMES} : {', '.join(organisation_label(o) for o in form.organisations)}",
        f"{CATEGORIE} : {form.categorie or ''}",
        f"{OBJET} : {form.objet}",
        f"{PRENOM} : {usager.prenom}",
        f"{NOM} : {usager.nom}",
        f"{DATE_NAISSANCE} : {format_date(usager.date_naissance)}",
        f"{NIR} : {usager.nir or ''}",
        f"{ALLOCATAIRE} : {usager.numero_allocataire_caf or ''}",
        f"{NIF} : {usager.nif or ''}",
        f"{ADRESSE} : {usager.adresse or ''}",
        f"{TELEPHONE} : {usager.telephone or ''}",
        f"{MANDAT} : {form.mandat.type.value}",
        f"{DATE_MANDAT} : {format_date(form.mandat.date)}",
        f"{DESCRIPTION} :",
        form.description,
        "",
        ATTESTATION if form.mandat.attestation else "",
    ]
    return "\n".join(line.rstrip() for line in lines)
