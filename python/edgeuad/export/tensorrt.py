"""ONNX -> TensorRT engine (build, cache, run), torch-free and import-guarded.

What this module is
-------------------
* `Precision` and `resolve_precision`: fp32 / fp16 / int8 / auto, resolved against the GPU's
  compute capability and whether the graph carries Q/DQ nodes (explicit quantisation).
* `build_engine`: parses the ONNX with `trt.OnnxParser`, adds one optimisation profile
  (batch 1 / opt / max) for the dynamic batch of the single input, sets the precision flags and
  serialises the engine into an on-disk cache keyed by `engine_cache_key` (ONNX digest, TensorRT
  version, GPU name, SM, precision, batch profile, workspace), so a cached engine is never reused
  on another GPU, SM or TensorRT version.  Writes are atomic (temp file + `os.replace`) and each
  engine has a JSON sidecar holding the key fields and the engine's sha256.
* `TrtEngine`: runtime, engine, execution context, CUDA stream and device buffers (pycuda), with
  `infer` (host in, host out) and `infer_device` (device outputs left on the engine's stream so a
  CUDA kernel such as `edgeuad._rt.cos_map_cuda` can be chained without a synchronisation).

Dependencies
------------
Only the standard library and numpy at import time.  `onnx` is optional (used to detect Q/DQ nodes
*before* TensorRT is touched, which is what makes the INT8 guard testable without a GPU).
`tensorrt` and `pycuda` are imported inside the functions that need them; when they are missing a
`TensorRTUnavailableError` says what to install.  The file imports nothing from edgeuad, so it can
be copied alone next to `export/build_engine.py` (as `edgeuad_trt.py`, never as `tensorrt.py`,
which would shadow the real package).  Syntax is kept Python 3.8 compatible (JetPack 5).

Verification status -- read this
--------------------------------
The TensorRT and pycuda code paths (`build_engine` past the pre-checks, `TrtEngine`,
`query_gpu` on a machine with a driver) were written against the TensorRT 8.6 / 10.x Python API
documentation and have NOT been executed in this project's CI, which has no GPU and no TensorRT.
What the tests do execute: precision parsing/resolution, the cache key, the cache sidecar
read/write/validation, the Q/DQ scan and the INT8 guard, and the "tensorrt missing" errors.

TensorRT version notes
----------------------
* 8.6 / 10.x: named I/O tensors (`num_io_tensors`, `get_tensor_name`, `set_input_shape`,
  `set_tensor_address`, `execute_async_v3`), `set_memory_pool_limit(MemoryPoolType.WORKSPACE)`,
  `build_serialized_network`.  Before 10.0 an explicit-batch network needs the EXPLICIT_BATCH
  creation flag; from 10.0 explicit batch is the only mode and the flag is deprecated, so it is
  only passed to TensorRT < 10.
* Explicit INT8 (Q/DQ graphs) needs `BuilderFlag.INT8` on weakly typed 8.x/10.x networks; FP16 is
  also enabled (when the GPU has fast fp16) so the layers left unquantised do not fall back to fp32.
  The deprecated implicit-quantisation calibrator is never used.
* TensorRT 11 removed the weak-typing flags (FP16/INT8): there, fp32 and Q/DQ INT8 graphs are built
  as strongly typed networks and fp16 is refused with an explanation (convert the ONNX to fp16
  first).  `platform_has_fast_fp16/int8` are deprecated since 10.5, so the capability table below
  (derived from the compute capability) is used instead on every version.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import enum
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Bumped whenever the build recipe below changes in a way that changes the produced engine, so
#: caches written by an older recipe are rebuilt rather than trusted.
BUILD_RECIPE_VERSION = 1
CACHE_SCHEMA = "edgeuad.trt-engine-cache/1"
ENV_CACHE_DIR = "EDGEUAD_TRT_CACHE"

TENSORRT_INSTALL_HINT = (
    "On a Jetson, JetPack ships TensorRT (apt package python3-libnvinfer): use the system python3, "
    "or a venv created with --system-site-packages. On a desktop NVIDIA GPU: `pip install tensorrt pycuda`."
)
PYCUDA_INSTALL_HINT = (
    "pycuda is needed to run TensorRT engines from Python: `pip install pycuda` "
    "(on a Jetson it compiles against JetPack's CUDA: put /usr/local/cuda/bin on PATH first)."
)
QDQ_OP_TYPES = ("QuantizeLinear", "DequantizeLinear")


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
class TensorRTUnavailableError(RuntimeError):
    """tensorrt, pycuda or the CUDA driver is missing: the message says what to install."""


class Int8RequiresQdqError(ValueError):
    """INT8 was requested for a graph without Q/DQ nodes (TensorRT builds only explicit INT8 here)."""


class TensorRTCallError(RuntimeError):
    """A TensorRT / CUDA call reported failure (returned False/None, or a nonzero CUresult)."""


class EngineBuildError(RuntimeError):
    """The ONNX could not be parsed or the engine could not be built; carries TensorRT's messages."""


# --------------------------------------------------------------------------------------------
# guarded imports
# --------------------------------------------------------------------------------------------
def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt  # noqa: PLC0415  (guarded on purpose)
    except ImportError as e:
        raise TensorRTUnavailableError(f"the Python package 'tensorrt' is not importable ({e}). "
                                       f"{TENSORRT_INSTALL_HINT}") from e
    return trt


def _import_pycuda() -> Tuple[Any, Any]:
    try:
        import pycuda.driver as cuda  # noqa: PLC0415
        import pycuda.gpuarray as gpuarray  # noqa: PLC0415
    except ImportError as e:
        raise TensorRTUnavailableError(f"the Python package 'pycuda' is not importable ({e}). "
                                       f"{PYCUDA_INSTALL_HINT}") from e
    return cuda, gpuarray


def tensorrt_available() -> bool:
    """True when both `tensorrt` and `pycuda` import (says nothing about a usable GPU)."""
    try:
        _import_tensorrt()
        _import_pycuda()
    except TensorRTUnavailableError:
        return False
    return True


def _trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def _check(result: Any, call: str, hint: str = "") -> Any:
    """TensorRT's Python API reports many failures as False/None instead of raising: turn those
    into an exception naming the call (the C++ side's CUDA_CHECK equivalent)."""
    if result is None or result is False:
        msg = f"TensorRT call {call} failed (returned {result!r})"
        raise TensorRTCallError(f"{msg}: {hint}" if hint else msg)
    return result


# --------------------------------------------------------------------------------------------
# precision
# --------------------------------------------------------------------------------------------
class Precision(enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    AUTO = "auto"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def from_string(cls, value: Union[str, "Precision"]) -> "Precision":
        if isinstance(value, Precision):
            return value
        key = str(value).strip().lower()
        for p in cls:
            if p.value == key:
                return p
        raise ValueError(f"unknown precision {value!r}; valid names: {', '.join(p.value for p in cls)}")

    def resolve(self, platform_has_fast_fp16: bool, platform_has_fast_int8: bool,
                has_qdq: bool) -> "Precision":
        return resolve_precision(self, platform_has_fast_fp16, platform_has_fast_int8, has_qdq)


def _int8_without_qdq_error(what: str = "the ONNX graph") -> Int8RequiresQdqError:
    return Int8RequiresQdqError(
        f"INT8 was requested but {what} has no QuantizeLinear/DequantizeLinear nodes. "
        "edgeuad builds only explicitly quantised INT8 engines (the implicit calibrator is deprecated, "
        "and calibrating on random data is never done): run `edgeuad export --int8 --calib DIR` with "
        "a directory of representative good images to insert calibrated Q/DQ nodes, then build that ONNX.")


def check_precision_against_graph(precision: Union[str, Precision], has_qdq: bool,
                                  what: str = "the ONNX graph") -> None:
    """The GPU-independent half of `resolve_precision`: raise when the requested precision cannot
    be built from a graph with (or without) Q/DQ nodes."""
    p = Precision.from_string(precision)
    if p is Precision.INT8 and not has_qdq:
        raise _int8_without_qdq_error(what)
    if has_qdq and p in (Precision.FP32, Precision.FP16):
        raise ValueError(
            f"precision {p} was requested but {what} carries Q/DQ nodes, which TensorRT only builds as "
            "INT8: use precision int8 (or auto), or build the fp32 ONNX exported without --int8.")


def resolve_precision(precision: Union[str, Precision], platform_has_fast_fp16: bool,
                      platform_has_fast_int8: bool, has_qdq: bool) -> Precision:
    """Turn a requested precision into the concrete one to build, and log why.

    Rules (explicit requests are honoured or refused, never silently changed):
      * a graph with Q/DQ nodes can only be built as INT8: TensorRT's weakly typed builder rejects
        Q/DQ layers without the INT8 flag, so fp32/fp16 on such a graph is an error;
      * INT8 on a graph without Q/DQ nodes is an `Int8RequiresQdqError` (no implicit calibration);
      * auto: Q/DQ graph -> int8 (error if the GPU has no fast INT8), else fp16 when the GPU has
        fast fp16, else fp32.
    """
    p = Precision.from_string(precision)
    check_precision_against_graph(p, has_qdq)
    if p is not Precision.AUTO:
        if p is Precision.FP16 and not platform_has_fast_fp16:
            log.warning("precision fp16 requested on a GPU without fast fp16: the engine will build "
                        "but may be slower than fp32")
        if p is Precision.INT8 and not platform_has_fast_int8:
            log.warning("precision int8 requested on a GPU without fast INT8 kernels")
        log.info("precision %s (requested explicitly)", p)
        return p
    if has_qdq:
        if not platform_has_fast_int8:
            raise ValueError(
                "precision auto: the ONNX graph carries Q/DQ nodes but this GPU has no fast INT8 "
                "(compute capability < 6.1, or 6.2): build the fp32 ONNX exported without --int8 instead.")
        log.info("precision auto resolved to int8 because the graph carries Q/DQ nodes and the GPU has fast INT8")
        return Precision.INT8
    if platform_has_fast_fp16:
        log.info("precision auto resolved to fp16 because the GPU has fast fp16 and the graph has no Q/DQ nodes")
        return Precision.FP16
    log.info("precision auto resolved to fp32 because the GPU has no fast fp16 and the graph has no Q/DQ nodes")
    return Precision.FP32


def sm_capabilities(sm: Tuple[int, int]) -> Tuple[bool, bool]:
    """(fast_fp16, fast_int8) for a compute capability.

    Replaces `Builder.platform_has_fast_fp16/int8` (deprecated in TensorRT 10.5, removed in 11).
    fp16: full-rate on SM 5.3 (Jetson Nano/TX1), 6.0, 6.2 (TX2) and every SM >= 7.0; SM 6.1
    (GeForce Pascal) and 5.0/5.2 run it at a fraction of fp32.  int8: DP4A from SM 6.1, except
    SM 6.2 (TX2) which lacks it.
    """
    major, minor = int(sm[0]), int(sm[1])
    fast_fp16 = (major, minor) in ((5, 3), (6, 0), (6, 2)) or major >= 7
    fast_int8 = (major, minor) >= (6, 1) and (major, minor) != (6, 2)
    return fast_fp16, fast_int8


# --------------------------------------------------------------------------------------------
# Q/DQ scan (onnx, optional)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class QdqScan:
    num_quantize: int
    num_dequantize: int
    contrib_domain_nodes: int  # com.microsoft Q/DQ, which the TensorRT ONNX parser does not import

    @property
    def has_qdq(self) -> bool:
        return self.num_quantize + self.num_dequantize > 0


def scan_qdq(onnx_path: PathLike) -> Optional[QdqScan]:
    """Count Q/DQ nodes (subgraphs included).  Returns None when the `onnx` package is missing
    (the caller then relies on the check after TensorRT parsed the network)."""
    try:
        import onnx  # noqa: PLC0415
    except ImportError:
        return None
    # Weights are not needed to see node types: skip external data (large models, missing files).
    model = onnx.load(str(onnx_path), load_external_data=False)
    nq = ndq = contrib = 0
    stack = [model.graph]
    while stack:
        g = stack.pop()
        for node in g.node:
            if node.op_type in QDQ_OP_TYPES:
                if node.domain not in ("", "ai.onnx"):
                    contrib += 1
                elif node.op_type == "QuantizeLinear":
                    nq += 1
                else:
                    ndq += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(attr.graphs)
    return QdqScan(nq, ndq, contrib)


def onnx_has_qdq(onnx_path: PathLike) -> Optional[bool]:
    scan = scan_qdq(onnx_path)
    return None if scan is None else scan.has_qdq


# --------------------------------------------------------------------------------------------
# GPU identity through the CUDA driver API (ctypes: no pycuda needed to build)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    sm: Tuple[int, int]

    @property
    def sm_str(self) -> str:
        return f"{self.sm[0]}.{self.sm[1]}"


_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
_driver_lock = threading.Lock()
_driver_lib: Optional[ctypes.CDLL] = None


def _cuda_driver() -> ctypes.CDLL:
    global _driver_lib
    with _driver_lock:
        if _driver_lib is not None:
            return _driver_lib
        errors = []
        for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
            try:
                lib = ctypes.CDLL(name)
            except OSError as e:
                errors.append(f"{name}: {e}")
                continue
            _cu(lib, lib.cuInit(0), "cuInit")
            _driver_lib = lib
            return lib
        raise TensorRTUnavailableError(
            "the NVIDIA CUDA driver library (libcuda.so.1) cannot be loaded, so there is no GPU to build "
            f"or run TensorRT engines on ({'; '.join(errors)}). Install the NVIDIA driver (JetPack ships it).")


def _cu(lib: ctypes.CDLL, rc: int, call: str) -> None:
    if rc != 0:
        msg = ctypes.c_char_p()
        with contextlib.suppress(Exception):
            lib.cuGetErrorString(rc, ctypes.byref(msg))
        text = msg.value.decode() if msg.value else "unknown error"
        raise TensorRTCallError(f"CUDA driver call {call} failed with CUresult {rc}: {text}")


def query_gpu(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device `device`, read through the driver API."""
    lib = _cuda_driver()
    dev = ctypes.c_int()
    _cu(lib, lib.cuDeviceGet(ctypes.byref(dev), int(device)), f"cuDeviceGet({device})")
    name = ctypes.create_string_buffer(256)
    _cu(lib, lib.cuDeviceGetName(name, 256, dev), "cuDeviceGetName")
    major, minor = ctypes.c_int(), ctypes.c_int()
    _cu(lib, lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev),
        "cuDeviceGetAttribute(major)")
    _cu(lib, lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev),
        "cuDeviceGetAttribute(minor)")
    return GpuInfo(int(device), name.value.decode(errors="replace").strip(), (major.value, minor.value))


def _sync_foreign_stream(handle: int) -> None:
    # A device input produced on another stream must be complete before our copy reads it.
    lib = _cuda_driver()
    _cu(lib, lib.cuStreamSynchronize(ctypes.c_void_p(handle)), "cuStreamSynchronize")


# --------------------------------------------------------------------------------------------
# cache key and sidecar (pure, testable without TensorRT)
# --------------------------------------------------------------------------------------------
def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def engine_cache_fields(*, onnx_sha256: str, trt_version: str, gpu_name: str, sm: Sequence[int],
                        precision: Union[str, Precision], min_batch: int, opt_batch: int, max_batch: int,
                        workspace_mb: int) -> Dict[str, Any]:
    """The fields an engine depends on, validated and normalised (the sidecar stores these)."""
    p = Precision.from_string(precision)
    if p is Precision.AUTO:
        raise ValueError("the cache key needs the resolved precision (fp32/fp16/int8), not auto")
    if len(onnx_sha256) != 64 or any(c not in "0123456789abcdef" for c in onnx_sha256.lower()):
        raise ValueError(f"onnx_sha256 must be a hex sha256 digest, got {onnx_sha256!r}")
    sm_t = tuple(int(v) for v in sm)
    if len(sm_t) != 2:
        raise ValueError(f"sm must be (major, minor), got {sm!r}")
    if not 1 <= int(min_batch) <= int(opt_batch) <= int(max_batch):
        raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}/{opt_batch}/{max_batch}")
    if int(workspace_mb) <= 0:
        raise ValueError(f"workspace_mb must be positive, got {workspace_mb}")
    return {
        "schema": CACHE_SCHEMA,
        "recipe": BUILD_RECIPE_VERSION,
        "onnx_sha256": onnx_sha256.lower(),
        "trt_version": str(trt_version),
        "gpu_name": str(gpu_name),
        "sm": f"{sm_t[0]}.{sm_t[1]}",
        "precision": p.value,
        "batch_profile": [int(min_batch), int(opt_batch), int(max_batch)],
        "workspace_mb": int(workspace_mb),
    }


def engine_cache_key(**fields: Any) -> str:
    """sha256 over the canonical JSON of `engine_cache_fields(**fields)`.

    Keyword arguments: onnx_sha256, trt_version, gpu_name, sm, precision, min_batch, opt_batch,
    max_batch, workspace_mb.  The ONNX enters through its sha256 (hashing the digest is as
    collision-resistant as hashing the bytes and avoids reading the model twice).
    """
    return _key_from_fields(engine_cache_fields(**fields))


def _key_from_fields(fields: Mapping[str, Any]) -> str:
    blob = json.dumps(dict(fields), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def sidecar_path(engine_path: PathLike) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write via a temp file in the same directory + fsync + os.replace: readers see the old file
    or the complete new one, never a torn engine.  Same contract as `edgeuad.atomic` (kept here
    because this file must also run copied alone onto a target, see export/build_engine.py)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the engine from other service users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_cached_engine(engine_path: PathLike, engine_bytes: bytes, fields: Mapping[str, Any],
                        extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Store engine + sidecar.  The sidecar is written last: it is the commit marker, and it holds
    the engine's sha256 so a truncated or swapped engine file is detected on reuse."""
    engine_path = Path(engine_path)
    atomic_write_bytes(engine_path, engine_bytes)
    meta = dict(fields)
    meta["key"] = _key_from_fields(fields)
    meta["engine_sha256"] = hashlib.sha256(engine_bytes).hexdigest()
    meta["engine_file"] = engine_path.name
    meta["created_unix"] = time.time()
    if extra:
        meta["build"] = dict(extra)
    atomic_write_bytes(sidecar_path(engine_path), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return engine_path


def read_sidecar(engine_path: PathLike) -> Optional[Dict[str, Any]]:
    p = sidecar_path(engine_path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("unreadable engine sidecar %s: %s", p, e)
        return None


def cached_engine_is_valid(engine_path: PathLike, key: str) -> Tuple[bool, str]:
    """(valid, reason).  Valid = sidecar present with this key, and the engine's sha256 matches."""
    engine_path = Path(engine_path)
    meta = read_sidecar(engine_path)
    if meta is None:
        return False, "no sidecar"
    if meta.get("key") != key:
        return False, "key differs (other ONNX, GPU, SM, TensorRT version, precision, profile or workspace)"
    if not engine_path.is_file():
        return False, "engine file missing"
    if sha256_file(engine_path) != meta.get("engine_sha256"):
        return False, "engine file does not match the sha256 in its sidecar"
    return True, "cache hit"


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "edgeuad" / "trt"


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------
def _make_logger(trt: Any, verbose: bool = False) -> Any:
    """A trt.ILogger forwarding to Python logging and remembering the last errors (quoted in
    exceptions, because build failures are otherwise only visible in the log)."""

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: List[str] = []

        def log(self, severity: Any, msg: str) -> None:  # noqa: A003
            sev = trt.ILogger.Severity
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                self.errors.append(msg)
                del self.errors[:-20]
                log.error("TensorRT: %s", msg)
            elif severity == sev.WARNING:
                log.warning("TensorRT: %s", msg)
            elif severity == sev.INFO:
                (log.info if verbose else log.debug)("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Logger()


def _network_has_qdq_layers(trt: Any, network: Any) -> bool:
    kinds = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    return any(network.get_layer(i).type in kinds for i in range(network.num_layers))


def build_engine(onnx_path: PathLike, engine_path: Optional[PathLike] = None,
                 precision: Union[str, Precision] = Precision.AUTO, max_batch: int = 8, opt_batch: int = 1,
                 workspace_mb: int = 1024, cache_dir: Optional[PathLike] = None, device: int = 0,
                 force: bool = False, verbose: bool = False) -> Path:
    """Build (or reuse from cache) a TensorRT engine for `onnx_path` and return its path.

    engine_path: where to put the engine; default `cache_dir/<stem>.<precision>.b<max>.<key16>.engine`
    (cache_dir defaults to $EDGEUAD_TRT_CACHE or ~/.cache/edgeuad/trt).  An existing engine is
    reused only when its sidecar carries the same cache key and its sha256 matches; `force`
    rebuilds regardless.
    """
    onnx_path = Path(onnx_path)
    requested = Precision.from_string(precision)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    if not 1 <= int(opt_batch) <= int(max_batch):
        raise ValueError(f"need 1 <= opt_batch <= max_batch, got opt_batch={opt_batch}, max_batch={max_batch}")
    if int(workspace_mb) <= 0:
        raise ValueError(f"workspace_mb must be positive, got {workspace_mb}")

    # The INT8 guard runs before TensorRT is imported: the mistake is reported on any machine.
    scan = scan_qdq(onnx_path)
    if scan is not None:
        if scan.contrib_domain_nodes:
            raise ValueError(f"{onnx_path} has {scan.contrib_domain_nodes} com.microsoft QuantizeLinear/"
                             "DequantizeLinear nodes (onnxruntime contrib ops), which TensorRT cannot import: "
                             "re-quantise with standard ONNX Q/DQ (edgeuad.export.quantize.insert_qdq)")
        check_precision_against_graph(requested, scan.has_qdq, str(onnx_path))
    else:
        log.info("onnx is not installed: the Q/DQ check runs on the parsed TensorRT network instead")

    trt = _import_tensorrt()
    gpu = query_gpu(device)
    fast_fp16, fast_int8 = sm_capabilities(gpu.sm)
    trt_major = _trt_major(trt)

    logger = _make_logger(trt, verbose)
    builder = _check(trt.Builder(logger), "trt.Builder")
    flags = 0
    if trt_major < 10:
        # Explicit batch is required for ONNX networks before 10.0 (deprecated and implied from 10.0).
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = _check(builder.create_network(flags), "Builder.create_network")
    parser = _check(trt.OnnxParser(network, logger), "trt.OnnxParser")
    # parse_from_file resolves external-data weights relative to the model file.
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT could not parse {onnx_path} ({len(errs)} error(s)):\n  "
                               + "\n  ".join(errs or logger.errors or ["(no parser error recorded)"]))

    has_qdq = scan.has_qdq if scan is not None else _network_has_qdq_layers(trt, network)
    resolved = resolve_precision(requested, fast_fp16, fast_int8, has_qdq)

    if network.num_inputs != 1:
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        raise EngineBuildError(f"edgeuad engines take exactly one input, the ONNX has {len(names)}: {names}")
    inp = network.get_input(0)
    shape = tuple(int(d) for d in inp.shape)
    if any(d < 0 for d in shape[1:]):
        raise EngineBuildError(f"input {inp.name!r} has shape {shape}: only the batch dimension may be dynamic "
                               "(export with a fixed image size)")
    if shape[0] >= 0:
        log.warning("input %r has a static batch of %d: the profile is fixed to it (max_batch=%d ignored)",
                    inp.name, shape[0], max_batch)
        min_b = opt_b = max_b = shape[0]
    else:
        min_b, opt_b, max_b = 1, int(opt_batch), int(max_batch)

    fields = engine_cache_fields(onnx_sha256=sha256_file(onnx_path), trt_version=trt.__version__,
                                 gpu_name=gpu.name, sm=gpu.sm, precision=resolved, min_batch=min_b,
                                 opt_batch=opt_b, max_batch=max_b, workspace_mb=workspace_mb)
    key = _key_from_fields(fields)
    if engine_path is None:
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        engine_path = root / f"{onnx_path.stem}.{resolved}.b{max_b}.{key[:16]}.engine"
    engine_path = Path(engine_path)
    if not force:
        ok, reason = cached_engine_is_valid(engine_path, key)
        if ok:
            log.info("TensorRT engine cache hit: %s", engine_path)
            return engine_path
        if engine_path.exists() or sidecar_path(engine_path).exists():
            log.info("rebuilding %s: %s", engine_path, reason)

    config = _check(builder.create_builder_config(), "Builder.create_builder_config")
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    profile = _check(builder.create_optimization_profile(), "Builder.create_optimization_profile")
    rest = shape[1:]
    profile.set_shape(inp.name, (min_b,) + rest, (opt_b,) + rest, (max_b,) + rest)
    if config.add_optimization_profile(profile) < 0:
        raise TensorRTCallError(f"IBuilderConfig.add_optimization_profile rejected the profile "
                                f"{min_b}/{opt_b}/{max_b} x {rest} for input {inp.name!r}")

    set_flags: List[str] = []
    weak_typing = hasattr(trt.BuilderFlag, "FP16")  # removed in TensorRT 11 (strong typing only)
    if resolved is Precision.FP16:
        if not weak_typing:
            raise EngineBuildError(f"TensorRT {trt.__version__} removed BuilderFlag.FP16: convert the ONNX to fp16 "
                                   "first (NVIDIA ModelOpt AutoCast) and build it as fp32, or use TensorRT 10.x")
        config.set_flag(trt.BuilderFlag.FP16)
        set_flags.append("FP16")
    elif resolved is Precision.INT8 and weak_typing:
        config.set_flag(trt.BuilderFlag.INT8)
        set_flags.append("INT8")
        if fast_fp16:
            # Layers outside Q/DQ pairs may then run in fp16 instead of fp32.
            config.set_flag(trt.BuilderFlag.FP16)
            set_flags.append("FP16")
    # (TensorRT 11 + INT8: the network is strongly typed and the Q/DQ nodes alone fix the types.)

    log.info("building TensorRT %s engine for %s on %s (SM %s, TensorRT %s), batch %d/%d/%d, workspace %d MiB",
             resolved, onnx_path.name, gpu.name, gpu.sm_str, trt.__version__, min_b, opt_b, max_b, workspace_mb)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("Builder.build_serialized_network returned None; TensorRT said:\n  "
                               + "\n  ".join(logger.errors or ["(no error message recorded)"]))
    data = memoryview(serialized).tobytes()
    build_s = time.perf_counter() - t0
    write_cached_engine(engine_path, data, fields,
                        extra={"builder_flags": set_flags, "input": inp.name, "input_shape": list(shape),
                               "requested_precision": requested.value, "build_seconds": round(build_s, 2),
                               "onnx_file": onnx_path.name, "has_qdq": bool(has_qdq)})
    log.info("TensorRT engine written to %s (%.1f MiB, %.1f s)", engine_path, len(data) / 2**20, build_s)
    return engine_path


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    is_input: bool
    dtype: np.dtype
    shape: Tuple[int, ...]  # as the engine declares it (-1 = dynamic batch)
    max_shape: Tuple[int, ...]  # shape of the device buffer (at the profile's max batch)


class TrtEngine:
    """A deserialized engine with its execution context, stream and device buffers.

    Buffers are allocated once at the profile's max batch; `infer` splits larger host batches
    into max-batch chunks.  Calls are serialised by a lock (an execution context is not
    re-entrant) and push the device's primary CUDA context (the one TensorRT's runtime API uses),
    so they may come from any thread.
    """

    def __init__(self, engine_path: PathLike, device: int = 0, verbose: bool = False) -> None:
        self._closed = True
        trt = _import_tensorrt()
        cuda, gpuarray = _import_pycuda()
        self._trt, self._cuda, self._gpuarray = trt, cuda, gpuarray
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise FileNotFoundError(f"TensorRT engine not found: {self.engine_path}")
        self._lock = threading.Lock()
        self._device_allocs: Dict[str, Any] = {}
        self._host: Dict[str, np.ndarray] = {}
        self._context = self._engine = self._runtime = self._stream = None
        cuda.init()
        self._cuda_ctx = cuda.Device(int(device)).retain_primary_context()
        self._cuda_ctx.push()
        try:
            self._closed = False
            self._setup(trt, cuda, verbose)
        except BaseException:
            try:
                self._release()
            finally:
                cuda.Context.pop()
                with contextlib.suppress(Exception):
                    self._cuda_ctx.detach()
            raise
        cuda.Context.pop()

    # -- setup ---------------------------------------------------------------------------
    def _setup(self, trt: Any, cuda: Any, verbose: bool) -> None:
        self._logger = _make_logger(trt, verbose)
        self._runtime = _check(trt.Runtime(self._logger), "trt.Runtime")
        hint = ("the engine was built by another TensorRT version or for another GPU; rebuild it on this "
                "device (build_engine / build_engine.py)")
        self._engine = _check(self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes()),
                              "Runtime.deserialize_cuda_engine", hint)
        self._context = _check(self._engine.create_execution_context(), "ICudaEngine.create_execution_context")
        self._stream = cuda.Stream()
        eng = self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        inputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise EngineBuildError(f"edgeuad engines take exactly one input, this one has {inputs}")
        self.input_name: str = inputs[0]
        self.output_names: List[str] = [n for n in names if n not in inputs]
        declared = tuple(int(d) for d in eng.get_tensor_shape(self.input_name))
        # Profile 0 is the only one build_engine creates: (min, opt, max) shapes of the input.
        pmin, popt, pmax = (tuple(int(d) for d in s) for s in eng.get_tensor_profile_shape(self.input_name, 0))
        self.min_batch, self.opt_batch, self.max_batch = pmin[0], popt[0], pmax[0]
        _check(self._context.set_input_shape(self.input_name, pmax), f"IExecutionContext.set_input_shape({pmax})")
        infos: Dict[str, TensorInfo] = {
            self.input_name: TensorInfo(self.input_name, True, np.dtype(trt.nptype(eng.get_tensor_dtype(self.input_name))),
                                        declared, pmax)}
        for n in self.output_names:
            mshape = tuple(int(d) for d in self._context.get_tensor_shape(n))
            if any(d < 0 for d in mshape):
                raise EngineBuildError(f"output {n!r} has unresolved shape {mshape} at the max input shape "
                                       "(data-dependent output shapes are not supported)")
            infos[n] = TensorInfo(n, False, np.dtype(trt.nptype(eng.get_tensor_dtype(n))),
                                  tuple(int(d) for d in eng.get_tensor_shape(n)), mshape)
        self.tensors: Dict[str, TensorInfo] = infos
        for n, info in infos.items():
            nbytes = int(np.prod(info.max_shape)) * info.dtype.itemsize
            self._device_allocs[n] = cuda.mem_alloc(max(nbytes, 1))
            # Page-locked host staging so the async copies are truly asynchronous.
            self._host[n] = cuda.pagelocked_empty(info.max_shape, info.dtype)
            # Addresses are fixed for the engine's lifetime: set once, not per call.
            _check(self._context.set_tensor_address(n, int(self._device_allocs[n])),
                   f"IExecutionContext.set_tensor_address({n!r})")
        log.info("TensorRT engine %s: input %s %s (batch %d..%d), outputs %s", self.engine_path.name,
                 self.input_name, declared, self.min_batch, self.max_batch, self.output_names)

    # -- properties ----------------------------------------------------------------------
    @property
    def stream(self) -> Any:
        """The pycuda Stream every copy and enqueue of this engine runs on."""
        return self._stream

    @property
    def stream_handle(self) -> int:
        """Raw cudaStream_t of `stream`, for kernels (e.g. `edgeuad._rt.cos_map_cuda`) to chain on."""
        return int(self._stream.handle)

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return self.tensors[self.input_name].shape

    # -- helpers -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _current(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise RuntimeError("TrtEngine is closed")
            self._cuda_ctx.push()
            try:
                yield
            finally:
                self._cuda.Context.pop()

    def _check_sample_shape(self, shape: Tuple[int, ...], dtype: np.dtype) -> None:
        info = self.tensors[self.input_name]
        if len(shape) != len(info.shape) or tuple(shape[1:]) != tuple(info.max_shape[1:]):
            raise ValueError(f"input must be N x {' x '.join(map(str, info.max_shape[1:]))}, got {tuple(shape)}")
        if shape[0] < 1:
            raise ValueError("empty batch")
        if np.dtype(dtype) != info.dtype:
            raise TypeError(f"input dtype must be {info.dtype} (the engine's input type), got {np.dtype(dtype)}")

    def _enqueue(self, n: int) -> None:
        shape = (n,) + tuple(self.tensors[self.input_name].max_shape[1:])
        _check(self._context.set_input_shape(self.input_name, shape), f"IExecutionContext.set_input_shape({shape})")
        _check(self._context.execute_async_v3(self.stream_handle), "IExecutionContext.execute_async_v3")

    def _output_shape(self, name: str) -> Tuple[int, ...]:
        return tuple(int(d) for d in self._context.get_tensor_shape(name))

    # -- inference -----------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Host batch in, host outputs out (fresh arrays).  Batches above max_batch are chunked."""
        if not isinstance(batch, np.ndarray):
            raise TypeError(f"batch must be a numpy array, got {type(batch).__name__}")
        self._check_sample_shape(batch.shape, batch.dtype)
        x = np.ascontiguousarray(batch)
        parts: Dict[str, List[np.ndarray]] = {n: [] for n in self.output_names}
        cuda = self._cuda
        with self._current():
            for start in range(0, x.shape[0], self.max_batch):
                chunk = x[start:start + self.max_batch]
                host_in = self._host[self.input_name].reshape(-1)[:chunk.size]
                np.copyto(host_in, chunk.reshape(-1))
                cuda.memcpy_htod_async(self._device_allocs[self.input_name], host_in, self._stream)
                self._enqueue(chunk.shape[0])
                views = {}
                for n in self.output_names:
                    shp = self._output_shape(n)
                    hv = self._host[n].reshape(-1)[:int(np.prod(shp))]
                    cuda.memcpy_dtoh_async(hv, self._device_allocs[n], self._stream)
                    views[n] = (hv, shp)
                self._stream.synchronize()
                for n, (hv, shp) in views.items():
                    parts[n].append(hv.reshape(shp).copy())  # staging buffers are reused: copy out
        return {n: (p[0] if len(p) == 1 else np.concatenate(p, axis=0)) for n, p in parts.items()}

    def infer_device(self, batch: Any) -> Dict[str, Any]:
        """Run without synchronising; returns pycuda GPUArray views of the output buffers.

        `batch` is a host numpy array or any object exposing `__cuda_array_interface__` (C-contiguous,
        the engine's input dtype, N <= max_batch); a device input is copied device-to-device on the
        engine's stream after its producer stream (if it declares one) has finished.  The returned
        arrays expose `__cuda_array_interface__`; they alias the engine's buffers, so they are valid
        until the next call and must be consumed on `stream_handle` (or after `stream.synchronize()`).
        """
        cuda, gpuarray = self._cuda, self._gpuarray
        dst = self._device_allocs[self.input_name]
        with self._current():
            if isinstance(batch, np.ndarray):
                self._check_sample_shape(batch.shape, batch.dtype)
                n = batch.shape[0]
                if n > self.max_batch:
                    raise ValueError(f"infer_device takes at most max_batch={self.max_batch} samples, got {n}")
                host_in = self._host[self.input_name].reshape(-1)[:batch.size]
                np.copyto(host_in, np.ascontiguousarray(batch).reshape(-1))
                cuda.memcpy_htod_async(dst, host_in, self._stream)
            elif hasattr(batch, "__cuda_array_interface__"):
                cai = batch.__cuda_array_interface__
                shape = tuple(int(d) for d in cai["shape"])
                dtype = np.dtype(cai["typestr"])
                self._check_sample_shape(shape, dtype)
                n = shape[0]
                if n > self.max_batch:
                    raise ValueError(f"infer_device takes at most max_batch={self.max_batch} samples, got {n}")
                strides = cai.get("strides")
                if strides is not None:
                    expect = tuple(int(s) for s in np.empty(shape, dtype).strides)
                    if tuple(int(s) for s in strides) != expect:
                        raise ValueError("device input must be C-contiguous")
                producer = cai.get("stream")
                if producer is not None and int(producer) != self.stream_handle:
                    _sync_foreign_stream(int(producer))
                nbytes = int(np.prod(shape)) * dtype.itemsize
                cuda.memcpy_dtod_async(dst, int(cai["data"][0]), nbytes, self._stream)
            else:
                raise TypeError("batch must be a numpy array or expose __cuda_array_interface__")
            self._enqueue(n)
            return {o: gpuarray.GPUArray(self._output_shape(o), self.tensors[o].dtype,
                                         gpudata=self._device_allocs[o]) for o in self.output_names}

    # -- teardown ------------------------------------------------------------------------
    def _release(self) -> None:
        # Order matters: context before engine before runtime, and all of it (plus the buffers)
        # while the CUDA context is still alive.
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.synchronize()
        for alloc in self._device_allocs.values():
            with contextlib.suppress(Exception):
                alloc.free()
        self._device_allocs.clear()
        self._host.clear()
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None
        self._closed = True

    def close(self) -> None:
        if self._closed:
            return
        with self._lock:
            self._cuda_ctx.push()
            try:
                self._release()
            finally:
                self._cuda.Context.pop()
            with contextlib.suppress(Exception):
                self._cuda_ctx.detach()  # drop our retain of the primary context

    def __enter__(self) -> "TrtEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


__all__ = [
    "BUILD_RECIPE_VERSION", "EngineBuildError", "GpuInfo", "Int8RequiresQdqError", "Precision", "QdqScan",
    "TensorInfo", "TensorRTCallError", "TensorRTUnavailableError", "TrtEngine", "atomic_write_bytes",
    "build_engine", "cached_engine_is_valid", "check_precision_against_graph", "default_cache_dir",
    "engine_cache_fields", "engine_cache_key", "onnx_has_qdq", "query_gpu", "read_sidecar",
    "resolve_precision", "scan_qdq", "sha256_file", "sidecar_path", "sm_capabilities", "tensorrt_available",
    "write_cached_engine",
]
