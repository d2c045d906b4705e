// CPU kernel of diffeig::cg_step: the vector updates of one conjugate-gradient step
// for every column of a batch of (n, k) blocks, in two passes over memory instead
// of the dozen tensor expressions (and temporaries) they take in PyTorch.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"

namespace diffeig {
namespace {

template <typename scalar_t>
void cg_step_kernel(scalar_t* Y, scalar_t* R, scalar_t* P, const scalar_t* AP, scalar_t* rr,
                    const scalar_t* stop, bool* active, int64_t batch, int64_t n, int64_t k) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(n * k, 1));
  at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> pAp(k), alpha(k), rr_new(k);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t off = b * n * k;
      scalar_t* y = Y + off;
      scalar_t* r = R + off;
      scalar_t* p = P + off;
      const scalar_t* ap = AP + off;
      scalar_t* rrb = rr + b * k;
      bool* act = active + b * k;
      std::fill(pAp.begin(), pAp.end(), scalar_t(0));
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < k; ++j) pAp[j] += p[i * k + j] * ap[i * k + j];
      bool any = false;
      for (int64_t j = 0; j < k; ++j) {
        act[j] = act[j] && pAp[j] > 0;
        alpha[j] = act[j] ? rrb[j] / pAp[j] : scalar_t(0);
        rr_new[j] = 0;
        any = any || act[j];
      }
      if (!any) continue;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < k; ++j) {
          if (!act[j]) continue;
          y[i * k + j] += alpha[j] * p[i * k + j];
          const scalar_t ri = r[i * k + j] - alpha[j] * ap[i * k + j];
          r[i * k + j] = ri;
          rr_new[j] += ri * ri;
        }
      for (int64_t j = 0; j < k; ++j) {
        if (!act[j]) continue;
        alpha[j] = rr_new[j] / rrb[j];  // now beta
        rrb[j] = rr_new[j];
      }
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < k; ++j)
          if (act[j]) p[i * k + j] = r[i * k + j] + alpha[j] * p[i * k + j];
      for (int64_t j = 0; j < k; ++j) act[j] = act[j] && rrb[j] > stop[b * k + j];
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cg_step_cpu(
    const at::Tensor& Y, const at::Tensor& R, const at::Tensor& P, const at::Tensor& AP,
    const at::Tensor& rr, const at::Tensor& stop, const at::Tensor& active) {
  const auto shapes = check_cg_step_args(Y, R, P, AP, rr, stop, active);
  TORCH_CHECK(Y.device().is_cpu(), "Y must be a CPU tensor here, got ", Y.device());
  // Functional op: fresh outputs (contiguous copies), inputs untouched.
  auto y = Y.clone(at::MemoryFormat::Contiguous);
  auto r = R.clone(at::MemoryFormat::Contiguous);
  auto p = P.clone(at::MemoryFormat::Contiguous);
  auto rr_out = rr.clone(at::MemoryFormat::Contiguous);
  auto act = active.clone(at::MemoryFormat::Contiguous);
  const auto ap = AP.contiguous();
  const auto st = stop.contiguous();
  if (shapes.batch * shapes.k > 0) {
    AT_DISPATCH_FLOATING_TYPES(Y.scalar_type(), "cg_step_cpu", [&] {
      cg_step_kernel<scalar_t>(y.mutable_data_ptr<scalar_t>(), r.mutable_data_ptr<scalar_t>(),
                               p.mutable_data_ptr<scalar_t>(), ap.const_data_ptr<scalar_t>(),
                               rr_out.mutable_data_ptr<scalar_t>(), st.const_data_ptr<scalar_t>(),
                               act.mutable_data_ptr<bool>(), shapes.batch, shapes.n, shapes.k);
    });
  }
  return {y, r, p, rr_out, act};
}

}  // namespace

TORCH_LIBRARY_IMPL(diffeig, CPU, m) { m.impl("cg_step", &cg_step_cpu); }

}  // namespace diffeig
