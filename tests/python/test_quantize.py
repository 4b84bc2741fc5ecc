"""Explicit INT8 Q/DQ insertion (export/quantize.py), verified end to end with onnxruntime on CPU.

A seeded 3-conv + ReLU torch net is exported to ONNX (opset 17, dynamic batch), calibrated on 16
image-like inputs supplied here, and the QDQ graph is checked structurally (what TensorRT needs)
and numerically against the fp32 graph on 8 *held-out* inputs.
Accuracy bound asserted: per-sample cosine similarity > 0.99 and relative L2 error < 5 %.
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")

from edgeuad.export.quantize import QdqReport, insert_qdq  # noqa: E402

H = W = 32
MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def image_like(n: int, seed: int) -> np.ndarray:
    """Natural-image-like inputs: smooth low-frequency colour fields + a gradient + mild texture,
    in [0, 1], then ImageNet-normalised like edgeuad.preprocess does."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.0, 1.0, (n, 3, 4, 4)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(H, W), mode="bilinear",
                                         align_corners=False).numpy()
    ramp = np.linspace(0.0, 0.3, W, dtype=np.float32).reshape(1, 1, 1, W)
    tex = rng.normal(0.0, 0.03, (n, 3, H, W)).astype(np.float32)
    img = np.clip(0.7 * up + ramp + tex, 0.0, 1.0)
    return ((img - MEAN) / STD).astype(np.float32)


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1),
    ).eval()
    path = tmp_path_factory.mktemp("q") / "net.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, torch.zeros(1, 3, H, W), str(path), input_names=["image"], output_names=["feat"],
                          dynamic_axes={"image": {0: "batch"}, "feat": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    return path


@pytest.fixture(scope="module")
def calib():
    return [image_like(4, seed) for seed in range(4)]  # 16 samples in 4 batches


@pytest.fixture(scope="module")
def minmax(fp32_onnx, calib, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "net_qdq.onnx"
    report = insert_qdq(fp32_onnx, out, iter(calib), method="minmax", fp32_first=0)  # every conv: the format
    return out, report


def _consts(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _run(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"image": x})[0]


def test_graph_structure_is_tensorrt_ready(minmax):
    out, report = minmax
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 13
    consts = _consts(model)
    qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(qs) == len(dqs) == report.num_quantize == report.num_dequantize
    assert len(qs) == 6  # 3 activation inputs + 3 conv weights
    for n in qs + dqs:
        assert n.domain in ("", "ai.onnx")
        zp = consts[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), (n.name, zp)
    # every Conv reads its data and its weight through a DequantizeLinear
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 3 and report.quantized_ops == 3
    for c in convs:
        assert producers[c.input[0]].op_type == "DequantizeLinear"
        assert producers[c.input[1]].op_type == "DequantizeLinear"
    # weights per output channel (axis 0)
    weight_q = [n for n in qs if n.input[0] in consts]
    assert sorted(n.input[0] for n in weight_q) == report.weight_tensors
    for n in weight_q:
        axis = {a.name: a.i for a in n.attribute}.get("axis", 1)
        assert axis == 0
        assert consts[n.input[1]].shape == (consts[n.input[0]].shape[0],)
    # graph output stays fp32 and comes straight from the last Conv (no Q/DQ on outputs)
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert producers["feat"].op_type == "Conv"


def test_scale_is_amax_over_127(minmax, calib):
    _, report = minmax
    amax = max(float(np.abs(b).max()) for b in calib)  # the graph input feeds the first conv directly
    assert report.activation_scales["image"] == pytest.approx(amax / 127.0, rel=1e-6)
    assert report.num_calibration_batches == 4 and report.num_calibration_samples == 16


def test_qdq_output_close_to_fp32_on_held_out_inputs(fp32_onnx, calib, minmax):
    out, report = minmax
    x = image_like(8, seed=1234)  # not in the calibration set
    ref = _run(fp32_onnx, x)
    got = _run(out, x)
    assert got.dtype == np.float32 and got.shape == ref.shape == (8, 32, H // 2, W // 2)
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    for r, g in zip(ref, got):
        r, g = r.ravel(), g.ravel()
        cos = r @ g / (np.linalg.norm(r) * np.linalg.norm(g))
        rel = np.linalg.norm(g - r) / np.linalg.norm(r)
        assert cos > 0.99, cos
        assert rel < 0.05, rel
    # and it is really quantised: not bit-identical to fp32
    assert np.abs(got - ref).max() > 0
    assert report.fp32_vs_qdq_cosine > 0.99
    # per output (this graph has one): the relative error on the first calibration batch, recomputed here
    x0 = calib[0]
    r0, g0 = _run(fp32_onnx, x0).astype(np.float64), _run(out, x0).astype(np.float64)
    assert list(report.output_rel_error) == [onnx.load(str(fp32_onnx)).graph.output[0].name]
    assert next(iter(report.output_rel_error.values())) == pytest.approx(
        np.linalg.norm(g0 - r0) / np.linalg.norm(r0), rel=1e-6)
    assert 0 < next(iter(report.output_rel_error.values())) < 0.05


def test_percentile_and_per_tensor_weights(fp32_onnx, calib, minmax, tmp_path):
    out = tmp_path / "p.onnx"
    rep = insert_qdq(fp32_onnx, out, calib, method="percentile", percentile=99.9, per_channel_weights=False,
                     fp32_first=0)
    assert rep.method == "percentile" and rep.percentile == 99.9
    # a percentile clip of |x| never exceeds the max
    assert rep.activation_scales["image"] <= minmax[1].activation_scales["image"] * (1 + 1e-6)
    model = onnx.load(str(out))
    consts = _consts(model)
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in consts:
            assert consts[n.input[1]].size == 1  # per-tensor weight scale
    x = image_like(4, seed=99)
    r, g = _run(fp32_onnx, x).ravel(), _run(out, x).ravel()
    assert r @ g / (np.linalg.norm(r) * np.linalg.norm(g)) > 0.99
    assert QdqReport.from_dict(rep.to_dict()) == rep


def test_empty_calibration_set_is_refused(fp32_onnx, tmp_path):
    out = tmp_path / "never.onnx"
    with pytest.raises(ValueError, match="calibration set is empty"):
        insert_qdq(fp32_onnx, out, [])
    with pytest.raises(ValueError, match="calibration set is empty"):
        insert_qdq(fp32_onnx, out, (b for b in ()))
    assert not out.exists()


def test_bad_calibration_input_and_options(fp32_onnx, minmax, tmp_path):
    out = tmp_path / "never.onnx"
    with pytest.raises(TypeError, match="float32"):
        insert_qdq(fp32_onnx, out, [np.zeros((1, 3, H, W), np.uint8)])
    with pytest.raises(ValueError, match="NaN"):
        insert_qdq(fp32_onnx, out, [np.full((1, 3, H, W), np.nan, np.float32)])
    with pytest.raises(ValueError, match="unknown calibration method"):
        insert_qdq(fp32_onnx, out, [image_like(1, 0)], method="entropy-ish")
    with pytest.raises(ValueError, match="already contains Q/DQ"):
        insert_qdq(minmax[0], out, [image_like(1, 0)])
    assert not out.exists()


def _saturating_qdq_conv(path) -> tuple[np.ndarray, np.ndarray]:
    """A Q/DQ 1x1 conv whose int8 products saturate int16 in a u8s8 AVX2 kernel: activations at the top
    of their range (u8 255 after onnxruntime's +128 shift) times weights of +127 on 64 input channels.
    Its output is quantised too (DQ -> Conv -> Q), the pattern onnxruntime fuses into an int8 conv.
    Returns (input, the graph's own Q/DQ arithmetic in float64, the output scale)."""
    from onnx import TensorProto, helper

    c_in, c_out = 64, 4
    sx, sw = 0.05, 0.01
    sy = 64 * 127 * sx * 127 * sw / 127  # the largest possible |y| maps to 127
    w_q = np.full((c_out, c_in, 1, 1), 127, np.int8)
    w_q[1::2, 1::2] = -127  # alternating signs in half the filters: the exact sums differ per channel
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["yf"]),
        helper.make_node("QuantizeLinear", ["yf", "sy", "zx"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "sy", "zx"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(sx, np.float32), "sx"), numpy_helper.from_array(np.array(0, np.int8), "zx"),
             numpy_helper.from_array(w_q, "wq"), numpy_helper.from_array(np.full(c_out, sw, np.float32), "sw"),
             numpy_helper.from_array(np.zeros(c_out, np.int8), "zw"), numpy_helper.from_array(np.array(sy, np.float32), "sy")]
    graph = helper.make_graph(nodes, "sat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    rng = np.random.default_rng(0)
    x = (rng.uniform(0.8, 1.0, (1, c_in, 4, 4)) * 127 * sx).astype(np.float32)  # int8 101..127
    xq = np.clip(np.round(x.astype(np.float64) / sx), -127, 127)
    yf = np.einsum("nchw,oc->nohw", xq * sx, w_q[:, :, 0, 0].astype(np.float64) * sw)
    return x, np.clip(np.round(yf / sy), -128, 127) * sy, sy


def test_ort_backend_runs_qdq_graphs_without_int16_saturation(tmp_path):
    """The runtime's onnxruntime session computes a Q/DQ graph as its Q/DQ arithmetic says (the
    precise u8s8 mode), on every CPU; a default session is shown for contrast where it saturates."""
    from edgeuad.runtime.backends import OrtBackend

    path = tmp_path / "sat.onnx"
    x, ref, sy = _saturating_qdq_conv(path)
    got = OrtBackend(path, threads=1).run(x)["y"]
    np.testing.assert_allclose(got, ref, rtol=0, atol=sy * 1.01)  # at most one output step (rounding)
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    err = float(np.abs(plain - ref).max() / np.abs(ref).max())
    # informational: a CPU without VNNI saturates here (~0.5 relative), one with VNNI does not
    print(f"default onnxruntime session: max relative error {err:.3f}")
    from edgeuad.cpus import int8_product_saturates

    if not int8_product_saturates():
        # where the product sessions leave the precise mode off (VNNI), the default must be exact
        np.testing.assert_allclose(plain, ref, rtol=0, atol=sy * 1.01)


def _optimized_ops(path, tmp_path) -> set[str]:
    """The operator types onnxruntime's CPU provider really runs for `path` (its optimised graph)."""
    from edgeuad.cpus import ort_session_options

    so = ort_session_options(ort, 1)
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}


def test_cpu_target_is_fused_into_int8_kernels(fp32_onnx, calib, minmax, tmp_path):
    """target="onnxruntime": Q/DQ around every op, uint8 activations; onnxruntime runs its convs as
    int8 kernels (QLinearConv), which the TensorRT layout never gets (its convs stay float between
    Q/DQ round trips: why it ran slower than fp32), and the outputs stay close to fp32."""
    out = tmp_path / "cpu.onnx"
    rep = insert_qdq(fp32_onnx, out, calib, target="onnxruntime", fp32_first=1)
    assert rep.target == "onnxruntime" and rep.quantized_ops == 2 and len(rep.fp32_nodes) == 1
    model = onnx.load(str(out))
    consts = _consts(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = {i: n for n in model.graph.node for i in n.input}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for c in convs[1:]:  # quantised convs: DQ in, Q out (the pattern onnxruntime fuses)
        assert producers[c.input[0]].op_type == "DequantizeLinear"
        nxt = consumers[c.output[0]]
        if nxt.op_type == "Relu":
            nxt = consumers[nxt.output[0]]
        assert nxt.op_type == "QuantizeLinear"
    act_zp = [consts[n.input[2]] for n in model.graph.node
              if n.op_type == "QuantizeLinear" and n.input[0] not in consts]
    assert act_zp and all(z.dtype == np.uint8 for z in act_zp)
    stored = {producers[c.input[1]].input[0] for c in convs[1:]}  # int8 weights read by a DQ
    assert set(rep.weight_tensors) == stored and all(consts[w].dtype == np.int8 for w in stored)
    cpu_ops = _optimized_ops(out, tmp_path)
    assert "QLinearConv" in cpu_ops
    assert "QLinearConv" not in _optimized_ops(minmax[0], tmp_path)  # the TensorRT layout
    x = image_like(8, seed=99)
    ref = _run(fp32_onnx, x).astype(np.float64)
    got = _run(out, x).astype(np.float64)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.05
    assert QdqReport.from_dict(rep.to_dict()) == rep
    old = minmax[1].to_dict()
    del old["target"]  # a report written before the field existed was for TensorRT
    assert QdqReport.from_dict(old).target == "tensorrt"
    del old["output_rel_error"]  # nor had it per-output figures
    assert QdqReport.from_dict(old).output_rel_error == {}
    with pytest.raises(ValueError, match="unknown quantisation target"):
        insert_qdq(fp32_onnx, tmp_path / "x.onnx", calib, target="openvino")


def test_precise_int8_mode_only_where_the_product_saturates(monkeypatch, tmp_path):
    from edgeuad import cpus

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma avx512f avx512_vnni\n\nprocessor\t: 1\n")
    assert cpus._cpu_flags(info) == {"fpu", "avx2", "fma", "avx512f", "avx512_vnni"}
    assert cpus._cpu_flags(tmp_path / "missing") is None
    assert not cpus.int8_product_saturates("x86_64", {"avx2", "avx512_vnni"})
    assert not cpus.int8_product_saturates("x86_64", {"avx2", "avx_vnni"})
    assert cpus.int8_product_saturates("x86_64", {"avx2", "fma", "avx512bw"})
    assert not cpus.int8_product_saturates("aarch64", {"asimd"})
    monkeypatch.setattr(cpus, "_cpu_flags", lambda: None)
    assert cpus.int8_product_saturates("x86_64")  # unreadable flags: assume the worst
    monkeypatch.setattr(cpus, "int8_product_saturates", lambda: True)
    assert cpus.ort_session_options(ort, 1).get_session_config_entry("session.x64quantprecision") == "1"
    monkeypatch.setattr(cpus, "int8_product_saturates", lambda: False)
    with pytest.raises(Exception):  # onnxruntime raises for an entry that was never set
        cpus.ort_session_options(ort, 1).get_session_config_entry("session.x64quantprecision")


def test_default_leaves_the_first_two_convs_in_fp32(fp32_onnx, calib, minmax, tmp_path):
    out = tmp_path / "d.onnx"
    rep = insert_qdq(fp32_onnx, out, calib)
    model = onnx.load(str(out))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    producers = {o: n for n in model.graph.node for o in n.output}
    assert rep.fp32_nodes == [c.name for c in convs[:2]] and rep.quantized_ops == 1
    for c in convs[:2]:  # data and weight read straight, no Q/DQ
        assert c.input[0] not in producers or producers[c.input[0]].op_type != "DequantizeLinear"
        assert c.input[1] not in producers or producers[c.input[1]].op_type != "DequantizeLinear"
    assert producers[convs[2].input[0]].op_type == "DequantizeLinear"
    assert rep.num_quantize == 2  # the last conv's activation and weight
    # closer to fp32 than the all-int8 graph on held-out inputs
    x = image_like(8, seed=99)
    ref = _run(fp32_onnx, x).astype(np.float64)
    err = lambda path: np.linalg.norm(_run(path, x) - ref) / np.linalg.norm(ref)  # noqa: E731
    assert 0 < err(out) < err(minmax[0])
    assert QdqReport.from_dict(rep.to_dict()) == rep
    old = rep.to_dict()
    del old["fp32_nodes"]  # a report written before the field existed
    assert QdqReport.from_dict(old).fp32_nodes == []
    with pytest.raises(ValueError, match="fp32_first"):
        insert_qdq(fp32_onnx, tmp_path / "e.onnx", calib, fp32_first=3)  # all three convs
    with pytest.raises(ValueError, match="fp32_first"):
        insert_qdq(fp32_onnx, tmp_path / "e.onnx", calib, fp32_first=-1)


def test_a_graph_far_from_fp32_is_reported(fp32_onnx, calib, tmp_path, monkeypatch, caplog):
    import logging

    from edgeuad.export import quantize

    with caplog.at_level(logging.WARNING, logger="edgeuad.export.quantize"):
        insert_qdq(fp32_onnx, tmp_path / "a.onnx", calib)
    assert "far from fp32" not in caplog.text                # the test model stays close
    monkeypatch.setattr(quantize, "_fidelity_fp32_vs_qdq",
                        lambda *a: (0.86, {"enc": 0.12, "dec_small": 8.07, "dec": 0.55, "other": 0.01}))
    with caplog.at_level(logging.WARNING, logger="edgeuad.export.quantize"):
        rep = insert_qdq(fp32_onnx, tmp_path / "b.onnx", calib)
    assert rep.fp32_vs_qdq_cosine == 0.86 and "far from fp32 (cosine 0.860 < 0.98" in caplog.text
    # the warning names the outputs that lost most, worst first (three at most)
    assert "largest relative errors: dec_small 8.07, dec 0.55, enc 0.12)" in caplog.text
    assert rep.output_rel_error["dec_small"] == 8.07


def test_ort_session_reopens_a_graph_the_precise_mode_cannot_fuse(tmp_path, caplog, monkeypatch):
    """onnxruntime 1.32 fails to fuse some Q/DQ graphs in its precise int8 mode; the session is then
    opened with the Q/DQ fusion off (the same arithmetic), with a warning.  Other failures raise."""
    import logging
    from types import SimpleNamespace

    from edgeuad import cpus
    from edgeuad.cpus import ort_session

    monkeypatch.setattr(cpus, "int8_product_saturates", lambda: True)  # an AVX2 CPU's session
    made = []

    class Opts:
        def __init__(self):
            self.config = {}
            self.graph_optimization_level = None

        def add_session_config_entry(self, k, v):
            self.config[k] = v

    def session(path, sess_options, providers):
        made.append(dict(sess_options.config))
        if "fail" in str(path) or "session.disable_quant_qdq" not in sess_options.config:
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Attempt to replace the existing tensor")
        return SimpleNamespace(path=path)

    fake = SimpleNamespace(SessionOptions=Opts, InferenceSession=session,
                           GraphOptimizationLevel=SimpleNamespace(ORT_ENABLE_ALL="all"))
    with caplog.at_level(logging.WARNING, logger="edgeuad.cpus"):
        s = ort_session(fake, "q.onnx", threads=1)
    assert s.path == "q.onnx" and "unfused" in caplog.text
    assert made[0]["session.x64quantprecision"] == "1" and "session.disable_quant_qdq" not in made[0]
    assert made[1]["session.disable_quant_qdq"] == "1"
    with pytest.raises(RuntimeError, match="replace the existing tensor"):
        ort_session(fake, "fail.onnx", threads=1)
