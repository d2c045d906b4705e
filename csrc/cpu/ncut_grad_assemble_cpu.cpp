// CPU kernel of diffeig::ncut_grad_assemble: writes the N x N affinity gradient
// once from rank-k factors, instead of materializing V M V^T and then applying
// the chain rule through the degrees in further passes.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "assemble_row.h"

namespace diffeig {
namespace {

template <typename scalar_t>
void assemble_kernel(const scalar_t* Pt, const scalar_t* Vt, const scalar_t* c, const scalar_t* g,
                     scalar_t* out, int64_t batch, int64_t n, int64_t k) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(n * (k + 1), 1));
  at::parallel_for(0, batch * n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / n;
      assemble_row(Pt + b * k * n, Vt + b * k * n, c + b * n, g + b * n, out + r * n, r - b * n,
                   n, k);
    }
  });
}

at::Tensor ncut_grad_assemble_cpu(const at::Tensor& P, const at::Tensor& V,
                                  const at::Tensor& scale, const at::Tensor& diag_term) {
  const auto shapes = check_assemble_args(P, V, scale, diag_term);
  TORCH_CHECK(P.device().is_cpu(), "P must be a CPU tensor here, got ", P.device());
  auto sizes = P.sizes().vec();
  sizes.back() = shapes.n;
  auto out = at::empty(sizes, P.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const auto Pt = P.transpose(-1, -2).contiguous();
  const auto Vt = V.transpose(-1, -2).contiguous();
  const auto c = scale.contiguous();
  const auto g = diag_term.contiguous();
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "ncut_grad_assemble_cpu", [&] {
    assemble_kernel<scalar_t>(Pt.const_data_ptr<scalar_t>(), Vt.const_data_ptr<scalar_t>(),
                              c.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(),
                              out.mutable_data_ptr<scalar_t>(), shapes.batch, shapes.n, shapes.k);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(diffeig, CPU, m) { m.impl("ncut_grad_assemble", &ncut_grad_assemble_cpu); }

}  // namespace diffeig
