"""Read the `policies/` folder and hand its content to the pure validation.

Every problem (missing file, unreadable file, TOML syntax error, invalid value)
is gathered and raised as one `PolicyError`, each naming its file.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from bot.domain.policies import (
    POLICY_FILES,
    Policies,
    PolicyError,
    PolicyProblem,
    check_policies,
)

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def default_policies_dir() -> Path:
    """The `policies/` folder shipped next to the `bot` package."""
    return Path(__file__).resolve().parent.parent / "policies"


def load_policies(folder: Path) -> Policies:
    raw: dict[str, dict[str, Any]] = {}
    problems: list[PolicyProblem] = []
    if not folder.is_dir():
        raise PolicyError([PolicyProblem(str(folder), "", "dossier des politiques introuvable")])
    for name in POLICY_FILES:
        content, problem = _read(folder / name)
        if problem is not None:
            problems.append(problem)
        else:
            assert content is not None
            raw[name] = content
    policies, found = check_policies(raw)
    # A file that failed to load is already reported; validation would only add
    # "fichier manquant" for it.
    broken = {p.file for p in problems}
    problems.extend(p for p in found if p.file not in broken)
    if problems or policies is None:
        raise PolicyError(problems)
    return policies


def _read(path: Path) -> tuple[dict[str, Any] | None, PolicyProblem | None]:
    name = path.name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, PolicyProblem(name, "", "fichier manquant")
    except OSError as error:
        return None, PolicyProblem(name, "", f"lecture impossible ({error.strerror})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, PolicyProblem(
            name, "", f"encodage invalide à l'octet {error.start} (UTF-8 attendu)"
        )
    try:
        return tomllib.loads(text), None
    except tomllib.TOMLDecodeError as error:
        return None, PolicyProblem(name, "", _syntax_message(str(error)))


def _syntax_message(detail: str) -> str:
    if detail.endswith("(at end of document)"):
        reason = detail.removesuffix("(at end of document)").strip()
        return f"syntaxe TOML invalide en fin de fichier : {reason}"
    match = _TOML_POSITION.search(detail)
    if match is None:
        return f"syntaxe TOML invalide : {detail}"
    line, column = match.groups()
    reason = detail[: match.start()].strip()
    return f"syntaxe TOML invalide ligne {line}, colonne {column} : {reason}"
