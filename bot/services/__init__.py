"""Use cases: what the bot does, written against the store, the gateway and the pure domain."""
