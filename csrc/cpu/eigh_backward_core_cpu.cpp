// CPU kernel of diffeig::eigh_backward_core: masked reciprocal eigen-gaps times
// the first k columns of V^H gV, with the eigenvalue cotangents on the diagonal.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "../checks.h"

namespace diffeig {
namespace {

// Per-matrix gap threshold: atol + rtol * max|l|. Eigenvalues closer than it are
// indistinguishable at the working precision, so their reciprocal gap is zeroed.
template <typename real_t>
std::vector<real_t> gap_thresholds(const real_t* l, int64_t batch, int64_t n, double rtol,
                                   double atol) {
  std::vector<real_t> thr(batch);
  at::parallel_for(0, batch, 64, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      real_t m = 0;
      for (int64_t i = 0; i < n; ++i) m = std::max(m, std::abs(l[b * n + i]));
      thr[b] = static_cast<real_t>(atol + rtol * static_cast<double>(m));
    }
  });
  return thr;
}

template <typename scalar_t, typename real_t>
void core_kernel(const real_t* l, const scalar_t* x, const real_t* gl, const real_t* thr,
                 scalar_t* out, int64_t batch, int64_t n, int64_t k) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(k, 1));
  at::parallel_for(0, batch * n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / n;
      const int64_t i = r - b * n;
      const real_t* lb = l + b * n;
      const real_t li = lb[i];
      const real_t t = thr[b];
      const scalar_t* xr = x + r * k;
      scalar_t* o = out + r * k;
      for (int64_t s = 0; s < k; ++s) {
        if (s == i) {
          o[s] = gl ? scalar_t(gl[b * k + s]) : scalar_t(0);
        } else {
          const real_t d = lb[s] - li;
          o[s] = (d == real_t(0) || std::abs(d) < t) ? scalar_t(0) : xr[s] / d;
        }
      }
    }
  });
}

at::Tensor eigh_backward_core_cpu(const at::Tensor& eigenvalues, const at::Tensor& X,
                                  const c10::optional<at::Tensor>& grad_eigenvalues,
                                  double gap_rtol, double gap_atol) {
  const auto shapes = check_core_args(eigenvalues, X, grad_eigenvalues, gap_rtol, gap_atol);
  TORCH_CHECK(X.device().is_cpu(), "X must be a CPU tensor here, got ", X.device());
  auto out = at::empty(X.sizes(), X.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const auto l = eigenvalues.contiguous();
  const auto x = X.contiguous();
  at::Tensor gl;
  if (grad_eigenvalues.has_value()) gl = grad_eigenvalues->contiguous();
  AT_DISPATCH_FLOATING_AND_COMPLEX_TYPES(X.scalar_type(), "eigh_backward_core_cpu", [&] {
    using real_t = typename c10::scalar_value_type<scalar_t>::type;
    const auto thr = gap_thresholds<real_t>(l.const_data_ptr<real_t>(), shapes.batch, shapes.n,
                                            gap_rtol, gap_atol);
    core_kernel<scalar_t, real_t>(l.const_data_ptr<real_t>(), x.const_data_ptr<scalar_t>(),
                                  gl.defined() ? gl.const_data_ptr<real_t>() : nullptr,
                                  thr.data(), out.mutable_data_ptr<scalar_t>(), shapes.batch,
                                  shapes.n, shapes.k);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(diffeig, CPU, m) {
  m.impl("eigh_backward_core", &eigh_backward_core_cpu);
}

}  // namespace diffeig
