"""The reading machinery: a `Loader` collects every problem of the file, a `Table`
reads one section's keys with their types, defaults and minimums (secrets from the
environment or a private file), and records which keys it knows."""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, time
from pathlib import Path
from typing import Final, TypeVar

from bot.settings.schema import PLACEHOLDER, Secret

_T = TypeVar("_T")


class _Absent:
    """Marker: the key is not in the file."""


class _Invalid:
    """Marker: the key is there but already reported as wrong."""


_ABSENT: Final = _Absent()
_INVALID: Final = _Invalid()


class Loader:
    def __init__(self, config_dir: Path, env: Mapping[str, str]) -> None:
        self.config_dir = config_dir
        self.env = env
        self.problems: list[tuple[str, str]] = []
        self.parsed: dict[str, object] = {}

    def error(self, key: str, message: str) -> None:
        if (key, message) not in self.problems:
            self.problems.append((key, message))

    def has_problem(self, key: str) -> bool:
        return any(k == key for k, _ in self.problems)

    def section(self, cls: type[_T]) -> _T:
        for value in self.parsed.values():
            if isinstance(value, cls):
                return value
        raise LookupError(f"section {cls.__name__} must be registered before its users")

    def resolve(self, raw: str) -> Path:
        path = Path(raw).expanduser()
        return path if path.is_absolute() else self.config_dir / path


def unknown_hint(what: str, name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (vouliez-vous dire « {close[0]} » ?)" if close else ""
    return f"{what}{hint}"


def _type_fr(value: object) -> str:
    names: list[tuple[type, str]] = [
        (bool, "un booléen"),
        (int, "un nombre entier"),
        (float, "un nombre décimal"),
        (str, "une chaîne"),
        (list, "une liste"),
        (dict, "une section"),
        (datetime, "une date-heure"),
        (date, "une date"),
        (time, "une heure"),
    ]
    return next((label for kind, label in names if isinstance(value, kind)), "une valeur")


class Table:
    """Typed reads of one section; each read records the key as known."""

    def __init__(self, loader: Loader, name: str, raw: Mapping[str, object]) -> None:
        self.loader = loader
        self.name = name
        self._raw = raw
        self._known: set[str] = set()

    def key(self, key: str) -> str:
        return f"{self.name}.{key}"

    def error(self, key: str, message: str) -> None:
        self.loader.error(self.key(key), message)

    def has_problem(self, key: str) -> bool:
        return self.loader.has_problem(self.key(key))

    def has_key(self, key: str) -> bool:
        return key in self._raw

    def report_unknown_keys(self) -> None:
        for key in self._raw:
            if key not in self._known:
                self.error(key, unknown_hint("clé inconnue", key, self._known))

    def _get(self, key: str) -> object:
        self._known.add(key)
        if key not in self._raw:
            return _ABSENT
        value = self._raw[key]
        if isinstance(value, str) and PLACEHOLDER in value:
            self.error(key, f"valeur d'exemple « {PLACEHOLDER}… » à remplacer avant de démarrer")
            return _INVALID
        return value

    def _typed(self, key: str, kind: type[_T], label: str) -> _T | _Absent | _Invalid:
        value = self._get(key)
        if isinstance(value, _Absent | _Invalid):
            return value
        # bool is an int in Python: never accept `true` where a number is expected.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.error(key, f"doit être {label}, pas {_type_fr(value)}")
            return _INVALID
        return value

    def text(
        self,
        key: str,
        default: str | None = None,
        *,
        check: Callable[[str], str | None] | None = None,
    ) -> str:
        value = self._typed(key, str, "une chaîne de caractères (entre guillemets)")
        if isinstance(value, _Absent):
            if default is None:
                self.error(key, "clé obligatoire manquante")
            return default or ""
        if isinstance(value, _Invalid):
            return default or ""
        if not value.strip():
            self.error(key, "ne doit pas être vide")
        elif check is not None and (message := check(value)) is not None:
            self.error(key, message)
        return value

    def optional_text(self, key: str) -> str | None:
        value = self._typed(key, str, "une chaîne de caractères (entre guillemets)")
        return value if isinstance(value, str) else None

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """A list of non-empty strings (``["a", "b"]``)."""
        value = self._typed(key, list, "une liste de chaînes")
        if not isinstance(value, list):
            return default
        if not all(isinstance(v, str) and v.strip() for v in value):
            self.error(key, "doit être une liste de chaînes non vides")
            return default
        return tuple(v.strip() for v in value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._typed(key, bool, "true ou false")
        return value if isinstance(value, bool) else default

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        value = self._typed(key, int, "un nombre entier")
        if not isinstance(value, int):
            return default
        if value < minimum:
            self.error(key, f"doit être au moins {minimum}")
        return value

    def choice(self, key: str, choices: Iterable[str], default: str) -> str:
        allowed = tuple(choices)
        value = self.text(key, default)
        if value.upper() not in allowed:
            self.error(key, f"valeur « {value} » inconnue ; possibles : {', '.join(allowed)}")
            return default
        return value.upper()

    def path(self, key: str, default: Path) -> Path:
        value = self.optional_text(key)
        if value is None or not value.strip():
            if value is not None:
                self.error(key, "ne doit pas être vide")
            return default
        return self.loader.resolve(value)

    def secret(
        self,
        name: str,
        env_var: str,
        *,
        required: bool,
        inline_forbidden: bool = True,
        check: Callable[[str], str | None] | None = None,
    ) -> Secret | None:
        """A secret from ``env_var`` (wins) or from the ``<name>_file`` key."""
        file_key = f"{name}_file"
        ways = f"indiquez {self.key(file_key)} ou la variable d'environnement {env_var}"
        inline_given = inline_forbidden and name in self._raw
        if inline_forbidden:
            self._known.add(name)
            if inline_given:
                self.error(
                    name,
                    "un secret ne doit jamais être écrit dans le fichier de configuration : "
                    f"{ways} (fichier lisible par son seul propriétaire, chmod 600)",
                )
        raw_file = self._typed(file_key, str, "un chemin de fichier (chaîne)")
        env_value = self.loader.env.get(env_var)
        if env_value is not None:
            if not env_value.strip():
                self.error(name, f"la variable d'environnement {env_var} est définie mais vide")
                return None
            value, origin = env_value, f"variable {env_var}"
        elif isinstance(raw_file, str):
            read = self._read_secret_file(file_key, raw_file)
            if read is None:
                return None
            value, origin = read, self.key(file_key)
        else:
            if isinstance(raw_file, _Absent) and required and not inline_given:
                self.error(name, f"secret manquant : {ways}")
            return None
        if PLACEHOLDER in value:
            self.error(name, f"valeur d'exemple « {PLACEHOLDER}… » à remplacer ({origin})")
            return None
        if check is not None and (message := check(value)) is not None:
            self.error(name, f"{message} ({origin})")
            return None
        return Secret(value)

    def _read_secret_file(self, file_key: str, raw: str) -> str | None:
        path = self.loader.resolve(raw)
        try:
            # One descriptor for the check and the read: no swap in between.
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            self.error(file_key, f"fichier introuvable : {path}")
            return None
        except OSError as exc:
            self.error(file_key, f"fichier illisible : {path} ({exc.strerror})")
            return None
        with os.fdopen(fd, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if not stat.S_ISREG(mode):
                self.error(file_key, f"n'est pas un fichier ordinaire : {path}")
                return None
            if mode & 0o077:
                self.error(
                    file_key,
                    f"droits trop ouverts ({stat.S_IMODE(mode):04o}) sur {path} : le fichier "
                    f"doit être lisible par son seul propriétaire (chmod 600 {path})",
                )
                return None
            try:
                value = handle.read().decode("utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                self.error(file_key, f"fichier illisible : {path} ({exc})")
                return None
        if not value:
            self.error(file_key, f"fichier vide : {path}")
            return None
        return value
