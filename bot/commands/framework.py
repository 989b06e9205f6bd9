"""Declared commands: strict parsing, generated help, dispatch returning a Reply.

Pure: no nio, no I/O. The Matrix side turns a message body into ``parse(...)``,
passes the result to ``dispatch(...)`` and renders the ``Reply`` it gets back.

Tokenising: whitespace-separated words; a value with spaces goes in "…", « … »
or “…”. The apostrophe is NOT a quote (French text is full of them), which is
why ``shlex`` is not used: it treats ``'`` as a quote, has no asymmetric quotes
such as « », and gives no position for the verbatim remainder of a ``rest``
argument.

Destructive commands run in two steps. ``dispatch`` calls the handler with
``dry_run=True`` and returns a ``PendingConfirmation`` (what would be done, plus
a short code); the caller keeps it per (room, sender) and passes it back with
the next ``dispatch``; ``!confirmer`` then runs the handler with
``dry_run=False``. With ``--dry-run`` only the summary is shown. After a
``Parsed`` whose ``settles_pending`` is true (``!confirmer``, ``!annuler``) the
caller drops the stored pending confirmation; expiry is the caller's too.

Who may run a command is declared on it (``audience``) and checked once, here, by the
set's ``gate`` before any handler runs. A handler that fails is never swallowed: the
failure is logged with a reference and raised as ``CommandFailed``, which carries the
reply to give; the caller rolls back what the handler did (a savepoint) and decides
whether the event is retried (an outage) or answered with that reply.
"""

from __future__ import annotations

import csv
import difflib
import html
import io
import json
import logging
import re
import secrets
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType
from typing import Any, Final, Generic, Literal, Protocol, TypeAlias, TypeVar

ArgKind: TypeAlias = Literal["text", "int", "choice", "matrix_id", "email", "date", "rest"]
ARG_KINDS: Final[frozenset[str]] = frozenset(
    {"text", "int", "choice", "matrix_id", "email", "date", "rest"}
)

DRY_RUN: Final = "dry-run"
HELP_COMMAND: Final = "aide"
CONFIRM_COMMAND: Final = "confirmer"
CANCEL_COMMAND: Final = "annuler"
BUILTIN_SECTION: Final = "Aide et confirmation"
DEFAULT_SECTION: Final = "Général"

_log = logging.getLogger(__name__)


def fold(text: str) -> str:
    """Case- and accent-insensitive key: ``Traitée`` → ``traitee``."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True, slots=True)
class Arg:
    name: str
    kind: ArgKind
    help: str
    choices: tuple[str, ...] = ()
    optional: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ARG_KINDS:
            raise ValueError(f"unknown argument kind {self.kind!r}")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"argument name {self.name!r}: lowercase identifier expected")
        if (self.kind == "choice") != bool(self.choices):
            raise ValueError(f"argument {self.name!r}: choices go with kind 'choice' only")
        if len({fold(c) for c in self.choices}) != len(self.choices):
            raise ValueError(f"argument {self.name!r}: choices must differ beyond case/accents")

    @property
    def placeholder(self) -> str:
        word = f"{self.name}…" if self.kind == "rest" else self.name
        return f"[{word}]" if self.optional else f"<{word}>"


@dataclass(frozen=True, slots=True)
class Flag:
    """An option such as ``--dry-run``; handlers receive its bare name (``dry-run``)."""

    name: str
    help: str

    def __post_init__(self) -> None:
        bare = self.name.removeprefix("--")
        if not re.fullmatch(r"[a-z][a-z0-9-]*", bare):
            raise ValueError(f"flag name {self.name!r}: lowercase word expected")
        object.__setattr__(self, "name", bare)

    @property
    def display(self) -> str:
        return f"--{self.name}"


DRY_RUN_FLAG: Final = Flag(DRY_RUN, "Montre ce qui serait fait, sans rien changer.")


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    args: tuple[Arg, ...]
    help: str
    destructive: bool = False
    flags: tuple[Flag, ...] = ()
    aliases: tuple[str, ...] = ()
    section: str = ""
    # Who may run it (the set's gate knows what each audience means); None: anyone here.
    audience: str | None = None

    def __post_init__(self) -> None:
        for word in (self.name, *self.aliases):
            if not re.fullmatch(r"[^\W\d_][\w-]*", word):
                raise ValueError(f"command name {word!r}: a word without '!' expected")
        names = [a.name for a in self.args]
        if len(set(names)) != len(names):
            raise ValueError(f"!{self.name}: duplicate argument names")
        for i, arg in enumerate(self.args):
            if arg.kind == "rest" and i != len(self.args) - 1:
                raise ValueError(f"!{self.name}: a 'rest' argument must come last")
            if i and self.args[i - 1].optional and not arg.optional:
                raise ValueError(f"!{self.name}: optional arguments must come last")
        flag_names = [f.name for f in self.flags]
        if len(set(flag_names)) != len(flag_names):
            raise ValueError(f"!{self.name}: duplicate flags")
        if self.destructive and DRY_RUN not in flag_names:
            object.__setattr__(self, "flags", (*self.flags, DRY_RUN_FLAG))
        elif not self.destructive and DRY_RUN in flag_names:
            raise ValueError(f"!{self.name}: --dry-run is reserved to destructive commands")

    @property
    def usage(self) -> str:
        parts = [f"!{self.name}", *(a.placeholder for a in self.args)]
        parts += [f"[{f.display}]" for f in self.flags]
        return " ".join(parts)

    @property
    def summary(self) -> str:
        first = self.help.strip().splitlines()[0] if self.help.strip() else ""
        return first + (" (demande confirmation)" if self.destructive else "")


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Reply:
    """What a command answers; the Matrix side renders it (m.notice by default)."""

    text: str
    html: str | None = None
    notice: bool = True
    attachments: tuple[Attachment, ...] = ()
    is_error: bool = False
    # Matrix IDs of the people this reply asks to act: Element notifies them (and only them).
    mentions: tuple[str, ...] = ()

    @classmethod
    def error(cls, text: str, html: str | None = None) -> Reply:
        return cls(text=text, html=html, is_error=True)

    @classmethod
    def table(
        cls,
        headers: Sequence[str],
        rows: Iterable[Sequence[object]],
        *,
        title: str | None = None,
        empty: str = "Aucun résultat.",
        page: int = 1,
        command: str | None = None,
        filename: str | None = None,
    ) -> Reply:
        """A table that fits one message; past the listing budget, one page of it with
        every row in a CSV file (see `listing_reply`)."""
        listing = Listing(
            title=title or "",
            headers=headers,
            rows=list(rows),
            command=command,
            filename=filename or _file_name(title),
            empty=empty,
        )
        return listing_reply(listing, page)


def render_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    title: str | None = None,
    empty: str = "Aucun résultat.",
) -> tuple[str, str]:
    """A small table as aligned plain text and as escaped HTML."""
    cells = [["—" if v is None else str(v) for v in row] for row in rows]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError("every row needs one cell per header")
    head_html = f"<p><strong>{html.escape(title)}</strong></p>" if title else ""
    head_text = [title] if title else []
    if not cells:
        return "\n".join([*head_text, empty]), f"{head_html}<p>{html.escape(empty)}</p>"
    widths = [max(len(line[i]) for line in [list(headers), *cells]) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    text_lines = [*head_text, line(headers), line(["-" * w for w in widths])]
    text_lines += [line(row) for row in cells]
    th = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in cells
    )
    markup = f"{head_html}<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"
    return "\n".join(text_lines), markup


# --------------------------------------------------------------------------- listings

# A listing's message, body and formatted body together, counted as JSON text (what is
# encrypted, non-ASCII escaped): encrypted, a message grows by a third plus ~1 KB of
# envelope, so 24,000 stays around 33 KB on the wire, half of the homeserver's 64 KiB.
LISTING_BUDGET: Final = 24_000
PAGE_ROWS: Final = 50
CELL_CHARS: Final = 200  # a longer cell is cut in the message (never in the file)
_TITLE_RESERVE: Final = 1_200  # the page's title and footer, measured apart
_PAGE_WORD = re.compile(r"(?i)^page=(\S*)$")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True, slots=True)
class Listing:
    """Rows to show in one message, or page by page with the whole list as a CSV file."""

    title: str  # « Agents (8000) »
    headers: Sequence[str]
    rows: Sequence[Sequence[object]]
    # How to ask for another page, « {page} » in it ("!agents page={page}"); None: the
    # command has no pages, the message shows the first rows and the file all of them.
    command: str | None
    filename: str  # the CSV file with every row, attached when the list has pages
    empty: str = "Aucun résultat."


def message_size(text: str, markup: str | None) -> int:
    """What the budget counts: body and formatted body as JSON strings."""
    return len(json.dumps(text)) + len(json.dumps(markup or ""))


def page_word(text: str | None) -> tuple[str, int]:
    """The words of `text` without a `page=N` word, and N (1 without it)."""
    words, page = [], 1
    for word in (text or "").split():
        found = _PAGE_WORD.match(word)
        if found is None:
            words.append(word)
            continue
        if not found.group(1).isdigit() or int(found.group(1)) < 1:
            raise ValueError(f"« {word} » : le numéro de page est un entier à partir de 1.")
        page = int(found.group(1))
    return " ".join(words), page


def listing_reply(
    listing: Listing, page: int = 1, *, budget: int = LISTING_BUDGET, page_rows: int = PAGE_ROWS
) -> Reply:
    """The whole list when it fits the budget; else page `page` of it (at most `page_rows`
    rows, within the budget), how to get the others, and every row in a CSV file."""
    full = [["—" if v is None else str(v) for v in row] for row in listing.rows]
    title = listing.title or None
    # Each cell is in the body and in the formatted body: past the budget for sure without
    # rendering (a national list is megabytes).
    if 2 * sum(len(v) for row in full for v in row) <= budget:
        text, markup = render_table(listing.headers, full, title=title, empty=listing.empty)
        if message_size(text, markup) <= budget:
            if page > 1:
                return Reply.error(f"Page {page} inexistante : cette liste tient en une page.")
            return Reply(text, markup)
    cells = [[_clip(v) for v in row] for row in full]
    pages = _pages(listing.headers, cells, budget - _TITLE_RESERVE, page_rows)
    if listing.command is None:
        pages = pages[:1]
    if page > len(pages):
        return Reply.error(f"Page {page} inexistante : cette liste tient en {len(pages)} page(s).")
    start, end = pages[page - 1]
    if listing.command is None:
        title = f"{listing.title} — les {end} premières lignes sur {len(cells)}"
        after = "La suite n'est pas affichée."
    else:
        title = f"{listing.title} — page {page}/{len(pages)}, lignes {start + 1} à {end}"
        after = (
            f"Page suivante : {listing.command.format(page=page + 1)}."
            if page < len(pages)
            else "C'est la dernière page."
        )
    text, markup = render_table(listing.headers, cells[start:end], title=title)
    footer = f"{after} La liste complète est dans le fichier joint « {listing.filename} »."
    text += "\n" + footer
    markup += f"<p>{html.escape(footer)}</p>"
    data = _csv(listing.headers, full)
    return Reply(text, markup, attachments=(Attachment(listing.filename, "text/csv", data),))


def _file_name(title: str | None) -> str:
    """« Groupes (812) » → groupes.csv."""
    words = re.findall(r"[a-z0-9]+", fold(re.sub(r"\(.*?\)", " ", title or ""))) or ["liste"]
    return "-".join(words[:4]) + ".csv"


def _clip(value: str) -> str:
    value = " ".join(value.split())
    return value if len(value) <= CELL_CHARS else value[: CELL_CHARS - 1] + "…"


def _pages(
    headers: Sequence[str], cells: list[list[str]], budget: int, page_rows: int
) -> list[tuple[int, int]]:
    """Consecutive pages, each of at most `page_rows` rows and within `budget`."""
    bounds, start = [], 0
    while start < len(cells):
        n = min(page_rows, len(cells) - start)
        while n > 1:
            size = message_size(*render_table(headers, cells[start : start + n]))
            if size <= budget:
                break
            n = max(1, min(n - 1, n * budget // size))
        bounds.append((start, start + n))
        start += n
    return bounds


def _csv(headers: Sequence[str], rows: list[list[str]]) -> bytes:
    """`;`-separated UTF-8 with a BOM (French Excel); a cell that starts like a formula
    is neutralised."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow(headers)
    for row in rows:
        writer.writerow(["'" + v if v.startswith(_FORMULA_START) else v for v in row])
    return ("\ufeff" + out.getvalue()).encode("utf-8")


# --------------------------------------------------------------------------- parse results


@dataclass(frozen=True, slots=True)
class Parsed:
    spec: CommandSpec
    args: Mapping[str, Any]
    flags: frozenset[str]

    @property
    def dry_run(self) -> bool:
        return DRY_RUN in self.flags

    @property
    def settles_pending(self) -> bool:
        """After this command the caller forgets its pending confirmation (a `!confirmer`
        without its code leaves it waiting: it runs nothing and abandons nothing)."""
        if self.spec.name == CONFIRM_COMMAND:
            return self.args.get("code") is not None
        return self.spec.name == CANCEL_COMMAND


@dataclass(frozen=True, slots=True)
class ParseFailure:
    message: str
    usage: str | None = None

    def reply(self) -> Reply:
        if self.usage is None:
            return Reply.error(self.message)
        text = f"{self.message}\nUsage : {self.usage}"
        markup = f"{html.escape(self.message)}<br/>Usage : <code>{html.escape(self.usage)}</code>"
        return Reply.error(text, markup)


@dataclass(frozen=True, slots=True)
class NotACommand:
    """An ordinary message: the command layer has nothing to say."""


@dataclass(frozen=True, slots=True)
class PendingConfirmation:
    """A destructive command waiting for ``!confirmer``; kept by the caller."""

    summary: Reply  # to send now: what would be done + how to confirm
    token: str
    parsed: Parsed


ParseResult: TypeAlias = Parsed | ParseFailure | NotACommand

# --------------------------------------------------------------------------- handlers

CtxT = TypeVar("CtxT")
CtxT_contra = TypeVar("CtxT_contra", contravariant=True)

Handler: TypeAlias = Callable[[CtxT, Mapping[str, Any], frozenset[str]], Awaitable[Reply]]


class DestructiveHandler(Protocol[CtxT_contra]):
    def __call__(
        self,
        ctx: CtxT_contra,
        args: Mapping[str, Any],
        flags: frozenset[str],
        /,
        *,
        dry_run: bool,
    ) -> Awaitable[Reply]: ...


ErrorCallback: TypeAlias = Callable[[BaseException, str, Parsed], None]
# Returns the French refusal when the context may not run the command, None otherwise.
Gate: TypeAlias = Callable[[CtxT_contra, CommandSpec], str | None]
# Whether the command makes sense here and now (`!rouvrir` on an open demande does not):
# `!aide` lists only the commands the gate lets through and that apply.
Applies: TypeAlias = Callable[[CtxT_contra, CommandSpec], bool]


class CommandFailed(Exception):
    """A handler raised; the cause is chained and was logged with `reference`.

    The caller rolls back what it can, re-raises an outage so the work is retried, and
    otherwise answers `failure_reply(reference, ...)`.
    """

    def __init__(self, reference: str) -> None:
        super().__init__(reference)
        self.reference = reference


def _log_error(exc: BaseException, reference: str, parsed: Parsed) -> None:
    _log.error("command !%s failed (%s)", parsed.spec.name, reference, exc_info=exc)


# Unambiguous alphabet: no 0/O, 1/I/L.
_CODE_ALPHABET: Final = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


def _code(length: int) -> str:
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(length))


def new_error_reference() -> str:
    return f"ERR-{_code(6)}"


# --------------------------------------------------------------------------- tokeniser

_QUOTES: Final = {'"': '"', "«": "»", "“": "”"}  # straight, French, curly
_DASHES: Final = ("--", "—", "–")  # phones turn "--" into a dash


class _TokenError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    quoted: bool


def _next_token(text: str, pos: int) -> tuple[_Token | None, int]:
    n = len(text)
    while pos < n and text[pos].isspace():
        pos += 1
    if pos >= n:
        return None, pos
    opening = text[pos]
    if opening in _QUOTES:
        end = text.find(_QUOTES[opening], pos + 1)
        if end < 0:
            raise _TokenError(f"Guillemet {opening} non fermé.")
        value = text[pos + 1 : end]
        if opening == "«":
            value = value.strip()  # « texte » carries typographic spaces
        if end + 1 < n and not text[end + 1].isspace():
            raise _TokenError(
                f"Il manque une espace après le guillemet fermant {_QUOTES[opening]}."
            )
        return _Token(value, quoted=True), end + 1
    start = pos
    while pos < n and not text[pos].isspace():
        pos += 1
    return _Token(text[start:pos], quoted=False), pos


def _flag_name(token: _Token) -> str | None:
    if token.quoted:
        return None
    for dash in _DASHES:
        rest = token.value.removeprefix(dash)
        if rest != token.value and rest[:1].isalpha():
            return rest.casefold()
    return None


# --------------------------------------------------------------------------- argument types

_MATRIX_ID_RE: Final = re.compile(
    r"@[\x21-\x39\x3b-\x7e]+:(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?"
)
_EMAIL_RE: Final = re.compile(r"[^@\s\"<>(),;:]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_DATE_FR_RE: Final = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})")
_DATE_ISO_RE: Final = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_INT_RE: Final = re.compile(r"[+-]?[0-9]+")


def _convert(arg: Arg, raw: str) -> object:
    """The typed value, or raise ``_TokenError`` with a French message."""
    if not raw.strip():
        raise _TokenError(f"L'argument {arg.name} ne peut pas être vide.")
    if arg.kind in ("text", "rest"):
        return raw
    if arg.kind == "int":
        if not _INT_RE.fullmatch(raw):
            raise _TokenError(f"« {raw} » n'est pas un nombre entier (argument {arg.name}).")
        return int(raw)
    if arg.kind == "choice":
        for choice in arg.choices:
            if fold(choice) == fold(raw):
                return choice
        raise _TokenError(
            f"« {raw} » n'est pas une valeur possible pour {arg.name} : {', '.join(arg.choices)}."
        )
    if arg.kind == "matrix_id":
        if not _MATRIX_ID_RE.fullmatch(raw):
            raise _TokenError(
                f"« {raw} » n'est pas un identifiant Matrix (forme @nom:serveur) "
                f"(argument {arg.name})."
            )
        return raw
    if arg.kind == "email":
        if len(raw) > 254 or not _EMAIL_RE.fullmatch(raw):
            raise _TokenError(
                f"« {raw} » n'est pas une adresse e-mail valide (argument {arg.name})."
            )
        local, _, domain = raw.rpartition("@")
        return f"{local}@{domain.lower()}"
    return _convert_date(arg, raw)


def _convert_date(arg: Arg, raw: str) -> date:
    if match := _DATE_FR_RE.fullmatch(raw):
        day, month, year = (int(g) for g in match.groups())
    elif match := _DATE_ISO_RE.fullmatch(raw):
        year, month, day = (int(g) for g in match.groups())
    else:
        raise _TokenError(
            f"« {raw} » n'est pas une date (argument {arg.name}) : "
            "écrivez JJ/MM/AAAA ou AAAA-MM-JJ."
        )
    try:
        return date(year, month, day)
    except ValueError:
        raise _TokenError(f"La date « {raw} » n'existe pas (argument {arg.name}).") from None


_KIND_LABELS: Final[Mapping[str, str]] = {
    "text": "texte (entre guillemets s'il contient des espaces)",
    "int": "nombre entier",
    "choice": "au choix",
    "matrix_id": "identifiant Matrix (@nom:serveur)",
    "email": "adresse e-mail",
    "date": "date (JJ/MM/AAAA ou AAAA-MM-JJ)",
    "rest": "texte libre jusqu'à la fin du message",
}


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True, slots=True)
class _Entry(Generic[CtxT]):
    spec: CommandSpec
    handler: Handler[CtxT] | None = None
    destructive_handler: DestructiveHandler[CtxT] | None = None


class CommandSet(Generic[CtxT]):
    """The declared commands, with ``!aide``, ``!confirmer`` and ``!annuler`` built in."""

    def __init__(
        self,
        *,
        on_error: ErrorCallback | None = None,
        gate: Gate[CtxT] | None = None,
        confirmations: bool = True,
        applies: Applies[CtxT] | None = None,
    ) -> None:
        self._on_error: ErrorCallback = on_error or _log_error
        self._gate = gate
        self._applies = applies
        self._entries: dict[str, _Entry[CtxT]] = {}  # folded name or alias → entry
        self._order: list[_Entry[CtxT]] = []
        self.confirmations = confirmations
        self._help = self._builtin(
            CommandSpec(
                HELP_COMMAND,
                (Arg("commande", "text", "Une commande, pour son détail.", optional=True),),
                "Affiche la liste des commandes, ou le détail de l'une d'elles.",
                aliases=("help",),
                section=BUILTIN_SECTION,
            )
        )
        # Sets without destructive commands (a demande room, the direct chat) have no
        # confirmation to give: their `!confirmer` / `!annuler`, if any, are their own.
        self._confirm: CommandSpec | None = None
        self._cancel: CommandSpec | None = None
        if confirmations:
            self._confirm = self._builtin(
                CommandSpec(
                    CONFIRM_COMMAND,
                    (Arg("code", "text", "Le code donné avec le résumé.", optional=True),),
                    "Exécute la commande qui attend votre confirmation.",
                    section=BUILTIN_SECTION,
                )
            )
            self._cancel = self._builtin(
                CommandSpec(
                    CANCEL_COMMAND,
                    (),
                    "Abandonne la commande qui attend votre confirmation.",
                    section=BUILTIN_SECTION,
                )
            )

    # -- registration

    def _builtin(self, spec: CommandSpec) -> CommandSpec:
        self._register(_Entry(spec))
        return spec

    def _register(self, entry: _Entry[CtxT]) -> None:
        keys = [fold(w) for w in (entry.spec.name, *entry.spec.aliases)]
        for key in keys:
            if key in self._entries or keys.count(key) > 1:
                raise ValueError(f"command name !{key} declared twice")
        for key in keys:
            self._entries[key] = entry
        self._order.append(entry)

    def add(self, spec: CommandSpec, handler: Handler[CtxT]) -> None:
        if spec.destructive:
            raise TypeError(f"!{spec.name} is destructive: use add_destructive()")
        self._register(_Entry(spec, handler=handler))

    def add_destructive(self, spec: CommandSpec, handler: DestructiveHandler[CtxT]) -> None:
        """The handler gets ``dry_run``: true → say what would be done, change nothing."""
        if not spec.destructive:
            raise TypeError(f"!{spec.name} is not destructive: use add()")
        if not self.confirmations:
            raise TypeError(f"!{spec.name} is destructive: this set has no confirmations")
        self._register(_Entry(spec, destructive_handler=handler))

    def command(self, spec: CommandSpec) -> Callable[[Handler[CtxT]], Handler[CtxT]]:
        def register(handler: Handler[CtxT]) -> Handler[CtxT]:
            self.add(spec, handler)
            return handler

        return register

    def destructive(
        self, spec: CommandSpec
    ) -> Callable[[DestructiveHandler[CtxT]], DestructiveHandler[CtxT]]:
        def register(handler: DestructiveHandler[CtxT]) -> DestructiveHandler[CtxT]:
            self.add_destructive(spec, handler)
            return handler

        return register

    @property
    def specs(self) -> tuple[CommandSpec, ...]:
        return tuple(e.spec for e in self._order)

    def find(self, name: str) -> CommandSpec | None:
        entry = self._entries.get(fold(name.removeprefix("!")))
        return entry.spec if entry else None

    # -- parsing

    def _unknown(self, name: str) -> str:
        close = difflib.get_close_matches(fold(name), list(self._entries), n=1, cutoff=0.6)
        hint = f" Vouliez-vous dire !{self._entries[close[0]].spec.name} ?" if close else ""
        return f"Commande inconnue : !{name}.{hint} Tapez !{HELP_COMMAND} pour la liste."

    def parse(self, text: str) -> ParseResult:
        text = text.strip()
        if not text.startswith("!") or not text[1:2].isalpha():
            return NotACommand()
        head, pos = _next_token(text, 0)
        assert head is not None  # text starts with "!"
        name = head.value[1:]
        entry = self._entries.get(fold(name))
        if entry is None:
            return ParseFailure(self._unknown(name))
        spec = entry.spec
        try:
            values, flags = self._parse_args(spec, text, pos)
        except _TokenError as exc:
            return ParseFailure(str(exc), spec.usage)
        return Parsed(spec, MappingProxyType(values), frozenset(flags))

    def _parse_args(
        self, spec: CommandSpec, text: str, pos: int
    ) -> tuple[dict[str, Any], set[str]]:
        values: dict[str, Any] = {}
        flags: set[str] = set()
        known_flags = {f.name for f in spec.flags}

        def add_flag(name: str) -> None:
            if name not in known_flags:
                allowed = ", ".join(f.display for f in spec.flags)
                hint = f"options possibles : {allowed}" if allowed else "aucune option ici"
                raise _TokenError(f"Option inconnue : --{name} ({hint}).")
            flags.add(name)

        index = 0
        while index < len(spec.args):
            arg = spec.args[index]
            if arg.kind == "rest":
                pos = self._leading_flags(text, pos, add_flag)
                rest = self._trailing_flags(text[pos:].strip(), known_flags, flags)
                if rest:
                    values[arg.name] = rest
                    index += 1
                pos = len(text)
                break
            token, pos = _next_token(text, pos)
            if token is None:
                break
            if (flag := _flag_name(token)) is not None:
                add_flag(flag)
                continue
            values[arg.name] = _convert(arg, token.value)
            index += 1
        missing = [a for a in spec.args[index:] if not a.optional]
        if missing:
            names = ", ".join(a.name for a in missing)
            plural = "s" if len(missing) > 1 else ""
            raise _TokenError(f"Argument{plural} manquant{plural} : {names}.")
        for arg in spec.args[index:]:
            values[arg.name] = None
        while True:
            token, pos = _next_token(text, pos)
            if token is None:
                break
            if (flag := _flag_name(token)) is None:
                raise _TokenError(f"Trop d'arguments : « {token.value} » n'était pas attendu.")
            add_flag(flag)
        return values, flags

    @staticmethod
    def _leading_flags(text: str, pos: int, add_flag: Callable[[str], None]) -> int:
        while True:
            try:
                token, after = _next_token(text, pos)
            except _TokenError:
                return pos  # an unclosed quote is just part of free text
            if token is None or (flag := _flag_name(token)) is None:
                return pos
            add_flag(flag)
            pos = after

    @staticmethod
    def _trailing_flags(rest: str, known: set[str], flags: set[str]) -> str:
        # `!clore le motif --dry-run`: a declared flag ending free text is a flag.
        while True:
            head, _, last = rest.rpartition(" ")
            flag = _flag_name(_Token(last, quoted=False))
            if flag is None or flag not in known:
                return rest
            flags.add(flag)
            rest = head.rstrip()

    # -- help

    def help_text(self, name: str | None = None, ctx: CtxT | None = None) -> str:
        """The overview (with `ctx`: only what this person may use here), or one command."""
        if name is None:
            return self._overview(ctx)
        spec = self.find(name)
        if spec is None:
            return self._unknown(name.removeprefix("!"))
        return self._detail(spec)

    def shown(self, spec: CommandSpec, ctx: CtxT) -> bool:
        """Whether the overview of `!aide` lists the command for this context."""
        gated = self._gate is not None and spec.audience is not None
        if gated and self._gate is not None and self._gate(ctx, spec) is not None:
            return False
        return self._applies is None or self._applies(ctx, spec)

    def _overview(self, ctx: CtxT | None = None) -> str:
        sections: dict[str, list[CommandSpec]] = {}
        for entry in self._order:
            if ctx is not None and not self.shown(entry.spec, ctx):
                continue
            if entry.spec.section != BUILTIN_SECTION:
                sections.setdefault(entry.spec.section or DEFAULT_SECTION, []).append(entry.spec)
        sections[BUILTIN_SECTION] = [
            s for s in (self._help, self._confirm, self._cancel) if s is not None
        ]
        lines = ["Commandes disponibles :"]
        for title, specs in sections.items():
            lines += ["", f"{title} :"]
            lines += [f"  {s.usage} — {s.summary}" for s in specs]
        lines += ["", f"Tapez « !{HELP_COMMAND} <commande> » pour le détail d'une commande."]
        return "\n".join(lines)

    def _detail(self, spec: CommandSpec) -> str:
        lines = [f"Commande !{spec.name}", f"Usage : {spec.usage}", "", spec.help.strip()]
        if spec.destructive:
            lines += [
                "",
                "Commande à confirmer (demande confirmation) : elle montre d'abord ce qui "
                f"sera fait, puis attend « !{CONFIRM_COMMAND} ».",
            ]
        if spec.args:
            lines += ["", "Arguments :"]
            for arg in spec.args:
                kind = _KIND_LABELS[arg.kind]
                if arg.choices:
                    kind = f"{kind} : {', '.join(arg.choices)}"
                optional = ", facultatif" if arg.optional else ""
                lines.append(f"  {arg.placeholder} — {arg.help} ({kind}{optional})")
        if spec.flags:
            lines += ["", "Options :"]
            lines += [f"  {f.display} — {f.help}" for f in spec.flags]
        if spec.aliases:
            lines += ["", "Autres noms : " + ", ".join(f"!{a}" for a in spec.aliases)]
        return "\n".join(lines)

    # -- dispatch

    async def dispatch(
        self, parsed: Parsed, ctx: CtxT, *, pending: PendingConfirmation | None = None
    ) -> Reply | PendingConfirmation:
        """Run a parsed command; ``pending`` is the caller's stored confirmation, if any."""
        spec = parsed.spec
        if spec is self._help:
            topic = parsed.args["commande"]
            text = self.help_text(topic, ctx)
            return Reply.error(text) if topic and self.find(topic) is None else Reply(text)
        if self._cancel is not None and spec is self._cancel:
            if pending is None:
                return Reply.error("Aucune commande n'attend de confirmation.")
            return Reply(f"Commande !{pending.parsed.spec.name} abandonnée : rien n'a été fait.")
        if self._confirm is not None and spec is self._confirm:
            return await self._confirmed(parsed, ctx, pending)
        if self._gate is not None and spec.audience is not None:
            refusal = self._gate(ctx, spec)
            if refusal is not None:
                return Reply.error(refusal)
        if not spec.destructive:
            return await self._run(parsed, ctx, dry_run=False)
        summary = await self._run(parsed, ctx, dry_run=True)
        if parsed.dry_run or summary.is_error:
            return summary
        return self._pending(parsed, summary)

    async def _confirmed(
        self, parsed: Parsed, ctx: CtxT, pending: PendingConfirmation | None
    ) -> Reply:
        if pending is None:
            return Reply.error("Aucune commande n'attend de confirmation.")
        code = parsed.args["code"]
        if code is None:
            # The code makes the operator read the summary: never run without it.
            return Reply.error(
                f"Pour exécuter !{pending.parsed.spec.name}, écrivez le code donné avec le "
                f"résumé : !{CONFIRM_COMMAND} CODE (ou !{CANCEL_COMMAND} pour abandonner)."
            )
        if fold(code) != fold(pending.token):
            return Reply.error(
                f"Code « {code} » incorrect : la commande !{pending.parsed.spec.name} est "
                "abandonnée, rien n'a été fait. Relancez-la pour obtenir un nouveau code."
            )
        return await self._run(pending.parsed, ctx, dry_run=False)

    @staticmethod
    def _pending(parsed: Parsed, summary: Reply) -> PendingConfirmation:
        token = _code(4)
        how = f"Pour exécuter : !{CONFIRM_COMMAND} {token} — pour abandonner : !{CANCEL_COMMAND}"
        markup = None
        if summary.html is not None:
            markup = f"{summary.html}<p><strong>{html.escape(how)}</strong></p>"
        confirm = Reply(
            text=f"{summary.text}\n\n{how}",
            html=markup,
            notice=summary.notice,
            attachments=summary.attachments,
        )
        return PendingConfirmation(summary=confirm, token=token, parsed=parsed)

    async def _run(self, parsed: Parsed, ctx: CtxT, *, dry_run: bool) -> Reply:
        entry = self._entries[fold(parsed.spec.name)]
        try:
            if entry.destructive_handler is not None:
                flags = parsed.flags - {DRY_RUN}
                reply = await entry.destructive_handler(ctx, parsed.args, flags, dry_run=dry_run)
            elif entry.handler is not None:
                reply = await entry.handler(ctx, parsed.args, parsed.flags)
            else:
                raise LookupError(f"!{parsed.spec.name} has no handler")
            if not isinstance(reply, Reply):
                raise TypeError(f"!{parsed.spec.name} returned {type(reply).__name__}")
        except Exception as exc:
            reference = new_error_reference()
            try:
                self._on_error(exc, reference, parsed)
            except Exception:
                _log_error(exc, reference, parsed)
            raise CommandFailed(reference) from exc
        return reply


def failure_reply(reference: str, *, rolled_back: bool) -> Reply:
    """What a user reads when their command failed: `rolled_back` when nothing of it stayed."""
    if rolled_back:
        what = "La commande n'a pas été exécutée : réessayez dans un moment"
    else:
        what = "Il n'est pas certain que la commande ait abouti : vérifiez avant de la relancer"
    return Reply.error(
        f"Une erreur inattendue s'est produite (référence {reference}). {what}, et donnez "
        "cette référence à l'équipe technique si le problème persiste."
    )
