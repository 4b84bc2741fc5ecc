"""ReContrast: model layout, loss + hard mining, schedule, training determinism/resume,
torch reference post-processing, ONNX exportability. Tiny random-init models only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeuad.backbones import BACKBONES
from edgeuad.methods.common import (EpochShuffleSampler, ImageArrayDataset, load_checkpoint,
                                    save_checkpoint, seed_everything)
from edgeuad.methods.recontrast import (ReContrastConfig, alpha_at, anomaly_map_torch, build_model,
                                        gaussian_blur_torch, global_cosine_hm, load_model, model_state,
                                        recontrast_loss)
from edgeuad.methods.recontrast_train import CHECKPOINT_NAME, train_recontrast

SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The test machines share 2 cores between several jobs; intra-op threads then spin
    against each other (10x slower). One thread per test process, restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _cfg(**kw: object) -> ReContrastConfig:
    base: dict[str, object] = dict(pretrained=False, image_size=SIZE, batch_size=4, iterations=4,
                                   checkpoint_every=100, seed=3)
    base.update(kw)
    return ReContrastConfig(**base)  # type: ignore[arg-type]


def _images(n: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # "normal" images: one pattern plus small noise, so there is something to learn
    base = rng.normal(size=(1, 3, SIZE, SIZE))
    return (base + 0.2 * rng.normal(size=(n, 3, SIZE, SIZE))).astype(np.float32)


def _randomise_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


# ----------------------------------------------------------------------- model
@pytest.mark.parametrize("backbone", sorted(BACKBONES))  # every backbone a user may name, Lite1/Lite2 included
def test_pair_shapes_all_backbones(backbone: str) -> None:
    torch.manual_seed(0)
    model = build_model(_cfg(backbone=backbone))
    with torch.no_grad():
        enc, dec = model(torch.randn(2, 3, SIZE, SIZE))
    assert len(enc) == len(dec) == len(model.pair_names()) == 6
    c = model.channels
    for i, (e, d) in enumerate(zip(enc, dec)):
        level = i % 3
        stride = 4 * 2 ** level
        assert tuple(e.shape) == tuple(d.shape) == (2, c[level], SIZE // stride, SIZE // stride)


def test_pair_order_and_crossing() -> None:
    torch.manual_seed(0)
    model = build_model(_cfg()).eval()
    assert model.pair_names() == ["l1_frozen", "l2_frozen", "l3_frozen", "l1_train", "l2_train", "l3_train"]
    # make the two encoder copies differ, then check which copy fills which slot
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
        x = torch.randn(2, 3, SIZE, SIZE)
        enc, dec = model(x)
        frozen, trained = model.encoder_frozen(x), model.encoder(x)
        for k in range(3):
            assert torch.equal(enc[k], frozen[k]) and torch.equal(enc[3 + k], trained[k])
        # crossed: heads_a decode the trainable branch (first half of the shared batch)
        de = model.decoder(model.bottleneck([torch.cat([t, f]) for t, f in zip(trained, frozen)]))
        for k in range(3):
            torch.testing.assert_close(dec[k], model.heads_a[k](de[k][:2]))
            torch.testing.assert_close(dec[3 + k], model.heads_b[k](de[k][2:]))
    assert not any(p.requires_grad for p in model.encoder_frozen.parameters())


def test_bn_modes() -> None:
    model = build_model(_cfg(encoder_bn="eval"))
    model.train()
    assert not model.encoder.training and not model.encoder_frozen.training and model.decoder.training
    model = build_model(_cfg(encoder_bn="train"))
    model.train()
    assert model.encoder.training and not model.encoder_frozen.training
    model.eval()
    assert not model.encoder.training and not model.decoder.training


def test_rejects_sizes_not_multiple_of_32() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        build_model(_cfg())(torch.randn(1, 3, 48, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        _cfg(image_size=100)


def test_config_roundtrip_and_validation() -> None:
    cfg = _cfg(bottleneck_dim=128, betas=(0.8, 0.99), score="topk_mean")
    again = ReContrastConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.betas == (0.8, 0.99)
    with pytest.raises(ValueError, match="unknown"):
        ReContrastConfig.from_dict({**cfg.to_dict(), "lr": 1.0})
    with pytest.raises(ValueError, match="encoder_bn"):
        _cfg(encoder_bn="frozen")


# ------------------------------------------------------------------------ loss
def test_hard_mining_hook_zeroes_easy_gradients() -> None:
    # 1 x 2 x 1 x 4 maps: per-location cosine distance is known by construction
    a = torch.tensor([[[[1.0, 1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0, 0.0]]]])
    angles = torch.tensor([0.0, 0.1, 1.0, 1.5])  # distances 1 - cos(angle): small, small, large, larger
    b = torch.stack([torch.cos(angles), torch.sin(angles)]).view(1, 2, 1, 4).clone().requires_grad_(True)
    d = 1 - torch.cos(angles)
    alpha = 0.0
    thresh = d.mean() + alpha * d.std()
    keep = d >= thresh
    assert keep.tolist() == [False, False, True, True]

    loss = global_cosine_hm([a], [b], alpha)
    loss.backward()
    b_ref = b.detach().clone().requires_grad_(True)
    ref = (1 - F.cosine_similarity(a.flatten(1), b_ref.flatten(1))).mean()
    ref.backward()
    torch.testing.assert_close(loss.detach(), ref.detach())  # loss value is not masked
    assert b.grad is not None and b_ref.grad is not None
    assert torch.all(b.grad[..., ~keep] == 0)
    torch.testing.assert_close(b.grad[..., keep], b_ref.grad[..., keep])
    assert torch.any(b_ref.grad[..., ~keep] != 0)  # the zeroing is the hook's doing

    # alpha very low: nothing is easy, gradients untouched
    b2 = b.detach().clone().requires_grad_(True)
    global_cosine_hm([a], [b2], alpha=-10.0).backward()
    torch.testing.assert_close(b2.grad, b_ref.grad)


def test_hard_mining_off_keeps_every_gradient() -> None:
    # alpha None (hard_mining "off"): the plain global cosine loss, no point masked even where easy
    a = torch.randn(2, 4, 3, 3)
    b = torch.randn(2, 4, 3, 3)
    b[:, :, 0, 0] = a[:, :, 0, 0]  # distance 0 there: "easy" for any alpha >= -mean/std
    b1 = b.clone().requires_grad_(True)
    b2 = b.clone().requires_grad_(True)
    loss = global_cosine_hm([a], [b1], None)
    loss.backward()
    ref = (1 - F.cosine_similarity(a.flatten(1), b2.flatten(1))).mean()
    ref.backward()
    torch.testing.assert_close(loss.detach(), ref.detach())
    torch.testing.assert_close(b1.grad, b2.grad)
    assert torch.all(b1.grad[:, :, 0, 0] != 0)
    b3 = b.clone().requires_grad_(True)
    global_cosine_hm([a], [b3], alpha=1.0).backward()
    assert torch.all(b3.grad[:, :, 0, 0] == 0)  # the same point with mining on is masked


def test_hard_mining_option() -> None:
    assert alpha_at(0, _cfg(hard_mining="off")) is None
    assert alpha_at(0, _cfg(hard_mining="on", iterations=2000)) == -3.0
    with pytest.raises(ValueError, match="hard_mining"):
        _cfg(hard_mining="auto")


def test_loss_stops_gradient_to_targets() -> None:
    a = torch.randn(2, 4, 3, 3, requires_grad=True)
    b = torch.randn(2, 4, 3, 3, requires_grad=True)
    recontrast_loss([a, a], [b, b], alpha=-3.0).backward()
    assert a.grad is None and b.grad is not None


def test_alpha_schedule() -> None:
    cfg = _cfg(iterations=2000)
    assert alpha_at(0, cfg) == -3.0
    assert alpha_at(50, cfg) == pytest.approx(-2.0)
    assert alpha_at(100, cfg) == pytest.approx(-1.0)
    assert alpha_at(199, cfg) == pytest.approx(-3.0 + 4.0 * 199 / 200)
    assert alpha_at(200, cfg) == 1.0 and alpha_at(1999, cfg) == 1.0
    assert alpha_at(0, _cfg(alpha_warmup_frac=0.0)) == 1.0


# -------------------------------------------------------------------- training
def test_loss_decreases(tmp_path: Path) -> None:
    cfg = _cfg(iterations=20, alpha_warmup_frac=0.1)
    losses: list[float] = []
    orig = recontrast_loss

    def spy(enc, dec, alpha):  # type: ignore[no-untyped-def]
        loss = orig(enc, dec, alpha)
        losses.append(float(loss.detach()))
        return loss

    import edgeuad.methods.recontrast_train as rc
    mp = pytest.MonkeyPatch()
    mp.setattr(rc, "recontrast_loss", spy)
    try:
        train_recontrast(cfg, _images(8), tmp_path, progress=False)
    finally:
        mp.undo()
    assert len(losses) == 20
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[2:6])


def test_training_is_deterministic_and_checkpointed(tmp_path: Path) -> None:
    cfg = _cfg(iterations=3)
    m1 = train_recontrast(cfg, _images(), tmp_path / "a", progress=False)
    m2 = train_recontrast(cfg, _images(), tmp_path / "b", progress=False)
    s1, s2 = model_state(m1), model_state(m2)
    assert s1.keys() == s2.keys()
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    tensors, meta = load_checkpoint(tmp_path / "a" / CHECKPOINT_NAME)
    from edgeuad.methods.recontrast_train import resolve_precision
    ran = resolve_precision(cfg, torch.device("cpu"))  # the checkpoint records what ran ("auto" resolved)
    assert meta["iteration"] == 3 and meta["config"] == {**cfg.to_dict(), "precision": ran}
    assert any(k.startswith("opt_dec.state.") for k in tensors)
    # training changed the trainable encoder and the decoder but not the frozen copy
    seed_everything(cfg.seed)  # same initialisation as the training run
    fresh = build_model(cfg)
    fs = model_state(fresh)
    assert all(torch.equal(fs[k], s1[k]) for k in s1 if k.startswith("encoder_frozen."))
    assert not all(torch.equal(fs[k], s1[k]) for k in s1 if k.startswith("decoder."))


def test_resume_matches_uninterrupted(tmp_path: Path) -> None:
    cfg = _cfg(iterations=4)
    full = model_state(train_recontrast(cfg, _images(), tmp_path / "full", progress=False))
    train_recontrast(cfg, _images(), tmp_path / "part", progress=False, stop_after=2)
    _, meta = load_checkpoint(tmp_path / "part" / CHECKPOINT_NAME)
    assert meta["iteration"] == 2
    resumed = model_state(train_recontrast(cfg, _images(), tmp_path / "part", progress=False))
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], atol=1e-6, rtol=0, msg=k)
    with pytest.raises(ValueError, match="different configuration"):
        train_recontrast(_cfg(iterations=4, lr_decoder=1e-3), _images(), tmp_path / "part", progress=False)


def test_model_state_roundtrip() -> None:
    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    _randomise_bn(model)
    state = model_state(model)
    again = load_model(state, cfg)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        for a, b in zip(model(x)[1], again(x)[1]):
            assert torch.equal(a, b)


def test_checkpoint_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.ones(2)}, {"iteration": 1})
    import edgeuad.methods.common as common

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(common.os, "replace", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, {"w": torch.zeros(2)}, {"iteration": 2})
    tensors, meta = load_checkpoint(path)
    assert meta["iteration"] == 1 and torch.equal(tensors["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left


def test_sampler_and_dataset() -> None:
    s = EpochShuffleSampler(10, 4, seed=1)
    epoch = np.concatenate([s.batch_indices(i) for i in range(3)])
    assert sorted(epoch.tolist()) == list(range(10))       # each image once per epoch
    assert len(s.batch_indices(2)) == 2                    # drop_last=False
    assert np.array_equal(EpochShuffleSampler(10, 4, seed=1).batch_indices(4), s.batch_indices(4))
    with pytest.raises(ValueError, match="float32"):
        ImageArrayDataset(np.zeros((2, 3, 8, 8), np.float64))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        ImageArrayDataset(np.zeros((2, 8, 8, 3), np.float32))


def test_train_rejects_wrong_image_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        train_recontrast(_cfg(image_size=96), _images(), tmp_path, progress=False)


# --------------------------------------------------------------- post-process
def test_gaussian_blur_matches_scipy() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    for shape, sigma in [((2, 40, 52), 4.0), ((1, 7, 5), 4.0), ((1, 20, 20), 1.5)]:
        m = rng.random(shape)
        got = gaussian_blur_torch(torch.from_numpy(m), sigma).numpy()
        want = np.stack([ndimage.gaussian_filter(x, sigma=sigma, mode="reflect", truncate=4.0) for x in m])
        np.testing.assert_allclose(got, want, atol=1e-12)
    assert torch.equal(gaussian_blur_torch(torch.ones(1, 3, 3), 0.0), torch.ones(1, 3, 3))


def test_anomaly_map_reference() -> None:
    g = torch.Generator().manual_seed(0)
    enc = [torch.randn(2, 8, 8, 8, generator=g, dtype=torch.float64), torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64)]
    dec = [torch.randn(2, 8, 8, 8, generator=g, dtype=torch.float64), torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64)]
    maps, mx, topk = anomaly_map_torch(enc, dec, 32, sigma=0.0)
    want = sum(F.interpolate((1 - F.cosine_similarity(a, b, dim=1, eps=1e-8))[:, None], size=(32, 32),
                             mode="bilinear", align_corners=True)[:, 0] for a, b in zip(enc, dec))
    torch.testing.assert_close(maps, want)
    torch.testing.assert_close(mx, want.flatten(1).max(1).values)
    k = int(0.01 * 32 * 32)
    torch.testing.assert_close(topk, want.flatten(1).sort(1, descending=True).values[:, :k].mean(1))
    blurred, bmax, _ = anomaly_map_torch(enc, dec, (32, 40), sigma=4.0)
    assert blurred.shape == (2, 32, 40) and torch.all(bmax <= mx + 1e-9)
    # zero vectors: cosine uses max(|x|, 1e-8) so the distance is exactly 1, never NaN
    z = [torch.zeros(1, 3, 2, 2)]
    maps0, _, _ = anomaly_map_torch(z, z, 4, sigma=0.0)
    torch.testing.assert_close(maps0, torch.ones(1, 4, 4))


# ------------------------------------------------------------------------ export
@pytest.mark.parametrize("width", [1, 3])
def test_onnx_export_dynamic_batch(tmp_path: Path, width: int) -> None:
    # the TorchScript exporter (dynamo=False) is the one export/onnx.py ships; the dynamo exporter is not
    # used by the product, so it is not tested here (it took ~80 s of the suite)
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_model(_cfg(decoder_width=width)).eval()
    _randomise_bn(model)
    names = model.pair_names()
    outputs = [f"enc_{n}" for n in names] + [f"dec_{n}" for n in names]
    path = tmp_path / "recontrast.onnx"
    x0 = (torch.randn(2, 3, SIZE, SIZE),)
    torch.onnx.export(model, x0, str(path), input_names=["image"], output_names=outputs, dynamo=False,
                      dynamic_axes={"image": {0: "batch"}, **{o: {0: "batch"} for o in outputs}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = torch.randn(n, 3, SIZE, SIZE)
        with torch.no_grad():
            enc, dec = model(x)
        got = sess.run(None, {"image": x.numpy()})
        assert len(got) == 12
        for g, w in zip(got, enc + dec):
            assert g.shape == tuple(w.shape)
            np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ decoder width
def test_decoder_width_widens_the_decoder_not_the_pairs() -> None:
    torch.manual_seed(0)
    narrow, wide = build_model(_cfg()), build_model(_cfg(decoder_width=3))
    c = narrow.channels
    # the decoder's stages are 3x as wide; the 1x1 heads map them back to the encoder's channels
    assert [h.weight.shape[1] for h in wide.heads_a] == [3 * k for k in c]
    assert [h.weight.shape[0] for h in wide.heads_b] == list(c)
    assert wide.decoder.layer1[-1].conv2.out_channels == 3 * c[0]
    assert wide.bottleneck_dim == narrow.bottleneck_dim
    with torch.no_grad():
        enc_n, dec_n = narrow(torch.randn(2, 3, SIZE, SIZE))
        enc_w, dec_w = wide(torch.randn(2, 3, SIZE, SIZE))
    assert [t.shape for t in dec_w] == [t.shape for t in dec_n] == [t.shape for t in enc_w]


@pytest.mark.parametrize("bad", [0, 17, True, 2.0, "2"])
def test_decoder_width_is_checked(bad: object) -> None:
    with pytest.raises(ValueError, match="decoder_width"):
        _cfg(decoder_width=bad)


def test_decoder_width_round_trips_through_state(tmp_path: Path) -> None:
    cfg = _cfg(decoder_width=2)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    again = load_model(model_state(model), ReContrastConfig.from_dict(cfg.to_dict()))
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        for a, b in zip(model(x)[1], again(x)[1]):
            torch.testing.assert_close(a, b)
    with pytest.raises(RuntimeError):  # a state of the other width does not load silently
        load_model(model_state(model), _cfg(decoder_width=1))


def test_forward_levels_subset_and_bad_levels() -> None:
    torch.manual_seed(0)
    model = build_model(_cfg()).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        enc_all, dec_all = model(x)
        enc, dec = model(x, (3, 2))                      # order-free: pairs come as pair_names((2, 3))
    assert model.pair_names((2, 3)) == ["l2_frozen", "l3_frozen", "l2_train", "l3_train"]
    for got, want in zip(enc + dec, [enc_all[i] for i in (1, 2, 4, 5)] + [dec_all[i] for i in (1, 2, 4, 5)]):
        torch.testing.assert_close(got, want)
    for bad in ((), (0,), (4,), (1, 5)):
        with pytest.raises(ValueError, match="levels"):
            model(x, bad)
