// Fused anomaly-map post-processing on the CPU.
//
// Semantics (shared with the CUDA twin, the numpy reference and the torch
// reference; see docs/architecture.md "Anomaly-map post-processing"):
//   map = sum_l w_l * bilinear_upsample(1 - cos_c(a_l, b_l), (H, W), align_corners)
//   then a separable Gaussian blur (sigma, radius int(4*sigma + 0.5), border
//   "reflect" in scipy.ndimage terms = half-sample symmetric), then the image
//   scores max and topk_mean (mean of the max(1, int(frac*H*W)) largest values).
#pragma once

#include <cstdint>
#include <vector>

namespace edgeuad {

enum class DType : int { F32 = 0, F16 = 1 };

const char* dtype_name(DType t);

// One (a, b) feature pair: both B x C x H x W, C-contiguous, owned by the caller.
struct MapLevel {
  const void* a = nullptr;
  const void* b = nullptr;
  DType a_dtype = DType::F32;
  DType b_dtype = DType::F32;
  int64_t C = 0, H = 0, W = 0;
  float weight = 1.0f;
};

struct MapParams {
  int64_t out_h = 0, out_w = 0;
  bool align_corners = true;
  double sigma = 4.0;       // 0 disables the blur
  double topk_frac = 0.01;  // fraction of pixels averaged for topk_mean
  int threads = 0;          // 0: OpenMP default
};

// Bounds of every size-like parameter (the constants live in maps_pixel.hpp):
//   sigma finite, 0 <= sigma <= 64 (radius <= 256); 1 <= out_h, out_w <= 16384;
//   per level 1 <= C, H, W and C*H*W < 2^31; weights finite.
// Throws ShapeError (-> ValueError) naming the bad value.
void check_sigma(double sigma);
// Gaussian radius int(4*sigma + 0.5) (scipy.ndimage truncate=4); 0 when sigma == 0.
// Validates sigma first (ShapeError), so the result is always in [0, 256].
int gaussian_radius(double sigma);
// Normalised taps, length 2*radius+1 (a single 1 when sigma == 0).  The CUDA
// kernels get these same taps (computed here, on the host).
std::vector<double> gaussian_kernel1d(double sigma);
// max(1, int(frac * n)) clamped to n.
int64_t topk_count(double frac, int64_t n);
// Throws ShapeError on out_size outside [1, 16384], sigma outside [0, 64] or not
// finite, frac outside [0, 1], threads < 0.
void validate_map_params(const MapParams& p);
// Throws ShapeError naming the level when sizes are out of bounds or a weight is not finite.
void validate_levels(const MapLevel* levels, int num_levels, int64_t batch);
// Throws ShapeError when a (B, h, w) distance map is out of bounds.
void validate_dist(int64_t batch, int64_t h, int64_t w);

// map: B*out_h*out_w floats; max_out/topk_out: B floats each (nullptr skips scores).
void cos_map_cpu(const MapLevel* levels, int num_levels, int64_t batch, const MapParams& p,
                 float* map, float* max_out, float* topk_out);

// Single-level variant: dist is B x h x w (e.g. nearest-neighbour distances of patches).
void l2_map_cpu(const void* dist, DType dtype, int64_t batch, int64_t h, int64_t w,
                const MapParams& p, float* map, float* max_out, float* topk_out);

}  // namespace edgeuad
