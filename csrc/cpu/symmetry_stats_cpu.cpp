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

#include "../checks.h"

namespace diffeig {
namespace {

constexpr int64_t kTile = 64;

struct Stats {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -std::numeric_limits<double>::infinity();
  double asym = 0.0;
  bool nan = false;
};

template <typename scalar_t>
void tile_stats(const scalar_t* w, int64_t n, int64_t bi, int64_t bj, Stats& s) {
  const int64_t i1 = std::min(bi + kTile, n), j1 = std::min(bj + kTile, n);
  for (int64_t i = bi; i < i1; ++i) {
    // on a diagonal tile each pair once: j >= i
    for (int64_t j = (bi == bj ? i : bj); j < j1; ++j) {
      const double a = static_cast<double>(w[i * n + j]);
      const double b = static_cast<double>(w[j * n + i]);
      if (std::isnan(a) || std::isnan(b)) {
        s.nan = true;
        continue;
      }
      s.lo = std::min(s.lo, std::min(a, b));
      s.hi = std::max(s.hi, std::max(a, b));
      const double d = std::abs(a - b);  // inf - inf is NaN: then hi = inf says it
      if (d > s.asym) s.asym = d;
    }
  }
}

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
    at::parallel_for(0, batch * pairs, 1, [&](int64_t begin, int64_t end) {
      Stats s;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t m = t / pairs;
        int64_t p = t % pairs, bi = 0;
        while (p >= tiles - bi) {  // p-th tile of row bi's tiles bj = bi ... tiles - 1
          p -= tiles - bi;
          ++bi;
        }
        tile_stats<scalar_t>(base + m * n * n, n, bi * kTile, (bi + p) * kTile, s);
      }
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
