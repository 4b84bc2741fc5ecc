"""Benchmark: statistics, parity/speed-up math, report writers, and end-to-end runs (fake
pipelines always; a real tiny bundle when the runtime is complete).  Never checks speed."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import pytest

from edgeuad import bench
from edgeuad.bench import (REFERENCE, BenchConfig, BenchReport, PipelineReport, RunStats, compare_parity,
                           compute_speedups, percentiles, run_bench, summarize_stages, throughput)
from edgeuad.preprocess import PreprocessConfig


# --- pure functions -----------------------------------------------------------------------
def test_percentiles_known_values():
    p = percentiles(np.arange(1, 101, dtype=float))
    assert p["p50"] == pytest.approx(50.5)
    assert p["p95"] == pytest.approx(95.05)
    assert p["p99"] == pytest.approx(99.01)
    assert p["mean"] == pytest.approx(50.5) and p["min"] == 1 and p["max"] == 100 and p["n"] == 100
    one = percentiles([7.0])
    assert one["p50"] == one["p99"] == 7.0
    for bad in ([], [1.0, float("nan")], [-1.0]):
        with pytest.raises(ValueError):
            percentiles(bad)


def test_throughput_and_speedup():
    assert throughput(4, [100.0, 100.0]) == pytest.approx(40.0)      # 8 frames in 0.2 s
    assert throughput(1, [10.0, 30.0]) == pytest.approx(50.0)        # 2 frames in 0.04 s
    with pytest.raises(ValueError):
        throughput(1, [])
    with pytest.raises(ValueError):
        throughput(0, [1.0])
    assert bench.speedup(30.0, 10.0) == pytest.approx(3.0)


def test_summarize_stages_orders_and_rejects_inconsistent():
    it = [{"total": 3.0, "network": 2.0, "decode": 0.5}, {"total": 5.0, "network": 4.0, "decode": 0.5}]
    s = summarize_stages(it)
    assert list(s) == ["decode", "network", "total"]
    assert s["network"]["p50"] == pytest.approx(3.0) and s["total"]["max"] == 5.0
    with pytest.raises(ValueError, match="inconsistent"):
        summarize_stages([{"a": 1.0}, {"b": 1.0}])


def test_compare_parity():
    ref = {"scores": np.array([0.5, 0.7]), "maps": np.zeros((2, 4, 4), np.float32)}
    same = compare_parity("onnxruntime", {k: v.copy() for k, v in ref.items()}, ref, 1e-4, 1e-3)
    assert same.ok and same.max_abs_score_diff == 0 and same.max_abs_map_diff == 0
    off = {"scores": ref["scores"] + np.array([0.0, 0.01]), "maps": ref["maps"].copy()}
    r = compare_parity("onnxruntime", off, ref, 1e-4, 1e-3)
    assert not r.ok and r.max_abs_score_diff == pytest.approx(0.01)
    off_map = {"scores": ref["scores"].copy(), "maps": ref["maps"] + 0.5}
    r = compare_parity("torch", off_map, ref, 1e-4, 1e-3)
    assert not r.ok and r.max_abs_map_diff == pytest.approx(0.5)
    with pytest.raises(ValueError):
        compare_parity("x", {"scores": np.zeros(3)}, ref, 1e-4, 1e-3)


def _run(name, threads, bs, pipe_ms, fps):
    st = {"pipeline": percentiles([pipe_ms]), "total": percentiles([pipe_ms + 1])}
    return RunStats(pipeline=name, threads=threads, effective_threads=threads, batch_size=bs, iterations=1,
                    throughput_fps=fps, stages=st)


def test_compute_speedups_matches_threads_and_batch():
    pipes = [PipelineReport("onnxruntime", True, runs=[_run("onnxruntime", 1, 1, 10.0, 90.0),
                                                       _run("onnxruntime", 2, 1, 6.0, 150.0),
                                                       _run("onnxruntime", 1, 4, 30.0, 120.0)]),
             PipelineReport(REFERENCE, True, runs=[_run(REFERENCE, 1, 1, 40.0, 24.0), _run(REFERENCE, 2, 1, 24.0, 40.0)]),
             PipelineReport("tensorrt", False, reason="not installed")]
    sp = compute_speedups(pipes, 1)
    assert [(s["backend"], s["threads"]) for s in sp] == [("onnxruntime", 1), ("onnxruntime", 2)]
    assert sp[0]["speedup_p50"] == pytest.approx(4.0) and sp[1]["speedup_p50"] == pytest.approx(4.0)
    assert sp[0]["throughput_ratio"] == pytest.approx(90.0 / 24.0)
    assert compute_speedups(pipes[:1], 1) == []


def test_config_validation_and_roundtrip():
    c = BenchConfig(bundle="b", batch_sizes=[8, 1, 4, 4], threads=[1, 2])
    assert c.batch_sizes == [1, 4, 8]
    assert BenchConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    for bad in (dict(batch_sizes=[0]), dict(threads=[-1]), dict(iterations=0), dict(backends=["openvino"])):
        with pytest.raises(ValueError):
            BenchConfig(bundle="b", **bad)


# --- fakes that follow the Detector / ReferencePipeline contracts -----------------------------
@dataclass
class FakeResult:
    score: float
    normalized: float
    is_anomaly: bool
    anomaly_map: Optional[np.ndarray]
    raw_map: Optional[np.ndarray]
    latency_ms: float = 0.0
    timings: dict = field(default_factory=dict)


PRE = PreprocessConfig(size=(32, 32))


def _maps(x: np.ndarray) -> np.ndarray:
    return np.abs(x).mean(axis=1).astype(np.float32)   # N x h x w


class FakeDetector:
    def __init__(self, backend, threads):
        self.backend_name, self.threads, self.closed = backend, threads, False
        self.calls = {"preprocess": 0, "infer": 0, "postprocess": 0}

    def preprocess(self, frames):
        from edgeuad.preprocess import preprocess
        self.calls["preprocess"] += 1
        return preprocess(frames, PRE, color="bgr")

    def infer(self, x):
        self.calls["infer"] += 1
        return {"m": _maps(x)}

    def postprocess(self, outputs, frame_sizes, return_map=True):
        self.calls["postprocess"] += 1
        m = outputs["m"]
        out = []
        for i, (h, w) in enumerate(frame_sizes):
            raw = cv2.resize(m[i], (w, h)) if (h, w) != m[i].shape else m[i]
            out.append(FakeResult(float(m[i].max()), 0.5, False, raw if return_map else None,
                                  raw if return_map else None, timings={"distance_map": 0.1, "postprocess": 0.01}))
        return out

    def close(self):
        self.closed = True


@dataclass
class FakeRefOut:
    scores: np.ndarray
    maps: np.ndarray
    timings: dict


class FakeReference:
    def __init__(self, threads, offset=0.0):
        self.threads, self.pre_cfg, self.offset = threads, PRE, offset

    def run(self, x):
        m = _maps(x) + self.offset
        return FakeRefOut(m.reshape(len(m), -1).max(axis=1).astype(np.float64), m,
                          {"network": 0.2, "distance_map": 0.1})


class DroppingDetector(FakeDetector):
    """Returns one result fewer than the batch: a pipeline that drops frames must not be timed."""

    def postprocess(self, outputs, frame_sizes, return_map=True):
        return super().postprocess(outputs, frame_sizes, return_map)[:-1]


class DroppingReference(FakeReference):
    def run(self, x):
        o = super().run(x)
        return FakeRefOut(o.scores[:-1], o.maps[:-1], o.timings)


def test_measure_rejects_pipelines_that_drop_frames(tmp_path):
    cfg = tiny_cfg(tmp_path, batch_sizes=[2])
    frames = bench.synthetic_frames(3, (48, 64))
    ok = bench.measure_detector(FakeDetector("onnxruntime", 1), frames, "onnxruntime", 1, cfg)
    assert [r.batch_size for r in ok] == [2] and ok[0].stages["total"]["n"] == cfg.iterations
    assert list(ok[0].stages)[:3] == ["decode", "preprocess", "network"]
    with pytest.raises(RuntimeError, match="1 results for a batch of 2"):
        bench.measure_detector(DroppingDetector("onnxruntime", 1), frames, "onnxruntime", 1, cfg)
    ref = bench.measure_reference(FakeReference(1), PRE, frames, 1, cfg)
    assert set(ref[0].stages) >= {"decode", "preprocess", "network", "distance_map", "pipeline", "total"}
    with pytest.raises(RuntimeError, match="reference: 1 results for a batch of 2"):
        bench.measure_reference(DroppingReference(1), PRE, frames, 1, cfg)


def tiny_cfg(tmp_path, **kw) -> BenchConfig:
    base = dict(bundle=str(tmp_path / "nobundle"), out_dir=str(tmp_path / "out"), batch_sizes=[1, 2], threads=[1],
                backends=["onnxruntime"], iterations=2, warmup=1, frame_size=(48, 64), n_frames=3, parity_frames=2,
                paired_iterations=3, paired_block=2)
    base.update(kw)
    return BenchConfig(**base)


def test_run_bench_fake_pipelines_end_to_end(tmp_path):
    dets = []

    def make_det(backend, threads):
        dets.append(FakeDetector(backend, threads))
        return dets[-1]

    cfg = tiny_cfg(tmp_path)
    rep = run_bench(cfg, detector_factory=make_det, reference_factory=lambda t: FakeReference(t))
    ort = rep.pipeline("onnxruntime")
    assert ort is not None and ort.available and [r.batch_size for r in ort.runs] == [1, 2]
    # warm-up + timed iterations per batch size, plus one parity call
    assert dets[0].calls["infer"] == 2 * (cfg.warmup + cfg.iterations) + 1 and dets[0].closed
    for r in ort.runs:
        assert set(r.stages) >= {"decode", "preprocess", "network", "distance_map", "postprocess", "pipeline", "total"}
        assert r.stages["total"]["n"] == cfg.iterations
        # throughput is exactly frames / summed total time: recompute it from the mean
        assert r.throughput_fps == pytest.approx(r.batch_size / (r.stages["total"]["mean"] / 1000.0))
        assert r.stages["total"]["p50"] >= r.stages["pipeline"]["p50"]
    assert ort.peak_rss_mb is not None and ort.peak_rss_mb > 0
    assert [q.backend for q in rep.parity] == ["onnxruntime"] and rep.parity[0].ok
    assert rep.parity[0].max_abs_score_diff == 0.0 and rep.parity[0].n_frames == 2
    assert len(rep.speedups) == 1 and rep.speedups[0]["batch_size"] == 1
    # the interleaved measurement: one more detector per thread count, paired_iterations (+ warm-up) frames
    # rounds of `block` frames per side, each after one untimed re-warm frame
    assert len(rep.paired) == 1 and (rep.paired[0]["rounds"], rep.paired[0]["block"]) == (2, 2)
    pd = rep.paired[0]
    assert pd["iterations"] == 4 and pd["speedup_p25"] <= pd["speedup_median"] <= pd["speedup_p75"]
    assert pd["runtime_p50_ms"] > 0 and pd["reference_p50_ms"] > 0
    assert dets[-1].calls["infer"] == cfg.warmup + 2 * (2 + 1) and dets[-1].closed

    out = Path(cfg.out_dir)
    d = json.loads((out / "bench.json").read_text())
    again = BenchReport.from_dict(d)
    assert again.to_dict() == rep.to_dict()
    assert d["machine"]["versions"]["torch"] and d["machine"]["python"]
    md = (out / "bench.md").read_text()
    assert md.startswith("## Pipeline benchmark") and "| pipeline | threads | batch |" in md
    assert "Machine:" in md and "git" in md and "within tolerance" in md and "Paired speed-up" in md
    png = cv2.imread(str(out / "bench.png"))
    assert png is not None and png.shape[0] > 100 and png.shape[1] > 100
    assert (png < 250).any(axis=2).mean() > 0.01   # something was drawn
    table = rep.table()
    assert "onnxruntime" in table and REFERENCE in table and "speed-up" in table and "OK" in table
    assert "paired speed-up" in table
    no_pair = run_bench(tiny_cfg(tmp_path, out_dir=None, batch_sizes=[1], paired_iterations=0),
                        detector_factory=make_det, reference_factory=lambda t: FakeReference(t))
    assert no_pair.paired == [] and no_pair.speedups


def test_run_bench_reports_mismatch_and_failures(tmp_path):
    def broken(backend, threads):
        raise RuntimeError("no such device")

    cfg = tiny_cfg(tmp_path, out_dir=None, batch_sizes=[1], backends=["onnxruntime"])
    rep = run_bench(cfg, detector_factory=lambda b, t: FakeDetector(b, t),
                    reference_factory=lambda t: FakeReference(t, offset=0.25))
    assert not rep.parity[0].ok and rep.parity[0].max_abs_score_diff == pytest.approx(0.25, rel=1e-5)
    assert "MISMATCH" in rep.table()
    rep2 = run_bench(cfg, detector_factory=broken, reference_factory=lambda t: FakeReference(t))
    ort = rep2.pipeline("onnxruntime")
    assert not ort.available and "no such device" in ort.reason
    assert rep2.parity == [] and rep2.speedups == []
    assert not (tmp_path / "out").exists()   # out_dir=None writes nothing


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_unavailable_backend_is_reported_not_fatal(tmp_path):
    cfg = tiny_cfg(tmp_path, backends=["tensorrt"], reference=False, isolate=False, batch_sizes=[1])
    rep = run_bench(cfg)
    trt = rep.pipeline("tensorrt")
    assert trt is not None and not trt.available and "not installed" in trt.reason
    assert "not available" in rep.table()
    assert (tmp_path / "out" / "bench.png").is_file()


def test_bench_and_stream_do_not_import_torch():
    code = ("import sys\nimport edgeuad.bench, edgeuad.stream\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n")
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(bench.__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr


# --- a real tiny bundle (needs the full runtime: detector, maps, training side) -----------------
def _runtime_complete() -> bool:
    return all(importlib.util.find_spec(m) is not None
               for m in ("edgeuad._rt", "edgeuad.runtime.maps", "edgeuad.methods.recontrast", "edgeuad.synthetic"))


def _tiny_recontrast_bundle(root: Path) -> Path:
    """A real bundle from an untrained 64 px model, built like api.export builds one (same spec,
    ONNX exporter and manifest writer) minus training and threshold fitting, which the benchmark
    does not need and which would triple this test's time."""
    from safetensors.torch import save_file

    from edgeuad.bundle import write_manifest
    from edgeuad.export.onnx import export_onnx
    from edgeuad.methods.recontrast import ReContrastConfig, build_model, model_state
    from edgeuad.methods.registry import spec_for
    from edgeuad.preprocess import PreprocessConfig

    cfg = ReContrastConfig(image_size=64, pretrained=False, iterations=1, batch_size=2)
    model = build_model(cfg, pretrained=False).eval()
    spec = spec_for("recontrast", model, cfg)
    root.mkdir(parents=True)
    export_onnx(spec.module, root / "model.onnx", (64, 64), spec.output_names)
    save_file({k: v.contiguous() for k, v in model_state(model).items()}, str(root / "weights.safetensors"))
    write_manifest(root, {
        "method": "recontrast", "backbone": cfg.backbone, "preprocess": PreprocessConfig(size=(64, 64)).to_dict(),
        "model": {"onnx": "model.onnx", "input": "image", "outputs": spec.output_names, "opset": 17,
                  "weights": "weights.safetensors", "config": cfg.to_dict()},
        "postprocess": spec.postprocess,
        "thresholds": {"threshold": 1.0, "min": 0.0, "max": 2.0, "source": "provisional"},
        "files": {"model.onnx": "", "weights.safetensors": ""}})
    return root


@pytest.mark.slow
@pytest.mark.skipif(not _runtime_complete(), reason="edgeuad._rt not built (pip install -e .) or runtime incomplete")
def test_real_bundle_one_iteration_subprocess(tmp_path):
    bundle = _tiny_recontrast_bundle(tmp_path / "bundle")
    cfg = BenchConfig(bundle=str(bundle), out_dir=str(tmp_path / "out"), batch_sizes=[1, 2], threads=[1],
                      backends=["onnxruntime", "tensorrt"], iterations=1, warmup=0, frame_size=(96, 128),
                      n_frames=2, parity_frames=2, isolate=True, score_atol=2e-3, score_rtol=2e-3,
                      paired_iterations=2)
    rep = run_bench(cfg)
    ort, ref = rep.pipeline("onnxruntime"), rep.pipeline(REFERENCE)
    assert ort.available and ref.available, (ort.reason, ref.reason)
    assert ort.rss_note == "fresh subprocess" and ort.peak_rss_mb > 0 and ref.peak_rss_mb > 0
    assert [r.batch_size for r in ort.runs] == [1, 2] and [r.batch_size for r in ref.runs] == [1, 2]
    assert {"network", "distance_map"} <= set(ort.runs[0].stages)
    assert rep.parity and rep.parity[0].ok, rep.parity
    assert rep.parity[0].max_abs_map_diff is not None
    assert rep.speedups and rep.speedups[0]["speedup_p50"] > 0
    assert len(rep.paired) == 1 and rep.paired[0]["speedup_median"] > 0   # its own worker process
    if importlib.util.find_spec("tensorrt") is None:
        assert not rep.pipeline("tensorrt").available
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["bundle"]["method"] == "recontrast"
