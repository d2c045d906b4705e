// CUDA kernel of diffeig::ncut_grad_assemble (see csrc/cpu/ncut_grad_assemble_cpu.cpp).

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"

namespace diffeig {
namespace {

// One thread per output entry; P and V are (batch, n, k) with k small, so the
// k-long dot products come from cache.
template <typename scalar_t>
__global__ void assemble_kernel(const scalar_t* __restrict__ P, const scalar_t* __restrict__ V,
                                const scalar_t* __restrict__ c, const scalar_t* __restrict__ g,
                                scalar_t* __restrict__ out, int64_t total, int64_t n, int64_t k) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / n;
    const int64_t j = e - r * n;
    const int64_t b = r / n;
    const int64_t i = r - b * n;
    const scalar_t* pi = P + (b * n + i) * k;
    const scalar_t* vi = V + (b * n + i) * k;
    const scalar_t* pj = P + (b * n + j) * k;
    const scalar_t* vj = V + (b * n + j) * k;
    scalar_t acc = 0;
    for (int64_t s = 0; s < k; ++s) acc += pi[s] * vj[s] + pj[s] * vi[s];
    out[e] = scalar_t(-0.5) * c[b * n + i] * c[b * n + j] * acc +
             scalar_t(0.5) * (g[b * n + i] + g[b * n + j]);
  }
}

at::Tensor ncut_grad_assemble_cuda(const at::Tensor& P, const at::Tensor& V,
                                   const at::Tensor& scale, const at::Tensor& diag_term) {
  const auto shapes = check_assemble_args(P, V, scale, diag_term);
  TORCH_CHECK(P.is_cuda(), "P must be a CUDA tensor here, got ", P.device());
  const c10::cuda::CUDAGuard guard(P.device());
  auto sizes = P.sizes().vec();
  sizes.back() = shapes.n;
  auto out = at::empty(sizes, P.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const auto p = P.contiguous();
  const auto v = V.contiguous();
  const auto c = scale.contiguous();
  const auto g = diag_term.contiguous();
  const int64_t total = out.numel();
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "ncut_grad_assemble_cuda", [&] {
    assemble_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        p.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
        g.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), total, shapes.n,
        shapes.k);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(diffeig, CUDA, m) {
  m.impl("ncut_grad_assemble", &ncut_grad_assemble_cuda);
}

}  // namespace diffeig
