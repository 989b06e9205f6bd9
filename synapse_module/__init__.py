"""The Administration+ guard, a Synapse module: the homeserver's second line.

Load it in Synapse's ``homeserver.yaml`` as ``synapse_module.aplus_guard.AplusGuard``
(see ``deploy/synapse-module.md``). ``decision`` holds every rule as pure functions;
``config`` validates the module's configuration; ``aplus_guard`` is the thin adapter
to Synapse's module API. Nothing here imports the bot: Synapse's environment only
needs Synapse.
"""
