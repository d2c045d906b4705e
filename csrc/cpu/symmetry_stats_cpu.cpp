// CPU kernel of diffeig::symmetry_stats: min, max and max |W - W^T| of a batch of
// square matrices in one cache-blocked pass. Each pair (i, j), (j, i) is read once, in
// two tiles that fit the cache, so W is read once from memory; the tiles of the upper
// triangle are shared out between threads.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <vector>

#include "../checks.h"
#include "cpu_features.h"

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

// Tiles [begin, end) of the batch's upper-triangle tiles (`pairs` per matrix).
template <typename scalar_t>
__attribute__((always_inline)) inline void tiles_stats(const scalar_t* base, int64_t n,
                                                       int64_t tiles, int64_t begin, int64_t end,
                                                       Stats& s) {
  const int64_t pairs = tiles * (tiles + 1) / 2;
  std::vector<scalar_t> buf(kTile * kTile);
  for (int64_t t = begin; t < end; ++t) {
    const int64_t m = t / pairs;
    int64_t p = t % pairs, bi = 0;
    while (p >= tiles - bi) {  // p-th tile of row bi's tiles bj = bi ... tiles - 1
      p -= tiles - bi;
      ++bi;
    }
    tile_stats<scalar_t>(base + m * n * n, n, bi * kTile, (bi + p) * kTile, s, buf.data());
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
    if (has_avx2_fma()) fn = &tiles_avx2<scalar_t>;
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
