"""Label-free backbone choice for the patch methods: `backbone="auto"` (their default).

Which ImageNet backbone describes a surface best depends on the data (on magnetic_tile's thin cracks
EfficientNet-Lite2 separates the synthetic-defect split better than Lite0; on bottle all three are
perfect), and a user has normal images only.  So the choice is made like every other label-free choice
here (`edgeuad.selection`): on the held-out normal images and their synthetic defective copies
(blended defects + thin cracks), never on real defects.

For each candidate, cheapest first, a PatchCore bank with the run's own patch settings (layers,
aggregation, coreset, reweighting, blur) is fitted on the training images and scores the split; the
cheapest candidate whose I-AUROC is within `AUTO_MARGIN` of the best wins.  The margin trades accuracy
for speed the way the project's ablations did (an option was adopted at >= +0.010 validation I-AUROC).
ReConPatch's choice uses the same PatchCore proxy: its features are trained on top of the backbone, and
training it three times would triple an already longer run.

The input normalisation is chosen the same way (`input_norm="auto"`, the default): a candidate is a
(backbone, normalisation) pair, ImageNet's mean/std or the inception-style (x - 127) / 128 the
EfficientNet-Lite weights were trained with; at equal cost ImageNet comes first, so inception is kept only
when it beats every cheaper pair by the margin.  Which one describes a surface better depends on the data
(benchmarks/plans/input_normalisation_2026-12-04.md: on bottle's synthetic defects ImageNet's, on
magnetic_tile's inception).  A pair is scored on the same images, renormalised exactly
(`preprocess.renormalise`).  A named backbone with input_norm "auto" chooses the normalisation only; a
backbone that is not an EfficientNet-Lite keeps ImageNet's.

With fewer than `MIN_HOLDOUT` held-out normal images the split cannot rank candidates (a handful of
images decides a 0.01 margin), so the cheapest candidate is kept; the report says so.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

import numpy as np

from ..backbones import WeightsUnavailableError
from ..preprocess import INPUT_NORMS, PreprocessConfig, renormalise
from ..selection import ValidationSet, validation_metrics
from .patch_features import PatchBankConfig, PatchModel

log = logging.getLogger(__name__)

__all__ = ["AUTO_MARGIN", "CANDIDATES", "MIN_HOLDOUT", "NORMS", "ORDER", "BackboneChoice", "candidate_name",
           "candidates_for", "choose_backbone", "pick"]

# cheapest first: Lite1/Lite2 are Lite0 scaled in depth (and width), ~1.2x / ~1.5x its compute here
CANDIDATES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# at equal cost, ImageNet's mean/std (every run before input_norm existed) first
NORMS = ("imagenet", "inception")
AUTO_MARGIN = 0.01
MIN_HOLDOUT = 10


def candidate_name(backbone: str, norm: str) -> str:
    """A candidate's key in the report: the backbone's name, suffixed "/<norm>" unless ImageNet's."""
    return backbone if norm == "imagenet" else f"{backbone}/{norm}"


# every candidate of the automatic choice, in the rule's order (the cost)
ORDER = tuple(candidate_name(b, n) for b in CANDIDATES for n in NORMS)


def candidates_for(cfg: PatchBankConfig) -> list[tuple[str, str]]:
    """The (backbone, normalisation) pairs a config leaves open, cheapest first."""
    backbones = CANDIDATES if cfg.backbone == "auto" else (cfg.backbone,)
    out = []
    for b in backbones:
        if cfg.input_norm != "auto":
            norms: Sequence[str] = (cfg.input_norm,)
        else:  # the inception-style scaling is the EfficientNet-Lite weights' own; other weights keep ImageNet's
            norms = NORMS if b.startswith("efficientnet_lite") else ("imagenet",)
        out += [(b, n) for n in norms]
    return out


@dataclass
class BackboneChoice:
    """What `choose_backbone` picked and why (`report` goes into the run and the bundle manifest)."""

    backbone: str
    report: dict[str, Any]
    model: PatchModel | None  # the winner's PatchCore (train-split bank): PatchCore reuses it as its model
    input_norm: str = "imagenet"


def pick(aurocs: dict[str, float], margin: float = AUTO_MARGIN) -> tuple[str, float]:
    """(the cheapest candidate whose I-AUROC is within `margin` of the best, the best I-AUROC).
    aurocs: candidate name (`candidate_name`) -> validation I-AUROC, for candidates of ORDER (their
    order is the cost)."""
    unknown = sorted(set(aurocs) - set(ORDER))
    if not aurocs or unknown:
        raise ValueError(f"aurocs must name candidates of {ORDER}, got {sorted(aurocs)}")
    best = max(aurocs.values())
    return next(n for n in ORDER if n in aurocs and aurocs[n] >= best - margin), best


def _proxy_config(cfg: PatchBankConfig, backbone: str, norm: str) -> Any:
    from .patchcore import PatchCoreConfig

    shared = {f.name: getattr(cfg, f.name) for f in fields(PatchBankConfig)}
    return PatchCoreConfig(**{**shared, "backbone": backbone, "input_norm": norm})


def choose_backbone(cfg: PatchBankConfig, images: np.ndarray, validation: ValidationSet | None,
                    validation_x: np.ndarray | None, progress: bool = False,
                    pre: PreprocessConfig | None = None) -> BackboneChoice:
    """Pick the backbone and input normalisation the config leaves open ("auto") for a patch method, on
    the synthetic-defect split of its held-out normals.

    images: preprocessed training images (float32 N x 3 x H x W); validation / validation_x: the split
    and its preprocessed images (None when nothing was held out); pre: how images and validation_x were
    preprocessed (default: ImageNet mean/std at the config's size)."""
    from .patchcore import train_patchcore

    pairs = candidates_for(cfg)
    names = [candidate_name(b, n) for b, n in pairs]
    n_normal = 0 if validation is None else int((validation.labels == 0).sum())
    report: dict[str, Any] = {"rule": f"cheapest of {names} within {AUTO_MARGIN} of the best "
                                      "synthetic-defect validation I-AUROC (blended + crack)",
                              "held_out_normals": n_normal, "candidates": {}}
    if len(pairs) == 1 or validation is None or validation_x is None or n_normal < MIN_HOLDOUT:
        b, n = pairs[0]
        report.update(chosen=b, input_norm=n)
        report["reason"] = ("the only candidate" if len(pairs) == 1 else
                            f"{n_normal} held-out normal images (< {MIN_HOLDOUT}): too few to rank backbones, "
                            "kept the cheapest")
        if len(pairs) > 1:
            log.warning("backbone auto: %s", report["reason"])
        return BackboneChoice(b, report, None, n)
    size = int(cfg.image_size)
    src = pre or PreprocessConfig(size=(size, size))
    inputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    models: dict[str, PatchModel] = {}
    missing: dict[str, str] = {}
    for (b, n), name in zip(pairs, names):
        if b in missing:
            report["candidates"][name] = {"unavailable": missing[b]}
            continue
        if n not in inputs:  # the same frames, renormalised exactly (no second decode and resize)
            mean, std = INPUT_NORMS[n]
            dst = replace(src, mean=mean, std=std)
            inputs[n] = ((images, validation_x) if dst == src else
                         (renormalise(images, src, dst), renormalise(validation_x, src, dst)))
        x, vx = inputs[n]
        t0 = time.perf_counter()
        try:
            pm = train_patchcore(_proxy_config(cfg, b, n), x, progress=progress)
        except WeightsUnavailableError as e:  # a missing weight package: recorded, never silent
            missing[b] = str(e)
            report["candidates"][name] = {"unavailable": str(e)}
            log.warning("backbone auto: %s skipped: %s", name, e)
            continue
        maps, scores = pm.score_torch(vx)
        m = validation_metrics(validation, scores, list(maps))
        models[name] = pm
        report["candidates"][name] = {k: round(float(v), 4) for k, v in m.items() if k != "n_images"}
        report["candidates"][name]["seconds"] = round(time.perf_counter() - t0, 1)
        log.info("backbone auto: %s validation I-AUROC %.4f (blended %.4f, crack %.4f)", name, m["i_auroc"],
                 m.get("i_auroc_blended", float("nan")), m.get("i_auroc_crack", float("nan")))
    if not models:
        raise WeightsUnavailableError(f"backbone auto: no candidate's ImageNet weights are installed "
                                      f"({report['candidates']}); install the `train` extra or name a backbone")
    chosen, best = pick({n: report["candidates"][n]["i_auroc"] for n in models})
    b, n = pairs[names.index(chosen)]
    report.update(chosen=b, input_norm=n)
    report["reason"] = (f"validation I-AUROC {report['candidates'][chosen]['i_auroc']:.4f}, best {best:.4f}: "
                        f"the cheapest within {AUTO_MARGIN}")
    log.info("backbone auto: chose %s (%s)", chosen, report["reason"])
    return BackboneChoice(b, report, models[chosen], n)
