"""The pipeline, step by step: data -> method (train) -> bundle -> Detector -> metrics.

    run = train("recontrast", "data/bottle", "runs/bottle")        # torch (the `train` extra)
    bundle = export(run, "bundles/bottle")                          # ONNX + weights + thresholds
    report = evaluate(bundle, "data/bottle", "reports/bottle")     # runtime only (no torch)

`train` and `export` import torch (lazily, so `evaluate` and the runtime never do).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import data as _data
from .atomic import atomic_write_bytes
from .bundle import Bundle, write_manifest
from .preprocess import PreprocessConfig, preprocess
from .thresholds import from_labelled, from_normal_scores

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
RUN_WEIGHTS = "weights.safetensors"


# ----------------------------------------------------------------------------- configs
def method_config(method: str, overrides: dict[str, Any] | None = None) -> Any:
    """Build the method's dataclass config from defaults + overrides; unknown keys are an error
    (a flag that silently never reaches the model is worse than a crash)."""
    overrides = dict(overrides or {})
    if method == "recontrast":
        from .methods.recontrast import ReContrastConfig as C
    elif method == "patchcore":
        from .methods.patchcore import PatchCoreConfig as C
    elif method == "reconpatch":
        from .methods.reconpatch import ReConPatchConfig as C
    else:
        raise ValueError(f"unknown method {method!r}; choose recontrast, reconpatch or patchcore")
    base = C().to_dict()
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ValueError(f"unknown {method} config key(s) {unknown}; valid keys: {sorted(base)}")
    base.update({k: v for k, v in overrides.items() if v is not None})
    return C.from_dict(base)


def preprocess_for(cfg: Any) -> PreprocessConfig:
    s = int(cfg.image_size)
    return PreprocessConfig(size=(s, s))


@dataclass
class Run:
    """A finished training run: everything `export` needs, on disk in `root`."""

    root: Path
    method: str
    config: dict[str, Any]
    preprocess: PreprocessConfig
    holdout: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, root: str | os.PathLike) -> "Run":
        root = Path(root)
        f = root / RUN_FILE
        if not f.is_file():
            raise FileNotFoundError(f"{root} is not a training run (no {RUN_FILE}); run `edgeuad train` first")
        d = json.loads(f.read_text())
        return cls(root=root, method=d["method"], config=d["config"],
                   preprocess=PreprocessConfig.from_dict(d["preprocess"]), holdout=d.get("holdout", []),
                   info=d.get("info", {}))

    def save(self) -> None:
        d = {"method": self.method, "config": self.config, "preprocess": self.preprocess.to_dict(),
             "holdout": self.holdout, "info": self.info}
        atomic_write_bytes(self.root / RUN_FILE, (json.dumps(d, indent=2) + "\n").encode())


# ----------------------------------------------------------------------------- data
def normal_image_paths(data: str | os.PathLike) -> list[Path]:
    """Normal training images: `<root>/train/good` of an MVTec-layout folder, or a plain folder/glob."""
    root = Path(data)
    if (root / "train" / "good").is_dir():
        return [s.path for s in _data.list_mvtec(root, "train")]
    return _data.list_folder(data)


def load_array(paths: Sequence[Path], pre: PreprocessConfig, progress: bool = False) -> tuple[np.ndarray, list[Path]]:
    res = _data.load_images(paths, pre, progress=progress)
    if res.skipped:
        log.warning("%d of %d images could not be read and were skipped", len(res.skipped), len(paths))
    return preprocess(res.images, pre), list(res.paths)


# ----------------------------------------------------------------------------- train
def train(method: str, data: str | os.PathLike, out_dir: str | os.PathLike,
          overrides: dict[str, Any] | None = None, holdout_fraction: float = 0.1,
          progress: bool = True) -> Run:
    """Train `method` on the normal images of `data`; keep `holdout_fraction` aside for thresholds."""
    from .methods.common import seed_everything

    cfg = method_config(method, overrides)
    pre = preprocess_for(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = normal_image_paths(data)
    train_paths, holdout = _data.split_holdout(paths, fraction=holdout_fraction, seed=int(cfg.seed))
    log.info("%s: %d training images, %d held out for thresholds (%s)", method, len(train_paths), len(holdout), data)
    x, kept = load_array(train_paths, pre, progress=progress)
    seed_everything(int(cfg.seed))
    t0 = time.perf_counter()
    state, config, selection = _fit(method, cfg, x, out, progress, holdout, pre)
    seconds = time.perf_counter() - t0
    from safetensors.torch import save

    atomic_write_bytes(out / RUN_WEIGHTS, save({k: v.detach().contiguous().cpu() for k, v in state.items()}))
    run = Run(root=out, method=method, config=config, preprocess=pre,
              holdout=[str(p) for p in holdout],
              info={"data": str(data), "n_train": len(kept), "train_seconds": round(seconds, 2)})
    if selection is not None:  # what label-free selection chose and why (also in the bundle manifest)
        run.info["selection"] = selection
    run.save()
    log.info("trained %s in %.1f s -> %s", method, seconds, out)
    return run


def _fit(method: str, cfg: Any, x: np.ndarray, out: Path, progress: bool, holdout: Sequence[Path],
         pre: PreprocessConfig) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """Train; return (state dict, the config that rebuilds the model from it, selection report or None)."""
    if method == "recontrast":
        from .methods.recontrast import model_state
        from .methods.recontrast_train import fit_recontrast
        from .selection import load_validation_set

        # synthetic defects pasted into the held-out normals pick BN mode, checkpoint and score
        vs = load_validation_set(holdout, int(cfg.image_size), seed=int(cfg.seed)) if holdout else None
        vx = None if vs is None else preprocess(vs.images, pre)
        fit = fit_recontrast(cfg, x, out, validation=vs, validation_x=vx, progress=progress)
        return model_state(fit.model), fit.config.to_dict(), fit.report
    if method == "patchcore":
        from .methods.patchcore import train_patchcore

        pm = train_patchcore(cfg, x, progress=progress)
    else:
        from .methods.reconpatch import train_reconpatch

        pm = train_reconpatch(cfg, x, checkpoint_dir=out, progress=progress)
    return pm.state_dict(), dict(pm.config), None


# ----------------------------------------------------------------------------- export
def export(run: Run | str | os.PathLike, bundle_dir: str | os.PathLike, threads: int = 0,
           validation: str | os.PathLike | None = None, quantile: float = 0.99, parity_images: int = 4,
           progress: bool = False) -> Bundle:
    """Write a verified bundle: ONNX (parity-checked against torch), weights, bank, thresholds."""
    from safetensors.torch import load_file

    from .export.onnx import check_parity, export_onnx
    from .methods.registry import load_trained, spec_for

    run = run if isinstance(run, Run) else Run.load(run)
    out = Path(bundle_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = load_file(str(run.root / RUN_WEIGHTS))
    trained, cfg = load_trained(run.method, state, run.config)
    spec = spec_for(run.method, trained, cfg)
    export_onnx(spec.module, out / "model.onnx", run.preprocess.size, spec.output_names)
    shutil.copyfile(run.root / RUN_WEIGHTS, out / "weights.safetensors")
    files = ["model.onnx", "weights.safetensors"]

    holdout = [Path(p) for p in run.holdout if Path(p).exists()]
    if not holdout:
        raise ValueError(f"run {run.root} has no readable held-out normal images: cannot set a threshold")
    xh, holdout = load_array(holdout, run.preprocess)
    rep = check_parity(spec.module, out / "model.onnx", xh[:parity_images], spec.output_names, threads=threads)
    log.info("ONNX parity vs torch: worst max abs diff %.2e (atol %.0e + rtol %.0e)", rep.worst, rep.atol, rep.rtol)

    if spec.postprocess["kind"] == "nn_l2":
        from .runtime.bank import Bank

        # the Eq. 10 neighbour table is built once here and shipped, not on the Detector's first frame
        bank = Bank.build(np.ascontiguousarray(trained.bank, dtype=np.float32),
                          neighbor_b=int(spec.postprocess["reweight_b"]))
        bank.save(out / spec.postprocess["bank"])
        files.append(spec.postprocess["bank"])

    manifest: dict[str, Any] = {
        "method": run.method,
        "backbone": run.config.get("backbone", "efficientnet_lite0"),
        "preprocess": run.preprocess.to_dict(),
        "model": {"onnx": "model.onnx", "input": "image", "outputs": spec.output_names, "opset": 17,
                  "weights": "weights.safetensors", "config": run.config,
                  "parity": {"max_abs": rep.max_abs, "atol": rep.atol, "rtol": rep.rtol}},
        "postprocess": spec.postprocess,
        "thresholds": {"threshold": 0.0, "min": 0.0, "max": 1.0, "source": "provisional"},
        "training": run.info,
        "files": {f: "" for f in files},
    }
    write_manifest(out, manifest)

    # Thresholds come from the deployed pipeline itself (ONNX + runtime maps), on held-out normals.
    from .detector import Detector

    det = Detector(out, backend="onnxruntime", threads=threads)
    normal = _scores(det, holdout)
    if validation is not None:
        vs, vl = [], []
        for s in _data.list_mvtec(validation, "test"):
            vs.append(s.path)
            vl.append(s.label)
        scores = _scores(det, vs)
        th = from_labelled(scores, vl)
    else:
        th = from_normal_scores(normal, quantile=quantile)
    det.close()
    manifest["thresholds"] = th.to_dict()
    manifest = write_manifest(out, manifest)
    log.info("bundle %s: threshold %.4g (%s, %d normal images)", out, th.threshold, th.source, len(normal))
    return Bundle.load(out)


def _scores(det: Any, paths: Sequence[Path], batch: int = 8) -> np.ndarray:
    res = _data.load_images(list(paths), None)
    out: list[float] = []
    for i in range(0, len(res.images), batch):
        out += [r.score for r in det.score_batch(res.images[i:i + batch], return_map=False)]
    return np.asarray(out, dtype=np.float64)


# ----------------------------------------------------------------------------- evaluate
@dataclass
class EvalResult:
    metrics: dict[str, float]
    per_image: list[dict[str, Any]]
    seconds: float
    latency_ms_mean: float


def evaluate(bundle: str | os.PathLike, data: str | os.PathLike, out_dir: str | os.PathLike | None = None,
             backend: str = "onnxruntime", threads: int = 0, batch: int = 8, progress: bool = True,
             overlays: int = 16) -> EvalResult:
    """Score an MVTec-layout test split with the Detector (runtime only) and compute the metrics."""
    from tqdm import tqdm

    from .detector import Detector
    from .metrics import summarize
    from . import viz

    det = Detector(bundle, backend=backend, threads=threads)
    samples = _data.list_mvtec(data, "test")
    size = det.input_size
    labels, scores, maps, masks, rows = [], [], [], [], []
    have_masks = any(s.mask_path is not None for s in samples)
    # overlay gallery: the same number of examples from every class (good + each defect type)
    gallery: dict[str, list[np.ndarray]] = {}
    per_class = max(1, overlays // max(1, len({s.defect for s in samples})))
    t0 = time.perf_counter()
    lat: list[float] = []
    skipped = 0
    bar = tqdm(range(0, len(samples), batch), desc="eval", disable=not progress, unit="batch")
    for i in bar:
        chunk = samples[i:i + batch]
        imgs, ok = [], []
        for s in chunk:
            try:
                imgs.append(_data.read_image(s.path))
                ok.append(s)
            except _data.ImageReadError as e:
                skipped += 1
                log.warning("skipping unreadable test image %s: %s", s.path, e)
        if not imgs:
            continue
        res = det.score_batch(imgs, return_map=True)
        for s, img, r in zip(ok, imgs, res):
            lat.append(r.latency_ms / len(res))
            labels.append(s.label)
            scores.append(r.score)
            rows.append({"path": str(s.path), "defect": s.defect, "label": s.label, "score": r.score,
                         "normalized": r.normalized, "is_anomaly": r.is_anomaly})
            if have_masks:
                import cv2

                maps.append(cv2.resize(r.raw_map, (size[1], size[0]), interpolation=cv2.INTER_LINEAR))
                masks.append(_data.read_mask(s.mask_path, size) if s.mask_path is not None
                             else np.zeros(size, bool) if s.label == 0 else None)
            if out_dir is not None and len(gallery.setdefault(s.defect, [])) < per_class:
                ov = viz.overlay(img, r.anomaly_map, vmin=0.0, vmax=1.0)
                gallery[s.defect].append(viz.annotate(
                    ov, [f"{s.defect} {r.normalized:.2f} {'NG' if r.is_anomaly else 'OK'}"], ok=not r.is_anomaly))
    seconds = time.perf_counter() - t0
    if have_masks:
        keep = [i for i, m in enumerate(masks) if m is not None]
        m_arr = np.stack([masks[i] for i in keep]) if keep else None
        p_arr = np.stack([maps[i] for i in keep]) if keep else None
        metrics = summarize(np.asarray(labels), np.asarray(scores), m_arr, p_arr)
    else:
        metrics = summarize(np.asarray(labels), np.asarray(scores))
    metrics = {k: float(v) for k, v in metrics.items()}
    predicted = np.asarray([r["is_anomaly"] for r in rows])
    y = np.asarray(labels)
    metrics["accuracy_at_threshold"] = float((predicted == (y == 1)).mean())
    metrics["n_images"] = float(len(rows))
    metrics["n_skipped"] = float(skipped)
    result = EvalResult(metrics=metrics, per_image=rows, seconds=seconds,
                        latency_ms_mean=float(np.mean(lat)) if lat else 0.0)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"metrics": metrics, "bundle": str(bundle), "data": str(data),
                                                      "backend": det.backend_name, "seconds": seconds,
                                                      "latency_ms_mean": result.latency_ms_mean}, indent=2) + "\n")
        with open(out / "scores.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        if gallery:
            tiles = [t for cls in sorted(gallery) for t in gallery[cls]]
            viz.write_png(out / "overlays.png", viz.grid(tiles, cols=per_class, cell=(192, 192)))
        normal = [r["score"] for r in rows if r["label"] == 0]
        anomalous = [r["score"] for r in rows if r["label"] == 1]
        if normal and anomalous:
            viz.write_png(out / "score_histogram.png", viz.score_histogram(normal, anomalous, det.threshold))
    det.close()
    return result


def format_metrics(metrics: dict[str, float]) -> str:
    names = [("i_auroc", "I-AUROC"), ("p_auroc", "P-AUROC"), ("aupro", "AUPRO@0.3"), ("f1_max", "F1-max"),
             ("accuracy_at_threshold", "Acc@threshold")]
    rows = [(label, f"{metrics[k]:.4f}") for k, label in names if k in metrics]
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{w}}  {b}" for a, b in rows)

