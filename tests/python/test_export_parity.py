"""check_parity: scale-aware tolerance accepts fp32 reordering noise on large activations, and still
catches a graph that computes something else."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeuad.export.onnx import ParityError, check_parity, export_onnx


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
