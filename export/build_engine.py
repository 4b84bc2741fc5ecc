#!/usr/bin/env python3
"""Build (or reuse from cache) a TensorRT engine from an edgeuad ONNX graph -- standalone recipe.

    python3 build_engine.py model.onnx --fp16 --max-batch 4
    python3 build_engine.py model_int8.onnx --int8 --max-batch 4 --verify

Needs only `tensorrt` (JetPack ships it), numpy, and optionally `onnx` (early Q/DQ check) and
`pycuda` (for --verify).  The build logic lives in python/edgeuad/export/tensorrt.py, which has no
edgeuad imports; this script loads it from, in order:
  1. --trt-module PATH
  2. edgeuad_trt.py next to this script   (copy python/edgeuad/export/tensorrt.py under that name;
     never name it tensorrt.py: it would shadow the real tensorrt package)
  3. ../python/edgeuad/export/tensorrt.py (running from a checkout of the repository)
  4. the installed package (`import edgeuad.export.tensorrt`)

Supports TensorRT 8.6, 10.x and 11.x (strongly typed); tested against fake tensorrt modules with the
real API names (tests/python/test_trt_conformance.py), never against real TensorRT (no GPU in CI).
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import List, Optional

log = logging.getLogger("build_engine")


def load_trt_module(explicit: Optional[str] = None) -> ModuleType:
    here = Path(__file__).resolve().parent
    if explicit and not Path(explicit).is_file():
        raise SystemExit(f"--trt-module {explicit}: no such file")
    candidates: List[Path] = [Path(explicit)] if explicit else []
    candidates += [here / "edgeuad_trt.py", here.parent / "python" / "edgeuad" / "export" / "tensorrt.py"]
    for path in candidates:
        if path.is_file():
            spec = importlib.util.spec_from_file_location("edgeuad_trt", str(path))
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules["edgeuad_trt"] = mod  # dataclasses resolve their module through sys.modules
            spec.loader.exec_module(mod)
            log.debug("using %s", path)
            return mod
    try:
        import edgeuad.export.tensorrt as mod  # noqa: PLC0415
    except ImportError as e:
        raise SystemExit("cannot find the edgeuad TensorRT module: copy python/edgeuad/export/tensorrt.py next "
                         f"to this script as edgeuad_trt.py, or pip install edgeuad ({e})") from e
    return mod


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx", help="ONNX graph from the edgeuad bundle (model.onnx, or the Q/DQ model for --int8)")
    ap.add_argument("-o", "--engine", help="engine output path (default: in the cache dir, name includes the key)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--fp32", dest="precision", action="store_const", const="fp32")
    g.add_argument("--fp16", dest="precision", action="store_const", const="fp16")
    g.add_argument("--int8", dest="precision", action="store_const", const="int8",
                   help="explicit INT8: the ONNX must carry Q/DQ nodes (edgeuad export --int8 --calib DIR)")
    g.add_argument("--precision", dest="precision", choices=["fp32", "fp16", "int8", "auto"])
    ap.set_defaults(precision="auto")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--opt-batch", type=int, default=1)
    ap.add_argument("--workspace-mb", type=int, default=1024)
    ap.add_argument("--cache-dir", help="engine cache directory (default $EDGEUAD_TRT_CACHE or ~/.cache/edgeuad/trt)")
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild even when a valid cached engine exists")
    ap.add_argument("--verify", action="store_true",
                    help="load the engine (needs pycuda), run one fixed-seed batch and, if onnxruntime is "
                         "installed, compare with it on CPU")
    ap.add_argument("--trt-module", help="path of edgeuad's export/tensorrt.py to use")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap.parse_args(argv)


def verify(mod: ModuleType, engine_path: Path, onnx_path: Path, device: int) -> int:
    import numpy as np  # noqa: PLC0415

    with mod.TrtEngine(engine_path, device=device) as eng:
        shape = (min(2, eng.max_batch),) + tuple(eng.tensors[eng.input_name].max_shape[1:])
        # A smoke input for comparing two runtimes, not calibration data.
        x = np.random.default_rng(0).standard_normal(shape).astype(eng.tensors[eng.input_name].dtype)
        got = eng.infer(x)
    for name, arr in got.items():
        log.info("output %s: shape %s, finite=%s", name, arr.shape, bool(np.isfinite(arr).all()))
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError:
        log.info("onnxruntime not installed: skipping the TensorRT vs onnxruntime comparison")
        return 0 if all(np.isfinite(a).all() for a in got.values()) else 1
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))
    worst = 1.0
    for name, arr in got.items():
        a, b = ref[name].astype(np.float64).ravel(), arr.astype(np.float64).ravel()
        cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
        worst = min(worst, cos)
        log.info("output %s: cosine(TensorRT, onnxruntime) = %.6f, max |diff| = %.4g", name, cos,
                 float(np.abs(a - b).max()))
    return 0 if worst > 0.99 else 1


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    mod = load_trt_module(args.trt_module)
    try:
        path = mod.build_engine(args.onnx, engine_path=args.engine, precision=args.precision,
                                max_batch=args.max_batch, opt_batch=args.opt_batch, workspace_mb=args.workspace_mb,
                                cache_dir=args.cache_dir, device=args.device, force=args.force, verbose=args.verbose)
    except mod.TensorRTUnavailableError as e:
        log.error("%s", e)
        return 3
    except (mod.Int8RequiresQdqError, ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    sys.stdout.write(f"{path}\n")
    if args.verify:
        try:
            return verify(mod, Path(path), Path(args.onnx), args.device)
        except mod.TensorRTUnavailableError as e:
            log.error("%s", e)
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
