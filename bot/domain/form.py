"""The opening form: the template the bot sends, its tolerant parser and its renderer.

Pure: `today` is a parameter and the directory is reached through the callables
and collections the caller passes in. Every problem is reported at once, in
French, because the reader is an aidant, not a developer.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

from bot.domain.model import DemandeForm, Mandat, MandatType, Usager
from bot.domain.values import MANDAT_LABELS as MANDAT_LABELS
from bot.domain.values import _age, _fold
from bot.domain.values import find_departement as find_departement
from bot.domain.values import format_date as format_date
from bot.domain.values import loose as loose
from bot.domain.values import nir_problem as nir_problem
from bot.domain.values import normalise_nir as normalise_nir
from bot.domain.values import normalise_phone as normalise_phone
from bot.domain.values import parse_date as parse_date
from bot.domain.values import parse_mandat as parse_mandat
from bot.domain.values import parse_natural_date as parse_natural_date

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


def canonical_field(name: str) -> str | None:
    """The form's field for a name as typed (« Date de naissance », « tel »), or None."""
    return _ALIASES.get(_fold(_strip_markup(name)))


def _is_attestation(line: str) -> bool:
    return _fold(_strip_markup(_LEADING.sub("", line))).startswith(_FOLDED_ATTESTATION)


def _is_explanation(line: str) -> bool:
    # « » » lines of the template, and « # » lines of the forms sent before.
    return line.lstrip().startswith(("#", EXPLANATION))


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
        if _is_explanation(line):
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
# The draft kept between messages: the raw text of each field, as the aidant wrote it.


@dataclass(frozen=True, slots=True)
class FieldInput:
    """What one message carried: the fields it names, and what was wrong in it."""

    values: Mapping[str, str]
    duplicates: tuple[str, ...] = ()
    unknown: tuple[tuple[str, str], ...] = ()
    attested: bool = False
    attestation_refused: bool = False
    any_key: bool = False


def read_fields(text: str) -> FieldInput:
    """The `clé : valeur` lines of a message (a whole form or a single correction)."""
    scan = _scan(text)
    return FieldInput(
        values=dict(scan.values),
        duplicates=tuple(scan.duplicates),
        unknown=tuple(scan.unknown),
        attested=scan.attested,
        attestation_refused=scan.attestation_refused,
        any_key=scan.any_key,
    )


@dataclass(frozen=True, slots=True)
class DraftFields:
    """A demande being prepared: raw values by canonical field, and the attestation
    (None: not given yet; False: the aidant said the usager did not agree)."""

    values: Mapping[str, str] = field(default_factory=dict)
    attested: bool | None = None

    def merged(self, update: FieldInput) -> DraftFields:
        """A field named in `update` replaces the draft's (an empty value clears it)."""
        values = {**self.values, **update.values}
        attested = self.attested
        if update.attested:
            attested = not update.attestation_refused
        return DraftFields({k: v for k, v in values.items() if k in FIELDS}, attested)

    def with_value(self, key: str, value: str) -> DraftFields:
        return DraftFields({**self.values, key: value}, self.attested)

    def with_attestation(self, attested: bool) -> DraftFields:
        return DraftFields(dict(self.values), attested)

    @property
    def empty(self) -> bool:
        return not any(v.strip() for v in self.values.values()) and self.attested is None

    def to_json(self) -> dict[str, object]:
        return {"values": dict(self.values), "attested": self.attested}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> DraftFields:
        raw = data.get("values")
        values = (
            {str(k): str(v) for k, v in raw.items() if str(k) in FIELDS}
            if isinstance(raw, Mapping)
            else {}
        )
        attested = data.get("attested")
        return cls(values, attested if isinstance(attested, bool) else None)


# The pseudo-field of the attestation line, for problems and for the guided path.
ACCORD = "accord"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing still missing or wrong; `field` names it (None: the whole message)."""

    field: str | None
    message: str


@dataclass(frozen=True, slots=True)
class Interpretation:
    """How a value written freely was understood (shown in the recap)."""

    field: str
    written: str
    understood: str


@dataclass(frozen=True, slots=True)
class Evaluation:
    form: DemandeForm | None
    problems: tuple[Problem, ...]
    interpretations: tuple[Interpretation, ...] = ()
    # What was understood of the destination even when the form is not complete yet,
    # so that the caller checks it against the directory at once.
    territoire: str | None = None
    organisations: tuple[str, ...] = ()
    categorie: str | None = None

    def missing_or_wrong(self) -> tuple[str, ...]:
        """Fields with a problem, in the template's order (then the attestation)."""
        keys = {p.field for p in self.problems}
        return tuple(k for k in (*FIELDS, ACCORD) if k in keys)


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """What the values are checked against (the caller builds it from the policies).

    `departements`: code → name. `organisation`: text → (id, display name) or None.
    `categories`: the accepted values, or a mapping of each value to its label.
    `suggest_organisations(text, territoire)`: the closest organisations available
    there. `required_identifiers(organisation ids)`: fields required by those bodies.
    """

    departements: Mapping[str, str]
    organisation: Callable[[str], tuple[str, str] | None]
    categories: Collection[str]
    suggest_organisations: Callable[[str, str], Sequence[str]] = lambda _text, _where: ()
    required_identifiers: Callable[[Sequence[str]], Mapping[str, str]] = lambda _ids: {}


def _split_organismes(value: str) -> list[str]:
    # Aidants write "CAF, CPAM", "CAF; CPAM", "CAF / CPAM" or "CAF et CPAM".
    parts = re.split(r"[,;/]|\s+et\s+|\s+\+\s+", value)
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


def _simple_vocabulary(
    known_departements: Collection[str],
    organisation_lookup: Callable[[str], str | None],
    categories: Collection[str],
) -> Vocabulary:
    names = (
        dict(known_departements)
        if isinstance(known_departements, Mapping)
        else {code: code for code in known_departements}
    )

    def organisation(text: str) -> tuple[str, str] | None:
        found = organisation_lookup(text)
        return (found, found) if found is not None else None

    return Vocabulary(departements=names, organisation=organisation, categories=categories)


def parse_form(
    text: str,
    *,
    today: date,
    known_departements: Collection[str],
    organisation_lookup: Callable[[str], str | None],
    categories: Collection[str],
) -> FormResult:
    """Parse and validate a whole opening form sent back by an aidant."""
    update = read_fields(text)
    if not update.any_key:
        return NotAForm()
    vocabulary = _simple_vocabulary(known_departements, organisation_lookup, categories)
    result = evaluate(DraftFields().merged(update), today=today, vocabulary=vocabulary)
    problems = [p.message for p in message_problems(update)] + [p.message for p in result.problems]
    if problems or result.form is None:
        return FormErrors(tuple(problems))
    return result.form


def message_problems(update: FieldInput) -> tuple[Problem, ...]:
    """What was wrong in the message itself (a misspelt key, a field given twice)."""
    problems = [
        Problem(None, f"Le champ « {folded} » n'est pas reconnu : vouliez-vous écrire « {hint} » ?")
        for folded, hint in update.unknown
    ]
    problems += [
        Problem(
            key,
            f"Le champ « {key} » apparaît plusieurs fois avec des valeurs différentes : "
            "n'en gardez qu'un.",
        )
        for key in update.duplicates
    ]
    return tuple(problems)


def evaluate(draft: DraftFields, *, today: date, vocabulary: Vocabulary) -> Evaluation:
    """Check every field of a draft: the form when all is right, else every problem."""
    values = draft.values
    problems: list[Problem] = []
    understood: list[Interpretation] = []

    def problem(key: str | None, message: str) -> None:
        problems.append(Problem(key, message))

    def required(key: str, what: str) -> str:
        value = values.get(key, "").strip()
        if not value:
            problem(key, f"Le champ « {key} » est obligatoire : indiquez {what}.")
        return value

    def note(key: str, written: str, shown: str) -> None:
        if loose(written) != loose(shown):
            understood.append(Interpretation(key, _single_line(written), shown))

    territoire = ""
    raw_territoire = required(
        TERRITOIRE, "le département (son numéro ou son nom : 95, 2A, 974, Val-d'Oise)"
    )
    if raw_territoire:
        territoire = find_departement(raw_territoire, vocabulary.departements) or ""
        if not territoire:
            problem(
                TERRITOIRE,
                f"Le département « {_single_line(raw_territoire)} » n'existe pas : "
                "indiquez son numéro ou son nom (par exemple 95, 2A, 974 ou Val-d'Oise).",
            )
        else:
            name = vocabulary.departements.get(territoire, territoire)
            shown = territoire if name == territoire else f"{territoire} ({name})"
            if loose(raw_territoire) != loose(territoire):
                understood.append(Interpretation(TERRITOIRE, _single_line(raw_territoire), shown))

    # A mapping of categories is canonical value → label: both are accepted.
    labels = (
        dict(vocabulary.categories)
        if isinstance(vocabulary.categories, Mapping)
        else {c: c for c in vocabulary.categories}
    )
    by_fold = {loose(c): c for c in labels} | {loose(v): c for c, v in labels.items()}
    organisations: list[str] = []
    category_named: str | None = None
    for name in _split_organismes(values.get(ORGANISMES, "")):
        found = vocabulary.organisation(name)
        if found is None:
            category = by_fold.get(loose(name))
            if category is not None:
                # « organismes : logement »: a category, whose organisations are proposed.
                category_named = category
                continue
            hint = ""
            if territoire:
                suggestions = vocabulary.suggest_organisations(name, territoire)
                if suggestions:
                    hint = (
                        f" Organismes proches disponibles dans le {territoire} : "
                        + ", ".join(suggestions)
                        + "."
                    )
            problem(
                ORGANISMES,
                f"L'organisme « {name} » est inconnu : vérifiez son nom "
                "(par exemple CAF, CPAM, MSA, URSSAF)." + hint,
            )
            continue
        org_id, label = found
        note(ORGANISMES, name, label)
        if org_id not in organisations:
            organisations.append(org_id)

    categorie: str | None = None
    raw_categorie = _single_line(values.get(CATEGORIE, ""))
    if raw_categorie:
        categorie = by_fold.get(loose(raw_categorie))
        if categorie is None:
            problem(
                CATEGORIE,
                f"La catégorie « {raw_categorie} » est inconnue : choisissez parmi "
                + ", ".join(labels.values())
                + ".",
            )
    if categorie is None and category_named is not None:
        categorie = category_named
    if not values.get(ORGANISMES, "").strip() and not raw_categorie:
        problem(
            ORGANISMES,
            "Indiquez au moins un organisme (champ « organismes ») ou, si vous ne savez pas "
            "lequel, une catégorie (champ « catégorie »).",
        )

    objet = _single_line(required(OBJET, "en quelques mots le sujet de la demande"))
    if len(objet) > OBJET_MAX:
        problem(
            OBJET,
            f"L'objet fait {len(objet)} caractères, soit {len(objet) - OBJET_MAX} de trop "
            f"({OBJET_MAX} au maximum) : raccourcissez-le et mettez les détails "
            "dans la description.",
        )

    prenom = _single_line(required(PRENOM, "le prénom de l'usager"))
    nom = _single_line(required(NOM, "le nom de l'usager"))
    for key, value in ((PRENOM, prenom), (NOM, nom)):
        if len(value) > NAME_MAX:
            problem(key, f"Le champ « {key} » est trop long ({NAME_MAX} caractères au maximum).")

    naissance = _date_field(
        values, DATE_NAISSANCE, "la date de naissance de l'usager", today, problem, note
    )
    if naissance is not None:
        if naissance > today:
            problem(
                DATE_NAISSANCE,
                f"La date de naissance ({format_date(naissance)}) est dans le futur : vérifiez-la.",
            )
        elif _age(naissance, today) > MAX_AGE_YEARS:
            problem(
                DATE_NAISSANCE,
                f"La date de naissance ({format_date(naissance)}) donne un âge de plus de "
                f"{MAX_AGE_YEARS} ans : vérifiez l'année.",
            )

    nir: str | None = None
    if raw := values.get(NIR, "").strip():
        nir = normalise_nir(raw)
        if found_problem := nir_problem(nir):
            problem(NIR, found_problem)

    allocataire: str | None = None
    if raw := values.get(ALLOCATAIRE, "").strip():
        allocataire = re.sub(r"\s", "", raw)
        if not re.fullmatch(r"\d{1,10}", allocataire):
            problem(
                ALLOCATAIRE,
                "Le numéro allocataire CAF ne peut contenir que des chiffres "
                "(7 en général, sans lettres).",
            )

    nif: str | None = None
    if raw := values.get(NIF, "").strip():
        nif = re.sub(r"\s", "", raw)
        if not re.fullmatch(r"[0-3]\d{12}", nif):
            problem(
                NIF,
                "Le NIF (numéro fiscal) doit compter 13 chiffres et commencer par 0, 1, 2 ou 3 : "
                "il figure en haut de l'avis d'impôt.",
            )

    present = {NIR: nir, ALLOCATAIRE: allocataire, NIF: nif}
    for key, why in vocabulary.required_identifiers(organisations).items():
        if key in present and not present[key] and not values.get(key, "").strip():
            problem(key, f"Le champ « {key} » est obligatoire {why}.")

    adresse = _single_line(values.get(ADRESSE, "")) or None
    if adresse and len(adresse) > ADRESSE_MAX:
        problem(ADRESSE, f"L'adresse est trop longue ({ADRESSE_MAX} caractères au maximum).")

    telephone: str | None = None
    if raw := values.get(TELEPHONE, "").strip():
        telephone = normalise_phone(raw)
        if telephone is None:
            problem(
                TELEPHONE,
                "Le numéro de téléphone n'est pas un numéro français valide : indiquez 10 chiffres "
                "commençant par 0 (par exemple 06 12 34 56 78) ou le format +33.",
            )

    mandat_type: MandatType | None = None
    raw_mandat = _single_line(required(MANDAT, "le type de mandat : papier, oral ou sms"))
    if raw_mandat:
        mandat_type = parse_mandat(raw_mandat)
        if mandat_type is None:
            problem(
                MANDAT,
                f"Le type de mandat « {raw_mandat} » est inconnu : indiquez papier, oral ou sms.",
            )
        elif loose(raw_mandat) != mandat_type.value:
            understood.append(Interpretation(MANDAT, raw_mandat, MANDAT_LABELS[mandat_type]))

    date_mandat = _date_field(
        values, DATE_MANDAT, "la date à laquelle l'usager a donné son accord", today, problem, note
    )
    if date_mandat is not None and date_mandat > today:
        problem(
            DATE_MANDAT,
            f"La date du mandat ({format_date(date_mandat)}) est dans le futur : "
            "indiquez le jour où l'usager a donné son accord.",
        )

    description = values.get(DESCRIPTION, "").strip()
    if not description:
        problem(
            DESCRIPTION,
            "Le champ « description » est obligatoire : expliquez la situation de l'usager "
            "sur les lignes qui suivent « description : ».",
        )
    elif len(description) > DESCRIPTION_MAX:
        problem(
            DESCRIPTION,
            f"La description est trop longue ({len(description)} caractères, "
            f"{DESCRIPTION_MAX} au maximum).",
        )

    if draft.attested is None:
        problem(
            ACCORD,
            f"La ligne « {ATTESTATION} » manque : gardez-la dans le formulaire pour attester "
            "que l'usager a donné son accord.",
        )
    elif not draft.attested:
        problem(
            ACCORD,
            "Sans l'accord de l'usager, la demande ne peut pas être ouverte : recueillez "
            "son accord puis renvoyez le formulaire.",
        )

    if objet and _objet_personal_data(
        objet,
        (prenom, nom, nir or "", allocataire or "", nif or "", values.get(DATE_NAISSANCE, "")),
    ):
        problem(
            OBJET,
            "L'objet ne doit contenir aucune donnée personnelle (nom, prénom, numéro, date…) : "
            "il apparaît dans les notifications. Mettez ces informations dans les champs prévus.",
        )

    if problems or naissance is None or mandat_type is None or date_mandat is None:
        return Evaluation(
            None,
            tuple(problems),
            tuple(understood),
            territoire or None,
            tuple(organisations),
            categorie,
        )
    form = DemandeForm(
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
    return Evaluation(form, (), tuple(understood), territoire, tuple(organisations), categorie)


def _date_field(
    values: Mapping[str, str],
    key: str,
    what: str,
    today: date,
    problem: Callable[[str | None, str], None],
    note: Callable[[str, str, str], None],
) -> date | None:
    raw = values.get(key, "").strip()
    if not raw:
        problem(key, f"Le champ « {key} » est obligatoire : indiquez {what} (JJ/MM/AAAA).")
        return None
    parsed = parse_natural_date(raw, today)
    if parsed is None:
        problem(
            key,
            f"La {key} « {_single_line(raw)} » n'est pas une date valide : écrivez-la sous la "
            "forme JJ/MM/AAAA (par exemple 05/03/1980), ou « aujourd'hui », « hier ».",
        )
    else:
        note(key, raw, format_date(parsed))
    return parsed


# ---------------------------------------------------------------------------
# Template and rendering

# Explanation lines of the template start with « » » (old forms used « # », still
# accepted). Element's composer turns the text an aidant sends into Markdown
# (CommonMark): « # » made each explanation a big heading, « - » a list, « > » a quote;
# « » » is plain text there, and in any other client.
EXPLANATION = "»"


def form_template(categories: Iterable[str] = DEFAULT_CATEGORIES) -> str:
    """The blank form sent on `!demande`; explanation lines start with « » »."""
    x = EXPLANATION
    return "\n".join(
        [
            f"{x} FORMULAIRE DE DEMANDE — copiez tout ce message, complétez-le et renvoyez-le ici.",
            f"{x} Écrivez chaque réponse après les deux-points « : », sur la même ligne.",
            f"{x} Les lignes qui commencent par « {x} » sont des explications : "
            "vous pouvez les laisser.",
            f"{x} Les champs marqués (facultatif) peuvent rester vides. Une correction peut "
            "s'envoyer seule, sur une ligne (par exemple « nom : Dupont »).",
            "",
            f"{x} Département où vit l'usager : son numéro ou son nom (95, 2A, 974, Val-d'Oise).",
            f"{TERRITOIRE} :",
            f"{x} Un ou plusieurs organismes, séparés par des virgules (par exemple : CAF, CPAM).",
            f"{x} Vous ne savez pas lequel ? Laissez vide et choisissez une catégorie ;",
            f"{x} !organismes suivi du département liste ceux qui sont disponibles.",
            f"{ORGANISMES} :",
            f"{x} (facultatif si un organisme est indiqué) " + ", ".join(categories) + ".",
            f"{CATEGORIE} :",
            f"{x} En quelques mots, {OBJET_MAX} caractères au maximum.",
            f"{x} ATTENTION : aucune donnée personnelle dans l'objet "
            "(ni nom, ni numéro, ni date) :",
            f"{x} il apparaît dans les notifications envoyées aux agents.",
            f"{OBJET} :",
            f"{x} Identité de l'usager.",
            f"{PRENOM} :",
            f"{NOM} :",
            f"{x} Par exemple 12/03/1961 ou 12 mars 1961.",
            f"{DATE_NAISSANCE} :",
            f"{x} Numéro de sécurité sociale : 15 caractères, clé comprise "
            "(obligatoire pour l'assurance maladie et la retraite).",
            f"{NIR} :",
            f"{x} (facultatif) Numéro allocataire, utile pour la CAF.",
            f"{ALLOCATAIRE} :",
            f"{x} (facultatif) Numéro fiscal, 13 chiffres, utile pour les impôts.",
            f"{NIF} :",
            f"{x} (facultatif) Adresse postale, sur une seule ligne.",
            f"{ADRESSE} :",
            f"{x} (facultatif) Numéro français, par exemple 06 12 34 56 78.",
            f"{TELEPHONE} :",
            f"{x} Comment l'usager vous a donné son accord : papier, oral ou sms.",
            f"{MANDAT} :",
            f"{x} Jour où l'usager a donné son accord : une date, « aujourd'hui » ou « hier ».",
            f"{DATE_MANDAT} :",
            f"{x} Décrivez la situation et ce que vous attendez de l'organisme.",
            f"{x} Vous pouvez écrire sur plusieurs lignes, sous « description : ».",
            f"{DESCRIPTION} :",
            "",
            "",
            f"{x} Gardez la ligne suivante : elle atteste que l'usager a donné son accord.",
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


def render_draft(draft: DraftFields) -> str:
    """A draft as form lines (what `!brouillon` shows); sent back, it reads the same."""
    lines = [f"{key} : {_single_line(draft.values.get(key, ''))}" for key in FIELDS[:-1]]
    lines.append(f"{DESCRIPTION} :")
    if description := draft.values.get(DESCRIPTION, "").strip():
        lines.append(description)
    lines.append("")
    if draft.attested:
        lines.append(ATTESTATION)
    return "\n".join(line.rstrip() for line in lines).rstrip("\n")
