"""The domain stays pure: no transport, database or clock, checked rather than hoped for."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DOMAIN = Path(__file__).resolve().parents[2] / "bot" / "domain"
FORBIDDEN_MODULES = {
    "nio",
    "sqlalchemy",
    "aiohttp",
    "aiosmtplib",
    "aiosmtpd",
    "asyncio",
    "socket",
}
# (module or class, attribute) pairs that read the clock.
CLOCK_CALLS = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "monotonic"),
}


def violations(source: str) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "time":
                names += [f"time.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"imports {name}")
            if name in {"time.time", "time.time_ns", "time.monotonic"}:
                found.append(f"imports {name}")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name | ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else node.value.attr
            if (owner, node.attr) in CLOCK_CALLS:
                found.append(f"reads the clock: {owner}.{node.attr}")
    return found


def domain_modules() -> list[Path]:
    return sorted(DOMAIN.rglob("*.py"))


def test_the_domain_has_modules() -> None:
    assert len(domain_modules()) >= 7


@pytest.mark.parametrize("path", domain_modules(), ids=lambda p: p.name)
def test_domain_module_is_pure(path: Path) -> None:
    assert violations(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "source",
    [
        "import nio",
        "from nio.rooms import MatrixRoom",
        "import sqlalchemy.orm as orm",
        "from aiohttp import web",
        "import aiosmtplib",
        "from aiosmtpd.smtp import SMTP",
        "import asyncio",
        "import socket",
        "from datetime import datetime\nx = datetime.now()",
        "import datetime\nx = datetime.datetime.now()",
        "from datetime import date\nx = date.today()",
        "import time\nx = time.time()",
        "from time import time",
    ],
)
def test_the_checker_catches(source: str) -> None:
    assert violations(source) != []


def test_the_checker_allows_pure_code() -> None:
    source = "from datetime import date, datetime, timedelta\nx = date(2026, 1, 1)\n"
    assert violations(source) == []
