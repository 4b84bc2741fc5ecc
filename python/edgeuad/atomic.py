"""Atomic file writes: one place for temp file in the same directory + fsync + os.replace.

Readers (a Detector hot-reloading a bundle, a resumed training, a TensorRT engine cache shared by
processes) see either the old file or the complete new one, never a torn one.  `mkstemp` creates
files with mode 0600; results are chmod-ed to what a plain `open()` would give (0666 & ~umask) so
bundles, reports and engines stay readable by the service account that deploys them.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]

_UMASK = os.umask(0)
os.umask(_UMASK)  # reading the umask means setting it; restored at once, at import time

__all__ = ["atomic_path", "atomic_write_bytes"]


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on normal exit it is fsync-ed and renamed onto `path`,
    on an exception it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see module docstring)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
