"""Network backends: one protocol, three engines.

    onnxruntime  the embedded default: CPU everywhere (and CUDA EP when installed)
    torch        the training-side model run eagerly (imports torch lazily; reference and debugging)
    tensorrt     engines for Jetson / NVIDIA GPUs (runtime/trt_backend.py, import-guarded)

Every backend maps a float32 N x 3 x H x W batch to a dict of named float32 outputs, the names
being the ONNX output names recorded in the bundle manifest.
"""
from __future__ import annotations

import logging
import os
from typing import Protocol

import numpy as np

from ..bundle import Bundle
from .. import cpus
from ..cpus import ort_session, resolve_threads, set_torch_threads

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "torch", "tensorrt")


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here (package missing, no device)."""


class Backend(Protocol):
    name: str
    input_name: str
    output_names: list[str]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class OrtBackend:
    """onnxruntime session over the bundle's ONNX graph."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, threads: int = 0,
                 providers: list[str] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:  # a hard dependency, but say what to do if it is gone
            raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime") from e
        avail = ort.get_available_providers()
        if providers is None:
            providers = ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in avail]
        if missing:
            raise BackendUnavailableError(f"onnxruntime providers {missing} not available (have {avail})")
        # sized to the CPUs this process may use, no spinning, precise int8 (see edgeuad.cpus)
        self.session = ort_session(ort, str(onnx_path), threads, providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        # Static dims are ints, dynamic ones strings/None: the Detector cross-checks the manifest with them.
        self.input_shape = list(self.session.get_inputs()[0].shape)
        self.output_shapes = {o.name: list(o.shape) for o in self.session.get_outputs()}
        self.threads = resolve_threads(threads)  # what ort_session_options gave the session
        log.debug("onnxruntime session on %s, providers=%s, threads=%d", onnx_path, providers, self.threads)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return dict(zip(self.output_names, outs))

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]


class TorchBackend:
    """The eager torch model rebuilt from the bundle's safetensors weights (needs the `train` extra)."""

    name = "torch"

    def __init__(self, bundle: Bundle, threads: int = 0, device: str = "cpu") -> None:
        try:
            import torch
        except ImportError as e:
            raise BackendUnavailableError("the torch backend needs torch: pip install 'edgeuad[train]'") from e
        from ..methods.registry import load_export_module  # lazy: keeps torch out of the runtime import

        set_torch_threads(torch, threads)
        self.torch = torch
        self.device = torch.device(device)
        self.module = load_export_module(bundle).to(self.device).eval()
        self.input_name = bundle.model["input"]
        self.output_names = list(bundle.model["outputs"])

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with self.torch.inference_mode():
            outs = self.module(self.torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device))
        if isinstance(outs, self.torch.Tensor):
            outs = [outs]
        return {n: o.float().cpu().numpy() for n, o in zip(self.output_names, outs)}

    def close(self) -> None:
        self.module = None


def make_backend(bundle_or_engine: Bundle, backend: str = "auto", threads: int = 0,
                 engine_path: str | os.PathLike | None = None) -> Backend:
    """Pick and build a backend.  'auto' = tensorrt when an engine is given, else onnxruntime (logged)."""
    if backend == "auto":
        backend = "tensorrt" if engine_path is not None else "onnxruntime"
        log.info("backend auto resolved to %s (%s)", backend,
                 "engine file given" if engine_path is not None else "CPU default")
    cpu_int8 = bundle_or_engine.cpu_int8  # `export --cpu-int8`
    if backend == "onnxruntime":
        if cpu_int8 and cpus.int8_product_saturates():  # looked up at call time (tests patch it)
            log.warning("bundle %s has an int8 graph, but this CPU has no VNNI: onnxruntime runs it in its precise "
                        "int8 mode, which measured 2.4x slower than its default (cpus.ort_session_options) and may "
                        "be slower than the fp32 bundle here; time both (`edgeuad bench`)", bundle_or_engine.root)
        return OrtBackend(bundle_or_engine.onnx_path, threads=threads)
    if backend == "torch":
        if cpu_int8:
            log.warning("bundle %s: its graph and thresholds are int8 (onnxruntime CPU); the torch backend runs "
                        "the fp32 weights, so scores differ slightly from the ones the threshold was set on",
                        bundle_or_engine.root)
        return TorchBackend(bundle_or_engine, threads=threads)
    if backend == "tensorrt":
        if cpu_int8 and engine_path is None:
            raise BackendUnavailableError(
                f"bundle {bundle_or_engine.root}: its graph is int8 for onnxruntime on the CPU (uint8 activations), "
                "which TensorRT does not build; export an fp32 bundle for TensorRT (`edgeuad export --fp16/--int8`)")
        from .trt_backend import TensorRTBackend, bundle_engine_source  # import-guarded: clear error without tensorrt

        if engine_path is not None:
            return TensorRTBackend(engine_path)
        onnx, precision = bundle_engine_source(bundle_or_engine.manifest, bundle_or_engine.root)
        return TensorRTBackend(onnx, precision=precision)
    raise ValueError(f"unknown backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}")
