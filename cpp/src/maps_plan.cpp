// Host-side planning of the CUDA map pipeline (maps_kernels.hpp): validation, groups,
// taps, scratch layout.  Compiled in every build: the CPU emulation of the CUDA
// kernels (maps_emulate.cpp) uses it too, so its checks are tested without a GPU.
#include <string>
#include <vector>

#include "edgeuad/errors.hpp"
#include "edgeuad/maps.hpp"
#include "edgeuad/maps_kernels.hpp"

namespace edgeuad {
namespace kern {
namespace {

constexpr int64_t kIndexLimit = int64_t{1} << 31;

void make_taps(double sigma, Taps& T) {
  const std::vector<double> k = gaussian_kernel1d(sigma);  // validates sigma (<= 64 -> r <= 256)
  T.r = static_cast<int>(k.size() / 2);
  for (int i = 0; i <= pixel::kMaxRadius; ++i) T.g[i] = i <= T.r ? static_cast<float>(k[T.r + i]) : 0.0f;
}

}  // namespace

void check_output(int64_t batch, const MapParams& p) {
  validate_map_params(p);
  if (batch <= 0) throw ShapeError("batch size must be > 0");
  if (batch * p.out_h * p.out_w >= kIndexLimit)
    throw ShapeError("B*H*W = " + std::to_string(batch * p.out_h * p.out_w) +
                     " must be < 2^31 on CUDA (32-bit indices): split the batch");
}

namespace {

// Scratch in floats: small maps, index tables, the hpass result.
size_t layout(Plan& P, int64_t small_floats, int r) {
  const int64_t tables = int64_t{3} * table_entries(P);  // AxisTap = 3 x 32 bits
  const int64_t mid = r > 0 ? int64_t{P.batch} * P.out_h * P.out_w : 0;
  return static_cast<size_t>(small_floats + tables + mid);
}

void init(Plan& P, int64_t batch, const MapParams& p) {
  P = Plan{};
  P.batch = static_cast<int>(batch);
  P.out_h = static_cast<int>(p.out_h);
  P.out_w = static_cast<int>(p.out_w);
  P.align_corners = p.align_corners ? 1 : 0;
  P.topk_k = static_cast<int>(topk_count(p.topk_frac, p.out_h * p.out_w));
}

}  // namespace

size_t make_cos_plan(const MapLevel* levels, int num_levels, int64_t batch, const MapParams& p, Plan& P, Taps& T) {
  check_output(batch, p);
  validate_levels(levels, num_levels, batch);
  if (num_levels > kMaxLevels)
    throw ShapeError("at most " + std::to_string(kMaxLevels) + " levels are supported on CUDA, got " +
                     std::to_string(num_levels));
  make_taps(p.sigma, T);
  init(P, batch, p);
  P.num_levels = num_levels;
  int64_t small = 0, blocks = 0;
  for (int l = 0; l < num_levels; ++l) {
    const MapLevel& L = levels[l];
    P.lv[l] = KLevel{L.a, L.b, L.a_dtype == DType::F16 ? 1 : 0, L.b_dtype == DType::F16 ? 1 : 0,
                     static_cast<int>(L.C), L.weight};
    int g = 0;
    while (g < P.num_groups && !(P.grp[g].H == L.H && P.grp[g].W == L.W)) ++g;
    KGroup& G = P.grp[g];
    if (g == P.num_groups) {  // first level at this resolution
      ++P.num_groups;
      G.H = static_cast<int>(L.H);
      G.W = static_cast<int>(L.W);
      G.small_offset = static_cast<int>(small);
      G.block_start = static_cast<int>(blocks);
      G.blocks_per_image = ceil_div(L.H * L.W, kCosPix);
      small += batch * L.H * L.W;
      blocks += batch * G.blocks_per_image;
      if (small >= kIndexLimit || blocks >= kIndexLimit)
        throw ShapeError("the feature maps are too large for one CUDA call (sum of B*H*W over resolutions must "
                         "be < 2^31): split the batch");
    }
    G.levels[G.count++] = static_cast<unsigned char>(l);
  }
  P.cos_blocks = static_cast<int>(blocks);
  return layout(P, small, T.r);
}

size_t make_l2_plan(const void* dist, DType dtype, int64_t batch, int64_t h, int64_t w, const MapParams& p, Plan& P,
                    Taps& T) {
  check_output(batch, p);
  validate_dist(batch, h, w);
  if (!dist) throw ShapeError("dist: null data pointer");
  if (batch * h * w >= kIndexLimit) throw ShapeError("dist is too large (B*h*w must be < 2^31 on CUDA)");
  make_taps(p.sigma, T);
  init(P, batch, p);
  P.num_groups = 1;
  P.grp[0].H = static_cast<int>(h);
  P.grp[0].W = static_cast<int>(w);
  P.half_dist = dtype == DType::F16 ? 1 : 0;
  P.dist = dist;
  return layout(P, P.half_dist ? batch * h * w : 0, T.r);
}

void bind_plan(Plan& P, const Taps& T, float* scratch, float* out, float* max_out, float* topk_out) {
  int64_t small = 0;
  if (P.cos_blocks > 0 || P.half_dist) {
    for (int g = 0; g < P.num_groups; ++g)
      small += int64_t{P.batch} * P.grp[g].H * P.grp[g].W;
    P.small = scratch;
  } else {
    P.small = const_cast<float*>(static_cast<const float*>(P.dist));  // read-only use: l2 float32 input
  }
  P.tables = reinterpret_cast<pixel::AxisTap*>(scratch + small);
  P.mid = T.r > 0 ? scratch + small + int64_t{3} * table_entries(P) : nullptr;
  P.out = out;
  P.max_out = max_out;
  P.topk_out = topk_out;
}

}  // namespace kern
}  // namespace edgeuad
