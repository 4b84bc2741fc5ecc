"""One atomic writer: complete file or old file, readable permissions, nothing left behind."""
from __future__ import annotations

import os
import stat
import time

import pytest

from edgeuad.atomic import atomic_dir, atomic_path, atomic_write_bytes, remove_stale_temps


def test_write_replaces_and_respects_umask(tmp_path):
    p = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(p, b"one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert [x.name for x in p.parent.iterdir()] == ["f.bin"]


def test_failure_keeps_old_file_and_cleans_up(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.bin"]


def test_temp_names_carry_tag_and_pid(tmp_path):
    p = tmp_path / "f.bin"
    with atomic_path(p) as tmp:
        assert tmp.name.startswith(f".f.bin.edgeuad-{os.getpid()}.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"x")
    with atomic_dir(tmp_path / "d") as d:
        assert d.name.startswith(f".d.edgeuad-{os.getpid()}.") and d.name.endswith(".tmpdir")


def test_atomic_dir_creates_then_replaces_whole_directory(tmp_path):
    target = tmp_path / "bundle"
    with atomic_dir(target) as d:
        (d / "a").write_bytes(b"1")
        (d / "b").write_bytes(b"2")
    assert sorted(x.name for x in target.iterdir()) == ["a", "b"]
    inode_before = target.stat().st_ino
    with atomic_dir(target) as d:
        (d / "c").write_bytes(b"3")
        # until the swap the previous directory is complete and in place
        assert sorted(x.name for x in target.iterdir()) == ["a", "b"]
    assert sorted(x.name for x in target.iterdir()) == ["c"]
    assert target.stat().st_ino != inode_before
    assert [x.name for x in tmp_path.iterdir()] == ["bundle"]  # the old directory was removed


def test_atomic_dir_failure_keeps_old_directory(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old").write_bytes(b"old")
    with pytest.raises(KeyError):
        with atomic_dir(target) as d:
            (d / "new").write_bytes(b"half")
            raise KeyError("writer died")
    assert [x.name for x in target.iterdir()] == ["old"]
    assert [x.name for x in tmp_path.iterdir()] == ["bundle"]


def test_atomic_dir_two_rename_fallback(tmp_path, monkeypatch):
    """Where renameat2 is missing the directory is still replaced completely."""
    import edgeuad.atomic as at

    monkeypatch.setattr(at, "_exchange", lambda a, b: False)
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old").write_bytes(b"old")
    with atomic_dir(target) as d:
        (d / "new").write_bytes(b"new")
    assert [x.name for x in target.iterdir()] == ["new"]
    assert [x.name for x in tmp_path.iterdir()] == ["bundle"]


def test_atomic_dir_refuses_symlink_and_file(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ValueError, match="symlink"):
        with atomic_dir(link):
            pass
    f = tmp_path / "file"
    f.write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        with atomic_dir(f):
            pass
    assert f.read_bytes() == b"x" and sorted(x.name for x in tmp_path.iterdir()) == ["file", "link", "real"]


def _dead_pid() -> int:
    """A pid that is certainly not running: a child that has exited and been reaped."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_remove_stale_temps_only_ours_and_only_dead_writers(tmp_path):
    dead = _dead_pid()
    stale_file = tmp_path / f".model.onnx.edgeuad-{dead}.abc123.tmp"
    stale_dir = tmp_path / f".bundle.edgeuad-{dead}.xyz_9.tmpdir"
    live_file = tmp_path / f".model.onnx.edgeuad-{os.getpid()}.abc123.tmp"
    other_target = tmp_path / f".other.edgeuad-{dead}.q.tmp"
    foreign = [tmp_path / ".model.onnx.abc123.tmp", tmp_path / f"model.edgeuad-{dead}.a.tmp",
               tmp_path / f".x.edgeuad-{dead}.a.bak", tmp_path / "notes.tmp"]
    for p in [stale_file, live_file, other_target, *foreign]:
        p.write_bytes(b"x")
    stale_dir.mkdir()
    (stale_dir / "inner").write_bytes(b"x")
    removed = remove_stale_temps(tmp_path, name="model.onnx")
    assert removed == [stale_file]
    removed = sorted(remove_stale_temps(tmp_path))
    assert removed == sorted([stale_dir, other_target])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([live_file.name, *(p.name for p in foreign)])
    # a live writer's temp is removed only once it is implausibly old (pid reuse)
    old = time.time() - 2 * 24 * 3600
    os.utime(live_file, (old, old))
    assert remove_stale_temps(tmp_path) == [live_file]
    assert remove_stale_temps(tmp_path / "missing") == []
