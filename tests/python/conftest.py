"""Shared fixtures.  Paths to ../shared/data are optional: tests that need them skip with a reason."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# One intra-op thread per library: tests check correctness, and oversubscribing the 2 CI cores
# (torch + onnxruntime + OpenMP each spawning a pool) makes them an order of magnitude slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("EDGEUAD_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    p = SHARED_DATA / name
    if not (p / "train" / "good").is_dir():
        pytest.skip(f"{p} not present (real data lives beside the project, never required)")
    return p


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001 - pytest hook
    """How many fuzz cases ran (tests/python/test_fuzz_*.py), so a CI log shows the budget was spent."""
    import sys

    mod = sys.modules.get("_fuzz")
    if mod is not None and mod.CASES:
        total = sum(mod.CASES.values())
        per = ", ".join(f"{k} {v} ({mod.ACCEPTED[k]} accepted)" for k, v in sorted(mod.CASES.items()))
        terminalreporter.write_line(f"fuzz: {total} cases: {per}")
