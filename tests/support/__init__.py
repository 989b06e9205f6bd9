"""Shared helpers for the tests (real homeserver, real clients)."""
