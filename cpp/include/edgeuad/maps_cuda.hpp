// CUDA twin of the fused anomaly map (same semantics as maps.hpp, no scores).
//
// The device API takes device pointers and a stream so that it chains after a
// TensorRT engine on the same stream without host synchronisation.  This header
// does not include CUDA headers: it compiles in CPU-only builds, where every
// function throws CudaError("edgeuad._rt was built without CUDA ...").
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "edgeuad/maps.hpp"

struct CUstream_st;  // same declaration as the CUDA runtime's cudaStream_t

namespace edgeuad {
namespace cuda {

using stream_t = CUstream_st*;  // == cudaStream_t

constexpr int kMaxLevels = 16;

// One (a, b) pair in device memory: both B x C x H x W, C-contiguous.
struct DeviceLevel {
  const void* a = nullptr;
  const void* b = nullptr;
  DType a_dtype = DType::F32;
  DType b_dtype = DType::F32;
  int C = 0, H = 0, W = 0;
  float weight = 1.0f;
};

// True when this build contains the CUDA kernels.
bool has_cuda() noexcept;
// Number of visible CUDA devices; 0 when CUDA is compiled out or no driver/device (never throws).
int device_count() noexcept;

// Floats of device scratch memory the launches below need.
size_t cos_map_scratch_floats(const DeviceLevel* levels, int num_levels, int batch, int out_h,
                              int out_w, double sigma);
size_t l2_map_scratch_floats(int batch, int h, int w, int out_h, int out_w, double sigma);

// Enqueue on `stream`: out (B x out_h x out_w, float32, device) = the fused map.
// `scratch` must hold cos_map_scratch_floats(...) floats.  Asynchronous; throws
// ShapeError on bad sizes and CudaError when a launch fails.
void cos_map_cuda(const DeviceLevel* levels, int num_levels, int batch, int out_h, int out_w,
                  bool align_corners, double sigma, float* out, float* scratch, stream_t stream);
void l2_map_cuda(const void* dist, DType dtype, int batch, int h, int w, int out_h, int out_w,
                 bool align_corners, double sigma, float* out, float* scratch, stream_t stream);

// Convenience used by the Python bindings: checks that every pointer is device
// memory (ShapeError otherwise), makes `stream` wait on the producers' streams
// (__cuda_array_interface__ v3 'stream' values: 1 legacy default, 2 per-thread,
// else a handle; 0 entries are ignored), allocates stream-ordered scratch and
// launches.  `stream` is a cudaStream_t handle as an integer (0 = legacy default).
void run_cos_map(const std::vector<DeviceLevel>& levels, int batch, int out_h, int out_w,
                 bool align_corners, double sigma, float* out, uintptr_t stream,
                 const std::vector<uintptr_t>& producer_streams);
void run_l2_map(const void* dist, DType dtype, int batch, int h, int w, int out_h, int out_w,
                bool align_corners, double sigma, float* out, uintptr_t stream,
                const std::vector<uintptr_t>& producer_streams);

}  // namespace cuda
}  // namespace edgeuad
