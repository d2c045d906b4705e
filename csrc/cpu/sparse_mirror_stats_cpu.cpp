// CPU kernel of diffeig::sparse_mirror_stats: whether a CSR pattern is symmetric and how
// far its values are from it, in one pass over the stored entries, no sort. Rows are
// visited in order; for entry (i, j) the mirror (j, i) is the next unmatched entry of
// row j at column i, so one cursor per row, which only moves forward (row j's columns
// ascend, and so do the rows i that look into it), finds every mirror in O(nnz) total.
// (The pure-PyTorch twin, diffeig._reference.sparse_mirror_stats, sorts the columns.)

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace diffeig {
namespace {

template <typename scalar_t, typename index_t>
void mirror_pass(const index_t* crow, const index_t* col, const scalar_t* v, int64_t n,
                 int64_t& missing, double& asym) {
  std::vector<int64_t> cursor(crow, crow + n);
  int64_t miss = 0;
  double worst = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t e = crow[i]; e < crow[i + 1]; ++e) {
      const int64_t j = col[e];
      TORCH_CHECK(j >= 0 && j < n, "col must hold indices in [0, ", n, "), got ", j);
      const int64_t end = crow[j + 1];
      int64_t p = cursor[j];
      while (p < end && col[p] < i) ++p;  // entries (j, c < i): their lookups are past
      if (p < end && col[p] == i) {
        const double d = std::abs(static_cast<double>(v[e]) - static_cast<double>(v[p]));
        worst = d > worst ? d : worst;
        ++p;
      } else {
        ++miss;
      }
      cursor[j] = p;
    }
  }
  missing = miss;
  asym = worst;
}

at::Tensor sparse_mirror_stats_cpu(const at::Tensor& crow, const at::Tensor& col,
                                   const at::Tensor& values) {
  TORCH_CHECK(crow.dim() == 1 && crow.numel() >= 1, "crow must have shape (n + 1,), got ",
              crow.sizes());
  TORCH_CHECK(col.dim() == 1 && values.dim() == 1 && col.numel() == values.numel(),
              "col and values must be 1-D of one length, got ", col.sizes(), " and ",
              values.sizes());
  TORCH_CHECK(crow.scalar_type() == col.scalar_type() &&
                  (crow.scalar_type() == at::kLong || crow.scalar_type() == at::kInt),
              "crow and col must both be int32 or both int64, got ", crow.scalar_type(),
              " and ", col.scalar_type());
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble,
              "values must be float32 or float64, got ", values.scalar_type());
  TORCH_CHECK(crow.device().is_cpu() && col.device().is_cpu() && values.device().is_cpu(),
              "crow, col and values must be CPU tensors here");
  const int64_t n = crow.numel() - 1;
  const auto r = crow.contiguous(), c = col.contiguous(), v = values.contiguous();
  int64_t missing = 0;
  double asym = 0.0;
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "sparse_mirror_stats_cpu", [&] {
    const auto run = [&](const auto* cr, const auto* cc) {
      TORCH_CHECK(cr[0] == 0 && cr[n] == c.numel(), "crow must run from 0 to nnz");
      mirror_pass(cr, cc, v.const_data_ptr<scalar_t>(), n, missing, asym);
    };
    if (r.scalar_type() == at::kLong) {
      run(r.const_data_ptr<int64_t>(), c.const_data_ptr<int64_t>());
    } else {
      run(r.const_data_ptr<int32_t>(), c.const_data_ptr<int32_t>());
    }
  });
  auto out = at::empty({2}, values.options().dtype(at::kDouble));
  auto* o = out.mutable_data_ptr<double>();
  o[0] = static_cast<double>(missing);
  o[1] = asym;
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(diffeig, CPU, m) { m.impl("sparse_mirror_stats", &sparse_mirror_stats_cpu); }

}  // namespace diffeig
