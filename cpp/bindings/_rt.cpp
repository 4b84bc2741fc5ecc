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
#include <string>
#include <vector>

#include "edgeuad/bank.hpp"
#include "edgeuad/bank_exact.hpp"
#include "edgeuad/errors.hpp"
#include "edgeuad/maps.hpp"
#include "edgeuad/maps_cuda.hpp"

namespace py = pybind11;
using namespace pybind11::literals;
using edgeuad::DType;
using edgeuad::DTypeError;
using edgeuad::ShapeError;

#ifndef EDGEUAD_CUDA_ARCHS_STR
#define EDGEUAD_CUDA_ARCHS_STR ""
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

py::tuple cos_map_py(py::handle pairs, py::handle out_size, py::handle weights, bool align_corners,
                     double sigma, double topk_frac, int threads) {
  const std::vector<py::object> keep = parse_pairs(pairs);  // owns the arrays during the call
  const size_t num_levels = keep.size() / 2;
  const auto [H, W] = parse_out_size(out_size);
  const std::vector<float> w = parse_weights(weights, num_levels);
  std::vector<py::array> arrays;
  std::vector<edgeuad::MapLevel> levels(num_levels);
  int64_t batch = -1;
  for (size_t l = 0; l < num_levels; ++l) {
    const std::string lv = "level " + std::to_string(l);
    py::array a = as_ndarray(keep[2 * l], lv + ": a (pairs[" + std::to_string(l) + "][0])");
    py::array b = as_ndarray(keep[2 * l + 1], lv + ": b (pairs[" + std::to_string(l) + "][1])");
    edgeuad::MapLevel& L = levels[l];
    L.a_dtype = float_dtype(a, lv + ": a");
    L.b_dtype = float_dtype(b, lv + ": b");
    if (a.ndim() != 4 || b.ndim() != 4)
      throw ShapeError(lv + ": a and b must be 4-D (B, C, H, W), got shapes " + shape_str(shape_of(a)) +
                       " and " + shape_str(shape_of(b)));
    if (shape_of(a) != shape_of(b))
      throw ShapeError(lv + ": a and b shapes differ: " + shape_str(shape_of(a)) + " vs " + shape_str(shape_of(b)));
    if (batch < 0) batch = a.shape(0);
    if (a.shape(0) != batch)
      throw ShapeError(lv + ": batch size " + std::to_string(a.shape(0)) + " differs from level 0's " +
                       std::to_string(batch));
    if (a.size() == 0) throw ShapeError(lv + ": arrays must not be empty, got shape " + shape_str(shape_of(a)));
    L.a = a.data();
    L.b = b.data();
    L.C = a.shape(1);
    L.H = a.shape(2);
    L.W = a.shape(3);
    L.weight = w[l];
    arrays.push_back(a);
    arrays.push_back(b);
  }
  edgeuad::MapParams p;
  p.out_h = H;
  p.out_w = W;
  p.align_corners = align_corners;
  p.sigma = sigma;
  p.topk_frac = topk_frac;
  p.threads = threads;
  edgeuad::validate_map_params(p);
  float *map, *mx, *tk;
  py::tuple out = map_outputs(batch, H, W, &map, &mx, &tk);
  {
    py::gil_scoped_release release;
    edgeuad::cos_map_cpu(levels.data(), static_cast<int>(levels.size()), batch, p, map, mx, tk);
  }
  return out;
}

py::tuple l2_map_py(py::handle dist, py::handle out_size, bool align_corners, double sigma, double topk_frac,
                    int threads) {
  py::array d = as_ndarray(dist, "dist");
  const DType t = float_dtype(d, "dist");
  if (d.ndim() != 3) throw ShapeError("dist must be 3-D (B, h, w), got shape " + shape_str(shape_of(d)));
  if (d.size() == 0) throw ShapeError("dist must not be empty, got shape " + shape_str(shape_of(d)));
  const auto [H, W] = parse_out_size(out_size);
  edgeuad::MapParams p;
  p.out_h = H;
  p.out_w = W;
  p.align_corners = align_corners;
  p.sigma = sigma;
  p.topk_frac = topk_frac;
  p.threads = threads;
  edgeuad::validate_map_params(p);
  float *map, *mx, *tk;
  const int64_t B = d.shape(0);
  py::tuple out = map_outputs(B, H, W, &map, &mx, &tk);
  {
    py::gil_scoped_release release;
    edgeuad::l2_map_cpu(d.data(), t, B, d.shape(1), d.shape(2), p, map, mx, tk);
  }
  return out;
}

// ---- CUDA: objects exposing __cuda_array_interface__ (cupy, torch CUDA tensors, pycuda) ----

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
  if (d.contains("stream") && !d["stream"].is_none()) c.stream = d["stream"].cast<uintptr_t>();
  return c;
}

uintptr_t parse_stream(py::handle stream) {
  if (py::isinstance<py::int_>(stream)) return stream.cast<uintptr_t>();
  if (py::hasattr(stream, "cuda_stream")) return stream.attr("cuda_stream").cast<uintptr_t>();  // torch
  if (py::hasattr(stream, "ptr")) return stream.attr("ptr").cast<uintptr_t>();                  // cupy
  throw DTypeError("stream must be an int cudaStream_t handle, a torch.cuda.Stream or a cupy Stream");
}

void check_cuda_out(const CudaArray& o, int64_t B, int64_t H, int64_t W) {
  if (o.dtype != DType::F32) throw DTypeError("out must be float32");
  if (o.readonly) throw ShapeError("out is read-only");
  if (o.shape != std::vector<int64_t>{B, H, W})
    throw ShapeError("out must have shape " + shape_str({B, H, W}) + ", got " + shape_str(o.shape));
  if (B * H * W >= (int64_t{1} << 31)) throw ShapeError("out is too large (B*H*W must be < 2^31)");
}

void cos_map_cuda_py(py::handle pairs, py::handle out, py::handle out_size, py::handle weights,
                     bool align_corners, double sigma, py::handle stream) {
  if (!edgeuad::cuda::has_cuda()) edgeuad::cuda::run_cos_map({}, 0, 0, 0, true, 0.0, nullptr, 0, {});  // throws
  const std::vector<py::object> keep = parse_pairs(pairs);  // owns the arrays during the call
  const size_t num_levels = keep.size() / 2;
  const auto [H, W] = parse_out_size(out_size);
  const std::vector<float> w = parse_weights(weights, num_levels);
  std::vector<edgeuad::cuda::DeviceLevel> levels(num_levels);
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
    for (int64_t s : a.shape)
      if (s <= 0 || s >= (int64_t{1} << 31)) throw ShapeError(lv + ": bad shape " + shape_str(a.shape));
    edgeuad::cuda::DeviceLevel& L = levels[l];
    L.a = reinterpret_cast<const void*>(a.ptr);
    L.b = reinterpret_cast<const void*>(b.ptr);
    L.a_dtype = a.dtype;
    L.b_dtype = b.dtype;
    L.C = static_cast<int>(a.shape[1]);
    L.H = static_cast<int>(a.shape[2]);
    L.W = static_cast<int>(a.shape[3]);
    L.weight = w[l];
    producers.push_back(a.stream);
    producers.push_back(b.stream);
  }
  CudaArray o = parse_cai(out, "out");
  check_cuda_out(o, batch, H, W);
  const uintptr_t s = parse_stream(stream);
  py::gil_scoped_release release;
  edgeuad::cuda::run_cos_map(levels, static_cast<int>(batch), static_cast<int>(H), static_cast<int>(W),
                             align_corners, sigma, reinterpret_cast<float*>(o.ptr), s, producers);
}

void l2_map_cuda_py(py::handle dist, py::handle out, py::handle out_size, bool align_corners, double sigma,
                    py::handle stream) {
  if (!edgeuad::cuda::has_cuda()) edgeuad::cuda::run_l2_map(nullptr, DType::F32, 0, 0, 0, 0, 0, true, 0.0, nullptr, 0, {});
  CudaArray d = parse_cai(dist, "dist");
  if (d.shape.size() != 3) throw ShapeError("dist must be 3-D (B, h, w), got shape " + shape_str(d.shape));
  for (int64_t s : d.shape)
    if (s <= 0 || s >= (int64_t{1} << 31)) throw ShapeError("dist: bad shape " + shape_str(d.shape));
  const auto [H, W] = parse_out_size(out_size);
  CudaArray o = parse_cai(out, "out");
  check_cuda_out(o, d.shape[0], H, W);
  const uintptr_t s = parse_stream(stream);
  py::gil_scoped_release release;
  edgeuad::cuda::run_l2_map(reinterpret_cast<const void*>(d.ptr), d.dtype, static_cast<int>(d.shape[0]),
                            static_cast<int>(d.shape[1]), static_cast<int>(d.shape[2]), static_cast<int>(H),
                            static_cast<int>(W), align_corners, sigma, reinterpret_cast<float*>(o.ptr), s,
                            {d.stream});
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
        "The memory bank's exact-search micro-kernel in this process: 'avx2-6x16' or 'portable-4x8'.");
  m.def("has_cuda", &edgeuad::cuda::has_cuda, "True when this build contains the CUDA kernels.");
  m.def("cuda_device_count", &edgeuad::cuda::device_count,
        "Visible CUDA devices; 0 without CUDA, driver or device (never raises).");
  m.def(
      "build_info",
      []() {
        return py::dict("cuda"_a = edgeuad::cuda::has_cuda(), "cuda_archs"_a = std::string(EDGEUAD_CUDA_ARCHS_STR),
                        "openmp"_a = _OPENMP, "omp_max_threads"_a = omp_get_max_threads(),
                        "hnswlib"_a = "system headers");
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
        "align_corners"_a = true, "sigma"_a = 4.0, "stream"_a = 0,
        "CUDA twin of cos_map: inputs/out expose __cuda_array_interface__; writes out (B, H, W) float32 on "
        "`stream` (asynchronous). Scores are not computed on the GPU.");
  m.def("l2_map_cuda", &l2_map_cuda_py, "dist"_a, "out"_a, "out_size"_a, "align_corners"_a = true,
        "sigma"_a = 4.0, "stream"_a = 0, "CUDA twin of l2_map (map only, asynchronous on `stream`).");

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
