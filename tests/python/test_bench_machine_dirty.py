"""A benchmark's commit stamp: dirty means tracked files changed outside benchmarks/results."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edgeuad.bench import machine


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_results_files_do_not_make_the_tree_dirty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "python").mkdir()
    (repo / "benchmarks" / "results" / "a.md").write_text("old\n")
    (repo / "python" / "code.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")
    monkeypatch.setattr(machine, "_PKG_PARENT", repo / "python")  # git runs from inside the tree
    assert machine.git_dirty() is False
    (repo / "benchmarks" / "results" / "a.md").write_text("new numbers\n")
    (repo / "untracked.txt").write_text("scratch\n")
    assert machine.git_dirty() is False
    (repo / "python" / "code.py").write_text("x = 2\n")
    assert machine.git_dirty() is True
