"""`edgeuad export --fp16 / --int8`: bundle ONNX -> TensorRT engines stored inside the bundle.

INT8 uses explicit quantisation only: Q/DQ nodes inserted with scales calibrated on the user's
normal images (`--calib DIR`), never on random data.  The Q/DQ graph itself is checked here with
onnxruntime (it runs on CPU); building the engine needs tensorrt + a GPU and raises
`TensorRTUnavailableError` with an install hint where they are missing.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .. import data as _data
from ..bundle import Bundle, write_manifest
from ..preprocess import preprocess
from .quantize import insert_qdq
from .tensorrt import build_engine

log = logging.getLogger(__name__)


def calibration_batches(calib: str | Path, bundle: Bundle, batch: int = 8, limit: int = 256) -> list:
    """Normal images from `calib` (MVTec root or folder), preprocessed exactly like the runtime does."""
    root = Path(calib)
    paths = ([s.path for s in _data.list_mvtec(root, "train")] if (root / "train" / "good").is_dir()
             else _data.list_folder(calib))[:limit]
    res = _data.load_images(paths, None)
    x = preprocess(res.images, bundle.preprocess)
    return [x[i:i + batch] for i in range(0, len(x), batch)]


def export_engines(bundle: Bundle, fp16: bool = False, int8: bool = False, calib: str | Path | None = None,
                   max_batch: int = 8) -> list[Path]:
    manifest = dict(bundle.manifest)
    engines: list[Path] = []
    files = dict(manifest["files"])
    if int8:
        if calib is None:
            raise ValueError("INT8 needs calibration images (--calib DIR); random calibration is never used")
        qdq = bundle.root / "model.int8.onnx"
        report = insert_qdq(bundle.onnx_path, qdq, calibration_batches(calib, bundle))
        log.info("Q/DQ graph written: %s", qdq)
        files["model.int8.onnx"] = ""
        manifest.setdefault("quantization", {})["int8"] = report.to_dict()
    # Record the Q/DQ graph before the engine build, so it is kept even where TensorRT is absent.
    manifest["files"] = files
    write_manifest(bundle.root, manifest)
    jobs = []
    if fp16:
        jobs.append(("fp16", bundle.onnx_path))
    if int8:
        jobs.append(("int8", bundle.root / "model.int8.onnx"))
    for precision, onnx_path in jobs:
        target = bundle.root / f"model.{precision}.engine"
        engines.append(build_engine(onnx_path, target, precision=precision, max_batch=max_batch))
    if engines:
        # Engines are GPU-specific; they are listed (and hashed) so a copied bundle is still verified.
        for e in engines:
            files[e.name] = ""
        manifest["files"] = files
        manifest["engines"] = [e.name for e in engines]
        write_manifest(bundle.root, manifest)
    return engines
