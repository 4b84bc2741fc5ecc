"""Explicit INT8 quantisation (QuantizeLinear/DequantizeLinear) of an fp32 ONNX graph, for TensorRT
or for onnxruntime on the CPU.

`insert_qdq` calibrates activation ranges by running the fp32 graph in onnxruntime on the
caller's calibration batches (onnxruntime's calibrator exposes the intermediate tensors as extra
graph outputs) and writes a standard QDQ graph with `onnxruntime.quantization.quantize_static`.
Two layouts, chosen by `target`, because the two runtimes fuse different patterns:

target="tensorrt" (the default; `edgeuad export --int8`):

* Q/DQ pairs on the *inputs* of the chosen op types (default: Conv), not on their outputs, which
  is the placement TensorRT's explicit-quantisation guide recommends (it then fuses each pair into
  the following int8 kernel); graph outputs stay fp32;
* activations: per-tensor, symmetric int8, zero point 0, scale = amax / 127 (range [-127, 127]);
* weights: fp32 initializer -> QuantizeLinear -> DequantizeLinear, per output channel (axis 0)
  when `per_channel_weights`, symmetric, zero point 0; TensorRT folds the pair into int8 weights;
* bias left in fp32 (TensorRT has no int32 Q/DQ for bias);
* the first `fp32_first` (default 2) nodes of the chosen op types, in graph order, stay unquantised:
  the stem conv sees the full-range normalised image through 3 channels and the first depthwise conv
  averages no noise across channels, so one per-tensor int8 scale costs them the most.  On the PatchCore
  magnetic_tile graph (EfficientNet-Lite0, 33 convs) they left the patch distances 1.5 % RMS from fp32
  instead of 4.1 % with every conv quantised, and the synthetic-defect validation I-AUROC at fp32's
  (benchmarks/RESULTS.md section 5; chosen on held-out normal images and synthetic defects only);
* standard-domain operators only (no com.microsoft contrib Q/DQ), opset >= 13 (per-axis Q/DQ).

target="onnxruntime" (`edgeuad export --cpu-int8`): onnxruntime's CPU provider turns a node into an int8
kernel (QLinearConv, QLinearAdd, ...) only when its inputs come from DequantizeLinear *and* its output
goes to a QuantizeLinear; the TensorRT layout has no output Q, so there every conv ran in fp32 between
Q/DQ round trips and the "int8" graph was 2.2-3.1x slower than fp32 (benchmarks/RESULTS.md section 5).
This layout therefore quantises every operator onnxruntime supports, inputs and outputs, with
* activations: per-tensor, *asymmetric uint8* (onnxruntime's u8 x s8 kernels; s8 x s8 ran 2.4x slower
  on the AVX-512 VNNI VM), weights per output channel, symmetric int8, zero point 0;
* the same `fp32_first` convs left in fp32, the same minmax/percentile calibration;
* graph outputs still fp32 (a final DequantizeLinear).
On the bottle PatchCore-Lite1 graph at batch 1 and 1 thread: 3.6 ms against 6.7 ms for fp32, embeddings
6.5 % relative RMS from fp32 (the TensorRT layout: 18 ms, 6.9 %).  Such a graph is for onnxruntime only:
TensorRT's explicit quantisation wants symmetric int8.

The result is checked here (onnx.checker, every zero point 0 and int8, every scale positive and
finite) and the report carries the fp32-vs-QDQ cosine similarity on the first calibration batch and
each graph output's relative error there: a small output computed from large inputs (a decoder head
that a cosine loss left at 1/100 of its target's scale) can be lost to int8 rounding while the rest
stays close.
Calibration data always comes from the caller: an empty set is refused, nothing is ever
calibrated on random data.

Verified in CI with onnxruntime on CPU (tests/python/test_quantize.py).  That TensorRT builds the
resulting graph as INT8 follows from the format rules above and was not executed here (no GPU).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..atomic import atomic_path

import numpy as np

log = logging.getLogger(__name__)

MIN_QDQ_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear
METHODS = ("minmax", "percentile")
TARGETS = ("tensorrt", "onnxruntime")
LOW_COSINE = 0.98  # fp32-vs-QDQ cosine under which the export warns


@dataclasses.dataclass
class QdqReport:
    onnx_in: str
    onnx_out: str
    method: str
    percentile: float | None
    per_channel_weights: bool
    op_types: list[str]
    opset: int
    num_calibration_batches: int
    num_calibration_samples: int
    num_quantize: int
    num_dequantize: int
    quantized_ops: int  # nodes of op_types whose data input is fed by a DequantizeLinear
    activation_scales: dict[str, float]  # tensor name -> per-tensor scale (= amax / 127)
    weight_tensors: list[str]  # initializers quantised per channel (or per tensor)
    fp32_vs_qdq_cosine: float  # on the first calibration batch (in-sample sanity check, not an accuracy claim)
    fp32_nodes: list[str] = dataclasses.field(default_factory=list)  # op_types nodes left unquantised
    target: str = "tensorrt"  # the runtime whose fusion rules the layout follows (module doc)
    # per graph output, |qdq - fp32| / |fp32| (norms over the whole output) on the same batch: which output
    # the int8 graph loses (one overall cosine hides a small output drowned in its inputs' rounding)
    output_rel_error: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QdqReport":
        # fp32_nodes, target and output_rel_error came later: reports written before them had every
        # op_types node quantised, for TensorRT, and no per-output figures
        late = ("fp32_nodes", "target", "output_rel_error")
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d or f.name not in late})


class _Reader:
    """onnxruntime CalibrationDataReader over the caller's batches: validates each one and counts."""

    def __init__(self, input_name: str, rank: int, batches: Iterator[np.ndarray]) -> None:
        self.input_name, self.rank, self._it = input_name, rank, batches
        self.num_batches = 0
        self.num_samples = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self._it, None)
        if b is None:
            return None
        b = _validate_batch(b, self.rank, self.num_batches)
        self.num_batches += 1
        self.num_samples += int(b.shape[0])
        return {self.input_name: b}

    def rewind(self) -> None:  # part of the reader protocol; one pass is all quantize_static needs
        raise RuntimeError("calibration batches are consumed in a single pass")


def _validate_batch(b: Any, rank: int, index: int) -> np.ndarray:
    if not isinstance(b, np.ndarray):
        raise TypeError(f"calibration batch {index} is {type(b).__name__}, expected a numpy array")
    if b.ndim != rank:
        raise ValueError(f"calibration batch {index} has shape {b.shape}, expected rank {rank} (N x C x H x W)")
    if b.shape[0] == 0:
        raise ValueError(f"calibration batch {index} is empty")
    if not np.issubdtype(b.dtype, np.floating):
        raise TypeError(f"calibration batch {index} has dtype {b.dtype}; pass preprocessed float32 network "
                        "input (edgeuad.preprocess.preprocess), not raw uint8 images")
    b = np.ascontiguousarray(b, dtype=np.float32)
    if not np.isfinite(b).all():
        raise ValueError(f"calibration batch {index} contains NaN or Inf")
    return b


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def insert_qdq(onnx_in: str | os.PathLike, onnx_out: str | os.PathLike,
               calibration_batches: Iterable[np.ndarray], method: str = "minmax", percentile: float = 99.99,
               per_channel_weights: bool = True, op_types: tuple[str, ...] | list[str] = ("Conv",),
               fp32_first: int = 2, target: str = "tensorrt") -> QdqReport:
    """Calibrate on `calibration_batches` and write a QDQ graph for `target` to `onnx_out`.

    calibration_batches: preprocessed float32 N x C x H x W arrays of representative *good* images
        (the same preprocessing as inference); consumed once.  Empty -> ValueError.
    method: "minmax" (amax = max |x| seen) or "percentile" (amax = that percentile of |x|,
        robust to rare outliers).
    fp32_first: how many of the first op_types nodes (graph order) stay unquantised (see the module doc).
    target: "tensorrt" (Q/DQ on op_types' inputs, symmetric int8) or "onnxruntime" (every supported
        operator, uint8 activations: what onnxruntime's CPU int8 kernels fuse); see the module doc.
    """
    import onnx  # noqa: PLC0415  (export side: onnx/onnxruntime are always present there)
    import onnxruntime as ort  # noqa: PLC0415
    from onnxruntime.quantization import (  # noqa: PLC0415
        CalibrationMethod, QuantFormat, QuantType, quantize_static)

    method = str(method).lower()
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; valid: {', '.join(METHODS)}")
    if method == "percentile" and not 0.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    op_types = list(op_types)
    if not op_types:
        raise ValueError("op_types must name at least one operator type to quantise (e.g. Conv)")
    if target not in TARGETS:
        raise ValueError(f"unknown quantisation target {target!r}; valid: {', '.join(TARGETS)}")
    if isinstance(fp32_first, bool) or not isinstance(fp32_first, int) or fp32_first < 0:
        raise ValueError(f"fp32_first must be an int >= 0, got {fp32_first!r}")
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)

    batches = iter(calibration_batches)
    first = next(batches, None)
    if first is None:
        raise ValueError("the calibration set is empty: INT8 ranges must come from representative images "
                         "(never from random data); pass at least one preprocessed batch")

    model = onnx.load(str(onnx_in))
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        raise ValueError(f"{onnx_in} already contains Q/DQ nodes; quantise the fp32 graph")
    init_names = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in init_names]
    if len(graph_inputs) != 1:
        raise ValueError(f"expected exactly one graph input, found {[i.name for i in graph_inputs]}")
    input_name = graph_inputs[0].name
    rank = len(graph_inputs[0].type.tensor_type.shape.dim)
    candidates = [n.name for n in model.graph.node if n.op_type in op_types]
    if any(not name for name in candidates[:fp32_first]):
        raise ValueError(f"the first {fp32_first} {op_types} nodes must be named to be left unquantised")
    if fp32_first >= len(candidates):
        raise ValueError(f"fp32_first={fp32_first} would leave all {len(candidates)} {op_types} nodes unquantised")
    fp32_nodes = candidates[:fp32_first]
    first = _validate_batch(first, rank, 0)

    with tempfile.TemporaryDirectory(prefix="edgeuad-qdq-") as tmp:
        src = onnx_in
        if _opset(model) < MIN_QDQ_OPSET:
            from onnx import version_converter  # noqa: PLC0415

            log.info("upgrading %s from opset %d to %d for per-axis Q/DQ", onnx_in.name, _opset(model), MIN_QDQ_OPSET)
            src = Path(tmp) / "upgraded.onnx"
            onnx.save(version_converter.convert_version(model, MIN_QDQ_OPSET), str(src))

        reader = _Reader(input_name, rank, itertools.chain([first], batches))
        cpu = target == "onnxruntime"
        if cpu:  # onnxruntime's defaults: every supported op, outputs too, int32 bias; uint8 activations
            extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
        else:
            extra = {
                "ActivationSymmetric": True,  # zero point 0, range [-127, 127] -> scale = amax / 127
                "WeightSymmetric": True,
                "AddQDQPairToWeight": True,  # fp32 weight -> Q -> DQ (TensorRT folds it into int8 weights)
                "DedicatedQDQPair": True,  # one pair per consumer: no shared pairs TensorRT must split
                "QuantizeBias": False,  # TensorRT has no int32 bias Q/DQ; it fuses the fp32 bias itself
                "OpTypesToExcludeOutputQuantization": op_types,  # Q/DQ on op inputs only
                "CalibTensorRangeSymmetric": True,
            }
        if method == "percentile":
            extra["CalibPercentile"] = float(percentile)
        onnx_out.parent.mkdir(parents=True, exist_ok=True)
        out_tmp = Path(tmp) / "qdq.onnx"
        with _quantizer_advice_to_debug():
            quantize_static(
                str(src), str(out_tmp), reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=None if cpu else op_types,  # None: every op onnxruntime can quantise
                per_channel=bool(per_channel_weights),
                activation_type=QuantType.QUInt8 if cpu else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax if method == "minmax" else CalibrationMethod.Percentile,
                calibration_providers=["CPUExecutionProvider"],
                nodes_to_exclude=fp32_nodes,
                extra_options=extra,
            )
        if reader.num_batches == 0:  # defensive: quantize_static must have pulled the first batch
            raise RuntimeError("onnxruntime did not consume any calibration batch")
        qmodel = onnx.load(str(out_tmp))
        onnx.checker.check_model(qmodel)
        report_parts = _verify_qdq(qmodel, op_types, bool(per_channel_weights), target)
        # Write the final file only after it passed every check (temp + replace: no half-written model).
        with atomic_path(onnx_out) as final_tmp:
            onnx.save(qmodel, str(final_tmp))

    cos, rel = _fidelity_fp32_vs_qdq(ort, str(onnx_in), str(onnx_out), input_name, first)
    report = QdqReport(
        onnx_in=str(onnx_in), onnx_out=str(onnx_out), method=method,
        percentile=float(percentile) if method == "percentile" else None,
        per_channel_weights=bool(per_channel_weights), op_types=op_types, opset=_opset(qmodel),
        num_calibration_batches=reader.num_batches, num_calibration_samples=reader.num_samples,
        fp32_vs_qdq_cosine=cos, fp32_nodes=fp32_nodes, target=target, output_rel_error=rel, **report_parts)
    log.info("Q/DQ graph for %s written to %s: %d Q / %d DQ nodes, %d %s ops quantised, calibrated on %d samples "
             "(%s); fp32-vs-QDQ cosine on the first calibration batch %.5f", target, onnx_out, report.num_quantize,
             report.num_dequantize, report.quantized_ops, "/".join(op_types), report.num_calibration_samples,
             method, cos)
    if cos < LOW_COSINE:
        # Trained PatchCore/ReConPatch graphs give 0.987-0.999 and lost <= 0.003 I-AUROC; the magnetic_tile
        # ReContrast graph gave 0.820-0.861 and lost 0.22-0.24 (benchmarks/RESULTS.md section 5).
        log.warning("the INT8 graph's outputs are far from fp32 (cosine %.3f < %.2f on the first calibration "
                    "batch; largest relative errors: %s): expect an accuracy loss; measure it "
                    "(benchmarks/int8_accuracy.py) or keep fp32 (--fp16 on a GPU)", cos, LOW_COSINE,
                    worst_outputs(rel))
    return report


class _DropQuantizerAdvice(logging.Filter):
    """onnxruntime's quantizer logs on the *root* logger: advice to pre-process the model, notes on
    biases it leaves fp32.  Warnings of that module go to this module's debug log instead; the result
    is checked by `_verify_qdq` and the fp32-vs-int8 cosine either way."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR and "onnxruntime" in record.pathname and "quantization" in record.pathname:
            log.debug("onnxruntime quantizer: %s", record.getMessage())
            return False
        return True


@contextlib.contextmanager
def _quantizer_advice_to_debug() -> Iterator[None]:
    root = logging.getLogger()
    f = _DropQuantizerAdvice()
    handlers = list(root.handlers)
    root.addFilter(f)
    for h in handlers:  # records logged on root itself pass the logger's filters; children's reach handlers
        h.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)
        for h in handlers:
            h.removeFilter(f)


def _verify_qdq(model: Any, op_types: list[str], per_channel: bool, target: str = "tensorrt") -> dict[str, Any]:
    """Check the properties the target runtime relies on and collect the report's counts and scales.
    Both targets: standard-domain Q/DQ with constant, finite, positive scales; weights int8 with zero
    point 0 (per channel when asked); activations per tensor.  TensorRT: activations int8 with zero
    point 0 too.  onnxruntime: activations uint8 (any zero point)."""
    from onnx import TensorProto, numpy_helper  # noqa: PLC0415

    if _opset(model) < MIN_QDQ_OPSET:
        raise RuntimeError(f"quantised graph has opset {_opset(model)} < {MIN_QDQ_OPSET}")
    inits = {i.name: i for i in model.graph.initializer}
    consts: dict[str, np.ndarray] = {n: numpy_helper.to_array(t) for n, t in inits.items()}
    for node in model.graph.node:  # scales/zero points may also come as Constant nodes
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
    producers = {o: n for n in model.graph.node for o in n.output}
    nq = ndq = 0
    act_scales: dict[str, float] = {}
    weights: list[str] = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.domain not in ("", "ai.onnx"):
            raise RuntimeError(f"{node.op_type} {node.name!r} is in domain {node.domain!r}; standard Q/DQ expected")
        if len(node.input) < 3 or not node.input[2]:
            raise RuntimeError(f"{node.op_type} {node.name!r} has no zero point (its type would default to uint8)")
        scale, zp = consts.get(node.input[1]), consts.get(node.input[2])
        if scale is None or zp is None:
            raise RuntimeError(f"{node.op_type} {node.name!r}: scale/zero point are not constants")
        if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise RuntimeError(f"{node.op_type} {node.name!r}: non-positive or non-finite scale {scale}")
        const_in = consts.get(node.input[0])  # a weight: fp32 -> Q (TensorRT) or stored int8/int32 -> DQ
        if node.input[0] in inits and const_in is not None and const_in.dtype == np.int32:
            # onnxruntime layout: a conv's int32 bias, scale = input scale x weight scale, zero point 0
            if node.op_type != "DequantizeLinear" or zp.dtype != np.int32 or np.any(zp != 0):
                raise RuntimeError(f"{node.op_type} {node.name!r}: an int32 bias needs DequantizeLinear with zero point 0")
            ndq += 1
            continue
        if (target == "onnxruntime" and node.input[0] in inits and const_in is not None
                and const_in.dtype == np.uint8 and zp.dtype == np.uint8):
            # a constant operand of Add/Mul (e.g. a linear head's bias added after MatMul): onnxruntime
            # quantises it like an activation, uint8 with its own zero point
            ndq += 1
            continue
        src = producers.get(node.input[0])  # TensorRT layout: fp32 weight -> Q -> DQ
        is_weight = node.input[0] in inits or (
            node.op_type == "DequantizeLinear" and src is not None and src.op_type == "QuantizeLinear"
            and src.input[0] in inits)
        if is_weight or target == "tensorrt":
            if zp.dtype != np.int8 or np.any(zp != 0):
                raise RuntimeError(f"{node.op_type} {node.name!r}: zero point must be int8 0 (symmetric), "
                                   f"got {zp.dtype} {zp}")
        elif zp.dtype != np.uint8:
            raise RuntimeError(f"{node.op_type} {node.name!r}: activation zero point must be uint8, got {zp.dtype}")
        if is_weight:
            if node.input[0] in inits:  # the fp32 (TensorRT) or int8 (onnxruntime) initializer, once
                weights.append(node.input[0])
            if per_channel and scale.ndim != 1 and const_in is not None and const_in.ndim == 4:
                raise RuntimeError(f"weight {node.input[0]!r} is not quantised per channel")
        elif scale.size != 1:
            raise RuntimeError(f"activation {node.input[0]!r} must be quantised per tensor")
        elif node.op_type == "QuantizeLinear":
            act_scales[node.input[0]] = float(scale.reshape(-1)[0])
        if node.op_type == "QuantizeLinear":
            nq += 1
        else:
            ndq += 1
    if nq == 0:
        raise RuntimeError(f"no Q/DQ node was inserted: the graph has no quantisable {op_types} nodes")
    quantized_ops = sum(
        1 for n in model.graph.node
        if n.op_type in op_types and n.input and producers.get(n.input[0]) is not None
        and producers[n.input[0]].op_type == "DequantizeLinear")
    for out in model.graph.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise RuntimeError(f"graph output {out.name!r} is not float32 after quantisation")
    return {"num_quantize": nq, "num_dequantize": ndq, "quantized_ops": quantized_ops,
            "activation_scales": act_scales, "weight_tensors": sorted(set(weights))}


def worst_outputs(rel: dict[str, float], n: int = 3) -> str:
    """'a 8.48, b 1.92, c 0.87': the `n` outputs of a QdqReport.output_rel_error with the largest error, worst first."""
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(rel.items(), key=lambda kv: -kv[1])[:n])


def _fidelity_fp32_vs_qdq(ort: Any, fp32_path: str, qdq_path: str, input_name: str,
                          x: np.ndarray) -> tuple[float, dict[str, float]]:
    """Cosine of all outputs together, and each output's relative error |qdq - fp32| / |fp32|, on `x`."""
    from ..cpus import ort_session

    s32 = ort_session(ort, fp32_path)
    names = [o.name for o in s32.get_outputs()]
    ref = [np.asarray(r, np.float64).reshape(-1) for r in s32.run(None, {input_name: x})]
    got = [np.asarray(g, np.float64).reshape(-1) for g in ort_session(ort, qdq_path).run(None, {input_name: x})]
    a, b = np.concatenate(ref), np.concatenate(got)
    cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    rel = {n: float(np.linalg.norm(g - r) / max(float(np.linalg.norm(r)), 1e-30)) for n, r, g in zip(names, ref, got)}
    return cos, rel


__all__ = ["METHODS", "MIN_QDQ_OPSET", "QdqReport", "insert_qdq", "worst_outputs"]
