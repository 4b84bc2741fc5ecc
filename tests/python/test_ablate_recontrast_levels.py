"""benchmarks/ablate_recontrast_levels.py: a (levels, pair set) map weighs exactly its pairs, so the map of
both crossed sets is the sum of the frozen-target and trainable-target maps (upsampling and blur are linear)."""
from __future__ import annotations

import numpy as np
import pytest
from script_helpers import load_benchmark

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def abl():
    return load_benchmark("ablate_recontrast_levels")


def test_pair_groups_split_the_map(abl) -> None:
    from edgeuad.methods.recontrast import ReContrastConfig, anomaly_map_torch, build_model

    torch.manual_seed(0)
    cfg = ReContrastConfig(pretrained=False, image_size=64, sigma=2.0)
    model = build_model(cfg).eval()
    x = np.random.default_rng(1).standard_normal((3, 3, 64, 64)).astype(np.float32)
    got = abl.subset_maps(model, x, cfg, batch=2, groups=("both", "frozen", "train"))
    for sub in ((2, 3), (1,)):
        both, fz, tr = (got[(sub, g)] for g in ("both", "frozen", "train"))
        # maps are kept at a quarter of the resolution; the sum holds pixel by pixel
        np.testing.assert_allclose(both["maps"], fz["maps"] + tr["maps"], rtol=1e-5, atol=1e-6)
        assert not np.allclose(fz["maps"], tr["maps"])
    # the frozen-target map of levels 2,3 is anomaly_map_torch with weight 1 on exactly l2_frozen, l3_frozen
    with torch.inference_mode():
        enc, dec = model(torch.from_numpy(x))
    w = [1.0 if n in ("l2_frozen", "l3_frozen") else 0.0 for n in model.pair_names()]
    _, mx, _ = anomaly_map_torch(enc, dec, 64, sigma=2.0, weights=w)
    np.testing.assert_allclose(got[((2, 3), "frozen")]["max"], mx.numpy(), rtol=1e-5)
    assert set(got) == {(sub, g) for sub in abl.SUBSETS for g in ("both", "frozen", "train")}
