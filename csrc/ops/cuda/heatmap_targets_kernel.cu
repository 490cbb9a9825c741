// CUDA kernel of pyflm::heatmap_targets.
//
// Separable maps, g(i, j) = gx[j] * gy[i]:
//  1. tables_kernel: one block per landmark computes validity, mask and the
//     1-D tables gx [W], gy [H] (normalised with a block reduction for kind
//     "distribution"); a few KB in all, so they stay in L1/L2 for step 2;
//  2. outer_kernel (plain kinds): one thread per output element, the map index
//     on grid.y, so neighbouring threads store neighbouring columns (coalesced)
//     and read gx coalesced and gy as a broadcast;
//     pixel_kernel (gaussian+background, pwc): one thread per (batch, pixel)
//     looping over K, fusing the max/sum over landmarks with the stores.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>

#include "ops/heatmap_targets.h"

namespace pyflm {
using namespace heatmap_targets_detail;  // kinds and check_inputs

namespace {

constexpr int kTableThreads = 128;
constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;

template <typename acc_t>
__device__ acc_t block_sum(acc_t v, acc_t* smem) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // smem may still be read from a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  acc_t total = 0;
  for (int w = 0; w < kTableThreads / 32; ++w) total += smem[w];
  return total;
}

// One table (gx or gy) of one valid landmark.
template <typename acc_t>
__device__ void fill_table(acc_t centre, int64_t n, acc_t c, bool distribution, acc_t* g,
                           acc_t* smem) {
  acc_t shift = 0;
  if (distribution) {
    // Shift by the nearest pixel's squared distance: a no-op after normalising,
    // but a tiny sigma can no longer underflow the whole table to 0.
    const acc_t nearest = ::min(::max(::nearbyint(centre), acc_t(0)), acc_t(n - 1));
    const acc_t d0 = nearest - centre;
    shift = d0 * d0;
  }
  const acc_t cutoff = ::log(std::numeric_limits<acc_t>::min());
  acc_t part = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const acc_t d = acc_t(j) - centre;
    const acc_t e = -(d * d - shift) * c;
    // flush below the smallest normal like the CPU kernel (same results on both)
    const acc_t v = e > cutoff ? ::exp(e) : acc_t(0);
    g[j] = v;
    part += v;
  }
  if (distribution) {
    const acc_t inv = acc_t(1) / block_sum(part, smem);
    // Each thread rescales the entries it wrote itself: no barrier needed.
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) g[j] *= inv;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTableThreads)
    tables_kernel(const scalar_t* __restrict__ xy, const bool* __restrict__ vis, int64_t H,
                  int64_t W, acc_t c, bool distribution, acc_t* __restrict__ tab,
                  scalar_t* __restrict__ mask) {
  __shared__ acc_t smem[kTableThreads / 32];
  const int64_t m = blockIdx.x;
  const acc_t x = static_cast<acc_t>(xy[2 * m]), y = static_cast<acc_t>(xy[2 * m + 1]);
  const bool valid = (vis == nullptr || vis[m]) && ::isfinite(x) && ::isfinite(y) &&
                     x >= acc_t(-0.5) && x < acc_t(W) - acc_t(0.5) && y >= acc_t(-0.5) &&
                     y < acc_t(H) - acc_t(0.5);
  acc_t* gx = tab + m * (W + H);
  acc_t* gy = gx + W;
  if (threadIdx.x == 0) mask[m] = static_cast<scalar_t>(valid ? 1 : 0);
  if (!valid) {  // uniform per block, so the barriers in fill_table are safe
    for (int64_t j = threadIdx.x; j < W + H; j += blockDim.x) gx[j] = acc_t(0);
    return;
  }
  fill_table(x, W, c, distribution, gx, smem);
  fill_table(y, H, c, distribution, gy, smem);
}

// targets[m, i, j] = gy_m[i] * gx_m[j]; grid.x tiles one map, grid.y strides over maps.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    outer_kernel(const acc_t* __restrict__ tab, int64_t M, int64_t H, int64_t W,
                 scalar_t* __restrict__ out) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= H * W) return;
  const int64_t i = p / W, j = p - i * W;
  for (int64_t m = blockIdx.y; m < M; m += gridDim.y) {
    const acc_t* gx = tab + m * (W + H);
    out[m * H * W + p] = static_cast<scalar_t>(__ldg(gx + W + i) * __ldg(gx + j));
  }
}

// One thread per (batch, pixel): channels 0..K-1 and the background channel K.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    pixel_kernel(const acc_t* __restrict__ tab, int64_t B, int64_t K, int64_t H, int64_t W,
                 bool pwc, scalar_t* __restrict__ out) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t HW = H * W, T = W + H;
  if (p >= HW) return;
  const int64_t i = p / W, j = p - i * W;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const acc_t* tb = tab + b * K * T;
    scalar_t* ob = out + b * (K + 1) * HW + p;
    acc_t acc = 0;
    if (!pwc) {
      for (int64_t k = 0; k < K; ++k) {
        const acc_t g = __ldg(tb + k * T + W + i) * __ldg(tb + k * T + j);
        ob[k * HW] = static_cast<scalar_t>(g);
        acc = ::max(acc, g);
      }
      ob[K * HW] = static_cast<scalar_t>(acc_t(1) - acc);
    } else {
      for (int64_t k = 0; k < K; ++k) acc += __ldg(tb + k * T + W + i) * __ldg(tb + k * T + j);
      const acc_t inv = acc_t(1) / ::max(acc_t(1), acc);
      for (int64_t k = 0; k < K; ++k)
        ob[k * HW] = static_cast<scalar_t>(__ldg(tb + k * T + W + i) * __ldg(tb + k * T + j) * inv);
      // 1 - sum_k p_k == max(0, 1 - S) without a second rounding-prone sum.
      ob[K * HW] = static_cast<scalar_t>(::max(acc_t(0), acc_t(1) - acc));
    }
  }
}

// Writes every element of targets [B, C, H, W] and mask [B, K] (contiguous).
void fill_cuda(const at::Tensor& coords_in, const std::optional<at::Tensor>& visibility,
               int64_t height, int64_t width, double sigma, int kind, bool background,
               at::Tensor& targets, at::Tensor& mask) {
  c10::cuda::CUDAGuard guard(coords_in.device());
  const at::Tensor coords = coords_in.contiguous();
  at::Tensor vis;
  if (visibility.has_value()) {
    vis = visibility->scalar_type() == at::kBool ? visibility->contiguous()
                                                 : at::gt(*visibility, 0).contiguous();
  }
  const int64_t B = coords.size(0), K = coords.size(1), M = B * K;
  const int64_t H = height, W = width, HW = H * W;
  const bool with_bg = kind == kPwc || (kind == kGaussian && background);
  if (B == 0 || (K == 0 && !with_bg)) return;
  TORCH_CHECK((HW + kThreads - 1) / kThreads <= std::numeric_limits<int32_t>::max(),
              "pyflm.heatmap_targets: height * width too large, got ", H, " x ", W);
  TORCH_CHECK(M <= std::numeric_limits<int32_t>::max(),
              "pyflm.heatmap_targets: B * K too large for one launch, got ", M);

  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, coords.scalar_type(),
                                  "heatmap_targets_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t c = static_cast<acc_t>(std::min(
        0.5 / sigma / sigma, static_cast<double>(std::numeric_limits<acc_t>::max())));
    const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
    at::Tensor tables = at::empty({std::max<int64_t>(M, 1) * (W + H)},
                                  coords.options().dtype(acc_dtype));
    acc_t* tab = tables.mutable_data_ptr<acc_t>();
    scalar_t* out = targets.mutable_data_ptr<scalar_t>();
    if (M > 0) {
      tables_kernel<scalar_t, acc_t><<<static_cast<unsigned>(M), kTableThreads, 0, stream>>>(
          coords.const_data_ptr<scalar_t>(), vis.defined() ? vis.const_data_ptr<bool>() : nullptr,
          H, W, c, kind == kDistribution, tab, mask.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const dim3 tiles(static_cast<unsigned>((HW + kThreads - 1) / kThreads));
    if (!with_bg) {
      const dim3 grid(tiles.x, static_cast<unsigned>(std::min(M, kMaxGridY)));
      outer_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(tab, M, H, W, out);
    } else {
      const dim3 grid(tiles.x, static_cast<unsigned>(std::min(B, kMaxGridY)));
      pixel_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(tab, B, K, H, W,
                                                                    kind == kPwc, out);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, at::Tensor> heatmap_targets_cuda(
    const at::Tensor& coords, const std::optional<at::Tensor>& visibility, int64_t height,
    int64_t width, double sigma, c10::string_view kind_str, bool background) {
  const int kind = check_inputs(coords, visibility, height, width, sigma, kind_str, background);
  const int64_t B = coords.size(0), K = coords.size(1);
  at::Tensor targets = at::empty({B, target_channels(kind, background, K), height, width},
                                 coords.options());
  at::Tensor mask = at::empty({B, K}, coords.options());
  fill_cuda(coords, visibility, height, width, sigma, kind, background, targets, mask);
  return {targets, mask};
}

void heatmap_targets_out_cuda(
    const at::Tensor& coords, const std::optional<at::Tensor>& visibility, int64_t height,
    int64_t width, double sigma, c10::string_view kind_str, bool background,
    at::Tensor& targets, at::Tensor& mask) {
  const int kind = check_inputs(coords, visibility, height, width, sigma, kind_str, background);
  check_out(coords, target_channels(kind, background, coords.size(1)), height, width, targets,
            mask);
  fill_cuda(coords, visibility, height, width, sigma, kind, background, targets, mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyflm, CUDA, m) {
  m.impl("heatmap_targets", &heatmap_targets_cuda);
  m.impl("heatmap_targets.out", &heatmap_targets_out_cuda);
}

}  // namespace pyflm
