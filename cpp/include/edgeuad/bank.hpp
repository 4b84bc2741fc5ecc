// Patch-feature memory bank: HNSW (hnswlib HierarchicalNSW<float>, squared-L2 space)
// for approximate search plus a contiguous feature copy for exact search and
// PatchCore / ReConPatch neighbourhood reweighting.
//
// hnswlib stays out of this header on purpose: hnswlib.h defines non-inline
// functions (cpuid helpers), so it may be included by one translation unit only.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace edgeuad {

// HNSW graph defaults, the one C++ definition (the binding's defaults and BankInfo use them; the
// Python BankConfig repeats them and tests/python/test_rt_bank.py checks that the two agree).
inline constexpr int64_t kDefaultM = 32;
inline constexpr int64_t kDefaultEfConstruction = 400;

struct BankInfo {
  int64_t dim = 0;
  int64_t size = 0;
  int64_t M = kDefaultM;
  int64_t ef_construction = kDefaultEfConstruction;
  uint64_t seed = 0;
  int64_t neighbor_b = 0;  // 0: no neighbour table yet
};

// How exact searches ran (for benchmarks and tests): the lower-bound prune's subspace (0: off for this
// bank), the share of queries that needed the full search, and the share the full search's rounding
// certificate sent to a direct-difference scan.
struct ExactStats {
  bool prune_enabled = true;  // set_exact_prune
  bool bf16 = false;          // full searches take bf16 candidates (bank_exact.hpp bf16_candidates)
  bool bf16_gave_up = false;  // off for this bank: a quarter of its bf16 queries needed float32 again
  int64_t prune_dims = 0;     // m of bank_exact.hpp's PruneIndex where the prune runs; 0: every exact search is a
                              // full one (no index, or beside bf16 under kMinEnergyOverBf16)
  double energy = 0.0;        // variance share inside the subspace
  int64_t queries = 0;        // exact-search queries so far
  int64_t full_queries = 0;   // of which searched in full (prune off, or not certified)
  int64_t direct_queries = 0; // of those, answered by direct differences over every row (rounding)
  int64_t second_pass_queries = 0; // bf16 candidates the first pass did not certify: a threshold pass
  int64_t refined_queries = 0; // of those, too many rows under the threshold: searched again in float32
};

// Thread safety: const searches may run concurrently from any number of
// threads; add / build_neighbor_table / save take an exclusive lock.
class MemoryBank {
 public:
  MemoryBank(int64_t dim, int64_t M = kDefaultM, int64_t ef_construction = kDefaultEfConstruction, uint64_t seed = 0);
  ~MemoryBank();
  MemoryBank(MemoryBank&&) noexcept;
  MemoryBank& operator=(MemoryBank&&) noexcept;
  MemoryBank(const MemoryBank&) = delete;
  MemoryBank& operator=(const MemoryBank&) = delete;

  // Appends n x dim features and inserts them into the HNSW graph.  threads=1
  // is deterministic for a given seed; threads=0 uses the OpenMP default.
  // Invalidates the neighbour table.
  void add(const float* features, int64_t n, int threads = 0);

  // k nearest bank items per query: Euclidean distances (ascending) and indices.
  // dist and idx hold nq*k entries.  exact=true: blocked brute force.
  void search(const float* queries, int64_t nq, int64_t k, bool exact, int64_t ef, int threads,
              float* dist, int64_t* idx) const;

  // ReConPatch Eq. 10 / PatchCore reweighting with neighbourhood size b:
  // score = (1 - 1 / sum_{r in N_b(r*)} exp(D(q, r) - s')) * s'.
  // Builds the neighbour table (same exact/ef choice) when missing or of another b.
  void search_reweighted(const float* queries, int64_t nq, int64_t b, bool exact, int64_t ef,
                         int threads, float* scores, int64_t* nn) const;

  // N x b int32 table: row i = i followed by its b-1 nearest other bank items.
  void build_neighbor_table(int64_t b, bool exact = false, int64_t ef = 64, int threads = 0);

  // Atomic write (temp file + rename) of header, features, neighbour table and the HNSW graph.
  void save(const std::string& path) const;
  // Throws IOError naming the problem on missing, truncated or corrupted files.
  static MemoryBank load(const std::string& path);

  BankInfo info() const;
  // Builds the prune index (or with bf16 candidates the packed bf16 tiles) when missing, as an exact
  // search would.
  ExactStats exact_stats() const;
  // Exact searches use the certified lower-bound prune where it applies (default) or always the full
  // search (benchmarks and tests compare the two).  Safe while searches run: each reads it once.
  void set_exact_prune(bool on);
  bool exact_prune() const;
  // Exact searches take their candidates from the bf16 tile where the CPU has AVX512_BF16 (default on;
  // exact_bf16() is false where the CPU lacks it or EDGEUAD_RT_NO_BF16=1, and on a bank where a quarter of
  // 4096+ queries needed the float32 search again, until the bank changes or it is set on again).  Same
  // neighbours either way.
  void set_exact_bf16(bool on);
  bool exact_bf16() const;
  int64_t size() const;
  int64_t dim() const;
  // Copies of the stored data (a snapshot taken under the lock).
  std::vector<float> features() const;
  std::vector<int32_t> neighbor_table() const;

 private:
  struct Impl;
  explicit MemoryBank(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace edgeuad
