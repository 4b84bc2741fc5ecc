"""Fuzz: frames of any shape, dtype, strides and type into the runtime's front door.

Property: `validate_frame` / `preprocess` / `Detector.score` either return a well-formed result or
raise ValueError/TypeError naming the problem; never another exception, a crash or a hang.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from _fuzz import accepted, budget, count
from edgeuad.preprocess import PreprocessConfig, preprocess, validate_frame

DTYPES = [np.uint8, np.int8, np.uint16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_,
          np.complex64, ">u2", "<f4", ">f8"]
TYPED = (ValueError, TypeError)


@st.composite
def arrays_any_layout(draw: st.DrawFn, max_side: int = 40) -> np.ndarray:
    """Arrays in any memory layout: mostly valid images (uint8, gray/1/3 channels, >= 8 px: so the
    success path is exercised too), else any dtype and 0-5 dims; then a random view: slicing steps,
    negative strides, transposes, zero strides, Fortran order, read-only, unaligned."""
    mode = draw(st.sampled_from(["image", "image", "image", "image_like", "any"]))
    if mode == "image":
        shape = (draw(st.integers(8, max_side)), draw(st.integers(8, max_side)),
                 *draw(st.sampled_from([(), (1,), (3,), (3,)])))
        dtype = np.dtype(np.uint8)
    elif mode == "image_like":
        shape = (draw(st.integers(0, max_side)), draw(st.integers(0, max_side)),
                 *draw(st.sampled_from([(), (1,), (3,), (4,), (2,), (5,)])))
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    else:
        shape = tuple(draw(st.lists(st.integers(0, 12), min_size=0, max_size=5)))
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    a = draw(hnp.arrays(dtype, shape))
    view = draw(st.sampled_from(["plain", "step", "negative", "transpose", "fortran", "zero_stride",
                                 "readonly", "unaligned", "noncontig_channels"]))
    if view == "step" and a.ndim >= 2:
        a = a[::draw(st.integers(1, 3)), ::draw(st.integers(1, 3))]
    elif view == "negative" and a.ndim >= 1:
        a = a[::-1]
        if a.ndim >= 2:
            a = a[:, ::-1]
    elif view == "transpose" and a.ndim >= 2:
        a = np.swapaxes(a, 0, 1)
    elif view == "fortran":
        a = np.asfortranarray(a)
    elif view == "zero_stride" and a.ndim >= 1 and a.size:
        a = np.broadcast_to(a[:1], a.shape)
    elif view == "readonly":
        a.setflags(write=False)
    elif view == "unaligned" and a.size and a.dtype.itemsize > 1:
        buf = np.zeros(a.nbytes + 1, np.uint8)
        u = buf[1:].view(a.dtype).reshape(a.shape)
        u[...] = a
        a = u
    elif view == "noncontig_channels" and a.ndim == 3 and a.shape[2] >= 3:
        a = a[:, :, ::-1]
    return a


OTHER = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(0, 255), max_size=10),
                  st.builds(lambda n: [[[0, 0, 0]] * n] * n, st.integers(0, 10)),
                  st.builds(memoryview, st.binary(max_size=20)))


@budget(2500)
@given(st.one_of(arrays_any_layout(), arrays_any_layout(), arrays_any_layout(), OTHER))
def test_validate_and_preprocess_any_frame(frame: object) -> None:
    count("frames.preprocess")
    cfg = PreprocessConfig(size=(16, 24))
    try:
        checked = validate_frame(frame)
    except TYPED:
        with pytest.raises(TYPED):
            preprocess([frame], cfg)  # type: ignore[list-item]
        return
    accepted("frames.preprocess")
    assert checked.dtype == np.uint8 and checked.ndim == 3 and checked.shape[2] == 3
    assert checked.shape[:2] == np.asarray(frame).shape[:2]
    for color in ("rgb", "bgr"):
        x = preprocess([frame], cfg, color=color)  # type: ignore[list-item]
        assert x.shape == (1, 3, 16, 24) and x.dtype == np.float32 and np.isfinite(x).all()
    # layout never changes the result: the same pixels in a fresh C-contiguous array give the same input
    same = preprocess([np.ascontiguousarray(frame)], cfg)  # type: ignore[list-item]
    np.testing.assert_array_equal(preprocess([frame], cfg), same)  # type: ignore[list-item]


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory):
    from edgeuad import api
    from edgeuad.detector import Detector
    from edgeuad.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("fuzz_frames")
    data = make_synthetic_dataset(root / "data", kind="texture", n_train=8, n_test_good=1, n_test_defect=1,
                                  size=32, seed=5)
    run = api.train("patchcore", data, root / "run", {"image_size": 32, "coreset_ratio": 0.25, "pretrained": False},
                    holdout_fraction=0.25, progress=False)
    det = Detector(api.export(run, root / "bundle").root, threads=1)
    yield det
    det.close()


@budget(1000)
@given(st.one_of(st.lists(arrays_any_layout(max_side=48), min_size=1, max_size=3),
                st.lists(st.one_of(arrays_any_layout(max_side=48), OTHER), min_size=0, max_size=3)))
def test_detector_scores_or_refuses_any_batch(detector, frames: list) -> None:  # noqa: ANN001 - fixture
    count("frames.detector")
    try:
        results = detector.score_batch(frames, return_map=True)
    except TYPED:
        return
    accepted("frames.detector")
    assert len(results) == len(frames)
    for f, r in zip(frames, results):
        assert np.isfinite(r.score) and 0.0 <= r.normalized <= 1.0
        assert r.is_anomaly == (r.score >= detector.threshold)
        assert r.anomaly_map.shape == np.asarray(f).shape[:2] and r.anomaly_map.dtype == np.float32
        assert np.isfinite(r.anomaly_map).all()


def test_fuzzed_detector_is_the_shipped_path(detector) -> None:  # noqa: ANN001 - fixture
    """The fuzzed Detector is the shipped CPU path (onnxruntime + _rt), not a stand-in."""
    assert detector.backend_name == "onnxruntime" and detector.bank is not None
    assert Path(detector.bundle.root, "bank.euab").is_file()
