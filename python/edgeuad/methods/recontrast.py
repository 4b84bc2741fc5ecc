"""ReContrast (Guo et al., NeurIPS 2023): model, loss, training loop, torch reference maps.

Structure (following the official code, see docs and /work/shared/papers/README.md):

* two copies of an ImageNet encoder: one trained with a small learning rate,
  one frozen (always eval mode, no gradients);
* ONE bottleneck + decoder shared by both branches: the trainable and the
  frozen features are concatenated along the batch axis (trainable first), go
  through the bottleneck and decoder together (so decoder BatchNorm sees both
  views), and are split again after the decoder;
* two sets of 1x1 output heads per level: set ``a`` is applied to the half
  decoded from the *trainable* encoder and reconstructs the *frozen* encoder's
  features, set ``b`` is applied to the half decoded from the *frozen* encoder
  and reconstructs the *trainable* encoder's features (crossed pairing).

``forward(x)`` returns ``(enc, dec)``, six tensors each, paired elementwise::

    index  name        enc (target, detached in the loss)   dec (reconstruction)
    0..2   l{k}_frozen frozen encoder level k                heads a on trainable-branch decoding
    3..5   l{k}_train  trainable encoder level k             heads b on frozen-branch decoding

Levels k = 1, 2, 3 are the backbone stages at strides 4, 8, 16.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import BACKBONES, Backbone, build_backbone, check_taps
from ..preprocess import INPUT_NORMS
from .common import gaussian_blur_torch, resolve_device

log = logging.getLogger(__name__)

__all__ = [
    "DECODER_SPECS",
    "DecoderSpec",
    "ReContrastConfig",
    "ReContrastModel",
    "HARD_MINING",
    "PRECISIONS",
    "alpha_at",
    "level_weights",
    "anomaly_map_torch",
    "build_model",
    "gaussian_blur_torch",
    "global_cosine_hm",
    "load_model",
    "model_state",
    "recontrast_loss",
]

# ------------------------------------------------------------------------- config
def resolved_score(cfg: "ReContrastConfig") -> str:
    """The image score a model ships with: cfg.score, or for "auto" when no validation decided it (a model
    built or trained without a validation set) the official default: top-1% mean for the stable variant,
    max otherwise.  Training with validation stores the decided rule in the config it returns."""
    if cfg.score != "auto":
        return cfg.score
    return "topk_mean" if cfg.stable else "max"


ENCODER_BN_MODES = ("train", "eval", "auto")
# hard-normal mining: "on" (official) or "off" (measured on magnetic_tile, Lite0: worse on validation and test;
# benchmarks/plans/recontrast_hard_mining_2026-12-05.md and RESULTS section 1)
HARD_MINING = ("on", "off")
# training arithmetic (recontrast_train.resolve_precision); validation and the exported graph are float32 always
PRECISIONS = ("fp32", "bf16", "auto")
SCORES = ("max", "topk_mean", "auto")
# feature levels whose pairs make the anomaly map (levels 1, 2, 3 = strides 4, 8, 16); "auto": chosen on
# the synthetic-defect validation split at the kept checkpoint (official: all three)
LEVELS = ("1,2,3", "2,3", "auto")
LEVELS_MARGIN = 0.01  # "2,3" replaces the official "1,2,3" only when this much better on validation


def resolved_levels(cfg: "ReContrastConfig") -> tuple[int, ...]:
    """The levels a model's map sums: cfg.levels, or for "auto" when no validation decided it the official
    three (a config from before the field existed also reads as "auto")."""
    return tuple(int(v) for v in ("1,2,3" if cfg.levels == "auto" else cfg.levels).split(","))


def level_weights(cfg: "ReContrastConfig", pair_names: Sequence[str]) -> list[float]:
    """Per pair ("l<k>_..."), weight 1 when its level is in the map, else 0 (a bundle's postprocess.weights)."""
    keep = set(resolved_levels(cfg))
    return [1.0 if int(n[1]) in keep else 0.0 for n in pair_names]


@dataclass
class ReContrastConfig:
    """Hyper-parameters; defaults are the paper's / official code's MVTec AD settings
    except the backbone (efficientnet_lite0 for edge devices; the paper uses wide_resnet50_2).

    Fields set to None take the value of the variant (official ``recontrast_mvtec.py`` when
    stable=False, ``recontrast_mvtec_stable.py`` when stable=True); `resolved(name)` gives it.
    "auto" fields are decided during training on the synthetic-defect validation set built from
    held-out normal images (`edgeuad.selection`); the run records what was chosen and why.
    """

    backbone: str = "efficientnet_lite0"
    # the encoder features reconstructed: "block", the stage outputs (Lite0: 24/40/112 channels, signed: the
    # blocks end in a linear projection); "expand", an EfficientNet-Lite's next-block expansions at the same
    # strides (144/240/672, after ReLU6: closer to the paper's post-ReLU WideResNet-50 features)
    taps: str = "block"
    # the input's mean/std (preprocess.INPUT_NORMS): ImageNet's; the patch methods choose theirs on the
    # synthetic-defect split ("auto"); for ReContrast the inception input's arm (C) gained +0.002 there, under the
    # +0.010 a change needs (benchmarks/RESULTS.md section 1)
    input_norm: str = "imagenet"
    pretrained: bool | str = True          # True: default ImageNet source; str: weights file
    image_size: int = 256                  # square network input, multiple of 32
    iterations: int = 2000
    batch_size: int = 16
    lr_decoder: float = 2e-3               # bottleneck + decoder + heads
    lr_encoder: float = 1e-5               # trainable encoder copy
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-5
    adam_eps: float | None = None          # None: 1e-8 (torch default, official), 1e-10 (stable)
    # "on": the official hard-normal mining (gradients only where a point's distance is >= mean + alpha*std);
    # "off": every point keeps its gradient (alpha_* unused)
    hard_mining: str = "on"
    # "fp32"; "bf16": forward passes under torch.autocast(bfloat16) (weights, optimiser state and loss stay
    # float32); "auto": bf16 on a CPU that computes it natively (AVX512_BF16 or AMX), else fp32
    precision: str = "auto"
    alpha_start: float = -3.0              # hard-mining alpha, linear ramp ...
    alpha_end: float = 1.0                 # ... to this value ...
    alpha_warmup_frac: float | None = None  # ... over this fraction of the iterations (None: 0.1, stable 0.2)
    # "train": batch statistics in the trainable encoder; "eval": ImageNet running statistics;
    # "auto": both are trained for bn_probe_iterations and the one with the higher validation
    # I-AUROC continues (the official code picks eval for some MVTec categories by name)
    encoder_bn: str = "auto"
    bn_probe_iterations: int | None = None  # None: 10% of iterations
    # running-statistics momentum of the trainable encoder's BN in train mode: the official code trains
    # torchvision ResNets (0.1); Lite0 keeps TensorFlow's 0.01, whose running statistics lag the batch
    # statistics training sees (magnetic_tile validation I-AUROC 0.47 vs 0.74 after 100 iterations at 128 px)
    encoder_bn_momentum: float | None = 0.1  # None: the backbone's own
    stable: bool = False                   # the official "stable" variant (see resolved())
    bn_var_floor: float | None = None      # None: off, stable 5e-4 (train-mode encoder BN channels whose
                                           # batch variance is below min(floor, running var) use that instead)
    opt_reset_every: int | None = None     # None: off, stable 500 (decoder optimiser state reset, then ...)
    encoder_pause: int = 100               # ... the encoder optimiser pauses until this many iterations later
    select_every: int = 100                # validate every N iterations and keep the best (0: keep the last)
    bottleneck_dim: int | None = None      # None: 2 x stage-3 channels (= official for ResNets)
    # the decoder's stages output decoder_width x the encoder's channels and the 1x1 heads map them back
    # (1 = the official layout, where the decoder mirrors the encoder; Lite0's mirror is 112/40/24 wide)
    decoder_width: int = 1
    seed: int = 0
    checkpoint_every: int = 200
    sigma: float = 4.0                     # anomaly-map Gaussian blur (0 = off)
    score: str = "auto"                    # image score: "max" | "topk_mean" | "auto" (validation picks;
                                           # without validation: max, stable topk_mean as official)
    topk_frac: float = 0.01
    levels: str = "auto"                   # "1,2,3" | "2,3" | "auto" (validation decides; see LEVELS)
    device: str = "cpu"                    # "cpu", "cuda", "cuda:N" or "auto"

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if isinstance(self.pretrained, Path):  # keep the config JSON-serialisable
            self.pretrained = str(self.pretrained)
        self.validate()

    def validate(self) -> None:
        if self.backbone not in BACKBONES or self.backbone not in DECODER_SPECS:
            raise ValueError(f"backbone must be one of {sorted(set(BACKBONES) & set(DECODER_SPECS))}, "
                             f"got {self.backbone!r}")
        check_taps(self.backbone, self.taps)
        if self.image_size <= 0 or self.image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32, got {self.image_size}")
        if self.iterations <= 0 or self.batch_size <= 0 or self.checkpoint_every <= 0:
            raise ValueError("iterations, batch_size and checkpoint_every must be positive")
        if self.alpha_warmup_frac is not None and not 0.0 <= self.alpha_warmup_frac <= 1.0:
            raise ValueError(f"alpha_warmup_frac must be in [0, 1], got {self.alpha_warmup_frac}")
        if self.encoder_bn not in ENCODER_BN_MODES:
            raise ValueError(f"encoder_bn must be one of {ENCODER_BN_MODES}, got {self.encoder_bn!r}")
        if self.hard_mining not in HARD_MINING:
            raise ValueError(f"hard_mining must be one of {HARD_MINING}, got {self.hard_mining!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {sorted(INPUT_NORMS)} for ReContrast, got "
                             f"{self.input_norm!r}")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")
        if not 0.0 < self.topk_frac <= 1.0:
            raise ValueError(f"topk_frac must be in (0, 1], got {self.topk_frac}")
        if self.levels not in LEVELS:
            raise ValueError(f"levels must be one of {LEVELS}, got {self.levels!r}")
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")
        if self.bottleneck_dim is not None and self.bottleneck_dim <= 0:
            raise ValueError("bottleneck_dim must be positive")
        if not isinstance(self.decoder_width, int) or isinstance(self.decoder_width, bool) \
                or not 1 <= self.decoder_width <= 16:
            raise ValueError(f"decoder_width must be an integer in [1, 16], got {self.decoder_width!r}")
        if min(self.lr_decoder, self.lr_encoder) < 0 or self.weight_decay < 0:
            raise ValueError("learning rates and weight_decay must be >= 0")
        if self.adam_eps is not None and self.adam_eps <= 0:
            raise ValueError(f"adam_eps must be positive, got {self.adam_eps}")
        if self.encoder_bn_momentum is not None and not 0.0 < self.encoder_bn_momentum <= 1.0:
            raise ValueError(f"encoder_bn_momentum must be in (0, 1], got {self.encoder_bn_momentum}")
        if self.bn_var_floor is not None and self.bn_var_floor < 0:
            raise ValueError(f"bn_var_floor must be >= 0, got {self.bn_var_floor}")
        if self.bn_probe_iterations == 0 and self.encoder_bn == "auto":
            raise ValueError("encoder_bn='auto' needs bn_probe_iterations > 0 (or None for 10% of iterations)")
        for name in ("opt_reset_every", "encoder_pause", "select_every", "bn_probe_iterations"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")

    def resolved(self, name: str) -> Any:
        """A field's value with None replaced by the variant's default (official / stable script)."""
        v = getattr(self, name)
        if v is not None:
            return v
        defaults = _STABLE if self.stable else _OFFICIAL
        if name not in defaults:
            raise KeyError(f"{name} has no variant default")
        return defaults[name]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ReContrastConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ReContrastConfig keys: {sorted(unknown)}")
        kw = dict(d)
        if "betas" in kw:
            kw["betas"] = tuple(kw["betas"])
        return cls(**kw)


# variant defaults of the None fields: recontrast_mvtec.py and recontrast_mvtec_stable.py
_OFFICIAL: dict[str, Any] = {"adam_eps": 1e-8, "alpha_warmup_frac": 0.1, "bn_var_floor": 0.0,
                             "opt_reset_every": 0}
_STABLE: dict[str, Any] = {"adam_eps": 1e-10, "alpha_warmup_frac": 0.2, "bn_var_floor": 5e-4,
                           "opt_reset_every": 500}


def alpha_at(iteration: int, cfg: ReContrastConfig) -> float | None:
    """Hard-mining alpha at 0-based ``iteration``: linear from alpha_start to alpha_end over the
    first alpha_warmup_frac * iterations, then constant (official: min(-3 + 4*it/(f*T), 1), f = 0.1,
    or 0.2 in the stable script). None when hard mining is off."""
    if cfg.hard_mining == "off":
        return None
    warm = cfg.resolved("alpha_warmup_frac") * cfg.iterations
    if warm <= 0 or iteration >= warm:
        return float(cfg.alpha_end)
    return float(cfg.alpha_start + (cfg.alpha_end - cfg.alpha_start) * iteration / warm)


# ------------------------------------------------------------------- decoder parts
@dataclass(frozen=True)
class DecoderSpec:
    """Per-backbone RD4AD layout: residual block kind and block counts.

    bottleneck_blocks: blocks of the strided residual stage (stride 16 -> 32).
    decoder_blocks: blocks of the decoder stages producing levels 3, 2, 1 (the official
    de_resnet reuses the encoder's layer counts in this order).
    """

    block: str                   # "basic" | "bottleneck"
    bottleneck_blocks: int
    decoder_blocks: tuple[int, int, int]
    width_per_group: int = 64


DECODER_SPECS: dict[str, DecoderSpec] = {
    "resnet18": DecoderSpec("basic", 2, (2, 2, 2)),
    "wide_resnet50_2": DecoderSpec("bottleneck", 3, (3, 4, 6), width_per_group=128),
    # no official configuration: the light ResNet-18 layout, mirrored on each Lite variant's channels
    "efficientnet_lite0": DecoderSpec("basic", 2, (2, 2, 2)),
    "efficientnet_lite1": DecoderSpec("basic", 2, (2, 2, 2)),
    "efficientnet_lite2": DecoderSpec("basic", 2, (2, 2, 2)),
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _scale(cin: int, cout: int, stride: int, up: bool) -> nn.Module:
    """Shortcut projection: 2x2 transposed conv when upsampling, strided 1x1 conv otherwise."""
    conv: nn.Module
    if up and stride == 2:
        conv = nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False)
    else:
        conv = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout))


class _Basic(nn.Module):
    """ResNet basic block; with up=True a stride-2 block upsamples (2x2 transposed conv)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, up: bool = False, width_per_group: int = 64) -> None:
        super().__init__()
        if up and stride == 2:
            self.conv1: nn.Module = nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False)
        else:
            self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _scale(cin, cout, stride, up) if (stride != 1 or cin != cout) else None

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class _Bottle(nn.Module):
    """ResNet bottleneck block (stride on the 3x3, or a 2x2 transposed conv when up=True)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, up: bool = False, width_per_group: int = 64) -> None:
        super().__init__()
        width = int((cout // 4) * width_per_group / 64)
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        if up and stride == 2:
            self.conv2: nn.Module = nn.ConvTranspose2d(width, width, 2, stride=2, bias=False)
        else:
            self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _scale(cin, cout, stride, up) if (stride != 1 or cin != cout) else None

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_BLOCKS = {"basic": _Basic, "bottleneck": _Bottle}


def _stage(spec: DecoderSpec, cin: int, cout: int, n: int, up: bool) -> nn.Sequential:
    block = _BLOCKS[spec.block]
    layers = [block(cin, cout, 2, up, spec.width_per_group)]
    layers += [block(cout, cout, 1, up, spec.width_per_group) for _ in range(n - 1)]
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """RD4AD multi-scale fusion: stage 1 (two strided 3x3) and stage 2 (one strided 3x3)
    are brought to stage-3 resolution, concatenated with stage 3, and a strided residual
    stage maps the 3*c3 channels to ``dim`` channels at stride 32."""

    def __init__(self, channels: Sequence[int], dim: int, spec: DecoderSpec) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = _conv3x3(c1, c2, 2)
        self.bn1 = nn.BatchNorm2d(c2)
        self.conv2 = _conv3x3(c2, c3, 2)
        self.bn2 = nn.BatchNorm2d(c3)
        self.conv3 = _conv3x3(c2, c3, 2)
        self.bn3 = nn.BatchNorm2d(c3)
        self.relu = nn.ReLU(inplace=True)
        self.stage = _stage(spec, 3 * c3, dim, spec.bottleneck_blocks, up=False)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        f1, f2, f3 = feats
        l1 = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(f1))))))
        l2 = self.relu(self.bn3(self.conv3(f2)))
        return self.stage(torch.cat([l1, l2, f3], dim=1))


class Decoder(nn.Module):
    """Upside-down encoder: three upsampling residual stages 32 -> 16 -> 8 -> 4 whose outputs have
    `channels` (the encoder's, times ReContrastConfig.decoder_width); returns [level1, level2, level3]
    (strides 4/8/16)."""

    def __init__(self, channels: Sequence[int], dim: int, spec: DecoderSpec) -> None:
        super().__init__()
        c1, c2, c3 = channels
        n3, n2, n1 = spec.decoder_blocks
        self.layer3 = _stage(spec, dim, c3, n3, up=True)
        self.layer2 = _stage(spec, c3, c2, n2, up=True)
        self.layer1 = _stage(spec, c2, c1, n1, up=True)

    def forward(self, z: Tensor, finest: int = 1) -> list[Tensor | None]:
        """[level1, level2, level3]; levels finer than `finest` are not computed (None): a map without
        level 1 never runs the stride-4 stage."""
        d3 = self.layer3(z)
        d2 = self.layer2(d3) if finest <= 2 else None
        d1 = self.layer1(d2) if finest <= 1 else None
        return [d1, d2, d3]


# ------------------------------------------------------------------------- model
class ReContrastModel(nn.Module):
    """Trainable + frozen encoder, shared bottleneck/decoder, crossed 1x1 heads (module docstring)."""

    def __init__(self, encoder: Backbone, bottleneck_dim: int | None = None, encoder_bn: str = "train",
                 encoder_bn_momentum: float | None = None, decoder_width: int = 1) -> None:
        super().__init__()
        if encoder_bn not in ("train", "eval"):
            raise ValueError(f"encoder_bn must be 'train' or 'eval', got {encoder_bn!r}")
        spec = DECODER_SPECS[encoder.name]
        channels = tuple(encoder.channels)
        dim = int(bottleneck_dim or 2 * channels[2])
        self.backbone_name = encoder.name
        self.channels = channels
        self.bottleneck_dim = dim
        self.encoder_bn = encoder_bn
        self.encoder = encoder
        self.encoder_frozen = copy.deepcopy(encoder)
        if encoder_bn_momentum is not None:  # trainable copy only: the frozen one never updates statistics
            for m in self.encoder.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.momentum = float(encoder_bn_momentum)
        for p in self.encoder_frozen.parameters():
            p.requires_grad_(False)
        self.bottleneck = Bottleneck(channels, dim, spec)
        wide = tuple(decoder_width * c for c in channels)
        self.decoder = Decoder(wide, dim, spec)
        self.heads_a = nn.ModuleList(nn.Conv2d(w, c, 1) for w, c in zip(wide, channels))  # -> frozen targets
        self.heads_b = nn.ModuleList(nn.Conv2d(w, c, 1) for w, c in zip(wide, channels))  # -> trainable targets
        # RD4AD/official initialisation of the new parts (transposed convs keep torch defaults)
        for part in (self.bottleneck, self.decoder, self.heads_a, self.heads_b):
            for m in part.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        self.train(False)

    @staticmethod
    def pair_names(levels: Sequence[int] = (1, 2, 3)) -> list[str]:
        return [f"l{k}_frozen" for k in levels] + [f"l{k}_train" for k in levels]

    def new_parameters(self) -> list[nn.Parameter]:
        """Bottleneck, decoder and heads (the lr_decoder group)."""
        return [p for part in (self.bottleneck, self.decoder, self.heads_a, self.heads_b) for p in part.parameters()]

    def train(self, mode: bool = True) -> "ReContrastModel":
        super().train(mode)
        # frozen copy always uses ImageNet statistics; trainable copy per encoder_bn
        self.encoder_frozen.train(False)
        if mode and self.encoder_bn == "eval":
            self.encoder.train(False)
        return self

    def forward(self, x: Tensor, levels: Sequence[int] = (1, 2, 3)) -> tuple[list[Tensor], list[Tensor]]:
        """(enc, dec) of `levels`, paired as `pair_names(levels)`; the bottleneck always fuses all three
        encoder levels, the decoder stops at the finest level asked for."""
        h, w = x.shape[-2], x.shape[-1]
        if h % 32 or w % 32:
            raise ValueError(f"ReContrast input height/width must be multiples of 32, got {h}x{w}")
        keep = sorted({int(k) for k in levels})
        if not keep or keep[0] < 1 or keep[-1] > 3:
            raise ValueError(f"levels must be a non-empty subset of 1, 2, 3, got {levels!r}")
        b = x.shape[0]
        en_t = self.encoder(x)
        with torch.no_grad():
            en_f = self.encoder_frozen(x)
        z = self.bottleneck([torch.cat([t, f], dim=0) for t, f in zip(en_t, en_f)])
        de = self.decoder(z, finest=keep[0])
        idx = [k - 1 for k in keep]
        dec_a = [self.heads_a[i](de[i][:b]) for i in idx]   # from trainable -> frozen
        dec_b = [self.heads_b[i](de[i][b:]) for i in idx]   # from frozen -> trainable
        return [en_f[i] for i in idx] + [en_t[i] for i in idx], dec_a + dec_b


def build_model(cfg: ReContrastConfig, pretrained: bool | str | Path | None = None,
                encoder_bn: str | None = None) -> ReContrastModel:
    """Model with both encoder copies initialised from ``pretrained`` (default cfg.pretrained).

    encoder_bn: the trainable encoder's BatchNorm mode in training (default cfg.encoder_bn). With
    cfg.encoder_bn "auto" the training loop decides and passes it; a model built only for
    inference (eval mode throughout) gets "train", which eval mode never reads.
    """
    mode = encoder_bn or (cfg.encoder_bn if cfg.encoder_bn != "auto" else "train")
    encoder = build_backbone(cfg.backbone, pretrained=cfg.pretrained if pretrained is None else pretrained,
                             taps=cfg.taps)
    return ReContrastModel(encoder, cfg.bottleneck_dim, mode, cfg.encoder_bn_momentum, cfg.decoder_width)


def model_state(model: ReContrastModel) -> dict[str, Tensor]:
    """Flat CPU state (both encoders included) for safetensors bundles/checkpoints."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def load_model(state: dict[str, Tensor], cfg: ReContrastConfig,
               device: str | torch.device | None = None) -> ReContrastModel:
    """Rebuild from ``model_state`` output without touching any weight source; eval mode."""
    model = build_model(cfg, pretrained=False)
    model.load_state_dict(state, strict=True)
    if device is not None:
        model.to(resolve_device(device))
    return model.eval()


# -------------------------------------------------------------------------- loss
def _mask_grad(mask: Tensor):
    def hook(grad: Tensor) -> Tensor:
        return grad * mask
    return hook


def global_cosine_hm(enc: Sequence[Tensor], dec: Sequence[Tensor], alpha: float | None) -> Tensor:
    """Sum over levels of the global cosine distance with hard-normal mining.

    Per level: loss = mean_b(1 - cos(flatten(enc_b), flatten(dec_b))) with enc detached
    (stop-gradient). Hard mining: with point-wise distance d = 1 - cos_c(enc, dec) over
    the whole batch, the gradient reaching ``dec`` is zeroed at locations where
    d < mean(d) + alpha * std(d) (a backward hook, as in the official code), so easy
    regions stay in the loss value but stop pulling the decoder. alpha None: no mining (every point
    keeps its gradient).
    """
    if len(enc) != len(dec) or not enc:
        raise ValueError("enc and dec must be non-empty lists of equal length")
    total = enc[0].new_zeros(())
    for a, b in zip(enc, dec):
        a = a.detach()
        total = total + (1.0 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)).mean()
        if alpha is None or not b.requires_grad:
            continue
        with torch.no_grad():
            d = 1.0 - F.cosine_similarity(a, b, dim=1)                   # B x H x W
            thresh = d.mean() + alpha * d.flatten().std()
            keep = (d >= thresh).unsqueeze(1).to(b.dtype)               # B x 1 x H x W
        b.register_hook(_mask_grad(keep))
    return total


def recontrast_loss(enc: Sequence[Tensor], dec: Sequence[Tensor], alpha: float | None) -> Tensor:
    """Official combination: mean over the two crossed groups of the level-summed loss."""
    n = len(enc) // 2
    return 0.5 * global_cosine_hm(enc[:n], dec[:n], alpha) + 0.5 * global_cosine_hm(enc[n:], dec[n:], alpha)


# ----------------------------------------------------------- torch post-processing
def anomaly_map_torch(enc: Sequence[Tensor], dec: Sequence[Tensor], out_size: int | tuple[int, int],
                      sigma: float = 4.0, align_corners: bool = True, weights: Sequence[float] | None = None,
                      topk_frac: float = 0.01) -> tuple[Tensor, Tensor, Tensor]:
    """Reference post-processing: -> (maps B x H x W, max B, topk_mean B).

    map = sum_l w_l * bilinear_up(1 - cos_c(enc_l, dec_l)) then Gaussian blur; cosine is
    dot / (max(|a|, 1e-8) * max(|b|, 1e-8)) as in docs/architecture.md (equal to
    F.cosine_similarity(eps=1e-8) except for near-zero vectors).
    """
    if len(enc) != len(dec) or not enc:
        raise ValueError("enc and dec must be non-empty lists of equal length")
    size = (out_size, out_size) if isinstance(out_size, int) else (int(out_size[0]), int(out_size[1]))
    w = [1.0] * len(enc) if weights is None else list(weights)
    if len(w) != len(enc):
        raise ValueError(f"{len(w)} weights for {len(enc)} pairs")
    total: Tensor | None = None
    for wl, a, b in zip(w, enc, dec):
        dot = (a * b).sum(dim=1)
        na = a.norm(dim=1).clamp_min(1e-8)
        nb = b.norm(dim=1).clamp_min(1e-8)
        dist = (1.0 - dot / (na * nb)).unsqueeze(1)
        up = F.interpolate(dist, size=size, mode="bilinear", align_corners=align_corners).squeeze(1)
        total = wl * up if total is None else total + wl * up
    assert total is not None
    maps = gaussian_blur_torch(total, sigma)
    flat = maps.flatten(1)
    k = max(1, int(topk_frac * flat.shape[1]))
    return maps, flat.max(dim=1).values, flat.topk(k, dim=1).values.mean(dim=1)
