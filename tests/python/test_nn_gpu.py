"""Exact patch scores on the GPU (cpp/include/edgeuad/nn_kernels.hpp): the kernels run on the CPU through
`_rt.emulate_cuda_patch_scores` and must equal the memory bank's exact search (`Bank.search_patch_scores`,
plain NN distance and the Eq. 10 reweighting); `_rt.DeviceBank` runs them on a GPU (gpu tests)."""
from __future__ import annotations

import numpy as np
import pytest

from edgeuad import _rt
from edgeuad.runtime.bank import Bank
from test_rt_cuda import require_gpu


def _bank(n: int, d: int, b: int, seed: int = 0) -> tuple[Bank, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, d)).astype(np.float32)
    return Bank.build(feats, threads=1, neighbor_b=b, exact_threshold=1 << 30), feats


@pytest.mark.parametrize("n,d,nq", [(1, 3, 1), (70, 37, 45), (130, 64, 33), (257, 256, 100)])
@pytest.mark.parametrize("b", [0, 2, 9])
def test_emulated_gpu_patch_scores_equal_exact_bank_search(n, d, nq, b):
    if b > n:
        pytest.skip("b larger than the bank")
    bank, feats = _bank(n, d, b)
    q = np.random.default_rng(1).standard_normal((nq, d)).astype(np.float32)
    table = bank.rt.neighbor_table() if b else None
    got = _rt.emulate_cuda_patch_scores(feats, table, q, b)
    ref = bank.search_patch_scores(q, b=b, exact=True, threads=1)
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)


def test_query_equal_to_a_bank_item_scores_zero():
    bank, feats = _bank(50, 16, 0)
    got = _rt.emulate_cuda_patch_scores(feats, None, feats[[3, 17, 49]].copy(), 0)
    np.testing.assert_allclose(got, 0.0, atol=1e-6)


def test_patch_score_argument_checks():
    feats = np.ones((10, 4), np.float32)
    q = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="b must be 0"):
        _rt.emulate_cuda_patch_scores(feats, None, q, 1)
    with pytest.raises(ValueError, match="neighbour table"):
        _rt.emulate_cuda_patch_scores(feats, None, q, 3)
    with pytest.raises(ValueError, match="agree on D"):
        _rt.emulate_cuda_patch_scores(feats, None, np.ones((2, 5), np.float32), 0)
    with pytest.raises(ValueError, match="<= the bank size"):
        _rt.emulate_cuda_patch_scores(feats, np.zeros((10, 11), np.int32), q, 11)
    if _rt.has_cuda():
        with pytest.raises(ValueError, match="outside the bank"):
            _rt.DeviceBank(feats, np.full((10, 2), 10, np.int32))


@pytest.mark.gpu
@pytest.mark.parametrize("b", [0, 9])
def test_device_bank_on_gpu(b):
    require_gpu()
    bank, feats = _bank(300, 64, b)
    q = np.random.default_rng(2).standard_normal((2, 49, 64)).astype(np.float32)
    db = _rt.DeviceBank(feats, bank.rt.neighbor_table() if b else None)
    out = _rt.DeviceArray.empty((2, 7, 7))
    db.patch_scores(_rt.DeviceArray.from_host(q), out, b=b)
    _rt.cuda_synchronize()
    ref = bank.search_patch_scores(q.reshape(-1, 64), b=b, exact=True).reshape(2, 7, 7)
    np.testing.assert_allclose(out.to_host(), ref, rtol=2e-5, atol=2e-5)
