// Exact nearest-neighbour patch scores on the GPU (PatchCore / ReConPatch), written once as block
// bodies like maps_kernels.hpp: nn_cuda.cu runs them on a GPU, nn_emulate.cpp on the CPU for tests.
//
//   nn       per query: the nearest bank item (squared L2, direct sum of (q - x)^2: no cancellation);
//            a block = 32 queries x 8 item lanes, the bank streamed through shared memory in tiles of
//            64 items x 32 dimensions; ties go to the lower index
//   score    per query: s' = sqrt(min); b == 0: s'; else ReConPatch Eq. 10 / PatchCore reweighting
//            (1 - 1 / sum_{r in N_b(r*)} exp(D(q, r) - s')) * s' over the bank's neighbour table
//            (same formula and float64 sum as MemoryBank::search_reweighted)
// Queries are B x (gh*gw) x D float32 (the engine's embedding output), scores B x gh x gw float32.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "edgeuad/maps_pixel.hpp"

namespace edgeuad {
namespace nnk {

constexpr int kQ = 32;          // queries per block
constexpr int kLanes = 8;       // item lanes per block
constexpr int kTileN = 64;      // bank items per tile (8 per lane)
constexpr int kTileD = 32;      // dimensions per chunk
constexpr int kThreads = kQ * kLanes;
constexpr int kPer = kTileN / kLanes;  // items per thread per tile
constexpr int kScoreThreads = 128;

struct NNParams {
  const float* queries;  // nq x dim
  const float* bank;     // n x dim
  const int32_t* table;  // n x b (b >= 2), or null
  int nq, n, dim, b;
  float* best_sq;        // nq: squared distance to the nearest item
  int32_t* best_idx;     // nq
  float* scores;         // nq
};

struct NNShared {
  float q[kQ][kTileD + 1];      // +1: no bank conflicts on column reads
  float x[kTileN][kTileD + 1];
  float acc[kThreads][kPer];    // partial squared distances, kept across the chunk barriers
  float best[kThreads];
  int32_t arg[kThreads];
};

template <class Blk>
EDGEUAD_HD void nn_body(const Blk& blk, const NNParams& P, NNShared& sh) {
  const int q0 = blk.bid * kQ;
  blk.threads([&](int t) {
    sh.best[t] = 3.4e38f;
    sh.arg[t] = -1;
  });
  for (int n0 = 0; n0 < P.n; n0 += kTileN) {
    blk.threads([&](int t) {
      for (int j = 0; j < kPer; ++j) sh.acc[t][j] = 0.0f;
    });
    for (int d0 = 0; d0 < P.dim; d0 += kTileD) {
      blk.sync();  // previous chunk fully consumed
      blk.threads([&](int t) {
        for (int i = t; i < kQ * kTileD; i += blk.nthreads) {
          const int r = i / kTileD, c = i % kTileD;
          const int q = q0 + r, d = d0 + c;
          sh.q[r][c] = (q < P.nq && d < P.dim) ? P.queries[static_cast<int64_t>(q) * P.dim + d] : 0.0f;
        }
        for (int i = t; i < kTileN * kTileD; i += blk.nthreads) {
          const int r = i / kTileD, c = i % kTileD;
          const int x = n0 + r, d = d0 + c;
          sh.x[r][c] = (x < P.n && d < P.dim) ? P.bank[static_cast<int64_t>(x) * P.dim + d] : 0.0f;
        }
      });
      blk.sync();
      blk.threads([&](int t) {
        const int qi = t % kQ, lane = t / kQ;
        for (int j = 0; j < kPer; ++j) {
          const int xi = lane + j * kLanes;  // items lane, lane+8, ...: conflict-free rows
          float s = sh.acc[t][j];
          for (int c = 0; c < kTileD; ++c) {
            const float diff = sh.q[qi][c] - sh.x[xi][c];
            s += diff * diff;
          }
          sh.acc[t][j] = s;
        }
      });
    }
    blk.threads([&](int t) {
      const int lane = t / kQ;
      for (int j = 0; j < kPer; ++j) {
        const int x = n0 + lane + j * kLanes;
        if (x < P.n && (sh.acc[t][j] < sh.best[t] || (sh.acc[t][j] == sh.best[t] && x < sh.arg[t]))) {
          sh.best[t] = sh.acc[t][j];
          sh.arg[t] = x;
        }
      }
    });
  }
  blk.sync();
  blk.threads([&](int t) {
    if (t >= kQ || q0 + t >= P.nq) return;
    float best = sh.best[t];
    int32_t arg = sh.arg[t];
    for (int lane = 1; lane < kLanes; ++lane) {
      const int u = t + lane * kQ;
      if (sh.best[u] < best || (sh.best[u] == best && sh.arg[u] < arg)) {
        best = sh.best[u];
        arg = sh.arg[u];
      }
    }
    P.best_sq[q0 + t] = best;
    P.best_idx[q0 + t] = arg;
  });
}

// Euclidean distance by the direct sum of squares (MemoryBank's l2_exact, in float).
EDGEUAD_HD float l2_direct(const float* a, const float* b, int d) {
  float s = 0.0f;
  for (int i = 0; i < d; ++i) {
    const float diff = a[i] - b[i];
    s += diff * diff;
  }
  return sqrtf(s);
}

template <class Blk>
EDGEUAD_HD void score_body(const Blk& blk, const NNParams& P) {
  blk.threads([&](int t) {
    const int q = blk.bid * blk.nthreads + t;
    if (q >= P.nq) return;
    const double s1 = sqrt(static_cast<double>(P.best_sq[q]));
    if (P.b == 0 || !P.table) {
      P.scores[q] = static_cast<float>(s1);
      return;
    }
    const float* qv = P.queries + static_cast<int64_t>(q) * P.dim;
    const int32_t* row = P.table + static_cast<int64_t>(P.best_idx[q]) * P.b;
    double sum = 0.0;
    for (int j = 0; j < P.b; ++j)
      sum += exp(static_cast<double>(l2_direct(qv, P.bank + static_cast<int64_t>(row[j]) * P.dim, P.dim)) - s1);
    P.scores[q] = static_cast<float>((1.0 - 1.0 / sum) * s1);
  });
}

template <class Exec>
void run_nn(Exec& ex, const NNParams& P) {
  ex.nn((P.nq + kQ - 1) / kQ, P);
  ex.score((P.nq + kScoreThreads - 1) / kScoreThreads, P);
}

}  // namespace nnk
}  // namespace edgeuad
