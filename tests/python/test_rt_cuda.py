"""edgeuad._rt CUDA twins (cos_map_cuda, l2_map_cuda) vs the numpy reference.

GPU tests use torch CUDA tensors (through __cuda_array_interface__) and skip without a
device.  The argument checks at the bottom run everywhere: they fail before any CUDA call.
"""
from __future__ import annotations

import numpy as np
import pytest

from edgeuad import _rt
from edgeuad.runtime import maps

ATOL = 1e-4


def _torch_cuda():
    if _rt.cuda_device_count() == 0:
        pytest.skip("no CUDA device")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda unavailable)")
    if not _rt.has_cuda():
        pytest.fail("a CUDA device is present but edgeuad._rt was built without CUDA")
    return torch


def _pairs(rng, batch, dtype):
    levels = [(5, 9, 7), (3, 4, 5), (6, 9, 7), (8, 1, 3), (24, 64, 64), (112, 16, 16)]
    out = []
    for c, h, w in levels:
        a = rng.standard_normal((batch, c, h, w)).astype(dtype)
        b = (a.astype(np.float32) + rng.standard_normal(a.shape).astype(np.float32)).astype(dtype)
        out.append((a, b))
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("sigma", [0.0, 4.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_cos_map_cuda_matches_reference(align_corners, sigma, dtype):
    torch = _torch_cuda()
    rng = np.random.default_rng(0)
    pairs = _pairs(rng, 3, dtype)
    weights = [float(w) for w in rng.uniform(0.2, 2.0, len(pairs))]
    out_size = (37, 129)
    dev = [(torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()) for a, b in pairs]
    out = torch.full((3, *out_size), float("nan"), device="cuda")
    _rt.cos_map_cuda(dev, out, out_size, weights=weights, align_corners=align_corners, sigma=sigma,
                     stream=torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    ref, _, _ = maps.cos_map_reference(pairs, out_size, weights, align_corners, sigma)
    np.testing.assert_allclose(out.cpu().numpy(), ref, atol=ATOL, rtol=0)
    cpu, _, _ = _rt.cos_map(pairs, out_size, weights, align_corners, sigma)
    np.testing.assert_allclose(out.cpu().numpy(), cpu, atol=ATOL, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("sigma", [0.0, 4.0])
def test_l2_map_cuda_matches_reference(dtype, sigma):
    torch = _torch_cuda()
    dist = np.random.default_rng(1).uniform(0, 3, (2, 28, 28)).astype(dtype)
    out = torch.empty((2, 224, 200), device="cuda")
    _rt.l2_map_cuda(torch.from_numpy(dist).cuda(), out, (224, 200), align_corners=False, sigma=sigma)
    torch.cuda.synchronize()
    ref, _, _ = maps.l2_map_reference(dist, (224, 200), False, sigma)
    np.testing.assert_allclose(out.cpu().numpy(), ref, atol=ATOL, rtol=0)


@pytest.mark.gpu
def test_cuda_on_a_side_stream_and_stream_objects():
    torch = _torch_cuda()
    pairs = _pairs(np.random.default_rng(2), 1, np.float32)
    ref, _, _ = maps.cos_map_reference(pairs, (64, 64))
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        dev = [(torch.from_numpy(a).cuda(non_blocking=True), torch.from_numpy(b).cuda()) for a, b in pairs]
        out = torch.empty((1, 64, 64), device="cuda")
        _rt.cos_map_cuda(dev, out, (64, 64), stream=side)  # a torch.cuda.Stream object is accepted
    side.synchronize()
    np.testing.assert_allclose(out.cpu().numpy(), ref, atol=ATOL, rtol=0)


@pytest.mark.gpu
def test_cuda_rejects_host_memory_and_bad_out():
    torch = _torch_cuda()
    a = torch.zeros((1, 4, 5, 5), device="cuda")
    with pytest.raises(ValueError, match="not CUDA device memory"):  # host memory behind a fake CAI
        _rt.cos_map_cuda([(a, a)], _FakeCAI(np.zeros((1, 8, 8), np.float32)), (8, 8))
    with pytest.raises(ValueError, match="shape"):
        _rt.cos_map_cuda([(a, a)], torch.empty((1, 8, 9), device="cuda"), (8, 8))
    with pytest.raises(TypeError, match="float32"):
        _rt.cos_map_cuda([(a, a)], torch.empty((1, 8, 8), device="cuda", dtype=torch.float64), (8, 8))


# ---------------------------------------------------------------------------- no device needed
class _FakeCAI:
    """Host memory dressed up as a CUDA array: exercises the argument checks only."""

    def __init__(self, arr: np.ndarray, typestr: str | None = None, strides=None) -> None:
        self._arr = arr
        self.__cuda_array_interface__ = {"data": (arr.ctypes.data, False), "shape": arr.shape,
                                         "typestr": typestr or arr.dtype.str, "strides": strides, "version": 3}


def test_cuda_entry_points_without_cuda_build_or_device():
    a = _FakeCAI(np.zeros((1, 4, 5, 5), np.float32))
    out = _FakeCAI(np.zeros((1, 8, 8), np.float32))
    if not _rt.has_cuda():
        with pytest.raises(RuntimeError, match="built without CUDA"):
            _rt.cos_map_cuda([(a, a)], out, (8, 8))
        with pytest.raises(RuntimeError, match="built without CUDA"):
            _rt.l2_map_cuda(_FakeCAI(np.zeros((1, 5, 5), np.float32)), out, (8, 8))
        assert _rt.cuda_device_count() == 0
    elif _rt.cuda_device_count() == 0:
        with pytest.raises(RuntimeError, match="no CUDA device"):
            _rt.cos_map_cuda([(a, a)], out, (8, 8))
        with pytest.raises(RuntimeError, match="no CUDA device"):
            _rt.l2_map_cuda(_FakeCAI(np.zeros((1, 5, 5), np.float32)), out, (8, 8))
    else:
        pytest.skip("a CUDA device is present: covered by the gpu tests")


@pytest.mark.skipif(not _rt.has_cuda(), reason="argument parsing is only reached in CUDA builds")
def test_cuda_array_interface_checks():
    x = np.zeros((1, 4, 5, 5), np.float32)
    out = _FakeCAI(np.zeros((1, 8, 8), np.float32))
    with pytest.raises(TypeError, match="__cuda_array_interface__"):
        _rt.cos_map_cuda([(x, x)], out, (8, 8))
    with pytest.raises(TypeError, match="'<f8'"):
        f8 = _FakeCAI(x.astype(np.float64))
        _rt.cos_map_cuda([(f8, f8)], out, (8, 8))
    with pytest.raises(ValueError, match="C-contiguous"):
        t = _FakeCAI(x, strides=(400, 4, 4, 20))
        _rt.cos_map_cuda([(t, t)], out, (8, 8))
    with pytest.raises(ValueError, match="level 1"):
        b2 = _FakeCAI(np.zeros((2, 4, 5, 5), np.float32))
        _rt.cos_map_cuda([(_FakeCAI(x), _FakeCAI(x)), (b2, b2)], out, (8, 8))
    with pytest.raises(ValueError, match="out must have shape"):
        _rt.cos_map_cuda([(_FakeCAI(x), _FakeCAI(x))], out, (8, 9))
    with pytest.raises(ValueError, match="out_size"):
        _rt.cos_map_cuda([(_FakeCAI(x), _FakeCAI(x))], out, (0, 8))
    with pytest.raises(TypeError, match="stream"):
        _rt.cos_map_cuda([(_FakeCAI(x), _FakeCAI(x))], out, (8, 8), stream="default")
    # contiguous strides, including an arbitrary stride on a size-1 dimension, are accepted
    ok = _FakeCAI(x, strides=(12345, 100, 20, 4))
    if _rt.cuda_device_count() == 0:
        with pytest.raises(RuntimeError, match="no CUDA device"):
            _rt.cos_map_cuda([(ok, ok)], out, (8, 8))
