"""ReContrast's map levels: the configuration, the label-free choice at the kept checkpoint, and a bundle
whose map leaves level 1 out (weights 0 in the manifest) scoring as the torch reference does."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeuad.methods.recontrast import (LEVELS_MARGIN, ReContrastConfig, anomaly_map_torch, level_weights,
                                        resolved_levels)
from edgeuad.methods.recontrast_train import _Validator, fit_recontrast

from test_recontrast import SIZE, _cfg, _images  # noqa: E402
from test_recontrast_train import _validation  # noqa: E402

NAMES = [f"l{k}_{side}" for side in ("frozen", "train") for k in (1, 2, 3)]


def test_levels_config_and_weights() -> None:
    assert resolved_levels(_cfg()) == (1, 2, 3)                      # "auto" undecided: the official three
    assert resolved_levels(_cfg(levels="2,3")) == (2, 3)
    assert level_weights(_cfg(levels="2,3"), NAMES) == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert level_weights(_cfg(levels="1,2,3"), NAMES) == [1.0] * 6
    for bad in ("1,3", "3", "", "all"):
        with pytest.raises(ValueError, match="levels"):
            _cfg(levels=bad)
    # a configuration written before the field existed reads as "auto" -> all three levels
    old = _cfg().to_dict()
    del old["levels"]
    assert resolved_levels(ReContrastConfig.from_dict(old)) == (1, 2, 3)


def _fake_levels(monkeypatch: pytest.MonkeyPatch, by_levels: dict[str, float]) -> list[Any]:
    calls: list[Any] = []

    def fake(self: _Validator, model: Any, levels: str | None = None) -> dict[str, float]:
        calls.append(levels)
        v = by_levels[levels or "1,2,3"]
        return {"i_auroc_max": v, "i_auroc_topk_mean": v, "p_auroc": 0.5}

    monkeypatch.setattr(_Validator, "__call__", fake)
    return calls


@pytest.mark.parametrize("deep,chosen", [(0.70 + LEVELS_MARGIN + 1e-6, "2,3"), (0.70 + LEVELS_MARGIN / 2, "1,2,3"),
                                         (0.60, "1,2,3")])
def test_auto_levels_choose_the_deep_levels_only_past_the_margin(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deep: float, chosen: str) -> None:
    vs, vx = _validation()
    calls = _fake_levels(monkeypatch, {"1,2,3": 0.70, "2,3": deep})
    fit = fit_recontrast(_cfg(iterations=2, encoder_bn="train", select_every=1), _images(), tmp_path,
                         validation=vs, validation_x=vx, progress=False)
    assert calls[-1] == "2,3"                                # the deep levels scored once, after the curve ...
    assert all(c is None for c in calls[:-1])               # ... whose kept entry gives all three levels' score
    rep = fit.report["levels"]
    assert rep["levels"] == chosen == fit.config.levels
    assert rep["val_i_auroc"] == {"1,2,3": 0.70, "2,3": round(deep, 6)}


def test_levels_set_or_without_validation_are_not_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fit = fit_recontrast(_cfg(iterations=2, encoder_bn="train"), _images(), tmp_path / "a", progress=False)
    assert fit.config.levels == "1,2,3" and fit.report["levels"]["how"].startswith("no validation")
    vs, vx = _validation()
    calls = _fake_levels(monkeypatch, {"1,2,3": 0.9, "2,3": 0.1})
    fit = fit_recontrast(_cfg(iterations=2, encoder_bn="train", select_every=1, levels="2,3"), _images(),
                         tmp_path / "b", validation=vs, validation_x=vx, progress=False)
    assert fit.config.levels == "2,3" and fit.report["levels"]["how"] == "set in the configuration"
    assert calls == [None, None]                            # the curve scored the configured levels


def test_real_validator_scores_the_chosen_levels(tmp_path: Path) -> None:
    vs, vx = _validation(2)
    cfg = _cfg(iterations=1, encoder_bn="train", select_every=1)
    fit = fit_recontrast(cfg, _images(), tmp_path, validation=vs, validation_x=vx, progress=False)
    v = _Validator(vs, vx, cfg, torch.device("cpu"))
    from edgeuad.selection import validation_metrics

    with torch.no_grad():
        enc, dec = fit.model(torch.from_numpy(vx))
        _, mx, _ = anomaly_map_torch(enc, dec, SIZE, weights=[0, 1, 1, 0, 1, 1])
    assert v(fit.model, "2,3")["i_auroc_max"] == validation_metrics(vs, mx.double().numpy())["i_auroc"]
    key = {"max": "i_auroc_max", "topk_mean": "i_auroc_topk_mean"}[fit.config.score]
    assert fit.report["levels"]["val_i_auroc"] == {"1,2,3": round(v(fit.model, "1,2,3")[key], 6),
                                                   "2,3": round(v(fit.model, "2,3")[key], 6)}


def test_bundle_without_level_one_scores_as_the_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Train (2 iterations, levels 2,3), export, and score with the runtime Detector: the bundle leaves
    level 1 out and the Detector's score equals the torch reference map with level 1 weighed 0."""
    from edgeuad import api
    from edgeuad.detector import Detector
    from edgeuad.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "d", n_train=8, n_test_good=1, n_test_defect=1, size=64, seed=2)
    run = api.train("recontrast", data, tmp_path / "run", overrides={
        "image_size": 64, "iterations": 2, "batch_size": 4, "pretrained": False, "encoder_bn": "train",
        "levels": "2,3"}, holdout_fraction=0.25, progress=False, threads=1)
    bundle = api.export(run, tmp_path / "bundle", threads=1)
    # the shipped graph computes levels 2,3 only: no level-1 outputs, no stride-4 decoder stage
    assert bundle.manifest["postprocess"]["pairs"] == [[f"enc_l{k}_{s}", f"dec_l{k}_{s}"]
                                                       for s in ("frozen", "train") for k in (2, 3)]
    assert bundle.manifest["postprocess"]["weights"] == [1.0] * 4
    import onnx

    graph = onnx.load(str(bundle.onnx_path)).graph
    assert sorted(o.name for o in graph.output) == sorted(sum(bundle.manifest["postprocess"]["pairs"], []))
    shapes = [tuple(t.dims) for t in graph.initializer]
    c1, c2, c3 = (24, 40, 112)                              # lite0's channels
    assert (c3, c2, 2, 2) in shapes                         # the stride-8 stage's 2x2 transposed conv ...
    assert (c2, c1, 2, 2) not in shapes                     # ... but none of the stride-4 stage
    frame = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    det = Detector(tmp_path / "bundle", threads=1)
    got = det.score(frame)
    from edgeuad.methods.recontrast import load_model
    from edgeuad.preprocess import preprocess
    from safetensors.torch import load_file

    cfg = ReContrastConfig.from_dict(run.config)
    model = load_model(load_file(str(Path(run.root) / api.RUN_WEIGHTS)), cfg)
    with torch.no_grad():
        enc, dec = model(torch.from_numpy(preprocess([frame], run.preprocess)))
        _, mx, tk = anomaly_map_torch(enc, dec, 64, sigma=cfg.sigma, weights=[0, 1, 1, 0, 1, 1])
        _, mx_all, tk_all = anomaly_map_torch(enc, dec, 64, sigma=cfg.sigma)
    want = float((mx if cfg.score == "max" else tk)[0])
    other = float((mx_all if cfg.score == "max" else tk_all)[0])
    assert got.score == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert abs(want - other) > 1e-3                          # leaving level 1 out changed the score
    from edgeuad import cli

    assert cli.main(["info", "--bundle", str(tmp_path / "bundle")]) == 0
    assert "levels 2,3" in capsys.readouterr().out


def test_info_selection_line_by_value_and_malformed_parts_skipped() -> None:
    from edgeuad.cli import _selection_line

    sel = {"encoder_bn": {"mode": "train"}, "checkpoint": {"iteration": 400, "last_iteration": 500},
           "score": {"rule": "max"}, "levels": {"levels": "2,3", "val_i_auroc": {"1,2,3": 0.72938, "2,3": 0.76174}}}
    assert _selection_line({"selection": sel}) == ("  selection: encoder BN train, checkpoint 400 of 500, score max, "
                                                   "levels 2,3 (validation I-AUROC 1,2,3 0.7294, 2,3 0.7617)")
    assert _selection_line({}) is None and _selection_line("x") is None and _selection_line({"selection": {}}) is None
    bad = {**sel, "encoder_bn": "train", "levels": {"levels": "2,3", "val_i_auroc": {"1,2,3": "x"}}}
    assert _selection_line({"selection": bad}) == "  selection: checkpoint 400 of 500, score max, levels 2,3"
