"""Bundle manifest, hashing, tamper and truncation detection, archives."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from edgeuad.bundle import Bundle, BundleError, pack, read_manifest, write_manifest
from edgeuad.preprocess import PreprocessConfig


def make_bundle(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(b"onnx-bytes" * 100)
    (root / "weights.safetensors").write_bytes(b"w" * 1000)
    write_manifest(root, {
        "method": "recontrast", "backbone": "efficientnet_lite0",
        "preprocess": PreprocessConfig().to_dict(),
        "model": {"onnx": "model.onnx", "input": "image", "outputs": ["a"], "weights": "weights.safetensors"},
        "postprocess": {"kind": "cos_pairs"},
        "thresholds": {"threshold": 1.0, "min": 0.0, "max": 2.0, "source": "normal_quantile"},
        "files": {"model.onnx": "", "weights.safetensors": ""},
    })
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
