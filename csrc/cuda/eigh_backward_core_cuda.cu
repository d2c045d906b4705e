// CUDA kernel of diffeig::eigh_backward_core (see csrc/cpu/eigh_backward_core_cpu.cpp).

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"

namespace diffeig {
namespace {

template <typename scalar_t, typename real_t>
__global__ void core_kernel(const real_t* __restrict__ l, const scalar_t* __restrict__ x,
                            const real_t* __restrict__ gl, const real_t* __restrict__ thr,
                            scalar_t* __restrict__ out, int64_t total, int64_t n, int64_t k) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = e % k;
    const int64_t r = e / k;
    const int64_t b = r / n;
    const int64_t i = r - b * n;
    if (s == i) {
      out[e] = gl ? scalar_t(gl[b * k + s]) : scalar_t(0);
    } else {
      const real_t d = l[b * n + s] - l[r];
      out[e] = (d == real_t(0) || ::abs(d) < thr[b]) ? scalar_t(0) : x[e] / d;
    }
  }
}

at::Tensor eigh_backward_core_cuda(const at::Tensor& eigenvalues, const at::Tensor& X,
                                   const c10::optional<at::Tensor>& grad_eigenvalues,
                                   double gap_rtol, double gap_atol) {
  const auto shapes = check_core_args(eigenvalues, X, grad_eigenvalues, gap_rtol, gap_atol);
  TORCH_CHECK(X.is_cuda(), "X must be a CUDA tensor here, got ", X.device());
  const c10::cuda::CUDAGuard guard(X.device());
  auto out = at::empty(X.sizes(), X.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const auto l = eigenvalues.contiguous();
  const auto x = X.contiguous();
  at::Tensor gl;
  if (grad_eigenvalues.has_value()) gl = grad_eigenvalues->contiguous();
  // One reduction per matrix, on the device: no host synchronization.
  const auto thr = (l.abs().amax(-1) * gap_rtol + gap_atol).contiguous();
  const int64_t total = out.numel();
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_AND_COMPLEX_TYPES(X.scalar_type(), "eigh_backward_core_cuda", [&] {
    using real_t = typename c10::scalar_value_type<scalar_t>::type;
    core_kernel<scalar_t, real_t><<<blocks, threads, 0, stream>>>(
        l.const_data_ptr<real_t>(), x.const_data_ptr<scalar_t>(),
        gl.defined() ? gl.const_data_ptr<real_t>() : nullptr, thr.const_data_ptr<real_t>(),
        out.mutable_data_ptr<scalar_t>(), total, shapes.n, shapes.k);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(diffeig, CUDA, m) {
  m.impl("eigh_backward_core", &eigh_backward_core_cuda);
}

}  // namespace diffeig
