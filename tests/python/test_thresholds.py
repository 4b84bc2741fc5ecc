from __future__ import annotations

import numpy as np
import pytest

from edgeuad.thresholds import Thresholds, from_labelled, from_normal_scores


def test_normal_quantile_threshold_and_normalisation() -> None:
    rng = np.random.default_rng(0)
    normal = rng.normal(1.0, 0.1, 500)
    th = from_normal_scores(normal, quantile=0.99)
    assert th.threshold == pytest.approx(np.quantile(normal, 0.99))
    assert th.normalize(th.threshold) == pytest.approx(0.5)
    assert th.normalize(-1e9) == 0.0 and th.normalize(1e9) == 1.0
    # about 1% of normal scores are flagged
    assert 0.0 < np.mean(normal >= th.threshold) <= 0.02
    assert Thresholds.from_dict(th.to_dict()) == th
    arr = th.normalize(np.array([th.min, th.threshold, th.max]))
    assert arr.shape == (3,) and arr[1] == pytest.approx(0.5)


def test_labelled_threshold_is_f1_optimal() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 0.35])
    labels = np.array([0, 0, 0, 1, 1, 1])
    th = from_labelled(scores, labels)
    assert th.source == "f1_optimal"
    pred = scores >= th.threshold
    assert pred.tolist() == [False, False, False, True, True, True]


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="no normal scores"):
        from_normal_scores([])
    with pytest.raises(ValueError, match="NaN"):
        from_normal_scores([1.0, float("nan")])
    with pytest.raises(ValueError, match="quantile"):
        from_normal_scores([1.0, 2.0], quantile=0.1)
    with pytest.raises(ValueError, match="invalid thresholds"):
        Thresholds.from_dict({"threshold": 1.0, "min": 2.0, "max": 2.0, "source": "x"})


def test_robust_threshold_is_the_fitted_gaussian_tail() -> None:
    from statistics import NormalDist

    from edgeuad.thresholds import from_normal_robust

    rng = np.random.default_rng(0)
    normal = rng.normal(10.0, 2.0, 20001)
    th = from_normal_robust(normal, fpr=0.01)
    # large sample: median + z * 1.4826 * MAD -> 10 + 2.326 * 2
    assert th.threshold == pytest.approx(10.0 + NormalDist().inv_cdf(0.99) * 2.0, abs=0.08)
    assert th.source == "normal_robust" and th.fpr == 0.01 and th.n_normal == normal.size
    assert th.normalize(th.threshold) == pytest.approx(0.5)


def test_robust_threshold_ignores_one_outlying_normal_image() -> None:
    from edgeuad.thresholds import from_normal_robust

    normal = np.linspace(1.0, 2.0, 21)
    spiked = normal.copy()
    spiked[-1] = 50.0          # one unusual good part among 21
    a = from_normal_robust(normal).threshold
    b = from_normal_robust(spiked).threshold
    assert abs(a - b) < 0.1 * (normal.max() - normal.min())
    # the 0.99 quantile of 21 scores follows the outlier almost all the way
    assert from_normal_scores(spiked, 0.99).threshold > 40.0


def test_robust_threshold_rejects_bad_input() -> None:
    from edgeuad.thresholds import from_normal_robust

    with pytest.raises(ValueError, match="at least 2"):
        from_normal_robust([1.0])
    with pytest.raises(ValueError, match="fpr"):
        from_normal_robust([1.0, 2.0, 3.0], fpr=0.9)
    with pytest.raises(ValueError, match="NaN"):
        from_normal_robust([1.0, 2.0, float("inf")])
