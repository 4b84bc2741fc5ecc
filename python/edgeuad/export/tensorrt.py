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
No TensorRT, pycuda or GPU has been available to this project: nothing here has built or run a
real engine.  What the tests execute: precision parsing/resolution, the cache key and sidecar, the
Q/DQ scan and INT8 guard, the fp16 ONNX conversion (checked with onnxruntime), the "tensorrt
missing/unsupported" errors, and -- against fake `tensorrt` modules that expose exactly the enum
members and methods of the real 8.6.1, 10.3.0 and 11.1 bindings (tests/python/trt_api_lists.py,
extracted from TensorRT's pybind11 sources) and a fake pycuda -- the build and runtime code paths,
including the version dispatch below and the double-buffered pinned input.

TensorRT versions (SUPPORTED_TRT)
---------------------------------
* 8.6 (JetPack 6.0) and 10.x (JetPack 6.1/6.2 ship 10.3; desktop wheels): weakly typed networks.
  fp16 sets `BuilderFlag.FP16`; explicit INT8 (Q/DQ graphs) sets `BuilderFlag.INT8` plus FP16 for
  the unquantised layers when the GPU has fast fp16.  Before 10.0 ONNX networks need the
  EXPLICIT_BATCH creation flag (deprecated and implied from 10.0).
* 11.x: strongly typed only (BuilderFlag.FP16/INT8/BF16/FP8/INT4/FP4 removed).  Precision comes
  from the graph: fp32 builds the ONNX as is, int8 builds the Q/DQ ONNX, and fp16 builds an fp16
  copy of the ONNX made here with onnxconverter-common (inputs and outputs stay float32) -- the
  equivalent of NVIDIA's ModelOpt AutoCast recommendation.  STRONGLY_TYPED is passed (accepted
  and ignored by 11.x).  JetPack does not ship 11.x.
* Anything else (7.x, 8.0-8.5, 9.x, 12+) raises `TensorRTUnsupportedError` naming the versions
  that work.  `platform_has_fast_fp16/int8` (deprecated in 10.5, removed in 11) are never used:
  the capability table `sm_capabilities` decides.
* Runtime (all versions): named I/O tensors (`num_io_tensors`, `get_tensor_name`,
  `set_input_shape`, `set_tensor_address`, `execute_async_v3`).
* The builder runs on `device`: its primary CUDA context is made current (driver API) for the
  build, so TensorRT's runtime calls target that GPU.
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
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Bumped whenever the build recipe below changes in a way that changes the produced engine, so
#: caches written by an older recipe are rebuilt rather than trusted.
BUILD_RECIPE_VERSION = 2  # 2: strongly typed 11.x builds, fp16 ONNX conversion, SM count + driver in the key
CACHE_SCHEMA = "edgeuad.trt-engine-cache/2"
#: Versions this module builds and runs engines with: (major, minimum minor).
SUPPORTED_TRT: Tuple[Tuple[int, int], ...] = ((8, 6), (10, 0), (11, 0))
SUPPORTED_TRT_TEXT = "8.6 (JetPack 6.0), 10.x (JetPack 6.1/6.2 ship 10.3) or 11.x (desktop; strongly typed)"
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


class TensorRTUnsupportedError(TensorRTUnavailableError):
    """The installed TensorRT version is not one of SUPPORTED_TRT."""


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


def check_trt_version(version: str) -> int:
    """Major version of a supported TensorRT, else `TensorRTUnsupportedError` saying what works."""
    try:
        major, minor = (int(p) for p in str(version).split(".")[:2])
    except ValueError as e:
        raise TensorRTUnsupportedError(f"cannot parse the TensorRT version {version!r}; edgeuad supports "
                                       f"{SUPPORTED_TRT_TEXT}") from e
    for smaj, smin in SUPPORTED_TRT:
        if major == smaj and minor >= smin:
            return major
    raise TensorRTUnsupportedError(
        f"TensorRT {version} is not supported: edgeuad builds and runs engines with TensorRT {SUPPORTED_TRT_TEXT}. "
        "Install one of those (pip install 'edgeuad[tensorrt]' pins tensorrt>=10,<12; JetPack brings its own).")


def strongly_typed(major: int) -> bool:
    """TensorRT 11 builds only strongly typed networks (precision from the graph, no FP16/INT8 flags)."""
    return major >= 11


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
    sm_count: int = 0
    driver_version: int = 0  # cuDriverGetVersion: 1000*major + 10*minor

    @property
    def sm_str(self) -> str:
        return f"{self.sm[0]}.{self.sm[1]}"


_CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16
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
    """Name, compute capability, SM count and driver version of CUDA device `device` (driver API)."""
    lib = _cuda_driver()
    dev = ctypes.c_int()
    _cu(lib, lib.cuDeviceGet(ctypes.byref(dev), int(device)), f"cuDeviceGet({device})")
    name = ctypes.create_string_buffer(256)
    _cu(lib, lib.cuDeviceGetName(name, 256, dev), "cuDeviceGetName")
    attrs = {}
    for key, attr in (("major", _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                      ("minor", _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
                      ("sms", _CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)):
        v = ctypes.c_int()
        _cu(lib, lib.cuDeviceGetAttribute(ctypes.byref(v), attr, dev), f"cuDeviceGetAttribute({key})")
        attrs[key] = v.value
    drv = ctypes.c_int()
    _cu(lib, lib.cuDriverGetVersion(ctypes.byref(drv)), "cuDriverGetVersion")
    return GpuInfo(int(device), name.value.decode(errors="replace").strip(), (attrs["major"], attrs["minor"]),
                   attrs["sms"], drv.value)


@contextlib.contextmanager
def device_context(device: int) -> Iterator[None]:
    """Make `device`'s primary CUDA context current on this thread (driver API) for the block: the CUDA
    runtime, which TensorRT's builder uses, adopts the current context, so the build targets `device`."""
    lib = _cuda_driver()
    dev = ctypes.c_int()
    _cu(lib, lib.cuDeviceGet(ctypes.byref(dev), int(device)), f"cuDeviceGet({device})")
    ctx = ctypes.c_void_p()
    _cu(lib, lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    try:
        _cu(lib, lib.cuCtxPushCurrent_v2(ctx), "cuCtxPushCurrent")
        try:
            yield
        finally:
            popped = ctypes.c_void_p()
            lib.cuCtxPopCurrent_v2(ctypes.byref(popped))
    finally:
        lib.cuDevicePrimaryCtxRelease_v2(dev)


class _StreamWaiter:
    """Orders work on a consumer stream after a producer stream (__cuda_array_interface__ v3
    'stream'): an event recorded on the producer and waited for on the consumer -- the GPU waits,
    the host does not.  Handles 1 and 2 are the legacy and per-thread default streams in the driver
    API too.  One event, reused (a wait captures the record it follows)."""

    def __init__(self) -> None:
        self._event = ctypes.c_void_p()

    def wait(self, producer: int, consumer: int) -> None:
        if producer == consumer:
            return
        lib = _cuda_driver()
        if not self._event.value:
            _cu(lib, lib.cuEventCreate(ctypes.byref(self._event), 0x2), "cuEventCreate")  # DISABLE_TIMING
        _cu(lib, lib.cuEventRecord(self._event, ctypes.c_void_p(producer)), "cuEventRecord")
        _cu(lib, lib.cuStreamWaitEvent(ctypes.c_void_p(consumer), self._event, 0), "cuStreamWaitEvent")

    def close(self) -> None:
        if self._event.value:
            with contextlib.suppress(Exception):
                _cuda_driver().cuEventDestroy_v2(self._event)
            self._event = ctypes.c_void_p()


# --------------------------------------------------------------------------------------------
# cache key and sidecar (pure, testable without TensorRT)
# --------------------------------------------------------------------------------------------
def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def engine_cache_fields(*, onnx_sha256: str, trt_version: str, gpu_name: str, sm: Sequence[int], sm_count: int,
                        driver_version: int, precision: Union[str, Precision], min_batch: int, opt_batch: int,
                        max_batch: int, workspace_mb: int) -> Dict[str, Any]:
    """The fields an engine depends on, validated and normalised (the sidecar stores these)."""
    p = Precision.from_string(precision)
    if p is Precision.AUTO:
        raise ValueError("the cache key needs the resolved precision (fp32/fp16/int8), not auto")
    if len(onnx_sha256) != 64 or any(c not in "0123456789abcdef" for c in onnx_sha256.lower()):
        raise ValueError(f"onnx_sha256 must be a hex sha256 digest, got {onnx_sha256!r}")
    sm_t = tuple(int(v) for v in sm)
    if len(sm_t) != 2:
        raise ValueError(f"sm must be (major, minor), got {sm!r}")
    if int(sm_count) <= 0:
        raise ValueError(f"sm_count must be positive, got {sm_count}")
    if int(driver_version) <= 0:
        raise ValueError(f"driver_version must be positive (cuDriverGetVersion), got {driver_version}")
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
        "sm_count": int(sm_count),
        "driver_version": int(driver_version),
        "precision": p.value,
        "batch_profile": [int(min_batch), int(opt_batch), int(max_batch)],
        "workspace_mb": int(workspace_mb),
    }


def engine_cache_key(**fields: Any) -> str:
    """sha256 over the canonical JSON of `engine_cache_fields(**fields)`.

    Keyword arguments: onnx_sha256, trt_version, gpu_name, sm, sm_count, driver_version, precision,
    min_batch, opt_batch, max_batch, workspace_mb.  The ONNX enters through its sha256 (hashing the digest is as
    collision-resistant as hashing the bytes and avoids reading the model twice).
    """
    return _key_from_fields(engine_cache_fields(**fields))


def _key_from_fields(fields: Mapping[str, Any]) -> str:
    blob = json.dumps(dict(fields), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def sidecar_path(engine_path: PathLike) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


try:  # the package's one atomic writer (temp file in the same directory + fsync + os.replace)
    from ..atomic import atomic_write_bytes
except ImportError:  # this file copied alone next to export/build_engine.py: same contract, minimal copy
    def atomic_write_bytes(path: PathLike, data: bytes) -> None:  # type: ignore[misc]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
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
        return False, ("key differs (other ONNX, GPU, SM, SM count, driver, TensorRT version, precision, profile or "
                       "workspace)")
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


def fp16_onnx(onnx_path: PathLike, out_dir: PathLike) -> Path:
    """An fp16 copy of `onnx_path` for strongly typed TensorRT (11.x has no BuilderFlag.FP16): float
    initializers and compute in float16, graph inputs/outputs kept float32 (Cast nodes at the edges,
    onnxconverter-common's keep_io_types), so callers feed and read float32 as with any engine.
    Cached in `out_dir` by the source's sha256, written atomically."""
    try:
        import onnx  # noqa: PLC0415
        from onnxconverter_common import float16  # noqa: PLC0415
    except ImportError as e:
        raise TensorRTUnavailableError(
            f"fp16 engines on TensorRT 11 are built from an fp16 ONNX, which needs `onnx` and `onnxconverter-common` "
            f"(pip install 'edgeuad[tensorrt]'): {e}") from e
    src = Path(onnx_path)
    out = Path(out_dir) / f"{src.stem}.{sha256_file(src)[:16]}.fp16.onnx"
    if out.is_file():
        return out
    with warnings.catch_warnings(record=True) as caught:  # one warning per tiny weight clamped to +-1e-7
        warnings.simplefilter("always")
        half = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    if caught:
        log.info("fp16 ONNX: %d values outside float16's range were clamped by onnxconverter-common", len(caught))
    _rewire_output_consumers(half)
    onnx.shape_inference.infer_shapes(half, strict_mode=True)  # a type mismatch is an error here, not in TensorRT
    atomic_write_bytes(out, half.SerializeToString())
    log.info("fp16 ONNX for strongly typed TensorRT written to %s", out)
    return out


def _rewire_output_consumers(model: Any) -> None:
    """onnxconverter-common (1.16) renames the producer of a graph output `y` to `_cast_to_y` and adds
    `Cast(_cast_to_y) -> y` (float32), but leaves other nodes that read `y` reading the float32 copy:
    their fp16 inputs then mix with float32 ones and the graph no longer type-checks.  Point those
    consumers at the fp16 tensor again (the Cast stays the graph output's only producer)."""
    outputs = {o.name for o in model.graph.output}
    fp16_of: Dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "Cast" and len(node.output) == 1 and node.output[0] in outputs:
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if to == 1:  # TensorProto.FLOAT
                fp16_of[node.output[0]] = node.input[0]
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output and node.output[0] in fp16_of:
            continue
        for i, name in enumerate(node.input):
            if name in fp16_of:
                node.input[i] = fp16_of[name]


def _network_flags(trt: Any, major: int) -> int:
    flags = 0
    if major < 10:
        # Explicit batch is required for ONNX networks before 10.0 (deprecated and implied from 10.0).
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed(major) and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # 11.x: accepted, always on
    return flags


def _precision_flags(trt: Any, major: int, resolved: Precision, fast_fp16: bool) -> List[str]:
    """BuilderFlag names for a weakly typed build (8.6 / 10.x); none for 11.x, where the graph decides."""
    if strongly_typed(major):
        return []
    if not hasattr(trt.BuilderFlag, "FP16"):
        raise TensorRTUnsupportedError(f"TensorRT {trt.__version__} has no BuilderFlag.FP16 although it is < 11")
    if resolved is Precision.FP16:
        return ["FP16"]
    if resolved is Precision.INT8:
        # Layers outside Q/DQ pairs may then run in fp16 instead of fp32.
        return ["INT8", "FP16"] if fast_fp16 else ["INT8"]
    return []


def build_engine(onnx_path: PathLike, engine_path: Optional[PathLike] = None,
                 precision: Union[str, Precision] = Precision.AUTO, max_batch: int = 8, opt_batch: int = 1,
                 workspace_mb: int = 1024, cache_dir: Optional[PathLike] = None, device: int = 0,
                 force: bool = False, verbose: bool = False) -> Path:
    """Build (or reuse from cache) a TensorRT engine for `onnx_path` on GPU `device`; returns its path.

    engine_path: where to put the engine; default `cache_dir/<stem>.<precision>.b<max>.<key16>.engine`
    (cache_dir defaults to $EDGEUAD_TRT_CACHE or ~/.cache/edgeuad/trt).  An existing engine is
    reused only when its sidecar carries the same cache key and its sha256 matches; `force`
    rebuilds regardless.  The key covers the ONNX's sha256, TensorRT version, GPU name, SM, SM count,
    driver version, precision, batch profile, workspace and this recipe's version.
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
    major = check_trt_version(trt.__version__)
    if strongly_typed(major) and scan is None:
        raise TensorRTUnavailableError(f"TensorRT {trt.__version__} builds strongly typed networks, whose precision "
                                       "comes from the ONNX graph: install `onnx` (pip install 'edgeuad[tensorrt]')")
    gpu = query_gpu(device)
    fast_fp16, fast_int8 = sm_capabilities(gpu.sm)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    with device_context(device):
        return _build(trt, major, gpu, onnx_path, engine_path, root, requested, scan, fast_fp16, fast_int8,
                      int(max_batch), int(opt_batch), int(workspace_mb), force, verbose)


def _build(trt: Any, major: int, gpu: GpuInfo, onnx_path: Path, engine_path: Optional[PathLike], root: Path,
           requested: Precision, scan: Optional[QdqScan], fast_fp16: bool, fast_int8: bool, max_batch: int,
           opt_batch: int, workspace_mb: int, force: bool, verbose: bool) -> Path:
    logger = _make_logger(trt, verbose)
    builder = _check(trt.Builder(logger), "trt.Builder")
    strong = strongly_typed(major)

    def parse(path: Path) -> Any:
        network = _check(builder.create_network(_network_flags(trt, major)), "Builder.create_network")
        parser = _check(trt.OnnxParser(network, logger), "trt.OnnxParser")
        # parse_from_file resolves external-data weights relative to the model file.
        if not parser.parse_from_file(str(path)):
            errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise EngineBuildError(f"TensorRT could not parse {path} ({len(errs)} error(s)):\n  "
                                   + "\n  ".join(errs or logger.errors or ["(no parser error recorded)"]))
        return network, parser

    # Strongly typed (11.x): the precision is decided before parsing, from the Q/DQ scan.
    if strong:
        has_qdq = scan.has_qdq  # type: ignore[union-attr]  (scan is required for 11.x)
        resolved = resolve_precision(requested, fast_fp16, fast_int8, has_qdq)
        graph = fp16_onnx(onnx_path, root / "onnx") if resolved is Precision.FP16 else onnx_path
        network, _parser = parse(graph)
    else:
        graph = onnx_path
        network, _parser = parse(graph)
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
        min_b, opt_b, max_b = 1, opt_batch, max_batch

    fields = engine_cache_fields(onnx_sha256=sha256_file(onnx_path), trt_version=trt.__version__,
                                 gpu_name=gpu.name, sm=gpu.sm, sm_count=gpu.sm_count,
                                 driver_version=gpu.driver_version, precision=resolved, min_batch=min_b,
                                 opt_batch=opt_b, max_batch=max_b, workspace_mb=workspace_mb)
    key = _key_from_fields(fields)
    if engine_path is None:
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
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile = _check(builder.create_optimization_profile(), "Builder.create_optimization_profile")
    rest = shape[1:]
    profile.set_shape(inp.name, (min_b,) + rest, (opt_b,) + rest, (max_b,) + rest)
    if config.add_optimization_profile(profile) < 0:
        raise TensorRTCallError(f"IBuilderConfig.add_optimization_profile rejected the profile "
                                f"{min_b}/{opt_b}/{max_b} x {rest} for input {inp.name!r}")
    set_flags = _precision_flags(trt, major, resolved, fast_fp16)
    for name in set_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))

    log.info("building TensorRT %s engine for %s on %s (SM %s, %d SMs, TensorRT %s, %s), batch %d/%d/%d, "
             "workspace %d MiB", resolved, graph.name, gpu.name, gpu.sm_str, gpu.sm_count, trt.__version__,
             "strongly typed" if strong else "flags " + ("+".join(set_flags) or "none"), min_b, opt_b, max_b,
             workspace_mb)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("Builder.build_serialized_network returned None; TensorRT said:\n  "
                               + "\n  ".join(logger.errors or ["(no error message recorded)"]))
    data = memoryview(serialized).tobytes()
    build_s = time.perf_counter() - t0
    write_cached_engine(engine_path, data, fields,
                        extra={"builder_flags": set_flags, "strongly_typed": strong, "input": inp.name,
                               "input_shape": list(shape), "requested_precision": requested.value,
                               "build_seconds": round(build_s, 2), "onnx_file": onnx_path.name,
                               "built_from": graph.name, "has_qdq": bool(has_qdq), "device": gpu.index})
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

    Host inputs of `infer_device` go through two page-locked staging buffers used in turn, each
    guarded by an event recorded after its host-to-device copy: a call waits for that event before
    overwriting the buffer, so an asynchronous copy still reading it is never clobbered.
    """

    def __init__(self, engine_path: PathLike, device: int = 0, verbose: bool = False) -> None:
        self._closed = True
        trt = _import_tensorrt()
        check_trt_version(trt.__version__)
        cuda, gpuarray = _import_pycuda()
        self._trt, self._cuda, self._gpuarray = trt, cuda, gpuarray
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise FileNotFoundError(f"TensorRT engine not found: {self.engine_path}")
        self._lock = threading.Lock()
        self._device_allocs: Dict[str, Any] = {}
        self._host: Dict[str, np.ndarray] = {}
        self._staging: List[np.ndarray] = []  # two pinned input buffers for infer_device
        self._staging_events: List[Any] = []
        self._slot = 0
        self._waiter = _StreamWaiter()
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
        inp = infos[self.input_name]
        self._staging = [cuda.pagelocked_empty(inp.max_shape, inp.dtype) for _ in range(2)]
        self._staging_events = [cuda.Event() for _ in range(2)]
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
        the engine's input dtype, N <= max_batch).  A host batch is staged in a pinned buffer (two,
        used in turn, see the class docstring); a device batch is copied device-to-device on the
        engine's stream after its v3 producer 'stream' (the GPU waits on an event, the host does not).
        The returned arrays expose `__cuda_array_interface__`; they alias the engine's buffers, so they
        are valid until the next call and must be consumed on `stream_handle` (or after
        `stream.synchronize()`).
        """
        cuda, gpuarray = self._cuda, self._gpuarray
        dst = self._device_allocs[self.input_name]
        with self._current():
            if isinstance(batch, np.ndarray):
                self._check_sample_shape(batch.shape, batch.dtype)
                n = batch.shape[0]
                if n > self.max_batch:
                    raise ValueError(f"infer_device takes at most max_batch={self.max_batch} samples, got {n}")
                slot = self._slot
                self._slot ^= 1
                # The copy that last read this buffer (two calls ago) must be finished before we overwrite it.
                self._staging_events[slot].synchronize()
                host_in = self._staging[slot].reshape(-1)[:batch.size]
                np.copyto(host_in, np.ascontiguousarray(batch).reshape(-1))
                cuda.memcpy_htod_async(dst, host_in, self._stream)
                self._staging_events[slot].record(self._stream)
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
                if producer is not None:
                    if int(producer) == 0:
                        raise ValueError("__cuda_array_interface__ 'stream' 0 is disallowed by the v3 protocol")
                    self._waiter.wait(int(producer), self.stream_handle)
                nbytes = int(np.prod(shape)) * dtype.itemsize
                cuda.memcpy_dtod_async(dst, int(cai["data"][0]), nbytes, self._stream)
            else:
                raise TypeError("batch must be a numpy array or expose __cuda_array_interface__")
            self._enqueue(n)
            return {o: gpuarray.GPUArray(self._output_shape(o), self.tensors[o].dtype,
                                         gpudata=self._device_allocs[o]) for o in self.output_names}

    def device_empty(self, shape: Sequence[int], dtype: Any = np.float32) -> Any:
        """A pycuda GPUArray on this engine's device (for kernels chained after the engine)."""
        with self._current():
            return self._gpuarray.empty(tuple(int(d) for d in shape), np.dtype(dtype))

    def pinned_empty(self, shape: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
        """Page-locked host memory, so device-to-host copies into it are truly asynchronous."""
        with self._current():
            return self._cuda.pagelocked_empty(tuple(int(d) for d in shape), np.dtype(dtype))

    def copy_to_host_async(self, dst: np.ndarray, src: Any) -> None:
        """Enqueue a device-to-host copy of a GPUArray into (pinned) `dst` on the engine's stream."""
        with self._current():
            self._cuda.memcpy_dtoh_async(dst, src.gpudata, self._stream)

    def copy_to_device_async(self, dst: Any, src: np.ndarray) -> None:
        """Enqueue a host-to-device copy of (pinned) `src` into a GPUArray on the engine's stream."""
        with self._current():
            self._cuda.memcpy_htod_async(dst.gpudata, src, self._stream)

    def synchronize(self) -> None:
        with self._current():
            self._stream.synchronize()

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
        self._staging = []
        self._staging_events = []
        self._waiter.close()
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
    "SUPPORTED_TRT", "TensorInfo", "TensorRTCallError", "TensorRTUnavailableError", "TensorRTUnsupportedError",
    "TrtEngine", "atomic_write_bytes", "build_engine", "cached_engine_is_valid", "check_precision_against_graph",
    "check_trt_version", "default_cache_dir", "device_context", "engine_cache_fields", "engine_cache_key",
    "fp16_onnx", "onnx_has_qdq", "query_gpu", "read_sidecar", "resolve_precision", "scan_qdq", "sha256_file",
    "sidecar_path", "sm_capabilities", "strongly_typed", "tensorrt_available", "write_cached_engine",
]
