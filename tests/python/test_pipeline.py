"""End to end on tiny synthetic data: train -> export -> Detector -> evaluate, for every method.

Tiny configs (64 px, a few iterations, random-init backbone) keep this to seconds; what is checked is
correctness of the plumbing and parity between the shipped runtime path and the torch model, not
detection quality (the demo and benchmarks/RESULTS.md report that).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeuad import api
from edgeuad.bundle import BundleError
from edgeuad.detector import Detector
from edgeuad.synthetic import make_synthetic_dataset

TINY = {
    "recontrast": {"image_size": 64, "iterations": 3, "batch_size": 4, "pretrained": False},
    "patchcore": {"image_size": 64, "coreset_ratio": 0.2, "pretrained": False},
    "reconpatch": {"image_size": 64, "steps": 3, "coreset_ratio": 0.2, "pretrained": False},
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("syn")
    return make_synthetic_dataset(root / "data", kind="texture", n_train=10, n_test_good=3, n_test_defect=2,
                                  size=64, seed=1)


@pytest.fixture(scope="module", params=list(TINY))
def bundle(request: pytest.FixtureRequest, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    method = request.param
    out = tmp_path_factory.mktemp(method)
    run = api.train(method, dataset, out / "run", TINY[method], holdout_fraction=0.2, progress=False)
    return api.export(run, out / "bundle").root


def test_bundle_contents(bundle: Path) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["thresholds"]["source"] == "normal_robust" and m["thresholds"]["fpr"] == 0.01
    assert m["thresholds"]["max"] > m["thresholds"]["min"]
    assert set(m["files"]) >= {"model.onnx", "weights.safetensors"}
    assert all(v <= 1e-3 for v in m["model"]["parity"]["max_abs"].values())
    if m["method"] != "recontrast":
        assert "bank.euab" in m["files"]
    else:  # label-free selection is recorded in the manifest, and the shipped config is what it chose
        sel = m["training"]["selection"]
        assert m["model"]["config"]["encoder_bn"] == sel["encoder_bn"]["mode"]
        assert m["model"]["config"]["score"] == m["postprocess"]["score"] == sel["score"]["rule"]
        assert sel["checkpoint"]["last_iteration"] == 3


def test_detector_matches_torch_reference(bundle: Path, dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The shipped path (ONNX + _rt kernels) vs the eager torch model + torch post-processing.  A patch
    bundle's Detector logs how its bank is searched: these tiny banks (640 x 152, untrained backbone) are
    low-rank enough for the pruned exact search (also beside bf16 candidates), so this compares that search
    with torch, and the full searches (bf16 candidates where the CPU has them, and float32) with it."""
    from edgeuad.data import read_image
    from edgeuad.methods.reference import build_reference

    with caplog.at_level("INFO", logger="edgeuad.detector"):
        det = Detector(bundle)
    imgs = [read_image(p) for p in sorted((dataset / "test").rglob("*.png"))[:3]]
    res = det.score_batch(imgs)
    if det.method != "recontrast":
        assert f"memory bank {len(det.bank)} x {det.bank.dim}, exact, pruned by a certified lower bound" in caplog.text
        det.bank.rt.exact_prune = False  # every search of the three gives the same scores bit for bit
        assert [r.score for r in det.score_batch(imgs)] == [r.score for r in res]
        det.bank.rt.exact_bf16 = False
        assert [r.score for r in det.score_batch(imgs)] == [r.score for r in res]
    ref = build_reference(det.bundle, threads=1)
    maps, scores = ref(imgs)
    got = np.array([r.score for r in res])
    np.testing.assert_allclose(got, scores, rtol=2e-3, atol=2e-3)
    for r, m in zip(res, maps):
        assert r.raw_map.shape == imgs[0].shape[:2]
        np.testing.assert_allclose(r.raw_map, m, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(r.anomaly_map, det.thresholds.normalize(r.raw_map), rtol=1e-6, atol=1e-7)
        assert r.is_anomaly == (r.score >= det.threshold)


def test_run_records_absolute_paths(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run trained from a relative data path exports from any working directory: run.json holds the
    held-out images (read again by export for thresholds) as absolute paths."""
    monkeypatch.chdir(dataset.parent)
    run = api.train("patchcore", Path(dataset.name), tmp_path / "run", TINY["patchcore"], holdout_fraction=0.2,
                    progress=False)
    assert run.holdout and all(Path(p).is_absolute() and Path(p).is_file() for p in run.holdout)
    assert Path(run.info["data"]) == dataset.resolve()
    monkeypatch.chdir(tmp_path)
    bundle = api.export(api.Run.load(tmp_path / "run"), tmp_path / "bundle")
    assert bundle.thresholds["threshold"] > 0


def test_torch_reference_runs_a_two_level_recontrast_bundle(dataset: Path, tmp_path: Path) -> None:
    """A ReContrast bundle whose map sums levels 2 and 3 (what label-free selection often ships) exports 4
    pairs; the torch reference must run the model on those levels, not the model's default three (it
    raised "4 weights for 6 pairs" before), and score like the Detector."""
    from edgeuad.data import read_image
    from edgeuad.methods.reference import build_reference

    run = api.train("recontrast", dataset, tmp_path / "run", {**TINY["recontrast"], "levels": "2,3"},
                    holdout_fraction=0.2, progress=False)
    root = api.export(run, tmp_path / "bundle").root
    det = Detector(root)
    assert [a for a, _ in det.bundle.manifest["postprocess"]["pairs"]] == [
        "enc_l2_frozen", "enc_l3_frozen", "enc_l2_train", "enc_l3_train"]
    imgs = [read_image(p) for p in sorted((dataset / "test").rglob("*.png"))[:3]]
    got = np.array([r.score for r in det.score_batch(imgs)])
    _, scores = build_reference(det.bundle, threads=1)(imgs)
    assert np.ptp(scores) > 0
    np.testing.assert_allclose(got, scores, rtol=2e-3, atol=2e-3)


def test_recontrast_on_expanded_taps_exports_and_scores_like_torch(dataset: Path, tmp_path: Path) -> None:
    """taps="expand" (the next blocks' 144/240/672-channel expansions of Lite0) trains, exports a graph whose
    encoder outputs have those widths (parity-checked against the torch model by the export), keeps the
    choice in the manifest's config, and the Detector scores like the torch reference of that model."""
    from edgeuad.data import read_image
    from edgeuad.methods.reference import build_reference

    cfg = {**TINY["recontrast"], "taps": "expand", "levels": "1,2,3"}
    run = api.train("recontrast", dataset, tmp_path / "run", cfg, holdout_fraction=0.2, progress=False)
    root = api.export(run, tmp_path / "bundle").root
    det = Detector(root)
    assert det.bundle.manifest["model"]["config"]["taps"] == "expand"
    import onnx
    graph = onnx.load(str(root / "model.onnx")).graph
    widths = {o.name: o.type.tensor_type.shape.dim[1].dim_value for o in graph.output}
    assert [widths[f"enc_l{k}_frozen"] for k in (1, 2, 3)] == [144, 240, 672]
    imgs = [read_image(p) for p in sorted((dataset / "test").rglob("*.png"))[:3]]
    got = np.array([r.score for r in det.score_batch(imgs)])
    _, scores = build_reference(det.bundle, threads=1)(imgs)
    assert np.ptp(scores) > 0
    np.testing.assert_allclose(got, scores, rtol=2e-3, atol=2e-3)


def test_benchmark_torch_references_match_the_correctness_reference(bundle: Path, dataset: Path) -> None:
    """bench/torch_ref.py's float32 user-style references (eager torch; onnxruntime + torch post) score
    like methods/reference.py (the training side's float64 search): the speed-ups compare equal work."""
    from edgeuad.bench.torch_ref import TorchReference
    from edgeuad.data import read_image
    from edgeuad.methods.reference import build_reference
    from edgeuad.preprocess import preprocess

    want = build_reference(bundle, threads=1)
    x = preprocess([read_image(p) for p in sorted((dataset / "test").rglob("*.png"))[:3]], want.pre_cfg)
    w = want.run(x)
    assert np.ptp(w.scores) > 0          # distinct frames: a constant output would pass trivially
    for variant in ("torch-eager", "ort+torch-post"):
        got = TorchReference(bundle, variant, threads=1).run(x)
        np.testing.assert_allclose(got.scores, w.scores, rtol=2e-3, atol=2e-3, err_msg=variant)
        np.testing.assert_allclose(got.maps, w.maps, rtol=2e-3, atol=2e-3, err_msg=variant)
        assert set(got.timings) == {"network", "torch_post"}


def test_detector_bad_input(bundle: Path) -> None:
    det = Detector(bundle)
    with pytest.raises(ValueError, match="uint8"):
        det.score(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        det.score(np.zeros((64, 64, 5), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        det.score(np.zeros((0, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="no frames"):
        det.score_batch([])
    # variable sizes in one batch are fine: each map comes back at its frame's size
    rs = det.score_batch([np.full((50, 70, 3), 100, np.uint8), np.full((90, 40), 100, np.uint8)])
    assert rs[0].anomaly_map.shape == (50, 70) and rs[1].anomaly_map.shape == (90, 40)


def test_tampered_bundle_refused(bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    with open(copy / "model.onnx", "r+b") as f:
        f.seek(200)
        b = f.read(1)
        f.seek(200)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Detector(copy)


def test_evaluate_writes_report(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    res = api.evaluate(bundle, dataset, tmp_path / "rep", progress=False)
    # I-AUROC equals the fraction of (defect, good) pairs ordered right, from the per-image scores it reports
    good = [r["score"] for r in res.per_image if r["label"] == 0]
    bad = [r["score"] for r in res.per_image if r["label"] == 1]
    pairs = [(b > g) + 0.5 * (b == g) for b in bad for g in good]
    assert good and bad and res.metrics["i_auroc"] == pytest.approx(sum(pairs) / len(pairs))
    assert "aupro" in res.metrics and "p_auroc" in res.metrics
    assert (tmp_path / "rep" / "metrics.json").is_file()
    assert (tmp_path / "rep" / "overlays.png").stat().st_size > 1000
    rows = (tmp_path / "rep" / "scores.jsonl").read_text().splitlines()
    assert len(rows) == int(res.metrics["n_images"])
    # per-defect-type I-AUROC: each defect type against all good images, from the written per-image records
    from sklearn.metrics import roc_auc_score

    recs = [json.loads(r) for r in rows]
    defects = sorted({r["defect"] for r in recs if r["label"] == 1})
    assert defects and all(f"i_auroc/{d}" in res.metrics for d in defects)
    for d in defects:
        sub = [r for r in recs if r["label"] == 0 or r["defect"] == d]
        want = roc_auc_score([r["label"] for r in sub], [r["score"] for r in sub])
        assert res.metrics[f"i_auroc/{d}"] == pytest.approx(want)


def test_runtime_never_imports_torch(bundle: Path, dataset: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from edgeuad import Detector\n"
        f"d = Detector({str(bundle)!r})\n"
        "r = d.score(np.full((64, 64, 3), 90, np.uint8))\n"
        "assert 'torch' not in sys.modules, 'runtime imported torch'\n"
        "print('ok', r.score)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_predict_cli_on_a_folder(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    from edgeuad import cli

    out = tmp_path / "pred"
    rc = cli.main(["-q", "predict", str(dataset / "test" / "good"), "--bundle", str(bundle), "--out", str(out),
                   "--all-overlays", "--batch", "2"])
    assert rc == 0
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    n = len(list((dataset / "test" / "good").glob("*.png")))
    assert len(rows) == n and sorted(r["index"] for r in rows) == list(range(n))
    assert len(list((out / "overlays").glob("*.png"))) == n
    det = Detector(bundle)
    direct = det.score(__import__("edgeuad.data", fromlist=["read_image"]).read_image(
        sorted((dataset / "test" / "good").glob("*.png"))[0]))
    assert rows[0]["score"] == pytest.approx(direct.score, rel=1e-5)


def test_int8_export_writes_checked_qdq_graph_then_needs_tensorrt(bundle: Path, dataset: Path,
                                                                  tmp_path: Path) -> None:
    """The Q/DQ graph is made and verified with onnxruntime here; the engine build needs TensorRT."""
    import shutil

    from edgeuad.bundle import Bundle
    from edgeuad.export.tensorrt import TensorRTUnavailableError, tensorrt_available
    from edgeuad.export.trt_export import export_engines

    if json.loads((bundle / "manifest.json").read_text())["method"] != "patchcore":
        pytest.skip("one method is enough for the INT8 plumbing (keeps CI short)")
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    b = Bundle.load(copy)
    if tensorrt_available():
        pytest.skip("tensorrt is installed: the GPU path is exercised elsewhere")
    with pytest.raises(TensorRTUnavailableError, match="pip install tensorrt"):
        export_engines(b, int8=True, calib=dataset, int8_fp32_first=1)
    b2 = Bundle.load(copy)  # manifest rewritten with the Q/DQ graph hashed in; still verifies
    assert "model.int8.onnx" in b2.manifest["files"]
    assert b2.manifest["quantization"]["int8"]
    assert b2.manifest["quantization"]["int8"]["fp32_nodes"] == ["/embedder/backbone/_conv_stem/Conv"]
    import onnx

    ops = {n.op_type for n in onnx.load(str(copy / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_fp16_accuracy_bundle_scores_like_fp32(bundle: Path, tmp_path: Path) -> None:
    """benchmarks/int8_accuracy.py --precision fp16: the copy's graph is float16 inside (what TensorRT 11
    builds from), the Detector loads it unchanged and its scores stay within float16 rounding of fp32."""
    import onnx
    from script_helpers import load_benchmark

    from edgeuad.bundle import Bundle

    mod = load_benchmark("int8_accuracy")
    half = mod.low_precision_bundle(Bundle.load(bundle), "fp16", "", tmp_path)
    assert json.loads((half / "manifest.json").read_text())["quantization"]["kind"] == "fp16"
    g = onnx.load(str(half / "model.onnx")).graph
    assert {t.data_type for t in g.initializer if t.data_type in (1, 10)} == {onnx.TensorProto.FLOAT16}
    frames = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(4)]
    s32 = np.array([r.score for r in Detector(bundle).score_batch(frames)])
    s16 = np.array([r.score for r in Detector(half).score_batch(frames)])
    assert not np.array_equal(s16, s32)  # the float16 graph really ran
    np.testing.assert_allclose(s16, s32, rtol=2e-2)


def test_int8_accuracy_bundle_records_the_per_output_errors(bundle: Path, dataset: Path, tmp_path: Path) -> None:
    """benchmarks/int8_accuracy.py: the int8 copy's manifest carries insert_qdq's per-output errors (which
    output the int8 graph loses), the ones written beside the cached graph."""
    from script_helpers import load_benchmark

    from edgeuad.bundle import Bundle

    mod = load_benchmark("int8_accuracy")
    b = Bundle.load(bundle)
    q = mod.low_precision_bundle(b, "int8", str(dataset / "train" / "good"), tmp_path)
    rec = json.loads((q / "manifest.json").read_text())["quantization"]
    report = json.loads((tmp_path / "model.int8.json").read_text())
    assert rec["kind"] == "qdq_int8" and set(rec["output_rel_error"]) == set(b.model["outputs"])
    assert rec["output_rel_error"] == report["output_rel_error"] and min(rec["output_rel_error"].values()) > 0
    assert Bundle.load(q).model["outputs"] == b.model["outputs"]


def test_cpu_int8_export_ships_an_int8_graph_with_its_own_threshold(
        bundle: Path, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """`edgeuad export --cpu-int8 --calib DIR`: the bundle's graph runs as int8 kernels in onnxruntime
    (QLinearConv after the session's fusion), its threshold comes from the int8 pipeline, its scores
    stay near the fp32 bundle's, and what cannot use it (TensorRT) refuses it by name."""
    import onnx
    import onnxruntime as ort

    from edgeuad import cli
    from edgeuad.bundle import Bundle
    from edgeuad.cpus import ort_session_options
    from edgeuad.export.trt_export import export_engines
    from edgeuad.runtime.backends import BackendUnavailableError

    fp32 = Bundle.load(bundle)  # every method: ReConPatch's head adds a MatMul + bias Add, ReContrast 2 outputs
    run, out = bundle.parent / "run", tmp_path / "int8"
    assert cli.main(["-q", "export", "--run", str(run), "--out", str(out), "--cpu-int8", "--calib", str(dataset),
                     "--int8-fp32-first", "1"]) == 0
    b = Bundle.load(out)
    q = b.manifest["quantization"]["cpu_int8"]
    assert q["target"] == "onnxruntime" and q["calibration_images"] == len(list((dataset / "train" / "good").glob("*")))
    assert len(q["fp32_nodes"]) == 1 and q["fp32_nodes"][0].endswith("_conv_stem/Conv") and q["quantized_ops"] > 0
    assert set(b.manifest["files"]) == set(fp32.manifest["files"])  # no fp32 graph left behind
    v = q["validation"]  # the label-free check: both graphs on the run's synthetic-defect split
    assert v["images"] == 3 * v["held_out_normals"] == 3 * len(b.manifest["training"]["calibration"]["images"])
    assert v["drop_i_auroc"] == pytest.approx(v["fp32"]["i_auroc"] - v["int8"]["i_auroc"], abs=2e-4)
    assert {"i_auroc", "p_auroc"} <= set(v["fp32"]) and {"i_auroc", "p_auroc"} <= set(v["int8"])
    so = ort_session_options(ort, 1)
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(b.onnx_path), so, providers=["CPUExecutionProvider"])
    assert "QLinearConv" in {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}
    # the threshold was set on the int8 pipeline's own scores of the held-out images
    assert b.thresholds["threshold"] != fp32.thresholds["threshold"]
    assert b.manifest["training"]["calibration"]["images"] == fp32.manifest["training"]["calibration"]["images"]
    assert b.manifest["training"]["calibration"]["scores"] != fp32.manifest["training"]["calibration"]["scores"]
    np.testing.assert_allclose(b.manifest["training"]["calibration"]["scores"],
                               fp32.manifest["training"]["calibration"]["scores"], rtol=0.15)
    import cv2

    frames = [cv2.imread(str(p)) for p in sorted((dataset / "test").rglob("*.png"))]  # in the calibrated range
    s8 = np.array([r.score for r in Detector(out, color="bgr").score_batch(frames)])
    s32 = np.array([r.score for r in Detector(bundle, color="bgr").score_batch(frames)])
    assert not np.array_equal(s8, s32)
    # an untrained 64 px net: near-zero distances, so relative to the largest score (trained bundles'
    # accuracy cost is measured by benchmarks/int8_accuracy.py)
    np.testing.assert_allclose(s8, s32, rtol=0, atol=0.5 * s32.max())
    import logging

    from edgeuad import cpus

    with caplog.at_level(logging.INFO, logger="edgeuad.detector"):
        Detector(out).close()
    assert "on onnxruntime (int8 graph)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edgeuad.runtime.backends"):
        Detector(out).close()
        assert "no VNNI" not in caplog.text
        monkeypatch.setattr(cpus, "int8_product_saturates", lambda: True)  # an AVX2-only CPU
        Detector(out).close()
        assert "no VNNI" in caplog.text
        caplog.clear()
        Detector(bundle).close()  # an fp32 bundle: nothing to say
        assert "no VNNI" not in caplog.text
    from edgeuad.bench import BenchConfig
    from edgeuad.bench.run import _bundle_info

    assert _bundle_info(BenchConfig(bundle=str(out)))["graph"] == "int8 (onnxruntime CPU)"  # bench reports say so
    assert _bundle_info(BenchConfig(bundle=str(bundle)))["graph"] == "float32"
    capsys.readouterr()
    assert cli.main(["-q", "info", "--bundle", str(out)]) == 0
    assert "graph int8 for onnxruntime on the CPU" in capsys.readouterr().out
    with pytest.raises(ValueError, match="already int8 for onnxruntime"):
        export_engines(b, fp16=True)
    with pytest.raises(BackendUnavailableError, match="TensorRT does not build"):
        Detector(out, backend="tensorrt")
    for bad in (["--cpu-int8"], ["--cpu-int8", "--calib", str(dataset), "--fp16"]):
        with pytest.raises(SystemExit, match="cpu-int8"):
            cli.main(["-q", "export", "--run", str(run), "--out", str(tmp_path / "x"), *bad])
    with pytest.raises(FileNotFoundError, match="calibration images"):  # before any export work
        api.export(run, tmp_path / "x", cpu_int8_calib=tmp_path / "missing")
    with pytest.raises(ValueError, match="finite"):
        api.export(run, tmp_path / "x", cpu_int8_calib=dataset, int8_max_drop=float("nan"))
    assert not (tmp_path / "x").exists()


def test_cpu_int8_export_stops_when_its_check_fails(bundle: Path, dataset: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A drop above --int8-max-drop on the synthetic-defect split stops the export: the previous bundle
    stays byte for byte, nothing half-written appears.  (The tiny runs hold out 2 normals, under the
    check's minimum, so the minimum is lowered here; any drop exceeds a negative allowance.)"""
    from edgeuad import cli, quantize_check
    from edgeuad.quantize_check import Int8AccuracyError

    if json.loads((bundle / "manifest.json").read_text())["method"] != "patchcore":
        pytest.skip("one method is enough for the refusal path")
    run, out = bundle.parent / "run", tmp_path / "int8"
    assert cli.main(["-q", "export", "--run", str(run), "--out", str(out), "--cpu-int8", "--calib", str(dataset),
                     "--int8-max-drop", "1"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(quantize_check, "MIN_NORMALS", 1)
    with pytest.raises(Int8AccuracyError, match="no bundle written") as err:
        api.export(run, out, cpu_int8_calib=dataset, int8_max_drop=-1.0)
    # the refusal names the outputs int8 changes most (insert_qdq's per-output errors), worst first
    rel = json.loads((out / "manifest.json").read_text())["quantization"]["cpu_int8"]["output_rel_error"]
    worst = max(rel, key=lambda k: rel[k])
    assert f"no bundle written (outputs int8 changes most, relative error: {worst} {rel[worst]:.2f}" in str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8"]  # no temporary directory left behind
    assert cli.main(["-q", "export", "--run", str(run), "--out", str(out), "--cpu-int8", "--calib", str(dataset),
                     "--int8-max-drop", "-1"]) != 0
