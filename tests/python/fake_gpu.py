"""Fakes of the GPU stack for host-side tests: device memory, streams, pycuda, tensorrt, and `_rt`'s CUDA
entry points.  Nothing here touches a GPU.

* `FakeGpu`: device memory as numpy byte buffers behind fake addresses; streams whose operations run
  only when someone synchronises (a stream or an event recorded on it).  A host-to-device copy reads
  its host source when it *runs*, not when it is enqueued -- like a real asynchronous copy from
  pinned memory -- so a caller that overwrites a staging buffer too early gets the wrong data.
* `make_pycuda(gpu)`: the pieces of pycuda.driver / pycuda.gpuarray that edgeuad uses.
* `make_tensorrt(version, gpu)`: a `tensorrt` module whose enums hold exactly the members of the real
  bindings of that version and whose classes expose only the methods those bindings have
  (tests/python/trt_api_lists.py); behaviour: the parser reads the ONNX with `onnx`, "engines" are JSON
  naming the ONNX graph, and execution runs it with onnxruntime on the fake device memory.
* `FakeRt`: `_rt` with CUDA: cos_map_cuda / l2_map_cuda run `_rt`'s CPU emulation of the CUDA kernels on
  the fake device memory, enqueued on the given fake stream.
"""
from __future__ import annotations

import enum
import json
import types
from typing import Any, Callable

import numpy as np

from trt_api_lists import API


# ------------------------------------------------------------------------------------------ memory
class FakeStream:
    def __init__(self, gpu: "FakeGpu", handle: int) -> None:
        self.gpu, self.handle = gpu, handle
        self.ops: list[Callable[[], None]] = []
        self.done = 0  # ops executed so far (ops are never removed: positions stay valid for events)

    def enqueue(self, op: Callable[[], None]) -> None:
        self.ops.append(op)

    def run_until(self, n: int) -> None:
        while self.done < n:
            op = self.ops[self.done]
            self.done += 1
            op()

    def synchronize(self) -> None:
        self.run_until(len(self.ops))


class FakeGpu:
    def __init__(self) -> None:
        self.mem: dict[int, np.ndarray] = {}
        self.next_addr = 0x7F0000000000
        self.streams: dict[int, FakeStream] = {}
        self.next_stream = 0x5000
        self.default = self.stream(0)

    def alloc(self, nbytes: int) -> int:
        addr = self.next_addr
        self.mem[addr] = np.zeros(max(int(nbytes), 1), np.uint8)
        self.next_addr += (max(int(nbytes), 1) + 4095) // 4096 * 4096 + 4096
        return addr

    def free(self, addr: int) -> None:
        self.mem.pop(addr)

    def bytes_at(self, addr: int, nbytes: int) -> np.ndarray:
        for base, buf in self.mem.items():
            if base <= addr and addr + nbytes <= base + buf.size:
                return buf[addr - base: addr - base + nbytes]
        raise AssertionError(f"fake GPU: {nbytes} bytes at {addr:#x} are not inside any allocation")

    def array(self, addr: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dt = np.dtype(dtype)
        return self.bytes_at(addr, int(np.prod(shape)) * dt.itemsize).view(dt).reshape(shape)

    def cai_array(self, obj: Any) -> np.ndarray:
        cai = obj.__cuda_array_interface__
        return self.array(int(cai["data"][0]), tuple(cai["shape"]), np.dtype(cai["typestr"]))

    def stream(self, handle: int | None = None) -> FakeStream:
        if handle is None:
            handle = self.next_stream
            self.next_stream += 16
        if handle not in self.streams:
            self.streams[handle] = FakeStream(self, handle)
        return self.streams[handle]

    def synchronize(self) -> None:
        for s in list(self.streams.values()):
            s.synchronize()


# ------------------------------------------------------------------------------------------ pycuda
def make_pycuda(gpu: FakeGpu) -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """(pycuda, pycuda.driver, pycuda.gpuarray)"""
    drv = types.ModuleType("pycuda.driver")
    ga = types.ModuleType("pycuda.gpuarray")
    pkg = types.ModuleType("pycuda")
    pkg.driver, pkg.gpuarray = drv, ga
    stack: list[Any] = []

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            self.addr = gpu.alloc(nbytes)

        def __int__(self) -> int:
            return self.addr

        def free(self) -> None:
            gpu.free(self.addr)

    class Context:
        @staticmethod
        def pop() -> None:
            stack.pop()

    class PrimaryContext:
        def push(self) -> None:
            stack.append(self)

        def detach(self) -> None:
            pass

    class Device:
        def __init__(self, i: int) -> None:
            self.i = i

        def retain_primary_context(self) -> PrimaryContext:
            return PrimaryContext()

    class Stream:
        def __init__(self) -> None:
            self._s = gpu.stream()
            self.handle = self._s.handle

        def synchronize(self) -> None:
            self._s.synchronize()

    class Event:
        def __init__(self) -> None:
            self._at: tuple[FakeStream, int] | None = None

        def record(self, stream: Stream | None = None) -> "Event":
            s = stream._s if stream is not None else gpu.default
            self._at = (s, len(s.ops))
            return self

        def synchronize(self) -> "Event":
            if self._at is not None:  # never recorded: returns at once (cudaEventSynchronize semantics)
                self._at[0].run_until(self._at[1])
            return self

        def query(self) -> bool:
            return self._at is None or self._at[0].done >= self._at[1]

    def _need_ctx() -> None:
        assert stack, "pycuda call without a current context (TrtEngine must push its context)"

    def _stream(stream: Any) -> FakeStream:
        return stream._s if stream is not None else gpu.default

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        _need_ctx()
        return DeviceAllocation(nbytes)

    def pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype)

    def memcpy_htod_async(dst: Any, src: np.ndarray, stream: Any = None) -> None:
        _need_ctx()
        n = src.nbytes
        # reads `src` when the copy runs, as the hardware does from pinned memory
        _stream(stream).enqueue(lambda: np.copyto(gpu.bytes_at(int(dst), n), src.reshape(-1).view(np.uint8)))

    def memcpy_dtoh_async(dst: np.ndarray, src: Any, stream: Any = None) -> None:
        _need_ctx()
        n = dst.nbytes
        _stream(stream).enqueue(lambda: np.copyto(dst.reshape(-1).view(np.uint8), gpu.bytes_at(int(src), n)))

    def memcpy_dtod_async(dst: Any, src: Any, size: int, stream: Any = None) -> None:
        _need_ctx()
        _stream(stream).enqueue(lambda: np.copyto(gpu.bytes_at(int(dst), size), gpu.bytes_at(int(src), size).copy()))

    def init() -> None:
        pass

    for f in (DeviceAllocation, Context, Device, Stream, Event, mem_alloc, pagelocked_empty, memcpy_htod_async,
              memcpy_dtoh_async, memcpy_dtod_async, init):
        setattr(drv, f.__name__, f)

    class GPUArray:
        def __init__(self, shape: Any, dtype: Any, gpudata: Any = None) -> None:
            self.shape = tuple(int(d) for d in shape)
            self.dtype = np.dtype(dtype)
            self.gpudata = gpudata if gpudata is not None else DeviceAllocation(
                int(np.prod(self.shape)) * self.dtype.itemsize)

        @property
        def ptr(self) -> int:
            return int(self.gpudata)

        @property
        def __cuda_array_interface__(self) -> dict:
            return {"shape": self.shape, "typestr": self.dtype.str, "data": (int(self.gpudata), False),
                    "version": 3, "strides": None, "stream": None}

    def empty(shape: Any, dtype: Any) -> GPUArray:
        _need_ctx()
        return GPUArray(shape, dtype)

    ga.GPUArray, ga.empty = GPUArray, empty
    return pkg, drv, ga


# ------------------------------------------------------------------------------------------ tensorrt
def _enum(name: str, members: list[str]) -> type:
    return enum.IntEnum(name, {m: i for i, m in enumerate(dict.fromkeys(members))})


def make_tensorrt(version: str, gpu: FakeGpu, api_version: str | None = None) -> types.ModuleType:
    """A fake `tensorrt` of `version` with the API of `api_version` (default: the same entry of API)."""
    api = API[api_version or version]
    E = {k: _enum(k, v) for k, v in api["enums"].items()}
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    major = int(version.split(".")[0])
    record: dict[str, Any] = {"builds": [], "networks": []}
    mod._record = record  # test hook (not a TensorRT name)

    def expose(cls_name: str, impl: type) -> type:
        allowed = set(api["classes"][cls_name])
        attrs = {k: v for k, v in vars(impl).items() if k in allowed or k == "__init__"}
        return type(cls_name, (), attrs)

    for k, e in E.items():
        if k != "Severity":
            setattr(mod, k, e)

    class ILoggerImpl:
        def __init__(self) -> None:
            pass

    ILogger = type("ILogger", (), {"__init__": ILoggerImpl.__init__, "Severity": E["Severity"]})
    mod.ILogger = ILogger

    def nptype(t: Any) -> Any:
        return {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT8": np.int8, "BOOL": np.bool_}[t.name]

    mod.nptype = nptype

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape = name, shape

    class Layer:
        def __init__(self, t: Any) -> None:
            self.type = t

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[Any] = []
            self.layers: list[Any] = []
            self.onnx: str | None = None
            self.fp16_graph = False

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Any:
            return self.inputs[i]

        @property
        def num_layers(self) -> int:
            return len(self.layers)

        def get_layer(self, i: int) -> Any:
            return self.layers[i]

    NetworkCls = expose("INetworkDefinition", Network)

    class Parser:
        def __init__(self, network: Any, logger: Any) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            import onnx
            from onnx import TensorProto

            net = self.network
            explicit = "EXPLICIT_BATCH" in E["NetworkDefinitionCreationFlag"].__members__
            if major < 10 and not net.flags & (1 << E["NetworkDefinitionCreationFlag"].EXPLICIT_BATCH):
                self.errors.append("ONNX models need an explicit-batch network before TensorRT 10")
                return False
            assert explicit or major >= 10
            m = onnx.load(path)
            inits = {i.name for i in m.graph.initializer}
            for vi in m.graph.input:
                if vi.name in inits:
                    continue
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)
                net.inputs.append(Tensor(vi.name, dims))
            q = {"QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE"}
            for node in m.graph.node:
                if node.op_type in q:
                    net.layers.append(Layer(E["LayerType"][q[node.op_type]]))
            net.onnx = path
            net.fp16_graph = any(i.data_type == TensorProto.FLOAT16 for i in m.graph.initializer)
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

    mod.OnnxParser = expose("OnnxParser", Parser)

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, Any] = {}

        def set_shape(self, name: str, mn: Any, opt: Any, mx: Any) -> None:
            self.shapes[name] = [list(mn), list(opt), list(mx)]

    ProfileCls = expose("IOptimizationProfile", Profile)

    class Config:
        def __init__(self) -> None:
            self.flags: list[str] = []
            self.pools: dict[str, int] = {}
            self.profiles: list[Any] = []

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            assert isinstance(pool, E["MemoryPoolType"])
            self.pools[pool.name] = size

        def add_optimization_profile(self, profile: Any) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_flag(self, flag: Any) -> None:
            assert isinstance(flag, E["BuilderFlag"]), flag
            self.flags.append(flag.name)

    ConfigCls = expose("IBuilderConfig", Config)

    class Builder:
        def __init__(self, logger: Any) -> None:
            assert isinstance(logger, ILogger)
            self.logger = logger

        def create_network(self, flags: int = 0) -> Any:
            names = list(E["NetworkDefinitionCreationFlag"].__members__)
            assert flags >> len(names) == 0, f"unknown network creation flag bits {flags:#x}"
            net = NetworkCls(flags)
            record["networks"].append(net)
            return net

        def create_builder_config(self) -> Any:
            return ConfigCls()

        def create_optimization_profile(self) -> Any:
            return ProfileCls()

        def build_serialized_network(self, network: Any, config: Any) -> bytes:
            flag_names = [n for n, v in E["NetworkDefinitionCreationFlag"].__members__.items()
                          if network.flags & (1 << v)]
            spec = {"onnx": network.onnx, "builder_flags": config.flags, "network_flags": flag_names,
                    "profile": config.profiles[0].shapes, "fp16_graph": network.fp16_graph, "version": version}
            record["builds"].append(spec)
            return json.dumps(spec).encode()

    mod.Builder = expose("Builder", Builder)

    class Engine:
        def __init__(self, spec: dict) -> None:
            import onnxruntime as ort

            self.spec = spec
            self.sess = ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
            self.inp = self.sess.get_inputs()[0].name
            self.outs = [o.name for o in self.sess.get_outputs()]
            mn, opt, mx = spec["profile"][self.inp]
            self.profile = (tuple(mn), tuple(opt), tuple(mx))
            probe = self.sess.run(None, {self.inp: np.zeros((1,) + self.profile[0][1:], np.float32)})
            self.per_sample = {n: tuple(a.shape[1:]) for n, a in zip(self.outs, probe)}

        @property
        def num_io_tensors(self) -> int:
            return 1 + len(self.outs)

        def get_tensor_name(self, i: int) -> str:
            return ([self.inp] + self.outs)[i]

        def get_tensor_mode(self, name: str) -> Any:
            return E["TensorIOMode"].INPUT if name == self.inp else E["TensorIOMode"].OUTPUT

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (-1,) + (self.profile[0][1:] if name == self.inp else self.per_sample[name])

        def get_tensor_dtype(self, name: str) -> Any:
            return E["DataType"].FLOAT

        def get_tensor_profile_shape(self, name: str, profile: int) -> tuple:
            assert name == self.inp and profile == 0
            return self.profile

        def create_execution_context(self) -> Any:
            return ContextCls(self)

    EngineCls = expose("ICudaEngine", Engine)

    class Context:
        def __init__(self, engine: Any) -> None:
            self.engine, self.addr, self.batch = engine, {}, None

        def set_input_shape(self, name: str, shape: Any) -> bool:
            assert name == self.engine.inp
            self.batch = int(shape[0])
            return self.engine.profile[0][0] <= self.batch <= self.engine.profile[2][0]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            per = self.engine.profile[0][1:] if name == self.engine.inp else self.engine.per_sample[name]
            return (self.batch,) + tuple(per)

        def set_tensor_address(self, name: str, addr: int) -> bool:
            self.addr[name] = int(addr)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            eng, b = self.engine, self.batch
            shapes = {n: self.get_tensor_shape(n) for n in [eng.inp] + eng.outs}

            def run() -> None:
                x = gpu.array(self.addr[eng.inp], shapes[eng.inp], np.float32).copy()
                for n, y in zip(eng.outs, eng.sess.run(None, {eng.inp: x})):
                    gpu.array(self.addr[n], shapes[n], np.float32)[...] = y

            assert b is not None
            gpu.stream(stream_handle).enqueue(run)
            return True

    ContextCls = expose("IExecutionContext", Context)

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> Any:
            try:
                spec = json.loads(bytes(data))
            except ValueError:
                return None
            if spec.get("version") != version:
                return None  # serialized by another TensorRT version
            return EngineCls(spec)

    mod.Runtime = expose("Runtime", Runtime)
    return mod


# ------------------------------------------------------------------------------------------ _rt CUDA
class FakeRt:
    """`_rt` with its CUDA entry points running the CPU emulation of the CUDA kernels on fake memory."""

    def __init__(self, rt: Any, gpu: FakeGpu) -> None:
        self._rt, self.gpu = rt, gpu
        self.calls: list[tuple[str, dict]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rt, name)

    def has_cuda(self) -> bool:
        return True

    def cuda_status(self) -> dict:
        return {"built_with_cuda": True, "device_count": 1, "runtime_version": 12060, "driver_version": 12060,
                "error": ""}

    def _finish(self, res: tuple, out: Any, max_out: Any, topk_out: Any) -> None:
        self.gpu.cai_array(out)[...] = res[0]
        if max_out is not None:
            self.gpu.cai_array(max_out)[...] = res[1]
        if topk_out is not None:
            self.gpu.cai_array(topk_out)[...] = res[2]

    def cos_map_cuda(self, pairs, out, out_size, weights=None, align_corners=True, sigma=4.0, stream=0,
                     max_out=None, topk_out=None, topk_frac=0.01):
        self.calls.append(("cos_map_cuda", {"stream": stream, "max_out": max_out is not None,
                                            "topk_out": topk_out is not None, "n_pairs": len(pairs)}))

        def run() -> None:
            host = [(self.gpu.cai_array(a).copy(), self.gpu.cai_array(b).copy()) for a, b in pairs]
            self._finish(self._rt.emulate_cuda_cos_map(host, out_size, weights, align_corners, sigma, topk_frac),
                         out, max_out, topk_out)

        self.gpu.stream(int(stream)).enqueue(run)

    def l2_map_cuda(self, dist, out, out_size, align_corners=True, sigma=4.0, stream=0, max_out=None,
                    topk_out=None, topk_frac=0.01):
        self.calls.append(("l2_map_cuda", {"stream": stream, "max_out": max_out is not None,
                                           "topk_out": topk_out is not None}))

        def run() -> None:
            d = self.gpu.cai_array(dist).copy()
            self._finish(self._rt.emulate_cuda_l2_map(d, out_size, align_corners, sigma, topk_frac),
                         out, max_out, topk_out)

        self.gpu.stream(int(stream)).enqueue(run)


class FakeDeviceBank:
    """`_rt.DeviceBank` on fake memory: the CPU emulation of the GPU patch-score kernels."""

    def __init__(self, rt: Any, gpu: FakeGpu, calls: list, features: np.ndarray, table: Any = None) -> None:
        self.rt, self.gpu, self.calls = rt, gpu, calls
        self.features = np.ascontiguousarray(features, np.float32)
        self.table = None if table is None else np.ascontiguousarray(table, np.int32)

    def patch_scores(self, queries: Any, out: Any, b: int = 0, stream: int = 0) -> None:
        self.calls.append(("patch_scores", {"stream": stream, "b": b}))

        def run() -> None:
            q = self.gpu.cai_array(queries)
            q = np.ascontiguousarray(q.reshape(-1, q.shape[-1]))
            self.gpu.cai_array(out).reshape(-1)[...] = self.rt.emulate_cuda_patch_scores(self.features, self.table, q, b)

        self.gpu.stream(int(stream)).enqueue(run)


def _device_bank(self: "FakeRt", features: np.ndarray, neighbor_table: Any = None) -> FakeDeviceBank:
    return FakeDeviceBank(self._rt, self.gpu, self.calls, features, neighbor_table)


FakeRt.DeviceBank = _device_bank  # type: ignore[attr-defined]
