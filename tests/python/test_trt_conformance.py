"""TensorRT conformance without TensorRT: export/tensorrt.py's build and runtime code paths run against fake
`tensorrt` modules of 8.6.1, 10.3.0 and 11.1 whose enums have exactly the real bindings' members and whose
classes expose only methods the real bindings have (tests/python/trt_api_lists.py, extracted from
TensorRT's pybind11 sources), plus a fake pycuda (tests/python/fake_gpu.py).

What this proves: the code calls only names that exist in each version, picks builder flags (8.6/10.x)
or a strongly typed fp16 graph (11.x) correctly, keys and reuses the engine cache, honours `device`,
refuses unsupported versions, moves data correctly through the runtime (host and device paths), and
never overwrites a pinned input buffer that an asynchronous copy still reads.  What it cannot prove:
that real TensorRT accepts the graphs, or the real engines' numerics (tools/gpu_smoke.sh does that on a GPU).
"""
from __future__ import annotations

import contextlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeuad.export import tensorrt as T
from fake_gpu import FakeGpu, make_pycuda, make_tensorrt
from trt_api_lists import API

REPO = Path(__file__).resolve().parents[2]
VERSIONS = ["8.6.1", "10.3.0", "11.1.0"]
GPU = T.GpuInfo(0, "NVIDIA Fake Orin", (8, 7), 16, 12060)


def _model(path: Path, qdq: bool = False) -> Path:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bias")]
    nodes, x = [], "image"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "zp")]
        nodes += [helper.make_node("QuantizeLinear", ["image", "s", "zp"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xdq"])]
        x = "xdq"
    nodes += [helper.make_node("Conv", [x, "w", "bias"], ["c"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["feat"]),
              helper.make_node("ReduceMean", ["feat"], ["pooled"], axes=[1], keepdims=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", 4, 8, 8]),
                           helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["N", 1, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


class Stack:
    """Installs a fake tensorrt + pycuda (and a fake GPU identity) for one test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, version: str, api: str | None = None,
                 gpu_info: T.GpuInfo = GPU) -> None:
        self.gpu = FakeGpu()
        self.trt = make_tensorrt(version, self.gpu, api)
        pkg, drv, ga = make_pycuda(self.gpu)
        for name, mod in (("tensorrt", self.trt), ("pycuda", pkg), ("pycuda.driver", drv), ("pycuda.gpuarray", ga)):
            monkeypatch.setitem(sys.modules, name, mod)
        self.devices: list[int] = []
        monkeypatch.setattr(T, "query_gpu", lambda device=0: T.GpuInfo(device, *list(
            (gpu_info.name, gpu_info.sm, gpu_info.sm_count, gpu_info.driver_version))))

        @contextlib.contextmanager
        def device_context(device: int):
            self.devices.append(device)
            yield

        monkeypatch.setattr(T, "device_context", device_context)
        self.waits: list[tuple[int, int]] = []
        monkeypatch.setattr(T._StreamWaiter, "wait", lambda _s, p, c: self.waits.append((p, c)))


@pytest.fixture()
def fp32_onnx(tmp_path):
    return _model(tmp_path / "m.onnx")


@pytest.fixture()
def qdq_onnx(tmp_path):
    return _model(tmp_path / "q.onnx", qdq=True)


def _ort(path: Path, x: np.ndarray) -> dict:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"image": x})))


# ------------------------------------------------------------------------------------------ the fakes
@pytest.mark.parametrize("version", VERSIONS)
def test_fake_modules_expose_exactly_the_real_enum_members(version):
    trt = make_tensorrt(version, FakeGpu())
    for name, members in API[version]["enums"].items():
        e = trt.ILogger.Severity if name == "Severity" else getattr(trt, name)
        assert list(e.__members__) == list(dict.fromkeys(members))
    # the facts the dispatch relies on, straight from the bindings' sources
    has_fp16 = hasattr(trt.BuilderFlag, "FP16")
    assert has_fp16 == (version != "11.1.0")
    assert hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") == (version != "11.1.0")
    assert hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") == (version != "8.6.1")
    assert ("platform_has_fast_fp16" in API[version]["classes"]["Builder"]) == (version != "11.1.0")


# ------------------------------------------------------------------------------------------ versions
@pytest.mark.parametrize("v,ok", [("8.6.1", 8), ("8.6.2.3", 8), ("10.3.0", 10), ("10.13.3", 10), ("11.1.0", 11),
                                  ("11.4.1", 11), ("8.5.2", None), ("8.4.1", None), ("9.3.0", None),
                                  ("7.2.3", None), ("12.0.0", None), ("x.y", None)])
def test_version_support(v, ok):
    if ok:
        assert T.check_trt_version(v) == ok
    else:
        with pytest.raises(T.TensorRTUnsupportedError, match="8.6 .*10.x .*11.x"):
            T.check_trt_version(v)


@pytest.mark.parametrize("version", ["8.5.2", "9.3.0", "12.0.0"])
def test_unsupported_tensorrt_refused_at_build_and_run(monkeypatch, tmp_path, fp32_onnx, version):
    Stack(monkeypatch, version, "10.3.0")
    with pytest.raises(T.TensorRTUnsupportedError, match=re.escape(version)):
        T.build_engine(fp32_onnx, cache_dir=tmp_path / "c")
    eng = tmp_path / "x.engine"
    eng.write_bytes(b"{}")
    with pytest.raises(T.TensorRTUnsupportedError):
        T.TrtEngine(eng)
    assert issubclass(T.TensorRTUnsupportedError, RuntimeError)


def test_setup_pins_the_supported_tensorrt_majors():
    text = (REPO / "setup.py").read_text()
    assert '"tensorrt>=10,<12"' in text and "onnxconverter-common" in text


# ------------------------------------------------------------------------------------------ build
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "auto"])
def test_build_dispatch_per_version(monkeypatch, tmp_path, fp32_onnx, version, precision):
    st = Stack(monkeypatch, version)
    path = T.build_engine(fp32_onnx, precision=precision, max_batch=4, cache_dir=tmp_path / "c")
    spec = st.trt._record["builds"][-1]
    resolved = "fp16" if precision == "auto" else precision  # SM 8.7 has fast fp16
    meta = T.read_sidecar(path)
    assert meta["precision"] == resolved and meta["trt_version"] == version
    assert meta["sm_count"] == 16 and meta["driver_version"] == 12060 and meta["gpu_name"] == GPU.name
    assert spec["profile"]["image"] == [[1, 3, 8, 8], [1, 3, 8, 8], [4, 3, 8, 8]]
    if version == "11.1.0":
        assert spec["builder_flags"] == [] and spec["network_flags"] == ["STRONGLY_TYPED"]
        assert spec["fp16_graph"] == (resolved == "fp16")  # fp16 comes from the graph
        assert meta["build"]["strongly_typed"] is True
    else:
        assert spec["builder_flags"] == (["FP16"] if resolved == "fp16" else [])
        assert spec["fp16_graph"] is False
        assert spec["network_flags"] == (["EXPLICIT_BATCH"] if version == "8.6.1" else [])
    assert st.devices == [0]


@pytest.mark.parametrize("version", VERSIONS)
def test_build_int8_from_qdq(monkeypatch, tmp_path, qdq_onnx, version):
    st = Stack(monkeypatch, version)
    path = T.build_engine(qdq_onnx, precision="auto", cache_dir=tmp_path / "c")
    spec = st.trt._record["builds"][-1]
    assert T.read_sidecar(path)["precision"] == "int8"
    assert spec["onnx"] == str(qdq_onnx) and spec["fp16_graph"] is False
    assert spec["builder_flags"] == ([] if version == "11.1.0" else ["INT8", "FP16"])


def test_build_honours_device_and_caches(monkeypatch, tmp_path, fp32_onnx):
    st = Stack(monkeypatch, "10.3.0")
    cache = tmp_path / "c"
    p1 = T.build_engine(fp32_onnx, precision="fp16", cache_dir=cache, device=1)
    assert st.devices == [1] and T.read_sidecar(p1)["build"]["device"] == 1
    n = len(st.trt._record["builds"])
    assert T.build_engine(fp32_onnx, precision="fp16", cache_dir=cache, device=1) == p1
    assert len(st.trt._record["builds"]) == n  # cache hit: nothing rebuilt
    # another driver or SM count is another key: a new engine beside the old one
    monkeypatch.setattr(T, "query_gpu", lambda device=0: T.GpuInfo(device, GPU.name, GPU.sm, 8, GPU.driver_version))
    p2 = T.build_engine(fp32_onnx, precision="fp16", cache_dir=cache, device=1)
    assert p2 != p1 and len(st.trt._record["builds"]) == n + 1
    monkeypatch.setattr(T, "query_gpu", lambda device=0: T.GpuInfo(device, GPU.name, GPU.sm, 16, 13000))
    assert T.build_engine(fp32_onnx, precision="fp16", cache_dir=cache, device=1) not in (p1, p2)
    leftovers = [p.name for p in cache.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []  # atomic writes leave no temp files


def test_strongly_typed_fp16_graph_is_cached_and_keeps_float32_io(monkeypatch, tmp_path, fp32_onnx):
    Stack(monkeypatch, "11.1.0")
    cache = tmp_path / "c"
    T.build_engine(fp32_onnx, precision="fp16", cache_dir=cache)
    (half,) = list((cache / "onnx").glob("*.fp16.onnx"))
    m = onnx.load(str(half))
    assert {i.data_type for i in m.graph.initializer if i.name in ("w", "bias")} == {TensorProto.FLOAT16}
    io = [v.type.tensor_type.elem_type for v in list(m.graph.input) + list(m.graph.output)]
    assert set(io) == {TensorProto.FLOAT}
    onnx.checker.check_model(m)
    onnx.shape_inference.infer_shapes(m, strict_mode=True)  # types consistent (a graph output read inside too)
    consumers = [n for n in m.graph.node if "feat" in n.input]
    assert consumers == []  # ReduceMean reads the fp16 tensor, not the float32 graph output
    assert T.fp16_onnx(fp32_onnx, cache / "onnx") == half  # reused, keyed by the source's sha256


def test_fp16_onnx_is_numerically_the_model(tmp_path, fp32_onnx):
    import onnxruntime as ort

    half = T.fp16_onnx(fp32_onnx, tmp_path)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    try:
        got = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"]).run(None, {"image": x})
    except Exception as e:  # noqa: BLE001  onnxruntime's CPU build may lack an fp16 kernel
        pytest.skip(f"onnxruntime cannot run this fp16 graph on the CPU: {e}")
    ref = list(_ort(fp32_onnx, x).values())
    for g, r in zip(got, ref):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, r, atol=2e-2 * max(1.0, float(np.abs(r).max())), rtol=0)


def test_strong_typing_needs_onnx(monkeypatch, tmp_path, fp32_onnx):
    Stack(monkeypatch, "11.1.0")
    monkeypatch.setattr(T, "scan_qdq", lambda p: None)  # as if `onnx` were missing
    with pytest.raises(T.TensorRTUnavailableError, match="install `onnx`"):
        T.build_engine(fp32_onnx, precision="fp16", cache_dir=tmp_path)


def test_explicit_batch_missing_would_fail_on_86(monkeypatch, tmp_path, fp32_onnx):
    # The fake 8.6 parser refuses implicit-batch networks like the real one: the flag is what makes it pass.
    st = Stack(monkeypatch, "8.6.1")
    monkeypatch.setattr(T, "_network_flags", lambda trt, major: 0)
    with pytest.raises(T.EngineBuildError, match="explicit-batch"):
        T.build_engine(fp32_onnx, cache_dir=tmp_path)
    assert st.trt._record["builds"] == []


# ------------------------------------------------------------------------------------------ runtime
@pytest.mark.parametrize("version", VERSIONS)
def test_runtime_infer_matches_onnx(monkeypatch, tmp_path, fp32_onnx, version):
    Stack(monkeypatch, version)
    path = T.build_engine(fp32_onnx, precision="fp32", max_batch=2, cache_dir=tmp_path)
    x = np.random.default_rng(2).standard_normal((5, 3, 8, 8)).astype(np.float32)  # 5 > max batch: chunked
    with T.TrtEngine(path) as eng:
        assert eng.max_batch == 2 and eng.output_names == ["feat", "pooled"]
        got = eng.infer(x)
    ref = _ort(fp32_onnx, x)
    for n in ref:
        np.testing.assert_allclose(got[n], ref[n], rtol=1e-6, atol=1e-6)


def test_engine_of_another_version_is_refused(monkeypatch, tmp_path, fp32_onnx):
    Stack(monkeypatch, "10.3.0")
    path = T.build_engine(fp32_onnx, cache_dir=tmp_path)
    Stack(monkeypatch, "11.1.0")
    with pytest.raises(T.TensorRTCallError, match="another TensorRT version"):
        T.TrtEngine(path)


def _fetch(st: Stack, eng: T.TrtEngine, outs: dict) -> dict:
    """Enqueue device-to-host copies of infer_device's outputs (they alias the engine buffers)."""
    host = {n: np.empty(a.shape, np.float32) for n, a in outs.items()}
    for n, a in outs.items():
        eng.copy_to_host_async(host[n], a)
    return host


@pytest.mark.parametrize("version", VERSIONS)
def test_infer_device_double_buffers_the_pinned_input(monkeypatch, tmp_path, fp32_onnx, version):
    st = Stack(monkeypatch, version)
    path = T.build_engine(fp32_onnx, precision="fp32", max_batch=2, cache_dir=tmp_path)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((2, 3, 8, 8)).astype(np.float32) for _ in range(3)]
    with T.TrtEngine(path) as eng:
        # Three calls without any synchronisation: the fake GPU runs nothing until the end, so every
        # host-to-device copy reads its staging buffer late.  Call 3 reuses call 1's buffer and must
        # first wait for call 1's copy (its event) -- with one staging buffer call 2 would already
        # have clobbered call 1's input.
        hosts = [_fetch(st, eng, eng.infer_device(x)) for x in xs]
        eng.synchronize()
    for x, h in zip(xs, hosts):
        ref = _ort(fp32_onnx, x)
        for n in ref:
            np.testing.assert_allclose(h[n], ref[n], rtol=1e-6, atol=1e-6)


def test_single_staging_buffer_would_be_wrong(monkeypatch, tmp_path, fp32_onnx):
    # The same sequence with both slots pointing at one buffer and no event wait (the old code's
    # behaviour) returns call 2's result for call 1: the race the double buffer removes is real here.
    st = Stack(monkeypatch, "10.3.0")
    path = T.build_engine(fp32_onnx, precision="fp32", max_batch=2, cache_dir=tmp_path)
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((2, 3, 8, 8)).astype(np.float32) for _ in range(2)]
    with T.TrtEngine(path) as eng:
        eng._staging[1] = eng._staging[0]
        eng._staging_events = [type("E", (), {"synchronize": lambda s: None, "record": lambda s, st_: None})()] * 2
        hosts = [_fetch(st, eng, eng.infer_device(x)) for x in xs]
        eng.synchronize()
    ref0 = _ort(fp32_onnx, xs[0])["feat"]
    assert not np.allclose(hosts[0]["feat"], ref0)


def test_infer_device_from_device_input_waits_on_its_stream(monkeypatch, tmp_path, fp32_onnx):
    st = Stack(monkeypatch, "10.3.0")
    path = T.build_engine(fp32_onnx, precision="fp32", max_batch=2, cache_dir=tmp_path)
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with T.TrtEngine(path) as eng:
        src = eng.device_empty(x.shape)
        st.gpu.array(src.ptr, x.shape, np.float32)[...] = x

        class WithStream:
            __cuda_array_interface__ = dict(src.__cuda_array_interface__, stream=0x777)

        host = _fetch(st, eng, eng.infer_device(WithStream()))
        eng.synchronize()
        assert st.waits == [(0x777, eng.stream_handle)]  # GPU-side wait on the producer stream

        class Zero:
            __cuda_array_interface__ = dict(src.__cuda_array_interface__, stream=0)

        with pytest.raises(ValueError, match="disallowed"):
            eng.infer_device(Zero())
    np.testing.assert_allclose(host["feat"], _ort(fp32_onnx, x)["feat"], rtol=1e-6, atol=1e-6)
