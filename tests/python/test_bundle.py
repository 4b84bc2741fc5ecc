"""Bundle manifest, hashing, tamper and truncation detection, archives."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from edgeuad.bundle import Bundle, BundleError, pack, read_manifest, write_manifest
from edgeuad.preprocess import PreprocessConfig


def manifest_fields() -> dict:
    """A complete manifest (minus hashes) as api.export writes one for ReContrast."""
    return {
        "method": "recontrast", "backbone": "efficientnet_lite0",
        "preprocess": PreprocessConfig().to_dict(),
        "model": {"onnx": "model.onnx", "input": "image", "outputs": ["enc_a", "dec_a"],
                  "weights": "weights.safetensors", "opset": 17, "config": {}},
        "postprocess": {"kind": "cos_pairs", "pairs": [["enc_a", "dec_a"]], "weights": [1.0],
                        "align_corners": True, "sigma": 4.0, "score": "max", "topk_frac": 0.01},
        "thresholds": {"threshold": 1.0, "min": 0.0, "max": 2.0, "source": "normal_quantile"},
        "files": {"model.onnx": "", "weights.safetensors": ""},
    }


def make_bundle(root: Path, **sections: object) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(b"onnx-bytes" * 100)
    (root / "weights.safetensors").write_bytes(b"w" * 1000)
    write_manifest(root, {**manifest_fields(), **sections})
    return root


def test_roundtrip_and_hashes(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    b = Bundle.load(root)
    assert b.method == "recontrast"
    assert b.preprocess == PreprocessConfig()
    assert b.onnx_path == root / "model.onnx"
    m = json.loads((root / "manifest.json").read_text())
    assert len(m["files"]["model.onnx"]) == 64 and m["schema_version"] == 1


def test_tampered_file_is_rejected(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    data = bytearray((root / "model.onnx").read_bytes())
    data[10] ^= 0xFF
    (root / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch for model.onnx"):
        Bundle.load(root)


def test_truncated_file_is_rejected(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    (root / "weights.safetensors").write_bytes(b"w" * 10)
    with pytest.raises(BundleError, match="weights.safetensors"):
        Bundle.load(root)


def test_missing_file_and_bad_manifest(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    (root / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        Bundle.load(root)
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(root)
    with pytest.raises(BundleError, match="not found"):
        Bundle.load(tmp_path / "nope")


@pytest.mark.parametrize("field,value,msg", [
    ("schema_version", 99, "not supported"),
    ("method", "magic", "unknown method"),
    ("format", "other", "format"),
])
def test_schema_checks(tmp_path: Path, field: str, value: object, msg: str) -> None:
    root = make_bundle(tmp_path / "b")
    m = json.loads((root / "manifest.json").read_text())
    m[field] = value
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=msg):
        read_manifest(root)


def test_path_traversal_in_manifest(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    m = json.loads((root / "manifest.json").read_text())
    m["files"]["../evil"] = "0" * 64
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="illegal file name"):
        read_manifest(root)


def test_archive_roundtrip_and_evil_archive(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    tar = pack(root, tmp_path / "b.tar")
    b = Bundle.load(tar)
    assert (b.root / "model.onnx").read_bytes() == (root / "model.onnx").read_bytes()
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        tf.add(root / "manifest.json", arcname="../manifest.json")
    with pytest.raises(BundleError, match="refusing"):
        Bundle.load(evil)
    corrupt = tmp_path / "corrupt.tar"
    corrupt.write_bytes(tar.read_bytes()[:700])
    with pytest.raises(BundleError):
        Bundle.load(corrupt)


# ----------------------------------------------------------------------------- schema, field by field
def _edit(root: Path, path: str, value: object) -> None:
    """Set manifest field `path` ("a.b[0].c"; value DELETE removes it) without re-hashing."""
    m = json.loads((root / "manifest.json").read_text())
    keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]
    d = m
    for k in keys[:-1]:
        d = d[k]
    if value is DELETE:
        del d[keys[-1]]
    else:
        d[keys[-1]] = value
    (root / "manifest.json").write_text(json.dumps(m))


DELETE = object()


@pytest.mark.parametrize("path,value,field", [
    ("schema_version", True, "schema_version"),
    ("schema_version", "1", "schema_version"),
    ("thresholds.threshold", None, "thresholds.threshold"),
    ("thresholds.threshold", "0.5", "thresholds.threshold"),
    ("thresholds.threshold", float("inf"), "thresholds.threshold"),
    ("thresholds.threshold", 10 ** 400, "thresholds.threshold"),
    ("thresholds.threshold", DELETE, "thresholds.threshold"),
    ("thresholds.max", 0.0, "thresholds.max"),
    ("thresholds.source", "guess", "thresholds.source"),
    ("thresholds.quantile", 2.0, "thresholds.quantile"),
    ("postprocess.score", "median", "postprocess.score"),
    ("postprocess.sigma", 6e8, "postprocess.sigma"),
    ("postprocess.sigma", -1.0, "postprocess.sigma"),
    ("postprocess.sigma", "4", "postprocess.sigma"),
    ("postprocess.topk_frac", 1.5, "postprocess.topk_frac"),
    ("postprocess.align_corners", 1, "postprocess.align_corners"),
    ("postprocess.kind", "nn_l2", "postprocess.kind"),             # recontrast needs cos_pairs
    ("postprocess.kind", DELETE, "postprocess.kind"),
    ("postprocess.pairs", [], "postprocess.pairs"),
    ("postprocess.pairs", [["enc_a", "nope"]], "postprocess.pairs[0][1]"),
    ("postprocess.weights", [1.0, 2.0], "postprocess.weights"),
    ("postprocess.blur", 3, "postprocess.blur"),                  # unknown key: refused, not ignored
    ("preprocess.size", [0, 256], "preprocess.size[0]"),
    ("preprocess.size", [256], "preprocess.size"),
    ("preprocess.size", [256, 10 ** 9], "preprocess.size[1]"),
    ("preprocess.mean", [0.5, 0.5, "x"], "preprocess.mean[2]"),
    ("preprocess.std", [0.2, 0.0, 0.2], "preprocess.std[1]"),
    ("preprocess.interpolation", "cubic", "preprocess.interpolation"),
    ("model.outputs", ["enc_a", "enc_a"], "model.outputs"),
    ("model.onnx", "other.onnx", "model.onnx"),
    ("model.input", 3, "model.input"),
    ("files", {"model.onnx": "abc", "weights.safetensors": "0" * 64}, "files.model.onnx"),
    ("method", None, "method"),
    ("backbone", "", "backbone"),
    ("extra", {}, "extra"),
])
def test_every_field_is_checked_and_named(tmp_path: Path, path: str, value: object, field: str) -> None:
    root = make_bundle(tmp_path / "b")
    _edit(root, path, value)
    with pytest.raises(BundleError) as e:
        Bundle.load(root)
    assert e.value.field == field, str(e.value)
    assert repr(field) in str(e.value)


def test_nan_mean_and_duplicate_json_keys(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    text = (root / "manifest.json").read_text()
    (root / "manifest.json").write_text(text.replace('"mean": [\n      0.485', '"mean": [\n      NaN', 1))
    with pytest.raises(BundleError) as e:
        read_manifest(root)
    assert e.value.field == "preprocess.mean[0]"
    (root / "manifest.json").write_text(text.replace('"method": "recontrast"',
                                                     '"method": "recontrast", "method": "patchcore"', 1))
    with pytest.raises(BundleError, match="duplicate key 'method'"):
        read_manifest(root)
    (root / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(root)


def test_nn_l2_fields(tmp_path: Path) -> None:
    post = {"kind": "nn_l2", "embedding": "embeddings", "grid": [8, 8], "bank": "bank.euab", "reweight_b": 9,
            "align_corners": True, "sigma": 4.0, "score": "max", "topk_frac": 0.01}
    root = tmp_path / "b"
    root.mkdir()
    (root / "bank.euab").write_bytes(b"bank")
    make_bundle(root, method="patchcore", postprocess=post,
                model={"onnx": "model.onnx", "input": "image", "outputs": ["embeddings"]},
                files={"model.onnx": "", "weights.safetensors": "", "bank.euab": ""})
    assert Bundle.load(root).postprocess["grid"] == [8, 8]
    for path, value, field in [("postprocess.reweight_b", 1, "postprocess.reweight_b"),
                               ("postprocess.reweight_b", 10 ** 6, "postprocess.reweight_b"),
                               ("postprocess.grid", [8, 0], "postprocess.grid[1]"),
                               ("postprocess.grid", [8, 8.0], "postprocess.grid[1]"),
                               ("postprocess.bank", "other.euab", "postprocess.bank"),
                               ("postprocess.embedding", "x", "postprocess.embedding")]:
        good = (root / "manifest.json").read_text()
        _edit(root, path, value)
        with pytest.raises(BundleError) as e:
            Bundle.load(root)
        assert e.value.field == field
        (root / "manifest.json").write_text(good)


def test_writer_refuses_what_readers_refuse(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    before = (root / "manifest.json").read_bytes()
    bad = manifest_fields()
    bad["postprocess"] = {**bad["postprocess"], "score": "median"}
    with pytest.raises(BundleError, match="postprocess.score"):
        write_manifest(root, bad)
    assert (root / "manifest.json").read_bytes() == before


def test_provisional_thresholds_need_explicit_consent(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b", thresholds={"threshold": 0.0, "min": 0.0, "max": 1.0,
                                                   "source": "provisional"})
    with pytest.raises(BundleError, match="provisional") as e:
        Bundle.load(root)
    assert e.value.field == "thresholds.source"
    assert Bundle.load(root, allow_provisional=True).thresholds["source"] == "provisional"


def test_digest_pins_the_bundle(tmp_path: Path) -> None:
    import hashlib

    root = make_bundle(tmp_path / "b")
    b = Bundle.load(root)
    assert b.digest == hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest()
    assert Bundle.load(root, expected_digest=b.digest).digest == b.digest
    assert Bundle.load(root, expected_digest="SHA256:" + b.digest.upper()).digest == b.digest
    tar = pack(root, tmp_path / "b.tar")
    assert Bundle.load(tar, expected_digest=b.digest).digest == b.digest  # same bundle, archived
    other = make_bundle(tmp_path / "c", thresholds={"threshold": 1.5, "min": 0.0, "max": 2.0,
                                                    "source": "normal_quantile"})
    with pytest.raises(BundleError, match="not the expected") as e:
        Bundle.load(other, expected_digest=b.digest)
    assert e.value.field == "digest"
    with pytest.raises(ValueError, match="64 hex"):
        Bundle.load(root, expected_digest="abc")


def test_archive_with_duplicate_or_aliased_members_is_refused(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    evil_m = tmp_path / "evil_manifest.json"
    m = json.loads((root / "manifest.json").read_text())
    m["thresholds"]["threshold"] = 1.9
    evil_m.write_text(json.dumps(m))
    for second in ("manifest.json", "./manifest.json"):
        dup = tmp_path / "dup.tar"
        with tarfile.open(dup, "w") as tf:
            for name in ["manifest.json", "model.onnx", "weights.safetensors"]:
                tf.add(root / name, arcname=name)
            tf.add(evil_m, arcname=second)  # tar takes the last one: refused instead
        with pytest.raises(BundleError, match="twice|refusing"):
            Bundle.load(dup)
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"\0" * 511 + b"x" * 2000)
    with pytest.raises(BundleError):
        Bundle.load(garbage)


def test_newer_schema_says_upgrade_not_unknown_field(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    m = json.loads((root / "manifest.json").read_text())
    m["schema_version"] = 2
    m["postprocess"]["new_feature"] = 1
    m["brand_new_section"] = {}
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="upgrade edgeuad") as e:
        read_manifest(root)
    assert e.value.field == "schema_version"


def test_engines_and_robust_thresholds(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b", engines={"fp16": "model.onnx"},
                       thresholds={"threshold": 1.0, "min": 0.0, "max": 2.0, "source": "normal_robust", "fpr": 0.01})
    assert Bundle.load(root).manifest["engines"] == {"fp16": "model.onnx"}
    for value, field in [({"fp8": "model.onnx"}, "engines.fp8"), ({"int8": "model.int8.onnx"}, "engines.int8"),
                         (["model.fp16.engine"], "engines[0]"), ("model.onnx", "engines")]:
        _edit(root, "engines", value)
        with pytest.raises(BundleError) as e:
            Bundle.load(root)
        assert e.value.field == field
    _edit(root, "engines", {"fp16": "model.onnx"})
    _edit(root, "thresholds.fpr", 0.9)
    with pytest.raises(BundleError) as e:
        Bundle.load(root)
    assert e.value.field == "thresholds.fpr"


def test_hand_set_threshold_outside_the_range_loads_with_a_warning(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Operators tune thresholds, so an edit is not an error; it is logged, and a deployment that
    must refuse edits pins the digest."""
    root = make_bundle(tmp_path / "b")
    digest = Bundle.load(root).digest
    _edit(root, "thresholds.threshold", 1000.0)
    with caplog.at_level("WARNING", logger="edgeuad.manifest_schema"):
        assert Bundle.load(root).thresholds["threshold"] == 1000.0
    assert "outside [thresholds.min, thresholds.max]" in caplog.text
    with pytest.raises(BundleError, match="not the expected"):
        Bundle.load(root, expected_digest=digest)
