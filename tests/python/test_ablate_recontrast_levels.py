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
        both, fz, tr = (got[(sub, g, 1, "none")] for g in ("both", "frozen", "train"))
        # maps are kept at a quarter of the resolution; the sum holds pixel by pixel
        np.testing.assert_allclose(both["maps"], fz["maps"] + tr["maps"], rtol=1e-5, atol=1e-6)
        assert not np.allclose(fz["maps"], tr["maps"])
    # the frozen-target map of levels 2,3 is anomaly_map_torch with weight 1 on exactly l2_frozen, l3_frozen
    with torch.inference_mode():
        enc, dec = model(torch.from_numpy(x))
    w = [1.0 if n in ("l2_frozen", "l3_frozen") else 0.0 for n in model.pair_names()]
    _, mx, _ = anomaly_map_torch(enc, dec, 64, sigma=2.0, weights=w)
    np.testing.assert_allclose(got[((2, 3), "frozen", 1, "none")]["max"], mx.numpy(), rtol=1e-5)
    assert set(got) == {(sub, g, 1, "none") for sub in abl.SUBSETS for g in ("both", "frozen", "train")}


def test_pooled_map_averages_the_features_before_the_cosine(abl) -> None:
    """Arm G's pool k: every encoder and decoder map averaged over its in-image k x k neighbours (a numpy
    reference at the border and inside), then the shipped map; pool 1 is the shipped map itself."""
    from edgeuad.methods.recontrast import ReContrastConfig, anomaly_map_torch, build_model

    t = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6) ** 1.5
    got = abl.local_mean(t, 3).numpy()
    a = t.numpy()
    for i, j in ((0, 0), (2, 3), (4, 5), (0, 4)):
        win = a[:, :, max(0, i - 1):i + 2, max(0, j - 1):j + 2]
        np.testing.assert_allclose(got[:, :, i, j], win.mean(axis=(2, 3)), rtol=1e-6)
    assert abl.local_mean(t, 1) is t
    torch.manual_seed(0)
    cfg = ReContrastConfig(pretrained=False, image_size=64, sigma=2.0)
    model = build_model(cfg).eval()
    x = np.random.default_rng(1).standard_normal((3, 3, 64, 64)).astype(np.float32)
    got = abl.subset_maps(model, x, cfg, batch=2, pools=(1, 3))
    with torch.inference_mode():
        enc, dec = model(torch.from_numpy(x))
        w = [1.0 if n[1] in "23" else 0.0 for n in model.pair_names()]
        _, mx1, _ = anomaly_map_torch(enc, dec, 64, sigma=2.0, weights=w)
        _, mx3, _ = anomaly_map_torch([abl.local_mean(e, 3) for e in enc], [abl.local_mean(d, 3) for d in dec], 64,
                                      sigma=2.0, weights=w)
    np.testing.assert_allclose(got[((2, 3), "both", 1, "none")]["max"], mx1.numpy(), rtol=1e-5)
    np.testing.assert_allclose(got[((2, 3), "both", 3, "none")]["max"], mx3.numpy(), rtol=1e-5)
    assert not np.allclose(mx1.numpy(), mx3.numpy())


def test_centred_map_uses_the_targets_channel_statistics(abl) -> None:
    """Arms J1/J2: per pair, the target's per-channel mean / standard deviation over every position of the
    statistics images (numpy reference), subtracted from (and dividing) both the target and its reconstruction
    before the shipped map; "none" is the shipped map itself."""
    from edgeuad.methods.recontrast import ReContrastConfig, anomaly_map_torch, build_model

    torch.manual_seed(0)
    cfg = ReContrastConfig(pretrained=False, image_size=64, sigma=2.0)
    model = build_model(cfg).eval()
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((5, 3, 64, 64)).astype(np.float32)
    stats = abl.target_stats(model, xs, batch=2)
    with torch.inference_mode():
        enc_s, _ = model(torch.from_numpy(xs))
    for (mu, sd), e in zip(stats, enc_s):
        a = e.double().numpy()
        np.testing.assert_allclose(mu.numpy().ravel(), a.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sd.numpy().ravel(), a.std(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    x = rng.standard_normal((3, 3, 64, 64)).astype(np.float32)
    got = abl.subset_maps(model, x, cfg, batch=2, centers=("none", "mean", "std"), stats=stats)
    with torch.inference_mode():
        enc, dec = model(torch.from_numpy(x))
        w = [1.0 if n[1] in "23" else 0.0 for n in model.pair_names()]
        want = {}
        for how in ("none", "mean", "std"):
            f = {"none": lambda t, m, s: t, "mean": lambda t, m, s: t - m, "std": lambda t, m, s: (t - m) / s}[how]
            _, mx, _ = anomaly_map_torch([f(e, m, s) for e, (m, s) in zip(enc, stats)],
                                         [f(d, m, s) for d, (m, s) in zip(dec, stats)], 64, sigma=2.0, weights=w)
            want[how] = mx.numpy()
            np.testing.assert_allclose(got[((2, 3), "both", 1, how)]["max"], want[how], rtol=1e-5)
    assert not np.allclose(want["none"], want["mean"]) and not np.allclose(want["mean"], want["std"])
