"""Benchmark: statistics, parity/speed-up math, the interleaved protocol, report writers, and
end-to-end runs (fake pipelines always; a real tiny bundle in worker processes when the runtime is complete).  Never checks speed."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import pytest

from edgeuad import bench
from edgeuad.bench import (FULL, TORCH_EAGER, BenchConfig, BenchReport, compare_parity, compute_speedups,
                           percentiles, ratio_summary, run_bench, summarize_stages, throughput)
from edgeuad.bench.pipelines import DetectorPipeline, ReferencePipeline

REFERENCE = TORCH_EAGER
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


def test_ratio_summary_is_per_round():
    r = ratio_summary([40.0, 30.0, 50.0], [10.0, 10.0, 10.0])
    assert r["per_rep"] == [4.0, 3.0, 5.0] and r["median"] == 4.0 and (r["min"], r["max"]) == (3.0, 5.0)
    assert r["reps"] == 3
    with pytest.raises(ValueError):
        ratio_summary([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        ratio_summary([1.0], [0.0])


def test_compute_speedups_pairs_every_runtime_with_every_reference():
    cfg = BenchConfig(bundle="b", threads=[1, 2], batch_sizes=[1], backends=["onnxruntime", "tensorrt"],
                      references=[REFERENCE, "ort+torch-post"])
    blocks = {("onnxruntime", 1, 1): [10.0, 20.0, 10.0], (REFERENCE, 1, 1): [40.0, 40.0, 50.0],
              ("ort+torch-post", 1, 1): [20.0, 20.0, 20.0],
              ("onnxruntime", 2, 1): [5.0], (REFERENCE, 2, 1): [30.0, 30.0]}   # unequal rounds: not paired
    sp = compute_speedups(cfg, blocks, {("onnxruntime", 1): 1})
    assert [(s["runtime"], s["reference"], s["threads"]) for s in sp] == [("onnxruntime", REFERENCE, 1),
                                                                         ("onnxruntime", "ort+torch-post", 1)]
    assert sp[0]["per_rep"] == [4.0, 2.0, 5.0] and sp[0]["speedup_median"] == 4.0
    assert (sp[0]["speedup_min"], sp[0]["speedup_max"]) == (2.0, 5.0)
    assert sp[0]["runtime_ms"] == 10.0 and sp[0]["reference_ms"] == 40.0
    assert sp[1]["speedup_median"] == 2.0


def test_config_validation_and_roundtrip():
    c = BenchConfig(bundle="b", batch_sizes=[8, 1, 4, 4], threads=[1, 2])
    assert c.batch_sizes == [1, 4, 8]
    assert BenchConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    quick = BenchConfig(bundle="b")
    assert (quick.batch_sizes, quick.threads, quick.backends, quick.references) == ([1], [1], ["onnxruntime"], [REFERENCE])
    full = BenchConfig(bundle="b", **FULL)
    assert full.threads == [1, 2] and len(full.references) == 3 and "onnxruntime-int8" in full.backends
    for bad in (dict(batch_sizes=[0]), dict(threads=[-1]), dict(repetitions=0), dict(block=0),
                dict(backends=["openvino"]), dict(references=["tf"]), dict(backends=[], references=[])):
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
    input_size = PRE.size

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
                          {"network": 0.2, "torch_post": 0.1})


class DroppingDetector(FakeDetector):
    """Returns one result fewer than the batch: a pipeline that drops frames must not be timed."""

    def postprocess(self, outputs, frame_sizes, return_map=True):
        return super().postprocess(outputs, frame_sizes, return_map)[:-1]


class DroppingReference(FakeReference):
    def run(self, x):
        o = super().run(x)
        return FakeRefOut(o.scores[:-1], o.maps[:-1], o.timings)


def test_timing_loop_rejects_pipelines_that_drop_frames():
    frames = bench.synthetic_frames(3, (48, 64))
    ok = bench.time_block(DetectorPipeline("onnxruntime", FakeDetector("onnxruntime", 1), 1), frames, 0, 3, 2, warm=1)
    assert len(ok) == 3 and list(ok[0])[:3] == ["decode", "preprocess", "network"]
    assert all(r["total"] >= r["pipeline"] > 0 for r in ok)
    with pytest.raises(RuntimeError, match="1 results for a batch of 2"):
        bench.time_block(DetectorPipeline("onnxruntime", DroppingDetector("onnxruntime", 1), 1), frames, 0, 1, 2)
    ref = bench.time_block(ReferencePipeline(REFERENCE, FakeReference(1), 1), frames, 0, 2, 2)
    assert set(ref[0]) == {"decode", "preprocess", "network", "torch_post", "pipeline", "total"}
    with pytest.raises(RuntimeError, match="torch-eager: 1 results for a batch of 2"):
        bench.time_block(ReferencePipeline(REFERENCE, DroppingReference(1), 1), frames, 0, 1, 2)


def tiny_cfg(tmp_path, **kw) -> BenchConfig:
    base = dict(bundle=str(tmp_path / "nobundle"), out_dir=str(tmp_path / "out"), batch_sizes=[1, 2], threads=[1],
                backends=["onnxruntime"], repetitions=3, block=2, warmup=1, frame_size=(48, 64), n_frames=3,
                parity_frames=2)
    base.update(kw)
    return BenchConfig(**base)


def test_run_bench_fake_pipelines_end_to_end(tmp_path):
    dets = []

    def make_det(backend, threads):
        dets.append(FakeDetector(backend, threads))
        return dets[-1]

    cfg = tiny_cfg(tmp_path)
    rep = run_bench(cfg, detector_factory=make_det, reference_factory=lambda n, t: FakeReference(t))
    ort = rep.pipeline("onnxruntime")
    assert ort is not None and ort.available and [r.batch_size for r in ort.runs] == [1, 2]
    # one detector for the whole run (the worker keeps it); per batch size and round: 1 re-warm + block
    # batches, plus cfg.warmup in the first round; plus one parity call
    per_bs = cfg.repetitions * (1 + cfg.block) + cfg.warmup
    assert len(dets) == 1 and dets[0].calls["infer"] == 2 * per_bs + 1 and dets[0].closed
    for r in ort.runs:
        assert set(r.stages) >= {"decode", "preprocess", "network", "distance_map", "postprocess", "pipeline", "total"}
        assert r.stages["total"]["n"] == r.iterations == cfg.repetitions * cfg.block
        # throughput is exactly frames / summed total time: recompute it from the mean
        assert r.throughput_fps == pytest.approx(r.batch_size / (r.stages["total"]["mean"] / 1000.0))
        assert r.stages["total"]["p50"] >= r.stages["pipeline"]["p50"]
    assert ort.peak_rss_mb is not None and ort.peak_rss_mb > 0
    assert [q.backend for q in rep.parity] == ["onnxruntime"] and rep.parity[0].ok
    assert rep.parity[0].max_abs_score_diff == 0.0 and rep.parity[0].n_frames == 2
    # speed-ups: per thread count x batch size, one ratio per round
    assert [(s["batch_size"], s["reps"]) for s in rep.speedups] == [(1, 3), (2, 3)]
    s0 = rep.speedups[0]
    assert s0["speedup_min"] <= s0["speedup_median"] <= s0["speedup_max"] and len(s0["per_rep"]) == 3

    out = Path(cfg.out_dir)
    d = json.loads((out / "bench.json").read_text())
    again = BenchReport.from_dict(d)
    assert again.to_dict() == rep.to_dict()
    assert d["machine"]["versions"]["torch"] and d["machine"]["python"] and "simd" in d["machine"]
    md = (out / "bench.md").read_text()
    assert md.startswith("## Pipeline benchmark") and "| pipeline | threads | batch |" in md
    assert "Machine:" in md and "git" in md and "within tolerance" in md and "3 rounds" in md
    assert f"| onnxruntime | {REFERENCE} | 1 | 1 |" in md
    png = cv2.imread(str(out / "bench.png"))
    assert png is not None and png.shape[0] > 100 and png.shape[1] > 100
    assert (png < 250).any(axis=2).mean() > 0.01   # something was drawn
    table = rep.table()
    assert "onnxruntime" in table and REFERENCE in table and "speed-up" in table and "OK" in table


def test_run_bench_reports_how_the_bank_searched(tmp_path):
    """A Detector with a memory bank: the report records, per thread count, the bank's search mode and how
    many exact-search queries ran, how many took the full search (the pruned search's certificate) and how
    many bf16 candidate sets were re-searched in float32."""
    from edgeuad.runtime.bank import Bank

    rng = np.random.default_rng(0)
    z = rng.standard_normal((1500, 6)) * np.geomspace(4, 0.5, 6)
    feats = (z @ rng.standard_normal((6, 96))).astype(np.float32)
    queries = feats[:40] + np.float32(0.01) * rng.standard_normal((40, 96)).astype(np.float32)

    class BankDetector(FakeDetector):
        exact_search = None

        def __init__(self, backend, threads):
            super().__init__(backend, threads)
            self.bank = Bank.build(feats)

        def postprocess(self, outputs, frame_sizes, return_map=True):
            self.bank.search_patch_scores(queries, b=0)   # one 40-query search per batch, like a frame's patches
            return super().postprocess(outputs, frame_sizes, return_map)

    dets = []
    cfg = tiny_cfg(tmp_path, threads=[1, 2], batch_sizes=[1])
    rep = run_bench(cfg, detector_factory=lambda b, t: dets.append(BankDetector(b, t)) or dets[-1],
                    reference_factory=lambda n, t: FakeReference(t))
    ort = rep.pipeline("onnxruntime")
    assert [b["threads"] for b in ort.bank] == [1, 2] and len(dets) == 2
    # rank-6 features: the pruned search, also beside bf16 candidates (they serve its full searches)
    mode = "exact, pruned"
    for b, det in zip(ort.bank, dets):
        assert b["search"] == det.bank.search_mode() and b["search"].startswith(mode)
        assert b["exact_queries"] == 40 * det.calls["postprocess"] and 0 <= b["full_queries"] < b["exact_queries"]
        assert 0 <= b["refined_queries"] <= b["full_queries"]
    assert rep.pipeline(REFERENCE).bank == []
    md = (Path(cfg.out_dir) / "bench.md").read_text()
    assert f"- Bank search, onnxruntime at 2 thread(s): {mode}" in md
    assert BenchReport.from_dict(json.loads((Path(cfg.out_dir) / "bench.json").read_text())).to_dict() == rep.to_dict()


def test_rounds_interleave_pipelines_in_alternating_order(tmp_path):
    calls = []

    class Logged(FakeDetector):
        def infer(self, x):
            calls.append(self.backend_name)
            return super().infer(x)

    class LoggedRef(FakeReference):
        def run(self, x):
            calls.append("ref")
            return super().run(x)

    cfg = tiny_cfg(tmp_path, out_dir=None, batch_sizes=[1], parity_frames=0, warmup=0, block=1, repetitions=4)
    run_bench(cfg, detector_factory=lambda b, t: Logged(b, t), reference_factory=lambda n, t: LoggedRef(t))
    # each block = 1 re-warm + 1 timed call; rounds alternate A B, B A, A B, B A
    assert calls == ["onnxruntime"] * 2 + ["ref"] * 4 + ["onnxruntime"] * 4 + ["ref"] * 4 + ["onnxruntime"] * 2


def test_run_bench_reports_mismatch_and_failures(tmp_path):
    def broken(backend, threads):
        raise RuntimeError("no such device")

    cfg = tiny_cfg(tmp_path, out_dir=None, batch_sizes=[1], backends=["onnxruntime"])
    rep = run_bench(cfg, detector_factory=lambda b, t: FakeDetector(b, t),
                    reference_factory=lambda n, t: FakeReference(t, offset=0.25))
    assert not rep.parity[0].ok and rep.parity[0].max_abs_score_diff == pytest.approx(0.25, rel=1e-5)
    assert "MISMATCH" in rep.table()
    rep2 = run_bench(cfg, detector_factory=broken, reference_factory=lambda n, t: FakeReference(t))
    ort = rep2.pipeline("onnxruntime")
    assert not ort.available and "no such device" in ort.reason
    assert rep2.pipeline(REFERENCE).available and rep2.pipeline(REFERENCE).runs
    assert rep2.parity == [] and rep2.speedups == []
    assert not (tmp_path / "out").exists()   # out_dir=None writes nothing


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_unavailable_backend_is_reported_not_fatal(tmp_path):
    cfg = tiny_cfg(tmp_path, backends=["tensorrt"], references=[], isolate=False, batch_sizes=[1])
    rep = run_bench(cfg)
    trt = rep.pipeline("tensorrt")
    assert trt is not None and not trt.available and "not installed" in trt.reason
    assert "not available" in rep.table()
    assert (tmp_path / "out" / "bench.png").is_file()


def test_bench_and_stream_do_not_import_torch():
    code = ("import sys\nimport edgeuad.bench, edgeuad.bench.pipelines, edgeuad.bench.protocol, edgeuad.stream\n"
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
        # placeholder values (the benchmark times, it does not decide); "provisional" would not load
        "thresholds": {"threshold": 1.0, "min": 0.0, "max": 2.0, "source": "normal_quantile"},
        "files": {"model.onnx": "", "weights.safetensors": ""}})
    return root


@pytest.mark.slow
@pytest.mark.skipif(not _runtime_complete(), reason="edgeuad._rt not built (pip install -e .) or runtime incomplete")
def test_real_bundle_one_iteration_subprocess(tmp_path):
    bundle = _tiny_recontrast_bundle(tmp_path / "bundle")
    cfg = BenchConfig(bundle=str(bundle), out_dir=str(tmp_path / "out"), batch_sizes=[1, 2], threads=[1],
                      backends=["onnxruntime", "onnxruntime-int8", "tensorrt"], references=[REFERENCE, "ort+torch-post"],
                      repetitions=2, block=1, warmup=0, frame_size=(96, 128), n_frames=2, parity_frames=2,
                      isolate=True, score_atol=2e-3, score_rtol=2e-3)
    rep = run_bench(cfg)
    ort, ref, peer = rep.pipeline("onnxruntime"), rep.pipeline(REFERENCE), rep.pipeline("ort+torch-post")
    assert ort.available and ref.available and peer.available, (ort.reason, ref.reason, peer.reason)
    assert ort.rss_note == "its own worker process" and ort.peak_rss_mb > 0 and ref.peak_rss_mb > 0
    assert [r.batch_size for r in ort.runs] == [1, 2] and [r.batch_size for r in ref.runs] == [1, 2]
    assert {"network", "distance_map"} <= set(ort.runs[0].stages) and "torch_post" in ref.runs[0].stages
    par = {q.backend: q for q in rep.parity}
    assert par["onnxruntime"].ok and par["ort+torch-post"].ok, rep.parity
    assert par["onnxruntime"].max_abs_map_diff is not None
    int8 = rep.pipeline("onnxruntime-int8")
    assert int8.available, int8.reason          # Q/DQ graph built and run in its worker
    assert "onnxruntime-int8" in par             # its agreement is reported, whatever it is
    assert {(s["runtime"], s["reference"]) for s in rep.speedups if s["batch_size"] == 1} == {
        (a, b) for a in ("onnxruntime", "onnxruntime-int8") for b in (REFERENCE, "ort+torch-post")}
    if importlib.util.find_spec("tensorrt") is None:
        assert not rep.pipeline("tensorrt").available
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["bundle"]["method"] == "recontrast"
    assert "- OpenMP wait policy, each side at its faster one: runtime pipelines OMP_WAIT_POLICY=" in rep.to_markdown()


def test_bench_workers_start_with_their_own_openmp_policy(monkeypatch) -> None:
    """Runtime pipelines and the onnxruntime + torch peer run under edgeuad's PASSIVE preference, the pure
    torch references as the bench was launched (edgeuad's preference removed, a user's own choice kept):
    PASSIVE would slow eager torch."""
    from edgeuad import cpus
    from edgeuad.bench.protocol import openmp_environ
    from edgeuad.cpus import describe_openmp_policy as openmp_policy

    for k in cpus.OPENMP_WAIT_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(cpus, "_set_here", set())
    cpus.prefer_passive_openmp()  # what `edgeuad bench` (the CLI) does in the bench's own process
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert not any(k in openmp_environ(REFERENCE) for k in cpus.OPENMP_WAIT_ENV)
    assert openmp_policy(openmp_environ(REFERENCE)).startswith("unset")
    assert openmp_environ("torch-compile").get("OMP_WAIT_POLICY") is None
    assert openmp_environ("ort+torch-post")["OMP_WAIT_POLICY"] == "PASSIVE"  # runs onnxruntime beside torch
    assert openmp_environ("onnxruntime")["OMP_WAIT_POLICY"] == "PASSIVE"
    assert openmp_policy(openmp_environ("onnxruntime")) == "OMP_WAIT_POLICY=PASSIVE"
    monkeypatch.setattr(cpus, "_set_here", set())  # now the user's own PASSIVE: every worker keeps it
    assert openmp_environ(REFERENCE)["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")  # a user's spin count is a choice too
    env = openmp_environ("onnxruntime")
    assert "OMP_WAIT_POLICY" not in env and env["GOMP_SPINCOUNT"] == "1000"
    cpus.prefer_passive_openmp()
    assert "OMP_WAIT_POLICY" not in os.environ


def test_report_explains_an_int8_bundles_parity_mismatch() -> None:
    """An `export --cpu-int8` bundle's onnxruntime row differs from the fp32 torch reference by design:
    the printed parity line says why; an fp32 bundle's mismatch stays a bare MISMATCH."""
    from edgeuad.bench.report import BenchReport, compare_parity

    ref = {"scores": np.array([1.0, 2.0])}
    bad = compare_parity("onnxruntime", {"scores": np.array([1.1, 2.0])}, ref, 1e-3, 1e-3)
    good = compare_parity("onnxruntime", {"scores": np.array([1.0, 2.0])}, ref, 1e-3, 1e-3)
    assert not bad.ok and good.ok

    def text(graph: str, q) -> str:
        return BenchReport(config={}, machine={}, bundle_info={"graph": graph}, pipelines=[], parity=[q],
                           speedups=[]).table()

    assert "MISMATCH (expected: this bundle's graph is int8" in text("int8 (onnxruntime CPU)", bad)
    assert "MISMATCH" in text("float32", bad) and "expected" not in text("float32", bad)
    assert "expected" not in text("int8 (onnxruntime CPU)", good)


def test_median_ms_counts_warm_up_sync_and_takes_the_median(monkeypatch: pytest.MonkeyPatch) -> None:
    """The single-call loop (bench_maps, the GPU smoke script): `warm` untimed calls, `sync` after the warm-up and
    inside each timed call, the median of the timed calls (a fake clock makes the durations known)."""
    from edgeuad.bench import timing

    ticks = iter([0.0, 0.002, 1.0, 1.010, 2.0, 2.004])   # timed calls of 2, 10 and 4 ms
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(ticks))
    calls, syncs = [], []
    ms = timing.median_ms(lambda: calls.append(1), 3, warm=2, sync=lambda: syncs.append(len(calls)))
    assert ms == pytest.approx(4.0)
    assert len(calls) == 5 and syncs == [2, 3, 4, 5]
    with pytest.raises(ValueError, match="repeat"):
        timing.median_ms(lambda: None, 0)


def test_windowed_s_per_call_interleaves_windows_and_takes_the_median(monkeypatch: pytest.MonkeyPatch) -> None:
    """The windowed loop (bench_bank, bank_gemm): one untimed call of each fn, then per window and fn calls until
    the window is full, the window's seconds per call, the median over windows, windows alternating between fns."""
    from edgeuad.bench import timing

    clock = [0.0]
    cost = {"a": 0.125, "b": 0.25}   # binary fractions: the fake clock adds them exactly
    order: list[str] = []

    def call(k: str):
        def f() -> None:
            order.append(k)
            clock[0] += cost[k]
        return f

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    got = timing.windowed_s_per_call({"a": call("a"), "b": call("b")}, windows=3, window_s=0.375)
    assert got == {"a": 0.125, "b": 0.25}
    # warm-up a, b; then per window 3 calls of a (0.375 s) and 2 of b (0.5 s), alternating
    assert order == ["a", "b"] + (["a"] * 3 + ["b"] * 2) * 3
    with pytest.raises(ValueError, match="windows"):
        timing.windowed_s_per_call({"a": call("a")}, windows=0, window_s=0.3)
