"""TensorRT backend: the `Backend` protocol of runtime/backends.py over `export.tensorrt.TrtEngine`.

Importing this module does not import tensorrt or pycuda; constructing `TensorRTBackend` without
them raises `TensorRTUnavailableError` (a RuntimeError) with what to install.

Never run on a real GPU in this project (none was available).  The build/run paths are exercised
against fake `tensorrt` 8.6.1 / 10.3.0 / 11.1 modules (exact API names of the real bindings) and a fake
pycuda in tests/python/test_trt_conformance.py; the import guard and argument checks run as they are.

Besides the `Backend` protocol (`run`: host in, host out) it offers what the device-resident
post-processing (runtime/device_post.py) needs: `run_device` (outputs stay on the GPU, on
`stream_handle`), device/pinned allocation, asynchronous copies and `synchronize`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..export.tensorrt import (  # torch-free, tensorrt-free at import time
    Int8RequiresQdqError, Precision, TensorRTUnavailableError, TrtEngine, build_engine, read_sidecar)

#: Preference when a bundle's manifest records several engine precisions.
ENGINE_PREFERENCE = ("fp16", "int8", "fp32")


def bundle_engine_source(manifest: dict, root: Path) -> tuple[Path, str]:
    """(ONNX to build from, precision) for a bundle: the first of ENGINE_PREFERENCE that the manifest's
    `engines` records (`edgeuad export --fp16/--int8`), else the bundle's ONNX at precision auto."""
    engines = manifest.get("engines")
    if isinstance(engines, dict):
        for p in ENGINE_PREFERENCE:
            if p in engines:
                return root / str(engines[p]), p
    return root / manifest["model"]["onnx"], "auto"

log = logging.getLogger(__name__)

ONNX_SUFFIXES = (".onnx",)


class TensorRTBackend:
    """Run a TensorRT engine, built on first use from an ONNX file when given one.

    engine_or_onnx_path: a serialized engine (.engine/.plan/.trt) or an ONNX graph; an ONNX is
        turned into a cached engine by `build_engine` (same GPU + TensorRT + settings -> reused).
    precision: fp32 | fp16 | int8 | auto (only used when building from ONNX; int8 needs a Q/DQ graph).
    """

    name = "tensorrt"

    def __init__(self, engine_or_onnx_path: str | os.PathLike, precision: str | Precision = "auto",
                 max_batch: int = 8, opt_batch: int = 1, workspace_mb: int = 1024,
                 cache_dir: str | os.PathLike | None = None, device: int = 0, force_rebuild: bool = False) -> None:
        path = Path(engine_or_onnx_path)
        prec = Precision.from_string(precision)
        if not path.is_file():
            raise FileNotFoundError(f"TensorRT backend: no such engine or ONNX file: {path}")
        if path.suffix.lower() in ONNX_SUFFIXES:
            self.engine_path = build_engine(path, precision=prec, max_batch=max_batch, opt_batch=opt_batch,
                                            workspace_mb=workspace_mb, cache_dir=cache_dir, device=device,
                                            force=force_rebuild)
        else:
            if prec is not Precision.AUTO:
                log.info("precision %s ignored: %s is already a built engine", prec, path.name)
            self.engine_path = path
        self.engine = TrtEngine(self.engine_path, device=device)
        meta = read_sidecar(self.engine_path) or {}
        self.precision: str | None = meta.get("precision")  # None for an engine built elsewhere
        self.input_name: str = self.engine.input_name
        self.output_names: list[str] = list(self.engine.output_names)
        log.info("TensorRT backend on %s (precision %s, max batch %d)", self.engine_path.name,
                 self.precision or "unknown", self.engine.max_batch)

    @property
    def max_batch(self) -> int:
        return self.engine.max_batch

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """float32 N x C x H x W -> {output name: float32 array}; N above max_batch is chunked."""
        return self.engine.infer(np.ascontiguousarray(x, dtype=np.float32))

    def run_device(self, x: Any) -> dict[str, Any]:
        """Like `run` but leaves outputs on the GPU, on `stream_handle` (see TrtEngine.infer_device).
        Batches above max_batch are refused (the caller chunks)."""
        return self.engine.infer_device(x)

    @property
    def stream_handle(self) -> int:
        return self.engine.stream_handle

    def device_empty(self, shape: tuple[int, ...], dtype: Any = np.float32) -> Any:
        return self.engine.device_empty(shape, dtype)

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        return self.engine.pinned_empty(shape, dtype)

    def copy_to_host_async(self, dst: np.ndarray, src: Any) -> None:
        self.engine.copy_to_host_async(dst, src)

    def copy_to_device_async(self, dst: Any, src: np.ndarray) -> None:
        self.engine.copy_to_device_async(dst, src)

    def synchronize(self) -> None:
        self.engine.synchronize()

    def close(self) -> None:
        eng = getattr(self, "engine", None)
        if eng is not None:
            eng.close()
            self.engine = None  # type: ignore[assignment]

    def __enter__(self) -> "TensorRTBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["Int8RequiresQdqError", "TensorRTBackend", "TensorRTUnavailableError"]
