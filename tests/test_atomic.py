"""Atomic writes: the new file replaces the old one whole, a failed write leaves the old one and no temp file."""

import json

import pytest

from uniq_hub.model.atomic import atomic_dir, atomic_path, write_json_atomic, write_text_atomic


@pytest.mark.parametrize("fsync", [False, True])
def test_write_replaces_and_leaves_nothing_else(tmp_path, fsync):
    path = tmp_path / "sub" / "record.json"
    assert write_json_atomic(path, {"a": 1}, fsync) == path
    assert json.loads(path.read_text()) == {"a": 1}
    write_text_atomic(path, "second\n", fsync)
    assert path.read_text() == "second\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["record.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "record.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_atomic_dir_swaps_whole_folders(tmp_path):
    final = tmp_path / "release"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("killed")
    assert [p.name for p in final.iterdir()] == ["old.txt"]
    with atomic_dir(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["release"]
