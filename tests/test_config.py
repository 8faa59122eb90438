from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings, SettingsError, load_settings


def test_defaults_match_the_api_contract() -> None:
    s = Settings()
    assert s.data_dir == Path("./prunelab-data")
    assert s.runner == "local"
    assert s.code_formats == "admins"
    assert s.max_concurrent_jobs == 1
    assert s.max_upload_mb == 1024
    assert s.device == "auto"
    assert s.db_url == f"sqlite:///{(Path('./prunelab-data') / 'prunelab.db').resolve()}"
    assert s.artifacts.endswith("prunelab-data/artifacts")


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRUNELAB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PRUNELAB_MAX_CONCURRENT_JOBS", "3")
    monkeypatch.setenv("PRUNELAB_DATABASE_URL", "postgresql://u@db/prunelab")
    monkeypatch.setenv("PRUNELAB_DEVICE", "cuda:1")
    monkeypatch.setenv("PRUNELAB_CODE_FORMATS", "nobody")
    s = load_settings()
    assert s.data_dir == tmp_path
    assert s.max_concurrent_jobs == 3
    assert s.db_url == "postgresql+psycopg://u@db/prunelab"
    assert s.device == "cuda:1"
    assert s.code_formats == "nobody"


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("PRUNELAB_RUNNER", "celery", "PRUNELAB_RUNNER"),
        ("PRUNELAB_MAX_CONCURRENT_JOBS", "0", "greater than or equal to 1"),
        ("PRUNELAB_MAX_UPLOAD_MB", "lots", "PRUNELAB_MAX_UPLOAD_MB"),
        ("PRUNELAB_DEVICE", "tpu", "auto, cpu, mps, cuda or cuda:N"),
        ("PRUNELAB_CODE_FORMATS", "all", "PRUNELAB_CODE_FORMATS"),
        ("PRUNELAB_ADMIN_TOKEN", "short", "at least 16 characters"),
        ("PRUNELAB_DATABASE_URL", "prunelab.db", "SQLAlchemy URL"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert var in str(info.value)
    assert expected in str(info.value)


def test_ray_runner_needs_an_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNELAB_RUNNER", "ray")
    with pytest.raises(SettingsError, match="PRUNELAB_RAY_ADDRESS"):
        load_settings()
    monkeypatch.setenv("PRUNELAB_RAY_ADDRESS", "http://127.0.0.1:8265")
    assert load_settings().runner == "ray"
