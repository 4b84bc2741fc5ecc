"""check_parity: scale-aware tolerance accepts fp32 reordering noise on large activations, and still
catches a graph that computes something else."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeuad.export.onnx import ParityError, check_parity, export_onnx, parity_verdict


class Big(nn.Module):
    """Activations of RMS ~ 30, like a trained ReContrast encoder."""

    def __init__(self, gain: float = 30.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.gain = gain

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x) * self.gain
        return y, torch.relu(y)


def test_parity_passes_for_faithful_graph(tmp_path):
    m = Big()
    p = export_onnx(m, tmp_path / "m.onnx", (16, 16), ["a", "b"])
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    rep = check_parity(m, p, x, ["a", "b"])
    assert rep.worst < 1e-3


def test_parity_catches_a_different_graph(tmp_path):
    m = Big()
    p = export_onnx(m, tmp_path / "m.onnx", (16, 16), ["a", "b"])
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        m.conv.bias += 0.5  # torch model drifts by 0.5 x gain = 15 >> 1e-3 x RMS
    with pytest.raises(ParityError, match="a: max abs diff"):
        check_parity(m, p, x, ["a", "b"])


class SameStride2(nn.Module):
    """EfficientNet-Lite's asymmetric SAME stride-2 conv, shared by two consumers (like the stem
    feeding the trainable and the frozen encoder), plus a non-zero pad that must NOT be folded."""

    def __init__(self) -> None:
        super().__init__()
        from edgeuad.backbones import _SameConv

        torch.manual_seed(0)
        self.a = _SameConv(3, 8, 3, stride=2)
        self.b = _SameConv(3, 8, 3, stride=2)
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.a(x), self.b(x), self.c(nn.functional.pad(x, (1, 1, 1, 1), value=2.0))


def test_zero_pads_fold_into_conv_and_graph_still_matches(tmp_path):
    import onnx

    m = SameStride2()
    names = ["a", "b", "c"]
    p = export_onnx(m, tmp_path / "s.onnx", (32, 32), names)
    ops = [n.op_type for n in onnx.load(str(p)).graph.node]
    assert ops.count("Pad") == 1  # the value-2 pad stays, the zero SAME pads are gone
    pads = [list(a.ints) for n in onnx.load(str(p)).graph.node if n.op_type == "Conv"
            for a in n.attribute if a.name == "pads"]
    assert [0, 0, 1, 1] in pads  # asymmetric: nothing before, one pixel after
    x = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    assert check_parity(m, p, x, names).worst < 1e-4


class Cancelling(nn.Module):
    """w.x computed as (w.x + 1e5) - 1e5 through two convs: exact in float64, up to ~1e-2 off in float32 (the
    float32 spacing at 1e5 is 7.8e-3), like a trained BatchNorm with a tiny running variance."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 2, 1)
        self.c2 = nn.Conv2d(2, 1, 1, bias=False)
        with torch.no_grad():
            self.c1.weight[1].zero_()
            self.c1.bias.fill_(offset)
            self.c2.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(self.c1(x))


def test_ill_conditioned_torch_is_judged_against_float64(tmp_path):
    """The graph computes the same function exactly (offset 0) while torch float32 loses ~1e-2 to
    cancellation: the fixed tolerance flags it, the float64 answer clears it, and the report says why."""
    ill, exact = Cancelling(1e5), Cancelling(0.0)
    p = export_onnx(exact, tmp_path / "m.onnx", (16, 16), ["y"])
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        d32 = float((ill(torch.from_numpy(x)) - exact(torch.from_numpy(x))).abs().max())
    assert d32 > 2e-3  # the fixed tolerance (1e-3 x max(1, RMS ~0.6) + 1e-3 x |y|) cannot pass this
    rep = check_parity(ill, p, x, ["y"])
    assert rep.failures == []
    assert rep.float32_error["y"] == pytest.approx(d32, rel=0.05)
    assert rep.max_abs["y"] == pytest.approx(d32, rel=1e-3)  # reported against torch float32


def test_float64_fallback_still_catches_a_different_graph(tmp_path):
    ill = Cancelling(1e5)
    wrong = Cancelling(0.0)
    with torch.no_grad():
        wrong.c1.bias[0] += 0.5  # off by 0.5: > 8 x torch float32 error (~1e-2 here) + the fixed tolerance
    p = export_onnx(wrong, tmp_path / "m.onnx", (16, 16), ["y"])
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    with pytest.raises(ParityError, match=r"y: max abs diff .* x torch float32 error"):
        check_parity(ill, p, x, ["y"])


def test_parity_verdict_bounds():
    """The pure decision: conditioning x torch's own float32 error is the whole extra allowance."""
    rng = np.random.default_rng(1)
    exact = rng.normal(size=(4, 8)) * 5
    e = 1e-2
    ref32 = (exact + e * rng.choice([-1.0, 1.0], size=exact.shape)).astype(np.float32)
    fixed = 1e-3 * float(np.sqrt(np.mean(exact ** 2))) + 1e-3 * np.abs(exact)
    for k, ok in ((7.0, True), (9.5, False)):  # graph k x as far from exact as torch float32 is
        got = (exact + fixed + k * e).astype(np.float32)
        rep = parity_verdict(["o"], [ref32], [got], [exact], 1e-3, 1e-3, conditioning=8.0)
        assert (rep.failures == []) is ok, (k, rep.failures)
    got = exact.astype(np.float32).copy()
    got[0, 0] = np.nan
    assert parity_verdict(["o"], [ref32], [got], [exact], 1e-3, 1e-3).failures
    # without the float64 answer, the same 7x graph fails the fixed tolerance against torch float32
    assert parity_verdict(["o"], [ref32], [(exact + 7 * e).astype(np.float32)], None, 1e-3, 1e-3).failures
