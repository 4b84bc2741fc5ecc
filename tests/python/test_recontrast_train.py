"""ReContrast training: the stable variant's pieces by value, encoder-BN mode choice, best-checkpoint
selection on the synthetic-defect validation set, and what the run / manifest record."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeuad.methods.common import load_checkpoint
from edgeuad.methods.recontrast import ReContrastConfig, alpha_at, build_model, load_model, model_state
from edgeuad.methods.recontrast_train import (BEST_NAME, CHECKPOINT_NAME, FlooredBatchNorm2d, _make_optimizers,
                                              _Validator, apply_bn_var_floor, encoder_paused, fit_recontrast,
                                              optimizer_reset_due, pick_best, probe_iterations, resolve_precision)
from edgeuad.preprocess import PreprocessConfig, preprocess
from edgeuad.selection import make_validation_set

from test_recontrast import SIZE, _cfg, _images  # noqa: E402  one tiny config and data for both files


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)




def _validation(n: int = 3) -> tuple[Any, np.ndarray]:
    rng = np.random.default_rng(7)
    normals = [rng.integers(60, 200, size=(SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]
    vs = make_validation_set(normals, seed=0)
    return vs, preprocess(vs.images, PreprocessConfig(size=(SIZE, SIZE)))


def _fake_validator(monkeypatch: pytest.MonkeyPatch, value_of) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    """Replace the validation forward pass by value_of(mode, call index) -> I-AUROC (both scores); the map
    levels' choice at the end (levels given) sees a tie, which keeps the official three levels."""
    calls: list[tuple[str, int]] = []

    def fake(self: _Validator, model: Any, levels: str | None = None) -> dict[str, float]:
        if levels is not None:
            return {"i_auroc_max": 0.5, "i_auroc_topk_mean": 0.5, "p_auroc": 0.5}
        calls.append((model.encoder_bn, len(calls)))
        v = float(value_of(model.encoder_bn, len(calls) - 1))
        return {"i_auroc_max": v, "i_auroc_topk_mean": v - 0.01, "p_auroc": 0.5}

    monkeypatch.setattr(_Validator, "__call__", fake)
    return calls


def _states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------- stable variant
def _official_partial_norm(x: torch.Tensor, bn: torch.nn.BatchNorm2d, pretrain_var: torch.Tensor,
                           thresh: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode forward of the official PartialNorm2D, written out from its code."""
    min_var = torch.stack([pretrain_var, torch.ones_like(pretrain_var) * thresh]).min(dim=0).values
    batch_mean, batch_var = torch.zeros_like(min_var), torch.zeros_like(min_var)
    out_batch = F.batch_norm(x, batch_mean, batch_var, bn.weight, bn.bias, True, 1, bn.eps)
    out_pre = F.batch_norm(x - x.mean(dim=(0, 2, 3), keepdim=True), torch.zeros_like(min_var), min_var,
                           bn.weight, bn.bias, False, bn.momentum, bn.eps)
    use = (batch_var > min_var).float().view(1, -1, 1, 1)
    out = out_batch * use + out_pre * (1 - use)
    var = batch_var * use.view(-1) + min_var * (1 - use.view(-1))
    m = bn.momentum
    return out, (1 - m) * bn.running_mean + m * batch_mean, (1 - m) * bn.running_var + m * var


def test_floored_bn_matches_the_official_partial_norm() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=g) * torch.tensor([1.0, 0.01, 0.003]).view(1, 3, 1, 1)
    pretrain_var = torch.tensor([2.0, 3.0, 1e-4])     # channel 2's floor is its own (smaller) running var
    plain = torch.nn.BatchNorm2d(3, eps=1e-5, momentum=0.1)
    with torch.no_grad():
        plain.weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
        plain.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        plain.running_mean.copy_(torch.tensor([0.5, -0.5, 0.0]))
        plain.running_var.copy_(pretrain_var)
    bn = FlooredBatchNorm2d(3, eps=1e-5, momentum=0.1)
    bn.load_state_dict(plain.state_dict())
    bn.set_floor(pretrain_var, 5e-4)
    assert torch.equal(bn.floor, torch.tensor([5e-4, 5e-4, 1e-4]))
    want, want_rm, want_rv = _official_partial_norm(x, plain, pretrain_var, 5e-4)
    var_u = x.var(dim=(0, 2, 3), unbiased=True)
    assert var_u[0] > 5e-4 and var_u[1] < 5e-4 and var_u[2] < 1e-4  # one batch channel, two floored
    xg = x.clone().requires_grad_(True)
    got = bn.train()(xg)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_mean, want_rm)
    torch.testing.assert_close(bn.running_var, want_rv)
    # floored channel 1 by hand: batch mean removed, divided by sqrt(floor + eps)
    hand = (x[:, 1] - x[:, 1].mean()) / torch.sqrt(torch.tensor(5e-4 + 1e-5)) * 0.5 - 0.2
    torch.testing.assert_close(got[:, 1], hand, atol=1e-5, rtol=1e-5)
    # the batch channel is plain train-mode BN, gradients included
    xr = x.clone().requires_grad_(True)
    ref = torch.nn.BatchNorm2d(3, eps=1e-5, momentum=0.1)
    ref.load_state_dict(plain.state_dict())
    ref.train()(xr)[:, 0].sum().backward()
    got[:, 0].sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)
    # eval mode is plain BN with the running statistics
    with torch.no_grad():
        torch.testing.assert_close(bn.eval()(x), F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight,
                                                              bn.bias, False, 0.0, bn.eps))
    with pytest.raises(RuntimeError, match="floor"):
        FlooredBatchNorm2d(3).train()(x)


def test_apply_bn_var_floor_uses_frozen_statistics_and_keeps_keys() -> None:
    torch.manual_seed(0)
    cfg = _cfg(stable=True)
    model = build_model(cfg)
    keys = set(model.state_dict())
    g = torch.Generator().manual_seed(1)
    for m in model.encoder_frozen.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1e-3)
    n = apply_bn_var_floor(model, 5e-4)
    floored = {k: m for k, m in model.encoder.named_modules() if isinstance(m, FlooredBatchNorm2d)}
    assert n == len(floored) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.encoder_frozen.modules())
    for name, m in floored.items():
        twin = model.encoder_frozen.get_submodule(name)
        assert torch.equal(m.floor, torch.clamp(twin.running_var, max=5e-4))
    assert not any(isinstance(m, FlooredBatchNorm2d) for m in model.decoder.modules())
    assert set(model.state_dict()) == keys                       # floors are not saved
    again = load_model(model_state(model), cfg)                    # loads into plain BatchNorm layers
    assert not any(isinstance(m, FlooredBatchNorm2d) for m in again.modules())


def test_stable_schedule_by_value() -> None:
    st = _cfg(iterations=2000, stable=True)
    assert [optimizer_reset_due(d, st) for d in (0, 499, 500, 501, 1000, 2000)] == [False, False, True, False,
                                                                                    True, True]
    paused = [it for it in range(2000) if encoder_paused(it, st)]
    # official counter: after the reset at the end of iteration 499 the encoder skips 500..598
    assert paused == list(range(500, 599)) + list(range(1000, 1099)) + list(range(1500, 1599))
    off = _cfg(iterations=2000)
    assert not any(optimizer_reset_due(d, off) or encoder_paused(d, off) for d in range(2001))
    # alpha ramps over 20 % (official stable: min(-3 + 4 it / (0.2 T), 1)) instead of 10 %
    assert alpha_at(200, st) == pytest.approx(-1.0) and alpha_at(399, st) < 1.0 and alpha_at(400, st) == 1.0
    assert alpha_at(200, off) == 1.0
    assert (st.resolved("adam_eps"), off.resolved("adam_eps")) == (1e-10, 1e-8)
    assert (st.resolved("bn_var_floor"), off.resolved("bn_var_floor")) == (5e-4, 0.0)
    assert _cfg(stable=True, alpha_warmup_frac=0.5).resolved("alpha_warmup_frac") == 0.5   # explicit wins
    opt_dec, opt_enc = _make_optimizers(build_model(st), st)
    assert opt_dec.param_groups[0]["eps"] == opt_enc.param_groups[0]["eps"] == 1e-10
    assert probe_iterations(_cfg(iterations=2000)) == 200 and probe_iterations(_cfg(bn_probe_iterations=9)) == 4


def test_stable_training_resets_decoder_optimiser_and_pauses_encoder(tmp_path: Path) -> None:
    cfg = _cfg(iterations=3, stable=True, opt_reset_every=2, encoder_pause=2, encoder_bn="train")
    fit = fit_recontrast(cfg, _images(), tmp_path, progress=False)
    tensors, meta = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    dec_steps = {float(v) for k, v in tensors.items() if k.startswith("opt_dec.state.") and k.endswith(".step")}
    enc_steps = {float(v) for k, v in tensors.items() if k.startswith("opt_enc.state.") and k.endswith(".step")}
    assert dec_steps == {1.0}   # reset after iteration 1, one step since
    assert enc_steps == {2.0}   # iterations 0 and 1; iteration 2 paused
    assert isinstance(fit.model.encoder._bn0, FlooredBatchNorm2d)
    assert fit.report["recipe"] == {"adam_eps": 1e-10, "alpha_warmup_frac": 0.2, "bn_var_floor": 5e-4,
                                    "opt_reset_every": 2, "hard_mining": "on",
                                    "precision": resolve_precision(cfg, torch.device("cpu"))}
    assert fit.config.score == "topk_mean" and fit.report["score"]["how"].startswith("no validation")


def test_trainable_encoder_bn_momentum_by_value() -> None:
    torch.manual_seed(0)
    model = build_model(_cfg(encoder_bn="train"))
    assert model.encoder._bn0.momentum == 0.1 and model.encoder_frozen._bn0.momentum == 0.01  # Lite0's TF value
    assert build_model(_cfg(encoder_bn_momentum=None)).encoder._bn0.momentum == 0.01
    seen: list[torch.Tensor] = []
    model.encoder._bn0.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    before = model.encoder._bn0.running_mean.clone()
    model.train()(torch.randn(4, 3, SIZE, SIZE))
    want = 0.9 * before + 0.1 * seen[0].mean(dim=(0, 2, 3))
    torch.testing.assert_close(model.encoder._bn0.running_mean, want)
    with pytest.raises(ValueError, match="encoder_bn_momentum"):
        _cfg(encoder_bn_momentum=0.0)


# --------------------------------------------------------------------------- selection
def test_pick_best() -> None:
    c = [{"i_auroc_max": 0.6, "i_auroc_topk_mean": 0.7}, {"i_auroc_max": 0.8, "i_auroc_topk_mean": 0.5},
         {"i_auroc_max": 0.8, "i_auroc_topk_mean": 0.79}]
    assert pick_best(c, "max", "max") == (2, "max")             # ties go to the later entry
    assert pick_best(c, "topk_mean", "max") == (2, "topk_mean")
    assert pick_best(c, "auto", "max") == (2, "max")
    assert pick_best(c[:1], "auto", "max") == (0, "topk_mean")
    assert pick_best([{"i_auroc_max": 0.7, "i_auroc_topk_mean": 0.7}], "auto", "topk_mean") == (0, "topk_mean")
    with pytest.raises(ValueError):
        pick_best([], "max", "max")


def test_best_checkpoint_is_kept_not_the_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vs, vx = _validation()
    seq = [0.6, 0.9, 0.7, 0.8]                      # validation after iterations 1, 2, 3, 4
    calls = _fake_validator(monkeypatch, lambda mode, i: seq[i])
    cfg = _cfg(iterations=4, select_every=1, encoder_bn="train", score="auto")
    fit = fit_recontrast(cfg, _images(), tmp_path / "sel", validation=vs, validation_x=vx, progress=False)
    assert len(calls) == 4
    ck = fit.report["checkpoint"]
    assert (ck["iteration"], ck["last_iteration"], ck["val_i_auroc"], ck["last_val_i_auroc"]) == (2, 4, 0.9, 0.8)
    assert [e["iteration"] for e in fit.report["curve"]] == [1, 2, 3, 4]
    assert fit.config.score == "max" and fit.report["score"]["rule"] == "max"
    # the returned weights are those after exactly 2 iterations (a deterministic run stopped there)
    ref = fit_recontrast(_cfg(iterations=4, select_every=0, encoder_bn="train"), _images(), tmp_path / "ref",
                         progress=False, stop_after=2)
    assert _states_equal(model_state(fit.model), model_state(ref.model))
    _, meta = load_checkpoint(tmp_path / "sel" / BEST_NAME)
    assert meta["entry"]["iteration"] == 2
    # a finished run resumed returns the same selection without training again
    again = fit_recontrast(cfg, _images(), tmp_path / "sel", validation=vs, validation_x=vx, progress=False)
    assert len(calls) == 4 and _states_equal(model_state(again.model), model_state(fit.model))
    # select_every=0 keeps the last state even when an earlier one (the BN probe's) validated better
    seq2 = [0.5, 0.9, 0.7]                          # probe train, probe eval (iteration 2), end (iteration 4)
    _fake_validator(monkeypatch, lambda mode, i: seq2[i])
    last = fit_recontrast(_cfg(iterations=4, select_every=0, bn_probe_iterations=2), _images(), tmp_path / "last",
                          validation=vs, validation_x=vx, progress=False)
    assert [e["iteration"] for e in last.report["curve"]] == [2, 4]
    assert last.report["checkpoint"]["iteration"] == 4 and last.report["checkpoint"]["val_i_auroc"] == 0.7


def test_encoder_bn_auto_probes_both_modes_and_continues_the_better(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    vs, vx = _validation()
    _fake_validator(monkeypatch, lambda mode, i: {"train": 0.6, "eval": 0.75}[mode])
    cfg = _cfg(iterations=4, bn_probe_iterations=2, select_every=0)
    with caplog.at_level(logging.INFO, logger="edgeuad"):
        fit = fit_recontrast(cfg, _images(), tmp_path / "auto", validation=vs, validation_x=vx, progress=False)
    bn = fit.report["encoder_bn"]
    assert bn["mode"] == "eval" and fit.config.encoder_bn == "eval" and fit.model.encoder_bn == "eval"
    assert bn["val_i_auroc"] == {"train": 0.6, "eval": 0.75} and bn["probe_iterations"] == 2
    # each probe curve stops at the probe: the winner's continued run is the report's "curve"
    assert {k: [e["iteration"] for e in c] for k, c in bn["probe_curves"].items()} == {"train": [2], "eval": [2]}
    assert "encoder BN mode: eval" in caplog.text and "ReContrast selection: encoder BN eval" in caplog.text
    _, meta = load_checkpoint(tmp_path / "auto" / CHECKPOINT_NAME)
    assert meta["encoder_bn_mode"] == "eval" and meta["bn_choice"]["mode"] == "eval"
    # the probe's winner continues: same weights as a run with encoder_bn=eval from the start
    fixed = fit_recontrast(_cfg(iterations=4, encoder_bn="eval", select_every=0), _images(), tmp_path / "eval",
                           progress=False)
    assert _states_equal(model_state(fit.model), model_state(fixed.model))
    # ...and differs from train mode (the choice mattered)
    other = fit_recontrast(_cfg(iterations=4, encoder_bn="train", select_every=0), _images(), tmp_path / "train",
                           progress=False)
    assert not _states_equal(model_state(fit.model), model_state(other.model))


def test_encoder_bn_auto_without_validation_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="edgeuad"):
        fit = fit_recontrast(_cfg(iterations=2), _images(), tmp_path, progress=False)
    assert fit.config.encoder_bn == "train" and fit.report["encoder_bn"]["how"].startswith("no validation")
    assert "without a validation set" in caplog.text
    with pytest.raises(ValueError, match="both"):
        fit_recontrast(_cfg(iterations=2), _images(), tmp_path / "x", validation=_validation()[0], progress=False)


def test_real_validator_scores_the_model(tmp_path: Path) -> None:
    vs, vx = _validation(2)
    cfg = _cfg(iterations=2, encoder_bn="train", select_every=1)
    fit = fit_recontrast(cfg, _images(), tmp_path, validation=vs, validation_x=vx, progress=False)
    e = fit.report["curve"][-1]
    assert set(e) == {"iteration", "loss", "i_auroc_max", "i_auroc_topk_mean", "p_auroc"}
    # recompute the entry from the returned model (the last state is the best or equal): same numbers
    again = _Validator(vs, vx, cfg, torch.device("cpu"))(fit.model)
    best = fit.report["checkpoint"]["iteration"]
    entry = next(c for c in fit.report["curve"] if c["iteration"] == best)
    assert again == {k: entry[k] for k in again}
    assert fit.report["validation"] == {"n_normal": 2, "n_defective": 4, "defects": ["blob", "crack", "scratch"],
                                        "metric": "i_auroc"}


def test_cli_train_logs_and_stores_the_selection(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from edgeuad import api, cli
    from edgeuad.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "d", n_train=8, n_test_good=1, n_test_defect=1, size=64, seed=2)
    with caplog.at_level(logging.INFO, logger="edgeuad"):
        rc = cli.main(["train", "--method", "recontrast", "--data", str(data), "--out", str(tmp_path / "run"),
                       "--image-size", "64", "--iterations", "3", "--batch-size", "4", "--holdout", "0.25",
                       "--set", "pretrained=false", "--set", "select_every=1", "--no-progress"])
    assert rc == 0
    assert "encoder BN mode:" in caplog.text and "ReContrast selection: encoder BN" in caplog.text
    run = api.Run.load(tmp_path / "run")
    sel = run.info["selection"]
    assert run.config["encoder_bn"] == sel["encoder_bn"]["mode"] in ("train", "eval")
    assert run.config["score"] == sel["score"]["rule"] in ("max", "topk_mean")
    assert sel["validation"]["n_normal"] == 2 and sel["validation"]["n_defective"] == 4  # a blended and a crack copy each
    assert [e["iteration"] for e in sel["curve"]] == [1, 2, 3]    # probe (1 iteration), then every iteration
    assert sel["checkpoint"]["iteration"] in (1, 2, 3) and sel["checkpoint"]["last_iteration"] == 3


def test_exported_score_is_never_auto() -> None:
    """A model built without a validation set ships the official default rule, never "auto" (the runtime
    and the manifest schema know only max / topk_mean)."""
    from edgeuad.methods.recontrast import ReContrastConfig, resolved_score

    assert resolved_score(ReContrastConfig(score="auto")) == "max"
    assert resolved_score(ReContrastConfig(score="auto", stable=True)) == "topk_mean"
    assert resolved_score(ReContrastConfig(score="topk_mean")) == "topk_mean"


def test_resume_reads_a_checkpoint_from_before_hard_mining_as_on() -> None:
    from edgeuad.methods.recontrast_train import _check_resumable
    cfg = ReContrastConfig(pretrained=False, image_size=64, iterations=4, hard_mining="on")
    old = cfg.to_dict()
    del old["hard_mining"]                     # a checkpoint from before the field: it mined
    _check_resumable(old, cfg)
    with pytest.raises(ValueError, match="hard_mining"):
        _check_resumable(old, ReContrastConfig(pretrained=False, image_size=64, iterations=4, hard_mining="off"))


def _loss_trace(cfg: ReContrastConfig, out: Path) -> tuple[list[float], list[torch.dtype], Any]:
    """Losses and the dtypes the decoder outputs had in each training step, and the fit."""
    import edgeuad.methods.recontrast_train as rc
    from edgeuad.methods.recontrast import recontrast_loss as orig
    losses: list[float] = []
    dtypes: list[torch.dtype] = []

    def spy(enc, dec, alpha):  # type: ignore[no-untyped-def]
        loss = orig(enc, dec, alpha)
        losses.append(float(loss.detach()))
        dtypes.append(loss.dtype)
        return loss

    mp = pytest.MonkeyPatch()
    mp.setattr(rc, "recontrast_loss", spy)
    try:
        fit = rc.fit_recontrast(cfg, _images(8), out, progress=False)
    finally:
        mp.undo()
    return losses, dtypes, fit


def test_bf16_training_runs_the_forward_in_bf16_and_keeps_float32_state(tmp_path: Path) -> None:
    cfg = _cfg(iterations=12, alpha_warmup_frac=0.1, encoder_bn="train", precision="fp32")
    l32, d32, f32 = _loss_trace(cfg, tmp_path / "fp32")
    l16, d16, f16 = _loss_trace(ReContrastConfig.from_dict({**cfg.to_dict(), "precision": "bf16"}), tmp_path / "bf16")
    assert set(d32) == set(d16) == {torch.float32}          # the loss is float32 in both
    assert f16.report["recipe"]["precision"] == "bf16" and f16.config.precision == "bf16"
    assert f32.report["recipe"]["precision"] == "fp32"
    assert all(p.dtype == torch.float32 for p in f16.model.parameters())
    # the same start, different arithmetic: the first losses agree to bf16 accuracy, not to the last bit
    assert l16[0] != l32[0] and abs(l16[0] - l32[0]) < 0.05 * abs(l32[0])
    assert np.isfinite(l16).all() and np.mean(l16[-3:]) < np.mean(l16[:3])


def test_precision_auto_follows_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeuad.methods.recontrast_train as rc
    cpu = torch.device("cpu")
    monkeypatch.setattr(rc, "native_bf16", lambda device: True)
    assert rc.resolve_precision(ReContrastConfig(pretrained=False, precision="auto"), cpu) == "bf16"
    assert rc.resolve_precision(ReContrastConfig(pretrained=False, precision="fp32"), cpu) == "fp32"
    # CUDA's bf16 was not measured: auto stays fp32 there even where the GPU has it
    assert rc.resolve_precision(ReContrastConfig(pretrained=False, precision="auto"), torch.device("cuda")) == "fp32"
    monkeypatch.setattr(rc, "native_bf16", lambda device: False)
    assert rc.resolve_precision(ReContrastConfig(pretrained=False, precision="auto"), cpu) == "fp32"
    assert rc.resolve_precision(ReContrastConfig(pretrained=False, precision="bf16"), cpu) == "bf16"  # asked for
    with pytest.raises(ValueError, match="precision"):
        ReContrastConfig(pretrained=False, precision="fp16")
