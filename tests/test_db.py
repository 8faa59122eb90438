from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from app import db
from app.config import Settings

# the one head revision of alembic/versions (get_current_head refuses a forked chain)
HEAD = ScriptDirectory(str(db.ALEMBIC_DIR)).get_current_head()

EXPECTED_TABLES = {
    "users",
    "api_tokens",
    "web_sessions",
    "login_links",
    "models",
    "datasets",
    "runs",
    "run_steps",
    "layer_stats",
    "histograms",
    "curve_points",
    "sensitivity_rows",
    "artifacts",
    "run_events",
    "sweeps",
}


def _check_schema(settings: Settings) -> None:
    db.upgrade(settings)
    db.upgrade(settings)  # idempotent
    engine = db.make_engine(settings)
    try:
        tables = set(inspect(engine).get_table_names())
        assert tables >= EXPECTED_TABLES
        assert "allocation" in {c["name"] for c in inspect(engine).get_columns("runs")}
        assert {"physical", "masks_only"} <= {
            c["name"] for c in inspect(engine).get_columns("runs")
        }
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
        assert "input_dtype" in {c["name"] for c in inspect(engine).get_columns("models")}
        assert "test_loss" in {c["name"] for c in inspect(engine).get_columns("curve_points")}
        cols = {c["name"] for c in inspect(engine).get_columns("sensitivity_rows")}
        assert "perplexity" in cols
    finally:
        engine.dispose()


def test_migrations_on_an_empty_sqlite_file(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "fresh")
    _check_schema(settings)
    assert (tmp_path / "fresh" / "prunelab.db").exists()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    db.upgrade(settings)
    engine = db.make_engine(settings)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 10000
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
    engine.dispose()


def test_migrations_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    assert settings.db_url.startswith("postgresql+psycopg://")
    _check_schema(settings)


def test_migration_downgrade_and_upgrade_round_trip(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    db.upgrade(settings)
    from alembic import command

    command.downgrade(db.alembic_config(settings.db_url), "base")
    engine = db.make_engine(settings)
    assert "runs" not in inspect(engine).get_table_names()
    engine.dispose()
    _check_schema(settings)
