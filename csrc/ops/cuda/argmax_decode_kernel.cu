// CUDA kernel of pyflm::argmax_decode (conventions: csrc/ops/argmax_decode.cpp).
// One warp per map, 8 maps per block. Each lane scans its strided share of the
// map with 16-byte vector loads (coalesced across the warp) keeping
// (best value, smallest index); a warp-shuffle reduction combines lanes, ties
// going to the smaller index, so the result is the first maximum in row-major
// order. NaN is tracked as a flag (__any_sync). Lane 0 then refines on at most
// 9 neighbours read straight from global memory (they are in L1/L2 already).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <tuple>

#include "ops/argmax_decode.h"

namespace pyflm {

namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ float dev_log(float v) { return logf(v); }
__device__ __forceinline__ double dev_log(double v) { return log(v); }

template <typename acc_t>
__device__ __forceinline__ acc_t clamp_half(acc_t v) {
  return v < acc_t(-0.5) ? acc_t(-0.5) : (v > acc_t(0.5) ? acc_t(0.5) : v);
}

template <typename acc_t>
__device__ __forceinline__ acc_t sign_quarter(acc_t d) {
  return d > 0 ? acc_t(0.25) : (d < 0 ? acc_t(-0.25) : acc_t(0));
}

// Larger value wins; on equal values the smaller index (first in row-major order).
template <typename acc_t>
__device__ __forceinline__ void take_better(acc_t& bv, long long& bi, acc_t v, long long i) {
  if (v > bv || (v == bv && i < bi)) {
    bv = v;
    bi = i;
  }
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void scan_one(acc_t& bv, long long& bi, bool& nan, scalar_t s,
                                         long long i) {
  const acc_t v = static_cast<acc_t>(s);
  if (v != v) {
    nan = true;
  } else {
    take_better(bv, bi, v, i);
  }
}

template <typename scalar_t, typename acc_t>
__device__ void refine_peak(const scalar_t* __restrict__ map, long long H, long long W,
                            long long px, long long py, int mode, acc_t& x, acc_t& y) {
  x = static_cast<acc_t>(px);
  y = static_cast<acc_t>(py);
  if (mode == kRefineNone) return;
  auto at_ = [&](long long r, long long c) { return static_cast<acc_t>(map[r * W + c]); };
  if (mode == kRefineQuarter) {
    if (px > 0 && px < W - 1) x += sign_quarter(at_(py, px + 1) - at_(py, px - 1));
    if (py > 0 && py < H - 1) y += sign_quarter(at_(py + 1, px) - at_(py - 1, px));
  } else if (mode == kRefineDark) {
    if (px < 1 || px > W - 2 || py < 1 || py > H - 2) return;
    const acc_t eps = acc_t(1e-10);
    auto L = [&](long long dr, long long dc) {
      const acc_t v = at_(py + dr, px + dc);
      return dev_log(v > eps ? v : eps);
    };
    const acc_t c = L(0, 0), l = L(0, -1), r = L(0, 1), u = L(-1, 0), d = L(1, 0);
    const acc_t gx = (r - l) / 2;
    const acc_t gy = (d - u) / 2;
    const acc_t dxx = r - 2 * c + l;
    const acc_t dyy = d - 2 * c + u;
    const acc_t dxy = (L(1, 1) - L(1, -1) - L(-1, 1) + L(-1, -1)) / 4;
    const acc_t det = dxx * dyy - dxy * dxy;
    if (dxx < 0 && det > 0) {
      x += clamp_half(-(dyy * gx - dxy * gy) / det);
      y += clamp_half(-(dxx * gy - dxy * gx) / det);
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kWarp * kWarpsPerBlock)
    argmax_decode_kernel(const scalar_t* __restrict__ heatmaps, at::opmath_type<scalar_t>* __restrict__ coords,
                         at::opmath_type<scalar_t>* __restrict__ scores, long long maps, long long H,
                         long long W, int mode) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int VEC = 16 / sizeof(scalar_t);
  struct alignas(16) Pack {
    scalar_t v[VEC];
  };

  const int lane = threadIdx.x % kWarp;
  const long long k = static_cast<long long>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (k >= maps) return;  // whole warps exit together: the shuffles below stay full-warp
  const long long n = H * W;
  const scalar_t* map = heatmaps + k * n;

  acc_t bv = -std::numeric_limits<acc_t>::infinity();
  long long bi = std::numeric_limits<long long>::max();
  bool nan = false;

  // Each lane's indices only grow, so a strict '>' keeps its first maximum.
  long long i0 = 0;
  if (reinterpret_cast<std::uintptr_t>(map) % 16 == 0) {
    const long long nvec = n / VEC;
    const Pack* packs = reinterpret_cast<const Pack*>(map);
    for (long long p = lane; p < nvec; p += kWarp) {
      const Pack pk = packs[p];
#pragma unroll
      for (int j = 0; j < VEC; ++j) scan_one(bv, bi, nan, pk.v[j], p * VEC + j);
    }
    i0 = nvec * VEC;
  }
  for (long long i = i0 + lane; i < n; i += kWarp) scan_one(bv, bi, nan, map[i], i);

#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) {
    const acc_t ov = __shfl_down_sync(0xffffffffu, bv, off);
    const long long oi = __shfl_down_sync(0xffffffffu, bi, off);
    take_better(bv, bi, ov, oi);
  }
  nan = __any_sync(0xffffffffu, nan);

  if (lane == 0) {
    if (nan) {
      const acc_t q = std::numeric_limits<acc_t>::quiet_NaN();
      coords[2 * k] = q;
      coords[2 * k + 1] = q;
      scores[k] = q;
      return;
    }
    acc_t x, y;
    refine_peak<scalar_t, acc_t>(map, H, W, bi % W, bi / W, mode, x, y);
    coords[2 * k] = x;
    coords[2 * k + 1] = y;
    scores[k] = static_cast<acc_t>(map[bi]);
  }
}

std::tuple<at::Tensor, at::Tensor> argmax_decode_cuda(const at::Tensor& heatmaps_in,
                                                      c10::string_view refine) {
  argmax_decode_check_input(heatmaps_in);
  const int mode = argmax_decode_parse_refine(refine);
  const c10::cuda::CUDAGuard device_guard(heatmaps_in.device());
  const int64_t B = heatmaps_in.size(0), K = heatmaps_in.size(1);
  const int64_t H = heatmaps_in.size(2), W = heatmaps_in.size(3);
  const auto out_dtype = heatmaps_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto opts = heatmaps_in.options().dtype(out_dtype);
  at::Tensor coords = at::empty({B, K, 2}, opts);
  at::Tensor scores = at::empty({B, K}, opts);
  const int64_t maps = B * K;
  if (maps == 0) return {coords, scores};

  const at::Tensor heatmaps = heatmaps_in.contiguous();
  const int64_t blocks = (maps + kWarpsPerBlock - 1) / kWarpsPerBlock;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(),
              "pyflm.argmax_decode: too many maps (B * K = ", maps, ")");
  auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, heatmaps.scalar_type(),
                                  "argmax_decode_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    argmax_decode_kernel<scalar_t>
        <<<static_cast<unsigned>(blocks), kWarp * kWarpsPerBlock, 0, stream>>>(
            heatmaps.const_data_ptr<scalar_t>(), coords.mutable_data_ptr<acc_t>(),
            scores.mutable_data_ptr<acc_t>(), maps, H, W, mode);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {coords, scores};
}

}  // namespace
}  // namespace pyflm

TORCH_LIBRARY_IMPL(pyflm, CUDA, m) {
  m.impl("argmax_decode", &pyflm::argmax_decode_cuda);
}
