// pybind11 bindings of the edgeuad C++ core: edgeuad._rt.
//
// All Python-facing validation happens here while the GIL is held; the C++ work
// then runs with the GIL released.  Inputs are used in place (no hidden copies):
// wrong dtypes raise TypeError, non-contiguous arrays raise ValueError.
// Outputs are allocated by numpy, so their memory is always freed by numpy.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <omp.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "edgeuad/bank.hpp"
#include "edgeuad/bank_exact.hpp"
#include "edgeuad/flops_probe.hpp"
#include "edgeuad/errors.hpp"
#include "edgeuad/maps.hpp"
#include "edgeuad/maps_cuda.hpp"
#include "edgeuad/maps_kernels.hpp"
#include "edgeuad/maps_pixel.hpp"

namespace py = pybind11;
using namespace pybind11::literals;
using edgeuad::DType;
using edgeuad::DTypeError;
using edgeuad::ShapeError;

#ifndef EDGEUAD_CUDA_ARCHS_STR
#define EDGEUAD_CUDA_ARCHS_STR ""
#endif
#ifndef EDGEUAD_SANITIZE_STR
#define EDGEUAD_SANITIZE_STR ""
#endif

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

std::vector<int64_t> shape_of(const py::array& a) {
  return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

// A numpy array used in place: must be an ndarray, C-contiguous and aligned.
py::array as_ndarray(py::handle obj, const std::string& what) {
  if (!py::isinstance<py::array>(obj))
    throw DTypeError(what + " must be a numpy.ndarray, got " + std::string(py::str(py::type::of(obj))));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!(a.flags() & py::array::c_style))
    throw ShapeError(what + " is not C-contiguous: pass np.ascontiguousarray(x)");
  if (!a.attr("flags").attr("aligned").cast<bool>())
    throw ShapeError(what + " is not aligned: pass np.ascontiguousarray(x)");
  return a;
}

DType float_dtype(const py::array& a, const std::string& what) {
  py::dtype dt = a.dtype();
  if (dt.kind() == 'f' && dt.attr("isnative").cast<bool>()) {
    if (dt.itemsize() == 4) return DType::F32;
    if (dt.itemsize() == 2) return DType::F16;
  }
  throw DTypeError(what + " must be float32 or float16, got " + std::string(py::str(dt)));
}

void require_float32(const py::array& a, const std::string& what) {
  py::dtype dt = a.dtype();
  if (!(dt.kind() == 'f' && dt.itemsize() == 4 && dt.attr("isnative").cast<bool>()))
    throw DTypeError(what + " must be float32, got " + std::string(py::str(dt)));
}

std::pair<int64_t, int64_t> parse_out_size(py::handle out_size) {
  if (!py::isinstance<py::sequence>(out_size) || py::isinstance<py::str>(out_size) || py::len(out_size) != 2)
    throw ShapeError("out_size must be a (height, width) pair of ints");
  py::sequence s = py::reinterpret_borrow<py::sequence>(out_size);
  const int64_t h = s[0].cast<int64_t>(), w = s[1].cast<int64_t>();
  if (h <= 0 || w <= 0)
    throw ShapeError("out_size must be positive, got (" + std::to_string(h) + ", " + std::to_string(w) + ")");
  return {h, w};
}

std::vector<float> parse_weights(py::handle weights, size_t n) {
  std::vector<float> w(n, 1.0f);
  if (weights.is_none()) return w;
  if (!py::isinstance<py::sequence>(weights) || py::len(weights) != n)
    throw ShapeError("weights must be None or a sequence of " + std::to_string(n) + " floats (one per pair)");
  py::sequence s = py::reinterpret_borrow<py::sequence>(weights);
  for (size_t i = 0; i < n; ++i) w[i] = s[i].cast<float>();
  return w;
}

// Flattened [a0, b0, a1, b1, ...] of a list of (a, b) pairs.
std::vector<py::object> parse_pairs(py::handle pairs) {
  if (!py::isinstance<py::sequence>(pairs) || py::isinstance<py::str>(pairs))
    throw DTypeError("pairs must be a list of (a, b) array pairs");
  py::sequence s = py::reinterpret_borrow<py::sequence>(pairs);
  if (py::len(s) == 0) throw ShapeError("pairs is empty: need at least one (a, b) feature pair");
  std::vector<py::object> out;
  for (size_t l = 0; l < py::len(s); ++l) {
    py::object p = s[l];
    if (!py::isinstance<py::sequence>(p) || py::len(p) != 2)
      throw ShapeError("pairs[" + std::to_string(l) + "] must be an (a, b) pair");
    py::sequence ps = py::reinterpret_borrow<py::sequence>(p);
    out.push_back(ps[0]);
    out.push_back(ps[1]);
  }
  return out;
}

// Scores of the fused map: (map, max, topk_mean).
py::tuple map_outputs(int64_t B, int64_t H, int64_t W, float** map, float** mx, float** tk) {
  py::array_t<float> m({B, H, W}), a({B}), t({B});
  *map = m.mutable_data();
  *mx = a.mutable_data();
  *tk = t.mutable_data();
  return py::make_tuple(m, a, t);
}

// Host (numpy) levels of cos_map: checked, pointers into the arrays (kept alive by `arrays`).
struct HostLevels {
  std::vector<py::array> arrays;
  std::vector<edgeuad::MapLevel> levels;
  int64_t batch = -1;
};

HostLevels parse_host_levels(py::handle pairs, py::handle weights) {
  const std::vector<py::object> keep = parse_pairs(pairs);
  const size_t num_levels = keep.size() / 2;
  const std::vector<float> w = parse_weights(weights, num_levels);
  HostLevels h;
  h.levels.resize(num_levels);
  for (size_t l = 0; l < num_levels; ++l) {
    const std::string lv = "level " + std::to_string(l);
    py::array a = as_ndarray(keep[2 * l], lv + ": a (pairs[" + std::to_string(l) + "][0])");
    py::array b = as_ndarray(keep[2 * l + 1], lv + ": b (pairs[" + std::to_string(l) + "][1])");
    edgeuad::MapLevel& L = h.levels[l];
    L.a_dtype = float_dtype(a, lv + ": a");
    L.b_dtype = float_dtype(b, lv + ": b");
    if (a.ndim() != 4 || b.ndim() != 4)
      throw ShapeError(lv + ": a and b must be 4-D (B, C, H, W), got shapes " + shape_str(shape_of(a)) +
                       " and " + shape_str(shape_of(b)));
    if (shape_of(a) != shape_of(b))
      throw ShapeError(lv + ": a and b shapes differ: " + shape_str(shape_of(a)) + " vs " + shape_str(shape_of(b)));
    if (h.batch < 0) h.batch = a.shape(0);
    if (a.shape(0) != h.batch)
      throw ShapeError(lv + ": batch size " + std::to_string(a.shape(0)) + " differs from level 0's " +
                       std::to_string(h.batch));
    if (a.size() == 0) throw ShapeError(lv + ": arrays must not be empty, got shape " + shape_str(shape_of(a)));
    L.a = a.data();
    L.b = b.data();
    L.C = a.shape(1);
    L.H = a.shape(2);
    L.W = a.shape(3);
    L.weight = w[l];
    h.arrays.push_back(a);
    h.arrays.push_back(b);
  }
  edgeuad::validate_levels(h.levels.data(), static_cast<int>(h.levels.size()), h.batch);
  return h;
}

edgeuad::MapParams make_params(py::handle out_size, bool align_corners, double sigma, double topk_frac, int threads) {
  const auto [H, W] = parse_out_size(out_size);
  edgeuad::MapParams p;
  p.out_h = H;
  p.out_w = W;
  p.align_corners = align_corners;
  p.sigma = sigma;
  p.topk_frac = topk_frac;
  p.threads = threads;
  edgeuad::validate_map_params(p);
  return p;
}

// A (B, h, w) float numpy distance map, checked.
py::array parse_host_dist(py::handle dist, DType* t) {
  py::array d = as_ndarray(dist, "dist");
  *t = float_dtype(d, "dist");
  if (d.ndim() != 3) throw ShapeError("dist must be 3-D (B, h, w), got shape " + shape_str(shape_of(d)));
  if (d.size() == 0) throw ShapeError("dist must not be empty, got shape " + shape_str(shape_of(d)));
  edgeuad::validate_dist(d.shape(0), d.shape(1), d.shape(2));
  return d;
}

py::tuple cos_map_py(py::handle pairs, py::handle out_size, py::handle weights, bool align_corners,
                     double sigma, double topk_frac, int threads) {
  const HostLevels h = parse_host_levels(pairs, weights);
  const edgeuad::MapParams p = make_params(out_size, align_corners, sigma, topk_frac, threads);
  float *map, *mx, *tk;
  py::tuple out = map_outputs(h.batch, p.out_h, p.out_w, &map, &mx, &tk);
  {
    py::gil_scoped_release release;
    edgeuad::cos_map_cpu(h.levels.data(), static_cast<int>(h.levels.size()), h.batch, p, map, mx, tk);
  }
  return out;
}

py::tuple emulate_cos_map_py(py::handle pairs, py::handle out_size, py::handle weights, bool align_corners,
                             double sigma, double topk_frac) {
  const HostLevels h = parse_host_levels(pairs, weights);
  const edgeuad::MapParams p = make_params(out_size, align_corners, sigma, topk_frac, 0);
  edgeuad::kern::check_output(h.batch, p);  // before allocating the output
  float *map, *mx, *tk;
  py::tuple out = map_outputs(h.batch, p.out_h, p.out_w, &map, &mx, &tk);
  py::gil_scoped_release release;
  edgeuad::cuda::emulate_cos_map(h.levels.data(), static_cast<int>(h.levels.size()), h.batch, p, map, mx, tk);
  return out;
}

py::tuple emulate_l2_map_py(py::handle dist, py::handle out_size, bool align_corners, double sigma,
                            double topk_frac) {
  DType t;
  py::array d = parse_host_dist(dist, &t);
  const edgeuad::MapParams p = make_params(out_size, align_corners, sigma, topk_frac, 0);
  edgeuad::kern::check_output(d.shape(0), p);  // before allocating the output
  float *map, *mx, *tk;
  py::tuple out = map_outputs(d.shape(0), p.out_h, p.out_w, &map, &mx, &tk);
  py::gil_scoped_release release;
  edgeuad::cuda::emulate_l2_map(d.data(), t, d.shape(0), d.shape(1), d.shape(2), p, map, mx, tk);
  return out;
}

py::tuple l2_map_py(py::handle dist, py::handle out_size, bool align_corners, double sigma, double topk_frac,
                    int threads) {
  DType t;
  py::array d = parse_host_dist(dist, &t);
  const edgeuad::MapParams p = make_params(out_size, align_corners, sigma, topk_frac, threads);
  float *map, *mx, *tk;
  const int64_t B = d.shape(0);
  py::tuple out = map_outputs(B, p.out_h, p.out_w, &map, &mx, &tk);
  {
    py::gil_scoped_release release;
    edgeuad::l2_map_cpu(d.data(), t, B, d.shape(1), d.shape(2), p, map, mx, tk);
  }
  return out;
}

// ---- CUDA: objects exposing __cuda_array_interface__ (cupy, torch CUDA tensors, pycuda, numba) ----

struct CudaArray {
  uintptr_t ptr = 0;
  std::vector<int64_t> shape;
  DType dtype = DType::F32;
  bool readonly = false;
  uintptr_t stream = 0;  // producer stream (0: none given)
};

CudaArray parse_cai(py::handle obj, const std::string& what) {
  if (!py::hasattr(obj, "__cuda_array_interface__"))
    throw DTypeError(what + " does not expose __cuda_array_interface__ (pass a cupy array, a torch CUDA "
                            "tensor or a pycuda GPUArray)");
  py::dict d = obj.attr("__cuda_array_interface__").cast<py::dict>();
  CudaArray c;
  py::tuple data = d["data"].cast<py::tuple>();
  c.ptr = data[0].cast<uintptr_t>();
  c.readonly = data[1].cast<bool>();
  for (py::handle s : d["shape"].cast<py::tuple>()) c.shape.push_back(s.cast<int64_t>());
  const std::string ts = d["typestr"].cast<std::string>();
  if (ts == "<f4") c.dtype = DType::F32;
  else if (ts == "<f2") c.dtype = DType::F16;
  else throw DTypeError(what + " must be float32 ('<f4') or float16 ('<f2'), got typestr '" + ts + "'");
  if (d.contains("mask") && !d["mask"].is_none()) throw ShapeError(what + ": masked arrays are not supported");
  if (d.contains("strides") && !d["strides"].is_none()) {
    py::tuple st = d["strides"].cast<py::tuple>();
    int64_t expect = c.dtype == DType::F32 ? 4 : 2;
    for (int i = static_cast<int>(c.shape.size()) - 1; i >= 0; --i) {
      // A dimension of size 1 may carry any stride and still be contiguous.
      if (c.shape[i] != 1 && st[i].cast<int64_t>() != expect)
        throw ShapeError(what + " is not C-contiguous: call .contiguous() / cupy.ascontiguousarray first");
      expect *= c.shape[i];
    }
  }
  // v3 'stream': None = no synchronisation needed; 1 legacy default; 2 per-thread default;
  // else a cudaStream_t.  0 is disallowed by the protocol (ambiguous between 1 and 2).
  if (d.contains("stream") && !d["stream"].is_none()) {
    c.stream = d["stream"].cast<uintptr_t>();
    if (c.stream == 0)
      throw ShapeError(what + ": __cuda_array_interface__ 'stream' is 0, which the v3 protocol disallows (use 1 "
                              "for the legacy default stream, 2 for the per-thread default stream)");
  }
  return c;
}

// A stream argument: an int cudaStream_t (0 = legacy default), or an object of the
// common libraries: __cuda_stream__ protocol (cuda.core, cuda-python), torch.cuda.Stream
// (.cuda_stream), cupy Stream (.ptr), pycuda Stream (.handle), cuda-python
// CUstream / cudaStream_t (int(obj) is the handle).
uintptr_t parse_stream(py::handle stream) {
  if (py::isinstance<py::bool_>(stream)) throw DTypeError("stream must be a CUDA stream, not a bool");
  if (py::isinstance<py::int_>(stream)) return stream.cast<uintptr_t>();
  if (py::hasattr(stream, "__cuda_stream__")) {
    py::tuple t = stream.attr("__cuda_stream__")().cast<py::tuple>();
    if (py::len(t) != 2) throw DTypeError("__cuda_stream__() must return (version, handle)");
    return t[1].cast<uintptr_t>();
  }
  if (py::hasattr(stream, "cuda_stream")) return stream.attr("cuda_stream").cast<uintptr_t>();  // torch
  if (py::hasattr(stream, "ptr")) return stream.attr("ptr").cast<uintptr_t>();                  // cupy
  if (py::hasattr(stream, "handle")) return stream.attr("handle").cast<uintptr_t>();            // pycuda
  if (py::hasattr(stream, "__int__") && !py::isinstance<py::str>(stream) && !py::isinstance<py::float_>(stream))
    return py::int_(py::reinterpret_borrow<py::object>(stream)).cast<uintptr_t>();  // cuda-python
  throw DTypeError("stream must be an int cudaStream_t handle or a CUDA stream object (torch.cuda.Stream, cupy, "
                   "pycuda, cuda-python or any object with __cuda_stream__), got " +
                   std::string(py::str(py::type::of(stream))));
}

void check_cuda_out(const CudaArray& o, const std::vector<int64_t>& shape, const std::string& what) {
  if (o.dtype != DType::F32) throw DTypeError(what + " must be float32");
  if (o.readonly) throw ShapeError(what + " is read-only");
  if (o.shape != shape)
    throw ShapeError(what + " must have shape " + shape_str(shape) + ", got " + shape_str(o.shape));
}

// out (B, H, W) and the optional score outputs (B,), with their producer streams.
struct CudaOutputs {
  float* out = nullptr;
  float* max_out = nullptr;
  float* topk_out = nullptr;
};

CudaOutputs parse_cuda_outputs(py::handle out, py::handle max_out, py::handle topk_out, int64_t B, int64_t H,
                               int64_t W, std::vector<uintptr_t>& producers) {
  CudaOutputs r;
  CudaArray o = parse_cai(out, "out");
  check_cuda_out(o, {B, H, W}, "out");
  r.out = reinterpret_cast<float*>(o.ptr);
  producers.push_back(o.stream);  // whoever last touched `out` must be done before we write it
  if (!max_out.is_none()) {
    CudaArray m = parse_cai(max_out, "max_out");
    check_cuda_out(m, {B}, "max_out");
    r.max_out = reinterpret_cast<float*>(m.ptr);
    producers.push_back(m.stream);
  }
  if (!topk_out.is_none()) {
    CudaArray t = parse_cai(topk_out, "topk_out");
    check_cuda_out(t, {B}, "topk_out");
    r.topk_out = reinterpret_cast<float*>(t.ptr);
    producers.push_back(t.stream);
  }
  return r;
}

void require_cuda_build() {
  if (!edgeuad::cuda::has_cuda())
    edgeuad::cuda::run_l2_map(nullptr, DType::F32, 0, 0, 0, edgeuad::MapParams{}, nullptr, nullptr, nullptr, 0,
                              {});  // throws "built without CUDA"
}

void cos_map_cuda_py(py::handle pairs, py::handle out, py::handle out_size, py::handle weights,
                     bool align_corners, double sigma, py::handle stream, py::handle max_out, py::handle topk_out,
                     double topk_frac) {
  require_cuda_build();
  const std::vector<py::object> keep = parse_pairs(pairs);  // owns the arrays during the call
  const size_t num_levels = keep.size() / 2;
  const std::vector<float> w = parse_weights(weights, num_levels);
  std::vector<edgeuad::MapLevel> levels(num_levels);
  std::vector<uintptr_t> producers;
  int64_t batch = -1;
  for (size_t l = 0; l < num_levels; ++l) {
    const std::string lv = "level " + std::to_string(l);
    CudaArray a = parse_cai(keep[2 * l], lv + ": a");
    CudaArray b = parse_cai(keep[2 * l + 1], lv + ": b");
    if (a.shape.size() != 4 || a.shape != b.shape)
      throw ShapeError(lv + ": a and b must be 4-D (B, C, H, W) of the same shape, got " + shape_str(a.shape) +
                       " and " + shape_str(b.shape));
    if (batch < 0) batch = a.shape[0];
    if (a.shape[0] != batch)
      throw ShapeError(lv + ": batch size " + std::to_string(a.shape[0]) + " differs from level 0's " +
                       std::to_string(batch));
    edgeuad::MapLevel& L = levels[l];
    L.a = reinterpret_cast<const void*>(a.ptr);
    L.b = reinterpret_cast<const void*>(b.ptr);
    L.a_dtype = a.dtype;
    L.b_dtype = b.dtype;
    L.C = a.shape[1];
    L.H = a.shape[2];
    L.W = a.shape[3];
    L.weight = w[l];  // finiteness is checked with the sizes (validate_levels), as on the CPU
    producers.push_back(a.stream);
    producers.push_back(b.stream);
  }
  const edgeuad::MapParams p = make_params(out_size, align_corners, sigma, topk_frac, 0);
  edgeuad::validate_levels(levels.data(), static_cast<int>(levels.size()), batch);
  const CudaOutputs o = parse_cuda_outputs(out, max_out, topk_out, batch, p.out_h, p.out_w, producers);
  const uintptr_t s = parse_stream(stream);
  py::gil_scoped_release release;
  edgeuad::cuda::run_cos_map(levels, batch, p, o.out, o.max_out, o.topk_out, s, producers);
}

void l2_map_cuda_py(py::handle dist, py::handle out, py::handle out_size, bool align_corners, double sigma,
                    py::handle stream, py::handle max_out, py::handle topk_out, double topk_frac) {
  require_cuda_build();
  CudaArray d = parse_cai(dist, "dist");
  if (d.shape.size() != 3) throw ShapeError("dist must be 3-D (B, h, w), got shape " + shape_str(d.shape));
  edgeuad::validate_dist(d.shape[0], d.shape[1], d.shape[2]);
  const edgeuad::MapParams p = make_params(out_size, align_corners, sigma, topk_frac, 0);
  std::vector<uintptr_t> producers{d.stream};
  const CudaOutputs o = parse_cuda_outputs(out, max_out, topk_out, d.shape[0], p.out_h, p.out_w, producers);
  const uintptr_t s = parse_stream(stream);
  py::gil_scoped_release release;
  edgeuad::cuda::run_l2_map(reinterpret_cast<const void*>(d.ptr), d.dtype, d.shape[0], d.shape[1], d.shape[2], p,
                            o.out, o.max_out, o.topk_out, s, producers);
}

// A float32/float16 array in CUDA device memory (cudaMalloc), for tests and tools that have
// no torch/cupy/pycuda: exposes __cuda_array_interface__ v3 (stream None: copies are synchronous).
class DeviceArray {
 public:
  DeviceArray(std::vector<int64_t> shape, DType t) : shape_(std::move(shape)), dtype_(t) {
    size_t n = 1;
    for (int64_t d : shape_) {
      if (d < 0) throw ShapeError("DeviceArray: negative dimension");
      n *= static_cast<size_t>(d);
    }
    bytes_ = n * (t == DType::F32 ? 4 : 2);
    ptr_ = edgeuad::cuda::device_alloc(bytes_);
  }
  ~DeviceArray() { edgeuad::cuda::device_free(ptr_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  static std::unique_ptr<DeviceArray> from_host(py::handle obj) {
    py::array a = as_ndarray(obj, "array");
    auto d = std::make_unique<DeviceArray>(shape_of(a), float_dtype(a, "array"));
    edgeuad::cuda::copy_to_device(d->ptr_, a.data(), d->bytes_);
    return d;
  }
  static std::unique_ptr<DeviceArray> empty(const std::vector<int64_t>& shape, const std::string& dtype) {
    if (dtype != "float32" && dtype != "float16") throw DTypeError("dtype must be 'float32' or 'float16'");
    return std::make_unique<DeviceArray>(shape, dtype == "float32" ? DType::F32 : DType::F16);
  }
  py::array to_host() const {
    py::array out(dtype_ == DType::F32 ? py::dtype("float32") : py::dtype("float16"), shape_);
    edgeuad::cuda::copy_to_host(out.mutable_data(), ptr_, bytes_);
    return out;
  }
  py::dict cai() const {
    py::tuple shape(shape_.size());
    for (size_t i = 0; i < shape_.size(); ++i) shape[i] = py::int_(shape_[i]);
    return py::dict("shape"_a = shape, "typestr"_a = dtype_ == DType::F32 ? "<f4" : "<f2",
                    "data"_a = py::make_tuple(reinterpret_cast<uintptr_t>(ptr_), false), "version"_a = 3,
                    "strides"_a = py::none(), "stream"_a = py::none());
  }
  const std::vector<int64_t>& shape() const { return shape_; }
  uintptr_t ptr() const { return reinterpret_cast<uintptr_t>(ptr_); }

 private:
  std::vector<int64_t> shape_;
  DType dtype_;
  size_t bytes_ = 0;
  void* ptr_ = nullptr;
};

// Bank features (and the Eq. 10 neighbour table) copied to the GPU once, for exact patch scores
// on the device (nn_kernels.hpp).
class DeviceBank {
 public:
  DeviceBank(py::handle features, py::handle table) {
    py::array f = as_ndarray(features, "features");
    require_float32(f, "features");
    if (f.ndim() != 2 || f.shape(0) == 0 || f.shape(1) == 0)
      throw ShapeError("features must be a non-empty (N, D) float32 array, got " + shape_str(shape_of(f)));
    n_ = f.shape(0);
    dim_ = f.shape(1);
    if (!table.is_none()) {
      py::array t = as_ndarray(table, "neighbor_table");
      if (!(t.dtype().kind() == 'i' && t.dtype().itemsize() == 4))
        throw DTypeError("neighbor_table must be int32");
      if (t.ndim() != 2 || t.shape(0) != n_ || t.shape(1) < 2)
        throw ShapeError("neighbor_table must be (N, b) with b >= 2, got " + shape_str(shape_of(t)));
      const int32_t* tp = static_cast<const int32_t*>(t.data());
      for (py::ssize_t i = 0; i < t.size(); ++i)
        if (tp[i] < 0 || tp[i] >= n_) throw ShapeError("neighbor_table holds an index outside the bank");
      b_ = t.shape(1);
      table_ = DeviceArray::from_host(t.attr("view")("float32"));  // raw 32-bit words on the device
    }
    feats_ = DeviceArray::from_host(f);
  }

  void patch_scores(py::handle queries, py::handle out, int64_t b, py::handle stream) {
    CudaArray q = parse_cai(queries, "queries");
    CudaArray o = parse_cai(out, "out");
    if (q.dtype != DType::F32 || q.shape.empty() || q.shape.back() != dim_)
      throw ShapeError("queries must be float32 (..., " + std::to_string(dim_) + "), got " + shape_str(q.shape));
    int64_t nq = 1;
    for (size_t i = 0; i + 1 < q.shape.size(); ++i) nq *= q.shape[i];
    int64_t no = 1;
    for (int64_t d : o.shape) no *= d;
    if (o.dtype != DType::F32 || o.readonly || no != nq)
      throw ShapeError("out must be writable float32 with one value per query (" + std::to_string(nq) + "), got " +
                       shape_str(o.shape));
    if (b >= 2 && b != b_)
      throw ShapeError("b = " + std::to_string(b) + " but the neighbour table has " + std::to_string(b_) + " columns");
    const uintptr_t s = parse_stream(stream);
    std::vector<uintptr_t> producers{q.stream, o.stream};
    py::gil_scoped_release release;
    edgeuad::cuda::run_patch_scores(reinterpret_cast<const float*>(q.ptr), nq,
                                    reinterpret_cast<const float*>(feats_->ptr()),
                                    table_ ? reinterpret_cast<const int32_t*>(table_->ptr()) : nullptr, n_, dim_, b,
                                    reinterpret_cast<float*>(o.ptr), s, producers);
  }
  int64_t n() const { return n_; }
  int64_t dim() const { return dim_; }
  int64_t b() const { return b_; }

 private:
  std::unique_ptr<DeviceArray> feats_, table_;
  int64_t n_ = 0, dim_ = 0, b_ = 0;
};

py::array_t<float> emulate_patch_scores_py(py::handle features, py::handle table, py::handle queries, int64_t b) {
  py::array f = as_ndarray(features, "features");
  require_float32(f, "features");
  py::array q = as_ndarray(queries, "queries");
  require_float32(q, "queries");
  if (f.ndim() != 2 || q.ndim() != 2 || q.shape(1) != f.shape(1))
    throw ShapeError("features (N, D) and queries (Q, D) must agree on D");
  const int32_t* tp = nullptr;
  py::array t;
  if (!table.is_none()) {
    t = as_ndarray(table, "neighbor_table");
    if (!(t.dtype().kind() == 'i' && t.dtype().itemsize() == 4) || t.ndim() != 2 || t.shape(0) != f.shape(0) ||
        (b >= 2 && t.shape(1) != b))
      throw ShapeError("neighbor_table must be (N, b) int32");
    tp = static_cast<const int32_t*>(t.data());
  }
  edgeuad::cuda::check_patch_scores(q.shape(0), f.shape(0), f.shape(1), b, tp != nullptr);
  py::array_t<float> out(q.shape(0));
  float* op = out.mutable_data();
  py::gil_scoped_release release;
  edgeuad::cuda::emulate_patch_scores(static_cast<const float*>(q.data()), q.shape(0),
                                      static_cast<const float*>(f.data()), tp, f.shape(0), f.shape(1), b, op);
  return out;
}

// ---- memory bank ----

using edgeuad::MemoryBank;

// (N, dim) float32 C-contiguous rows for the bank.
py::array bank_rows(const MemoryBank& bank, py::handle x, const std::string& what) {
  py::array a = as_ndarray(x, what);
  require_float32(a, what);
  if (a.ndim() != 2 || a.shape(1) != bank.dim())
    throw ShapeError(what + " must have shape (N, " + std::to_string(bank.dim()) + "), got " +
                     shape_str(shape_of(a)));
  return a;
}

std::string fspath(py::handle path) {
  return py::module_::import("os").attr("fspath")(path).cast<std::string>();
}

py::tuple bank_search(const MemoryBank& bank, py::handle queries, int64_t k, bool exact, int64_t ef,
                      int threads) {
  py::array q = bank_rows(bank, queries, "queries");
  if (k < 1) throw ShapeError("k must be >= 1, got " + std::to_string(k));
  const int64_t nq = q.shape(0);
  py::array_t<float> dist({nq, k});
  py::array_t<int64_t> idx({nq, k});
  const float* qp = static_cast<const float*>(q.data());
  float* dp = dist.mutable_data();
  int64_t* ip = idx.mutable_data();
  {
    py::gil_scoped_release release;
    bank.search(qp, nq, k, exact, ef, threads, dp, ip);
  }
  return py::make_tuple(dist, idx);
}

py::tuple bank_search_reweighted(const MemoryBank& bank, py::handle queries, int64_t b, bool exact, int64_t ef,
                                 int threads) {
  py::array q = bank_rows(bank, queries, "queries");
  const int64_t nq = q.shape(0);
  py::array_t<float> scores({nq});
  py::array_t<int64_t> nn({nq});
  const float* qp = static_cast<const float*>(q.data());
  float* sp = scores.mutable_data();
  int64_t* np_ = nn.mutable_data();
  {
    py::gil_scoped_release release;
    bank.search_reweighted(qp, nq, b, exact, ef, threads, sp, np_);
  }
  return py::make_tuple(scores, nn);
}

// ---- _rt.pixel: the shared per-pixel functions of maps_pixel.hpp, exposed for tests ----

void add_pixel_module(py::module_& m) {
  namespace px = edgeuad::pixel;
  py::module_ sub = m.def_submodule(
      "pixel", "The __host__ __device__ per-pixel functions shared by the CPU and CUDA kernels (maps_pixel.hpp), "
               "exposed so that tests check the GPU's arithmetic on the CPU.");
  sub.attr("MAX_SIGMA") = px::kMaxSigma;
  sub.attr("MAX_RADIUS") = px::kMaxRadius;
  sub.attr("MAX_SIDE") = px::kMaxSide;
  sub.def(
      "source_index",
      [](int64_t n_in, int64_t n_out, bool align_corners) {
        if (n_in <= 0 || n_out <= 0 || n_in > px::kMaxIndex || n_out > px::kMaxSide)
          throw ShapeError("source_index: need 1 <= n_in < 2^31 and 1 <= n_out <= " + std::to_string(px::kMaxSide));
        py::array_t<int32_t> i0(n_out), i1(n_out);
        py::array_t<float> l1(n_out);
        for (int64_t d = 0; d < n_out; ++d) {
          const px::AxisTap t = px::bilinear_source(static_cast<int>(d), static_cast<int>(n_in),
                                                    static_cast<int>(n_out), align_corners);
          i0.mutable_at(d) = t.i0;
          i1.mutable_at(d) = t.i1;
          l1.mutable_at(d) = t.l1;
        }
        return py::make_tuple(i0, i1, l1);
      },
      "n_in"_a, "n_out"_a, "align_corners"_a, "(i0, i1, weight of i1) per output position (bilinear_source).");
  sub.def(
      "reflect_index",
      [](py::array_t<int64_t, py::array::c_style | py::array::forcecast> i, int64_t n) {
        if (n <= 0 || n > px::kMaxSide) throw ShapeError("reflect_index: n must be in [1, kMaxSide]");
        py::array_t<int64_t> out(i.size());
        for (py::ssize_t k = 0; k < i.size(); ++k) {
          const int64_t v = i.data()[k];
          if (v < -n - px::kMaxRadius || v >= n + px::kMaxRadius)
            throw ShapeError("reflect_index: offsets must be within the radius bound");
          out.mutable_at(k) = px::reflect_index(static_cast<int>(v), static_cast<int>(n));
        }
        return out;
      },
      "i"_a, "n"_a, "Half-sample symmetric reflection of each offset into [0, n).");
  sub.def(
      "gaussian_taps", [](double sigma) { return edgeuad::gaussian_kernel1d(sigma); }, "sigma"_a,
      "Normalised taps (float64) given to both the CPU blur and the CUDA kernels; ValueError on a bad sigma.");
  sub.def(
      "cos_distance",
      [](py::handle a_obj, py::handle b_obj) {
        py::array a = as_ndarray(a_obj, "a"), b = as_ndarray(b_obj, "b");
        const DType ta = float_dtype(a, "a"), tb = float_dtype(b, "b");
        if (a.ndim() != 2 || shape_of(a) != shape_of(b)) throw ShapeError("a and b must both be (N, C)");
        const int64_t n = a.shape(0), c = a.shape(1);
        py::array_t<float> out(n);
        for (int64_t i = 0; i < n; ++i) {
          float dot = 0.f, na = 0.f, nb = 0.f;
          for (int64_t k = 0; k < c; ++k) {
            const float x = ta == DType::F32 ? px::load_value(static_cast<const float*>(a.data()), i * c + k)
                                             : px::load_value(static_cast<const uint16_t*>(a.data()), i * c + k);
            const float y = tb == DType::F32 ? px::load_value(static_cast<const float*>(b.data()), i * c + k)
                                             : px::load_value(static_cast<const uint16_t*>(b.data()), i * c + k);
            px::cos_accumulate(x, y, dot, na, nb);
          }
          out.mutable_at(i) = px::cos_distance(dot, na, nb);
        }
        return out;
      },
      "a"_a, "b"_a, "1 - cos per row of (N, C) float32/float16 arrays (load_value, cos_accumulate, cos_distance).");
  sub.def(
      "lerp", [](float a, float b, float l) { return px::lerp(a, b, l); }, "a"_a, "b"_a, "l"_a);
  sub.def(
      "float_key",
      [](py::array_t<float, py::array::c_style | py::array::forcecast> v) {
        py::array_t<uint32_t> out(v.size());
        py::array_t<float> back(v.size());
        for (py::ssize_t k = 0; k < v.size(); ++k) {
          out.mutable_at(k) = px::float_key(v.data()[k]);
          back.mutable_at(k) = px::key_to_float(out.at(k));
        }
        return py::make_tuple(out, back);
      },
      "values"_a, "(order-preserving uint32 keys, the floats decoded back from them) used by the GPU top-k.");
}

}  // namespace

PYBIND11_MODULE(_rt, m) {
  m.doc() = "edgeuad compiled runtime: fused anomaly maps (CPU, CUDA) and the HNSW memory bank";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const edgeuad::ShapeError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const edgeuad::DTypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const edgeuad::IOError& e) {
      PyErr_SetString(PyExc_OSError, e.what());
    } catch (const edgeuad::CudaError& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

  m.def("exact_kernel", [] { return std::string(edgeuad::detail::exact_kernel_name()); },
        "The memory bank's exact-search micro-kernel in this process: 'avx512bf16-6x32' (bf16 candidates, exact "
        "re-rank; EDGEUAD_RT_NO_BF16=1 turns it off), 'avx512-6x32', 'avx2-6x16' or 'portable-4x8'.");
  m.def(
      "flops_probe",
      [](const std::string& kind, double seconds) {
        py::gil_scoped_release release;
        return edgeuad::flops_probe(kind, seconds);
      },
      py::arg("kind"), py::arg("seconds") = 0.2,
      "GFLOP/s of one thread running the exact-search tiles' instruction alone (12 register-only chains): "
      "kind 'avx512' (512-bit FMA), 'bf16' (vdpbf16ps) or 'avx2' (256-bit FMA); the measured peak the bank "
      "benchmark compares its tiles with (a VM reports its base clock, not its boost). ValueError for a kind "
      "this CPU cannot run.");
  m.def("has_cuda", &edgeuad::cuda::has_cuda, "True when this build contains the CUDA kernels.");
  m.def("cuda_device_count", &edgeuad::cuda::device_count,
        "Usable CUDA devices; 0 without CUDA, driver or device, or when the CUDA runtime fails to start "
        "(cuda_status()['error'] says why). Never raises.");
  m.def(
      "cuda_status",
      []() {
        const edgeuad::cuda::Status st = edgeuad::cuda::status();
        return py::dict("built_with_cuda"_a = st.built_with_cuda, "device_count"_a = st.device_count,
                        "runtime_version"_a = st.runtime_version, "driver_version"_a = st.driver_version,
                        "error"_a = st.error);
      },
      "CUDA runtime status: device_count, runtime_version and driver_version (1000*major + 10*minor, 0 = "
      "unknown) and error: the CUDA error text when cudaGetDeviceCount failed (e.g. cudaErrorInsufficientDriver: "
      "the driver is older than this build's static CUDA runtime), else ''.");
  m.def(
      "build_info",
      []() {
        return py::dict("cuda"_a = edgeuad::cuda::has_cuda(), "cuda_archs"_a = std::string(EDGEUAD_CUDA_ARCHS_STR),
                        "openmp"_a = _OPENMP, "omp_max_threads"_a = omp_get_max_threads(),
                        "hnswlib"_a = "system headers", "sanitize"_a = std::string(EDGEUAD_SANITIZE_STR));
      },
      "Build configuration of the compiled runtime.");

  m.def("cos_map", &cos_map_py, "pairs"_a, "out_size"_a, "weights"_a = py::none(), "align_corners"_a = true,
        "sigma"_a = 4.0, "topk_frac"_a = 0.01, "threads"_a = 0,
        R"doc(Fused anomaly map from feature pairs (CPU).

pairs: list of (a, b) numpy arrays, each B x C_l x H_l x W_l, float32 or float16, C-contiguous.
Returns (map (B, H, W) float32, max (B,) float32, topk_mean (B,) float32) where
map = blur_sigma(sum_l w_l * upsample(1 - cos_c(a_l, b_l), out_size)).)doc");
  m.def("l2_map", &l2_map_py, "dist"_a, "out_size"_a, "align_corners"_a = true, "sigma"_a = 4.0,
        "topk_frac"_a = 0.01, "threads"_a = 0,
        "Single-level map: upsample a (B, h, w) distance map, blur, score. Returns (map, max, topk_mean).");
  m.def("cos_map_cuda", &cos_map_cuda_py, "pairs"_a, "out"_a, "out_size"_a, "weights"_a = py::none(),
        "align_corners"_a = true, "sigma"_a = 4.0, "stream"_a = 0, "max_out"_a = py::none(),
        "topk_out"_a = py::none(), "topk_frac"_a = 0.01,
        R"doc(CUDA twin of cos_map, asynchronous on `stream`.

pairs, out, max_out, topk_out expose __cuda_array_interface__ (torch CUDA tensors, cupy, pycuda GPUArray).
Writes out (B, H, W) float32 and, when given, max_out / topk_out (B,) float32 (the image scores, computed on
the GPU). The work waits for every array's v3 'stream'. stream: int cudaStream_t (0 = legacy default) or a
stream object (torch, cupy, pycuda, cuda-python, __cuda_stream__).)doc");
  m.def("l2_map_cuda", &l2_map_cuda_py, "dist"_a, "out"_a, "out_size"_a, "align_corners"_a = true,
        "sigma"_a = 4.0, "stream"_a = 0, "max_out"_a = py::none(), "topk_out"_a = py::none(), "topk_frac"_a = 0.01,
        "CUDA twin of l2_map (map and optional scores, asynchronous on `stream`); arguments as cos_map_cuda.");
  m.def("emulate_cuda_cos_map", &emulate_cos_map_py, "pairs"_a, "out_size"_a, "weights"_a = py::none(),
        "align_corners"_a = true, "sigma"_a = 4.0, "topk_frac"_a = 0.01,
        "The CUDA kernels of cos_map_cuda run on the CPU (same kernel bodies, plan and launch sequence; numpy "
        "in and out, one thread, slow): for tests on machines without a GPU. Returns (map, max, topk_mean).");
  m.def("emulate_cuda_l2_map", &emulate_l2_map_py, "dist"_a, "out_size"_a, "align_corners"_a = true,
        "sigma"_a = 4.0, "topk_frac"_a = 0.01, "CPU emulation of l2_map_cuda's kernels (tests).");
  add_pixel_module(m);

  py::class_<DeviceArray>(m, "DeviceArray",
                          "float32/float16 array in CUDA device memory (cudaMalloc) exposing "
                          "__cuda_array_interface__; synchronous copies. For tests and tools without torch/cupy.")
      .def_static("from_host", &DeviceArray::from_host, "array"_a, "Copy a C-contiguous numpy array to the device.")
      .def_static("empty", &DeviceArray::empty, "shape"_a, "dtype"_a = "float32")
      .def("to_host", &DeviceArray::to_host, "Copy back to a new numpy array (synchronous).")
      .def_property_readonly("__cuda_array_interface__", &DeviceArray::cai)
      .def_property_readonly("shape", [](const DeviceArray& a) { return a.shape(); })
      .def_property_readonly("ptr", &DeviceArray::ptr);
  m.def("cuda_synchronize", &edgeuad::cuda::device_synchronize, "cudaDeviceSynchronize (CUDA builds).");
  py::class_<DeviceBank>(m, "DeviceBank",
                         "Memory-bank features (and the Eq. 10 neighbour table) on the GPU for exact patch scores.")
      .def(py::init<py::handle, py::handle>(), "features"_a, "neighbor_table"_a = py::none())
      .def("patch_scores", &DeviceBank::patch_scores, "queries"_a, "out"_a, "b"_a = 0, "stream"_a = 0,
           "Exact patch scores of device queries (..., D) float32 into device out (one float per query), "
           "asynchronous on `stream`: b=0 nearest distance, b>=2 Eq. 10 reweighted (as Bank.search_patch_scores).")
      .def_property_readonly("size", &DeviceBank::n)
      .def_property_readonly("dim", &DeviceBank::dim)
      .def_property_readonly("neighbor_b", &DeviceBank::b);
  m.def("emulate_cuda_patch_scores", &emulate_patch_scores_py, "features"_a, "neighbor_table"_a, "queries"_a,
        "b"_a = 0, "The GPU patch-score kernels run on the CPU (tests): (Q,) float32.");

  py::class_<MemoryBank>(m, "MemoryBank", "HNSW + exact memory bank of patch features (float32).")
      .def(py::init<int64_t, int64_t, int64_t, uint64_t>(), "dim"_a, "M"_a = edgeuad::kDefaultM, "ef_construction"_a = edgeuad::kDefaultEfConstruction,
           "seed"_a = 0)
      .def(
          "add",
          [](MemoryBank& self, py::handle features, int threads) {
            py::array a = bank_rows(self, features, "features");
            const float* p = static_cast<const float*>(a.data());
            const int64_t n = a.shape(0);
            py::gil_scoped_release release;
            self.add(p, n, threads);
          },
          "features"_a, "threads"_a = 0,
          "Append (N, dim) float32 features and insert them into the HNSW graph (threads=1: deterministic).")
      .def("search", &bank_search, "queries"_a, "k"_a = 1, "exact"_a = false, "ef"_a = 64, "threads"_a = 0,
           "k-NN: returns (distances (Q, k) float32 Euclidean ascending, indices (Q, k) int64).")
      .def("search_reweighted", &bank_search_reweighted, "queries"_a, "b"_a = 9, "exact"_a = false, "ef"_a = 64,
           "threads"_a = 0,
           "PatchCore / ReConPatch Eq. 10 reweighted scores: returns (scores (Q,) float32, nn_index (Q,) int64).")
      .def(
          "build_neighbor_table",
          [](MemoryBank& self, int64_t b, bool exact, int64_t ef, int threads) {
            py::gil_scoped_release release;
            self.build_neighbor_table(b, exact, ef, threads);
          },
          "b"_a, "exact"_a = false, "ef"_a = 64, "threads"_a = 0,
          "Precompute N_b (self + b-1 nearest bank items) for search_reweighted.")
      .def(
          "save",
          [](const MemoryBank& self, py::handle path) {
            const std::string p = fspath(path);
            py::gil_scoped_release release;
            self.save(p);
          },
          "path"_a, "Write the bank atomically (temp file + rename).")
      .def_static(
          "load",
          [](py::handle path) {
            const std::string p = fspath(path);
            py::gil_scoped_release release;
            return MemoryBank::load(p);
          },
          "path"_a, "Read a bank written by save(); OSError on missing, truncated or corrupted files.")
      .def("__len__", [](const MemoryBank& self) { return self.size(); })
      .def_property_readonly("dim", &MemoryBank::dim)
      .def_property_readonly("M", [](const MemoryBank& self) { return self.info().M; })
      .def_property_readonly("ef_construction", [](const MemoryBank& self) { return self.info().ef_construction; })
      .def_property_readonly("seed", [](const MemoryBank& self) { return self.info().seed; })
      .def_property_readonly("neighbor_b", [](const MemoryBank& self) { return self.info().neighbor_b; },
                             "b of the neighbour table (0: none built)")
      .def_property(
          "exact_prune", &MemoryBank::exact_prune,
          &MemoryBank::set_exact_prune,
          "Exact searches prune with a certified lower bound where it pays (default True); False: always the "
          "full search.  Both give the same neighbours.  Where exact_bf16 is on the prune is not used (the bf16 "
          "full search is faster).")
      .def_property(
          "exact_bf16", &MemoryBank::exact_bf16, &MemoryBank::set_exact_bf16,
          "Exact searches rank rows by a certified lower bound from bf16 dot products (AVX512_BF16), then re-rank "
          "the kept rows exactly: same neighbours and distances as the float32 search, ~1.5x faster.  Reads False "
          "where the CPU lacks AVX512_BF16 or EDGEUAD_RT_NO_BF16=1, and on a bank where a quarter of 4096 or more "
          "queries needed the float32 search again (exact_stats()['bf16_gave_up']; add() or setting it True "
          "starts a new trial); set False for the float32 tile.")
      .def(
          "exact_stats",
          [](const MemoryBank& self) {
            edgeuad::ExactStats st;
            {
              py::gil_scoped_release release;  // may build the prune index (a covariance of the bank)
              st = self.exact_stats();
            }
            py::dict d;
            d["prune_enabled"] = st.prune_enabled;
            d["bf16"] = st.bf16;
            d["bf16_gave_up"] = st.bf16_gave_up;
            d["prune_dims"] = st.prune_dims;
            d["energy"] = st.energy;
            d["queries"] = st.queries;
            d["full_queries"] = st.full_queries;
            d["direct_queries"] = st.direct_queries;
            d["second_pass_queries"] = st.second_pass_queries;
            d["refined_queries"] = st.refined_queries;
            return d;
          },
          "How exact searches ran: whether candidates come from the bf16 tile (bf16; the prune is off then), the "
          "lower-bound prune's subspace dims (0: off for this bank), the variance share inside it, and exact-search "
          "queries so far / of which searched in full / of those answered by direct differences over every row "
          "(the rounding certificate of the full search failed) / bf16 candidates whose first pass did not certify "
          "the answer, given a threshold pass (second_pass_queries) / of those, searched again in float32 "
          "(refined_queries).")
      .def(
          "features",
          [](const MemoryBank& self) {
            std::vector<float> f;
            {
              py::gil_scoped_release release;
              f = self.features();
            }
            const int64_t d = self.dim(), n = static_cast<int64_t>(f.size()) / d;
            py::array_t<float> out({n, d});
            if (!f.empty()) std::memcpy(out.mutable_data(), f.data(), f.size() * sizeof(float));
            return out;
          },
          "Copy of the stored features, (N, dim) float32.")
      .def(
          "neighbor_table",
          [](const MemoryBank& self) -> py::object {
            const edgeuad::BankInfo info = self.info();
            std::vector<int32_t> t = self.neighbor_table();
            if (info.neighbor_b == 0 || t.size() != static_cast<size_t>(info.size * info.neighbor_b))
              return py::none();
            py::array_t<int32_t> out({info.size, info.neighbor_b});
            std::memcpy(out.mutable_data(), t.data(), t.size() * sizeof(int32_t));
            return std::move(out);
          },
          "Copy of the (N, b) int32 neighbour table, or None.")
      .def("__repr__", [](const MemoryBank& self) {
        const edgeuad::BankInfo i = self.info();
        return "MemoryBank(dim=" + std::to_string(i.dim) + ", size=" + std::to_string(i.size) +
               ", M=" + std::to_string(i.M) + ", ef_construction=" + std::to_string(i.ef_construction) + ")";
      });
}
