"""The pipeline, step by step: data -> method (train) -> bundle -> Detector -> metrics.

    run = train("recontrast", "data/bottle", "runs/bottle")        # torch (the `train` extra)
    bundle = export(run, "bundles/bottle")                          # ONNX + weights + thresholds
    report = evaluate(bundle, "data/bottle", "reports/bottle")     # runtime only (no torch)

`train` and `export` import torch (lazily, so `evaluate` and the runtime never do).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import data as _data
from .atomic import atomic_dir, atomic_write_bytes, remove_stale_temps
from .bundle import MANIFEST, Bundle, sha256_file, write_manifest
from .overrides import parse_overrides
from .preprocess import INPUT_NORMS, PreprocessConfig, preprocess
from .thresholds import from_labelled, from_normal_robust, from_normal_scores

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
RUN_WEIGHTS = "weights.safetensors"
# a patch run's bank without its held-out images (bank_includes_holdout): thresholds are calibrated on it
CALIBRATION_BANK = "calibration_bank"
TILE = 256  # px, longer side of each picture in eval's overlays.png


# ----------------------------------------------------------------------------- configs
def method_config(method: str, overrides: dict[str, Any] | None = None) -> Any:
    """Build the method's dataclass config from defaults + overrides; unknown keys are an error
    (a flag that silently never reaches the model is worse than a crash).  String values (`--set
    key=value`) are parsed by the field's type, with an error naming the field."""
    if method == "recontrast":
        from .methods.recontrast import ReContrastConfig as C
    elif method == "patchcore":
        from .methods.patchcore import PatchCoreConfig as C
    elif method == "reconpatch":
        from .methods.reconpatch import ReConPatchConfig as C
    else:
        raise ValueError(f"unknown method {method!r}; choose recontrast, reconpatch or patchcore")
    overrides = parse_overrides(C, overrides or {})
    base = C().to_dict()
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ValueError(f"unknown {method} config key(s) {unknown}; valid keys: {sorted(base)}")
    base.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return C.from_dict(base)
    except TypeError as e:  # a value of the wrong kind from the Python API, e.g. a list for a float
        raise ValueError(f"{method} config: {e} (overrides {overrides})") from e


def preprocess_for(cfg: Any) -> PreprocessConfig:
    """The network input a config asks for; input_norm "auto" starts from ImageNet's mean/std (training
    chooses, `methods.backbone_choice`, and the run records the chosen one)."""
    s = int(cfg.image_size)
    norm = getattr(cfg, "input_norm", "imagenet")
    mean, std = INPUT_NORMS["imagenet" if norm == "auto" else norm]
    return PreprocessConfig(size=(s, s), mean=mean, std=std)


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
          progress: bool = True, threads: int = 0) -> Run:
    """Train `method` on the normal images of `data`; keep `holdout_fraction` aside for thresholds.
    threads: torch CPU threads (0 = the CPUs this process may use, see `edgeuad.cpus`)."""
    import torch

    from .cpus import set_torch_threads

    # every input is checked (config, images, split) before the run folder exists: a failed
    # `train` leaves nothing behind
    cfg = method_config(method, overrides)
    pre = preprocess_for(cfg)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a folder")
    remove_stale_temps(out)  # checkpoint/weights temp files of a killed earlier run in this directory
    paths = normal_image_paths(data)
    # at least 2 held-out normals when the data allows it: the default (robust) threshold needs a spread
    train_paths, holdout = _data.split_holdout(paths, fraction=holdout_fraction, seed=int(cfg.seed),
                                               min_holdout=2 if len(paths) >= 3 and holdout_fraction > 0 else 1)
    log.info("%s: %d training images, %d held out for thresholds (%s)", method, len(train_paths), len(holdout), data)
    x, kept = load_array(train_paths, pre, progress=progress)
    set_torch_threads(torch, threads)
    new_dirs = [d for d in (*reversed(out.absolute().parents), out.absolute()) if not d.exists()]
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _train_into(method, cfg, pre, x, kept, holdout, data, out, progress)
    except BaseException:
        for d in reversed(new_dirs):  # nothing written: leave no empty folders that look like a run
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise


def _train_into(method: str, cfg: Any, pre: PreprocessConfig, x: np.ndarray, kept: Sequence[Path],
                holdout: Sequence[Path], data: str | os.PathLike, out: Path, progress: bool) -> Run:
    from .methods.common import seed_everything

    seed_everything(int(cfg.seed))
    t0 = time.perf_counter()
    state, config, selection, pre = _fit(method, cfg, x, out, progress, holdout, pre)
    seconds = time.perf_counter() - t0
    from safetensors.torch import save

    atomic_write_bytes(out / RUN_WEIGHTS, save({k: v.detach().contiguous().cpu() for k, v in state.items()}))
    run = Run(root=out, method=method, config=config, preprocess=pre,
              # absolute: export reads the held-out images later, maybe from another working directory
              holdout=[str(Path(p).resolve()) for p in holdout],
              info={"data": str(Path(data).resolve()), "n_train": len(kept), "train_seconds": round(seconds, 2)})
    if selection is not None:  # what label-free selection chose and why, what the bank covers (also in the manifest)
        run.info.update(selection)
    run.save()
    log.info("trained %s in %.1f s -> %s", method, seconds, out)
    return run


def _selection_split(holdout: Sequence[Path], cfg: Any, pre: PreprocessConfig) -> tuple[Any, np.ndarray | None]:
    """The label-free selection split of a run (`edgeuad.selection`: its held-out normals with blended and
    thin-crack copies) and its preprocessed images; (None, None) when nothing was held out."""
    if not holdout:
        return None, None
    from .selection import load_validation_set

    vs = load_validation_set(holdout, int(cfg.image_size), seed=int(cfg.seed))
    return vs, preprocess(vs.images, pre)


def _fit(method: str, cfg: Any, x: np.ndarray, out: Path, progress: bool, holdout: Sequence[Path],
         pre: PreprocessConfig
         ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None, PreprocessConfig]:
    """Train; return (state dict, the config that rebuilds the model from it, run.info additions or None:
    ReContrast's label-free selection report, a patch method's bank provenance; the preprocessing the
    model was trained with: `pre`, or the input normalisation backbone auto chose)."""
    if method == "recontrast":
        from .methods.recontrast import model_state
        from .methods.recontrast_train import fit_recontrast

        # synthetic defects pasted into the held-out normals pick BN mode, checkpoint and score
        vs, vx = _selection_split(holdout, cfg, pre)
        fit = fit_recontrast(cfg, x, out, validation=vs, validation_x=vx, progress=progress)
        report = None if fit.report is None else {"selection": fit.report}
        return model_state(fit.model), fit.config.to_dict(), report, pre
    choice = None
    if "auto" in (cfg.backbone, cfg.input_norm):
        from dataclasses import replace

        from .methods.backbone_choice import choose_backbone
        from .preprocess import renormalise

        choice = choose_backbone(cfg, x, *_selection_split(holdout, cfg, pre), progress=progress, pre=pre)
        cfg = replace(cfg, backbone=choice.backbone, input_norm=choice.input_norm)
        chosen = preprocess_for(cfg)
        if chosen != pre:  # the model is fitted (and the held-out images preprocessed) as the bundle will be
            x, pre = renormalise(x, pre, chosen), chosen
    report = None if choice is None else {"backbone_choice": choice.report}
    if method == "patchcore":
        from .methods.patchcore import train_patchcore

        # the winner's proxy IS this PatchCore (same config, same training images): not fitted twice
        if choice is not None and choice.model is not None:
            pm = choice.model
        else:
            pm = train_patchcore(cfg, x, progress=progress)
    else:
        from .methods.reconpatch import train_reconpatch

        pm = train_reconpatch(cfg, x, checkpoint_dir=out, progress=progress)
    if not (holdout and cfg.bank_includes_holdout):
        return pm.state_dict(), dict(pm.config), report, pre
    import torch

    from .methods.memory_bank import refit_bank

    # the held-out normals join the shipped bank; the bank without them stays in the run, and the
    # threshold is calibrated on it at export (there the held-out images are as unseen as a test image)
    xh, used = load_array(holdout, pre)
    full = refit_bank(pm, cfg, np.concatenate([x, xh]), progress=progress)
    state = full.state_dict()
    state[CALIBRATION_BANK] = torch.from_numpy(np.ascontiguousarray(pm.bank, dtype=np.float32))
    report = {**(report or {}),
              "bank": {"images": len(x) + len(xh), "calibration_images": len(x), "entries": len(full.bank),
                       "calibration_entries": len(pm.bank)}}
    return state, dict(full.config), report, pre


# ----------------------------------------------------------------------------- export
def export(run: Run | str | os.PathLike, bundle_dir: str | os.PathLike, threads: int = 0,
           validation: str | os.PathLike | None = None, quantile: float = 0.99, parity_images: int = 4,
           progress: bool = False, threshold_rule: str = "robust", fpr: float = 0.01,
           cpu_int8_calib: str | os.PathLike | None = None, int8_fp32_first: int = 2,
           int8_max_drop: float | None = None) -> Bundle:
    """Write a verified bundle: ONNX (parity-checked against torch), weights, bank, thresholds.

    cpu_int8_calib: normal images (folder or MVTec root) -> the bundle's graph is the int8 one for
    onnxruntime on the CPU (export/quantize.py, target "onnxruntime"; its first `int8_fp32_first` convs
    stay fp32): the fp32 graph is parity-checked against torch first, then quantised, and the
    thresholds come from the int8 pipeline itself.  Recorded in the manifest's `quantization.cpu_int8`.
    int8_max_drop: the validation I-AUROC the int8 graph may lose on the run's synthetic-defect split
    (quantize_check; default its MAX_DROP, 0.005); more raises Int8AccuracyError and writes nothing.

    threshold_rule: "robust" (median + z(1-fpr) * 1.4826 * MAD of the held-out normal scores) or
    "quantile" (their `quantile`); a labelled `validation` folder overrides both (F1-optimal).
    threads: CPU threads of torch and onnxruntime here (0 = the CPUs this process may use).

    The whole bundle is built in a temporary directory beside `bundle_dir` and swapped in with one
    rename when it is complete and loads (atomic.atomic_dir): a killed or failed export leaves the
    previous bundle exactly as it was, and its temporary directory is removed by the next export.
    An existing `bundle_dir` must be a bundle (or empty): anything else is refused, never replaced.
    """
    if threshold_rule not in ("robust", "quantile"):
        raise ValueError(f"threshold_rule must be 'robust' or 'quantile', got {threshold_rule!r}")
    import torch
    from safetensors.torch import load_file

    from .cpus import set_torch_threads
    from .export.onnx import check_parity, export_onnx
    from .methods.registry import load_trained, spec_for

    run = run if isinstance(run, Run) else Run.load(run)
    if int8_max_drop is not None and not math.isfinite(float(int8_max_drop)):
        raise ValueError(f"int8_max_drop must be a finite number, got {int8_max_drop!r}")
    if cpu_int8_calib is not None:  # before minutes of export work: a wrong folder fails now
        from .export.calibration import calibration_images

        try:
            calibration_images(cpu_int8_calib)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"INT8 calibration images (--calib): {e}") from e
    set_torch_threads(torch, threads)
    out = _replaceable_bundle_dir(Path(bundle_dir))
    remove_stale_temps(out.parent, name=out.name)
    state = load_file(str(run.root / RUN_WEIGHTS))
    calibration_bank = state.pop(CALIBRATION_BANK, None)  # see PatchBankConfig.bank_includes_holdout
    trained, cfg = load_trained(run.method, state, run.config)
    spec = spec_for(run.method, trained, cfg)
    holdout = [Path(p) for p in run.holdout if Path(p).exists()]
    if not holdout:
        raise ValueError(f"run {run.root} has no readable held-out normal images: cannot set a threshold")
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory(prefix="edgeuad-export-") as scratch:
        export_onnx(spec.module, tmp / "model.onnx", run.preprocess.size, spec.output_names)
        if calibration_bank is None:
            shutil.copyfile(run.root / RUN_WEIGHTS, tmp / "weights.safetensors")
        else:  # the bundle carries the shipped model only
            from safetensors.torch import save_file

            save_file(state, str(tmp / "weights.safetensors"))
        files = ["model.onnx", "weights.safetensors"]

        xh, holdout = load_array(holdout, run.preprocess)
        rep = check_parity(spec.module, tmp / "model.onnx", xh[:parity_images], spec.output_names, threads=threads)
        log.info("ONNX parity vs torch: worst max abs diff %.2e (atol %.0e + rtol %.0e)", rep.worst, rep.atol, rep.rtol)
        quantization = None
        if cpu_int8_calib is not None:
            fp32_graph = Path(scratch) / "model.fp32.onnx"  # kept out of the bundle, for the check below
            quantization = _quantize_for_cpu(tmp / "model.onnx", fp32_graph, cpu_int8_calib, run.preprocess,
                                             int8_fp32_first)

        if spec.postprocess["kind"] == "nn_l2":
            from .runtime.bank import Bank

            def write_bank(entries: np.ndarray) -> None:
                # the Eq. 10 neighbour table is built once here and shipped, not on the Detector's first frame
                Bank.build(np.ascontiguousarray(entries, dtype=np.float32),
                           neighbor_b=int(spec.postprocess["reweight_b"])).save(tmp / spec.postprocess["bank"])

            # thresholds are calibrated on the bank the held-out images are not in
            write_bank(trained.bank if calibration_bank is None else calibration_bank.numpy())
            files.append(spec.postprocess["bank"])

        manifest: dict[str, Any] = {
            "method": run.method,
            "backbone": run.config.get("backbone", "efficientnet_lite0"),
            "preprocess": run.preprocess.to_dict(),
            "model": {"onnx": "model.onnx", "input": "image", "outputs": spec.output_names, "opset": 17,
                      "weights": "weights.safetensors", "config": run.config,
                      "parity": {"max_abs": rep.max_abs, "atol": rep.atol, "rtol": rep.rtol,
                                 # present when float32 itself was the limit (export.onnx.check_parity)
                                 **({"float32_error_vs_float64": rep.float32_error} if rep.float32_error else {})}},
            "postprocess": spec.postprocess,
            # placeholder until the deployed pipeline has scored the held-out images; only this
            # temporary directory ever holds it, and loading it needs allow_provisional=True
            "thresholds": {"threshold": 0.0, "min": 0.0, "max": 1.0, "source": "provisional"},
            "training": run.info,
            "files": {f: "" for f in files},
            **({"quantization": quantization} if quantization else {}),
        }
        write_manifest(tmp, manifest)

        # Thresholds come from the deployed pipeline itself (ONNX + runtime maps), on held-out normals.
        from .detector import Detector

        with Detector(tmp, backend="onnxruntime", threads=threads, allow_provisional=True) as det:
            normal = _scores(det, holdout)
            if validation is not None:
                vs, vl = [], []
                for s in _data.list_mvtec(validation, "test"):
                    vs.append(s.path)
                    vl.append(s.label)
                th = from_labelled(_scores(det, vs), vl)
            else:
                th = (from_normal_robust(normal, fpr=fpr) if threshold_rule == "robust"
                      else from_normal_scores(normal, quantile=quantile))
        manifest["thresholds"] = th.to_dict()
        # which scores the threshold came from, per image (an ensemble of bundles whose banks hold
        # these images normalises with these scores, see ensemble_build)
        manifest["training"] = {**run.info, "calibration": {
            "bank": "shipped" if calibration_bank is None else "without_holdout",
            "images": [str(Path(p).resolve()) for p in holdout], "sha256": [sha256_file(Path(p)) for p in holdout],
            "scores": [float(v) for v in normal]}}
        if quantization is not None:  # label-free accuracy check, on the bank the held-out images are not in
            from .quantize_check import MAX_DROP, check_int8

            write_manifest(tmp, manifest)
            quantization["cpu_int8"]["validation"] = check_int8(
                tmp, fp32_graph, holdout, seed=int(run.config.get("seed", 0)), threads=threads,
                max_drop=MAX_DROP if int8_max_drop is None else float(int8_max_drop),
                output_rel_error=quantization["cpu_int8"].get("output_rel_error"))
        if calibration_bank is not None:
            write_bank(trained.bank)  # the shipped bank: every normal image
        write_manifest(tmp, manifest)
        Bundle.load(tmp)  # what is published must load as it is
    log.info("bundle %s: threshold %.4g (%s, %d normal images)", out, th.threshold, th.source, len(normal))
    return Bundle.load(out)


def _quantize_for_cpu(graph: Path, fp32: Path, calib: str | os.PathLike, pre_cfg: Any,
                      fp32_first: int) -> dict[str, Any]:
    """Move the (parity-checked) fp32 graph at `graph` to `fp32` (outside the bundle) and write its
    onnxruntime int8 graph at `graph`; returns the manifest's `quantization` section."""
    from .export.calibration import calibration_batches
    from .export.quantize import insert_qdq

    shutil.move(graph, fp32)
    report = insert_qdq(fp32, graph, calibration_batches(calib, pre_cfg), fp32_first=fp32_first, target="onnxruntime")
    record = report.to_dict()
    record.update(onnx_in="model.onnx (fp32, parity-checked against torch before quantisation)",
                  onnx_out=graph.name, calibration=str(Path(calib).resolve()),
                  calibration_images=report.num_calibration_samples)  # the images read, unreadable ones skipped
    return {"cpu_int8": record}


def _replaceable_bundle_dir(out: Path) -> Path:
    """`out` resolved; refuses a file or a non-empty directory that is not a bundle (an export must
    never delete a user's files).  A previous bundle is replaced whole; extra files in it are named."""
    if out.is_symlink():
        out = out.resolve()
    if not os.path.lexists(out):
        return out
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory: choose another bundle directory")
    entries = sorted(p.name for p in out.iterdir())
    if entries and MANIFEST not in entries:
        raise FileExistsError(f"{out} is not empty and is not an edgeuad bundle (no {MANIFEST}): "
                              "refusing to replace it; choose an empty or new directory")
    if entries:
        try:
            old = json.loads((out / MANIFEST).read_text())
            listed = set(old.get("files", {}))
            listed |= {e.get("dir") for e in old.get("postprocess", {}).get("members", [])}  # an ensemble's
        except (ValueError, OSError, AttributeError, TypeError):
            listed = set()
        extra = [e for e in entries if e != MANIFEST and e not in listed]
        if extra:
            log.warning("replacing bundle %s: files not in its manifest are dropped with it: %s", out, extra)
    return out


# ----------------------------------------------------------------------------- ensemble
def ensemble(bundles: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
             normal_images: Sequence[str | os.PathLike] | str | os.PathLike | None = None, *,
             runs: Sequence[Run | str | os.PathLike] | None = None, fpr: float = 0.01,
             backend: str = "onnxruntime", threads: int = 0, check: bool = True) -> Bundle:
    """Combine finished bundles into one ensemble bundle (ReConPatch Eq. 11: mean of the members'
    modified z-scores, see runtime/ensemble.py) that `Detector` scores like any other.

    The members' median/MAD and the ensemble's threshold come from NORMAL images none of the members
    trained on: give either `runs` (the members' training runs: the images held out by every one of
    them are used) or `normal_images` (a folder or list of images you know are held out).  Which one
    is recorded in the manifest.  Raises EnsembleError (a ValueError) for unusable inputs.

    check (with `runs`): also score the members alone and combined on the runs' synthetic-defect split
    (`ensemble_check`), log whether the ensemble beats its best member there and record it in the
    manifest's `training.validation`; it never changes the bundle's scores or threshold."""
    from .ensemble_build import build_ensemble
    from .runtime.ensemble import EnsembleError

    if (runs is None) == (normal_images is None):
        raise EnsembleError("give exactly one of runs (their shared held-out images) or normal_images")
    if runs is not None:
        loaded = [r if isinstance(r, Run) else Run.load(r) for r in runs]
        paths = holdout_intersection(loaded)
        provenance: dict[str, Any] = {"source": "runs_holdout", "runs": [str(r.root.resolve()) for r in loaded]}
    elif isinstance(normal_images, (str, os.PathLike)):
        try:
            paths = _data.list_folder(normal_images)
        except FileNotFoundError as e:
            raise EnsembleError(f"normal images: {e}") from e
        provenance = {"source": "user_heldout", "dir": str(Path(normal_images).resolve())}
    else:
        paths = [Path(p) for p in normal_images]
        provenance = {"source": "user_heldout"}
    if not paths:
        raise EnsembleError("the normal image set is empty")
    out = _replaceable_bundle_dir(Path(out_dir))
    remove_stale_temps(out.parent, name=out.name)
    validation = None
    if runs is not None and check:
        from safetensors.numpy import load_file

        from .ensemble_check import check as check_members

        members = [Bundle.load(b) for b in bundles]
        own = [b.method == r.method and b.manifest.get("model", {}).get("config") == r.config
               for b, r in zip(members, loaded)]
        if len(loaded) == len(members) and all(own):
            banks = [load_file(str(r.root / RUN_WEIGHTS)).get(CALIBRATION_BANK) for r in loaded]
            validation = check_members([b.root for b in members], banks, paths,
                                       seed=int(loaded[0].config.get("seed", 0)), backend=backend, threads=threads)
        else:  # the check scores each member with its own run's bank without the held-out images
            log.warning("the runs are not the bundles' own runs one to one, in order (method and config): the "
                        "ensemble is not checked against its members on the synthetic-defect split")
    return build_ensemble([Path(b) for b in bundles], out, paths, provenance, fpr=fpr, backend=backend,
                          threads=threads, validation=validation)


def holdout_intersection(runs: Sequence[Run]) -> list[Path]:
    """The held-out normal images shared by every run (none of them trained on these), in the first
    run's order; images that no longer exist are left out.  EnsembleError when nothing is shared."""
    from .runtime.ensemble import EnsembleError

    if not runs:
        raise EnsembleError("no runs given")
    shared = set.intersection(*({Path(p).resolve() for p in r.holdout} for r in runs))
    paths = [Path(p).resolve() for p in runs[0].holdout if Path(p).resolve() in shared]
    missing = [p for p in paths if not p.exists()]
    if missing:
        log.warning("%d shared held-out images no longer exist and are left out (first: %s)", len(missing), missing[0])
    paths = [p for p in paths if p.exists()]
    if not paths:
        raise EnsembleError(f"the {len(runs)} runs share no (existing) held-out image: train them on the same "
                            "data with the same seed and holdout fraction, or pass held-out images explicitly")
    log.info("%d held-out normal images shared by %d runs", len(paths), len(runs))
    return paths


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
             overlays: int = 16, expected_digest: str | None = None) -> EvalResult:
    """Score an MVTec-layout test split with the Detector (runtime only) and compute the metrics.
    expected_digest: refuse any bundle but that one (sha256 of its manifest.json)."""
    from tqdm import tqdm

    from .detector import Detector
    from .metrics import auroc_per_group, summarize
    from . import viz

    det = Detector(bundle, backend=backend, threads=threads, expected_digest=expected_digest)
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
                         "severity": det.severity(r.score), "normalized": r.normalized,
                         "is_anomaly": r.is_anomaly})
            if have_masks:
                import cv2

                maps.append(cv2.resize(r.raw_map, (size[1], size[0]), interpolation=cv2.INTER_LINEAR))
                masks.append(_data.read_mask(s.mask_path, size) if s.mask_path is not None
                             else np.zeros(size, bool) if s.label == 0 else None)
            if out_dir is not None and len(gallery.setdefault(s.defect, [])) < per_class:
                # ground truth outlined (white) where a mask exists, tiles drawn at TILE px
                gt = _data.read_mask(s.mask_path, img.shape[:2]) if s.mask_path is not None else None
                lines = viz.verdict_lines(f"{s.defect}/{Path(s.path).name}", r.score, det.severity(r.score),
                                          r.is_anomaly)
                gallery[s.defect].append(viz.panel(img, r.anomaly_map, lines, ok=not r.is_anomaly, mask=gt,
                                                   longest=TILE))
    seconds = time.perf_counter() - t0
    if not rows:
        det.close()
        raise ValueError(f"no readable test images in {data}/test: "
                         + (f"all {skipped} image files could not be read (see the warnings above)" if skipped
                            else "the folder holds no images"))
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
    if y.size and (y == 0).any() and (y == 1).any():
        metrics.update({f"i_auroc/{k}": v for k, v in
                        auroc_per_group(y, np.asarray(scores), [r["defect"] for r in rows]).items()})
    metrics["n_images"] = float(len(rows))
    metrics["n_skipped"] = float(skipped)
    result = EvalResult(metrics=metrics, per_image=rows, seconds=seconds,
                        latency_ms_mean=float(np.mean(lat)) if lat else 0.0)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "metrics.json", (json.dumps(
            {"metrics": metrics, "bundle": str(bundle), "data": str(data), "backend": det.backend_name,
             "seconds": seconds, "latency_ms_mean": result.latency_ms_mean}, indent=2) + "\n").encode())
        atomic_write_bytes(out / "scores.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
        if gallery:
            tiles = [t for cls in sorted(gallery) for t in gallery[cls]]
            cell = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
            viz.write_png(out / "overlays.png", viz.with_colorbar(viz.grid(tiles, cols=per_class, cell=cell),
                                                                  threshold=0.5, title="norm"))
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
    rows += [(f"I-AUROC {k.split('/', 1)[1]}", f"{v:.4f}") for k, v in sorted(metrics.items())
             if k.startswith("i_auroc/")]
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{w}}  {b}" for a, b in rows)

