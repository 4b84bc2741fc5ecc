// The CUDA kernels of the fused anomaly map, written once as block bodies.
//
// Each kernel is a function template over a `Blk` type that offers
//   blk.bid, blk.nthreads, blk.threads(f) (run f(tid) for this block's threads),
//   blk.sync()                           (barrier between phases).
// maps_cuda.cu instantiates them with a device block (threads(f) = f(threadIdx.x),
// sync = __syncthreads) inside __global__ wrappers; maps_emulate.cpp instantiates
// them with a host block (a loop over tids, sync = nothing) and runs the same launch
// sequence on the CPU, so the CPU tests execute the GPU kernels' code: block/thread
// index arithmetic, tiling, reflection at tile borders, the top-k selection.  State
// that lives across a barrier is kept in the block's shared struct (never in a
// lambda-local variable), which is what makes the sequential emulation faithful.
//
// Pipeline (run_pipeline below):
//   tables   per group and output row/column: bilinear source index + weight (int32)
//   cos      per resolution group, sum_l w_l*(1 - cos) at the group's resolution; a
//            block = 32 pixels x 8 channel groups, dtype-specialised loads
//   convert  (l2 map with float16 input only) float16 -> float32 small map
//   hpass    one output row tile of 256 columns: upsample (fused) into shared memory
//            with the blur halo, reflection only for columns outside the image, then
//            the horizontal Gaussian
//   vpass    vertical Gaussian over 32 x 64 tiles, reflection only near the borders
//   scores   one block per image: max and topk_mean by a 4-pass radix select on the
//            order-preserving float key (NaN ranks highest, as on the CPU)
// Indices are 32-bit inside an image (bounds checked by make_*_plan); only the
// per-image base offsets are 64-bit.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "edgeuad/maps.hpp"
#include "edgeuad/maps_pixel.hpp"

namespace edgeuad {
namespace kern {

constexpr int kMaxLevels = 16;
constexpr int kCosPix = 32;                          // pixels per cos block
constexpr int kCosGroups = 8;                        // channel groups per cos block
constexpr int kCosThreads = kCosPix * kCosGroups;    // 256
constexpr int kRowTile = 256;                        // output columns per hpass block
constexpr int kRowThreads = 256;
constexpr int kColTile = 32;                         // columns per vpass block
constexpr int kColRows = 64;                         // rows per vpass block
constexpr int kColThreads = 256;                     // 32 x 8
constexpr int kScoreThreads = 512;
constexpr int kFlatThreads = 256;                    // tables, convert

struct KLevel {
  const void* a;
  const void* b;
  int dtype_a, dtype_b;  // 0 float32, 1 float16
  int C;
  float weight;
};

// Levels of one resolution, combined at that resolution before upsampling (bilinear
// upsampling is linear), in order of first appearance: the CPU kernel does the same.
struct KGroup {
  int H, W;
  int small_offset;      // floats: image b of this group at small + small_offset + b*H*W
  int block_start;       // first cos block of this group
  int blocks_per_image;  // ceil(H*W / kCosPix)
  int count;
  unsigned char levels[kMaxLevels];
};

struct Taps {
  float g[pixel::kMaxRadius + 1];  // g[k]: weight of offsets -k and +k (normalised on the host)
  int r;
};

// Everything a launch needs, passed by value as a kernel parameter (< 2 KiB).
struct Plan {
  KLevel lv[kMaxLevels];
  KGroup grp[kMaxLevels];
  int num_levels, num_groups;
  int batch, out_h, out_w;
  int align_corners;
  int cos_blocks;       // 0: l2 map (no cosine stage)
  int half_dist;        // l2 map with float16 input: convert it into `small` first
  int topk_k;
  const void* dist;     // l2 map input (device)
  float* small;         // group small maps (scratch), or the float32 dist itself
  pixel::AxisTap* tables;
  float* mid;           // hpass result when the blur is on (scratch)
  float* out;           // B x out_h x out_w
  float* max_out;       // B, or null (no scores)
  float* topk_out;      // B, or null
};

// ---- host-side planning (maps_plan.cpp): validation + sizes, no memory ----------
// Output bounds of the CUDA path: validate_map_params plus B*H*W < 2^31 (ShapeError).
void check_output(int64_t batch, const MapParams& p);
// Fill P (sizes, groups, levels) and T (taps); returns the scratch size in floats.
// Throws ShapeError on every out-of-bounds size (same bounds as the CPU kernel, plus
// at most 16 levels and B*H*W < 2^31 for the 32-bit indices).
size_t make_cos_plan(const MapLevel* levels, int num_levels, int64_t batch, const MapParams& p, Plan& P, Taps& T);
size_t make_l2_plan(const void* dist, DType dtype, int64_t batch, int64_t h, int64_t w, const MapParams& p, Plan& P,
                    Taps& T);
// Point the plan at its memory: inputs are already in P (levels / dist); scratch holds
// the size returned above; max_out/topk_out may be null.
void bind_plan(Plan& P, const Taps& T, float* scratch, float* out, float* max_out, float* topk_out);

// ---- grids -----------------------------------------------------------------------
EDGEUAD_HD int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }
EDGEUAD_HD int table_entries(const Plan& P) { return P.num_groups * (P.out_h + P.out_w); }
EDGEUAD_HD int row_tiles(const Plan& P) { return ceil_div(P.out_w, kRowTile); }

// ---- block bodies ------------------------------------------------------------------
template <class Blk>
EDGEUAD_HD void tables_body(const Blk& blk, const Plan& P) {
  const int per = P.out_h + P.out_w;
  const int total = P.num_groups * per;
  blk.threads([&](int t) {
    const int e = blk.bid * blk.nthreads + t;
    if (e >= total) return;
    const KGroup& G = P.grp[e / per];
    const int j = e % per;
    P.tables[e] = j < P.out_h ? pixel::bilinear_source(j, G.H, P.out_h, P.align_corners != 0)
                              : pixel::bilinear_source(j - P.out_h, G.W, P.out_w, P.align_corners != 0);
  });
}

struct CosShared {
  float dot[kCosGroups][kCosPix];
  float na[kCosGroups][kCosPix];
  float nb[kCosGroups][kCosPix];
  float acc[kCosPix];
};

template <class TA, class TB>
EDGEUAD_HD void cos_partial(const KLevel& L, int64_t img, int hw, int p, int gy, float& dot, float& na,
                            float& nb) {
  const TA* a = static_cast<const TA*>(L.a) + img;
  const TB* b = static_cast<const TB*>(L.b) + img;
  for (int c = gy; c < L.C; c += kCosGroups) {  // consecutive threads: consecutive pixels (coalesced)
    const int i = c * hw + p;
    pixel::cos_accumulate(pixel::load_value(a, i), pixel::load_value(b, i), dot, na, nb);
  }
}

template <class Blk>
EDGEUAD_HD void cos_body(const Blk& blk, const Plan& P, CosShared& sh) {
  int g = 0;
  while (g + 1 < P.num_groups && blk.bid >= P.grp[g + 1].block_start) ++g;
  const KGroup& G = P.grp[g];
  const int local = blk.bid - G.block_start;
  const int bimg = local / G.blocks_per_image;
  const int p0 = (local % G.blocks_per_image) * kCosPix;
  const int hw = G.H * G.W;
  blk.threads([&](int t) {
    if (t < kCosPix) sh.acc[t] = 0.0f;
  });
  for (int j = 0; j < G.count; ++j) {
    const KLevel& L = P.lv[G.levels[j]];
    blk.threads([&](int t) {
      const int tx = t % kCosPix, gy = t / kCosPix;
      const int p = p0 + tx;
      float dot = 0.0f, na = 0.0f, nb = 0.0f;
      if (p < hw) {
        const int64_t img = static_cast<int64_t>(bimg) * L.C * hw;
        switch (L.dtype_a * 2 + L.dtype_b) {  // once per level, not per channel
          case 0: cos_partial<float, float>(L, img, hw, p, gy, dot, na, nb); break;
          case 1: cos_partial<float, uint16_t>(L, img, hw, p, gy, dot, na, nb); break;
          case 2: cos_partial<uint16_t, float>(L, img, hw, p, gy, dot, na, nb); break;
          default: cos_partial<uint16_t, uint16_t>(L, img, hw, p, gy, dot, na, nb); break;
        }
      }
      sh.dot[gy][tx] = dot;
      sh.na[gy][tx] = na;
      sh.nb[gy][tx] = nb;
    });
    blk.sync();
    blk.threads([&](int t) {
      if (t >= kCosPix) return;
      float dot = 0.0f, na = 0.0f, nb = 0.0f;
      for (int gy = 0; gy < kCosGroups; ++gy) {
        dot += sh.dot[gy][t];
        na += sh.na[gy][t];
        nb += sh.nb[gy][t];
      }
      sh.acc[t] += L.weight * pixel::cos_distance(dot, na, nb);
    });
    blk.sync();
  }
  blk.threads([&](int t) {
    if (t < kCosPix && p0 + t < hw)
      P.small[G.small_offset + static_cast<int64_t>(bimg) * hw + p0 + t] = sh.acc[t];
  });
}

template <class Blk>
EDGEUAD_HD void convert_body(const Blk& blk, const Plan& P) {
  const int64_t n = static_cast<int64_t>(P.batch) * P.grp[0].H * P.grp[0].W;
  blk.threads([&](int t) {
    const int64_t i = static_cast<int64_t>(blk.bid) * blk.nthreads + t;
    if (i < n) P.small[i] = pixel::load_value(static_cast<const uint16_t*>(P.dist), i);
  });
}

// Sum over groups of the bilinear upsampling at output (y, x) of image b.
EDGEUAD_HD float upsample_at(const Plan& P, int b, int y, int x) {
  const int per = P.out_h + P.out_w;
  float acc = 0.0f;
  for (int g = 0; g < P.num_groups; ++g) {
    const KGroup& G = P.grp[g];
    const pixel::AxisTap ty = P.tables[g * per + y];
    const pixel::AxisTap tx = P.tables[g * per + P.out_h + x];
    const float* s = P.small + G.small_offset + static_cast<int64_t>(b) * G.H * G.W;
    const float* r0 = s + ty.i0 * G.W;
    const float* r1 = s + ty.i1 * G.W;
    const float v0 = pixel::lerp(r0[tx.i0], r1[tx.i0], ty.l1);  // rows first, like the CPU
    const float v1 = pixel::lerp(r0[tx.i1], r1[tx.i1], ty.l1);
    acc += pixel::lerp(v0, v1, tx.l1);
  }
  return acc;
}

// Gaussian at `c` along a stride: g0*c[0] + sum_k g_k*(c[-k] + c[+k]) in the CPU's order.
EDGEUAD_HD float blur_point(const float* c, int stride, const Taps& T) {
  float acc = T.g[0] * c[0];
  for (int k = 1; k <= T.r; ++k) acc += T.g[k] * (c[-k * stride] + c[k * stride]);
  return acc;
}

// buf: kRowTile + 2*T.r floats (shared memory).
template <class Blk>
EDGEUAD_HD void hpass_body(const Blk& blk, const Plan& P, const Taps& T, float* dst, float* buf) {
  const int tiles = row_tiles(P);
  const int row = blk.bid / tiles;  // b * out_h + y
  const int x0 = (blk.bid % tiles) * kRowTile;
  const int b = row / P.out_h, y = row % P.out_h;
  const int W = P.out_w, r = T.r;
  const int tw = W - x0 < kRowTile ? W - x0 : kRowTile;
  blk.threads([&](int t) {
    for (int i = t; i < tw + 2 * r; i += blk.nthreads) {
      int xs = x0 - r + i;
      if (xs < 0 || xs >= W) xs = pixel::reflect_index(xs, W);  // only at the image borders
      buf[i] = upsample_at(P, b, y, xs);
    }
  });
  blk.sync();
  blk.threads([&](int t) {
    for (int i = t; i < tw; i += blk.nthreads) dst[row * W + x0 + i] = blur_point(buf + r + i, 1, T);
  });
}

template <class Blk>
EDGEUAD_HD void vpass_body(const Blk& blk, const Plan& P, const Taps& T, const float* src, float* dst) {
  const int H = P.out_h, W = P.out_w, r = T.r;
  const int tx_n = ceil_div(W, kColTile), ty_n = ceil_div(H, kColRows);
  const int per_img = tx_n * ty_n;
  const int b = blk.bid / per_img;
  const int rem = blk.bid % per_img;
  const int x0 = (rem % tx_n) * kColTile, y0 = (rem / tx_n) * kColRows;
  const int y1 = y0 + kColRows < H ? y0 + kColRows : H;
  const int64_t img = static_cast<int64_t>(b) * H * W;
  blk.threads([&](int t) {
    const int x = x0 + t % kColTile;
    if (x >= W) return;
    const float* col = src + img + x;
    for (int y = y0 + t / kColTile; y < y1; y += kColThreads / kColTile) {
      float acc = T.g[0] * col[y * W];
      if (y - r >= 0 && y + r < H) {
        for (int k = 1; k <= r; ++k) acc += T.g[k] * (col[(y - k) * W] + col[(y + k) * W]);
      } else {
        for (int k = 1; k <= r; ++k)
          acc += T.g[k] * (col[pixel::reflect_index(y - k, H) * W] + col[pixel::reflect_index(y + k, H) * W]);
      }
      dst[img + y * W + x] = acc;
    }
  });
}

EDGEUAD_HD void atomic_add_u32(unsigned* p, unsigned v) {
#if defined(__CUDA_ARCH__)
  atomicAdd(p, v);
#else
  *p += v;  // the host emulation runs threads one after the other
#endif
}

struct ScoreShared {
  unsigned hist[256];
  uint32_t prefix, mask;
  int remaining;
  double psum[kScoreThreads];
  uint32_t pmax[kScoreThreads];
};

// One block per image: k-th largest key by radix select (8 bits per pass), then
// topk_mean = (sum of values above it + ties * it) / k and max = the largest key.
template <class Blk>
EDGEUAD_HD void scores_body(const Blk& blk, const Plan& P, ScoreShared& sh) {
  const int n = P.out_h * P.out_w;
  const float* v = P.out + static_cast<int64_t>(blk.bid) * n;
  blk.threads([&](int t) {
    if (t == 0) {
      sh.prefix = 0u;
      sh.mask = 0u;
      sh.remaining = P.topk_k;
    }
  });
  for (int shift = 24; shift >= 0; shift -= 8) {
    blk.threads([&](int t) {
      for (int i = t; i < 256; i += blk.nthreads) sh.hist[i] = 0u;
    });
    blk.sync();
    blk.threads([&](int t) {
      const uint32_t mask = sh.mask, prefix = sh.prefix;
      for (int i = t; i < n; i += blk.nthreads) {
        const uint32_t key = pixel::float_key(v[i]);
        if ((key & mask) == prefix) atomic_add_u32(&sh.hist[(key >> shift) & 255u], 1u);
      }
    });
    blk.sync();
    blk.threads([&](int t) {
      if (t != 0) return;
      int above = 0;
      for (int d = 255; d >= 0; --d) {
        const int h = static_cast<int>(sh.hist[d]);
        if (above + h >= sh.remaining) {
          sh.prefix |= static_cast<uint32_t>(d) << shift;
          sh.mask |= 255u << shift;
          sh.remaining -= above;
          break;
        }
        above += h;
      }
    });
    blk.sync();
  }
  blk.threads([&](int t) {
    const uint32_t kth = sh.prefix;
    double s = 0.0;
    uint32_t mx = 0u;
    for (int i = t; i < n; i += blk.nthreads) {
      const uint32_t key = pixel::float_key(v[i]);
      if (key > kth) s += static_cast<double>(v[i]);
      mx = key > mx ? key : mx;
    }
    sh.psum[t] = s;
    sh.pmax[t] = mx;
  });
  blk.sync();
  blk.threads([&](int t) {
    if (t != 0) return;
    double s = 0.0;
    uint32_t mx = 0u;
    for (int i = 0; i < blk.nthreads; ++i) {
      s += sh.psum[i];
      mx = sh.pmax[i] > mx ? sh.pmax[i] : mx;
    }
    s += static_cast<double>(sh.remaining) * static_cast<double>(pixel::key_to_float(sh.prefix));
    if (P.max_out) P.max_out[blk.bid] = pixel::key_to_float(mx);
    if (P.topk_out) P.topk_out[blk.bid] = static_cast<float>(s / static_cast<double>(P.topk_k));
  });
}

// ---- the launch sequence, shared by the CUDA launcher and the emulation ------------
// Exec provides tables/cos/convert/hpass/vpass/scores(grid, ...), each one launch.
template <class Exec>
void run_pipeline(Exec& ex, const Plan& P, const Taps& T) {
  ex.tables(ceil_div(table_entries(P), kFlatThreads), P);
  if (P.cos_blocks > 0) ex.cos(P.cos_blocks, P);
  if (P.half_dist) ex.convert(ceil_div(static_cast<int64_t>(P.batch) * P.grp[0].H * P.grp[0].W, kFlatThreads), P);
  float* dst = T.r > 0 ? P.mid : P.out;
  ex.hpass(P.batch * P.out_h * row_tiles(P), P, T, dst);
  if (T.r > 0) ex.vpass(P.batch * ceil_div(P.out_w, kColTile) * ceil_div(P.out_h, kColRows), P, T, P.mid, P.out);
  if (P.max_out || P.topk_out) ex.scores(P.batch, P);
}

}  // namespace kern
}  // namespace edgeuad
