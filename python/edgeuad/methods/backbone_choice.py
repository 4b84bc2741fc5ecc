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

With fewer than `MIN_HOLDOUT` held-out normal images the split cannot rank candidates (a handful of
images decides a 0.01 margin), so the cheapest candidate is kept; the report says so.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..backbones import WeightsUnavailableError
from ..selection import ValidationSet, validation_metrics
from .patch_features import PatchBankConfig, PatchModel

log = logging.getLogger(__name__)

__all__ = ["AUTO_MARGIN", "CANDIDATES", "MIN_HOLDOUT", "BackboneChoice", "choose_backbone", "pick"]

# cheapest first: Lite1/Lite2 are Lite0 scaled in depth (and width), ~1.2x / ~1.5x its compute here
CANDIDATES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
AUTO_MARGIN = 0.01
MIN_HOLDOUT = 10


@dataclass
class BackboneChoice:
    """What `choose_backbone` picked and why (`report` goes into the run and the bundle manifest)."""

    backbone: str
    report: dict[str, Any]
    model: PatchModel | None  # the winner's PatchCore (train-split bank): PatchCore reuses it as its model


def pick(aurocs: dict[str, float], margin: float = AUTO_MARGIN) -> tuple[str, float]:
    """(the cheapest candidate whose I-AUROC is within `margin` of the best, the best I-AUROC).
    aurocs: candidate name -> validation I-AUROC, for candidates of CANDIDATES (their order is the cost)."""
    unknown = sorted(set(aurocs) - set(CANDIDATES))
    if not aurocs or unknown:
        raise ValueError(f"aurocs must name candidates of {CANDIDATES}, got {sorted(aurocs)}")
    best = max(aurocs.values())
    return next(n for n in CANDIDATES if n in aurocs and aurocs[n] >= best - margin), best


def _proxy_config(cfg: PatchBankConfig, backbone: str) -> Any:
    from .patchcore import PatchCoreConfig

    shared = {f.name: getattr(cfg, f.name) for f in fields(PatchBankConfig)}
    return PatchCoreConfig(**{**shared, "backbone": backbone})


def choose_backbone(cfg: PatchBankConfig, images: np.ndarray, validation: ValidationSet | None,
                    validation_x: np.ndarray | None, progress: bool = False) -> BackboneChoice:
    """Pick the backbone for a patch method on the synthetic-defect split of its held-out normals.

    images: preprocessed training images (float32 N x 3 x H x W); validation / validation_x: the split
    and its preprocessed images (None when nothing was held out)."""
    from .patchcore import train_patchcore

    n_normal = 0 if validation is None else int((validation.labels == 0).sum())
    report: dict[str, Any] = {"rule": f"cheapest of {list(CANDIDATES)} within {AUTO_MARGIN} of the best "
                                      "synthetic-defect validation I-AUROC (blended + crack)",
                              "held_out_normals": n_normal, "candidates": {}}
    if validation is None or validation_x is None or n_normal < MIN_HOLDOUT:
        report["chosen"] = CANDIDATES[0]
        report["reason"] = (f"{n_normal} held-out normal images (< {MIN_HOLDOUT}): too few to rank backbones, "
                            "kept the cheapest")
        log.warning("backbone auto: %s", report["reason"])
        return BackboneChoice(CANDIDATES[0], report, None)
    models: dict[str, PatchModel] = {}
    for name in CANDIDATES:
        t0 = time.perf_counter()
        try:
            pm = train_patchcore(_proxy_config(cfg, name), images, progress=progress)
        except WeightsUnavailableError as e:  # a missing weight package: recorded, never silent
            report["candidates"][name] = {"unavailable": str(e)}
            log.warning("backbone auto: %s skipped: %s", name, e)
            continue
        maps, scores = pm.score_torch(validation_x)
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
    report["chosen"] = chosen
    report["reason"] = (f"validation I-AUROC {report['candidates'][chosen]['i_auroc']:.4f}, best {best:.4f}: "
                        f"the cheapest within {AUTO_MARGIN}")
    log.info("backbone auto: chose %s (%s)", chosen, report["reason"])
    return BackboneChoice(chosen, report, models[chosen])
