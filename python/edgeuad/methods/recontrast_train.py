"""ReContrast training as the official code runs it, plus label-free selection.

* The loop of ``recontrast_mvtec.py``: AdamW for decoder+bottleneck (2e-3) and the trainable encoder
  (1e-5), hard-mining alpha ramp, batches from a stateless shuffled sampler (resume = uninterrupted).
* The "stable" variant of ``recontrast_mvtec_stable.py`` (cfg.stable): a BatchNorm variance floor in
  the trainable encoder (`FlooredBatchNorm2d`), the decoder optimiser's state reset every 500
  iterations with the encoder optimiser paused for the next 100 (`encoder_paused`), alpha ramp over
  20 %, AdamW eps 1e-10 and the top-1 % image score.  The stable script also sets the trainable
  encoder's BN eps to 1e-6; that is left out: Lite0's BN eps is TensorFlow's 1e-3 and changing it
  changes the pretrained features (with eps 1e-3 the floor changes a channel's scale by <= 1.22x).
* cfg.precision "bf16" (or "auto" on a device with native bfloat16) runs the training forward passes under
  torch.autocast(bfloat16); weights, optimiser state, the loss and every validation pass stay float32.
* Selection on the synthetic-defect validation set made from held-out normals (`edgeuad.selection`):
  encoder BN mode (cfg.encoder_bn "auto": both modes trained for a short probe from the same
  initialisation, the better continues), the checkpoint (validated every cfg.select_every
  iterations, the best is kept, not the last) and the image score (cfg.score "auto").
  `fit_recontrast` returns the model, the resolved config and a report of every choice.
"""
from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .common import (EpochShuffleSampler, ImageArrayDataset, load_checkpoint, optimizer_from_flat,
                     optimizer_to_flat, progress_bar, resolve_device, save_checkpoint, seed_everything)
from .recontrast import (LEVELS_MARGIN, ReContrastConfig, ReContrastModel, alpha_at, anomaly_map_torch, build_model,
                         level_weights, recontrast_loss, resolved_score)

log = logging.getLogger(__name__)

__all__ = ["BEST_NAME", "CHECKPOINT_NAME", "FlooredBatchNorm2d", "ReContrastFit", "apply_bn_var_floor",
           "encoder_paused", "fit_recontrast", "native_bf16", "optimizer_reset_due", "pick_best", "probe_iterations",
           "resolve_precision", "train_recontrast"]

CHECKPOINT_NAME = "checkpoint.safetensors"
BEST_NAME = "best.safetensors"
_CKPT_FORMAT = "edgeuad.recontrast.checkpoint/2"   # /2: BN-mode choice and selection state in the meta
_BEST_FORMAT = "edgeuad.recontrast.best/1"
_RESUME_FREE = {"iterations", "checkpoint_every", "device", "precision", "pretrained", "sigma", "score", "topk_frac",
                "select_every", "levels"}
SCORE_KEYS = {"max": "i_auroc_max", "topk_mean": "i_auroc_topk_mean"}


# ------------------------------------------------------------------ stable variant
class FlooredBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose batch variance has a floor in training mode (official PartialNorm2D).

    Per channel c with floor f_c = min(pretrained running_var_c, var_thresh): if the unbiased
    batch variance is above f_c the layer is plain train-mode BN; otherwise it normalises with
    the batch mean and f_c (gradients still flow through the mean), and the running variance
    is updated with f_c.  Eval mode is plain BN; the state dict keys are BatchNorm2d's, so a
    trained model loads into plain BatchNorm layers.  `floor` must be set (set_floor) before
    the first training step: it comes from the frozen encoder's untouched ImageNet statistics.
    """

    floor: Tensor | None

    def set_floor(self, pretrained_var: Tensor, var_thresh: float) -> None:
        f = torch.clamp(pretrained_var.detach().to(self.running_var), max=float(var_thresh))
        self.register_buffer("floor", f.clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        floor = getattr(self, "floor", None)
        if floor is None:
            raise RuntimeError("FlooredBatchNorm2d.floor is not set; call apply_bn_var_floor after loading weights")
        dims = (0, 2, 3)
        n = x.numel() // x.shape[1]
        mean = x.mean(dims)
        var_b = x.var(dims, unbiased=False)
        var_u = var_b * (n / max(n - 1, 1))
        use_batch = var_u > floor
        var_n = torch.where(use_batch, var_b, floor)
        shape = (1, -1, 1, 1)
        out = (x - mean.view(shape)) / torch.sqrt(var_n + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        with torch.no_grad():
            m = float(self.momentum if self.momentum is not None else 0.1)
            self.running_mean.mul_(1 - m).add_(m * mean)
            self.running_var.mul_(1 - m).add_(m * torch.where(use_batch, var_u, floor))
            self.num_batches_tracked += 1
        return out


def _swap_bn(module: nn.Module) -> None:
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = FlooredBatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum,
                                     affine=child.affine, track_running_stats=child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            _swap_bn(child)


def apply_bn_var_floor(model: ReContrastModel, var_thresh: float) -> int:
    """Give every BatchNorm of the trainable encoder the variance floor; returns how many.

    Floors come from the frozen copy's running variances (the ImageNet statistics, untouched by
    training, so a resumed run gets the same floors).  Call before building optimisers (layers are
    replaced) and again after loading weights or moving devices (floors are recomputed).
    """
    _swap_bn(model.encoder)
    n = 0
    for name, m in model.encoder.named_modules():
        if isinstance(m, FlooredBatchNorm2d):
            twin = model.encoder_frozen.get_submodule(name)
            m.set_floor(twin.running_var, var_thresh)
            n += 1
    return n


def optimizer_reset_due(done: int, cfg: ReContrastConfig) -> bool:
    """Reset the decoder optimiser's state after `done` completed iterations (stable: every 500)."""
    every = int(cfg.resolved("opt_reset_every"))
    return every > 0 and done > 0 and done % every == 0


def encoder_paused(iteration: int, cfg: ReContrastConfig) -> bool:
    """Whether the encoder optimiser skips its step at 0-based `iteration`.

    Official stable loop: after the reset at the end of iteration k*R-1 a counter restarts and the
    encoder steps again once it reaches `encoder_pause`, i.e. it skips iterations k*R .. k*R+P-2
    (R = 500, P = 100: 500..598, steps again at 599).
    """
    every = int(cfg.resolved("opt_reset_every"))
    pause = int(cfg.encoder_pause)
    if every <= 0 or pause <= 1 or iteration < every:
        return False
    return iteration % every < pause - 1


def probe_iterations(cfg: ReContrastConfig) -> int:
    """Iterations each encoder-BN mode is trained for when cfg.encoder_bn is "auto"."""
    p = cfg.bn_probe_iterations if cfg.bn_probe_iterations is not None else round(0.1 * cfg.iterations)
    return max(1, min(int(p), cfg.iterations))


# ------------------------------------------------------------------------ selection
def _criterion(entry: dict[str, Any], score: str, default: str) -> tuple[float, str]:
    """Validation I-AUROC of a curve entry for the score rule (auto: the better rule, ties -> default)."""
    if score != "auto":
        return float(entry[SCORE_KEYS[score]]), score
    other = "topk_mean" if default == "max" else "max"
    a, b = float(entry[SCORE_KEYS[default]]), float(entry[SCORE_KEYS[other]])
    return (a, default) if a >= b else (b, other)


def pick_best(curve: Sequence[dict[str, Any]], score: str, default: str) -> tuple[int, str]:
    """Index of the best curve entry and its score rule; ties go to the later entry (official `>=`)."""
    if not curve:
        raise ValueError("no validation results to pick from")
    best, rule, value = 0, default, -math.inf
    for i, e in enumerate(curve):
        v, r = _criterion(e, score, default)
        if v >= value:
            best, rule, value = i, r, v
    return best, rule


class _Validator:
    """Scores the synthetic-defect validation set with the model in eval mode (as exported)."""

    def __init__(self, vs: Any, x: np.ndarray, cfg: ReContrastConfig, device: torch.device, batch: int = 16):
        self.vs, self.x, self.cfg, self.device, self.batch = vs, x, cfg, device, batch

    @torch.no_grad()
    def __call__(self, model: ReContrastModel, levels: str | None = None) -> dict[str, float]:
        """Validation metrics of the map over `levels` (None: the configured levels; "auto" scores all
        three until the end of training decides)."""
        from ..selection import validation_metrics

        was = model.training
        model.eval()
        maxs, topks, maps = [], [], []
        size = self.x.shape[-1]
        weights = level_weights(replace(self.cfg, levels=levels or self.cfg.levels), model.pair_names())
        for i in range(0, len(self.x), self.batch):
            enc, dec = model(torch.from_numpy(self.x[i:i + self.batch]).to(self.device))
            m, mx, tk = anomaly_map_torch(enc, dec, size, sigma=self.cfg.sigma, topk_frac=self.cfg.topk_frac,
                                          weights=weights)
            maps += list(m.float().cpu().numpy())
            maxs.append(mx.double().cpu().numpy())
            topks.append(tk.double().cpu().numpy())
        model.train(was)
        by_max = validation_metrics(self.vs, np.concatenate(maxs), maps)
        by_topk = validation_metrics(self.vs, np.concatenate(topks))
        return {"i_auroc_max": by_max["i_auroc"], "i_auroc_topk_mean": by_topk["i_auroc"],
                "p_auroc": by_max["p_auroc"]}


# ------------------------------------------------------------------------ precision
def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively (CPU: AVX512_BF16 or AMX tiles; CUDA: torch's check)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        probes = (getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return any(p is not None and bool(p()) for p in probes)
    return False


def resolve_precision(cfg: ReContrastConfig, device: torch.device) -> str:
    """"fp32" or "bf16": cfg.precision, with "auto" = bf16 on a CPU with native bf16 (measured there:
    benchmarks/plans/recontrast_bf16_2026-12-05.md), fp32 elsewhere (bf16 on CUDA was not measured; ask for it
    with precision="bf16")."""
    if cfg.precision != "auto":
        if cfg.precision == "bf16" and not native_bf16(device):
            log.warning("precision=bf16 on %s without native bfloat16: autocast emulates it (slower than fp32)",
                        device)
        return cfg.precision
    return "bf16" if device.type == "cpu" and native_bf16(device) else "fp32"


# ------------------------------------------------------------------------- one arm
def _make_optimizers(model: ReContrastModel, cfg: ReContrastConfig) -> tuple[torch.optim.AdamW, torch.optim.AdamW]:
    eps = float(cfg.resolved("adam_eps"))
    opt_dec = torch.optim.AdamW(model.new_parameters(), lr=cfg.lr_decoder, betas=cfg.betas,
                                weight_decay=cfg.weight_decay, eps=eps)
    opt_enc = torch.optim.AdamW(model.encoder.parameters(), lr=cfg.lr_encoder, betas=cfg.betas,
                                weight_decay=cfg.weight_decay, eps=eps)
    return opt_dec, opt_enc


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


class _Arm:
    """One model with its optimisers, selection curve and best state so far."""

    def __init__(self, cfg: ReContrastConfig, mode: str, device: torch.device, pretrained: bool | None) -> None:
        seed_everything(cfg.seed)  # every arm starts from the same decoder initialisation
        self.cfg, self.mode, self.device = cfg, mode, device
        self.model = build_model(cfg, pretrained=pretrained, encoder_bn=mode).to(device)
        self.floor = float(cfg.resolved("bn_var_floor"))
        if self.floor > 0:
            apply_bn_var_floor(self.model, self.floor)
        self.opt_dec, self.opt_enc = _make_optimizers(self.model, cfg)
        self.it = 0
        self.loss = float("nan")
        self.curve: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None        # curve entry of the best state
        self.best_state: dict[str, Tensor] | None = None

    def load(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
        if self.floor > 0:
            apply_bn_var_floor(self.model, self.floor)  # floors from the loaded frozen copy
        optimizer_from_flat(self.opt_dec, tensors, meta["opt_dec"], "opt_dec")
        optimizer_from_flat(self.opt_enc, tensors, meta["opt_enc"], "opt_enc")
        self.it = int(meta["iteration"])
        self.loss = float(meta.get("loss", float("nan")))
        self.curve = list(meta.get("curve", []))
        self.best = meta.get("best")

    def step(self, data: ImageArrayDataset, sampler: EpochShuffleSampler) -> float | None:
        it, cfg = self.it, self.cfg
        x = data.batch(sampler.batch_indices(it), self.device)
        alpha = alpha_at(it, cfg)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            enc, dec = self.model(x)
        # the loss and its hard-mining statistics in float32 whatever the forward ran in
        loss = recontrast_loss([e.float() for e in enc], [d.float() for d in dec], alpha)
        loss_v = float(loss.detach())
        if not math.isfinite(loss_v):  # checked before the step so the weights stay usable
            raise FloatingPointError(f"ReContrast loss became {loss_v} at iteration {it} (encoder BN {self.mode})")
        self.opt_dec.zero_grad(set_to_none=True)
        self.opt_enc.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_dec.step()
        if not encoder_paused(it, cfg):
            self.opt_enc.step()
        self.it = it + 1
        self.loss = loss_v
        if optimizer_reset_due(self.it, cfg):
            self.opt_dec.state = collections.defaultdict(dict)   # stable: fresh Adam moments and step counts
        return alpha

    def validate(self, validator: _Validator, score: str, default: str) -> bool:
        """Add a curve entry; keep the state if it is the best so far (ties: the later). True if kept."""
        entry = {"iteration": self.it, "loss": round(self.loss, 6), **validator(self.model)}
        self.curve.append(entry)
        value, _ = _criterion(entry, score, default)
        if self.best is None or value >= _criterion(self.best, score, default)[0]:
            self.best, self.best_state = entry, _cpu_state(self.model)
            return True
        return False

    def save(self, path: Path, extra: dict[str, Any]) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        meta: dict[str, Any] = {"format": _CKPT_FORMAT, "iteration": self.it, "loss": self.loss,
                                "config": self.cfg.to_dict(), "encoder_bn_mode": self.mode,
                                "curve": self.curve, "best": self.best, **extra}
        for name, opt in (("opt_dec", self.opt_dec), ("opt_enc", self.opt_enc)):
            t, m = optimizer_to_flat(opt, name)
            tensors.update(t)
            meta[name] = m
        save_checkpoint(path, tensors, meta)


def _check_resumable(saved: dict[str, Any], cfg: ReContrastConfig) -> None:
    now = cfg.to_dict()
    saved = {**saved, "hard_mining": saved.get("hard_mining", "on")}  # checkpoints from before the field mined
    diff = sorted(k for k in now if k not in _RESUME_FREE and saved.get(k) != now[k])
    if diff:
        raise ValueError(f"checkpoint was trained with a different configuration ({', '.join(diff)}); "
                         "use another out_dir or resume=False")
    if saved.get("iterations") != cfg.iterations:
        log.warning("resuming with iterations=%d (checkpoint: %s): the alpha schedule changes",
                    cfg.iterations, saved.get("iterations"))


# --------------------------------------------------------------------------- driver
@dataclass
class ReContrastFit:
    model: ReContrastModel            # eval mode, the selected state
    config: ReContrastConfig          # "auto"/None fields replaced by what was used / chosen
    report: dict[str, Any]            # what was chosen and why (run info, bundle manifest)


def _alpha_text(alpha: float | None) -> str:
    return "off" if alpha is None else f"{alpha:.2f}"


def _run(arm: _Arm, end: int, data: ImageArrayDataset, sampler: EpochShuffleSampler, validator: _Validator | None,
         score: str, default: str, ckpt: Path | None, best_path: Path | None, extra: dict[str, Any],
         bar: Any, log_every: int) -> None:
    """Train `arm` up to iteration `end`, validating every select_every iterations and at `end` when a
    validator is given; checkpoints go to `ckpt` (None: an in-memory probe)."""
    cfg = arm.cfg
    window: list[float] = []
    arm.model.train()
    while arm.it < end:
        alpha = arm.step(data, sampler)
        window.append(arm.loss)
        bar.update(1)
        bar.set_postfix(loss=f"{arm.loss:.4f}", alpha=_alpha_text(alpha))
        done = arm.it
        if log_every > 0 and done % log_every == 0:
            log.info("[bn %s] iter %d/%d loss %.4f (mean of last %d: %.4f) alpha %s", arm.mode, done,
                     cfg.iterations, arm.loss, len(window), float(np.mean(window)), _alpha_text(alpha))
            window.clear()
        due = (cfg.select_every > 0 and done % cfg.select_every == 0) or done == end
        if validator is not None and due and not (arm.curve and arm.curve[-1]["iteration"] == done):
            kept = arm.validate(validator, score, default)
            e = arm.curve[-1]
            log.info("[bn %s] iter %d validation I-AUROC max %.4f top-k %.4f, P-AUROC %.4f%s", arm.mode, done,
                     e["i_auroc_max"], e["i_auroc_topk_mean"], e["p_auroc"], " (best so far)" if kept else "")
            if kept and best_path is not None and arm.best_state is not None:
                save_checkpoint(best_path, arm.best_state, {"format": _BEST_FORMAT, "entry": arm.best})
        if ckpt is not None and (done % cfg.checkpoint_every == 0 or done == end):
            arm.save(ckpt, extra)


def fit_recontrast(cfg: ReContrastConfig, images: np.ndarray, out_dir: str | Path, validation: Any = None,
                   validation_x: np.ndarray | None = None, progress: bool = True, resume: bool = True,
                   log_every: int = 50, stop_after: int | None = None) -> ReContrastFit:
    """Train on preprocessed normal images (float32 N x 3 x H x W) and select label-free.

    validation: a `selection.ValidationSet` at cfg.image_size and validation_x its images
    preprocessed like `images` (both or neither).  Without them nothing can be selected: the
    encoder BN mode "auto" falls back to the official default "train", the score "auto" to the
    variant's rule, and the last state is kept; each of these is logged and in the report.
    Checkpoints (`out_dir/checkpoint.safetensors`, best state in `best.safetensors`) allow resume
    with identical results; `stop_after` ends a time-boxed run early without changing the schedule.
    """
    data = ImageArrayDataset(images)
    if data.size_hw != (cfg.image_size, cfg.image_size):
        raise ValueError(f"images are {data.size_hw[0]}x{data.size_hw[1]} but cfg.image_size is "
                         f"{cfg.image_size}; preprocess with size ({cfg.image_size}, {cfg.image_size})")
    if (validation is None) != (validation_x is None):
        raise ValueError("pass both validation (ValidationSet) and validation_x (its preprocessed images), or neither")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg, device)
    log.info("ReContrast training precision: %s (precision=%s)", precision, cfg.precision)
    cfg = replace(cfg, precision=precision)
    validator = None
    if validation is not None:
        vx = ImageArrayDataset(np.asarray(validation_x)).images
        if vx.shape[0] != len(validation) or vx.shape[2:] != (cfg.image_size, cfg.image_size):
            raise ValueError(f"validation_x has shape {vx.shape}; expected {len(validation)} x 3 x "
                             f"{cfg.image_size} x {cfg.image_size}")
        validator = _Validator(validation, vx, cfg, device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt, best_path = out_dir / CHECKPOINT_NAME, out_dir / BEST_NAME
    default_score = resolved_score(replace(cfg, score="auto"))
    end = cfg.iterations if stop_after is None else min(cfg.iterations, int(stop_after))
    sampler = EpochShuffleSampler(len(data), cfg.batch_size, cfg.seed)
    if len(data) < cfg.batch_size:
        log.warning("only %d training images for batch_size %d", len(data), cfg.batch_size)

    saved = None
    if resume and ckpt.exists():
        tensors, meta = load_checkpoint(ckpt)
        if meta.get("format") != _CKPT_FORMAT:
            raise ValueError(f"{ckpt} is not a ReContrast checkpoint of this version (format "
                             f"{meta.get('format')!r}); use another out_dir or resume=False")
        _check_resumable(meta["config"], cfg)
        saved = (tensors, meta)

    with progress_bar(cfg.iterations, desc=f"recontrast[{cfg.backbone}]", enabled=progress) as bar:
        if saved is not None:
            tensors, meta = saved
            # on resume every weight comes from the checkpoint: no need to fetch ImageNet weights
            arm = _Arm(cfg, meta["encoder_bn_mode"], device, pretrained=False)
            arm.load(tensors, meta)
            bn_choice = meta["bn_choice"]
            if arm.best is not None:
                if not best_path.exists():
                    raise FileNotFoundError(f"{ckpt} records a best state but {best_path} is missing")
                arm.best_state, _ = load_checkpoint(best_path)
            bar.update(arm.it)
            log.info("resuming ReContrast from %s at iteration %d (encoder BN %s)", ckpt, arm.it, arm.mode)
        else:
            arm, bn_choice = _choose_bn(cfg, device, data, sampler, validator, default_score, end, bar, log_every)
        extra = {"bn_choice": bn_choice}
        if arm.best_state is not None:  # the probe winner's best so far
            save_checkpoint(best_path, arm.best_state, {"format": _BEST_FORMAT, "entry": arm.best})
        arm.save(ckpt, extra)
        _run(arm, end, data, sampler, validator, cfg.score, default_score, ckpt, best_path, extra, bar, log_every)
    return _finish(arm, cfg, bn_choice, validator, default_score)


def _choose_bn(cfg: ReContrastConfig, device: torch.device, data: ImageArrayDataset, sampler: EpochShuffleSampler,
               validator: _Validator | None, default_score: str, end: int, bar: Any,
               log_every: int) -> tuple[_Arm, dict[str, Any]]:
    if cfg.encoder_bn != "auto":
        return _Arm(cfg, cfg.encoder_bn, device, None), {"mode": cfg.encoder_bn, "how": "set in the configuration"}
    if validator is None:
        log.warning("encoder_bn='auto' without a validation set (no held-out images): using the official "
                    "default 'train'")
        return _Arm(cfg, "train", device, None), {
            "mode": "train", "how": "no validation set: the official default"}
    probe = min(probe_iterations(cfg), end)
    arms: dict[str, _Arm] = {}
    for mode in ("train", "eval"):
        arm = _Arm(cfg, mode, device, None)
        _run(arm, probe, data, sampler, validator, cfg.score, default_score, None, None, {}, bar, log_every)
        if mode == "train":
            bar.update(-probe)  # the bar counts the kept run's iterations
        arms[mode] = arm
    at = {m: _criterion(a.curve[-1], cfg.score, default_score)[0] for m, a in arms.items()}
    mode = "eval" if at["eval"] > at["train"] else "train"   # ties: the official default
    log.info("encoder BN mode: %s (validation I-AUROC after %d probe iterations: train %.4f, eval %.4f)",
             mode, probe, at["train"], at["eval"])
    return arms[mode], {"mode": mode, "how": f"validation I-AUROC after a {probe}-iteration probe of each mode",
                        "probe_iterations": probe, "val_i_auroc": {k: round(v, 6) for k, v in at.items()},
                        # copies: the chosen arm goes on training and its curve keeps growing
                        "probe_curves": {k: list(a.curve) for k, a in arms.items()}}


def _finish(arm: _Arm, cfg: ReContrastConfig, bn_choice: dict[str, Any], validator: _Validator | None,
            default_score: str) -> ReContrastFit:
    recipe: dict[str, Any] = {k: cfg.resolved(k) for k in ("adam_eps", "alpha_warmup_frac", "bn_var_floor",
                                                             "opt_reset_every")}
    recipe["hard_mining"] = cfg.hard_mining
    recipe["precision"] = cfg.precision
    report: dict[str, Any] = {"encoder_bn": bn_choice, "stable": cfg.stable, "recipe": recipe,
                              "iterations_run": arm.it, "curve": arm.curve}
    if validator is not None:
        vs = validator.vs
        report["validation"] = {"n_normal": int((vs.labels == 0).sum()), "n_defective": int(vs.labels.sum()),
                                "defects": sorted(set(vs.defects) - {"good"}), "metric": "i_auroc"}
    if validator is not None and arm.curve:
        if cfg.select_every > 0:
            idx, rule = pick_best(arm.curve, cfg.score, default_score)
            how = f"best validation I-AUROC of {len(arm.curve)} evaluations (every {cfg.select_every} iterations)"
        else:
            idx, rule = len(arm.curve) - 1, _criterion(arm.curve[-1], cfg.score, default_score)[1]
            how = "last iteration (select_every=0)"
        best, last = arm.curve[idx], arm.curve[-1]
        if best["iteration"] != arm.it:
            assert arm.best is not None and arm.best["iteration"] == best["iteration"] and arm.best_state is not None
            arm.model.load_state_dict({k: v.to(arm.device) for k, v in arm.best_state.items()}, strict=True)
        key = SCORE_KEYS[rule]
        report["checkpoint"] = {"iteration": best["iteration"], "last_iteration": arm.it, "how": how,
                                "val_i_auroc": best[key], "val_p_auroc": best["p_auroc"],
                                "last_val_i_auroc": last[key]}
    else:
        rule = cfg.score if cfg.score != "auto" else default_score
        report["checkpoint"] = {"iteration": arm.it, "last_iteration": arm.it,
                                "how": "last iteration (no validation set)"}
    if cfg.score == "auto":
        how = ("better validation I-AUROC at the chosen checkpoint" if validator is not None and arm.curve
               else "no validation set: the variant's rule")
    else:
        how = "set in the configuration"
    report["score"] = {"rule": rule, "how": how}
    levels = _choose_levels(arm, cfg, validator, rule, report)
    config = replace(cfg, encoder_bn=bn_choice["mode"], score=rule, bn_probe_iterations=probe_iterations(cfg),
                     levels=levels, **recipe)
    ck = report["checkpoint"]
    log.info("ReContrast selection: encoder BN %s (%s); checkpoint iteration %d of %d (%s%s); image score %s (%s); "
             "map levels %s (%s)", bn_choice["mode"], bn_choice["how"], ck["iteration"], ck["last_iteration"], ck["how"],
             f", val I-AUROC {ck['val_i_auroc']:.4f}, last {ck['last_val_i_auroc']:.4f}" if "val_i_auroc" in ck
             else "", rule, how, levels, report["levels"]["how"])
    arm.model.eval()
    return ReContrastFit(model=arm.model, config=config, report=report)


def _choose_levels(arm: _Arm, cfg: ReContrastConfig, validator: _Validator | None, rule: str,
                   report: dict[str, Any]) -> str:
    """The map's levels (cfg.levels "auto": the official three unless the deep levels alone (2, 3: strides 8
    and 16) score >= LEVELS_MARGIN higher validation I-AUROC with the chosen image score at the kept
    checkpoint); recorded in report["levels"]."""
    if cfg.levels != "auto":
        report["levels"] = {"levels": cfg.levels, "how": "set in the configuration"}
        return cfg.levels
    if validator is None or not arm.curve:
        report["levels"] = {"levels": "1,2,3", "how": "no validation set: the official three"}
        return "1,2,3"
    # the curve validated the kept checkpoint over all three levels ("auto" scores them until now): only the
    # deep levels need a pass over the validation set
    scores = {"1,2,3": float(report["checkpoint"]["val_i_auroc"]),
              "2,3": float(validator(arm.model, "2,3")[SCORE_KEYS[rule]])}
    levels = "2,3" if scores["2,3"] >= scores["1,2,3"] + LEVELS_MARGIN else "1,2,3"
    report["levels"] = {"levels": levels, "val_i_auroc": {k: round(v, 6) for k, v in scores.items()},
                        "how": f"validation I-AUROC ({rule}) at the kept checkpoint; 2,3 only when "
                               f">= {LEVELS_MARGIN} above all three"}
    return levels


def train_recontrast(cfg: ReContrastConfig, images: np.ndarray, out_dir: str | Path, progress: bool = True,
                     resume: bool = True, log_every: int = 50, stop_after: int | None = None,
                     validation: Any = None, validation_x: np.ndarray | None = None) -> ReContrastModel:
    """`fit_recontrast` returning only the (selected) model in eval mode."""
    return fit_recontrast(cfg, images, out_dir, validation=validation, validation_x=validation_x, progress=progress,
                          resume=resume, log_every=log_every, stop_after=stop_after).model
