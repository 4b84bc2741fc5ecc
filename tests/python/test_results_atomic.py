"""Benchmark result files are written atomically: a run killed while writing leaves the previous file
(which RESULTS.md quotes, and which compare_methods.py reuses) or the new one, never a truncated one."""
from __future__ import annotations

import json

import pytest
from script_helpers import load_benchmark

from edgeuad import atomic


def _fail_replace(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(src, dst):  # the kill lands after the temp file is written, before it replaces the old file
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(atomic.os, "replace", boom)


def test_publish_keeps_the_old_table_when_killed(tmp_path, monkeypatch, capsys):
    mod = load_benchmark("_results")
    monkeypatch.setattr(mod, "RESULTS", tmp_path)
    old = mod.publish("t", "| a |\n")
    before = old.read_text()
    assert before.endswith("| a |\n") and before.startswith("_Machine: ")
    _fail_replace(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        mod.publish("t", "| b |\n")
    assert old.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["t.md"]
    monkeypatch.undo()
    monkeypatch.setattr(mod, "RESULTS", tmp_path)
    assert mod.publish("t", "| b |\n").read_text().endswith("| b |\n")


def test_make_results_replaces_the_page(tmp_path, monkeypatch):
    mod = load_benchmark("make_results")
    (tmp_path / "RESULTS_template.md").write_text("x {{demo}} y\n")
    monkeypatch.setattr(mod, "HERE", tmp_path)
    monkeypatch.setattr(mod, "RES", tmp_path / "results")
    (tmp_path / "RESULTS.md").write_text("old page\n")

    _fail_replace(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        mod.main()
    assert (tmp_path / "RESULTS.md").read_text() == "old page\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.md", "RESULTS_template.md"]  # no temp left
    monkeypatch.undo()
    monkeypatch.setattr(mod, "HERE", tmp_path)
    monkeypatch.setattr(mod, "RES", tmp_path / "results")
    mod.main()
    assert (tmp_path / "RESULTS.md").read_text().startswith("x ") and "y" in (tmp_path / "RESULTS.md").read_text()
