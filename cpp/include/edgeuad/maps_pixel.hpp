// Per-pixel math of the fused anomaly map, shared by the CPU kernels (maps_cpu.cpp),
// the CUDA kernels (maps_kernels.hpp via maps_cuda.cu) and the CPU emulation of the
// CUDA kernels (maps_emulate.cpp).  One definition means the CPU tests exercise the
// arithmetic the GPU runs: cosine distance, bilinear source index and weight,
// lerp, half-sample-symmetric reflection, Gaussian taps, float16 loads and the
// order-preserving float key used by the GPU top-k.
//
// Everything here is header-only, free of the C++ standard library's non-constexpr
// parts (no std::vector, no exceptions), and compiles as plain C++ as well as CUDA.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define EDGEUAD_HD __host__ __device__ __forceinline__
#else
#define EDGEUAD_HD inline
#endif

namespace edgeuad {
namespace pixel {

// ---- bounds (docs/architecture.md, "Anomaly-map post-processing") --------------
// sigma <= 64 -> radius int(4*64 + 0.5) = 256: the taps fit a kernel parameter
// (257 floats) and a blur tile of 256 + 2*256 floats in shared memory.
constexpr double kMaxSigma = 64.0;
constexpr int kMaxRadius = 256;
// Output sides: reflect_index's 2*n stays far inside int32, and the GPU's 32-bit
// indices need B*H*W < 2^31 (checked separately with the batch).
constexpr int64_t kMaxSide = 16384;
// Feature levels (C*H*W per image, and any single side) for 32-bit indexing.
constexpr int64_t kMaxIndex = (int64_t{1} << 31) - 1;

// Radius int(4*sigma + 0.5) computed in 64 bits.  Callers validate sigma first
// (finite, 0 <= sigma <= kMaxSigma); the 64-bit arithmetic keeps an unvalidated
// huge sigma from wrapping to a negative int before that check sees it.
EDGEUAD_HD int64_t gaussian_radius64(double sigma) {
  return sigma > 0.0 ? static_cast<int64_t>(4.0 * sigma + 0.5) : 0;
}

// Unnormalised tap k of the Gaussian (normalisation happens once, on the host).
EDGEUAD_HD double gaussian_weight(int k, double sigma) {
  const double u = static_cast<double>(k) / sigma;
  return exp(-0.5 * u * u);
}

// scipy.ndimage 'reflect' (half-sample symmetric, = numpy pad 'symmetric') for any
// offset, including offsets beyond one period (kernel radius larger than the image).
// n <= kMaxSide and |i| < n + kMaxRadius keep every intermediate inside int32.
EDGEUAD_HD int reflect_index(int i, int n) {
  const int period = 2 * n;
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - 1 - i;
}

// One output position's bilinear source: rows/columns i0, i1 and the weight of i1,
// as torch's upsample_bilinear2d computes them (area_pixel_compute_source_index,
// guard_index_and_lambda).  in == out copies, like torch.
struct AxisTap {
  int i0;
  int i1;
  float l1;
};

EDGEUAD_HD AxisTap bilinear_source(int dst, int in, int out, bool align_corners) {
  AxisTap t;
  if (in == out) {
    t.i0 = t.i1 = dst;
    t.l1 = 0.0f;
    return t;
  }
  float src;
  if (align_corners) {
    const float scale = out > 1 ? static_cast<float>(in - 1) / static_cast<float>(out - 1) : 0.0f;
    src = scale * static_cast<float>(dst);
  } else {
    const float scale = static_cast<float>(in) / static_cast<float>(out);
    src = scale * (static_cast<float>(dst) + 0.5f) - 0.5f;
    src = src < 0.0f ? 0.0f : src;
  }
  int i0 = static_cast<int>(floorf(src));
  i0 = i0 < in - 1 ? i0 : in - 1;
  float lam = src - static_cast<float>(i0);
  lam = lam < 0.0f ? 0.0f : (lam > 1.0f ? 1.0f : lam);
  t.i0 = i0;
  t.i1 = i0 + (i0 < in - 1 ? 1 : 0);
  t.l1 = lam;
  return t;
}

// (1 - l) * a + l * b: the one interpolation step.  Both implementations interpolate
// rows first (v0 = lerp(row i0, row i1, ly) per source column), then columns.
EDGEUAD_HD float lerp(float a, float b, float l) { return (1.0f - l) * a + l * b; }

// Running sums of one pixel's cosine, channel by channel.
EDGEUAD_HD void cos_accumulate(float x, float y, float& dot, float& na, float& nb) {
  dot += x * y;
  na += x * x;
  nb += y * y;
}

// 1 - dot / (max(|a|, 1e-8) * max(|b|, 1e-8)).  Written with comparisons rather than
// fmaxf so that a NaN norm stays NaN (std::max semantics), as in the numpy reference.
EDGEUAD_HD float cos_distance(float dot, float na, float nb) {
  float sa = sqrtf(na), sb = sqrtf(nb);
  sa = sa < 1e-8f ? 1e-8f : sa;
  sb = sb < 1e-8f ? 1e-8f : sb;
  return 1.0f - dot / (sa * sb);
}

// IEEE binary16 bits -> float.  Device code uses the hardware conversion; host code
// the branch-free bit manipulation of half.hpp (identical results for every input).
EDGEUAD_HD float half_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#else
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  const uint32_t normal = ((exp + 112u) << 23) | (man << 13);
  const uint32_t infnan = 0x7f800000u | (man << 13);
  const float sub_f = static_cast<float>(man) * 5.9604644775390625e-08f;
  uint32_t sub;
  memcpy(&sub, &sub_f, sizeof(sub));
  uint32_t bits = exp == 0u ? sub : (exp == 31u ? infnan : normal);
  bits |= sign;
  float out;
  memcpy(&out, &bits, sizeof(out));
  return out;
#endif
}

// Typed loads: the kernels are instantiated per dtype, so no branch per element.
EDGEUAD_HD float load_value(const float* p, int64_t i) { return p[i]; }
EDGEUAD_HD float load_value(const uint16_t* p, int64_t i) { return half_to_float(p[i]); }

// Order-preserving key of a float: a > b  <=>  key(a) > key(b) for non-NaN values, and
// every NaN maps to the largest key, so NaN ranks above +inf exactly like the CPU
// top-k (DescendingNanFirst) and shows up in max and topk_mean.
EDGEUAD_HD uint32_t float_key(float v) {
  if (v != v) return 0xffffffffu;
  uint32_t b;
  memcpy(&b, &v, sizeof(b));
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

EDGEUAD_HD float key_to_float(uint32_t k) {
  if (k == 0xffffffffu) return NAN;
  const uint32_t b = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float v;
  memcpy(&v, &b, sizeof(v));
  return v;
}

}  // namespace pixel
}  // namespace edgeuad
