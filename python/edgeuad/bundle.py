"""The bundle: the one artefact the training side writes and the runtime reads.

A bundle is a directory (or a `.tar` of one) holding

    manifest.json        schema version, method, backbone, preprocessing, post-processing,
                         thresholds, ONNX I/O names, sha256 of every other file
    model.onnx           the network (ONNX, dynamic batch)
    weights.safetensors  the torch weights (re-export, torch backend); never pickle
    bank.euab            memory bank (patch methods), `edgeuad._rt.MemoryBank` file format

Loading verifies the schema and every file's sha256 before anything is parsed, so a
truncated download or a tampered file fails with `BundleError` naming the file instead
of crashing deep inside onnxruntime or the bank loader.  numpy-free and torch-free.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ._version import __version__
from .atomic import atomic_path, atomic_write_bytes
from .preprocess import PreprocessConfig

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FORMAT = "edgeuad-bundle"
MANIFEST = "manifest.json"
METHODS = ("recontrast", "patchcore", "reconpatch")
_REQUIRED = ("schema_version", "format", "method", "backbone", "preprocess", "model",
             "postprocess", "thresholds", "files")


class BundleError(ValueError):
    """A bundle is missing, malformed, from an unsupported schema, or fails its hash check."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


@dataclass
class Bundle:
    """A verified bundle on disk.  Build one with `Bundle.load(path)`."""

    root: Path
    manifest: dict[str, Any]
    _tmpdir: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    # --- accessors -------------------------------------------------------------
    @property
    def method(self) -> str:
        return str(self.manifest["method"])

    @property
    def backbone(self) -> str:
        return str(self.manifest["backbone"])

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.manifest["preprocess"])

    @property
    def postprocess(self) -> dict[str, Any]:
        return dict(self.manifest["postprocess"])

    @property
    def thresholds(self) -> dict[str, Any]:
        return dict(self.manifest["thresholds"])

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.manifest["model"])

    @property
    def onnx_path(self) -> Path:
        return self.file(self.manifest["model"]["onnx"])

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError(f"bundle {self.root} has no file {name!r} in its manifest")
        return self.root / name

    def has_file(self, name: str) -> bool:
        return name in self.manifest["files"]

    # --- loading ---------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "Bundle":
        """Open a bundle directory or `.tar` archive, check schema and hashes."""
        path = Path(path)
        tmp: tempfile.TemporaryDirectory | None = None
        if path.is_file() and tarfile.is_tarfile(path):
            tmp = tempfile.TemporaryDirectory(prefix="edgeuad-bundle-")
            root = _safe_extract(path, Path(tmp.name))
        elif path.is_dir():
            root = path
        elif path.exists():
            raise BundleError(f"{path} is neither a bundle directory nor a bundle .tar archive")
        else:
            raise BundleError(f"bundle not found: {path}")
        manifest = read_manifest(root)
        if verify:
            verify_files(root, manifest)
        return cls(root=root, manifest=manifest, _tmpdir=tmp)


def read_manifest(root: Path) -> dict[str, Any]:
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root} has no {MANIFEST}: not an edgeuad bundle")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({e}); the bundle is corrupt") from e
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath}: manifest must be a JSON object")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise BundleError(f"{mpath}: manifest lacks {missing}")
    if manifest["format"] != FORMAT:
        raise BundleError(f"{mpath}: format {manifest['format']!r} is not {FORMAT!r}")
    sv = manifest["schema_version"]
    if not isinstance(sv, int) or sv > SCHEMA_VERSION or sv < 1:
        raise BundleError(f"{mpath}: schema_version {sv!r} is not supported by edgeuad {__version__} "
                          f"(supports 1..{SCHEMA_VERSION}); upgrade edgeuad or re-export the bundle")
    if manifest["method"] not in METHODS:
        raise BundleError(f"{mpath}: unknown method {manifest['method']!r} (known: {', '.join(METHODS)})")
    try:
        PreprocessConfig.from_dict(manifest["preprocess"])
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{mpath}: bad preprocess section: {e}") from e
    if not isinstance(manifest["files"], dict) or not manifest["files"]:
        raise BundleError(f"{mpath}: 'files' must map file names to sha256 digests")
    for name in manifest["files"]:
        if Path(name).is_absolute() or ".." in Path(name).parts or name == MANIFEST:
            raise BundleError(f"{mpath}: illegal file name {name!r} in manifest")
    return manifest


def verify_files(root: Path, manifest: Mapping[str, Any]) -> None:
    for name, digest in manifest["files"].items():
        p = root / name
        if not p.is_file():
            raise BundleError(f"bundle {root}: file {name} listed in the manifest is missing")
        actual = sha256_file(p)
        if actual != digest:
            raise BundleError(f"bundle {root}: sha256 mismatch for {name} (manifest {digest[:12]}..., "
                              f"file {actual[:12]}...): the file is truncated, corrupt or was modified")


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every listed file, fill in version fields and write manifest.json atomically."""
    root = Path(root)
    manifest = dict(manifest)
    manifest.setdefault("schema_version", SCHEMA_VERSION)
    manifest["format"] = FORMAT
    manifest["edgeuad_version"] = __version__
    files = manifest.get("files") or {}
    manifest["files"] = {name: sha256_file(root / name) for name in sorted(files)}
    atomic_write_bytes(root / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    read_manifest(root)  # the writer checks what readers will check
    return manifest


def pack(root: Path, archive: Path) -> Path:
    """Write the bundle directory as a single .tar (uncompressed: ONNX and banks do not compress)."""
    root, archive = Path(root), Path(archive)
    manifest = read_manifest(root)
    verify_files(root, manifest)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w") as tf:
        for name in [MANIFEST, *manifest["files"]]:
            tf.add(root / name, arcname=name)
    return archive


def _safe_extract(archive: Path, dest: Path) -> Path:
    try:
        with tarfile.open(archive, "r") as tf:
            for m in tf.getmembers():
                p = Path(m.name)
                if not m.isfile() or p.is_absolute() or ".." in p.parts or len(p.parts) != 1:
                    raise BundleError(f"{archive}: refusing archive member {m.name!r} (only plain top-level files)")
            tf.extractall(dest, filter="data")
    except tarfile.TarError as e:
        raise BundleError(f"{archive}: unreadable bundle archive ({e})") from e
    return dest


def copy_into(root: Path, src: Path, name: str | None = None) -> str:
    """Copy a file into a bundle directory; returns its name in the bundle."""
    name = name or Path(src).name
    shutil.copyfile(src, Path(root) / name)
    return name
