"""The bundle: the one artefact the training side writes and the runtime reads.

A bundle is a directory (or a `.tar` of one) holding

    manifest.json        schema version, method, backbone, preprocessing, post-processing,
                         thresholds, ONNX I/O names, sha256 of every other file
    model.onnx           the network (ONNX, dynamic batch)
    weights.safetensors  the torch weights (re-export, torch backend); never pickle
    bank.euab            memory bank (patch methods), `edgeuad._rt.MemoryBank` file format

Loading checks the manifest field by field (`manifest_schema.py`) and every file's sha256 before
anything is parsed, so a truncated download, a tampered file or an edited manifest fails with
`BundleError` naming the file or field instead of crashing deep inside onnxruntime or the bank
loader.  The bundle's digest is the sha256 of manifest.json: since the manifest holds the sha256 of
every other file, it pins the exact bundle (`Bundle.load(..., expected_digest=...)`).
A manifest whose thresholds are still "provisional" (an export that did not finish) is refused
unless the caller asks for it.  numpy-free and torch-free.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from . import limits
from ._version import __version__
from .atomic import atomic_path, atomic_write_bytes, remove_stale_temps
from .manifest_schema import (ENSEMBLE, FORMAT, MANIFEST, METHODS, PROVISIONAL, SCHEMA_VERSION, BundleError,
                              check_ensemble_member, file_name_ok, validate_manifest)
from .preprocess import PreprocessConfig

log = logging.getLogger(__name__)

__all__ = ["Bundle", "BundleError", "FORMAT", "MANIFEST", "METHODS", "SCHEMA_VERSION", "manifest_digest",
           "normalize_digest", "pack", "read_manifest", "verify_files", "write_manifest"]


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
    digest: str = ""   # sha256 of manifest.json (hex): identifies the whole bundle
    members: list["Bundle"] = field(default_factory=list)  # an ensemble's member bundles, loaded and checked
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

    @property
    def cpu_int8(self) -> bool:
        """True when the bundle's graph is int8 for onnxruntime on the CPU (`edgeuad export --cpu-int8`)."""
        q = self.manifest.get("quantization")
        return isinstance(q, dict) and isinstance(q.get("cpu_int8"), dict)

    @property
    def graph_kind(self) -> str:
        """What runs the network, in words for reports and /v1/info."""
        return "int8 (onnxruntime CPU)" if self.cpu_int8 else "float32"

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError(f"bundle {self.root} has no file {name!r} in its manifest")
        return self.root / name

    def has_file(self, name: str) -> bool:
        return name in self.manifest["files"]

    # --- loading ---------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True, *, allow_provisional: bool = False,
             expected_digest: str | None = None) -> "Bundle":
        """Open a bundle directory or `.tar` archive, check schema and hashes.

        allow_provisional: accept thresholds marked "provisional" (only the exporter itself, which
            computes the real ones from this bundle, needs that).
        expected_digest: the sha256 of manifest.json the caller deployed; any other bundle is refused.
        """
        path = Path(path)
        want = normalize_digest(expected_digest) if expected_digest is not None else None
        tmp: tempfile.TemporaryDirectory | None = None
        if path.is_file() and _is_tar(path):
            tmp = tempfile.TemporaryDirectory(prefix="edgeuad-bundle-")
            try:
                root = _safe_extract(path, Path(tmp.name))
            except BaseException:
                tmp.cleanup()
                raise
        elif path.is_dir():
            root = path
        elif path.exists():
            raise BundleError(f"{path} is neither a bundle directory nor a bundle .tar archive")
        else:
            raise BundleError(f"bundle not found: {path}")
        data = _read_manifest_bytes(root)
        digest = manifest_digest(data)
        if want is not None and digest != want:
            raise BundleError(f"bundle {path} has digest {digest}, not the expected {want}: "
                              "a different or modified bundle", field="digest")
        manifest = parse_manifest(data, root / MANIFEST)
        try:
            if tmp is not None:  # an archive holds the manifest and its files (and members), nothing else
                _check_only_listed(root, manifest, path)
            if manifest["thresholds"]["source"] == PROVISIONAL and not allow_provisional:
                raise BundleError(f"bundle {path} has provisional thresholds (an export that did not finish): "
                                  "re-export it; Detector(..., allow_provisional=True) loads it for inspection only",
                                  field="thresholds.source")
            if verify:
                verify_files(root, manifest)
            members = _load_members(cls, root, manifest, verify, archive=tmp is not None)
        except BaseException:
            if tmp is not None:
                tmp.cleanup()
            raise
        return cls(root=root, manifest=manifest, digest=digest, members=members, _tmpdir=tmp)


def _member_dirs(manifest: Mapping[str, Any]) -> list[str]:
    return [e["dir"] for e in manifest["postprocess"]["members"]] if manifest["method"] == ENSEMBLE else []


def _check_only_listed(root: Path, manifest: Mapping[str, Any], path: Path) -> None:
    extra = sorted({p.name for p in root.iterdir()} - {MANIFEST, *manifest["files"], *_member_dirs(manifest)})
    if extra:
        raise BundleError(f"{path}: archive members {extra} are not listed in the manifest")


def _load_members(cls: type["Bundle"], root: Path, manifest: Mapping[str, Any], verify: bool,
                  archive: bool) -> list["Bundle"]:
    """An ensemble's members: each sub-directory is a whole bundle whose manifest must have exactly the
    sha256 the ensemble manifest records (so a member's files, hashed in its own manifest, are pinned
    too), and whose method and backbone agree with the entry."""
    members = []
    for i, d in enumerate(_member_dirs(manifest)):
        f = f"postprocess.members[{i}]"
        try:
            b = cls.load(root / d, verify=verify, expected_digest=manifest["postprocess"]["members"][i]["digest"])
        except BundleError as e:
            raise BundleError(f"bundle {root}: member {i} ({d}): {e}", field=f"{f}.{e.field}" if e.field else f) from e
        if archive:
            _check_only_listed(b.root, b.manifest, root / d)
        check_ensemble_member(manifest, i, b.manifest, where=str(root / MANIFEST))
        members.append(b)
    return members


def normalize_digest(d: str) -> str:
    """'sha256:ABC...' or 'abc...' -> 64 lowercase hex characters (ValueError otherwise)."""
    s = str(d).strip().lower()
    s = s[len("sha256:"):] if s.startswith("sha256:") else s
    if len(s) != 64 or any(ch not in "0123456789abcdef" for ch in s):
        raise ValueError(f"expected digest must be 64 hex characters (sha256 of manifest.json), got {d!r}")
    return s


def manifest_digest(data: bytes) -> str:
    """The bundle digest: sha256 of the manifest.json bytes (which hold every other file's sha256)."""
    return hashlib.sha256(data).hexdigest()


def _read_manifest_bytes(root: Path) -> bytes:
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root} has no {MANIFEST}: not an edgeuad bundle")
    size = mpath.stat().st_size
    if size > limits.MAX_MANIFEST_BYTES:
        raise BundleError(f"{mpath} is {size} bytes: not a manifest (limit {limits.MAX_MANIFEST_BYTES})")
    return mpath.read_bytes()


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise BundleError(f"duplicate key {k!r} in the manifest (which one is meant is ambiguous)", field=k)
        d[k] = v
    return d


def parse_manifest(data: bytes, mpath: Path | str = MANIFEST) -> dict[str, Any]:
    """manifest.json bytes -> validated manifest dict (BundleError naming the field otherwise)."""
    try:
        manifest = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except BundleError as e:
        raise BundleError(f"{mpath}: {e}", field=e.field) from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({type(e).__name__}: {str(e)[:200]}); "
                          "the bundle is corrupt") from None
    return validate_manifest(manifest, where=str(mpath))


def read_manifest(root: Path) -> dict[str, Any]:
    """Read and validate `root`/manifest.json."""
    root = Path(root)
    return parse_manifest(_read_manifest_bytes(root), root / MANIFEST)


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
    validate_manifest(manifest, where=f"{root / MANIFEST} (being written)")  # never write what readers refuse
    atomic_write_bytes(root / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    read_manifest(root)  # and read back what was written
    return manifest


def pack(root: Path, archive: Path) -> Path:
    """Write the bundle directory as a single .tar (uncompressed: ONNX and banks do not compress)."""
    root, archive = Path(root), Path(archive)
    manifest = read_manifest(root)
    verify_files(root, manifest)
    names = [MANIFEST, *manifest["files"]]
    for m in _load_members(Bundle, root, manifest, verify=True, archive=False):  # an ensemble's, checked
        names += [f"{m.root.name}/{n}" for n in (MANIFEST, *m.manifest["files"])]
    archive.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(archive.parent, name=archive.name)  # left by a killed earlier pack
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w") as tf:
        for name in names:
            tf.add(root / name, arcname=name)
    return archive


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, ValueError, EOFError):
        return False


# Archives are small lists of named files; anything far beyond that is not a bundle.
_MAX_MEMBERS = 256


def _archive_name_ok(name: str) -> bool:
    """Plain top-level files, or plain files one directory down (an ensemble's member bundles)."""
    parts = name.split("/")
    if len(parts) > 2 or str(PurePosixPath(name)) != name:  # no "./x", "x/", "a//b" aliases
        return False
    *dirs, base = parts
    return all(file_name_ok(d) for d in dirs) and (file_name_ok(base) or base == MANIFEST)


def _safe_extract(archive: Path, dest: Path) -> Path:
    """Extract a bundle archive: plain files at the top level or one directory down (ensemble members;
    which names are expected is checked against the manifests after extraction), each name once (a
    second manifest.json would silently replace the first: refused), nothing outside `dest`."""
    try:
        with tarfile.open(archive, "r") as tf:
            seen: set[str] = set()
            for i, m in enumerate(tf):
                if i >= _MAX_MEMBERS:
                    raise BundleError(f"{archive}: more than {_MAX_MEMBERS} members: not a bundle archive")
                if not m.isfile() or not _archive_name_ok(m.name):
                    raise BundleError(f"{archive}: refusing archive member {m.name!r} (only plain files, at the "
                                      "top level or in an ensemble member's directory)")
                if m.name in seen:
                    raise BundleError(f"{archive}: member {m.name!r} appears twice (ambiguous: which one is meant?)")
                seen.add(m.name)
            tf.extractall(dest, filter="data")
    except BundleError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError, UnicodeError) as e:
        raise BundleError(f"{archive}: unreadable bundle archive ({type(e).__name__}: {e})") from e
    return dest
