"""Machine context for every number (CPU, cores, SIMD flags, versions, commit, date) and process memory."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

_PKG_PARENT = Path(__file__).resolve().parents[2]


def _proc_status_kb(key: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mb() -> Optional[float]:
    """Peak resident set size of this process (VmHWM; getrusage as the fallback)."""
    kb = _proc_status_kb("VmHWM")
    if kb is None:
        try:
            import resource

            kb = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            if sys.platform == "darwin":  # bytes there, kB on Linux
                kb /= 1024.0
        except (ImportError, OSError):
            return None
    return kb / 1024.0


def current_rss_mb() -> Optional[float]:
    kb = _proc_status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0: write 5 to clear_refs) so in-process peaks are per pipeline."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(args: list[str]) -> Optional[str]:
    try:
        r = subprocess.run(["git", *args], cwd=_PKG_PARENT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


# the benchmarks' own output: a results file rewritten by the previous benchmark of the same session
# does not make the next number untraceable; a change anywhere else does
RESULTS_PATHSPEC = ":(exclude,top)benchmarks/results"


def git_dirty() -> bool:
    """Tracked files changed outside benchmarks/results (untracked files ignored)."""
    return bool(_git(["status", "--porcelain", "--untracked-files=no", "--", ":/", RESULTS_PATHSPEC]))


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "asimddp")


def cpu_flags() -> list[str]:
    """The SIMD extensions of SIMD_FLAGS this CPU reports in /proc/cpuinfo (what the kernels can use)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    have = set(line.split(":", 1)[1].split())
                    return [x for x in SIMD_FLAGS if x in have]
    except OSError:
        pass
    return []


def machine_info() -> dict[str, Any]:
    """CPU, cores, OS, Python, library versions, git commit, date: the context a number needs."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    from .._version import __version__

    commit = _git(["rev-parse", "--short=12", "HEAD"]) or "unknown (no commit)"
    dirty = git_dirty()
    return {
        "cpu_model": cpu, "simd": cpu_flags(), "logical_cores": os.cpu_count(), "usable_cores": usable,
        "os": platform.platform(), "python": platform.python_version(), "edgeuad": __version__,
        # versions from package metadata: reading torch's version must not import torch
        "versions": {"onnxruntime": _version("onnxruntime"), "numpy": np.__version__, "opencv": cv2.__version__,
                     "torch": _version("torch"), "tensorrt": _version("tensorrt")},
        "git_commit": commit, "git_dirty": dirty,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
