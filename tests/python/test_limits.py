"""Size-like parameters are bounded before any kernel runs (issue #14: sigma=6e8 segfaulted,
1e6 ran for minutes).  These go through the Python wrappers, which every runtime path uses."""
from __future__ import annotations

import numpy as np
import pytest

from edgeuad import limits
from edgeuad.runtime import maps
from edgeuad.runtime.bank import Bank

DIST = np.ones((1, 32, 32), np.float32)
PAIR = [(np.ones((1, 4, 8, 8), np.float32), np.zeros((1, 4, 8, 8), np.float32))]


@pytest.mark.parametrize("kwargs,match", [
    ({"sigma": 6e8}, "sigma"), ({"sigma": 1e6}, "sigma"), ({"sigma": limits.MAX_SIGMA * 1.01}, "sigma"),
    ({"sigma": -1.0}, "sigma"), ({"sigma": float("nan")}, "sigma"), ({"sigma": float("inf")}, "sigma"),
    ({"sigma": True}, "sigma"), ({"sigma": "4"}, "sigma"),
    ({"topk_frac": 1.5}, "topk_frac"), ({"topk_frac": float("nan")}, "topk_frac"), ({"topk_frac": None}, "topk_frac"),
    ({"threads": -1}, "threads"), ({"threads": 10 ** 6}, "threads"), ({"threads": 1.5}, "threads"),
    ({"out_size": (0, 256)}, "out_size"), ({"out_size": (256, limits.MAX_MAP_SIDE + 1)}, "out_size"),
    ({"out_size": (256.0, 256)}, "out_size"), ({"out_size": (256,)}, "out_size"), ({"out_size": "ab"}, "out_size"),
])
def test_map_parameters_are_bounded(kwargs: dict, match: str) -> None:
    args = {"out_size": (256, 256), **kwargs}
    out_size = args.pop("out_size")
    with pytest.raises(ValueError, match=match):
        maps.l2_map(DIST, out_size, **args)
    with pytest.raises(ValueError, match=match):
        maps.cos_map(PAIR, out_size, **args)
    with pytest.raises(ValueError, match=match):  # the numpy reference has no threads argument
        if "threads" in args:
            maps.check_map_params(out_size, 4.0, 0.01, args["threads"])
        else:
            maps.l2_map_reference(DIST, out_size, **args)


def test_bounds_are_inclusive_and_the_kernel_matches_the_reference_at_the_edge() -> None:
    """The largest sigma allowed still runs, and gives the reference's map."""
    d = np.random.default_rng(0).random((1, 6, 5)).astype(np.float32)
    fast = maps.l2_map(d, (24, 20), sigma=limits.MAX_SIGMA, topk_frac=1.0)
    ref = maps.l2_map_reference(d, (24, 20), sigma=limits.MAX_SIGMA, topk_frac=1.0)
    for a, b in zip(fast, ref):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_weights_and_levels_are_checked() -> None:
    with pytest.raises(ValueError, match="weights"):
        maps.cos_map(PAIR, (16, 16), weights=[float("nan")])
    with pytest.raises(ValueError, match="pairs"):
        maps.cos_map([], (16, 16))
    with pytest.raises(ValueError, match="pairs"):
        maps.cos_map(PAIR * (limits.MAX_LEVELS + 1), (16, 16))
    with pytest.raises(TypeError):
        maps.cos_map("ab", (16, 16))


def test_reweight_b_is_bounded() -> None:
    bank = Bank.build(np.random.default_rng(0).random((20, 4)).astype(np.float32))
    q = np.zeros((3, 4), np.float32)
    for b in (1, -1, limits.MAX_REWEIGHT_B + 1):
        with pytest.raises(ValueError, match="b must be"):
            bank.search_patch_scores(q, b=b)
    with pytest.raises(TypeError):
        bank.search_patch_scores(q, b=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # above the bank size: the C++ bound
        bank.search_patch_scores(q, b=21)
    assert bank.search_patch_scores(q, b=20).shape == (3,)


def test_bank_refuses_non_finite_and_huge_values() -> None:
    """A NaN feature used to poison every exact search (index -1) and segfault search_reweighted."""
    from edgeuad import _rt

    f = np.random.default_rng(0).random((20, 4)).astype(np.float32)
    for bad in (np.nan, np.inf, -np.inf, 1e16):
        g = f.copy()
        g[3, 1] = bad
        b = _rt.MemoryBank(4, M=4, ef_construction=10)
        with pytest.raises(ValueError, match="row 3"):
            b.add(g)
        assert len(b) == 0
    b = _rt.MemoryBank(4, M=4, ef_construction=10)
    b.add(f)
    q = np.zeros((2, 4), np.float32)
    q[1, 0] = np.nan
    for call in (lambda: b.search(q, exact=True), lambda: b.search(q, exact=False),
                 lambda: b.search_reweighted(q, b=3, exact=True)):
        with pytest.raises(ValueError, match="row 1"):
            call()
