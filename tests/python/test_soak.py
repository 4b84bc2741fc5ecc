"""Streaming soak (CI-sized run of benchmarks/soak_stream.py, which does 20,000 frames): a looping
video through Detector.stream without growth of resident memory, open files or threads."""
from __future__ import annotations

from pathlib import Path

import pytest
from script_helpers import load_benchmark


@pytest.mark.slow
def test_stream_soak_500_frames(tmp_path: Path) -> None:
    soak = load_benchmark("soak_stream")
    bundle = soak.tiny_bundle(tmp_path)
    video = soak.write_video(tmp_path / "loop.avi", frames=40)
    res = soak.soak(bundle, video, frames=500, sample_every=10)
    assert res.scored == 500 and res.loops >= 12  # 40-frame file: looped, every frame scored
    assert len(res.samples) == 40
    assert res.passed, res.to_markdown()
