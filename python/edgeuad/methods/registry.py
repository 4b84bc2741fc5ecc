"""One place that knows, per method, what gets exported and how it is rebuilt from weights.

The ONNX export, the torch backend and the torch reference all go through `export_module`,
so the graph that ships is the module that was checked.  No `eval()` of names: a dict.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..bundle import Bundle

METHOD_NAMES = ("recontrast", "patchcore", "reconpatch")


class PairsExport(nn.Module):
    """ReContrast for export: input image -> flat tuple (enc_0..enc_{n-1}, dec_0..dec_{n-1}) of the
    map's levels only (a level left out of the map is not computed by the shipped graph)."""

    def __init__(self, model: nn.Module, levels: tuple[int, ...] = (1, 2, 3)) -> None:
        super().__init__()
        self.model = model
        self.levels = tuple(levels)

    def forward(self, x: torch.Tensor):  # noqa: D102
        enc, dec = self.model(x, self.levels)
        return tuple(enc) + tuple(dec)


class EmbeddingExport(nn.Module):
    """Patch methods for export: input image -> (B, h*w, D) patch embeddings (the bank lives outside)."""

    def __init__(self, embedder: nn.Module) -> None:
        super().__init__()
        self.embedder = embedder

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.embedder(x)


@dataclass
class ExportSpec:
    module: nn.Module                 # eval-mode module to export
    output_names: list[str]
    postprocess: dict[str, Any]       # manifest "postprocess" section (without thresholds)


def recontrast_spec(model: nn.Module, cfg: Any) -> ExportSpec:
    from .recontrast import resolved_levels, resolved_score

    # only the map's levels are exported: with levels 2,3 the graph has no stride-4 decoder stage and
    # no level-1 heads (bundles written before this weighed the dropped pairs 0; the runtime reads both)
    levels = resolved_levels(cfg)
    names = list(model.pair_names(levels))
    outputs = [f"enc_{n}" for n in names] + [f"dec_{n}" for n in names]
    post = {
        "kind": "cos_pairs",
        "pairs": [[f"enc_{n}", f"dec_{n}"] for n in names],
        "weights": [1.0] * len(names),
        "align_corners": True,
        "sigma": float(cfg.sigma),
        "score": resolved_score(cfg),   # never "auto" in a bundle: the runtime needs the rule
        "topk_frac": float(cfg.topk_frac),
    }
    return ExportSpec(PairsExport(model, levels).eval(), outputs, post)


def patch_spec(pm: Any) -> ExportSpec:
    cfg = pm.config
    post = {
        "kind": "nn_l2",
        "embedding": "embeddings",
        "grid": [int(pm.grid[0]), int(pm.grid[1])],
        "bank": "bank.euab",
        "reweight_b": int(pm.reweight_b),
        "align_corners": True,
        "sigma": float(cfg.get("sigma", 4.0)),
        "score": "max",
        "topk_frac": float(cfg.get("topk_frac", 0.01)),
    }
    return ExportSpec(EmbeddingExport(pm.embedder).eval(), ["embeddings"], post)


def spec_for(method: str, trained: Any, cfg: Any = None) -> ExportSpec:
    if method == "recontrast":
        return recontrast_spec(trained, cfg)
    if method in ("patchcore", "reconpatch"):
        return patch_spec(trained)
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHOD_NAMES)}")


def _load_recontrast(state: dict[str, torch.Tensor], config: dict[str, Any]) -> tuple[nn.Module, Any]:
    from .recontrast import ReContrastConfig, load_model

    cfg = ReContrastConfig.from_dict(config)
    return load_model(state, cfg).eval(), cfg


def _load_patch(state: dict[str, torch.Tensor], config: dict[str, Any]) -> tuple[Any, Any]:
    from .patch_features import load_patch_model

    pm = load_patch_model(state, config)
    return pm, pm.config


LOADERS: dict[str, Callable[[dict[str, torch.Tensor], dict[str, Any]], tuple[Any, Any]]] = {
    "recontrast": _load_recontrast,
    "patchcore": _load_patch,
    "reconpatch": _load_patch,
}


def load_trained(method: str, state: dict[str, torch.Tensor], config: dict[str, Any]) -> tuple[Any, Any]:
    if method not in LOADERS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHOD_NAMES)}")
    return LOADERS[method](state, config)


def load_from_bundle(bundle: Bundle) -> tuple[Any, Any]:
    """Rebuild the trained torch object (model or PatchModel) from a bundle's safetensors weights."""
    from safetensors.torch import load_file

    state = load_file(str(bundle.file(bundle.model["weights"])))
    config = bundle.model["config"]
    return load_trained(bundle.method, state, config)


def load_export_module(bundle: Bundle) -> nn.Module:
    trained, cfg = load_from_bundle(bundle)
    return spec_for(bundle.method, trained, cfg).module
