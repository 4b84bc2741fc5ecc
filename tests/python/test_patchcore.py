"""Patch features (aggregation, ONNX parity), scoring reference (Eq. 9/10, blur) and PatchCore training."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeuad.backbones import build_backbone
from edgeuad.methods.patch_features import (PatchFeatureExtractor, adaptive_avg_matrix, bank_neighbours,
                                            gaussian_blur_reflect, load_patch_model, nn_scores_torch)
from edgeuad.methods.patchcore import PatchCoreConfig, train_patchcore

SIZE = 64


def _images(n: int, seed: int, defect: bool = False) -> np.ndarray:
    """Nominal images: horizontal stripes + mild noise (normalised like preprocess output).
    A defect is a bright 12x12 square at a fixed place."""
    rng = np.random.default_rng(seed)
    yy = np.arange(SIZE)[:, None].repeat(SIZE, 1)
    base = np.sin(yy / 3.0).astype(np.float32)
    x = np.stack([np.stack([base] * 3) + rng.normal(0, 0.1, (3, SIZE, SIZE)).astype(np.float32)
                  for _ in range(n)])
    if defect:
        x[:, :, 36:48, 12:24] = 3.0
    return x.astype(np.float32)


def _cfg(**kw) -> PatchCoreConfig:
    base = dict(backbone="efficientnet_lite0", pretrained=False, image_size=SIZE, coreset_ratio=0.25, coreset_min_items=16,
                pre_dim=64, out_dim=64, batch_size=4, reweight_b=3, sigma=2.0)
    base.update(kw)
    return PatchCoreConfig(**base)


@pytest.mark.parametrize("cin,cout", [(40, 256), (112, 64), (7, 7), (10, 3), (152, 100)])
def test_adaptive_avg_matrix_equals_adaptive_avg_pool1d(cin, cout):
    v = torch.randn(4, cin, dtype=torch.float64)
    ref = F.adaptive_avg_pool1d(v[:, None], cout)[:, 0]
    torch.testing.assert_close(v @ adaptive_avg_matrix(cin, cout).T, ref)


def test_extractor_matches_two_step_pipeline_and_grid():
    torch.manual_seed(0)
    bb = build_backbone("efficientnet_lite0", pretrained=False)
    ext = PatchFeatureExtractor(bb, layers=(1, 2), pre_dim=32, out_dim=48).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        y = ext(x)
        f = bb(x)
        # Explicit PatchCore form: pool, upsample, per-stage MeanMapper, concat, Aggregator.
        a = F.avg_pool2d(f[1], 3, 1, 1, count_include_pad=False)
        b = F.interpolate(F.avg_pool2d(f[2], 3, 1, 1, count_include_pad=False), size=a.shape[-2:],
                          mode="bilinear", align_corners=False)
        per = [F.adaptive_avg_pool1d(t.flatten(2).transpose(1, 2).reshape(-1, 1, t.shape[1]), 32)
               for t in (a, b)]
        cat = torch.cat(per, dim=-1)
        ref = F.adaptive_avg_pool1d(cat, 48).reshape(2, -1, 48)
    assert y.shape == (2, 64, 48) and ext.grid_size(SIZE) == (8, 8)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in ext.parameters())
    ext.train()
    assert not ext.backbone.training  # BN statistics of the frozen backbone never move


def test_extractor_default_is_the_raw_concatenation():
    """out_dim=0 (the default): stride-8 and upsampled stride-16 averages concatenated, 40 + 112 dims."""
    torch.manual_seed(0)
    bb = build_backbone("efficientnet_lite0", pretrained=False)
    ext = PatchFeatureExtractor(bb, layers=(1, 2)).eval()
    assert ext.dim == 152 and not ext.project
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        f = bb(x)
        a = F.avg_pool2d(f[1], 3, 1, 1, count_include_pad=ext.count_include_pad)
        b = F.interpolate(F.avg_pool2d(f[2], 3, 1, 1, count_include_pad=ext.count_include_pad),
                          size=a.shape[-2:], mode="bilinear", align_corners=False)
        ref = torch.cat([a, b], 1).flatten(2).transpose(1, 2)
        torch.testing.assert_close(ext(x), ref)
    with pytest.raises(ValueError, match="both"):
        PatchFeatureExtractor(bb, pre_dim=64, out_dim=0)


def test_extractor_onnx_dynamic_batch_parity(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    ext = PatchFeatureExtractor(build_backbone("efficientnet_lite0", pretrained=False), pre_dim=64, out_dim=64).eval()
    from edgeuad.export.onnx import INPUT_NAME, export_onnx

    path = export_onnx(ext, tmp_path / "ext.onnx", (SIZE, SIZE), ["embeddings"])   # the product's exporter
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 3):
        x = torch.randn(b, 3, SIZE, SIZE)
        out = sess.run(None, {INPUT_NAME: x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(out, ext(x).numpy(), atol=1e-4, rtol=0)


def test_blur_matches_scipy():
    ndi = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    m = rng.random((2, 20, 37)).astype(np.float64)
    for sigma in (1.0, 4.0, 6.0):  # sigma 6: radius 24 > 20 rows, reflection wraps more than once
        ref = np.stack([ndi.gaussian_filter(mi, sigma, mode="reflect", truncate=4.0) for mi in m])
        got = gaussian_blur_reflect(torch.from_numpy(m), sigma).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-10)
    np.testing.assert_array_equal(gaussian_blur_reflect(torch.from_numpy(m), 0.0).numpy(), m)


def test_nn_scores_and_eq10_against_direct_formula():
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(50, 6))
    q = rng.normal(size=(30, 6))
    s0, i0 = nn_scores_torch(torch.from_numpy(q), torch.from_numpy(bank), b=0)
    d = np.linalg.norm(q[:, None] - bank[None], axis=-1)
    np.testing.assert_allclose(s0.numpy(), d.min(1), rtol=1e-12)
    np.testing.assert_array_equal(i0.numpy(), d.argmin(1))
    b = 4
    s4, _ = nn_scores_torch(torch.from_numpy(q), torch.from_numpy(bank), b=b)
    bb = np.linalg.norm(bank[:, None] - bank[None], axis=-1)
    for t in range(len(q)):
        r = d[t].argmin()
        nb = np.argsort(bb[r])[:b]  # includes r itself (distance 0)
        assert r in nb
        w = 1.0 - np.exp(d[t, r]) / np.exp(d[t, nb]).sum()
        assert abs(s4[t].item() - w * d[t, r]) < 1e-9
        assert 1.0 - 1.0 / b - 1e-12 <= w < 1.0
    nbr = bank_neighbours(torch.from_numpy(bank), b)
    assert (nbr[:, 0] == torch.arange(50)).all()
    with pytest.raises(ValueError):
        nn_scores_torch(torch.from_numpy(q), torch.from_numpy(bank), b=1)


def test_train_patchcore_scores_defect_and_round_trips(tmp_path):
    from safetensors.torch import load_file, save_file

    train = _images(6, seed=0)
    cfg = _cfg()
    pm = train_patchcore(cfg, train, progress=False)
    assert pm.method == "patchcore" and pm.grid == (8, 8) and pm.reweight_b == 3
    assert pm.bank.dtype == np.float32 and pm.bank.shape == (int(np.ceil(0.25 * 6 * 64)), 64)
    assert pm.config["method"] == "patchcore" and pm.config["sigma"] == 2.0

    good, bad = _images(2, seed=10), _images(2, seed=11, defect=True)
    maps, scores = pm.score_torch(np.concatenate([good, bad]))
    assert maps.shape == (4, SIZE, SIZE) and maps.dtype == np.float32 and scores.shape == (4,)
    np.testing.assert_allclose(scores, maps.reshape(4, -1).max(1))
    assert scores[2:].min() > 1.5 * scores[:2].max(), scores
    peak = np.unravel_index(maps[2].argmax(), maps[2].shape)
    assert 28 <= peak[0] <= 56 and peak[1] <= 32, peak  # near the 12x12 square at (36:48, 12:24)

    # Same seed -> same bank; state dict round trip through safetensors -> same scores.
    pm2 = train_patchcore(cfg, train, progress=False)
    np.testing.assert_array_equal(pm.bank, pm2.bank)
    save_file(pm.state_dict(), str(tmp_path / "w.safetensors"))
    pm3 = load_patch_model(load_file(str(tmp_path / "w.safetensors")), pm.config)
    maps3, scores3 = pm3.score_torch(np.concatenate([good, bad]))
    np.testing.assert_allclose(scores3, scores, rtol=1e-6)
    assert pm3.grid == pm.grid and pm3.reweight_b == pm.reweight_b


def test_refit_bank_equals_training_on_all_the_images():
    """refit_bank rebuilds only the bank, by the training's own rule: a model trained on part of the
    images and refitted over all of them holds the bank of a model trained on all of them."""
    from edgeuad.methods.memory_bank import refit_bank

    part, rest = _images(4, seed=0), _images(2, seed=5)
    cfg = _cfg()
    pm = train_patchcore(cfg, part, progress=False)
    full = refit_bank(pm, cfg, np.concatenate([part, rest]))
    ref = train_patchcore(cfg, np.concatenate([part, rest]), progress=False)
    np.testing.assert_array_equal(full.bank, ref.bank)
    assert full.embedder is pm.embedder and len(pm.bank) == int(np.ceil(0.25 * 4 * 64)) < len(full.bank)
    with pytest.raises(ValueError, match="image_size"):
        refit_bank(pm, cfg, part[:, :, :32, :32])


def test_config_roundtrip_and_validation():
    # input_norm "auto" scores a square synthetic split, so a rectangular input names its normalisation
    with pytest.raises(ValueError, match="square"):
        _cfg(image_size=(64, 96))
    cfg = _cfg(image_size=(64, 96), layers=[0, 2], input_norm="inception")
    d = cfg.to_dict()
    import json
    assert PatchCoreConfig.from_dict(json.loads(json.dumps(d))) == cfg
    with pytest.raises(ValueError):
        PatchCoreConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(ValueError):
        _cfg(reweight_b=1)
    with pytest.raises(ValueError, match="image_size"):
        train_patchcore(_cfg(), _images(2, 0)[:, :, :32, :32], progress=False)
