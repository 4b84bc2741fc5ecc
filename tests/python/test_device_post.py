"""Detector on the TensorRT backend with the map computed on the GPU (runtime/device_post.py), run against
fakes: tensorrt 10.3.0 / 11.1 (real API names) whose engine runs the bundle's ONNX in onnxruntime on fake
device memory, a fake pycuda, and `_rt`'s CUDA entry points replaced by its CPU emulation of the CUDA
kernels (tests/python/fake_gpu.py).

This checks the host-side wiring: outputs stay in (fake) device memory and feed cos_map_cuda /
l2_map_cuda on the engine's stream, only the score the bundle uses and the map when asked come back,
buffers are reused per batch size, batches above max_batch are chunked, results equal the CPU Detector.
It does NOT show that the chain runs on a real GPU: nothing CUDA or TensorRT has run in this project.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeuad import _rt, api
from edgeuad.bundle import Bundle
from edgeuad.detector import Detector
from edgeuad.export import tensorrt as T
from edgeuad.runtime import device_post
from edgeuad.synthetic import make_synthetic_dataset
from fake_gpu import FakeGpu, FakeRt, make_pycuda, make_tensorrt

TINY = {
    "recontrast": {"image_size": 64, "iterations": 2, "batch_size": 4, "pretrained": False},
    "patchcore": {"image_size": 64, "coreset_ratio": 0.2, "pretrained": False},
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "data", kind="texture", n_train=8,
                                  n_test_good=2, n_test_defect=2, size=64, seed=3)


@pytest.fixture(scope="module", params=list(TINY))
def bundle(request: pytest.FixtureRequest, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(request.param)
    run = api.train(request.param, dataset, out / "run", TINY[request.param], holdout_fraction=0.25, progress=False)
    return api.export(run, out / "bundle").root


class FakeStack:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version: str = "10.3.0") -> None:
        self.gpu = FakeGpu()
        self.trt = make_tensorrt(version, self.gpu)
        pkg, drv, ga = make_pycuda(self.gpu)
        for name, mod in (("tensorrt", self.trt), ("pycuda", pkg), ("pycuda.driver", drv), ("pycuda.gpuarray", ga)):
            monkeypatch.setitem(sys.modules, name, mod)
        monkeypatch.setattr(T, "query_gpu", lambda device=0: T.GpuInfo(device, "Fake GPU", (8, 9), 128, 12080))
        monkeypatch.setattr(T, "device_context", lambda device: contextlib.nullcontext())
        monkeypatch.setenv(T.ENV_CACHE_DIR, str(tmp_path / "trt-cache"))
        self.rt = FakeRt(_rt, self.gpu)
        monkeypatch.setattr(device_post, "load_rt", lambda: self.rt)


def _frames(dataset: Path, n: int) -> list[np.ndarray]:
    from edgeuad.data import read_image

    return [read_image(p) for p in sorted((dataset / "test").rglob("*.png"))[:n]]


@pytest.mark.parametrize("version", ["10.3.0", "11.1.0"])
def test_device_detector_matches_cpu_detector(bundle, dataset, tmp_path, monkeypatch, version):
    frames = _frames(dataset, 3)
    cpu = Detector(bundle).score_batch(frames)
    st = FakeStack(monkeypatch, tmp_path, version)
    with Detector(bundle, backend="tensorrt") as det:
        assert det.device_post is not None
        got = det.score_batch(frames)
        kind = det.post["kind"]
        score_key = "max_out" if det.post["score"] == "max" else "topk_out"
        # a second batch of another size: new buffers; a batch of one without the map
        one = det.score(frames[0], return_map=False)
    if kind == "cos_pairs":
        assert [c[0] for c in st.rt.calls] == ["cos_map_cuda"] * 2
    else:  # tiny bank: exact search on the GPU, nothing comes back before the map
        assert [c[0] for c in st.rt.calls] == ["patch_scores", "l2_map_cuda"] * 2
    for name, kw in st.rt.calls:
        if name == "patch_scores":
            assert kw["b"] == det.post["reweight_b"] and kw["stream"] != 0
            continue
        assert kw[score_key] and not kw["max_out" if score_key == "topk_out" else "topk_out"]  # only the used score
        assert kw["stream"] != 0  # the engine's stream, not the default one
    # fp16 on 11.x is an fp16 graph (fake engine then runs float32 ORT on it), fp32-close either way
    tol = 5e-3 if version == "11.1.0" else 1e-5
    for c, g in zip(cpu, got):
        assert g.score == pytest.approx(c.score, rel=tol, abs=tol)
        np.testing.assert_allclose(g.raw_map, c.raw_map, atol=tol * max(1.0, float(np.abs(c.raw_map).max())))
        assert g.anomaly_map.shape == c.anomaly_map.shape
    assert one.anomaly_map is None and one.score == pytest.approx(cpu[0].score, rel=tol, abs=tol)


def test_device_detector_chunks_batches_above_max_batch(bundle, dataset, tmp_path, monkeypatch):
    frames = _frames(dataset, 3)
    cpu = Detector(bundle).score_batch(frames)
    FakeStack(monkeypatch, tmp_path)
    with Detector(bundle, backend="tensorrt") as det:
        monkeypatch.setattr(type(det.backend), "max_batch", property(lambda self: 2))
        got = det.score_batch(frames)
    assert [g.score for g in got] == pytest.approx([c.score for c in cpu], rel=1e-5, abs=1e-6)


def test_hnsw_banks_search_on_the_host_through_pinned_copies(bundle, dataset, tmp_path, monkeypatch):
    if json.loads((bundle / "manifest.json").read_text())["postprocess"]["kind"] != "nn_l2":
        pytest.skip("patch methods only")
    frames = _frames(dataset, 2)
    cpu = Detector(bundle, exact_search=False).score_batch(frames)
    st = FakeStack(monkeypatch, tmp_path)
    with Detector(bundle, backend="tensorrt", exact_search=False) as det:
        assert det.device_post.device_bank is None
        got = det.score_batch(frames)
    assert [c[0] for c in st.rt.calls] == ["l2_map_cuda"]
    assert [g.score for g in got] == pytest.approx([c.score for c in cpu], rel=1e-5, abs=1e-6)


def test_device_postprocess_can_be_switched_off_or_demanded(bundle, dataset, tmp_path, monkeypatch):
    st = FakeStack(monkeypatch, tmp_path)
    with Detector(bundle, backend="tensorrt", device_postprocess=False) as det:
        assert det.device_post is None
        r = det.score(_frames(dataset, 1)[0])
    assert st.rt.calls == [] and np.isfinite(r.score)
    # CUDA kernels unusable: auto falls back to the CPU kernels (logged), True is an error naming why
    monkeypatch.setattr(st.rt, "cuda_status", lambda: {"device_count": 0, "error": "cudaErrorNoDevice: no device"})
    with Detector(bundle, backend="tensorrt") as det:
        assert det.device_post is None
    with pytest.raises(RuntimeError, match="cudaErrorNoDevice"):
        Detector(bundle, backend="tensorrt", device_postprocess=True)


def test_availability_reasons():
    class NoDevice:
        name = "onnxruntime"

    ok, why = device_post.device_postprocess_available(NoDevice(), _rt)
    assert not ok and "cannot keep outputs on the GPU" in why
    if not _rt.has_cuda():
        pytest.skip("CPU-only _rt: the next reason is covered by the fake")
    attrs = dict.fromkeys(device_post._NEEDED, None)
    backend = type("B", (), attrs)()
    ok, why = device_post.device_postprocess_available(backend, _rt)
    if _rt.cuda_device_count() == 0:
        assert not ok and "no CUDA device" in why and _rt.cuda_status()["error"] in why


def test_export_engines_keeps_engines_out_of_the_hashed_files(bundle, tmp_path, monkeypatch):
    import shutil

    from edgeuad.export.trt_export import export_engines

    FakeStack(monkeypatch, tmp_path)
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    files_before = json.loads((copy / "manifest.json").read_text())["files"]
    (engine,) = export_engines(Bundle.load(copy), fp16=True, max_batch=2)
    m = json.loads((copy / "manifest.json").read_text())
    assert m["engines"] == {"fp16": "model.onnx"} and m["files"] == files_before
    assert tmp_path / "trt-cache" in engine.parents and not any(p.suffix == ".engine" for p in copy.iterdir())
    # rebuilding the engine (another GPU, a forced build) leaves the bundle verifiable
    T.build_engine(copy / "model.onnx", precision="fp16", max_batch=2, force=True)
    Bundle.load(copy)
    with Detector(copy, backend="tensorrt") as det:
        assert det.backend.precision == "fp16"
