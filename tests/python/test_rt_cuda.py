"""edgeuad._rt CUDA twins (cos_map_cuda, l2_map_cuda) vs the numpy reference.

GPU tests use `_rt.DeviceArray` (and torch CUDA tensors, when torch has CUDA, for the stream tests)
through __cuda_array_interface__.  They skip only when this machine has no GPU at all; when a GPU is
visible to the driver but `_rt` cannot use it (e.g. a driver older than the static CUDA runtime
`_rt` links), they FAIL with CUDA's error text.  The argument checks at the bottom run everywhere.
The same kernels run on the CPU in test_maps_shared.py (emulation), without a GPU.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

from edgeuad import _rt
from edgeuad.runtime import maps

ATOL = 1e-4


def gpu_visible() -> str:
    """Why this machine has a GPU ('' when it has none), judged without _rt: /dev/nvidia0 or the
    driver library reporting devices."""
    if os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvhost-gpu"):  # desktop / Jetson
        return "a GPU device node exists"
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return ""
    n = ctypes.c_int(0)
    if lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(n)) == 0 and n.value > 0:
        return f"the CUDA driver reports {n.value} device(s)"
    return ""


def require_gpu() -> None:
    """Skip without a GPU; fail when there is one that _rt cannot use."""
    why = gpu_visible()
    if not why:
        pytest.skip("no GPU on this machine")
    if not _rt.has_cuda():
        pytest.fail(f"{why} but edgeuad._rt was built without CUDA (rebuild with EDGEUAD_CUDA=ON)")
    st = _rt.cuda_status()
    if st["device_count"] == 0:
        pytest.fail(f"{why} but edgeuad._rt sees no CUDA device: {st['error']} "
                    f"(runtime {st['runtime_version']}, driver {st['driver_version']})")


def dev(x: np.ndarray):
    return _rt.DeviceArray.from_host(np.ascontiguousarray(x))


def _torch_cuda():
    require_gpu()
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here (the DeviceArray tests cover the kernels)")
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
@pytest.mark.parametrize("sigma", [0.0, 4.0, 64.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_cos_map_cuda_matches_reference(align_corners, sigma, dtype):
    require_gpu()
    rng = np.random.default_rng(0)
    pairs = _pairs(rng, 3, dtype)
    weights = [float(w) for w in rng.uniform(0.2, 2.0, len(pairs))]
    out_size = (37, 129)
    out, mx, tk = (_rt.DeviceArray.empty((3, *out_size)), _rt.DeviceArray.empty((3,)),
                   _rt.DeviceArray.empty((3,)))
    _rt.cos_map_cuda([(dev(a), dev(b)) for a, b in pairs], out, out_size, weights=weights,
                     align_corners=align_corners, sigma=sigma, max_out=mx, topk_out=tk, topk_frac=0.05)
    _rt.cuda_synchronize()
    ref = maps.cos_map_reference(pairs, out_size, weights, align_corners, sigma, 0.05)
    for got, r in zip((out.to_host(), mx.to_host(), tk.to_host()), ref):
        np.testing.assert_allclose(got, r, atol=ATOL, rtol=0)
    cpu, _, _ = _rt.cos_map(pairs, out_size, weights, align_corners, sigma)
    np.testing.assert_allclose(out.to_host(), cpu, atol=ATOL, rtol=0)
    emu, _, _ = _rt.emulate_cuda_cos_map(pairs, out_size, weights, align_corners, sigma)
    np.testing.assert_allclose(out.to_host(), emu, atol=ATOL, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("sigma", [0.0, 4.0])
@pytest.mark.parametrize("out_size", [(224, 200), (1, 1), (257, 3)])
def test_l2_map_cuda_matches_reference(dtype, sigma, out_size):
    require_gpu()
    dist = np.random.default_rng(1).uniform(0, 3, (2, 28, 28)).astype(dtype)
    out, mx, tk = _rt.DeviceArray.empty((2, *out_size)), _rt.DeviceArray.empty((2,)), _rt.DeviceArray.empty((2,))
    _rt.l2_map_cuda(dev(dist), out, out_size, align_corners=False, sigma=sigma, max_out=mx, topk_out=tk)
    _rt.cuda_synchronize()
    ref = maps.l2_map_reference(dist, out_size, False, sigma)
    for got, r in zip((out.to_host(), mx.to_host(), tk.to_host()), ref):
        np.testing.assert_allclose(got, r, atol=ATOL, rtol=0)


@pytest.mark.gpu
def test_cuda_rejects_nan_weights_like_the_cpu():
    require_gpu()
    a = dev(np.ones((1, 2, 3, 3), np.float32))
    for w in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="weight is not finite"):
            _rt.cos_map_cuda([(a, a)], _rt.DeviceArray.empty((1, 4, 4)), (4, 4), weights=[w])


@pytest.mark.gpu
def test_cuda_on_a_side_stream_and_stream_objects():
    torch = _torch_cuda()
    pairs = _pairs(np.random.default_rng(2), 1, np.float32)
    ref, _, _ = maps.cos_map_reference(pairs, (64, 64))
    side = torch.cuda.Stream()

    class CudaStreamProtocol:  # cuda.core / cuda-python style
        def __cuda_stream__(self):
            return (0, side.cuda_stream)

    for stream in (side, side.cuda_stream, CudaStreamProtocol()):
        with torch.cuda.stream(side):
            d = [(torch.from_numpy(a).cuda(non_blocking=True), torch.from_numpy(b).cuda()) for a, b in pairs]
            out = torch.empty((1, 64, 64), device="cuda")
            _rt.cos_map_cuda(d, out, (64, 64), stream=stream)
        side.synchronize()
        np.testing.assert_allclose(out.cpu().numpy(), ref, atol=ATOL, rtol=0)


@pytest.mark.gpu
def test_cuda_waits_for_the_producer_stream():
    # Inputs written on a busy producer stream, the map launched on another stream: the CAI v3
    # 'stream' of the inputs must order the kernels after the producer's work.
    torch = _torch_cuda()
    pairs = _pairs(np.random.default_rng(5), 1, np.float32)
    ref, _, _ = maps.cos_map_reference(pairs, (64, 64))
    producer, consumer = torch.cuda.Stream(), torch.cuda.Stream()
    with torch.cuda.stream(producer):
        big = torch.randn(4096, 4096, device="cuda")
        for _ in range(8):
            big = big @ big / 4096  # keeps the producer busy
        d = [(torch.zeros(a.shape, device="cuda").copy_(torch.from_numpy(a)),
              torch.zeros(b.shape, device="cuda").copy_(torch.from_numpy(b))) for a, b in pairs]
    out = torch.empty((1, 64, 64), device="cuda")
    _rt.cos_map_cuda(d, out, (64, 64), stream=consumer)
    consumer.synchronize()
    np.testing.assert_allclose(out.cpu().numpy(), ref, atol=ATOL, rtol=0)


@pytest.mark.gpu
def test_cuda_rejects_host_memory_and_bad_out():
    require_gpu()
    a = _rt.DeviceArray.empty((1, 4, 5, 5))
    with pytest.raises(ValueError, match="not CUDA device memory"):  # host memory behind a fake CAI
        _rt.cos_map_cuda([(a, a)], _FakeCAI(np.zeros((1, 8, 8), np.float32)), (8, 8))
    with pytest.raises(ValueError, match="shape"):
        _rt.cos_map_cuda([(a, a)], _rt.DeviceArray.empty((1, 8, 9)), (8, 8))
    with pytest.raises(TypeError, match="float32"):
        _rt.cos_map_cuda([(a, a)], _rt.DeviceArray.empty((1, 8, 8), "float16"), (8, 8))


# ---------------------------------------------------------------------------- no device needed
class _FakeCAI:
    """Host memory dressed up as a CUDA array: exercises the argument checks only."""

    def __init__(self, arr: np.ndarray, typestr: str | None = None, strides=None, stream=None) -> None:
        self._arr = arr
        self.__cuda_array_interface__ = {"data": (arr.ctypes.data, False), "shape": arr.shape,
                                         "typestr": typestr or arr.dtype.str, "strides": strides, "version": 3,
                                         "stream": stream}


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
    with pytest.raises(ValueError, match="disallows"):  # CAI v3: stream 0 is ambiguous
        z = _FakeCAI(x, stream=0)
        _rt.cos_map_cuda([(z, z)], out, (8, 8))
    with pytest.raises(ValueError, match="weight is not finite"):
        _rt.cos_map_cuda([(_FakeCAI(x), _FakeCAI(x))], out, (8, 8), weights=[float("nan")])
    with pytest.raises(ValueError, match="sigma"):
        _rt.cos_map_cuda([(_FakeCAI(x), _FakeCAI(x))], out, (8, 8), sigma=6e8)
    with pytest.raises(ValueError, match="max_out must have shape"):
        _rt.cos_map_cuda([(_FakeCAI(x), _FakeCAI(x))], out, (8, 8), max_out=_FakeCAI(np.zeros(2, np.float32)))
    # contiguous strides, including an arbitrary stride on a size-1 dimension, are accepted
    ok = _FakeCAI(x, strides=(12345, 100, 20, 4))
    if _rt.cuda_device_count() == 0:
        with pytest.raises(RuntimeError, match="no CUDA device"):
            _rt.cos_map_cuda([(ok, ok)], out, (8, 8))


@pytest.mark.skipif(not _rt.has_cuda(), reason="argument parsing is only reached in CUDA builds")
@pytest.mark.skipif(_rt.cuda_device_count() > 0, reason="checks the path up to the missing device")
def test_stream_objects_of_every_library_are_accepted():
    x = _FakeCAI(np.zeros((1, 4, 5, 5), np.float32))
    out = _FakeCAI(np.zeros((1, 8, 8), np.float32))

    class Torch:
        cuda_stream = 1234

    class Cupy:
        ptr = 1234

    class Pycuda:
        handle = 1234

    class CudaPython:  # cuda.bindings CUstream / cudaStream_t: int(obj) is the handle
        def __int__(self):
            return 1234

    class Protocol:
        def __cuda_stream__(self):
            return (0, 1234)

    for s in (0, 2, np.int64(7), Torch(), Cupy(), Pycuda(), CudaPython(), Protocol()):
        # parsed: the call gets as far as the (missing) device
        with pytest.raises(RuntimeError, match="no CUDA device"):
            _rt.cos_map_cuda([(x, x)], out, (8, 8), stream=s)
    for bad in ("default", 1.5, True, object()):
        with pytest.raises(TypeError, match="stream"):
            _rt.cos_map_cuda([(x, x)], out, (8, 8), stream=bad)
