"""Streaming soak (CI-sized run of benchmarks/soak_stream.py, which does 20,000 frames): a looping
video through Detector.stream without growth of resident memory, open files or threads."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_stream_soak_500_frames(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("soak_stream", ROOT / "benchmarks" / "soak_stream.py")
    soak = importlib.util.module_from_spec(spec)
    sys.modules["soak_stream"] = soak
    spec.loader.exec_module(soak)
    bundle = soak.tiny_bundle(tmp_path)
    video = soak.write_video(tmp_path / "loop.avi", frames=40)
    res = soak.soak(bundle, video, frames=500, sample_every=10)
    assert res.scored == 500 and res.loops >= 12  # 40-frame file: looped, every frame scored
    assert len(res.samples) == 40
    assert res.passed, res.to_markdown()
