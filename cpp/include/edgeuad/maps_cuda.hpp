// CUDA twin of the fused anomaly map (same semantics as maps.hpp, scores included).
//
// The device API takes device pointers and a stream so that it chains after a
// TensorRT engine on the same stream without host synchronisation.  This header
// does not include CUDA headers: it compiles in CPU-only builds, where every
// function that needs CUDA throws CudaError("edgeuad._rt was built without CUDA ...").
// The kernels themselves are maps_kernels.hpp; emulate_* run them on the CPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "edgeuad/maps.hpp"

struct CUstream_st;  // same declaration as the CUDA runtime's cudaStream_t

namespace edgeuad {
namespace kern {
struct Plan;
struct Taps;
}  // namespace kern
namespace nnk {
struct NNParams;
}  // namespace nnk

namespace cuda {

using stream_t = CUstream_st*;  // == cudaStream_t

// True when this build contains the CUDA kernels.
bool has_cuda() noexcept;

// What the CUDA runtime says about this machine.  `error` is empty when
// cudaGetDeviceCount succeeded, else "cudaErrorInsufficientDriver: CUDA driver
// version is insufficient for CUDA runtime version" and the like: the reason a
// machine with a GPU reports 0 devices (e.g. a driver older than this build's
// static CUDA runtime).  Versions are CUDA's 1000*major + 10*minor (0 = unknown).
struct Status {
  bool built_with_cuda = false;
  int device_count = 0;
  int runtime_version = 0;
  int driver_version = 0;
  std::string error;
};
Status status();
// Number of usable CUDA devices; 0 when CUDA is compiled out or cudaGetDeviceCount
// fails (status().error says why).  Never throws.
int device_count() noexcept;

// Enqueue the whole pipeline on `stream` (a cudaStream_t handle as an integer, 0 =
// legacy default): the map into `out` (B x out_h x out_w float32, device) and, when
// max_out/topk_out are not null, the image scores (B floats each, device).  Checks
// that every pointer is device memory on the current device (ShapeError otherwise),
// makes `stream` wait for the producers' streams (__cuda_array_interface__ v3
// 'stream' values: 1 legacy default, 2 per-thread default, else a handle; 0 means
// "none given"), takes scratch from a per-device stream-ordered pool and launches.
// Asynchronous: nothing waits for the kernels.  Throws ShapeError on bad sizes
// (the CPU kernel's bounds, at most 16 levels, B*H*W < 2^31) and CudaError when a
// CUDA call fails.
void run_cos_map(const std::vector<MapLevel>& levels, int64_t batch, const MapParams& p, float* out,
                 float* max_out, float* topk_out, uintptr_t stream, const std::vector<uintptr_t>& producer_streams);
void run_l2_map(const void* dist, DType dtype, int64_t batch, int64_t h, int64_t w, const MapParams& p, float* out,
                float* max_out, float* topk_out, uintptr_t stream, const std::vector<uintptr_t>& producer_streams);

// Plain device memory for tests and tools (DeviceArray in the bindings): synchronous
// copies on the legacy default stream, CudaError on failure.
void* device_alloc(size_t bytes);
void device_free(void* p) noexcept;
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void device_synchronize();

// Launch a bound plan (maps_kernels.hpp) on a stream (maps_cuda.cu).
void launch_map(const kern::Plan& P, const kern::Taps& T, stream_t stream);

// Exact patch scores (nn_kernels.hpp): queries (nq x dim), bank (n x dim) and the neighbour table
// (n x b int32; null when b == 0) in device memory; scores (nq) written on `stream`.  b == 0: the plain
// nearest-neighbour distance; b >= 2: the Eq. 10 reweighted score.  ShapeError on bad sizes.
void check_patch_scores(int64_t nq, int64_t n, int64_t dim, int64_t b, bool has_table);
void run_patch_scores(const float* queries, int64_t nq, const float* bank, const int32_t* table, int64_t n,
                      int64_t dim, int64_t b, float* scores, uintptr_t stream,
                      const std::vector<uintptr_t>& producer_streams);
void launch_nn(const nnk::NNParams& P, stream_t stream);
// The same kernels on the CPU (tests), host pointers.
void emulate_patch_scores(const float* queries, int64_t nq, const float* bank, const int32_t* table, int64_t n,
                          int64_t dim, int64_t b, float* scores);

// The CUDA kernels run on the CPU (maps_emulate.cpp): host pointers, same plan, same
// kernel bodies, same launch sequence.  For tests; available in every build.
void emulate_cos_map(const MapLevel* levels, int num_levels, int64_t batch, const MapParams& p, float* map,
                     float* max_out, float* topk_out);
void emulate_l2_map(const void* dist, DType dtype, int64_t batch, int64_t h, int64_t w, const MapParams& p,
                    float* map, float* max_out, float* topk_out);

}  // namespace cuda
}  // namespace edgeuad
