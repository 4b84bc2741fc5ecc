"""benchmarks/ablate_patchcore.py: the features an arm names are the ones it scores (input normalisation and
backbone taps reach the network)."""
from __future__ import annotations

import numpy as np
import pytest
from script_helpers import load_benchmark

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def abl():
    return load_benchmark("ablate_patchcore")


@pytest.mark.parametrize("norm,taps,widths", [("imagenet", "block", (40, 112)), ("inception", "expand", (240, 672))])
def test_stage_features_use_the_named_normalisation_and_taps(abl, monkeypatch: pytest.MonkeyPatch, norm: str,
                                                             taps: str, widths: tuple[int, int]) -> None:
    from edgeuad.backbones import build_backbone
    from edgeuad.preprocess import INPUT_NORMS, PreprocessConfig, preprocess

    monkeypatch.setattr(abl, "NORM", norm)
    torch.manual_seed(0)
    bb = build_backbone("efficientnet_lite0", pretrained=False, taps=taps).eval()
    ims = list(np.random.default_rng(0).integers(0, 255, (3, 50, 70, 3), dtype=np.uint8))
    a, b = abl.stage_features(bb, ims, "product", size=64)
    mean, std = INPUT_NORMS[norm]
    x = torch.from_numpy(preprocess(ims, PreprocessConfig(size=(64, 64), mean=mean, std=std)))
    with torch.inference_mode():
        want = bb(x)
    assert (a.shape[1], b.shape[1]) == widths
    torch.testing.assert_close(a, want[1])
    torch.testing.assert_close(b, want[2])
