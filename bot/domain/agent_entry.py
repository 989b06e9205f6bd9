"""An agent as typed in a command: the roles and the contacts that `!agent-ajouter`
reads, for the operators (any role, any group) and for a responsable (their own group,
their organisation's roles); `!agent-modifier … roles` reads roles the same way.

Pure: the caller gives its scope and turns a `ValueError` into its reply.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from bot.domain.directory_csv import is_valid_email
from bot.domain.model import Role
from bot.domain.policies import fold, is_valid_matrix_user_id

ROLE_WORDS = {fold(r.value): r for r in Role}
EVERY_ROLE = ", ".join(r.value for r in Role)


def parse_roles(text: str, allowed: frozenset[Role] | None = None) -> frozenset[Role]:
    """The roles named in `text`, separated by spaces, commas, `;` or `+` (case and
    accents ignored). `allowed`: the roles this scope may give; None (the operators):
    every role, and the messages then name them all."""
    hint = f" : {EVERY_ROLE}" if allowed is None else ""
    roles = set()
    for word in re.split(r"[\s,;+]+", text.strip()):
        if not word:
            continue
        role = ROLE_WORDS.get(fold(word))
        if role is None:
            raise ValueError(f"Rôle inconnu « {word} »{hint}.")
        if allowed is not None and role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise ValueError(f"Vous ne pouvez pas donner le rôle {role.value} (rôles : {names}).")
        roles.add(role)
    if not roles:
        raise ValueError(f"Au moins un rôle{hint}.")
    return frozenset(roles)


def parse_contacts(
    values: Sequence[str | None], homeserver_allowed: Callable[[str], bool] | None = None
) -> tuple[str | None, str | None]:
    """The Matrix ID and the email address among `values` (the last of each kind; empty
    or "-": none), at least one of the two. `homeserver_allowed` (a responsable's
    scope): a Matrix account on another homeserver stops the reading there. The
    operators check the homeserver of the account kept afterwards, and say more."""
    matrix_id = email = None
    for value in values:
        if not value or value == "-":
            continue
        if value.startswith("@"):
            if not is_valid_matrix_user_id(value):
                raise ValueError(f"« {value} » n'est pas un identifiant Matrix (@nom:serveur).")
            if homeserver_allowed is not None and not homeserver_allowed(
                value.split(":", 1)[1].lower()
            ):
                raise ValueError(
                    f"Le serveur de {value} n'est pas autorisé pour ce service : inscrivez "
                    "l'agent par son adresse e-mail."
                )
            matrix_id = value
        elif is_valid_email(value.lower()):
            email = value.lower()
        else:
            raise ValueError(f"« {value} » n'est ni un identifiant Matrix ni une adresse e-mail.")
    if matrix_id is None and email is None:
        raise ValueError("Indiquez un identifiant Matrix et/ou une adresse e-mail.")
    return matrix_id, email
