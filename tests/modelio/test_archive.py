"""Zip safety checks run before anything is extracted."""

from __future__ import annotations

import zipfile

import pytest

from app.errors import BadRequest, TooLarge
from app.modelio.archive import check_zip, safe_extract


def test_safe_archive_extracts_under_the_destination(tmp_path, zip_maker):
    path = zip_maker(tmp_path / "ok.zip", {"a/b.txt": b"hello", "c.txt": b"world"})
    with zipfile.ZipFile(path) as zf:
        written = safe_extract(zf, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == [
        "a/b.txt",
        "c.txt",
    ]
    assert (tmp_path / "out" / "a" / "b.txt").read_bytes() == b"hello"


@pytest.mark.parametrize(
    "name", ["../evil.txt", "/etc/evil", "a/../../evil", "C:/evil", "..\\evil"]
)
def test_path_traversal_is_refused_before_extracting(tmp_path, zip_maker, name):
    path = zip_maker(tmp_path / "slip.zip", {"good.txt": b"1", name: b"x"})
    with zipfile.ZipFile(path) as zf, pytest.raises(BadRequest, match="outside the archive"):
        safe_extract(zf, tmp_path / "out")
    assert not (tmp_path / "out" / "good.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_entry_is_refused(tmp_path, zip_maker):
    path = zip_maker(tmp_path / "link.zip", {"a.txt": b"1"}, symlink="link")
    with zipfile.ZipFile(path) as zf, pytest.raises(BadRequest, match="symlink"):
        check_zip(zf)


def test_zip_bomb_is_refused_by_ratio(tmp_path, zip_maker):
    path = zip_maker(tmp_path / "bomb.zip", {"zeros.bin": bytes(20 * 1024 * 1024)})
    assert path.stat().st_size < 100_000
    with zipfile.ZipFile(path) as zf, pytest.raises(TooLarge, match="zip bomb"):
        safe_extract(zf, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_total_expanded_size_and_entry_count_are_limited(tmp_path, zip_maker):
    path = zip_maker(tmp_path / "many.zip", {f"f{i}.txt": b"x" * 100 for i in range(20)})
    with zipfile.ZipFile(path) as zf:
        with pytest.raises(TooLarge, match="20 entries"):
            check_zip(zf, max_entries=10)
        with pytest.raises(TooLarge, match="expands to more than"):
            check_zip(zf, max_total_bytes=1000)
        assert len(check_zip(zf)) == 20
