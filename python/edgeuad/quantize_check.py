"""Does the CPU int8 graph cost accuracy?  Label-free: on the run's synthetic-defect split.

`edgeuad export --cpu-int8` scores the split `selection` makes from the run's held-out normal images
(each image, a blended-defect copy and a thin-crack copy) twice with the deployed runtime: once with
the bundle's int8 graph, once with the fp32 graph it was quantised from, both with the bank the
held-out images are not in (the export's calibration bank).  The two I-AUROCs and their difference
go into the manifest's `quantization.cpu_int8.validation`; a drop above the allowed one (MAX_DROP by
default) stops the export (Int8AccuracyError: the previous bundle stays as it was), names the graph
outputs int8 changes most (insert_qdq's per-output errors) and the fp32 export as the alternative.  The
test split is never read.  Sits beside `ensemble_check` (drives the Detector); no torch.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bundle import read_manifest, write_manifest
from .detector import Detector
from .selection import ValidationSet, detector_score_fn, load_validation_set, score_validation, validation_metrics

log = logging.getLogger(__name__)

MAX_DROP = 0.005  # issue #16's accuracy budget for INT8 (I-AUROC)
MIN_NORMALS = 10  # as ensemble_check / backbone_choice: fewer held-out normals cannot tell


class Int8AccuracyError(ValueError):
    """The int8 graph lost more validation I-AUROC than the caller allows; nothing was written."""


def _split_scores(bundle: Path, vs: ValidationSet, threads: int, batch: int = 8) -> tuple[np.ndarray, list]:
    with Detector(bundle, backend="onnxruntime", threads=threads) as det:
        return score_validation(detector_score_fn(det), vs, batch=batch)


def check_int8(bundle: Path, fp32_graph: Path, holdout: Sequence[Path], seed: int, threads: int = 0,
               max_drop: float = MAX_DROP, output_rel_error: dict[str, float] | None = None) -> dict[str, Any]:
    """Validation metrics of `bundle` (int8 graph, thresholds set) and of the same bundle with
    `fp32_graph` in its place -> the record for the manifest.  `bundle` must hold the bank the
    held-out images are not in (api.export calls this before it writes the shipped bank).
    Raises Int8AccuracyError when the I-AUROC drop exceeds `max_drop` and there are enough held-out
    normals to tell (with fewer, a warning says so and the record is returned); the message names the
    graph outputs with the largest int8 error (`output_rel_error`, insert_qdq's report) when given."""
    m = read_manifest(bundle)
    vs = load_validation_set(holdout, max(m["preprocess"]["size"]), seed=seed)
    rec: dict[str, Any] = {"split": "synthetic defects in the run's held-out normal images (blended + thin crack)",
                           "held_out_normals": len(holdout), "images": len(vs), "seed": seed}
    with tempfile.TemporaryDirectory(prefix="edgeuad-int8-check-") as tmp:
        fp32 = Path(tmp) / "fp32"
        shutil.copytree(bundle, fp32)
        shutil.copyfile(fp32_graph, fp32 / m["model"]["onnx"])
        write_manifest(fp32, read_manifest(fp32))  # re-hashed: the copy verifies like any bundle
        for name, b in (("fp32", fp32), ("int8", bundle)):
            scores, maps = _split_scores(b, vs, threads)
            met = validation_metrics(vs, scores, maps)
            rec[name] = {k: round(float(met[k]), 4) for k in ("i_auroc", "i_auroc_blended", "i_auroc_crack", "p_auroc")
                         if k in met}
    rec["drop_i_auroc"] = round(rec["fp32"]["i_auroc"] - rec["int8"]["i_auroc"], 4)
    msg = ("int8 graph on %d synthetic-defect images from %d held-out normals: validation I-AUROC %.4f vs fp32 %.4f "
           "(drop %+.4f)")
    args = (len(vs), len(holdout), rec["int8"]["i_auroc"], rec["fp32"]["i_auroc"], rec["drop_i_auroc"])
    rec["max_drop"] = float(max_drop)
    if len(holdout) < MIN_NORMALS:
        log.warning(msg + ": fewer than %d held-out normals, too few to tell", *args, MIN_NORMALS)
    elif rec["drop_i_auroc"] > max_drop:
        raise Int8AccuracyError(
            (msg % args) + f": above the allowed {max_drop:g}; no bundle written{_worst(output_rel_error)}. "
            "Export without --cpu-int8 (fp32 keeps the accuracy), or accept the loss with --int8-max-drop")
    else:
        log.info(msg, *args)
    return rec


def _worst(rel: dict[str, float] | None) -> str:
    """' (outputs int8 changes most, relative error: a 8.48, b 1.92)' or '' without figures."""
    from .export.quantize import worst_outputs

    return f" (outputs int8 changes most, relative error: {worst_outputs(rel)})" if rel else ""


__all__ = ["Int8AccuracyError", "MAX_DROP", "check_int8"]
