"""ReConPatch: pseudo-labels (Eqs. 1-6), relaxed contrastive loss (Eq. 7), EMA (Eq. 8), training,
determinism, resume, export parity and the Eq. 11 score fusion."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeuad.methods.patch_features import load_patch_model
from edgeuad.methods.reconpatch import (ReConPatchConfig, ReConPatchTrainer, contextual_similarity, ema_update,
                                        ensemble_scores, make_heads, modified_zscore, pairwise_similarity, pseudo_labels,
                                        relaxed_contrastive_loss, train_reconpatch)

SIZE = 64


def _two_clusters(per: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.tensor([0.0, 0.0, 0.0]) + 0.05 * torch.randn(per, 3, generator=g)
    b = torch.tensor([10.0, 0.0, 0.0]) + 0.05 * torch.randn(per, 3, generator=g)
    return torch.cat([a, b]).double()


def test_pseudo_labels_two_separated_clusters():
    z = _two_clusters(per=5)
    ctx = contextual_similarity(z, k=5)
    within = torch.zeros(10, 10, dtype=torch.bool)
    within[:5, :5] = within[5:, 5:] = True
    # k = cluster size: every kNN set is the whole cluster -> contextual similarity exactly 1 / 0.
    torch.testing.assert_close(ctx[within], torch.ones(50, dtype=torch.float64))
    torch.testing.assert_close(ctx[~within], torch.zeros(50, dtype=torch.float64))
    pw = pairwise_similarity(z, sigma=1.0)
    assert pw[within].min() > 0.9 and pw[~within].max() < 1e-30
    w = pseudo_labels(z, sigma=1.0, k=5, alpha=0.5, l2norm=False)
    assert w[within].min() > 0.95 and w[~within].max() < 1e-12
    torch.testing.assert_close(w, w.T)
    # Larger clusters than k: contextual similarity still never crosses clusters, and is > 0 inside.
    z = _two_clusters(per=12, seed=1)
    ctx = contextual_similarity(z, k=5)
    assert ctx[:12, 12:].abs().max() == 0 and ctx[12:, :12].abs().max() == 0
    assert (ctx[:12, :12].sum(1) > 0).all()


def _contextual_naive(z: torch.Tensor, k: int) -> torch.Tensor:
    """Eqs. 2-5 written literally with Python sets."""
    n = len(z)
    d = torch.cdist(z, z)
    d.fill_diagonal_(-1.0)
    order = torch.argsort(d, dim=1, stable=True)
    nk = [set(order[i, :k].tolist()) for i in range(n)]
    nh = [set(order[i, :max(1, k // 2)].tolist()) for i in range(n)]
    wt = np.zeros((n, n))
    for i in range(n):
        for j in nk[i]:
            wt[i, j] = len(nk[i] & nk[j]) / len(nk[i])
    wh = np.zeros((n, n))
    for i in range(n):
        r = [l for l in nh[i] if i in nh[l]]
        wh[i] = np.mean([wt[l] for l in r], axis=0)
    return torch.from_numpy(0.5 * (wh + wh.T))


@pytest.mark.parametrize("k", [2, 5, 6])
def test_contextual_similarity_matches_literal_equations(k):
    z = torch.randn(40, 4, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    torch.testing.assert_close(contextual_similarity(z, k), _contextual_naive(z, k))


def test_relaxed_contrastive_loss_matches_literal_equation():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 5, generator=g, dtype=torch.float64)
    w = torch.rand(12, 12, generator=g, dtype=torch.float64)
    m = 0.7
    d = torch.cdist(z, z)
    delta = d / d.mean(1, keepdim=True)
    ref = sum(w[i, j] * delta[i, j] ** 2 + (1 - w[i, j]) * max(m - delta[i, j].item(), 0.0) ** 2
              for i in range(12) for j in range(12) if i != j) / 12
    zz = z.clone().requires_grad_(True)
    loss = relaxed_contrastive_loss(zz, w, m)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert torch.isfinite(zz.grad).all()
    # scale invariance of delta: scaling z leaves the loss unchanged
    torch.testing.assert_close(relaxed_contrastive_loss(3.0 * z, w, m), ref)


def test_ema_update_formula():
    torch.manual_seed(0)
    src, tgt = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in tgt.parameters()]
    ema_update(tgt, src, 0.9)
    for b, t, s in zip(before, tgt.parameters(), src.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)


def _feats(n_per: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3.0, (4, 16))
    return np.concatenate([c + rng.normal(0, 1.0, (n_per, 16)) for c in centers]).astype(np.float32)


def _tcfg(**kw) -> ReConPatchConfig:
    base = dict(backbone="efficientnet_lite0", pretrained=False, image_size=SIZE, repr_dim=32, proj_dim=16, batch_patches=128, steps=60,
                lr=1e-3, ema=0.9, coreset_ratio=0.2, coreset_min_items=8, pre_dim=32, out_dim=32,
                batch_size=4, reweight_b=3, sigma=2.0, checkpoint_every=10)
    base.update(kw)
    return ReConPatchConfig(**base)


def test_loss_decreases_and_training_is_deterministic():
    feats = _feats()
    cfg = _tcfg(steps=40, batch_patches=96)
    t1 = ReConPatchTrainer(cfg, feats)
    losses = t1.fit(progress=False)
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-8:]) < 0.9 * np.mean(losses[:8]), (losses[:8], losses[-8:])
    t2 = ReConPatchTrainer(cfg, feats)
    assert t2.fit(progress=False, stop_at=20) == losses[:20]
    t3 = ReConPatchTrainer(_tcfg(steps=40, batch_patches=96, seed=1), feats)
    assert t3.fit(progress=False, stop_at=5) != losses[:5]


def test_trainer_resume_is_bit_identical(tmp_path):
    feats = _feats(n_per=60)
    cfg = _tcfg(steps=24)
    full = ReConPatchTrainer(cfg, feats)
    full.fit(progress=False)
    ck = tmp_path / "ck.safetensors"
    part = ReConPatchTrainer(cfg, feats)
    part.fit(progress=False, checkpoint=ck, stop_at=10)
    resumed = ReConPatchTrainer(cfg, feats)
    resumed.load(ck)
    assert resumed.step_index == 10
    resumed.fit(progress=False)
    assert resumed.losses == full.losses
    for a, b in zip(list(full.f.parameters()) + list(full.g_ema.parameters()),
                    list(resumed.f.parameters()) + list(resumed.g_ema.parameters())):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="different config"):
        ReConPatchTrainer(_tcfg(steps=24, margin=0.3), feats).load(ck)
    with pytest.raises(ValueError, match="different patch features"):
        ReConPatchTrainer(cfg, feats + 1.0).load(ck)


def _images(n: int, seed: int, defect: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy = np.arange(SIZE)[:, None].repeat(SIZE, 1)
    base = np.sin(yy / 3.0).astype(np.float32)
    x = np.stack([np.stack([base] * 3) + rng.normal(0, 0.1, (3, SIZE, SIZE)).astype(np.float32) for _ in range(n)])
    if defect:
        x[:, :, 36:48, 12:24] = 3.0
    return x.astype(np.float32)


def test_train_reconpatch_end_to_end_resume_export(tmp_path):
    from safetensors.torch import load_file, save_file

    train = _images(6, 0)
    # coreset_ratio=1: every training patch is in the bank, so training images must score ~0.
    cfg = _tcfg(steps=12, checkpoint_every=4, coreset_ratio=1.0)
    ck = tmp_path / "ck"
    assert train_reconpatch(cfg, train, progress=False, checkpoint_dir=ck, stop_at=8) is None
    pm = train_reconpatch(cfg, train, progress=False, checkpoint_dir=ck)          # resumes at step 8
    ref = train_reconpatch(cfg, train, progress=False)                            # uninterrupted
    np.testing.assert_array_equal(pm.bank, ref.bank)
    assert pm.method == "reconpatch" and pm.grid == (8, 8) and pm.bank.shape[1] == 32
    assert pm.config["method"] == "reconpatch"

    test = np.concatenate([_images(2, 10), _images(2, 11, defect=True)])
    maps, scores = pm.score_torch(test)
    assert maps.shape == (4, SIZE, SIZE) and scores[2:].min() > 1.5 * scores[:2].max(), scores
    # the bank lives in the embedder's output space: a training image scores ~0 everywhere
    _, s_train = pm.score_torch(train[:1])
    assert s_train[0] < 1e-3 * scores[2:].min()
    assert len(pm.bank) == 6 * 64

    save_file(pm.state_dict(), str(tmp_path / "w.safetensors"))
    pm2 = load_patch_model(load_file(str(tmp_path / "w.safetensors")), pm.config)
    np.testing.assert_allclose(pm2.score_torch(test)[1], scores, rtol=1e-6)

    ort = pytest.importorskip("onnxruntime")
    from edgeuad.export.onnx import INPUT_NAME, export_onnx

    path = export_onnx(pm.embedder, tmp_path / "emb.onnx", (SIZE, SIZE), ["embeddings"])   # the product's exporter
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {INPUT_NAME: test[:3]})[0]
    np.testing.assert_allclose(out, pm.embed(test[:3]), atol=1e-4, rtol=0)


def test_modified_zscore_and_ensemble():
    ref = np.array([1.0, 2.0, 3.0, 4.0, 100.0])  # median 3, MAD 1 (robust to the outlier)
    np.testing.assert_allclose(modified_zscore(np.array([3.0, 4.4826]), ref), [0.0, 1.0], rtol=1e-6)
    rng = np.random.default_rng(0)
    ra, sa = rng.normal(size=50), rng.normal(size=8)
    # A second model with another scale/offset gets the same normalised scores.
    np.testing.assert_allclose(modified_zscore(10 * sa + 3, 10 * ra + 3), modified_zscore(sa, ra), rtol=1e-5)
    rb, sb = rng.normal(5, 2, size=50), rng.normal(5, 2, size=8)
    fused = ensemble_scores([sa, sb], [ra, rb])
    np.testing.assert_allclose(fused, 0.5 * (modified_zscore(sa, ra) + modified_zscore(sb, rb)), rtol=1e-6)
    np.testing.assert_allclose(ensemble_scores([sa], [ra]), modified_zscore(sa, ra))
    with pytest.raises(ValueError):
        modified_zscore(sa, np.ones(10))
    with pytest.raises(ValueError):
        ensemble_scores([sa, sb[:3]], [ra, rb])


def test_config_roundtrip():
    import json
    with pytest.raises(ValueError, match="square"):
        _tcfg(image_size=(64, 80))
    cfg = _tcfg(image_size=(64, 80), max_patches_per_image=10, input_norm="imagenet")
    assert ReConPatchConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError):
        ReConPatchConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError):
        _tcfg(k=1)


@pytest.mark.parametrize("repr_dim", [64, 96])
def test_untrained_representation_preserves_distances(repr_dim):
    # f starts with orthonormal columns: an untrained ReConPatch scores exactly as PatchCore does.
    f, _ = make_heads(64, _tcfg(repr_dim=repr_dim))
    x = torch.randn(50, 64)
    with torch.no_grad():
        exact = "donot_use_mm_for_euclid_dist"  # the mm shortcut's rounding exceeds the tolerance
        d_in, d_out = torch.cdist(x, x, compute_mode=exact), torch.cdist(f(x), f(x), compute_mode=exact)
    assert torch.allclose(d_in, d_out, atol=1e-4)


def test_compress_head_keeps_every_distance_in_fewer_dims():
    from edgeuad.methods.reconpatch import compress_head

    torch.manual_seed(0)
    f = nn.Linear(24, 80)
    g = compress_head(f)
    assert (g.in_features, g.out_features) == (24, 24)
    x = torch.randn(40, 24) * 3
    with torch.no_grad():
        exact = "donot_use_mm_for_euclid_dist"
        d_f, d_g = torch.cdist(f(x), f(x), compute_mode=exact), torch.cdist(g(x), g(x), compute_mode=exact)
        np.testing.assert_allclose(d_g.numpy(), d_f.numpy(), rtol=1e-5, atol=1e-5)
        assert d_f.max() > 1.0  # the distances compared are not all ~0
        # g(x) = Q^T f(x): a bank of f's outputs maps into g's space by the same Q
        assert not torch.allclose(g(x), f(x)[:, :24])
    narrow = nn.Linear(24, 16)
    assert compress_head(narrow) is narrow  # nothing to gain when f does not widen


def test_compressed_reconpatch_scores_as_the_whole_head(tmp_path):
    """Same seed, same training, every patch in the bank: with and without compress_head the bank holds the
    same patches, in 32 instead of 64 dims, and every map and score agrees."""
    from safetensors.torch import load_file, save_file

    train, test = _images(4, 0), np.concatenate([_images(2, 10), _images(2, 11, defect=True)])
    whole = train_reconpatch(_tcfg(steps=10, repr_dim=64, coreset_ratio=1.0, compress_head=False), train, progress=False)
    small = train_reconpatch(_tcfg(steps=10, repr_dim=64, coreset_ratio=1.0), train, progress=False)
    assert whole.bank.shape == (4 * 64, 64) and small.bank.shape == (4 * 64, 32)
    m_whole, s_whole = whole.score_torch(test)
    m_small, s_small = small.score_torch(test)
    assert s_whole[2:].min() > s_whole[:2].max()  # defects found: the scores compared mean something
    np.testing.assert_allclose(s_small, s_whole, rtol=1e-4)
    np.testing.assert_allclose(m_small, m_whole, rtol=1e-4, atol=1e-4 * float(m_whole.max()))
    # both rebuild from their saved state and config; a config without the key is a whole head
    for pm in (small, whole):
        save_file(pm.state_dict(), str(tmp_path / "w.safetensors"))
        cfg = dict(pm.config)
        if not cfg["compress_head"]:
            del cfg["compress_head"]  # as saved before the option existed
        again = load_patch_model(load_file(str(tmp_path / "w.safetensors")), cfg)
        np.testing.assert_allclose(again.score_torch(test)[1], pm.score_torch(test)[1], rtol=1e-6)
