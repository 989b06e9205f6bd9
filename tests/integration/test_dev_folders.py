"""`aplus dev` and `aplus dev --standby` never share a folder: each is its own demo
(SQLite, or PostgreSQL with two bots), and each refuses the other's folder, in French,
before starting anything."""

from __future__ import annotations

from pathlib import Path

from tests.support import process as proc

NO_BOT_DATABASE = True  # refused before any database or homeserver is touched


async def test_the_standby_demo_refuses_the_folder_of_the_sqlite_demo(tmp_path: Path) -> None:
    (tmp_path / "aplus.db").write_bytes(b"")
    done = await proc.run_aplus_async("dev", "--standby", "--data-dir", str(tmp_path))
    assert done.returncode != 0, done
    assert "démonstration sur SQLite" in done.stderr, done
    assert not (tmp_path / "synapse").exists()


async def test_the_sqlite_demo_refuses_the_folder_of_the_standby_demo(tmp_path: Path) -> None:
    (tmp_path / "standby").mkdir()
    done = await proc.run_aplus_async("dev", "--data-dir", str(tmp_path))
    assert done.returncode != 0, done
    assert "aplus dev --standby" in done.stderr, done
    assert not (tmp_path / "synapse").exists()


async def test_a_database_url_without_standby_is_refused(tmp_path: Path) -> None:
    done = await proc.run_aplus_async(
        "dev", "--data-dir", str(tmp_path), "--database-url", "postgresql://x@127.0.0.1/y"
    )
    assert done.returncode != 0, done
    assert "--database-url va avec --standby" in done.stderr, done


async def test_the_standby_demo_keeps_to_the_database_it_started_with(tmp_path: Path) -> None:
    # Its bot device and crypto store go with that database: another one would find no
    # saved login and clash with the account's cross-signing identity.
    (tmp_path / "standby").mkdir()
    (tmp_path / "standby" / "database_url").write_text(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/aplus_dev\n"
    )
    done = await proc.run_aplus_async(
        "dev",
        "--standby",
        "--data-dir",
        str(tmp_path),
        "--database-url",
        "postgresql://postgres@127.0.0.1:5432/une_autre_base",
    )
    assert done.returncode != 0, done
    assert "démonstration de la base 127.0.0.1:5432/aplus_dev" in done.stderr, done
    assert "une_autre_base" in done.stderr and not (tmp_path / "synapse").exists(), done
