"""`edgeuad export --fp16 / --int8`: record TensorRT precisions in the bundle and build their engines.

Engines are GPU-specific caches, not bundle content: they live in the engine cache
($EDGEUAD_TRT_CACHE or ~/.cache/edgeuad/trt, `export.tensorrt.build_engine`), keyed by GPU name,
SM, SM count, driver, TensorRT version, precision and the ONNX's sha256, written atomically.
The manifest only names, per precision, the (sha256-checked) ONNX an engine is built from
(`engines: {"fp16": "model.onnx", "int8": "model.int8.onnx"}`), so rebuilding an engine never
touches the manifest's hashed file list, and a bundle copied to another GPU rebuilds its engine
there on first use.

INT8 uses explicit quantisation only: Q/DQ nodes inserted with scales calibrated on the user's
normal images (`--calib DIR`), never on random data.  The Q/DQ graph itself is checked here with
onnxruntime (it runs on CPU); building the engine needs tensorrt + a GPU and raises
`TensorRTUnavailableError` with an install hint where they are missing.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..bundle import Bundle, write_manifest
from .calibration import calibration_batches
from .quantize import insert_qdq
from .tensorrt import build_engine

log = logging.getLogger(__name__)

INT8_ONNX = "model.int8.onnx"


def export_engines(bundle: Bundle, fp16: bool = False, int8: bool = False, calib: str | Path | None = None,
                   max_batch: int = 8, cache_dir: str | Path | None = None, device: int = 0,
                   int8_fp32_first: int = 2) -> list[Path]:
    """Record the precisions in the manifest (and the Q/DQ ONNX for int8), then build each engine into
    the cache on GPU `device`.  Returns the engine paths (in the cache, not in the bundle).
    int8_fp32_first: leading convs the Q/DQ graph leaves in fp32 (`quantize.insert_qdq(fp32_first=)`)."""
    if bundle.cpu_int8:
        raise ValueError(f"{bundle.root}: this bundle's graph is already int8 for onnxruntime on the CPU "
                         "(`edgeuad export --cpu-int8`); TensorRT engines are built from an fp32 bundle: "
                         "export one without --cpu-int8")
    manifest = dict(bundle.manifest)
    files = dict(manifest["files"])
    engines = dict(manifest.get("engines") or {})
    if isinstance(manifest.get("engines"), list):  # older bundles listed engine files: drop them
        engines = {}
        for name in manifest["engines"]:
            files.pop(name, None)
    if int8:
        if calib is None:
            raise ValueError("INT8 needs calibration images (--calib DIR); random calibration is never used")
        qdq = bundle.root / INT8_ONNX
        report = insert_qdq(bundle.onnx_path, qdq, calibration_batches(calib, bundle.preprocess),
                            fp32_first=int8_fp32_first)
        log.info("Q/DQ graph written: %s", qdq)
        files[INT8_ONNX] = ""
        manifest.setdefault("quantization", {})["int8"] = report.to_dict()
        engines["int8"] = INT8_ONNX
    if fp16:
        engines["fp16"] = manifest["model"]["onnx"]
    manifest["files"] = files
    if engines:
        manifest["engines"] = engines
    # Written before the builds: the Q/DQ graph and the requested precisions are kept even where
    # TensorRT is absent (the engine is then built on the GPU box, on first use).
    write_manifest(bundle.root, manifest)
    built = []
    for precision in [p for p in ("fp16", "int8") if (p == "fp16" and fp16) or (p == "int8" and int8)]:
        built.append(build_engine(bundle.root / engines[precision], precision=precision, max_batch=max_batch,
                                  cache_dir=cache_dir, device=device))
    return built
