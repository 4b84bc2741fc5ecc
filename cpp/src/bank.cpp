// MemoryBank: hnswlib HNSW graph + contiguous features (see bank.hpp).
//
// hnswlib 0.6.2 notes that shape this file:
//  * hnswlib.h defines non-inline functions, so only this TU includes it.
//  * searchKnn reads the shared member ef_, so a per-call ef would race between
//    threads; we run the same greedy descent + searchBaseLayerST with our own ef.
//  * Indices and distances are copied into caller-owned buffers; nothing
//    allocated by hnswlib ever crosses into numpy (hnswlib-python's capsule
//    ownership is the source of its malloc/delete mismatch).
//  * Its path-loading constructor leaves num_deleted_ uninitialised; we set it.
//  * hnswlib's L2Space chooses its SIMD kernel at compile time: SSE only without
//    -march flags and scalar code on aarch64 (Jetson).  PortableL2Space computes
//    the same squared L2 distance with loops GCC vectorises for the baseline ISA,
//    plus an AVX2+FMA clone selected at run time on x86-64.
#include "edgeuad/bank.hpp"

#include <hnswlib/hnswlib.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <mutex>
#include <queue>
#include <random>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "edgeuad/bank_exact.hpp"
#include "edgeuad/errors.hpp"

namespace fs = std::filesystem;

namespace edgeuad {
namespace {

using Index = hnswlib::HierarchicalNSW<float>;
using hnswlib::tableint;

constexpr char kMagic[8] = {'E', 'U', 'A', 'D', 'B', 'A', 'N', 'K'};
constexpr uint32_t kVersion = 1;

// On-disk header (native little-endian; x86-64 and aarch64 both are).
struct FileHeader {
  char magic[8];
  uint32_t version;
  uint32_t header_bytes;
  uint64_t dim, size, M, ef_construction, seed, neighbor_b, hnsw_bytes;
  uint64_t payload_hash;  // features, neighbour table, HNSW bytes
  uint64_t header_hash;   // every byte above
};
static_assert(sizeof(FileHeader) == 88, "FileHeader must have no padding");

// Streaming 64-bit hash (xxHash64-style rounds over 4 lanes): fast enough for
// gigabyte banks, and any flipped bit changes it.
class Hasher {
 public:
  void update(const void* data, size_t n) {
    if (n == 0) return;  // data may be null then (an empty vector): memcpy must not see it (UBSan)
    const auto* p = static_cast<const unsigned char*>(data);
    total_ += n;
    if (fill_) {
      const size_t take = std::min(n, sizeof(buf_) - fill_);
      std::memcpy(buf_ + fill_, p, take);
      fill_ += take;
      p += take;
      n -= take;
      if (fill_ < sizeof(buf_)) return;
      stripe(buf_);
      fill_ = 0;
    }
    for (; n >= 32; n -= 32, p += 32) stripe(p);
    std::memcpy(buf_, p, n);
    fill_ = n;
  }
  uint64_t digest() const {
    uint64_t h = rotl(v_[0], 1) + rotl(v_[1], 7) + rotl(v_[2], 12) + rotl(v_[3], 18) + total_;
    for (size_t i = 0; i < fill_; ++i) h = rotl(h ^ (buf_[i] * kP5), 11) * kP1;
    h ^= h >> 33;
    h *= kP2;
    h ^= h >> 29;
    h *= kP3;
    return h ^ (h >> 32);
  }

 private:
  static constexpr uint64_t kP1 = 11400714785074694791ULL, kP2 = 14029467366897019727ULL,
                            kP3 = 1609587929392839161ULL, kP5 = 2870177450012600261ULL;
  static uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
  void stripe(const unsigned char* p) {
    for (int l = 0; l < 4; ++l) {
      uint64_t w;
      std::memcpy(&w, p + 8 * l, 8);
      v_[l] = rotl(v_[l] + w * kP2, 31) * kP1;
    }
  }
  uint64_t v_[4] = {kP1 + kP2, kP2, 0, 0 - kP1};
  unsigned char buf_[32] = {};
  size_t fill_ = 0;
  uint64_t total_ = 0;
};

uint64_t header_hash(const FileHeader& h) {
  Hasher hs;
  hs.update(&h, offsetof(FileHeader, header_hash));
  return hs.digest();
}

// Unique temporary path next to `near` (same filesystem -> atomic rename), named
// `.<name>.edgeuad-<pid>.<tag><random>.tmp` like every edgeuad temporary (python/edgeuad/atomic.py):
// what a killed process leaves behind is recognised and removed by edgeuad.atomic.remove_stale_temps.
fs::path temp_path(const fs::path& near, const std::string& tag) {
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  const uint64_t r = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ counter++;
#if defined(__unix__) || defined(__APPLE__)
  const long pid = static_cast<long>(::getpid());
#else
  const long pid = 0;
#endif
  return near.parent_path() / ("." + near.filename().string() + ".edgeuad-" + std::to_string(pid) + "." + tag +
                               std::to_string(r) + ".tmp");
}

// Removes a file on scope exit (temporary files on every error path).
struct FileGuard {
  fs::path path;
  ~FileGuard() {
    if (!path.empty()) {
      std::error_code ec;
      fs::remove(path, ec);
    }
  }
};

void write_all(std::FILE* f, const void* data, size_t n, Hasher* h, const std::string& path) {
  if (n && std::fwrite(data, 1, n, f) != n) throw IOError("cannot write " + path + " (disk full?)");
  if (h) h->update(data, n);
}

void read_all(std::ifstream& in, void* data, size_t n, Hasher& h, const std::string& path,
              const char* what) {
  if (n && !in.read(static_cast<char*>(data), static_cast<std::streamsize>(n)))
    throw IOError(path + ": truncated while reading " + what);
  h.update(data, n);
}

// Fixed-size prefix of hnswlib 0.6.2's saveIndex format (field order as written there).
struct HnswPrefix {
  size_t offset_level0, max_elements, cur_count, size_data_per_element, label_offset, offset_data;
  int maxlevel;
  tableint enterpoint;
  size_t maxM, maxM0, M;
  double mult;
  size_t ef_construction;
};

template <typename T>
bool read_pod(std::istream& in, T& v) {
  return static_cast<bool>(in.read(reinterpret_cast<char*>(&v), sizeof(T)));
}

// Validates the serialised graph against our header before hnswlib parses it:
// hnswlib trusts its input, and a bad size would become an out-of-bounds read.
void check_hnsw_file(const fs::path& p, uint64_t bytes, const FileHeader& h, const std::string& path) {
  std::ifstream in(p, std::ios::binary);
  HnswPrefix x{};
  bool ok = read_pod(in, x.offset_level0) && read_pod(in, x.max_elements) && read_pod(in, x.cur_count) &&
            read_pod(in, x.size_data_per_element) && read_pod(in, x.label_offset) &&
            read_pod(in, x.offset_data) && read_pod(in, x.maxlevel) && read_pod(in, x.enterpoint) &&
            read_pod(in, x.maxM) && read_pod(in, x.maxM0) && read_pod(in, x.M) && read_pod(in, x.mult) &&
            read_pod(in, x.ef_construction);
  const std::string bad = path + ": HNSW section is corrupted (";
  if (!ok) throw IOError(bad + "short header)");
  const size_t links0 = h.M * 2 * sizeof(tableint) + sizeof(uint32_t);
  if (x.cur_count != h.size || x.max_elements != h.size || x.M != h.M ||
      x.maxM != h.M || x.maxM0 != 2 * h.M || x.offset_level0 != 0 || x.offset_data != links0 ||
      x.label_offset != links0 + h.dim * sizeof(float) ||
      x.size_data_per_element != links0 + h.dim * sizeof(float) + sizeof(hnswlib::labeltype) ||
      !(std::isfinite(x.mult) && x.mult > 0) || x.maxlevel < 0 || x.maxlevel > 64 || x.enterpoint >= h.size)
    throw IOError(bad + "header does not match the bank)");
  uint64_t pos = static_cast<uint64_t>(in.tellg()) + h.size * x.size_data_per_element;
  const size_t per_level = h.M * sizeof(tableint) + sizeof(uint32_t);
  in.seekg(static_cast<std::streamoff>(pos));
  for (uint64_t i = 0; i < h.size; ++i) {
    uint32_t n = 0;
    if (pos + 4 > bytes || !read_pod(in, n)) throw IOError(bad + "link lists truncated)");
    pos += 4;
    if (n % per_level != 0 || n / per_level > static_cast<size_t>(x.maxlevel) || pos + n > bytes)
      throw IOError(bad + "bad link list size)");
    pos += n;
    in.seekg(static_cast<std::streamoff>(pos));
  }
  if (pos != bytes) throw IOError(bad + "unexpected trailing bytes)");
}

// After hnswlib loaded the graph: every stored neighbour id must be a valid node, and the levels
// must be consistent, since searches follow them without checks: the descent starts at the entry
// point on maxlevel_ and reads the level-L list of every neighbour it reaches on level L.
void check_links(const Index& ix, size_t n) {
  if (ix.element_levels_[ix.enterpoint_node_] != ix.maxlevel_)
    throw IOError("HNSW section is corrupted (entry point is not on the top level)");
  for (tableint i = 0; i < n; ++i) {
    for (int level = 0; level <= ix.element_levels_[i]; ++level) {
      const unsigned int* ll = ix.get_linklist_at_level(i, level);
      const size_t cnt = ix.getListCount(const_cast<unsigned int*>(ll));
      if (cnt > (level == 0 ? ix.maxM0_ : ix.maxM_)) throw IOError("HNSW section is corrupted (link count)");
      const tableint* ids = reinterpret_cast<const tableint*>(ll + 1);
      for (size_t j = 0; j < cnt; ++j) {
        if (ids[j] >= n) throw IOError("HNSW section is corrupted (neighbour id out of range)");
        if (ix.element_levels_[ids[j]] < level) throw IOError("HNSW section is corrupted (neighbour level)");
      }
    }
    if (ix.getExternalLabel(i) >= n) throw IOError("HNSW section is corrupted (label out of range)");
  }
}

int resolve_threads(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }

// Features and queries are bounded in magnitude so that no squared distance can overflow float32:
// with |x| <= 1e15 and dim <= 2^20, |x - c|^2 <= 2^20 * (2e15)^2 ~ 4e36 < FLT_MAX.  A NaN feature
// made the bank mean, and so every exact distance, NaN (every search returned index -1, and the
// reweighted score then read the table at row -1); a huge one did the same through inf.  Real
// embeddings are many orders of magnitude below the bound.
constexpr float kMaxAbsValue = 1e15f;

// Index of the first value that is NaN, inf or beyond kMaxAbsValue in n floats, or -1.
int64_t first_out_of_range(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!(std::fabs(x[i]) <= kMaxAbsValue)) return i;
  return -1;
}

// Squared L2 with 16 independent partial sums: vectorisable without -ffast-math
// (no reassociation of one running sum is needed).
inline __attribute__((always_inline)) float l2sq_body(const float* a, const float* b, size_t d) {
  float acc[16] = {};
  size_t i = 0;
  for (; i + 16 <= d; i += 16)
    for (int j = 0; j < 16; ++j) {
      const float t = a[i + j] - b[i + j];
      acc[j] += t * t;
    }
  float s = 0.0f;
  for (; i < d; ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

float l2sq_generic(const void* a, const void* b, const void* param) {
  return l2sq_body(static_cast<const float*>(a), static_cast<const float*>(b), *static_cast<const size_t*>(param));
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) float l2sq_avx2(const void* a, const void* b, const void* param) {
  return l2sq_body(static_cast<const float*>(a), static_cast<const float*>(b), *static_cast<const size_t*>(param));
}
#endif

hnswlib::DISTFUNC<float> pick_l2sq() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return l2sq_avx2;
#endif
  return l2sq_generic;
}

// Same distance and data layout as hnswlib::L2Space (files stay interchangeable).
class PortableL2Space : public hnswlib::SpaceInterface<float> {
 public:
  explicit PortableL2Space(size_t dim) : dim_(dim), fn_(pick_l2sq()) {}
  size_t get_data_size() override { return dim_ * sizeof(float); }
  hnswlib::DISTFUNC<float> get_dist_func() override { return fn_; }
  void* get_dist_func_param() override { return &dim_; }

 private:
  size_t dim_;
  hnswlib::DISTFUNC<float> fn_;
};

// Runs body(i) for i in [0, n) on nt OpenMP threads; the first exception thrown
// by any worker is rethrown on the calling thread.
template <typename F>
void parallel_for(int64_t n, int nt, int64_t chunk, F&& body) {
  std::exception_ptr error;
  std::atomic<bool> failed{false};
#pragma omp parallel for num_threads(nt) schedule(dynamic, chunk)
  for (int64_t i = 0; i < n; ++i) {
    if (failed.load(std::memory_order_relaxed)) continue;
    try {
      body(i);
    } catch (...) {
#pragma omp critical(edgeuad_bank_err)
      if (!error) error = std::current_exception();
      failed = true;
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace

struct MemoryBank::Impl {
  BankInfo info;
  std::unique_ptr<PortableL2Space> space;
  std::unique_ptr<Index> index;  // null while empty
  std::vector<float> feats;      // size x dim
  std::vector<double> sum;       // per-dimension sum of all rows (for the mean)
  std::vector<float> center;     // bank mean: exact search works on centred vectors
  std::vector<float> norms;      // |x - center|^2 per row
  mutable std::vector<int32_t> table;  // size x neighbor_b (built lazily by const searches)
  mutable std::shared_mutex mu;
  // Lower-bound prune of the exact search (bank_prune.cpp): built by the first exact search after a
  // change (its own mutex: searches hold mu shared), dropped by add().
  mutable std::mutex prune_mu;
  mutable std::shared_ptr<const detail::PruneIndex> prune;
  mutable std::shared_ptr<const detail::Bf16Bank> bf16;  // the bf16 tiles (same life as prune)
  mutable std::atomic<int64_t> exact_queries{0}, exact_full{0}, exact_direct{0}, exact_refined{0},
      exact_second{0};
  std::atomic<bool> prune_on{true};  // set_exact_prune
  std::atomic<bool> bf16_on{true};   // set_exact_bf16
  // The bf16 full search's record on this bank since it last changed (or was switched on): when a quarter of
  // its queries needed the float32 search again after kBf16Trial queries, the bank stops using it (those
  // queries cost both passes: ~1.7x the float32 search alone).  Real coreset banks fall back on 0.1-0.5%.
  static constexpr int64_t kBf16Trial = 4096;  // four frames of 32 x 32 patches
  mutable std::atomic<int64_t> trial_queries{0}, trial_refined{0};

  bool bf16_gave_up() const {
    const int64_t n = trial_queries.load();
    return n >= kBf16Trial && trial_refined.load() * 4 > n;
  }
  bool use_bf16() const { return bf16_on && detail::bf16_candidates() && !bf16_gave_up(); }
  void new_bf16_trial() {
    trial_queries = 0;
    trial_refined = 0;
  }

  // The prune runs where its index applies; beside bf16 candidates only on nearly low-rank banks
  // (kMinEnergyOverBf16), where it still beats the bf16 full search.
  static bool prune_applies(const detail::PruneIndex& p, bool bf16) {
    return p.m > 0 && (!bf16 || p.energy >= detail::kMinEnergyOverBf16);
  }

  std::shared_ptr<const detail::PruneIndex> prune_index() const {
    std::lock_guard<std::mutex> g(prune_mu);
    if (!prune)
      prune = std::make_shared<const detail::PruneIndex>(
          detail::build_prune_index(feats.data(), center.data(), norms.data(), info.size, info.dim));
    return prune;
  }

  std::shared_ptr<const detail::Bf16Bank> bf16_bank() const {
    std::lock_guard<std::mutex> g(prune_mu);
    if (!bf16)
      bf16 = std::make_shared<const detail::Bf16Bank>(
          detail::pack_bf16_bank(feats.data(), center.data(), norms.data(), info.size, info.dim));
    return bf16;
  }

  // Recomputes the mean and the centred norms after rows were appended (O(N d)).
  void recenter(int64_t first_new) {
    const int64_t d = info.dim, n = info.size;
    sum.resize(d, 0.0);
    for (int64_t i = first_new; i < n; ++i)
      for (int64_t j = 0; j < d; ++j) sum[j] += feats[i * d + j];
    center.resize(d);
    for (int64_t j = 0; j < d; ++j) center[j] = static_cast<float>(sum[j] / static_cast<double>(n));
    norms.resize(n);
    detail::row_sq_norms(feats.data(), n, d, center.data(), norms.data());
  }

  void check_query(int64_t nq, int64_t k) const {
    if (info.size == 0) throw ShapeError("the memory bank is empty: add features first");
    if (nq < 0) throw ShapeError("number of queries must be >= 0");
    if (k < 1 || k > info.size)
      throw ShapeError("k must be in [1, " + std::to_string(info.size) + "], got " + std::to_string(k));
  }

  using Candidates = std::priority_queue<std::pair<float, tableint>, std::vector<std::pair<float, tableint>>,
                                         Index::CompareByFirst>;

  // hnswlib's searchBaseLayerST (no deletions) with one change: the unvisited neighbours of the
  // expanded node are collected first and every cache line of their vectors is prefetched before
  // any distance is computed.  hnswlib prefetches one line of the next neighbour only, so a bank
  // larger than the caches (100k x 256 floats = 100 MB) waits on memory for most of each 1 KiB
  // vector; issuing all the misses at once overlaps them.  Same candidates, order and result.
  static Candidates base_layer(const Index& ix, tableint ep, const float* q, size_t ef) {
    hnswlib::VisitedList* vl = ix.visited_list_pool_->getFreeVisitedList();
    hnswlib::vl_type* visited = vl->mass;
    const hnswlib::vl_type tag = vl->curV;
    const size_t vec_bytes = ix.data_size_;
    Candidates top, frontier;  // frontier holds (-distance, id): its top is the nearest
    const float d0 = ix.fstdistfunc_(q, ix.getDataByInternalId(ep), ix.dist_func_param_);
    top.emplace(d0, ep);
    frontier.emplace(-d0, ep);
    visited[ep] = tag;
    float lower = d0;
    std::vector<tableint> fresh(ix.maxM0_ + 1);
    while (!frontier.empty()) {
      const auto c = frontier.top();
      if (-c.first > lower) break;  // hnswlib's stop rule without deletions
      frontier.pop();
      const unsigned int* ll = ix.get_linklist0(c.second);
      const int size = ix.getListCount(const_cast<unsigned int*>(ll));
      const tableint* ids = reinterpret_cast<const tableint*>(ll + 1);
      size_t nf = 0;
      for (int j = 0; j < size; ++j) {
        const tableint id = ids[j];
        if (visited[id] == tag) continue;
        visited[id] = tag;
        fresh[nf++] = id;
        const char* v = ix.getDataByInternalId(id);
        for (size_t o = 0; o < vec_bytes; o += 64) __builtin_prefetch(v + o, 0, 3);
      }
      for (size_t j = 0; j < nf; ++j) {
        const float d = ix.fstdistfunc_(q, ix.getDataByInternalId(fresh[j]), ix.dist_func_param_);
        if (top.size() < ef || lower > d) {
          frontier.emplace(-d, fresh[j]);
          top.emplace(d, fresh[j]);
          if (top.size() > ef) top.pop();
          lower = top.top().first;
        }
      }
    }
    ix.visited_list_pool_->releaseVisitedList(vl);
    return top;
  }

  // One HNSW query with a private ef (see the file comment about ef_).
  void hnsw_one(const float* q, int64_t k, int64_t ef, float* dist, int64_t* idx) const {
    const Index& ix = *index;
    tableint cur = ix.enterpoint_node_;
    float curd = ix.fstdistfunc_(q, ix.getDataByInternalId(cur), ix.dist_func_param_);
    for (int level = ix.maxlevel_; level > 0; --level) {
      bool changed = true;
      while (changed) {
        changed = false;
        const unsigned int* data = ix.get_linklist(cur, level);
        const int size = ix.getListCount(const_cast<unsigned int*>(data));
        const tableint* ids = reinterpret_cast<const tableint*>(data + 1);
        for (int i = 0; i < size; ++i) {
          const float d = ix.fstdistfunc_(q, ix.getDataByInternalId(ids[i]), ix.dist_func_param_);
          if (d < curd) {
            curd = d;
            cur = ids[i];
            changed = true;
          }
        }
      }
    }
    auto top = base_layer(ix, cur, q, static_cast<size_t>(std::max(ef, k)));
    while (static_cast<int64_t>(top.size()) > k) top.pop();
    // A graph search can return fewer than k items only on a disconnected graph.
    for (int64_t t = k - 1; t >= 0; --t) {
      if (top.empty()) {
        dist[t] = std::numeric_limits<float>::infinity();
        idx[t] = -1;
        continue;
      }
      dist[t] = std::sqrt(std::max(top.top().first, 0.0f));
      idx[t] = static_cast<int64_t>(ix.getExternalLabel(top.top().second));
      top.pop();
    }
  }

  // Caller holds mu (shared or exclusive).
  void knn(const float* q, int64_t nq, int64_t k, bool exact, int64_t ef, int threads, float* dist,
           int64_t* idx) const {
    check_query(nq, k);
    if (ef < 1) throw ShapeError("ef must be >= 1");
    if (const int64_t bad = first_out_of_range(q, nq * info.dim); bad >= 0)
      throw ShapeError("queries must be finite with |x| <= 1e15; row " + std::to_string(bad / info.dim) +
                       " is not");
    if (nq == 0) return;
    if (exact) {
      int64_t full = nq, direct = 0, refined = 0, second = 0;
      const bool bf = use_bf16();
      const auto p = prune_on ? prune_index() : nullptr;
      if (p && prune_applies(*p, bf)) {
        full = detail::pruned_knn(*p, q, nq, feats.data(), center.data(), norms.data(), info.size, info.dim, k,
                                  threads, dist, idx, &direct, bf);
      } else {
        const auto b = bf ? bf16_bank() : nullptr;
        direct = detail::exact_knn(q, nq, feats.data(), center.data(), norms.data(), info.size, info.dim, k,
                                   threads, dist, idx, &refined, b.get(), bf, &second);
        if (bf) {
          trial_queries += nq;
          trial_refined += refined;
        }
      }
      exact_queries += nq;
      exact_direct += direct;
      exact_full += full;
      exact_refined += refined;
      exact_second += second;
      return;
    }
    parallel_for(nq, resolve_threads(threads), 16,
                 [&](int64_t i) { hnsw_one(q + i * info.dim, k, ef, dist + i * k, idx + i * k); });
  }

  // Caller holds mu exclusively.
  void build_table(int64_t b, bool exact, int64_t ef, int threads) const {
    if (info.size == 0) throw ShapeError("the memory bank is empty: add features first");
    if (b < 1 || b > info.size)
      throw ShapeError("b must be in [1, " + std::to_string(info.size) + "], got " + std::to_string(b));
    const int64_t n = info.size;
    std::vector<float> d(static_cast<size_t>(n * b));
    std::vector<int64_t> nb(static_cast<size_t>(n * b));
    knn(feats.data(), n, b, exact, std::max(ef, b), threads, d.data(), nb.data());
    std::vector<int32_t> t(static_cast<size_t>(n * b));
    for (int64_t i = 0; i < n; ++i) {
      // Row i: the item itself, then its nearest others (self is dropped from
      // the search result so that duplicates cannot push it out).
      int32_t* row = t.data() + i * b;
      int64_t fill = 0;
      row[fill++] = static_cast<int32_t>(i);
      for (int64_t j = 0; j < b && fill < b; ++j) {
        const int64_t v = nb[i * b + j];
        if (v != i && v >= 0) row[fill++] = static_cast<int32_t>(v);
      }
      while (fill < b) row[fill++] = static_cast<int32_t>(i);  // disconnected HNSW node only
    }
    table.swap(t);
    const_cast<BankInfo&>(info).neighbor_b = b;
  }
};

MemoryBank::MemoryBank(int64_t dim, int64_t M, int64_t ef_construction, uint64_t seed)
    : impl_(std::make_unique<Impl>()) {
  if (dim < 1 || dim > (1 << 20)) throw ShapeError("dim must be in [1, 2^20], got " + std::to_string(dim));
  if (M < 2 || M > 10000) throw ShapeError("M must be in [2, 10000], got " + std::to_string(M));
  if (ef_construction < 1) throw ShapeError("ef_construction must be >= 1");
  impl_->info.dim = dim;
  impl_->info.M = M;
  impl_->info.ef_construction = ef_construction;
  impl_->info.seed = seed;
  impl_->space = std::make_unique<PortableL2Space>(static_cast<size_t>(dim));
}

MemoryBank::MemoryBank(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MemoryBank::~MemoryBank() = default;
MemoryBank::MemoryBank(MemoryBank&&) noexcept = default;
MemoryBank& MemoryBank::operator=(MemoryBank&&) noexcept = default;

void MemoryBank::add(const float* features, int64_t n, int threads) {
  Impl& m = *impl_;
  std::unique_lock<std::shared_mutex> lock(m.mu);
  if (n < 0) throw ShapeError("number of features must be >= 0");
  if (n == 0) return;
  if (m.info.size + n >= std::numeric_limits<int32_t>::max())
    throw ShapeError("a memory bank holds fewer than 2^31 items");
  const int64_t d = m.info.dim, old = m.info.size, total = old + n;
  if (const int64_t bad = first_out_of_range(features, n * d); bad >= 0)
    throw ShapeError("features must be finite with |x| <= 1e15; row " + std::to_string(bad / d) + " is not");
  if (!m.index) {
    m.index = std::make_unique<Index>(m.space.get(), static_cast<size_t>(total), m.info.M,
                                      m.info.ef_construction, m.info.seed);
  } else {
    m.index->resizeIndex(static_cast<size_t>(total));
  }
  m.feats.insert(m.feats.end(), features, features + n * d);
  m.info.size = total;
  m.recenter(old);
  m.prune.reset();  // exclusive lock: no search holds it
  m.bf16.reset();
  m.new_bf16_trial();  // a changed bank gets a new trial of the bf16 search
  m.table.clear();
  m.info.neighbor_b = 0;
  Index* ix = m.index.get();
  int64_t start = 0;
  if (old == 0) {  // the first node becomes the entry point: insert it alone
    ix->addPoint(features, static_cast<hnswlib::labeltype>(0));
    start = 1;
  }
  const int nt = n - start < 64 ? 1 : resolve_threads(threads);
  // With nt == 1 insertion order, and hence the graph, is deterministic for a seed.
  parallel_for(n - start, nt, 32, [&](int64_t i) {
    ix->addPoint(features + (start + i) * d, static_cast<hnswlib::labeltype>(old + start + i));
  });
}

void MemoryBank::search(const float* queries, int64_t nq, int64_t k, bool exact, int64_t ef, int threads,
                        float* dist, int64_t* idx) const {
  std::shared_lock<std::shared_mutex> lock(impl_->mu);
  impl_->knn(queries, nq, k, exact, ef, threads, dist, idx);
}

void MemoryBank::build_neighbor_table(int64_t b, bool exact, int64_t ef, int threads) {
  std::unique_lock<std::shared_mutex> lock(impl_->mu);
  impl_->build_table(b, exact, ef, threads);
}

void MemoryBank::search_reweighted(const float* queries, int64_t nq, int64_t b, bool exact, int64_t ef,
                                   int threads, float* scores, int64_t* nn) const {
  const Impl& m = *impl_;
  for (;;) {
    {
      std::shared_lock<std::shared_mutex> lock(m.mu);
      m.check_query(nq, 1);
      if (b < 1 || b > m.info.size)
        throw ShapeError("b must be in [1, " + std::to_string(m.info.size) + "], got " + std::to_string(b));
      if (m.info.neighbor_b == b) {
        std::vector<float> s(static_cast<size_t>(nq));
        m.knn(queries, nq, 1, exact, ef, threads, s.data(), nn);
        const int64_t d = m.info.dim;
        parallel_for(nq, resolve_threads(threads), 64, [&](int64_t i) {
          const float* q = queries + i * d;
          const double s1 = s[i];
          if (nn[i] < 0) {  // no neighbour found (a disconnected HNSW node): no table row to read
            scores[i] = std::numeric_limits<float>::infinity();
            return;
          }
          const int32_t* row = m.table.data() + nn[i] * b;
          // (1 - exp(s') / sum exp(D)) * s', written without overflow as
          // (1 - 1 / sum exp(D - s')) * s'.
          double sum = 0.0;
          for (int64_t j = 0; j < b; ++j)
            sum += std::exp(static_cast<double>(detail::l2_exact(q, m.feats.data() + row[j] * d, d)) - s1);
          scores[i] = static_cast<float>((1.0 - 1.0 / sum) * s1);
        });
        return;
      }
    }
    // Missing (or other-b) table: build it under the exclusive lock, then retry.
    std::unique_lock<std::shared_mutex> lock(m.mu);
    if (m.info.neighbor_b != b) m.build_table(b, exact, ef, threads);
  }
}

void MemoryBank::set_exact_prune(bool on) { impl_->prune_on = on; }
bool MemoryBank::exact_prune() const { return impl_->prune_on; }
void MemoryBank::set_exact_bf16(bool on) {
  impl_->bf16_on = on;
  if (on) impl_->new_bf16_trial();  // switching it on (again) starts a new trial
}
bool MemoryBank::exact_bf16() const { return impl_->use_bf16(); }

ExactStats MemoryBank::exact_stats() const {
  std::shared_lock<std::shared_mutex> lock(impl_->mu);
  const Impl& m = *impl_;
  ExactStats st;
  st.prune_enabled = m.prune_on;
  st.bf16 = m.use_bf16();
  st.bf16_gave_up = m.bf16_on && detail::bf16_candidates() && m.bf16_gave_up();
  bool pruned = false;
  if (st.prune_enabled && m.info.size > 0) {
    const auto p = m.prune_index();
    pruned = Impl::prune_applies(*p, st.bf16);
    st.prune_dims = pruned ? p->m : 0;
    st.energy = p->energy;
  }
  if (st.bf16 && !pruned && m.info.size > 0) m.bf16_bank();  // packed now, as the first exact search would
  st.queries = m.exact_queries.load();
  st.full_queries = m.exact_full.load();
  st.direct_queries = m.exact_direct.load();
  st.refined_queries = m.exact_refined.load();
  st.second_pass_queries = m.exact_second.load();
  return st;
}

BankInfo MemoryBank::info() const {
  std::shared_lock<std::shared_mutex> lock(impl_->mu);
  return impl_->info;
}
int64_t MemoryBank::size() const { return info().size; }
int64_t MemoryBank::dim() const { return impl_->info.dim; }  // immutable after construction

std::vector<float> MemoryBank::features() const {
  std::shared_lock<std::shared_mutex> lock(impl_->mu);
  return impl_->feats;
}

std::vector<int32_t> MemoryBank::neighbor_table() const {
  std::shared_lock<std::shared_mutex> lock(impl_->mu);
  return impl_->table;
}

void MemoryBank::save(const std::string& path) const {
  const Impl& m = *impl_;
  // Exclusive: a concurrent lazy neighbour-table build must not change what is written.
  std::unique_lock<std::shared_mutex> lock(m.mu);
  const fs::path target(path);
  FileGuard hnsw_tmp{temp_path(target, "hnsw")};
  uint64_t hnsw_bytes = 0;
  if (m.index) {
    m.index->saveIndex(hnsw_tmp.path.string());
    std::error_code ec;
    hnsw_bytes = fs::file_size(hnsw_tmp.path, ec);
    if (ec) throw IOError("cannot write " + path + ": temporary HNSW file failed (" + ec.message() + ")");
  }
  FileGuard out_tmp{temp_path(target, "tmp")};
  std::FILE* f = std::fopen(out_tmp.path.string().c_str(), "wb");
  if (!f) throw IOError("cannot open " + out_tmp.path.string() + " for writing: " + std::strerror(errno));
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> fcloser(f, std::fclose);
  FileHeader h{};
  std::memcpy(h.magic, kMagic, 8);
  h.version = kVersion;
  h.header_bytes = sizeof(FileHeader);
  h.dim = m.info.dim;
  h.size = m.info.size;
  h.M = m.info.M;
  h.ef_construction = m.info.ef_construction;
  h.seed = m.info.seed;
  h.neighbor_b = m.info.neighbor_b;
  h.hnsw_bytes = hnsw_bytes;
  write_all(f, &h, sizeof(h), nullptr, path);  // placeholder, rewritten with the hashes
  Hasher hs;
  write_all(f, m.feats.data(), m.feats.size() * sizeof(float), &hs, path);
  write_all(f, m.table.data(), m.table.size() * sizeof(int32_t), &hs, path);
  if (hnsw_bytes) {
    std::ifstream in(hnsw_tmp.path, std::ios::binary);
    std::vector<char> buf(1 << 20);
    uint64_t left = hnsw_bytes;
    while (left) {
      const size_t take = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
      if (!in.read(buf.data(), static_cast<std::streamsize>(take))) throw IOError("cannot read back the HNSW graph");
      write_all(f, buf.data(), take, &hs, path);
      left -= take;
    }
  }
  h.payload_hash = hs.digest();
  h.header_hash = header_hash(h);
  if (std::fseek(f, 0, SEEK_SET) != 0) throw IOError("cannot seek in " + out_tmp.path.string());
  write_all(f, &h, sizeof(h), nullptr, path);
  if (std::fflush(f) != 0) throw IOError("cannot write " + path + ": " + std::strerror(errno));
#if defined(__unix__) || defined(__APPLE__)
  ::fsync(::fileno(f));  // the rename below must not expose a file whose data is not on disk
#endif
  fcloser.reset();
  std::error_code ec;
  fs::rename(out_tmp.path, target, ec);
  if (ec) throw IOError("cannot move the bank into place at " + path + ": " + ec.message());
  out_tmp.path.clear();  // renamed: nothing to remove
}

MemoryBank MemoryBank::load(const std::string& path) {
  std::error_code ec;
  const uint64_t file_size = fs::file_size(path, ec);
  if (ec) throw IOError("cannot open memory bank " + path + ": " + ec.message());
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IOError("cannot open memory bank " + path);
  FileHeader h{};
  if (file_size < sizeof(FileHeader) || !in.read(reinterpret_cast<char*>(&h), sizeof(h)))
    throw IOError(path + ": truncated memory bank (" + std::to_string(file_size) + " bytes, header needs " +
                  std::to_string(sizeof(FileHeader)) + ")");
  if (std::memcmp(h.magic, kMagic, 8) != 0)
    throw IOError(path + ": not an edgeuad memory bank (bad magic, expected EUADBANK)");
  if (header_hash(h) != h.header_hash) throw IOError(path + ": memory bank header is corrupted (checksum mismatch)");
  if (h.version != kVersion)
    throw IOError(path + ": unsupported memory bank format version " + std::to_string(h.version) +
                  " (this build reads version " + std::to_string(kVersion) + ")");
  if (h.header_bytes != sizeof(FileHeader) || h.dim < 1 || h.dim > (1u << 20) || h.M < 2 || h.M > 10000 ||
      h.size >= static_cast<uint64_t>(std::numeric_limits<int32_t>::max()) || h.neighbor_b > h.size ||
      h.ef_construction < 1 || (h.size > 0) != (h.hnsw_bytes > 0))
    throw IOError(path + ": memory bank header has inconsistent values");
  // Sizes fit in 64 bits given the bounds above (size < 2^31, dim <= 2^20).
  const uint64_t feat_bytes = h.size * h.dim * sizeof(float);
  const uint64_t table_bytes = h.size * h.neighbor_b * sizeof(int32_t);
  if (h.hnsw_bytes > (1ULL << 50)) throw IOError(path + ": memory bank header has inconsistent values");
  const uint64_t expected = sizeof(FileHeader) + feat_bytes + table_bytes + h.hnsw_bytes;
  if (file_size < expected)
    throw IOError(path + ": truncated memory bank (expected " + std::to_string(expected) + " bytes, found " +
                  std::to_string(file_size) + ")");
  if (file_size > expected)
    throw IOError(path + ": corrupted memory bank (" + std::to_string(file_size - expected) +
                  " unexpected trailing bytes)");

  auto impl = std::make_unique<Impl>();
  impl->info.dim = static_cast<int64_t>(h.dim);
  impl->info.size = static_cast<int64_t>(h.size);
  impl->info.M = static_cast<int64_t>(h.M);
  impl->info.ef_construction = static_cast<int64_t>(h.ef_construction);
  impl->info.seed = h.seed;
  impl->info.neighbor_b = static_cast<int64_t>(h.neighbor_b);
  impl->space = std::make_unique<PortableL2Space>(static_cast<size_t>(h.dim));
  Hasher hs;
  impl->feats.resize(static_cast<size_t>(h.size * h.dim));
  read_all(in, impl->feats.data(), feat_bytes, hs, path, "features");
  impl->table.resize(static_cast<size_t>(h.size * h.neighbor_b));
  read_all(in, impl->table.data(), table_bytes, hs, path, "neighbour table");
  FileGuard hnsw_tmp{temp_path(fs::temp_directory_path() / "edgeuad_bank", "hnsw")};
  if (h.hnsw_bytes) {
    std::ofstream out(hnsw_tmp.path, std::ios::binary);
    if (!out) throw IOError("cannot create a temporary file in " + fs::temp_directory_path().string());
    std::vector<char> buf(1 << 20);
    uint64_t left = h.hnsw_bytes;
    while (left) {
      const size_t take = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
      read_all(in, buf.data(), take, hs, path, "HNSW graph");
      if (!out.write(buf.data(), static_cast<std::streamsize>(take))) throw IOError("cannot write temporary HNSW file");
      left -= take;
    }
    out.close();
  }
  if (hs.digest() != h.payload_hash) throw IOError(path + ": memory bank data is corrupted (checksum mismatch)");
  if (first_out_of_range(impl->feats.data(), static_cast<int64_t>(impl->feats.size())) >= 0)
    throw IOError(path + ": memory bank is corrupted (features not finite or beyond 1e15)");
  for (int32_t v : impl->table)
    if (v < 0 || static_cast<uint64_t>(v) >= h.size) throw IOError(path + ": neighbour table is corrupted");
  if (h.size > 0) {
    check_hnsw_file(hnsw_tmp.path, h.hnsw_bytes, h, path);
    try {
      impl->index = std::make_unique<Index>(impl->space.get(), hnsw_tmp.path.string());
    } catch (const std::exception& e) {
      throw IOError(path + ": cannot load the HNSW graph: " + e.what());
    }
    Index& ix = *impl->index;
    ix.num_deleted_ = 0;  // uninitialised by hnswlib's loading constructor; we never delete
    ix.level_generator_.seed(h.seed + h.size);  // later add() stays deterministic
    ix.update_probability_generator_.seed(h.seed + h.size + 1);
    check_links(ix, h.size);
    impl->recenter(0);
  }
  return MemoryBank(std::move(impl));
}

}  // namespace edgeuad
