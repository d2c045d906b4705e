// CPU kernel of diffeig::laplacian: degrees and the (normalized) graph Laplacian
// in two passes over W, parallel over rows.

#include <ATen/AccumulateType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "../checks.h"

namespace diffeig {
namespace {

template <typename scalar_t>
void laplacian_kernel(const scalar_t* w, scalar_t* L, scalar_t* d, int64_t rows, int64_t n,
                      bool normalized) {
  using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      acc_t s = 0;
      const scalar_t* wr = w + r * n;
      for (int64_t j = 0; j < n; ++j) s += wr[j];
      d[r] = static_cast<scalar_t>(s);
    }
  });
  if (normalized) {
    std::vector<scalar_t> dis(rows);
    for (int64_t r = 0; r < rows; ++r) dis[r] = scalar_t(1) / std::sqrt(d[r]);
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t i = r % n;
        const scalar_t* db = dis.data() + (r - i);
        const scalar_t di = dis[r];
        const scalar_t* wr = w + r * n;
        scalar_t* lr = L + r * n;
        for (int64_t j = 0; j < n; ++j) lr[j] = -(di * wr[j]) * db[j];
        lr[i] += scalar_t(1);
      }
    });
  } else {
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t i = r % n;
        const scalar_t* wr = w + r * n;
        scalar_t* lr = L + r * n;
        for (int64_t j = 0; j < n; ++j) lr[j] = -wr[j];
        lr[i] += d[r];
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor> laplacian_cpu(const at::Tensor& W, bool normalized) {
  check_laplacian_args(W);
  TORCH_CHECK(W.device().is_cpu(), "W must be a CPU tensor here, got ", W.device());
  const auto w = W.contiguous();
  auto L = at::empty_like(w);
  auto d = at::empty(W.sizes().slice(0, W.dim() - 1), w.options());
  if (w.numel() == 0) return {L, d};
  const int64_t n = W.size(-1);
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "laplacian_cpu", [&] {
    laplacian_kernel<scalar_t>(w.const_data_ptr<scalar_t>(), L.mutable_data_ptr<scalar_t>(),
                               d.mutable_data_ptr<scalar_t>(), w.numel() / n, n, normalized);
  });
  return {L, d};
}

}  // namespace

TORCH_LIBRARY_IMPL(diffeig, CPU, m) { m.impl("laplacian", &laplacian_cpu); }

}  // namespace diffeig
