// CPU implementation of the fused anomaly map (see maps.hpp for the semantics).
//
// Plan, chosen so that no full-size temporary exists per level:
//   1. small maps: per distinct level resolution, sum_l w_l * (1 - cos) at the
//      level's own resolution (bilinear upsampling is linear, so levels sharing a
//      resolution can be combined before upsampling: 6 pairs -> 3 upsamplings).
//   2. one pass over output rows (OpenMP over batch*rows): interpolate every
//      small map into the row, then the horizontal blur in place (row buffer).
//   3. one pass over column strips (OpenMP over batch*strips): vertical blur
//      through a per-thread strip buffer, collecting each strip's top-k.
#include "edgeuad/maps.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <string>

#include "edgeuad/errors.hpp"
#include "edgeuad/half.hpp"
#include "edgeuad/maps_pixel.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace edgeuad {

const char* dtype_name(DType t) { return t == DType::F16 ? "float16" : "float32"; }

namespace {
std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.6g", v);
  return buf;
}
}  // namespace

void check_sigma(double sigma) {
  if (!std::isfinite(sigma) || sigma < 0.0 || sigma > pixel::kMaxSigma)
    throw ShapeError("sigma must be finite and in [0, " + std::to_string(static_cast<int>(pixel::kMaxSigma)) +
                     "] (blur radius int(4*sigma + 0.5) <= " + std::to_string(pixel::kMaxRadius) + "), got " + fmt(sigma));
}

int gaussian_radius(double sigma) {
  check_sigma(sigma);
  const int64_t r = pixel::gaussian_radius64(sigma);  // 64-bit, then bounded by check_sigma
  return static_cast<int>(r);
}

std::vector<double> gaussian_kernel1d(double sigma) {
  const int r = gaussian_radius(sigma);
  std::vector<double> k(2 * static_cast<size_t>(r) + 1, 1.0);
  if (r == 0) return k;
  double sum = 0.0;
  for (int i = -r; i <= r; ++i) {
    k[i + r] = pixel::gaussian_weight(i, sigma);
    sum += k[i + r];
  }
  for (double& v : k) v /= sum;
  return k;
}

int64_t topk_count(double frac, int64_t n) {
  int64_t k = static_cast<int64_t>(frac * static_cast<double>(n));
  return std::min<int64_t>(std::max<int64_t>(k, 1), n);
}

void validate_map_params(const MapParams& p) {
  if (p.out_h <= 0 || p.out_w <= 0 || p.out_h > pixel::kMaxSide || p.out_w > pixel::kMaxSide)
    throw ShapeError("out_size must be two ints in [1, " + std::to_string(pixel::kMaxSide) + "], got (" +
                     std::to_string(p.out_h) + ", " + std::to_string(p.out_w) + ")");
  check_sigma(p.sigma);
  if (!std::isfinite(p.topk_frac) || p.topk_frac < 0.0 || p.topk_frac > 1.0)
    throw ShapeError("topk_frac must be in [0, 1], got " + fmt(p.topk_frac));
  if (p.threads < 0) throw ShapeError("threads must be >= 0");
}

namespace {
// C, H, W of one image of a level: each >= 1 and C*H*W < 2^31 (32-bit indices on the GPU).
void check_level_sizes(const std::string& what, int64_t C, int64_t H, int64_t W) {
  if (C <= 0 || H <= 0 || W <= 0) throw ShapeError(what + ": C, H, W must be > 0");
  if (C > pixel::kMaxIndex || H > pixel::kMaxIndex || W > pixel::kMaxIndex ||
      C * H > pixel::kMaxIndex / W)
    throw ShapeError(what + ": C*H*W = " + std::to_string(C) + "*" + std::to_string(H) + "*" + std::to_string(W) +
                     " must be < 2^31 per image");
}
}  // namespace

void validate_levels(const MapLevel* levels, int num_levels, int64_t batch) {
  if (num_levels <= 0) throw ShapeError("pairs is empty: need at least one (a, b) feature pair");
  if (batch <= 0) throw ShapeError("batch size must be > 0");
  for (int l = 0; l < num_levels; ++l) {
    const MapLevel& lv = levels[l];
    check_level_sizes("level " + std::to_string(l), lv.C, lv.H, lv.W);
    if (!lv.a || !lv.b) throw ShapeError("level " + std::to_string(l) + ": null data pointer");
    if (!std::isfinite(lv.weight))
      throw ShapeError("level " + std::to_string(l) + ": weight is not finite");
  }
}

void validate_dist(int64_t batch, int64_t h, int64_t w) {
  if (batch <= 0) throw ShapeError("dist must be B x h x w with all sizes > 0");
  check_level_sizes("dist", 1, h, w);
}

namespace {

// Source indices and weights of one output axis, as torch's bilinear kernel computes them.
struct AxisTable {
  std::vector<int32_t> i0, i1;
  std::vector<float> l1;  // weight of i1; i0 gets 1 - l1
};

AxisTable make_axis(int64_t in, int64_t out, bool align_corners) {
  AxisTable t;
  t.i0.resize(out);
  t.i1.resize(out);
  t.l1.resize(out);
  for (int64_t d = 0; d < out; ++d) {
    const pixel::AxisTap tap = pixel::bilinear_source(static_cast<int>(d), static_cast<int>(in),
                                                      static_cast<int>(out), align_corners);
    t.i0[d] = tap.i0;
    t.i1[d] = tap.i1;
    t.l1[d] = tap.l1;
  }
  return t;
}

using pixel::reflect_index;  // H, W <= kMaxSide: int is enough

// A small map at one resolution that gets upsampled into the output.
struct SmallMap {
  const float* data = nullptr;  // B x h x w
  int64_t h = 0, w = 0;
  AxisTable ty, tx;
};

int resolve_threads(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }

// float16 -> float32 for a run of values.  Hardware conversion where it can be
// used without -march flags: F16C picked at run time on x86-64, the native
// __fp16 type on aarch64 (Jetson); the portable bit-twiddling version otherwise.
using HalfFn = void (*)(const uint16_t*, float*, int64_t);

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx,f16c"))) void half_to_float_f16c(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = half_bits_to_float(src[i]);
}
#elif defined(__aarch64__) && defined(__GNUC__)
void half_to_float_native(const uint16_t* src, float* dst, int64_t n) {
  const __fp16* h = reinterpret_cast<const __fp16*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(h[i]);
}
#endif

HalfFn pick_half_fn() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx")) return half_to_float_f16c;
  return half_to_float;
#elif defined(__aarch64__) && defined(__GNUC__)
  return half_to_float_native;
#else
  return half_to_float;
#endif
}

const HalfFn convert_half = pick_half_fn();

// Returns a pointer to n floats of one row of x (converted into buf for float16).
inline const float* load_row(const void* base, DType t, int64_t offset, int64_t n, float* buf) {
  if (t == DType::F32) return static_cast<const float*>(base) + offset;
  convert_half(static_cast<const uint16_t*>(base) + offset, buf, n);
  return buf;
}

// Descending order with NaN above +inf: a strict weak ordering even when the map
// holds NaN (std::greater is not, and nth_element may then run out of bounds).
// A NaN in the map therefore shows up in max and topk_mean instead of being hidden.
struct DescendingNanFirst {
  bool operator()(float a, float b) const {
    if (std::isnan(a)) return !std::isnan(b);
    if (std::isnan(b)) return false;
    return a > b;
  }
};

constexpr int64_t kPixelChunk = 2048;  // pixels per cosine task: 8 KiB channel runs keep the prefetchers streaming
constexpr int64_t kStrip = 64;        // columns per vertical-blur strip

// Step 1: per resolution group, small[b, p] = sum_l w_l * (1 - cos_l[b, p]).
void cosine_small_maps(const MapLevel* levels, const std::vector<std::vector<int>>& groups,
                       int64_t batch, std::vector<std::vector<float>>& small, int nt) {
  struct Task {
    int g;
    int64_t b, p0, p1;
  };
  std::vector<Task> tasks;
  for (int g = 0; g < static_cast<int>(groups.size()); ++g) {
    const MapLevel& first = levels[groups[g][0]];
    const int64_t hw = first.H * first.W;
    small[g].assign(static_cast<size_t>(batch * hw), 0.0f);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t p0 = 0; p0 < hw; p0 += kPixelChunk)
        tasks.push_back({g, b, p0, std::min(hw, p0 + kPixelChunk)});
  }
#pragma omp parallel num_threads(nt)
  {
    alignas(64) float dot[kPixelChunk], na[kPixelChunk], nb[kPixelChunk];
    alignas(64) float bufa[kPixelChunk], bufb[kPixelChunk];
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < static_cast<int64_t>(tasks.size()); ++t) {
      const Task& tk = tasks[t];
      const int64_t n = tk.p1 - tk.p0;
      float* out = small[tk.g].data();
      for (int li : groups[tk.g]) {
        const MapLevel& lv = levels[li];
        const int64_t hw = lv.H * lv.W;
        std::fill(dot, dot + n, 0.0f);
        std::fill(na, na + n, 0.0f);
        std::fill(nb, nb + n, 0.0f);
        for (int64_t c = 0; c < lv.C; ++c) {
          const int64_t off = (tk.b * lv.C + c) * hw + tk.p0;
          const float* __restrict ra = load_row(lv.a, lv.a_dtype, off, n, bufa);
          const float* __restrict rb = load_row(lv.b, lv.b_dtype, off, n, bufb);
          for (int64_t p = 0; p < n; ++p) pixel::cos_accumulate(ra[p], rb[p], dot[p], na[p], nb[p]);
        }
        float* __restrict o = out + tk.b * hw + tk.p0;
        const float w = lv.weight;
        for (int64_t p = 0; p < n; ++p) o[p] += w * pixel::cos_distance(dot[p], na[p], nb[p]);
      }
    }
  }
}

// Steps 2 and 3 plus the scores: upsample + sum the small maps, blur, score.
// The working set is one output image, which stays in L2 between the two
// passes.  With at least as many images as threads each thread takes whole
// images (no barriers); otherwise the threads share each image's rows/strips.
void upsample_blur_score(const std::vector<SmallMap>& maps, int64_t batch, const MapParams& p,
                         float* out, float* max_out, float* topk_out, int nt) {
  const int64_t H = p.out_h, W = p.out_w;
  const int r = gaussian_radius(p.sigma);
  const std::vector<double> kd = gaussian_kernel1d(p.sigma);
  const std::vector<float> g(kd.begin(), kd.end());
  int64_t max_w = 1;
  for (const SmallMap& m : maps) max_w = std::max(max_w, m.w);
  const int64_t strips = (W + kStrip - 1) / kStrip;
  const int64_t n_px = H * W;
  const int64_t k = topk_count(p.topk_frac, n_px);
  const bool scores = max_out != nullptr || topk_out != nullptr;
  const bool image_parallel = batch >= nt;

  struct Scratch {
    std::vector<float> tmp, pad, colbuf, merged;
    std::vector<std::vector<float>> cand;  // per strip: its largest min(k, strip size) values
  };

  // Row y of image b: interpolate every small map, then the horizontal blur in place.
  auto row_pass = [&](Scratch& sc, int64_t b, int64_t y) {
    float* __restrict o = out + b * n_px + y * W;
    std::fill(o, o + W, 0.0f);
    for (const SmallMap& m : maps) {
      const float* s0 = m.data + (b * m.h + m.ty.i0[y]) * m.w;
      const float* s1 = m.data + (b * m.h + m.ty.i1[y]) * m.w;
      const float ly1 = m.ty.l1[y];
      float* __restrict tmp = sc.tmp.data();
      for (int64_t x = 0; x < m.w; ++x) tmp[x] = pixel::lerp(s0[x], s1[x], ly1);
      const int32_t* xi0 = m.tx.i0.data();
      const int32_t* xi1 = m.tx.i1.data();
      const float* xl1 = m.tx.l1.data();
      for (int64_t x = 0; x < W; ++x) o[x] += pixel::lerp(tmp[xi0[x]], tmp[xi1[x]], xl1[x]);
    }
    if (r == 0) return;
    float* __restrict pd = sc.pad.data();
    for (int64_t i = 0; i < W + 2 * r; ++i) pd[i] = o[reflect_index(static_cast<int>(i - r), static_cast<int>(W))];
    const float gc = g[r];
    for (int64_t x = 0; x < W; ++x) o[x] = gc * pd[x + r];
    for (int kk = 1; kk <= r; ++kk) {
      const float gk = g[r + kk];
      const float* __restrict lo = pd + r - kk;
      const float* __restrict hi = pd + r + kk;
      for (int64_t x = 0; x < W; ++x) o[x] += gk * (lo[x] + hi[x]);
    }
  };

  // Column strip t of image b: vertical blur through the strip buffer, then top-k candidates.
  auto strip_pass = [&](Scratch& sc, int64_t b, int64_t t) {
    const int64_t x0 = t * kStrip;
    const int64_t sw = std::min(kStrip, W - x0);
    float* base = out + b * n_px + x0;
    if (r > 0) {
      float* colbuf = sc.colbuf.data();
      for (int64_t i = 0; i < H + 2 * r; ++i)
        std::memcpy(colbuf + i * kStrip, base + reflect_index(static_cast<int>(i - r), static_cast<int>(H)) * W,
                    sw * sizeof(float));
      const float gc = g[r];
      for (int64_t y = 0; y < H; ++y) {
        float* __restrict o = base + y * W;
        const float* c = colbuf + (y + r) * kStrip;
        for (int64_t x = 0; x < sw; ++x) o[x] = gc * c[x];
        for (int kk = 1; kk <= r; ++kk) {
          const float gk = g[r + kk];
          const float* __restrict lo = c - kk * kStrip;
          const float* __restrict hi = c + kk * kStrip;
          for (int64_t x = 0; x < sw; ++x) o[x] += gk * (lo[x] + hi[x]);
        }
      }
    }
    if (!scores) return;
    std::vector<float>& vals = sc.cand[t];
    vals.resize(H * sw);
    for (int64_t y = 0; y < H; ++y) std::memcpy(&vals[y * sw], base + y * W, sw * sizeof(float));
    if (static_cast<int64_t>(vals.size()) > k) {
      std::nth_element(vals.begin(), vals.begin() + (k - 1), vals.end(), DescendingNanFirst());
      vals.resize(k);
    }
  };

  // Image scores from the strip candidates (strips * k values at most).
  auto merge = [&](Scratch& sc, int64_t b) {
    std::vector<float>& all = sc.merged;
    all.clear();
    for (const std::vector<float>& v : sc.cand) all.insert(all.end(), v.begin(), v.end());
    std::nth_element(all.begin(), all.begin() + (k - 1), all.end(), DescendingNanFirst());
    double sum = 0.0;
    float mx = -std::numeric_limits<float>::infinity();
    bool nan = false;
    for (int64_t i = 0; i < k; ++i) {
      sum += all[i];
      if (std::isnan(all[i])) nan = true;
      else mx = std::max(mx, all[i]);
    }
    if (nan) mx = std::numeric_limits<float>::quiet_NaN();
    if (max_out) max_out[b] = mx;
    if (topk_out) topk_out[b] = static_cast<float>(sum / static_cast<double>(k));
  };

  auto make_scratch = [&]() {
    Scratch sc;
    sc.tmp.resize(max_w);
    sc.pad.resize(W + 2 * r);
    sc.colbuf.resize(r > 0 ? (H + 2 * r) * kStrip : 0);
    sc.cand.resize(strips);
    return sc;
  };

  if (image_parallel) {
#pragma omp parallel num_threads(nt)
    {
      Scratch sc = make_scratch();
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t y = 0; y < H; ++y) row_pass(sc, b, y);
        if (r == 0 && !scores) continue;
        for (int64_t t = 0; t < strips; ++t) strip_pass(sc, b, t);
        if (scores) merge(sc, b);
      }
    }
    return;
  }
  Scratch shared = make_scratch();  // cand/merged shared by the team, one image at a time
#pragma omp parallel num_threads(nt)
  {
    Scratch sc = make_scratch();
    for (int64_t b = 0; b < batch; ++b) {
#pragma omp for schedule(static)
      for (int64_t y = 0; y < H; ++y) row_pass(sc, b, y);
      // implicit barrier: all rows are done before the column pass
      if (r == 0 && !scores) continue;
#pragma omp for schedule(static)
      for (int64_t t = 0; t < strips; ++t) {
        strip_pass(sc, b, t);
        if (scores) shared.cand[t].swap(sc.cand[t]);
      }
      if (!scores) continue;
#pragma omp single
      merge(shared, b);
      // implicit barrier after single: shared.cand is reused by the next image
    }
  }
}

}  // namespace

void cos_map_cpu(const MapLevel* levels, int num_levels, int64_t batch, const MapParams& p,
                 float* map, float* max_out, float* topk_out) {
  validate_map_params(p);
  validate_levels(levels, num_levels, batch);
  const int nt = resolve_threads(p.threads);
  // Group levels by resolution (order of first appearance keeps results deterministic).
  std::vector<std::vector<int>> groups;
  for (int l = 0; l < num_levels; ++l) {
    bool placed = false;
    for (auto& gr : groups) {
      const MapLevel& f = levels[gr[0]];
      if (f.H == levels[l].H && f.W == levels[l].W) {
        gr.push_back(l);
        placed = true;
        break;
      }
    }
    if (!placed) groups.push_back({l});
  }
  std::vector<std::vector<float>> small(groups.size());
  cosine_small_maps(levels, groups, batch, small, nt);
  std::vector<SmallMap> maps(groups.size());
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const MapLevel& f = levels[groups[gi][0]];
    maps[gi].data = small[gi].data();
    maps[gi].h = f.H;
    maps[gi].w = f.W;
    maps[gi].ty = make_axis(f.H, p.out_h, p.align_corners);
    maps[gi].tx = make_axis(f.W, p.out_w, p.align_corners);
  }
  upsample_blur_score(maps, batch, p, map, max_out, topk_out, nt);
}

void l2_map_cpu(const void* dist, DType dtype, int64_t batch, int64_t h, int64_t w,
                const MapParams& p, float* map, float* max_out, float* topk_out) {
  validate_map_params(p);
  validate_dist(batch, h, w);
  if (!dist) throw ShapeError("dist: null data pointer");
  const int nt = resolve_threads(p.threads);
  std::vector<float> converted;
  SmallMap m;
  if (dtype == DType::F16) {
    converted.resize(static_cast<size_t>(batch * h * w));
    convert_half(static_cast<const uint16_t*>(dist), converted.data(), batch * h * w);
    m.data = converted.data();
  } else {
    m.data = static_cast<const float*>(dist);
  }
  m.h = h;
  m.w = w;
  m.ty = make_axis(h, p.out_h, p.align_corners);
  m.tx = make_axis(w, p.out_w, p.align_corners);
  std::vector<SmallMap> maps{std::move(m)};
  upsample_blur_score(maps, batch, p, map, max_out, topk_out, nt);
}

}  // namespace edgeuad
