"""Atomic writes: one place for temp file in the same directory + fsync + os.replace, for files and
for whole directories (a bundle).

Readers (a Detector hot-reloading a bundle, a resumed training, a TensorRT engine cache shared by
processes) see either the old file or the complete new one, never a torn one.  `mkstemp` creates
files with mode 0600; results are chmod-ed to what a plain `open()` would give (0666 & ~umask) so
bundles, reports and engines stay readable by the service account that deploys them.

Every temporary name carries our tag and the writer's pid, `.<target>.edgeuad-<pid>.<random>.tmp`
(`.tmpdir` for directories), so that a later run can recognise what a killed writer left behind and
remove it (`remove_stale_temps`) without ever touching a file it did not make or one that a live
process is still writing.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

PathLike = Union[str, os.PathLike]

log = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)  # reading the umask means setting it; restored at once, at import time

TAG = "edgeuad"
# .<target name>.edgeuad-<pid>.<random>.<kind>; the C++ bank writer (cpp/src/bank.cpp) uses the same form.
_TEMP_RE = re.compile(rf"^\.(?P<name>.+)\.{TAG}-(?P<pid>\d+)\.[A-Za-z0-9_]+\.(?P<kind>tmp|tmpdir)$")
# A temp whose writer is still alive is left alone unless it is this old (pid reuse by another process).
STALE_AFTER_S = 24 * 3600.0

__all__ = ["atomic_dir", "atomic_path", "atomic_write_bytes", "remove_stale_temps", "temp_prefix"]


def temp_prefix(name: str) -> str:
    """Prefix of this process's temporary names for a target called `name`."""
    return f".{name}.{TAG}-{os.getpid()}."


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on normal exit it is fsync-ed and renamed onto `path`,
    on an exception it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see module docstring)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; on normal exit its files are fsync-ed and
    it takes the place of `path` in one rename (the previous directory, if any, stays in place and
    complete until that rename, and is deleted after it).  On an exception the temporary directory
    is removed and `path` is untouched.

    The swap of two directories is atomic only with Linux's renameat2(RENAME_EXCHANGE) (ext4, xfs,
    btrfs, tmpfs, overlayfs: every Jetson and factory-PC file system); where the kernel or file
    system lacks it, the old directory is first renamed aside, which leaves a short window in which
    `path` does not exist (logged).  `path` itself must not be a symlink (resolve it first).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        raise ValueError(f"{path} is a symlink; pass the directory it points to ({path.resolve()})")
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), suffix=".tmpdir", dir=str(path.parent)))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        _fsync_tree(tmp)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, path: Path) -> None:
    """Move directory `new` to `path` with one rename; afterwards `new` no longer exists."""
    if not os.path.lexists(path):
        try:
            os.rename(new, path)
            _fsync_dir(path.parent)
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            # created by someone else in the meantime: exchange below
    if not path.is_dir():
        raise NotADirectoryError(f"cannot replace {path}: it exists and is not a directory")
    if _exchange(new, path):
        # `new` now names the previous directory
        _fsync_dir(path.parent)
        shutil.rmtree(new, ignore_errors=True)
        return
    log.warning("this file system cannot exchange directories atomically; replacing %s in two renames", path)
    aside = Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), suffix=".tmpdir", dir=str(path.parent)))
    os.rename(path, aside)  # onto the empty directory mkdtemp made: allowed by POSIX
    os.rename(new, path)
    _fsync_dir(path.parent)
    shutil.rmtree(aside, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2).  False where unsupported; raises on real errors."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl without it
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} into {b}: {os.strerror(err)}")


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories; the data files are synced
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every regular file under `root` and the directories themselves (power-cut safety: the
    rename that publishes them must not reach the disk before their data)."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if stat.S_ISREG(os.lstat(p).st_mode):
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(Path(dirpath))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OverflowError:
        return False
    return True


def remove_stale_temps(directory: PathLike, name: Optional[str] = None,
                       stale_after_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove temporary files/directories left in `directory` by killed edgeuad writers.

    Only names of our own form are considered (`.<name>.edgeuad-<pid>.<random>.tmp|tmpdir`, for
    target `name` when given), and of those only the ones whose writer process is gone, or that are
    older than `stale_after_s` (a recycled pid).  Returns what was removed.
    """
    d = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(d))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return removed
    now = time.time()
    for ent in entries:
        m = _TEMP_RE.match(ent.name)
        if not m or (name is not None and m.group("name") != name):
            continue
        try:
            st = ent.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if _pid_alive(int(m.group("pid"))) and now - st.st_mtime < stale_after_s:
            continue
        p = Path(ent.path)
        try:
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(p)
            else:
                p.unlink()
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning("could not remove stale temporary %s: %s", p, e)
            continue
        removed.append(p)
        log.info("removed %s left by an interrupted edgeuad writer (pid %s)", p, m.group("pid"))
    return removed
