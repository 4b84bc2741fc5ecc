"""TensorRT side without TensorRT: precision logic, engine cache key and sidecar, the INT8/Q-DQ guard,
the import guard and the standalone build_engine.py recipe.

Nothing here builds or runs an engine (no GPU / TensorRT in CI); the tests that assert the
"tensorrt missing" error skip themselves when tensorrt happens to be importable.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeuad.export import tensorrt as T
from edgeuad.export.tensorrt import (Int8RequiresQdqError, Precision, TensorRTUnavailableError, build_engine,
                                     cached_engine_is_valid, engine_cache_fields, engine_cache_key,
                                     resolve_precision, scan_qdq, sm_capabilities, write_cached_engine)

REPO = Path(__file__).resolve().parents[2]
PYDIR = REPO / "python"
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
needs_no_trt = pytest.mark.skipif(HAVE_TRT, reason="tensorrt is importable here: the 'missing' guard cannot be observed")


# ------------------------------------------------------------------------------------------ models
def _conv_model(path: Path, qdq: bool = False, domain: str = "") -> Path:
    """A 1-conv graph with a dynamic batch; optionally with a Q/DQ pair on its input."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    inits = [w]
    nodes = []
    x = "image"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "zp")]
        nodes += [helper.make_node("QuantizeLinear", ["image", "s", "zp"], ["xq"], domain=domain),
                  helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xdq"], domain=domain)]
        x = "xdq"
    nodes.append(helper.make_node("Conv", [x, "w"], ["feat"], pads=[1, 1, 1, 1]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    if not domain:
        onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def fp32_onnx(tmp_path):
    return _conv_model(tmp_path / "fp32.onnx")


@pytest.fixture()
def qdq_onnx(tmp_path):
    return _conv_model(tmp_path / "qdq.onnx", qdq=True)


# ------------------------------------------------------------------------------------------ precision
def test_precision_round_trip_and_errors():
    for p in Precision:
        assert Precision.from_string(str(p)) is p
        assert Precision.from_string(p) is p
    assert Precision.from_string(" FP16 ") is Precision.FP16
    assert Precision.from_string("Int8") is Precision.INT8
    with pytest.raises(ValueError) as ei:
        Precision.from_string("bf16")
    for name in ("fp32", "fp16", "int8", "auto"):
        assert name in str(ei.value)


@pytest.mark.parametrize("fp16,int8,qdq,expected", [
    (True, True, False, Precision.FP16),
    (False, False, False, Precision.FP32),
    (False, True, False, Precision.FP32),
    (True, True, True, Precision.INT8),
    (False, True, True, Precision.INT8),
])
def test_auto_resolution(fp16, int8, qdq, expected, caplog):
    with caplog.at_level(logging.INFO, logger="edgeuad.export.tensorrt"):
        got = resolve_precision("auto", fp16, int8, qdq)
    assert got is expected
    assert f"precision auto resolved to {expected} because" in caplog.text
    assert Precision.AUTO.resolve(fp16, int8, qdq) is expected


def test_explicit_resolution_rules():
    assert resolve_precision("fp32", True, True, False) is Precision.FP32
    assert resolve_precision("fp16", False, False, False) is Precision.FP16  # honoured (warned), not changed
    assert resolve_precision("int8", True, True, True) is Precision.INT8
    with pytest.raises(Int8RequiresQdqError, match=r"edgeuad export --int8 --calib DIR"):
        resolve_precision("int8", True, True, False)
    with pytest.raises(ValueError, match="Q/DQ"):
        resolve_precision("fp16", True, True, True)
    with pytest.raises(ValueError, match="no fast INT8"):
        resolve_precision("auto", True, False, True)
    assert issubclass(Int8RequiresQdqError, ValueError)


@pytest.mark.parametrize("sm,caps", [
    ((5, 2), (False, False)), ((5, 3), (True, False)),  # Maxwell desktop / Jetson Nano
    ((6, 1), (False, True)), ((6, 2), (True, False)),  # GeForce Pascal / Jetson TX2
    ((7, 2), (True, True)), ((8, 7), (True, True)), ((9, 0), (True, True)),  # Xavier / Orin / H100
])
def test_sm_capabilities(sm, caps):
    assert sm_capabilities(sm) == caps


# ------------------------------------------------------------------------------------------ cache key
BASE = dict(onnx_sha256="ab" * 32, trt_version="10.3.0", gpu_name="Orin", sm=(8, 7), sm_count=16,
            driver_version=12060, precision="fp16", min_batch=1, opt_batch=1, max_batch=4, workspace_mb=1024)


def test_cache_key_is_deterministic_and_normalised():
    k = engine_cache_key(**BASE)
    assert k == engine_cache_key(**dict(BASE, sm=[8, 7], precision=Precision.FP16, onnx_sha256="AB" * 32))
    assert len(k) == 64 and set(k) <= set("0123456789abcdef")   # a sha256 hex digest


@pytest.mark.parametrize("field,value", [
    ("onnx_sha256", "cd" * 32), ("trt_version", "10.4.0"), ("gpu_name", "NVIDIA H100"), ("sm", (8, 6)),
    ("sm_count", 8), ("driver_version", 12080),
    ("sm", (7, 2)), ("precision", "fp32"), ("precision", "int8"), ("opt_batch", 2), ("max_batch", 8),
    ("workspace_mb", 2048),
])
def test_cache_key_changes_with_every_field(field, value):
    assert engine_cache_key(**dict(BASE, **{field: value})) != engine_cache_key(**BASE)


def test_cache_key_rejects_unresolved_or_bad_fields():
    with pytest.raises(ValueError, match="resolved precision"):
        engine_cache_key(**dict(BASE, precision="auto"))
    with pytest.raises(ValueError, match="sha256"):
        engine_cache_key(**dict(BASE, onnx_sha256="xyz"))
    with pytest.raises(ValueError, match="opt_batch"):
        engine_cache_key(**dict(BASE, opt_batch=8, max_batch=4))
    with pytest.raises(ValueError, match="sm"):
        engine_cache_key(**dict(BASE, sm=(8,)))
    with pytest.raises(ValueError, match="sm_count"):
        engine_cache_key(**dict(BASE, sm_count=0))
    with pytest.raises(ValueError, match="driver_version"):
        engine_cache_key(**dict(BASE, driver_version=0))


def test_sidecar_write_and_validation(tmp_path):
    fields = engine_cache_fields(**BASE)
    key = engine_cache_key(**BASE)
    eng = tmp_path / "sub" / "m.engine"
    write_cached_engine(eng, b"serialized-engine-bytes", fields, extra={"builder_flags": ["FP16"]})
    assert eng.read_bytes() == b"serialized-engine-bytes"
    meta = json.loads((tmp_path / "sub" / "m.engine.json").read_text())
    assert meta["key"] == key and meta["sm"] == "8.7" and meta["trt_version"] == "10.3.0"
    assert meta["batch_profile"] == [1, 1, 4] and meta["build"]["builder_flags"] == ["FP16"]
    assert sorted(p.name for p in eng.parent.iterdir()) == ["m.engine", "m.engine.json"]  # no temp files left
    assert cached_engine_is_valid(eng, key) == (True, "cache hit")
    other = engine_cache_key(**dict(BASE, sm=(8, 6)))
    ok, reason = cached_engine_is_valid(eng, other)
    assert not ok and "key differs" in reason
    eng.write_bytes(b"serialized-engine-bytez")  # same size, different content
    ok, reason = cached_engine_is_valid(eng, key)
    assert not ok and "sha256" in reason
    ok, reason = cached_engine_is_valid(tmp_path / "none.engine", key)
    assert not ok and reason == "no sidecar"


# ------------------------------------------------------------------------------------------ Q/DQ guard
def test_scan_qdq(fp32_onnx, qdq_onnx, tmp_path):
    assert scan_qdq(fp32_onnx) == T.QdqScan(0, 0, 0)
    s = scan_qdq(qdq_onnx)
    assert s.has_qdq and (s.num_quantize, s.num_dequantize) == (1, 1)
    contrib = _conv_model(tmp_path / "ms.onnx", qdq=True, domain="com.microsoft")
    assert scan_qdq(contrib).contrib_domain_nodes == 2


def test_int8_on_graph_without_qdq_fails_before_tensorrt(fp32_onnx, monkeypatch):
    # Even with tensorrt installed the guard must fire first: make any tensorrt import explode.
    def boom():
        raise AssertionError("tensorrt must not be imported before the INT8 check")
    monkeypatch.setattr(T, "_import_tensorrt", boom)
    with pytest.raises(Int8RequiresQdqError, match=r"run `edgeuad export --int8 --calib DIR`"):
        build_engine(fp32_onnx, precision="int8")
    from edgeuad.runtime.trt_backend import TensorRTBackend
    with pytest.raises(Int8RequiresQdqError):
        TensorRTBackend(fp32_onnx, precision="INT8")


def test_contrib_qdq_and_bad_arguments_rejected_before_tensorrt(tmp_path, fp32_onnx, monkeypatch):
    monkeypatch.setattr(T, "_import_tensorrt", lambda: (_ for _ in ()).throw(AssertionError("imported")))
    contrib = _conv_model(tmp_path / "ms.onnx", qdq=True, domain="com.microsoft")
    with pytest.raises(ValueError, match="com.microsoft"):
        build_engine(contrib, precision="auto")
    with pytest.raises(ValueError, match="carries Q/DQ nodes"):
        build_engine(_conv_model(tmp_path / "q.onnx", qdq=True), precision="fp16")
    with pytest.raises(ValueError, match="opt_batch"):
        build_engine(fp32_onnx, opt_batch=8, max_batch=4)
    with pytest.raises(FileNotFoundError):
        build_engine(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="unknown precision"):
        build_engine(fp32_onnx, precision="fp8")


# ------------------------------------------------------------------------------------------ import guard
def test_importing_backend_module_pulls_neither_tensorrt_nor_torch():
    code = ("import sys, edgeuad.runtime.trt_backend, edgeuad.export.tensorrt; "
            "bad = [m for m in ('tensorrt', 'pycuda', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    env = dict(os.environ, PYTHONPATH=str(PYDIR))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@needs_no_trt
def test_missing_tensorrt_raises_with_install_hint(fp32_onnx, qdq_onnx, tmp_path):
    from edgeuad.runtime.trt_backend import TensorRTBackend

    fake_engine = tmp_path / "m.engine"
    fake_engine.write_bytes(b"not an engine")
    calls = [lambda: build_engine(fp32_onnx, precision="fp16"),
             lambda: build_engine(qdq_onnx, precision="int8"),
             lambda: T.TrtEngine(fake_engine),
             lambda: TensorRTBackend(fp32_onnx),
             lambda: TensorRTBackend(fake_engine)]
    for call in calls:
        with pytest.raises(TensorRTUnavailableError) as ei:
            call()
        msg = str(ei.value)
        assert "pip install tensorrt pycuda" in msg and "JetPack" in msg
        assert isinstance(ei.value, RuntimeError)
    assert not T.tensorrt_available()


@pytest.mark.skipif(any(Path(p).exists() for p in ("/usr/lib/x86_64-linux-gnu/libcuda.so.1",
                                                   "/usr/lib/aarch64-linux-gnu/libcuda.so.1",
                                                   "/usr/lib64/libcuda.so.1")),
                    reason="a CUDA driver is installed here")
def test_query_gpu_without_driver_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(T, "_driver_lib", None)
    with pytest.raises(TensorRTUnavailableError, match="libcuda"):
        T.query_gpu(0)


# ------------------------------------------------------------------------------------------ standalone recipe
def _run_script(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no edgeuad on the path
    return subprocess.run([sys.executable, str(script), *args], cwd=str(cwd), env=env, capture_output=True,
                          text=True, timeout=60)


def test_build_engine_script_works_copied_alone(tmp_path, fp32_onnx):
    alone = tmp_path / "jetson"
    alone.mkdir()
    shutil.copy(REPO / "export" / "build_engine.py", alone / "build_engine.py")
    shutil.copy(PYDIR / "edgeuad" / "export" / "tensorrt.py", alone / "edgeuad_trt.py")
    shutil.copy(fp32_onnx, alone / "model.onnx")
    r = _run_script(alone / "build_engine.py", "model.onnx", "--int8", "--max-batch", "4", cwd=alone)
    assert r.returncode == 2, r.stderr
    assert "edgeuad export --int8 --calib DIR" in r.stderr
    if not HAVE_TRT:
        r = _run_script(alone / "build_engine.py", "model.onnx", "--fp16", "--max-batch", "4", cwd=alone)
        assert r.returncode == 3, r.stderr
        assert "pip install tensorrt pycuda" in r.stderr


def test_build_engine_script_refuses_missing_module_path(tmp_path, fp32_onnx):
    r = _run_script(REPO / "export" / "build_engine.py", str(fp32_onnx), "--trt-module", str(tmp_path / "nope.py"),
                    cwd=tmp_path)
    assert r.returncode != 0 and "no such file" in r.stderr
