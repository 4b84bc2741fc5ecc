"""torch -> ONNX with a dynamic batch, plus the parity check every exported graph must pass.

Exporter: the TorchScript-based exporter (`dynamo=False`), which produces plain opset-17 graphs
that onnxruntime and TensorRT 8.6+/10 both parse; the parity check below is what guarantees the
graph computes what the torch model computes.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
INPUT_NAME = "image"


class ParityError(AssertionError):
    """The exported graph does not reproduce the torch module within tolerance."""


@dataclass
class ParityReport:
    max_abs: dict[str, float]
    max_rel: dict[str, float]
    atol: float
    rtol: float

    @property
    def worst(self) -> float:
        return max(self.max_abs.values())


def export_onnx(module: nn.Module, path: str | os.PathLike, input_hw: tuple[int, int],
                output_names: list[str], opset: int = DEFAULT_OPSET) -> Path:
    """Export an eval-mode module; batch is dynamic, spatial size fixed to the bundle's input size."""
    if opset < 17:
        raise ValueError(f"opset {opset} < 17 is not supported (LayerNorm/Resize semantics)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    dummy = torch.zeros(2, 3, *input_hw)
    dyn = {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in output_names}}
    import onnx

    from ..atomic import atomic_path
    from .graph_passes import fold_pads_into_conv

    with atomic_path(path) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter deprecation chatter; parity is checked below
            torch.onnx.export(module, (dummy,), str(tmp), input_names=[INPUT_NAME], output_names=output_names,
                              dynamic_axes=dyn, opset_version=opset, do_constant_folding=True, dynamo=False)
        model = onnx.load(str(tmp))
        n_pads = fold_pads_into_conv(model)
        if n_pads:
            log.info("folded %d constant Pad nodes into their Conv", n_pads)
            onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))
    log.info("exported %s (opset %d, %.1f MB)", path, opset, path.stat().st_size / 1e6)
    return path


def check_parity(module: nn.Module, onnx_path: str | os.PathLike, x: np.ndarray, output_names: list[str],
                 atol: float = 1e-3, rtol: float = 1e-3, threads: int = 0) -> ParityReport:
    """Run torch and onnxruntime on the same batch; raise ParityError when any output differs by more than
    atol*scale + rtol*|torch| (elementwise), scale = max(1, RMS of that torch output).

    Why the scale: backbone activations are not O(1) (a trained ReContrast encoder reaches |x| ~ 70,
    RMS ~ 6-12), and fp32 convolutions summed in a different order (MLAS vs oneDNN, BN folded or not)
    differ by ~1e-4 of the output's RMS, so a bare atol would flag near-zero elements of a large
    channel.  The tolerance stays a fraction 1e-3 of the output's own size."""
    import onnxruntime as ort

    from ..cpus import ort_session_options

    sess = ort.InferenceSession(str(onnx_path), sess_options=ort_session_options(ort, threads), providers=["CPUExecutionProvider"])
    got = sess.run(output_names, {INPUT_NAME: x.astype(np.float32)})
    with torch.no_grad():
        ref = module.eval()(torch.from_numpy(x.astype(np.float32)))
    if isinstance(ref, torch.Tensor):
        ref = (ref,)
    max_abs: dict[str, float] = {}
    max_rel: dict[str, float] = {}
    bad = []
    for name, r, g in zip(output_names, ref, got):
        r = r.numpy()
        if r.shape != g.shape:
            raise ParityError(f"{name}: onnx shape {g.shape} != torch shape {r.shape}")
        d = np.abs(r - g)
        scale = max(1.0, float(np.sqrt(np.mean(np.square(r, dtype=np.float64)))))
        max_abs[name] = float(d.max())
        max_rel[name] = float((d / (np.abs(r) + 1e-6)).max())
        if not np.all(np.isfinite(g)) or np.any(d > atol * scale + rtol * np.abs(r)):
            bad.append(f"{name}: max abs diff {max_abs[name]:.3g} (allowed {atol:.0e} x RMS {scale:.3g} + "
                       f"{rtol:.0e} x |torch|)")
    if bad:
        raise ParityError("ONNX graph disagrees with torch: " + "; ".join(bad))
    return ParityReport(max_abs, max_rel, atol, rtol)
