#!/usr/bin/env python
"""Accuracy cost of a lower precision: evaluate a bundle with its fp32 graph and with a lower-precision
graph in onnxruntime on this CPU.

* int8: the int8 graph in onnxruntime's layout that the `onnxruntime-int8` row of the pipeline
  benchmark times and `edgeuad export --cpu-int8` ships (the same function builds it:
  edgeuad.bench.pipelines.int8_onnx, export/quantize.insert_qdq(target="onnxruntime") calibrated on
  normal training images).  The copy keeps the fp32 bundle's threshold, so compare AUROCs here; the
  shipped int8 bundle sets its own threshold from the int8 pipeline.
* fp16: the fp16 ONNX that TensorRT 11's strongly typed fp16 engine is built from
  (export.tensorrt.fp16_onnx: weights and activations float16, I/O float32).  onnxruntime rounds
  every activation to float16 between operators, so this measures what float16 storage does to the
  scores; it is an emulation on the CPU, not a TensorRT engine (whose kernels may also accumulate in
  float16).

    python benchmarks/int8_accuracy.py --bundle BUNDLE --data ../shared/data/magnetic_tile
    python benchmarks/int8_accuracy.py --precision fp16 --bundle BUNDLE --data ../shared/data/magnetic_tile
    python benchmarks/int8_accuracy.py --bundle BUNDLE --data DATA --out /tmp/check   # anywhere else

Writes <out>/<precision>_<dataset>_<method>.json (default out: benchmarks/results) with both metric
sets (I-AUROC, and P-AUROC/AUPRO where masks exist) and the mean Detector latency of each evaluation.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))  # run from a checkout without installing

from edgeuad import api  # noqa: E402
from edgeuad.atomic import atomic_write_bytes  # noqa: E402
from edgeuad.bench import BenchConfig, machine_info  # noqa: E402
from edgeuad.bench.pipelines import int8_onnx  # noqa: E402
from edgeuad.bundle import Bundle, write_manifest  # noqa: E402
from edgeuad.export.tensorrt import fp16_onnx  # noqa: E402

log = logging.getLogger("edgeuad.benchmarks")


def low_precision_bundle(bundle: Bundle, precision: str, calib: str, work: Path) -> Path:
    """A copy of `bundle` whose graph is the int8 Q/DQ or the fp16 one (manifest re-hashed, recorded)."""
    if precision == "int8":
        graph = int8_onnx(BenchConfig(bundle=str(bundle.root), int8_calib=calib), [], work)
        report = json.loads(graph.with_suffix(".json").read_text())
        record = {"kind": "qdq_int8", "target": "onnxruntime", "calibration": calib,
                  "tool": "edgeuad.export.quantize.insert_qdq",
                  # on the first calibration batch: which output the int8 graph loses
                  "fp32_vs_qdq_cosine": report["fp32_vs_qdq_cosine"], "output_rel_error": report["output_rel_error"]}
    else:
        graph = fp16_onnx(bundle.onnx_path, work)
        record = {"kind": "fp16", "tool": "edgeuad.export.tensorrt.fp16_onnx"}
    dst = work / f"bundle_{precision}"
    shutil.copytree(bundle.root, dst)
    shutil.copyfile(graph, dst / bundle.model["onnx"])
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["quantization"] = record
    write_manifest(dst, manifest)
    return dst


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help="trained bundle (directory or .tar)")
    ap.add_argument("--data", required=True, help="MVTec-layout dataset the bundle was trained on")
    ap.add_argument("--precision", choices=("int8", "fp16"), default="int8", help="the graph to compare with fp32")
    ap.add_argument("--calib", default=None, help="int8: normal images for calibration (default: DATA/train/good)")
    ap.add_argument("--threads", type=int, default=2, help="Detector threads for both evaluations")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="directory for the JSON result")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    bundle = Bundle.load(a.bundle)
    data = Path(a.data)
    calib = a.calib or str(data / "train" / "good")
    lp = a.precision
    res = {"dataset": data.name, "method": bundle.method, "bundle": str(a.bundle), "precision": lp,
           **({"calibration": calib, "layout": "onnxruntime"} if lp == "int8" else {}), "threads": a.threads,
           "machine": machine_info()}
    with tempfile.TemporaryDirectory(prefix=f"edgeuad-{lp}-") as tmp:
        q = low_precision_bundle(bundle, lp, calib, Path(tmp))
        if lp == "int8":
            res["quantization"] = Bundle.load(q).manifest["quantization"]
        for name, b in (("fp32", bundle.root), (lp, q)):
            ev = api.evaluate(b, data, None, threads=a.threads, progress=True)
            res[name] = {k: float(v) for k, v in ev.metrics.items()}
            res[name]["latency_ms_mean"] = ev.latency_ms_mean
            log.info("%s: %s", name, api.format_metrics(ev.metrics))
    out = Path(a.out) / f"{lp}_{data.name}_{bundle.method}.json"
    atomic_write_bytes(out, (json.dumps(res, indent=2) + "\n").encode())
    drop = res["fp32"]["i_auroc"] - res[lp]["i_auroc"]
    sys.stdout.write(f"{data.name} {bundle.method}: I-AUROC fp32 {res['fp32']['i_auroc']:.4f}, {lp} "
                     f"{res[lp]['i_auroc']:.4f} (drop {drop:+.4f}); written: {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
