"""SIGKILL during export and train (CI-sized run of benchmarks/crash_kill.py, which does >= 20 each):
the bundle and archive on disk are always the previous or the new one, never a third state, and
what the kills leave behind is removed by the next run."""
from __future__ import annotations

from pathlib import Path

import pytest
from script_helpers import load_benchmark


@pytest.mark.slow
def test_sigkill_export_and_train_leave_old_or_new_bundle(tmp_path: Path) -> None:
    crash = load_benchmark("crash_kill")
    rep = crash.run_crash(tmp_path, export_kills_n=3, train_kills_n=3, points=crash.POINTS, seed=1,
                          check_reproducible=False)
    md = rep.to_markdown()
    assert rep.third_states == 0, md
    assert rep.leftovers_after_next_run == 0, md
    named = {a.point: a for a in rep.attempts if a.point}
    assert set(named) == set(crash.POINTS) and all(a.killed for a in named.values()), md
    # before the swap the previous bundle survives; from the swap on it is the new one
    for p in ("after_onnx", "provisional_detector", "before_swap"):
        assert named[p].after == named[p].before, md
    for p in ("after_swap", "mid_archive"):
        assert named[p].after != named[p].before, md
    assert named["after_swap"].archive == named["after_swap"].before, md  # the archive is written last
    assert rep.leftovers_after_kills > 0, "the named kills must leave temporaries for the next run to clean"
    assert sum(a.kind == "train" for a in rep.attempts) == 3 and rep.passed
