// CUDA kernels of the fused anomaly map (twin of maps_cpu.cpp, same semantics).
//
// Kept deliberately small (no cuda_fp16.h, no templates over dtype) because it
// is compiled once per architecture and CI has 2 cores.  Pipeline on `stream`:
//   cos_small:  per level, w_l * (1 - cos) at the level resolution -> scratch
//   upsample:   sum over levels of the bilinear upsampling          -> out
//   blur_h:     horizontal Gaussian, out -> scratch (full size)
//   blur_v:     vertical Gaussian, scratch -> out
#include <cuda_runtime_api.h>

#include <cmath>
#include <string>

#include "edgeuad/cuda_check.hpp"
#include "edgeuad/errors.hpp"
#include "edgeuad/maps.hpp"
#include "edgeuad/maps_cuda.hpp"

namespace edgeuad {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxRadius = 4096;  // (2r+2) floats of shared memory per block

struct LevelsParam {
  DeviceLevel lv[kMaxLevels];
  long long offset[kMaxLevels + 1];  // start of each level's small map in scratch
  int num_levels;
  int batch;
};

__device__ __forceinline__ float load_elem(const void* base, DType t, long long i) {
  if (t == DType::F32) return static_cast<const float*>(base)[i];
  unsigned short h = static_cast<const unsigned short*>(base)[i];
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

__global__ void cos_small_kernel(LevelsParam P, float* __restrict__ small) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i >= P.offset[P.num_levels]) return;
  int l = 0;
  while (i >= P.offset[l + 1]) ++l;
  const DeviceLevel& L = P.lv[l];
  const long long j = i - P.offset[l];
  const long long hw = static_cast<long long>(L.H) * L.W;
  const long long b = j / hw, p = j % hw;
  const long long base = b * L.C * hw + p;
  float dot = 0.f, na = 0.f, nb = 0.f;
  for (int c = 0; c < L.C; ++c) {  // consecutive threads read consecutive pixels: coalesced
    const float x = load_elem(L.a, L.a_dtype, base + c * hw);
    const float y = load_elem(L.b, L.b_dtype, base + c * hw);
    dot = fmaf(x, y, dot);
    na = fmaf(x, x, na);
    nb = fmaf(y, y, nb);
  }
  const float den = fmaxf(sqrtf(na), 1e-8f) * fmaxf(sqrtf(nb), 1e-8f);
  small[i] = L.weight * (1.0f - dot / den);
}

// torch's bilinear source index (area_pixel_compute_source_index + guard_index_and_lambda).
__device__ __forceinline__ void source_index(int dst, int in, int out, bool align, int& i0, int& i1,
                                             float& l1) {
  if (in == out) {
    i0 = i1 = dst;
    l1 = 0.f;
    return;
  }
  float src;
  if (align) {
    const float scale = out > 1 ? static_cast<float>(in - 1) / static_cast<float>(out - 1) : 0.f;
    src = scale * static_cast<float>(dst);
  } else {
    const float scale = static_cast<float>(in) / static_cast<float>(out);
    src = fmaxf(scale * (static_cast<float>(dst) + 0.5f) - 0.5f, 0.f);
  }
  i0 = min(static_cast<int>(floorf(src)), in - 1);
  l1 = fminf(fmaxf(src - static_cast<float>(i0), 0.f), 1.f);
  i1 = i0 + (i0 < in - 1 ? 1 : 0);
}

// Each level's small map lives at small + offset[l], shape batch x H_l x W_l.
// `small` is float32 scratch for cos_map, or the caller's float32/float16 dist for l2_map.
__global__ void upsample_kernel(LevelsParam P, const void* __restrict__ small, DType st, int H, int W,
                                bool align, float* __restrict__ out) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<long long>(P.batch) * H * W) return;
  const int x = static_cast<int>(i % W);
  const int y = static_cast<int>((i / W) % H);
  const int b = static_cast<int>(i / (static_cast<long long>(W) * H));
  float acc = 0.f;
  for (int l = 0; l < P.num_levels; ++l) {
    const int h = P.lv[l].H, w = P.lv[l].W;
    int y0, y1, x0, x1;
    float ly, lx;
    source_index(y, h, H, align, y0, y1, ly);
    source_index(x, w, W, align, x0, x1, lx);
    const long long s = P.offset[l] + static_cast<long long>(b) * h * w;
    const float top = (1.f - lx) * load_elem(small, st, s + y0 * w + x0) + lx * load_elem(small, st, s + y0 * w + x1);
    const float bot = (1.f - lx) * load_elem(small, st, s + y1 * w + x0) + lx * load_elem(small, st, s + y1 * w + x1);
    acc += (1.f - ly) * top + ly * bot;
  }
  out[i] = acc;
}

__device__ __forceinline__ int reflect_index(int i, int n) {
  const int period = 2 * n;
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - 1 - i;
}

// One pass of the separable blur; `vertical` picks the axis.  Taps are built per
// block in shared memory (no __constant__ state: concurrent streams stay
// independent); taps[2r+1] holds the normalisation 1/sum.
__global__ void blur_kernel(const float* __restrict__ src, float* __restrict__ dst, int batch, int H,
                            int W, int r, float sigma, bool vertical) {
  extern __shared__ float taps[];
  for (int t = threadIdx.x; t <= 2 * r; t += blockDim.x) {
    const float u = static_cast<float>(t - r) / sigma;
    taps[t] = expf(-0.5f * u * u);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.f;
    for (int t = 0; t <= 2 * r; ++t) sum += taps[t];
    taps[2 * r + 1] = 1.f / sum;
  }
  __syncthreads();
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<long long>(batch) * H * W) return;
  const int x = static_cast<int>(i % W);
  const int y = static_cast<int>((i / W) % H);
  const float* plane = src + (i - (static_cast<long long>(y) * W + x));
  float acc = 0.f;
  if (vertical) {
    for (int k = -r; k <= r; ++k) acc += taps[k + r] * plane[static_cast<long long>(reflect_index(y + k, H)) * W + x];
  } else {
    const float* row = plane + static_cast<long long>(y) * W;
    for (int k = -r; k <= r; ++k) acc += taps[k + r] * row[reflect_index(x + k, W)];
  }
  dst[i] = acc * taps[2 * r + 1];
}

unsigned grid_for(long long n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

void check_out(int batch, int out_h, int out_w, double sigma) {
  if (batch <= 0) throw ShapeError("batch size must be > 0");
  if (out_h <= 0 || out_w <= 0) throw ShapeError("out_size must be two positive ints");
  if (!std::isfinite(sigma) || sigma < 0.0) throw ShapeError("sigma must be finite and >= 0");
  if (gaussian_radius(sigma) > kMaxRadius) throw ShapeError("sigma too large for the CUDA blur");
  if (static_cast<long long>(batch) * out_h * out_w >= (1LL << 31))
    throw ShapeError("output too large (B*H*W must be < 2^31)");
}

LevelsParam make_levels(const DeviceLevel* levels, int num_levels, int batch) {
  if (num_levels <= 0) throw ShapeError("pairs is empty: need at least one (a, b) feature pair");
  if (num_levels > kMaxLevels)
    throw ShapeError("at most " + std::to_string(kMaxLevels) + " levels are supported on CUDA");
  LevelsParam P{};
  P.num_levels = num_levels;
  P.batch = batch;
  P.offset[0] = 0;
  for (int l = 0; l < num_levels; ++l) {
    const DeviceLevel& L = levels[l];
    if (L.C <= 0 || L.H <= 0 || L.W <= 0) throw ShapeError("level " + std::to_string(l) + ": C, H, W must be > 0");
    if (!L.a || !L.b) throw ShapeError("level " + std::to_string(l) + ": null device pointer");
    P.lv[l] = L;
    P.offset[l + 1] = P.offset[l] + static_cast<long long>(batch) * L.H * L.W;
  }
  return P;
}

// Upsampled map is in `out`; blur it in place through the full-size scratch.
void launch_blur(float* out, float* full, int batch, int H, int W, double sigma, stream_t stream) {
  const int r = gaussian_radius(sigma);
  if (r == 0) return;
  const long long n = static_cast<long long>(batch) * H * W;
  const size_t shm = (2 * r + 2) * sizeof(float);
  blur_kernel<<<grid_for(n), kThreads, shm, stream>>>(out, full, batch, H, W, r, static_cast<float>(sigma), false);
  CUDA_CHECK(cudaGetLastError());
  blur_kernel<<<grid_for(n), kThreads, shm, stream>>>(full, out, batch, H, W, r, static_cast<float>(sigma), true);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

size_t cos_map_scratch_floats(const DeviceLevel* levels, int num_levels, int batch, int out_h, int out_w,
                              double sigma) {
  const LevelsParam P = make_levels(levels, num_levels, batch);
  const size_t full = gaussian_radius(sigma) > 0 ? static_cast<size_t>(batch) * out_h * out_w : 0;
  return static_cast<size_t>(P.offset[num_levels]) + full;
}

size_t l2_map_scratch_floats(int batch, int h, int w, int out_h, int out_w, double sigma) {
  (void)h;
  (void)w;
  return gaussian_radius(sigma) > 0 ? static_cast<size_t>(batch) * out_h * out_w : 0;
}

void cos_map_cuda(const DeviceLevel* levels, int num_levels, int batch, int out_h, int out_w,
                  bool align_corners, double sigma, float* out, float* scratch, stream_t stream) {
  check_out(batch, out_h, out_w, sigma);
  const LevelsParam P = make_levels(levels, num_levels, batch);
  const long long n_small = P.offset[num_levels];
  cos_small_kernel<<<grid_for(n_small), kThreads, 0, stream>>>(P, scratch);
  CUDA_CHECK(cudaGetLastError());
  const long long n = static_cast<long long>(batch) * out_h * out_w;
  upsample_kernel<<<grid_for(n), kThreads, 0, stream>>>(P, scratch, DType::F32, out_h, out_w, align_corners, out);
  CUDA_CHECK(cudaGetLastError());
  launch_blur(out, scratch + n_small, batch, out_h, out_w, sigma, stream);
}

void l2_map_cuda(const void* dist, DType dtype, int batch, int h, int w, int out_h, int out_w,
                 bool align_corners, double sigma, float* out, float* scratch, stream_t stream) {
  check_out(batch, out_h, out_w, sigma);
  if (h <= 0 || w <= 0) throw ShapeError("dist must be B x h x w with all sizes > 0");
  if (!dist) throw ShapeError("dist: null device pointer");
  // The single-level map is "the level's small map" already: upsample it directly.
  LevelsParam P{};
  P.num_levels = 1;
  P.batch = batch;
  P.lv[0].H = h;
  P.lv[0].W = w;
  P.offset[0] = 0;
  P.offset[1] = static_cast<long long>(batch) * h * w;
  const long long n = static_cast<long long>(batch) * out_h * out_w;
  upsample_kernel<<<grid_for(n), kThreads, 0, stream>>>(P, dist, dtype, out_h, out_w, align_corners, out);
  CUDA_CHECK(cudaGetLastError());
  launch_blur(out, scratch, batch, out_h, out_w, sigma, stream);
}

}  // namespace cuda
}  // namespace edgeuad
