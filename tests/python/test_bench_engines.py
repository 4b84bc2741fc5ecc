"""benchmarks/bench_engines.py: the bundle's graph in onnxruntime and (when installed) OpenVINO, on a real
tiny bundle; the OpenVINO setup against a fake module.  Never checks speed."""
from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest

from script_helpers import load_benchmark
from test_bench import _runtime_complete, _tiny_recontrast_bundle

pytestmark = pytest.mark.skipif(not _runtime_complete(), reason="edgeuad._rt not built or runtime incomplete")


def _run(tmp_path, monkeypatch, *args: str) -> str:
    mod = load_benchmark("bench_engines")
    out: dict[str, str] = {}
    monkeypatch.setattr(mod, "publish", lambda stem, body: out.update({stem: body}))
    bundle = _tiny_recontrast_bundle(tmp_path / "bundle")
    assert mod.main(["--bundle", str(bundle), "--threads", "1", "--rounds", "2", "--batches", "1", *args]) == 0
    return out["engines"]


def _rows(body: str) -> dict[str, list[str]]:
    rows = [ln.strip("|").split("|") for ln in body.splitlines() if ln.startswith("| recontrast")]
    return {r[2].strip(): [c.strip() for c in r] for r in rows}


def test_engines_table_on_a_real_bundle(tmp_path, monkeypatch):
    body = _run(tmp_path, monkeypatch)
    rows = _rows(body)
    assert rows["onnxruntime"][4] == "x1.00" and rows["onnxruntime"][6] == "0.0e+00"
    assert float(rows["onnxruntime"][3]) > 0
    if importlib.util.find_spec("openvino") is None:
        assert set(rows) == {"onnxruntime"}
        assert "- openvino-f32: not run (python package 'openvino' is not installed" in body
    else:  # the same float32 graph in a second engine agrees to float32 rounding
        assert float(rows["openvino-f32"][6]) < 1e-4, rows["openvino-f32"]


class _FakeCompiled:
    def __init__(self, config: dict) -> None:
        self.config, self.outputs = config, ["a", "b"]

    def create_infer_request(self):
        req = types.SimpleNamespace()
        req.infer = lambda feed: {"a": feed[0] * 2, "b": feed[0] + 1}
        return req


class _FakeCore:
    caps = ["FP32", "INT8"]
    compiled: list[dict] = []

    def get_property(self, device: str, name: str):
        assert (device, name) == ("CPU", "OPTIMIZATION_CAPABILITIES")
        return self.caps

    def compile_model(self, path: str, device: str, config: dict):
        _FakeCore.compiled.append(config)
        return _FakeCompiled(config)


def test_openvino_runs_force_the_precision_and_say_why_bf16_is_missing(monkeypatch):
    mod = load_benchmark("bench_engines")
    _FakeCore.compiled = []
    monkeypatch.setitem(sys.modules, "openvino", types.SimpleNamespace(Core=_FakeCore, __version__="0.0-fake"))
    runs, skipped = mod.openvino_runs("g.onnx", 3)
    assert list(runs) == ["openvino-f32"] and "no native bf16" in skipped["openvino-bf16"]
    assert _FakeCore.compiled == [{"INFERENCE_NUM_THREADS": 3, "INFERENCE_PRECISION_HINT": "f32",
                                   "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}]
    x = np.ones((1, 3, 4, 4), np.float32)
    a, b = runs["openvino-f32"](x)
    np.testing.assert_array_equal(a, 2 * x)  # outputs in the compiled model's order
    np.testing.assert_array_equal(b, x + 1)
    monkeypatch.setattr(_FakeCore, "caps", ["FP32", "BF16"])
    runs, skipped = mod.openvino_runs("g.onnx", 1)
    assert list(runs) == ["openvino-f32", "openvino-bf16"] and not skipped
    assert _FakeCore.compiled[-1]["INFERENCE_PRECISION_HINT"] == "bf16"
    assert mod.openvino_version() == "0.0-fake"


def test_a_graph_openvino_cannot_compile_is_a_reason(monkeypatch):
    mod = load_benchmark("bench_engines")

    class Refusing(_FakeCore):
        def compile_model(self, path, device, config):
            raise RuntimeError("unsupported op Foo")

    monkeypatch.setitem(sys.modules, "openvino", types.SimpleNamespace(Core=Refusing, __version__="0.0-fake"))
    runs, skipped = mod.openvino_runs("g.onnx", 1)
    assert runs == {} and skipped["openvino-f32"] == "OpenVINO could not compile the graph: RuntimeError: unsupported op Foo"


def test_openvino_missing_is_a_reason_not_an_error(monkeypatch):
    mod = load_benchmark("bench_engines")
    monkeypatch.setitem(sys.modules, "openvino", None)  # import raises ImportError
    runs, skipped = mod.openvino_runs("g.onnx", 1)
    assert runs == {} and set(skipped) == {"openvino-f32", "openvino-bf16"}
    assert mod.openvino_version() == "not installed"


def test_max_rel_diff_and_bad_arguments(monkeypatch):
    mod = load_benchmark("bench_engines")
    ref = [np.array([1.0, -4.0]), np.array([2.0])]
    assert mod.max_rel_diff([np.array([1.0, -3.0]), np.array([2.0])], ref) == pytest.approx(0.25)
    with pytest.raises(SystemExit):
        mod.main(["--bundle", "x", "--rounds", "0"])
