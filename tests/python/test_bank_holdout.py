"""The held-out normal images join a patch method's shipped bank once they have set the threshold.

`bank_includes_holdout` (default True): `edgeuad train` builds the bank without the held-out images
(the calibration bank, kept in the run), export calibrates the threshold on it, and then ships a bank
rebuilt over every normal image.  Checked against the same run with the option off, which ships the
calibration bank itself: same threshold, same per-image calibration scores, a bigger shipped bank.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from edgeuad import api
from edgeuad.data import read_image
from edgeuad.detector import Detector
from edgeuad.runtime.bank import Bank
from edgeuad.synthetic import make_synthetic_dataset

TINY = {"image_size": 64, "coreset_ratio": 0.2, "coreset_min_items": 16, "pretrained": False}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("bank_holdout")
    data = make_synthetic_dataset(root / "data", kind="texture", n_train=12, n_test_good=2, n_test_defect=2,
                                  size=64, seed=3)
    out = {}
    for on in (True, False):
        run = api.train("patchcore", data, root / f"run_{on}", {**TINY, "bank_includes_holdout": on},
                        holdout_fraction=0.25, progress=False)
        out[on] = (run, api.export(run, root / f"bundle_{on}"))
    return out


def test_run_keeps_the_calibration_bank_and_says_what_the_bank_covers(pair: dict) -> None:
    run, _ = pair[True]
    run_off, _ = pair[False]
    assert run.holdout == run_off.holdout and len(run.holdout) == 3
    w = load_file(str(run.root / api.RUN_WEIGHTS))
    w_off = load_file(str(run_off.root / api.RUN_WEIGHTS))
    # the calibration bank is exactly the bank the option-off run ships (same images, seed, coreset rule)
    np.testing.assert_array_equal(w[api.CALIBRATION_BANK], w_off["bank"])
    assert api.CALIBRATION_BANK not in w_off
    assert run.info["bank"] == {"images": 12, "calibration_images": 9, "entries": len(w["bank"]),
                                "calibration_entries": len(w_off["bank"])}
    assert len(w["bank"]) == int(np.ceil(0.2 * 12 * 64)) > len(w_off["bank"]) == int(np.ceil(0.2 * 9 * 64))
    assert "bank" not in run_off.info


def test_threshold_comes_from_the_bank_without_the_holdout(pair: dict) -> None:
    (run, b_on), (_, b_off) = pair[True], pair[False]
    cal_on = b_on.manifest["training"]["calibration"]
    cal_off = b_off.manifest["training"]["calibration"]
    assert (cal_on["bank"], cal_off["bank"]) == ("without_holdout", "shipped")
    assert cal_on["images"] == cal_off["images"] == [str(Path(p).resolve()) for p in run.holdout]
    # live scores of the held-out images by the option-off bundle (whose bank is the calibration bank)
    held = [read_image(p) for p in run.holdout]
    with Detector(b_off.root) as d:
        live_off = np.array([d.score(im).score for im in held])
    with Detector(b_on.root) as d:
        live_on = np.array([d.score(im).score for im in held])
    np.testing.assert_allclose(cal_on["scores"], live_off, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cal_off["scores"], live_off, rtol=1e-6, atol=1e-7)
    assert b_on.thresholds["threshold"] == pytest.approx(b_off.thresholds["threshold"], rel=1e-6)
    # ... while the shipped bank holds them: they now score like training images
    assert live_on.mean() < live_off.mean()


def test_the_bundle_ships_the_full_bank_and_only_the_shipped_model(pair: dict) -> None:
    run, b_on = pair[True]
    w = load_file(str(run.root / api.RUN_WEIGHTS))
    assert len(Bank.load(b_on.root / "bank.euab")) == len(w["bank"]) == run.info["bank"]["entries"]
    shipped = load_file(str(b_on.root / "weights.safetensors"))
    assert api.CALIBRATION_BANK not in shipped
    np.testing.assert_array_equal(shipped["bank"], w["bank"])
    assert b_on.manifest["training"]["bank"]["images"] == 12
