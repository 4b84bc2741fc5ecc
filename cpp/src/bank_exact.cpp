// Blocked brute-force k-NN: |q|^2 - 2 q.x + |x|^2 with precomputed norms.
//
// Tiles: QB queries x NB bank rows.  Each bank tile is packed transposed in
// JT-column slices (slice s = d x JT contiguous floats, BLIS-style), so the innermost
// loop streams one contiguous slice with a QT-query x JT-row register tile: plain
// multiply-adds that GCC vectorises at -O3 without -ffast-math (no float reduction has
// to be reassociated).  A d x NB row-major panel instead would put every row of a slice
// 4*NB bytes apart: at NB=256 all d rows fall into 4 L1 sets and the slice thrashes L1.
// The bank is packed once per call and shared by the threads (per block when it is huge).
// On x86-64 an AVX2+FMA 6x16 or AVX-512 6x32 intrinsics tile is selected at run time (no -march needed);
// with AVX512_BF16 exact_knn takes its candidates from a bf16 6x32 tile ranked by a certified lower bound.
// The expansion loses precision when |q| >> |q - x| (hence the centring): the final k (+4 spare)
// candidates are re-ranked with the direct sum of squares, and a query whose left-out rows cannot be
// shown farther (rounding margin) is answered by direct differences over the whole bank.
#include "edgeuad/bank_exact.hpp"

#include <omp.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <utility>
#include <vector>

namespace edgeuad {
namespace detail {
namespace {

constexpr int64_t kQB = 64;   // queries per block (one OpenMP task)
constexpr int64_t kNB = 256;  // bank rows per packed tile (a multiple of every kernel's JT)
constexpr int64_t kSharedPackMaxFloats = int64_t(64) << 20;  // 256 MiB: above it pack per query block
constexpr int kSpare = 4;     // extra candidates kept for the exact re-ranking
constexpr int64_t kRange = 64;  // threshold-pass slots per query (bf16 queries the first pass left uncertified)
// 2 (2u + u^2) with u = 2^-8 (bf16), times 1 + 2^-10 for the float rounding of |q|, |x| and their product
// (relative 2^-24 each): the bf16 tile's bound on the error of -2 q.x, per unit of |q||x|.
constexpr double kBf16Bound = 2.0 * (2.0 * 0x1p-8 + 0x1p-16) * (1.0 + 0x1p-10);

struct Cand {
  float d;
  int64_t i;
};

// The answer's order: distance, then the lower row index (ties resolved as every search resolves them).
inline bool by_dist(const Cand& u, const Cand& v) { return u.d < v.d || (u.d == v.d && u.i < v.i); }

// Sorted candidate list (ascending) of fixed capacity.
inline void insert_cand(Cand* c, int64_t cap, float d, int64_t i) {
  if (!(d < c[cap - 1].d)) return;
  int64_t p = cap - 1;
  while (p > 0 && c[p - 1].d > d) {
    c[p] = c[p - 1];
    --p;
  }
  c[p] = {d, i};
}

// Portable micro-kernel: dots[a][j] = q_a . S[:, j] for a < QT, j < JT over one d x JT slice S
// (GCC vectorises the j loop).
template <int QT, int JT>
struct PlainKernel {
  static constexpr int kRows = QT;
  static constexpr int kCols = JT;
  static inline __attribute__((always_inline)) void run(const float* const* q, const float* slice, int64_t d,
                                                        float (*dots)[JT]) {
    float acc[QT][JT] = {};
    for (int64_t dd = 0; dd < d; ++dd) {
      const float* p = slice + dd * JT;
      for (int a = 0; a < QT; ++a) {
        const float qv = q[a][dd];
        for (int j = 0; j < JT; ++j) acc[a][j] += qv * p[j];
      }
    }
    for (int a = 0; a < QT; ++a)
      for (int j = 0; j < JT; ++j) dots[a][j] = acc[a][j];
  }
};

// Scores one packed bank tile against a block of queries, updating candidates.  Each JT-column
// slice (d x JT contiguous floats: 8-32 KiB) stays in L1 while every query group passes over it.
template <class K>
inline __attribute__((always_inline)) void tile_body(const float* const* qrows, const float* qn, int64_t nqb,
                                                     const float* panel, const float* xn, int64_t jb,
                                                     int64_t nbk, int64_t d, Cand* cands, int64_t cap) {
  constexpr int QT = K::kRows, JT = K::kCols;
  float dots[QT][JT];
  for (int64_t j0 = 0; j0 < nbk; j0 += JT) {
    const int64_t jn = std::min<int64_t>(JT, nbk - j0);
    const float* xnj = xn + jb + j0;
    for (int64_t qa = 0; qa < nqb; qa += QT) {
      const float* q[QT];
      for (int a = 0; a < QT; ++a) q[a] = qrows[std::min<int64_t>(qa + a, nqb - 1)];
      K::run(q, panel + j0 * d, d, dots);
      for (int a = 0; a < QT && qa + a < nqb; ++a) {
        Cand* c = cands + (qa + a) * cap;
        const float qa_n = qn[qa + a], worst = c[cap - 1].d;
        float sc[JT];
        int any = 0;  // vectorised filter: most slices hold no candidate better than the current worst
        for (int j = 0; j < JT; ++j) {
          sc[j] = qa_n - 2.0f * dots[a][j] + (j < jn ? xnj[j < jn ? j : 0] : 0.0f);
          any |= (j < jn) & (sc[j] < worst);
        }
        if (!any) continue;
        for (int64_t j = 0; j < jn; ++j) insert_cand(c, cap, sc[j], jb + j0 + j);
      }
    }
  }
}

using TileFn = void (*)(const float* const*, const float*, int64_t, const float*, const float*, int64_t,
                        int64_t, int64_t, Cand*, int64_t);

void tile_generic(const float* const* qrows, const float* qn, int64_t nqb, const float* panel,
                  const float* xn, int64_t jb, int64_t nbk, int64_t d, Cand* cands, int64_t cap) {
  tile_body<PlainKernel<4, 8>>(qrows, qn, nqb, panel, xn, jb, nbk, d, cands, cap);
}

#if defined(__x86_64__) && defined(__GNUC__)
// AVX2+FMA 6x16 register tile (the classic SGEMM shape): 12 accumulators, 2 panel loads and
// 6 broadcasts per 12 FMAs, enough independent chains to hide FMA latency.  Selected at run
// time, so the module itself stays baseline x86-64.  avx2_dots: the dots of 6 query rows with one
// 16-column slice, left in the 12 accumulators; always inlined, so they stay in the caller's registers.
__attribute__((target("avx2,fma"), always_inline)) inline void avx2_dots(const float* const* q, const float* slice,
                                                                         int64_t d, __m256 (&c)[6][2]) {
#pragma GCC unroll 6
  for (int a = 0; a < 6; ++a) c[a][0] = c[a][1] = _mm256_setzero_ps();
  const float* p = slice;
  for (int64_t dd = 0; dd < d; ++dd, p += 16) {
    const __m256 p0 = _mm256_loadu_ps(p), p1 = _mm256_loadu_ps(p + 8);
#pragma GCC unroll 6
    for (int a = 0; a < 6; ++a) {
      const __m256 qv = _mm256_broadcast_ss(q[a] + dd);
      c[a][0] = _mm256_fmadd_ps(qv, p0, c[a][0]);
      c[a][1] = _mm256_fmadd_ps(qv, p1, c[a][1]);
    }
  }
}

struct Avx2Kernel {
  static constexpr int kRows = 6;
  static constexpr int kCols = 16;
  __attribute__((target("avx2,fma"))) static inline void run(const float* const* q, const float* slice,
                                                             int64_t d, float (*dots)[16]) {
    __m256 c[6][2];
    avx2_dots(q, slice, d, c);
#pragma GCC unroll 6
    for (int a = 0; a < 6; ++a) {
      _mm256_storeu_ps(dots[a], c[a][0]);
      _mm256_storeu_ps(dots[a] + 8, c[a][1]);
    }
  }
};

// The AVX2 tile scores in registers: per query row, 16 scores |q|^2 - 2 q.x + |x|^2 are compared with the
// row's current worst candidate and only a hit leaves the registers.  Scoring the stored dots in scalar
// code (tile_body) cost ~9 cycles per (query, row) pair: as much as the 152-dim dot itself, and most of
// the time of a narrow search (the pruned search's 33 dims).  A partial last slice takes tile_body's path.
__attribute__((target("avx2,fma"))) void tile_avx2(const float* const* qrows, const float* qn, int64_t nqb,
                                                   const float* panel, const float* xn, int64_t jb,
                                                   int64_t nbk, int64_t d, Cand* cands, int64_t cap) {
  const int64_t full = nbk / 16 * 16;
  for (int64_t j0 = 0; j0 < full; j0 += 16) {
    const float* slice = panel + j0 * d;
    for (int64_t qa = 0; qa < nqb; qa += 6) {
      const float* q[6];
      for (int a = 0; a < 6; ++a) q[a] = qrows[std::min<int64_t>(qa + a, nqb - 1)];
      __m256 c[6][2];
      avx2_dots(q, slice, d, c);
      const int rows = static_cast<int>(std::min<int64_t>(6, nqb - qa));
      // Loaded here, not before the dot loop: the 12 accumulators + 2 panel rows + 1 broadcast leave one
      // spare ymm register there, and a spill in that loop doubles its cost.
      const __m256 xn0 = _mm256_loadu_ps(xn + jb + j0), xn1 = _mm256_loadu_ps(xn + jb + j0 + 8);
      // A fixed trip count, fully unrolled: indexing c[a] with a run-time bound would move the
      // accumulators to the stack for the whole dot loop.
#pragma GCC unroll 6
      for (int a = 0; a < 6; ++a) {
        if (a >= rows) break;
        Cand* cc = cands + (qa + a) * cap;
        const __m256 qnv = _mm256_set1_ps(qn[qa + a]);
        const __m256 s0 = _mm256_add_ps(_mm256_fnmadd_ps(_mm256_set1_ps(2.0f), c[a][0], qnv), xn0);
        const __m256 s1 = _mm256_add_ps(_mm256_fnmadd_ps(_mm256_set1_ps(2.0f), c[a][1], qnv), xn1);
        const __m256 worst = _mm256_set1_ps(cc[cap - 1].d);
        const int hit = _mm256_movemask_ps(_mm256_cmp_ps(s0, worst, _CMP_LT_OQ)) |
                        (_mm256_movemask_ps(_mm256_cmp_ps(s1, worst, _CMP_LT_OQ)) << 8);
        if (!hit) continue;
        alignas(32) float sc[16];
        _mm256_store_ps(sc, s0);
        _mm256_store_ps(sc + 8, s1);
        for (unsigned h = static_cast<unsigned>(hit); h; h &= h - 1) {  // set bits only, in column order
          const int j = __builtin_ctz(h);
          insert_cand(cc, cap, sc[j], jb + j0 + j);
        }
      }
    }
  }
  if (full < nbk)
    tile_body<Avx2Kernel>(qrows, qn, nqb, panel + full * d, xn, jb + full, nbk - full, d, cands, cap);
}

// The 32 scores s0 | s1 of one query against columns col .. col + 31 (lanes outside m0 | m1 skipped): the
// ones under the query's current worst candidate go into its list, in column order.  Both 6x32 tiles end
// with this; most calls find no hit and leave at the compare.
__attribute__((target("avx512f"), always_inline)) inline void keep_hits32(Cand* cc, int64_t cap, __m512 s0, __m512 s1,
                                                                          __mmask16 m0, __mmask16 m1, int64_t col) {
  const __m512 worst = _mm512_set1_ps(cc[cap - 1].d);
  const uint32_t hit = static_cast<uint32_t>(_mm512_mask_cmp_ps_mask(m0, s0, worst, _CMP_LT_OQ)) |
                       (static_cast<uint32_t>(_mm512_mask_cmp_ps_mask(m1, s1, worst, _CMP_LT_OQ)) << 16);
  if (!hit) return;
  alignas(64) float sc[32];
  _mm512_store_ps(sc, s0);
  _mm512_store_ps(sc + 16, s1);
  for (uint32_t h = hit; h; h &= h - 1) {  // set bits only
    const int j = __builtin_ctz(h);
    insert_cand(cc, cap, sc[j], col + j);
  }
}

// AVX-512F 6x32 tile: tile_avx2's loop with 512-bit registers (12 zmm accumulators of the 32, twice the
// columns per FMA). Each column's dot is the same FMA chain over d as in the AVX2 tile, so both give the
// same scores bit for bit. A partial last slice takes tile_body's path with Avx512Kernel.
__attribute__((target("avx512f"), always_inline)) inline void avx512_dots(const float* const* q, const float* slice,
                                                                          int64_t d, __m512 (&c)[6][2]) {
#pragma GCC unroll 6
  for (int a = 0; a < 6; ++a) c[a][0] = c[a][1] = _mm512_setzero_ps();
  const float* p = slice;
  for (int64_t dd = 0; dd < d; ++dd, p += 32) {
    const __m512 p0 = _mm512_loadu_ps(p), p1 = _mm512_loadu_ps(p + 16);
#pragma GCC unroll 6
    for (int a = 0; a < 6; ++a) {
      const __m512 qv = _mm512_set1_ps(q[a][dd]);
      c[a][0] = _mm512_fmadd_ps(qv, p0, c[a][0]);
      c[a][1] = _mm512_fmadd_ps(qv, p1, c[a][1]);
    }
  }
}

struct Avx512Kernel {
  static constexpr int kRows = 6;
  static constexpr int kCols = 32;
  __attribute__((target("avx512f"))) static inline void run(const float* const* q, const float* slice,
                                                             int64_t d, float (*dots)[32]) {
    __m512 c[6][2];
    avx512_dots(q, slice, d, c);
#pragma GCC unroll 6
    for (int a = 0; a < 6; ++a) {
      _mm512_storeu_ps(dots[a], c[a][0]);
      _mm512_storeu_ps(dots[a] + 16, c[a][1]);
    }
  }
};

__attribute__((target("avx512f"))) void tile_avx512(const float* const* qrows, const float* qn, int64_t nqb,
                                                     const float* panel, const float* xn, int64_t jb,
                                                     int64_t nbk, int64_t d, Cand* cands, int64_t cap) {
  const int64_t full = nbk / 32 * 32;
  for (int64_t j0 = 0; j0 < full; j0 += 32) {
    const float* slice = panel + j0 * d;
    for (int64_t qa = 0; qa < nqb; qa += 6) {
      const float* q[6];
      for (int a = 0; a < 6; ++a) q[a] = qrows[std::min<int64_t>(qa + a, nqb - 1)];
      __m512 c[6][2];
      avx512_dots(q, slice, d, c);
      const int rows = static_cast<int>(std::min<int64_t>(6, nqb - qa));
      const __m512 xn0 = _mm512_loadu_ps(xn + jb + j0), xn1 = _mm512_loadu_ps(xn + jb + j0 + 16);
#pragma GCC unroll 6
      for (int a = 0; a < 6; ++a) {
        if (a >= rows) break;
        Cand* cc = cands + (qa + a) * cap;
        const __m512 qnv = _mm512_set1_ps(qn[qa + a]);
        const __m512 s0 = _mm512_add_ps(_mm512_fnmadd_ps(_mm512_set1_ps(2.0f), c[a][0], qnv), xn0);
        const __m512 s1 = _mm512_add_ps(_mm512_fnmadd_ps(_mm512_set1_ps(2.0f), c[a][1], qnv), xn1);
        keep_hits32(cc, cap, s0, s1, 0xFFFF, 0xFFFF, jb + j0);
      }
    }
  }
  if (full < nbk)
    tile_body<Avx512Kernel>(qrows, qn, nqb, panel + full * d, xn, jb + full, nbk - full, d, cands, cap);
}
#endif

// ---- bf16 candidates (AVX512_BF16) ----
// vdpbf16ps multiplies 32 bf16 pairs into 16 float lanes per instruction: twice the multiply-adds of a
// float FMA at the same issue rate (measured on this VM's Zen 5: 2 per cycle each).  The dots are then
// approximate, so the tile ranks rows by a certified lower bound of the squared distance instead of the
// score itself: rounding q and x to bf16 (8 significant bits, unit roundoff u = 2^-8, round to nearest
// even) changes q.x by at most (2u + u^2) |q||x| (|q_i x_i (1 - (1 + a_i)(1 + b_i))| summed, then
// Cauchy-Schwarz), so
//     |q - x|^2 >= |q|^2 + |x|^2 - 2 q~.x~ - 2 (2u + u^2) |q||x|   (minus the float32 rounding of it all),
// and the row's norm enters through a precomputed |x| (no extra pass).  The products of two bf16 values
// are exact in float32; their accumulation rounds like the float32 tile's (expansion_margin covers it).
// exact_knn re-ranks the kept rows with exact distances and certifies the rest as for the float tile.
#if defined(__x86_64__) && defined(__GNUC__)
// bf16 of a finite float, rounded to nearest even; results under the smallest normal (which vdpbf16ps
// reads as zero) are flushed here so that packing and kernel agree (the bound's absolute term covers it).
inline uint32_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  u >>= 16;
  if ((u & 0x7F80u) == 0) u &= 0x8000u;
  return u;
}

// Dim pairs (2p, 2p + 1) of a centred float row as bf16x2 words (even dim in the low half, as vdpbf16ps
// pairs them); an odd d pads the last pair with zero.
inline void bf16_pairs(const float* v, int64_t d, uint32_t* out) {
  for (int64_t p = 0; 2 * p < d; ++p)
    out[p] = bf16_bits(v[2 * p]) | (2 * p + 1 < d ? bf16_bits(v[2 * p + 1]) << 16 : 0u);
}

constexpr int kBfCols = 32;  // bank rows per slice: two zmm of 16 bf16 pairs

__attribute__((target("avx512f,avx512bf16"))) void tile_bf16(const uint32_t* const* q, const float* qn,
                                                             const float* qc, int64_t nqb, const uint32_t* panel,
                                                             const float* xn, const float* xr, int64_t jb,
                                                             int64_t nbk, int64_t d2, Cand* cands, int64_t cap) {
  const __m512 two = _mm512_set1_ps(2.0f);
  for (int64_t j0 = 0; j0 < nbk; j0 += kBfCols) {
    const uint32_t* slice = panel + j0 * d2;
    const int64_t jn = std::min<int64_t>(kBfCols, nbk - j0);
    const __mmask16 m0 = jn >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << jn) - 1);
    const __mmask16 m1 = jn >= 32 ? 0xFFFF : jn > 16 ? static_cast<__mmask16>((1u << (jn - 16)) - 1) : 0;
    for (int64_t qa = 0; qa < nqb; qa += 6) {
      const uint32_t* qr[6];
      for (int a = 0; a < 6; ++a) qr[a] = q[std::min<int64_t>(qa + a, nqb - 1)];
      __m512 c[6][2];
#pragma GCC unroll 6
      for (int a = 0; a < 6; ++a) c[a][0] = c[a][1] = _mm512_setzero_ps();
      const uint32_t* p = slice;
      for (int64_t pp = 0; pp < d2; ++pp, p += kBfCols) {
        const __m512bh p0 = (__m512bh)_mm512_loadu_si512(p), p1 = (__m512bh)_mm512_loadu_si512(p + 16);
#pragma GCC unroll 6
        for (int a = 0; a < 6; ++a) {
          const __m512bh qv = (__m512bh)_mm512_set1_epi32(static_cast<int>(qr[a][pp]));
          c[a][0] = _mm512_dpbf16_ps(c[a][0], qv, p0);
          c[a][1] = _mm512_dpbf16_ps(c[a][1], qv, p1);
        }
      }
      const int rows = static_cast<int>(std::min<int64_t>(6, nqb - qa));
      const __m512 xn0 = _mm512_maskz_loadu_ps(m0, xn + jb + j0), xn1 = _mm512_maskz_loadu_ps(m1, xn + jb + j0 + 16);
      const __m512 xr0 = _mm512_maskz_loadu_ps(m0, xr + jb + j0), xr1 = _mm512_maskz_loadu_ps(m1, xr + jb + j0 + 16);
#pragma GCC unroll 6
      for (int a = 0; a < 6; ++a) {
        if (a >= rows) break;
        Cand* cc = cands + (qa + a) * cap;
        const __m512 qnv = _mm512_set1_ps(qn[qa + a]), cqv = _mm512_set1_ps(qc[qa + a]);
        // |q|^2 - 2 dot + |x|^2 - c|q| |x|: the lower bound (see above)
        const __m512 s0 = _mm512_fnmadd_ps(cqv, xr0, _mm512_add_ps(_mm512_fnmadd_ps(two, c[a][0], qnv), xn0));
        const __m512 s1 = _mm512_fnmadd_ps(cqv, xr1, _mm512_add_ps(_mm512_fnmadd_ps(two, c[a][1], qnv), xn1));
        keep_hits32(cc, cap, s0, s1, m0, m1, jb + j0);
      }
    }
  }
}

// The bf16 scheme of blocked_candidates: tiles of bf16 pairs, 32-row slices, queries converted per block.
struct Bf16Scheme {
  using Elem = uint32_t;
  struct Block {
    std::vector<uint32_t> pairs;  // kQB x d2
    std::vector<float> cq;        // per query: c |q| (the bound's query factor)
  };
  const float* xnorm;
  const float* xroot;  // |x - center| per row
  static int64_t pairs_of(int64_t d) { return (d + 1) / 2; }
  int64_t tile_elems(int64_t d) const { return kNB * pairs_of(d); }
  void reserve(Block& b, int64_t d) const {
    b.pairs.resize(static_cast<size_t>(kQB * pairs_of(d)));
    b.cq.resize(kQB);
  }
  void pack(const float* x, const float* center, int64_t jb, int64_t nbk, int64_t d, uint32_t* out) const {
    const int64_t d2 = pairs_of(d);
    std::vector<float> row(static_cast<size_t>(d));
    std::vector<uint32_t> pr(static_cast<size_t>(d2));
    for (int64_t j = 0; j < kNB; ++j) {
      uint32_t* dst = out + (j / kBfCols) * d2 * kBfCols + (j % kBfCols);
      if (j >= nbk) {
        for (int64_t p = 0; p < d2; ++p) dst[p * kBfCols] = 0u;
        continue;
      }
      const float* r = x + (jb + j) * d;
      for (int64_t dd = 0; dd < d; ++dd) row[dd] = r[dd] - (center ? center[dd] : 0.0f);
      bf16_pairs(row.data(), d, pr.data());
      for (int64_t p = 0; p < d2; ++p) dst[p * kBfCols] = pr[p];
    }
  }
  void prepare(Block& b, const float* const* qrows, const float* qn, int64_t nqb, int64_t d) const {
    const int64_t d2 = pairs_of(d);
    for (int64_t a = 0; a < nqb; ++a) {
      bf16_pairs(qrows[a], d, b.pairs.data() + a * d2);
      b.cq[a] = static_cast<float>(kBf16Bound * std::sqrt(static_cast<double>(qn[a])));
    }
  }
  void score(Block& b, const float* const*, const float* qn, int64_t nqb, const uint32_t* panel, int64_t jb,
             int64_t nbk, int64_t d, Cand* cands, int64_t cap) const {
    const uint32_t* q[kQB];
    const int64_t d2 = pairs_of(d);
    for (int64_t a = 0; a < nqb; ++a) q[a] = b.pairs.data() + a * d2;
    tile_bf16(q, qn, b.cq.data(), nqb, panel, xnorm, xroot, jb, nbk, d2, cands, cap);
  }
};
#endif

// EDGEUAD_RT_PORTABLE=1 forces the portable tile: the path aarch64 (Jetson) always takes, so that
// x86 CI tests it too.
struct Tile {
  TileFn fn;
  int64_t cols;      // JT: the slice width the panel is packed with
  const char* name;  // reported by exact_kernel_name() (benchmarks, tests)
};

Tile pick_tile() {
  const char* portable = std::getenv("EDGEUAD_RT_PORTABLE");
  if (portable && portable[0] == '1') return {tile_generic, 8, "portable-4x8"};
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  // EDGEUAD_RT_NO_AVX512=1 keeps the AVX2 tile on an AVX-512 CPU (tests compare the two; some CPUs
  // lower their clock under 512-bit work)
  const char* no512 = std::getenv("EDGEUAD_RT_NO_AVX512");
  if (!(no512 && no512[0] == '1') && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma"))
    return {tile_avx512, Avx512Kernel::kCols, "avx512-6x32"};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return {tile_avx2, Avx2Kernel::kCols, "avx2-6x16"};
#endif
  return {tile_generic, 8, "portable-4x8"};
}

const Tile& active_tile() {
  static const Tile tile = pick_tile();
  return tile;
}

}  // namespace

bool avx2_kernels() {  // AVX2 (and FMA) usable: also true when the AVX-512 tile is the active one
#if defined(__x86_64__) && defined(__GNUC__)
  return active_tile().fn == tile_avx2 || active_tile().fn == tile_avx512;
#else
  return false;
#endif
}

namespace {

// EDGEUAD_RT_PACK_LIMIT=<floats> overrides kSharedPackMaxFloats (0 forces per-block packing, so that
// tests cover the huge-bank path without allocating gigabytes).
int64_t shared_pack_limit() {
  const char* v = std::getenv("EDGEUAD_RT_PACK_LIMIT");
  if (!v || !v[0]) return kSharedPackMaxFloats;
  char* end = nullptr;
  const long long n = std::strtoll(v, &end, 10);
  return (end && *end == '\0' && n >= 0) ? static_cast<int64_t>(n) : kSharedPackMaxFloats;
}

// Packs bank rows [jb, jb + nbk) centred into JT-column slices: out[(j / JT) * d * JT + dd * JT + j % JT].
// Columns past nbk are zero (their scores are masked in tile_body anyway).
void pack_tile(const float* x, const float* center, int64_t jb, int64_t nbk, int64_t d, int64_t jt, float* out) {
  for (int64_t j = 0; j < kNB; ++j) {
    float* dst = out + (j / jt) * d * jt + (j % jt);
    if (j >= nbk) {
      for (int64_t dd = 0; dd < d; ++dd) dst[dd * jt] = 0.0f;
      continue;
    }
    const float* r = x + (jb + j) * d;
    for (int64_t dd = 0; dd < d; ++dd) dst[dd * jt] = r[dd] - (center ? center[dd] : 0.0f);
  }
}

}  // namespace

namespace {

// The bf16 candidate pass runs where the AVX-512 tile is the active one and the CPU has AVX512_BF16;
// EDGEUAD_RT_NO_BF16=1 keeps the float32 tile (tests compare the two).
bool pick_bf16() {
#if defined(__x86_64__) && defined(__GNUC__)
  const char* off = std::getenv("EDGEUAD_RT_NO_BF16");
  return !(off && off[0] == '1') && active_tile().fn == tile_avx512 && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

}  // namespace

bool bf16_candidates() {
  static const bool on = pick_bf16();
  return on;
}

const char* exact_kernel_name() { return bf16_candidates() ? "avx512bf16-6x32" : active_tile().name; }

void row_sq_norms(const float* x, int64_t n, int64_t d, const float* center, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float* r = x + i * d;
    double s = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      const double v = static_cast<double>(r[j]) - (center ? center[j] : 0.0f);
      s += v * v;
    }
    out[i] = static_cast<float>(s);
  }
}

float l2_exact(const float* a, const float* b, int64_t d) {
  // Four independent double accumulators: the single chain of a plain loop waits on the add latency
  // (4 cycles per element), and the re-rankings call this for every kept candidate.
  double s[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t j = 0;
  for (; j + 4 <= d; j += 4)
    for (int l = 0; l < 4; ++l) {
      const double t = static_cast<double>(a[j + l]) - static_cast<double>(b[j + l]);
      s[l] += t * t;
    }
  for (; j < d; ++j) {
    const double t = static_cast<double>(a[j]) - static_cast<double>(b[j]);
    s[0] += t * t;
  }
  return static_cast<float>(std::sqrt((s[0] + s[1]) + (s[2] + s[3])));
}

namespace {

// The blocked candidate search both precisions share: the bank packed into kNB-row tiles (once per call,
// or per query block for huge banks), OpenMP over 64-query blocks, each block's candidates kept sorted.
// S (FloatScheme, Bf16Scheme) packs the tiles, prepares a block's centred queries and scores one tile.
template <class S>
void blocked_candidates(const S& scheme, const float* queries, int64_t nq, const float* x, const float* center,
                        int64_t n, int64_t d, int64_t cap, const float* init_score, int threads, float* score,
                        int64_t* idx, const typename S::Elem* prepacked = nullptr) {
  using Elem = typename S::Elem;
  static const int64_t pack_limit = shared_pack_limit();
  const int nt = threads > 0 ? threads : omp_get_max_threads();
  const int64_t nblocks = (nq + kQB - 1) / kQB;
  const int64_t ntiles = (n + kNB - 1) / kNB;
  const int64_t per_tile = scheme.tile_elems(d);
  // Packing the whole bank once (instead of once per 64-query block) removes most of the packing
  // work for frame-sized query batches; huge banks fall back to per-block packing to bound memory.
  // prepacked: the whole bank packed by the caller (MemoryBank keeps the bf16 tiles between searches).
  const bool shared_pack = prepacked || ntiles * per_tile <= pack_limit;
  std::vector<Elem> own(shared_pack && !prepacked ? static_cast<size_t>(ntiles * per_tile) : 0);  // bad_alloc: caller's thread
  const Elem* packed = prepacked ? prepacked : own.data();
  std::exception_ptr error;
  std::atomic<bool> failed{false};
#pragma omp parallel num_threads(nt)
  {
    std::vector<Elem> panel;
    std::vector<Cand> cands;
    std::vector<float> qn(kQB), qc;
    typename S::Block work;
    try {
      if (!shared_pack) panel.assign(static_cast<size_t>(per_tile), Elem{});
      qc.resize(kQB * d);
      cands.resize(kQB * cap);
      scheme.reserve(work, d);
    } catch (...) {
#pragma omp critical(edgeuad_exact_err)
      if (!error) error = std::current_exception();
      failed = true;
    }
    if (shared_pack && !prepacked) {
#pragma omp for schedule(static)
      for (int64_t t = 0; t < ntiles; ++t)
        scheme.pack(x, center, t * kNB, std::min(kNB, n - t * kNB), d, own.data() + t * per_tile);
    }  // implicit barrier: every tile is packed before any block reads it
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      if (failed) continue;  // e.g. out of memory in another thread
      const int64_t q0 = blk * kQB, nqb = std::min(kQB, nq - q0);
      const float* qrows[kQB];  // centred queries
      for (int64_t a = 0; a < nqb; ++a) {
        const float* src = queries + (q0 + a) * d;
        float* dst = qc.data() + a * d;
        for (int64_t dd = 0; dd < d; ++dd) dst[dd] = src[dd] - (center ? center[dd] : 0.0f);
        qrows[a] = dst;
      }
      row_sq_norms(qc.data(), nqb, d, nullptr, qn.data());
      scheme.prepare(work, qrows, qn.data(), nqb, d);
      for (int64_t a = 0; a < nqb; ++a) {
        const float init = init_score ? init_score[q0 + a] : std::numeric_limits<float>::infinity();
        std::fill(cands.begin() + a * cap, cands.begin() + (a + 1) * cap, Cand{init, -1});
      }
      for (int64_t t = 0; t < ntiles; ++t) {
        const int64_t jb = t * kNB, nbk = std::min(kNB, n - jb);
        const Elem* pt = packed + t * per_tile;
        if (!shared_pack) {
          scheme.pack(x, center, jb, nbk, d, panel.data());
          pt = panel.data();
        }
        scheme.score(work, qrows, qn.data(), nqb, pt, jb, nbk, d, cands.data(), cap);
      }
      for (int64_t a = 0; a < nqb * cap; ++a) {
        score[q0 * cap + a] = cands[a].d;
        idx[q0 * cap + a] = cands[a].i;
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

// float32 tiles: the expanded score |q|^2 - 2 q.x + |x|^2 (the active Tile's micro-kernel).
struct FloatScheme {
  using Elem = float;
  struct Block {};
  const Tile& tile;
  const float* xnorm;
  int64_t tile_elems(int64_t d) const { return kNB * d; }
  void reserve(Block&, int64_t) const {}
  void pack(const float* x, const float* center, int64_t jb, int64_t nbk, int64_t d, float* out) const {
    pack_tile(x, center, jb, nbk, d, tile.cols, out);
  }
  void prepare(Block&, const float* const*, const float*, int64_t, int64_t) const {}
  void score(Block&, const float* const* qrows, const float* qn, int64_t nqb, const float* panel, int64_t jb,
             int64_t nbk, int64_t d, Cand* cands, int64_t cap) const {
    tile.fn(qrows, qn, nqb, panel, xnorm, jb, nbk, d, cands, cap);
  }
};

}  // namespace

void knn_candidates(const float* queries, int64_t nq, const float* x, const float* center, const float* xnorm,
                    int64_t n, int64_t d, int64_t cap, const float* init_score, int threads, float* score,
                    int64_t* idx) {
  blocked_candidates(FloatScheme{active_tile(), xnorm}, queries, nq, x, center, n, d, cap, init_score, threads,
                     score, idx);
}

double expansion_margin(int64_t d, double qn, double xn_max) {
  // Float rounding of |q|^2 - 2 q.x + |x|^2: the d-term dot errs by <= d u |q||x| <= d u (qn + xn) / 2
  // (u = 2^-24, FMA accumulation), the norms and the two additions by a few u (qn + xn); twice that.
  return 2.0 * static_cast<double>(d + 4) * 0x1p-24 * (qn + xn_max);
}

double bf16_margin(int64_t d, double qn, double xn_max) {
  // expansion_margin with room for |q~||x~| <= (1 + u)^2 |q||x| in the accumulation term, plus an absolute
  // term for values and products under float's smallest normal, which vdpbf16ps reads and writes as zero.
  return 1.02 * expansion_margin(d, qn, xn_max) + static_cast<double>(d) * 0x1p-100 * (1.0 + qn + xn_max);
}

namespace {

int64_t exact_knn_impl(const float* queries, int64_t nq, const float* x, const float* center, const float* xnorm,
                       int64_t n, int64_t d, int64_t k, int threads, float* dist, int64_t* idx, bool bf16,
                       int64_t* refined, int64_t* second, const Bf16Bank* pack) {
  const int nt = threads > 0 ? threads : omp_get_max_threads();
  const int64_t cap = std::min<int64_t>(k + kSpare, n);
  std::vector<float> sc(static_cast<size_t>(nq * cap));
  std::vector<int64_t> ci(static_cast<size_t>(nq * cap));
  bf16 = bf16 && cap < n;  // all rows kept: nothing to certify, the float pass is as good
  std::vector<float> xr;  // |x - center| per row, when no pack brings it
  const float* xroot = nullptr;
  const uint32_t* tiles = nullptr;  // the bank's packed bf16 tiles, when the pack holds them
#if !(defined(__x86_64__) && defined(__GNUC__))
  (void)pack, (void)xroot, (void)tiles;  // no bf16 tile off x86 (bf16 is false there: bf16_candidates())
#else
  if (bf16) {
    if (!pack) {
      xr.resize(static_cast<size_t>(n));
      for (int64_t j = 0; j < n; ++j) xr[j] = std::sqrt(xnorm[j]);
    }
    xroot = pack ? pack->xroot.data() : xr.data();
    tiles = pack && !pack->tiles.empty() ? pack->tiles.data() : nullptr;
    blocked_candidates(Bf16Scheme{xnorm, xroot}, queries, nq, x, center, n, d, cap, nullptr, threads, sc.data(),
                       ci.data(), tiles);
  } else
#endif
    knn_candidates(queries, nq, x, center, xnorm, n, d, cap, nullptr, threads, sc.data(), ci.data());
  const double xn_max = n ? static_cast<double>(*std::max_element(xnorm, xnorm + n)) : 0.0;
  std::atomic<int64_t> direct{0};
  std::vector<char> redo(bf16 ? static_cast<size_t>(nq) : 0, 0);
  std::vector<float> need(bf16 ? static_cast<size_t>(nq) : 0);  // their threshold score (see below)
#pragma omp parallel num_threads(nt)
  {
    std::vector<Cand> c(static_cast<size_t>(cap));
#pragma omp for schedule(static)
    for (int64_t a = 0; a < nq; ++a) {
      // Exact re-ranking of the kept candidates (the expansion cancels badly when |q| >> |q - x|) ...
      const float* q = queries + a * d;
      for (int64_t t = 0; t < cap; ++t) c[t] = {l2_exact(q, x + ci[a * cap + t] * d, d), ci[a * cap + t]};
      std::sort(c.begin(), c.end(), by_dist);
      // ... certified: a row left out scored >= the last kept score, so its true squared distance is at
      // least that minus the rounding margin.  When that does not clear the k-th exact distance (rows
      // nearly as close as the k-th, far from the centre: many near-duplicates), the query is answered by
      // direct differences over every row instead; after the bf16 pass (a wider margin), by the float pass.
      double qn = 0.0;
      for (int64_t dd = 0; dd < d; ++dd) {
        const double v = static_cast<double>(q[dd]) - (center ? center[dd] : 0.0f);
        qn += v * v;
      }
      const double kth = c[k - 1].d;
      const double margin = bf16 ? bf16_margin(d, qn, xn_max) : expansion_margin(d, qn, xn_max);
      if (cap < n && !(static_cast<double>(sc[a * cap + cap - 1]) - margin > kth * kth)) {
        if (bf16) {
          redo[a] = 1;
          // every row whose bound is under this may be closer than the k-th kept row (+ the margin twice:
          // a row left out of the threshold pass is then farther by at least one margin)
          need[a] = static_cast<float>(kth * kth + 2.0 * margin) + std::numeric_limits<float>::min();
          continue;
        }
        ++direct;
        // Rows in index order through insert_cand: ties keep the lower index, as by_dist orders them.
        std::fill(c.begin(), c.begin() + k, Cand{std::numeric_limits<float>::infinity(), -1});
        for (int64_t j = 0; j < n; ++j) insert_cand(c.data(), k, l2_exact(q, x + j * d, d), j);
      }
      for (int64_t t = 0; t < k; ++t) {
        dist[a * k + t] = c[t].d;
        idx[a * k + t] = c[t].i;
      }
    }
  }
  int64_t nd = direct.load();
  std::vector<int64_t> rows;
  for (int64_t a = 0; a < static_cast<int64_t>(redo.size()); ++a)
    if (redo[a]) rows.push_back(a);
  if (second) *second = static_cast<int64_t>(rows.size());
#if defined(__x86_64__) && defined(__GNUC__)
  if (!rows.empty() && std::min<int64_t>(n, kRange) > cap) {
    // The queries the bf16 bound did not certify: first a threshold pass of the same bf16 tile (every row
    // whose bound is under need[], at most kRange), those rows re-ranked exactly; a query with more rows
    // under its threshold than that (near-duplicates) keeps its place in `rows` for the float32 search.
    const int64_t nr = static_cast<int64_t>(rows.size()), c3 = std::min<int64_t>(n, kRange);
    std::vector<float> rq(static_cast<size_t>(nr * d)), init(static_cast<size_t>(nr)), s3(static_cast<size_t>(nr * c3));
    std::vector<int64_t> i3(static_cast<size_t>(nr * c3));
    for (int64_t r = 0; r < nr; ++r) {
      std::copy(queries + rows[r] * d, queries + (rows[r] + 1) * d, rq.data() + r * d);
      init[r] = need[rows[r]];
    }
    blocked_candidates(Bf16Scheme{xnorm, xroot}, rq.data(), nr, x, center, n, d, c3, init.data(), threads, s3.data(),
                       i3.data(), tiles);
    std::vector<char> settled(static_cast<size_t>(nr));
    rerank_threshold(queries, rows.data(), nr, i3.data(), c3, x, d, k, threads, dist, idx, settled.data());
    std::vector<int64_t> left;
    for (int64_t r = 0; r < nr; ++r)
      if (!settled[r]) left.push_back(rows[r]);
    rows.swap(left);
  }
#endif
  if (refined) *refined = static_cast<int64_t>(rows.size());
  // still uncertified: the float32 search
  if (!rows.empty()) nd += exact_knn_rows(queries, rows, x, center, xnorm, n, d, k, threads, dist, idx, false);
  return nd;
}

}  // namespace

void rerank_threshold(const float* queries, const int64_t* rows, int64_t nr, const int64_t* ids, int64_t c3,
                      const float* x, int64_t d, int64_t k, int threads, float* dist, int64_t* idx, char* settled) {
  const int nt = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel num_threads(nt)
  {
    std::vector<Cand> c;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < nr; ++r) {
      settled[r] = 0;
      if (ids[r * c3 + c3 - 1] >= 0) continue;  // more rows under the threshold than slots: not certified
      const float* q = queries + rows[r] * d;
      c.clear();
      for (int64_t t = 0; t < c3 && ids[r * c3 + t] >= 0; ++t) c.push_back({l2_exact(q, x + ids[r * c3 + t] * d, d),
                                                                           ids[r * c3 + t]});
      if (static_cast<int64_t>(c.size()) < k) continue;  // the k nearest were left out: never seen; be safe
      std::partial_sort(c.begin(), c.begin() + k, c.end(), by_dist);
      for (int64_t t = 0; t < k; ++t) {
        dist[rows[r] * k + t] = c[t].d;
        idx[rows[r] * k + t] = c[t].i;
      }
      settled[r] = 1;
    }
  }
}

int64_t exact_knn_rows(const float* queries, const std::vector<int64_t>& rows, const float* x, const float* center,
                       const float* xnorm, int64_t n, int64_t d, int64_t k, int threads, float* dist, int64_t* idx,
                       bool bf16) {
  const int64_t nr = static_cast<int64_t>(rows.size());
  std::vector<float> rq(static_cast<size_t>(nr * d)), rd(static_cast<size_t>(nr * k));
  std::vector<int64_t> ri(static_cast<size_t>(nr * k));
  for (int64_t r = 0; r < nr; ++r) std::copy(queries + rows[r] * d, queries + (rows[r] + 1) * d, rq.data() + r * d);
  const int64_t direct = exact_knn_impl(rq.data(), nr, x, center, xnorm, n, d, k, threads, rd.data(), ri.data(),
                                        bf16 && bf16_candidates(), nullptr, nullptr, nullptr);
  for (int64_t r = 0; r < nr; ++r) {
    std::copy(rd.data() + r * k, rd.data() + (r + 1) * k, dist + rows[r] * k);
    std::copy(ri.data() + r * k, ri.data() + (r + 1) * k, idx + rows[r] * k);
  }
  return direct;
}

int64_t exact_knn(const float* queries, int64_t nq, const float* x, const float* center, const float* xnorm,
                  int64_t n, int64_t d, int64_t k, int threads, float* dist, int64_t* idx, int64_t* refined,
                  const Bf16Bank* pack, bool bf16, int64_t* second) {
  if (refined) *refined = 0;
  if (second) *second = 0;
  return exact_knn_impl(queries, nq, x, center, xnorm, n, d, k, threads, dist, idx, bf16 && bf16_candidates(),
                        refined, second, pack);
}

Bf16Bank pack_bf16_bank(const float* x, const float* center, const float* xnorm, int64_t n, int64_t d) {
  Bf16Bank b;
  if (!bf16_candidates() || n == 0) return b;
  b.xroot.resize(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) b.xroot[j] = std::sqrt(xnorm[j]);
#if defined(__x86_64__) && defined(__GNUC__)
  static const int64_t pack_limit = shared_pack_limit();
  const Bf16Scheme scheme{xnorm, b.xroot.data()};
  const int64_t ntiles = (n + kNB - 1) / kNB, per_tile = scheme.tile_elems(d);
  if (ntiles * per_tile > pack_limit) return b;  // huge bank: searches pack per query block
  b.tiles.resize(static_cast<size_t>(ntiles * per_tile));
  for (int64_t t = 0; t < ntiles; ++t)
    scheme.pack(x, center, t * kNB, std::min(kNB, n - t * kNB), d, b.tiles.data() + t * per_tile);
#else
  (void)x, (void)center, (void)d;  // unreachable: bf16_candidates() is false off x86
#endif
  return b;
}

}  // namespace detail
}  // namespace edgeuad
