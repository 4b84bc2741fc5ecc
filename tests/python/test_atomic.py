"""One atomic writer: complete file or old file, readable permissions, nothing left behind."""
from __future__ import annotations

import os
import stat

import pytest

from edgeuad.atomic import atomic_path, atomic_write_bytes


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
