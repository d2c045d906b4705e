// CPU kernel of diffeig::symmetry_stats: min, max and max |W - W^T| of a batch of
// square matrices in one cache-blocked pass. Each pair (i, j), (j, i) is read once, in
// two tiles that fit the cache, so W is read once from memory; the tiles of the upper
// triangle are shared out between threads. float64 on AVX2 CPUs takes a register-
// transposing, prefetching variant of the same pass (tile_double_avx2).

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <vector>

#include "../checks.h"
#include "cpu_features.h"

#ifdef DIFFEIG_AVX2
#include <immintrin.h>
#endif

namespace diffeig {
namespace {

constexpr int64_t kTile = 64;

struct Stats {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -std::numeric_limits<double>::infinity();
  double asym = 0.0;
  bool nan = false;
};

// The pairs of tile (bi, bj), bj >= bi: the mirror tile (bj, bi) is first copied
// transposed into `buf` (read row by row), so that both sides of every pair are then
// compared along contiguous rows, with local accumulators, in loops the compiler
// vectorizes (W itself may alias the accumulators of a Stats&: kept in memory, they made
// every comparison a store and a reload).
template <typename scalar_t>
__attribute__((always_inline)) inline void tile_stats(const scalar_t* w, int64_t n, int64_t bi,
                                                      int64_t bj, Stats& s, scalar_t* buf) {
  const int64_t i1 = std::min(bi + kTile, n), j1 = std::min(bj + kTile, n);
  for (int64_t j = bj; j < j1; ++j) {
    for (int64_t i = bi; i < i1; ++i) buf[(i - bi) * kTile + (j - bj)] = w[j * n + i];
  }
  double lo = s.lo, hi = s.hi, asym = s.asym;
  int nan = 0;
  for (int64_t i = bi; i < i1; ++i) {
    const scalar_t* a = w + i * n;
    const scalar_t* b = buf + (i - bi) * kTile - bj;
    // on a diagonal tile each pair once: j >= i
#pragma omp simd reduction(min : lo) reduction(max : hi, asym) reduction(| : nan)
    for (int64_t j = (bi == bj ? i : bj); j < j1; ++j) {
      const double x = static_cast<double>(a[j]), y = static_cast<double>(b[j]);
      nan |= (x != x) | (y != y);
      const double mn = x < y ? x : y, mx = x < y ? y : x;
      lo = mn < lo ? mn : lo;
      hi = mx > hi ? mx : hi;
      const double d = std::abs(x - y);  // inf - inf is NaN: then hi = inf says it
      asym = d > asym ? d : asym;
    }
  }
  s.lo = lo;
  s.hi = hi;
  s.asym = asym;
  s.nan = s.nan || nan;
}

// The p-th upper-triangle tile (bi, bj), bj >= bi, of a matrix with `tiles` per side.
inline void tile_of(int64_t p, int64_t tiles, int64_t& bi, int64_t& bj) {
  bi = 0;
  while (p >= tiles - bi) {  // p-th tile of row bi's tiles bj = bi ... tiles - 1
    p -= tiles - bi;
    ++bi;
  }
  bj = bi + p;
}

// The pairs (i, j), (j, i) of row i for j in [j0, j1), one at a time.
inline void scalar_pairs(const double* w, int64_t n, int64_t i, int64_t j0, int64_t j1,
                         Stats& s) {
  for (int64_t j = j0; j < j1; ++j) {
    const double x = w[i * n + j], y = w[j * n + i];
    s.nan = s.nan || x != x || y != y;
    s.lo = std::min(s.lo, std::min(x, y));
    s.hi = std::max(s.hi, std::max(x, y));
    s.asym = std::max(s.asym, std::abs(x - y));
  }
}

// Tiles [begin, end) of the batch's upper-triangle tiles (`pairs` per matrix).
template <typename scalar_t>
__attribute__((always_inline)) inline void tiles_stats(const scalar_t* base, int64_t n,
                                                       int64_t tiles, int64_t begin, int64_t end,
                                                       Stats& s) {
  const int64_t pairs = tiles * (tiles + 1) / 2;
  std::vector<scalar_t> buf(kTile * kTile);
  for (int64_t t = begin; t < end; ++t) {
    int64_t bi, bj;
    tile_of(t % pairs, tiles, bi, bj);
    tile_stats<scalar_t>(base + t / pairs * n * n, n, bi * kTile, bj * kTile, s, buf.data());
  }
}

template <typename scalar_t>
void tiles_default(const scalar_t* base, int64_t n, int64_t tiles, int64_t begin, int64_t end,
                   Stats& s) {
  tiles_stats<scalar_t>(base, n, tiles, begin, end, s);
}

#ifdef DIFFEIG_AVX2
// The same code for AVX2: SSE2 has no blend, and its min / max reductions run at half
// the scalar loop's speed; with AVX2 they run at twice it.
template <typename scalar_t>
__attribute__((target("avx2,fma"))) void tiles_avx2(const scalar_t* base, int64_t n,
                                                     int64_t tiles, int64_t begin, int64_t end,
                                                     Stats& s) {
  tiles_stats<scalar_t>(base, n, tiles, begin, end, s);
}

// float64 with AVX2: each 4 x 4 block of the mirror tile is transposed in registers
// (no copy through a buffer: the copy's strided stores cost more than the comparisons),
// and the next tile's rows are prefetched a group of 4 rows at a time while this one is
// compared: its rows lie N * 8 bytes apart, a stride no hardware prefetcher follows, and
// without it the pass waits on memory (several times a product with W at N = 3,600).
__attribute__((target("avx2,fma"))) void tile_double_avx2(const double* w, int64_t n, int64_t bi,
                                                           int64_t bj, int64_t nbi, int64_t nbj,
                                                           Stats& s) {
  const int64_t i1 = std::min(bi + kTile, n), j1 = std::min(bj + kTile, n);
  const int64_t i4 = bi + (i1 - bi) / 4 * 4, j4 = bj + (j1 - bj) / 4 * 4;
  const bool diag = bi == bj;
  __m256d lo = _mm256_set1_pd(s.lo), hi = _mm256_set1_pd(s.hi);
  __m256d asym = _mm256_set1_pd(s.asym), nan = _mm256_setzero_pd();
  const __m256d abs_mask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffffLL));
  for (int64_t i = bi; i < i4; i += 4) {
    for (int64_t r = i - bi; r < i - bi + 4 && nbi >= 0; ++r) {
      for (int64_t c = 0; nbi + r < n && c < kTile && nbj + c < n; c += 8)
        __builtin_prefetch(w + (nbi + r) * n + nbj + c);
      for (int64_t c = 0; nbj + r < n && c < kTile && nbi + c < n; c += 8)
        __builtin_prefetch(w + (nbj + r) * n + nbi + c);
    }
    // on a diagonal tile, blocks j >= i (the diagonal block compares both of its
    // triangles: the same pairs twice, harmless)
    for (int64_t j = diag ? i : bj; j < j4; j += 4) {
      const __m256d m0 = _mm256_loadu_pd(w + j * n + i), m1 = _mm256_loadu_pd(w + (j + 1) * n + i);
      const __m256d m2 = _mm256_loadu_pd(w + (j + 2) * n + i);
      const __m256d m3 = _mm256_loadu_pd(w + (j + 3) * n + i);
      const __m256d u0 = _mm256_unpacklo_pd(m0, m1), u1 = _mm256_unpackhi_pd(m0, m1);
      const __m256d u2 = _mm256_unpacklo_pd(m2, m3), u3 = _mm256_unpackhi_pd(m2, m3);
      const __m256d t[4] = {
          _mm256_permute2f128_pd(u0, u2, 0x20), _mm256_permute2f128_pd(u1, u3, 0x20),
          _mm256_permute2f128_pd(u0, u2, 0x31), _mm256_permute2f128_pd(u1, u3, 0x31)};
      for (int r = 0; r < 4; ++r) {  // row i + r against column i + r of the mirror
        const __m256d a = _mm256_loadu_pd(w + (i + r) * n + j);
        nan = _mm256_or_pd(nan, _mm256_cmp_pd(a, t[r], _CMP_UNORD_Q));
        lo = _mm256_min_pd(lo, _mm256_min_pd(a, t[r]));
        hi = _mm256_max_pd(hi, _mm256_max_pd(a, t[r]));
        asym = _mm256_max_pd(asym, _mm256_and_pd(_mm256_sub_pd(a, t[r]), abs_mask));
      }
    }
  }
  alignas(32) double l[4], h[4], a[4], q[4];
  _mm256_store_pd(l, lo);
  _mm256_store_pd(h, hi);
  _mm256_store_pd(a, asym);
  _mm256_store_pd(q, nan);
  for (int r = 0; r < 4; ++r) {
    s.lo = std::min(s.lo, l[r]);
    s.hi = std::max(s.hi, h[r]);
    s.asym = std::max(s.asym, a[r]);
    s.nan = s.nan || q[r] != 0.0;  // all-ones bits: a NaN, which != 0 is true of
  }
  // the edges a 4 x 4 block does not cover: rows i4 .. i1, then columns j4 .. j1
  for (int64_t i = i4; i < i1; ++i) scalar_pairs(w, n, i, diag ? std::max(i, bj) : bj, j1, s);
  for (int64_t i = bi; i < i4; ++i) scalar_pairs(w, n, i, std::max(diag ? i : bj, j4), j1, s);
}

__attribute__((target("avx2,fma"))) void tiles_double_avx2(const double* base, int64_t n,
                                                            int64_t tiles, int64_t begin,
                                                            int64_t end, Stats& s) {
  const int64_t pairs = tiles * (tiles + 1) / 2;
  for (int64_t t = begin; t < end; ++t) {
    int64_t bi, bj, nbi = -1, nbj = -1;
    tile_of(t % pairs, tiles, bi, bj);
    if (t + 1 < end && (t + 1) / pairs == t / pairs) tile_of((t + 1) % pairs, tiles, nbi, nbj);
    tile_double_avx2(base + t / pairs * n * n, n, bi * kTile, bj * kTile,
                     nbi < 0 ? -1 : nbi * kTile, nbj < 0 ? -1 : nbj * kTile, s);
  }
}

// The AVX2 pass for each dtype: float64's own, the generic one's AVX2 build otherwise.
inline auto avx2_tiles(const double*) { return &tiles_double_avx2; }
inline auto avx2_tiles(const float*) { return &tiles_avx2<float>; }
#endif

at::Tensor symmetry_stats_cpu(const at::Tensor& W) {
  check_laplacian_args(W);
  TORCH_CHECK(W.device().is_cpu(), "W must be a CPU tensor here, got ", W.device());
  TORCH_CHECK(W.numel() > 0, "W must not be empty, got shape ", W.sizes());
  const auto w = W.contiguous();
  const int64_t n = W.size(-1);
  const int64_t batch = w.numel() / (n * n);
  const int64_t tiles = (n + kTile - 1) / kTile;
  const int64_t pairs = tiles * (tiles + 1) / 2;  // upper-triangle tiles per matrix
  Stats total;
  std::mutex mu;
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "symmetry_stats_cpu", [&] {
    const scalar_t* base = w.const_data_ptr<scalar_t>();
    auto fn = &tiles_default<scalar_t>;
#ifdef DIFFEIG_AVX2
    if (has_avx2_fma()) fn = avx2_tiles(base);
#endif
    at::parallel_for(0, batch * pairs, 1, [&](int64_t begin, int64_t end) {
      Stats s;
      fn(base, n, tiles, begin, end, s);
      std::lock_guard<std::mutex> lock(mu);
      total.lo = std::min(total.lo, s.lo);
      total.hi = std::max(total.hi, s.hi);
      total.asym = std::max(total.asym, s.asym);
      total.nan = total.nan || s.nan;
    });
  });
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto out = at::empty({3}, W.options().dtype(at::kDouble));
  auto* o = out.mutable_data_ptr<double>();
  o[0] = total.nan ? nan : total.lo;
  o[1] = total.nan ? nan : total.hi;
  o[2] = total.asym;
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(diffeig, CPU, m) { m.impl("symmetry_stats", &symmetry_stats_cpu); }

}  // namespace diffeig
