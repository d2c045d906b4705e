// CUDA kernel of diffeig::laplacian (see csrc/cpu/laplacian_cpu.cpp).

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"

namespace diffeig {
namespace {

constexpr int kThreads = 256;

// One block per row: a block-wide sum gives the degree.
template <typename scalar_t>
__global__ void degree_kernel(const scalar_t* __restrict__ w, scalar_t* __restrict__ d,
                              int64_t n) {
  using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
  __shared__ acc_t partial[kThreads];
  const scalar_t* wr = w + blockIdx.x * n;
  acc_t s = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += wr[j];
  partial[threadIdx.x] = s;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) d[blockIdx.x] = static_cast<scalar_t>(partial[0]);
}

template <typename scalar_t>
__global__ void laplacian_kernel(const scalar_t* __restrict__ w, const scalar_t* __restrict__ d,
                                 scalar_t* __restrict__ L, int64_t total, int64_t n,
                                 bool normalized) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / n;
    const int64_t j = e - r * n;
    const int64_t i = r % n;
    const int64_t rj = r - i + j;
    scalar_t v;
    if (normalized) {
      v = -(::rsqrt(d[r]) * w[e]) * ::rsqrt(d[rj]);
      if (i == j) v += scalar_t(1);
    } else {
      v = -w[e];
      if (i == j) v += d[r];
    }
    L[e] = v;
  }
}

std::tuple<at::Tensor, at::Tensor> laplacian_cuda(const at::Tensor& W, bool normalized) {
  check_laplacian_args(W);
  TORCH_CHECK(W.is_cuda(), "W must be a CUDA tensor here, got ", W.device());
  const c10::cuda::CUDAGuard guard(W.device());
  const auto w = W.contiguous();
  auto L = at::empty_like(w);
  auto d = at::empty(W.sizes().slice(0, W.dim() - 1), w.options());
  if (w.numel() == 0) return {L, d};
  const int64_t n = W.size(-1);
  const int64_t rows = w.numel() / n;
  const int64_t total = w.numel();
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "laplacian_cuda", [&] {
    degree_kernel<scalar_t><<<rows, kThreads, 0, stream>>>(w.const_data_ptr<scalar_t>(),
                                                           d.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    laplacian_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        w.const_data_ptr<scalar_t>(), d.const_data_ptr<scalar_t>(),
        L.mutable_data_ptr<scalar_t>(), total, n, normalized);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {L, d};
}

}  // namespace

TORCH_LIBRARY_IMPL(diffeig, CUDA, m) { m.impl("laplacian", &laplacian_cuda); }

}  // namespace diffeig
