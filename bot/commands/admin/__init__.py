"""Commands of the admin room: directory, demandes (metadata), policies, follow-up,
statistics, retention, health.

Declared once, one module per section of `!aide` (generated from the declarations).
Each handler gets an `AdminCtx` (the services it may use, the operator, the last file
they attached) and returns a `Reply`; the admin room posts it, files included.
Operators see metadata only: nothing here reads a usager's data.

Importing the package registers every section's commands on `ADMIN`, in the order
`!aide` lists them.
"""

# isort: off
# The order of `!aide`: each module registers its commands on import.
from bot.commands.admin import (  # noqa: F401
    agents,
    groups,
    directory_import,
    demandes,
    policies,
    followup,
    statistics,
    retention,
    health,
    identities,
    onboarding,
)

# isort: on
from bot.commands.admin.context import ADMIN, SECTION_DIRECTORY, AdminCtx

__all__ = ["ADMIN", "SECTION_DIRECTORY", "AdminCtx"]
