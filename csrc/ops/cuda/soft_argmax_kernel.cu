// CUDA kernels of pyflm::soft_argmax and pyflm::_soft_argmax_backward.
//
// One warp per map (grid-stride over the B*K maps). Each lane walks the map in
// 16-byte packs where the layout allows (W a multiple of the pack, which keeps a
// pack inside one row) and keeps an online max m with sums of e = exp((h - m)/T),
// e*x, e*y, rescaled only when its max grows. The 32 lane states are merged with
// xor shuffles, so every lane ends with the map's result. The backward recomputes
// (max, sum) the same way, then writes p / T * ((x - cx) gx + (y - cy) gy).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>

#include "ops/soft_argmax.h"

namespace pyflm::ops {

namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;

template <typename T>
__device__ __forceinline__ T fast_exp(T v) {
  return ::exp(v);
}
template <>
__device__ __forceinline__ float fast_exp<float>(float v) {
  return __expf(v);  // exp2.approx: ample for weights accumulated in float
}

template <typename acc_t>
struct State {
  acc_t m, s, sx, sy;
};

template <typename acc_t, bool kCoords>
__device__ __forceinline__ void update(State<acc_t>& st, acc_t v, acc_t x, acc_t y, acc_t inv_t) {
  if (v > st.m) {  // false for NaN (which then poisons s below) and for -inf
    const acc_t f = fast_exp<acc_t>((st.m - v) * inv_t);  // 0 while m is -inf
    st.s *= f;
    if constexpr (kCoords) {
      st.sx *= f;
      st.sy *= f;
    }
    st.m = v;
  }
  // -inf contributes 0 (and must not form -inf - -inf); +inf gives inf - inf = NaN.
  const acc_t e = v == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : fast_exp<acc_t>((v - st.m) * inv_t);
  st.s += e;
  if constexpr (kCoords) {
    st.sx += e * x;
    st.sy += e * y;
  }
}

template <typename acc_t, bool kCoords>
__device__ __forceinline__ void warp_merge(State<acc_t>& st, acc_t inv_t) {
  constexpr acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const acc_t om = __shfl_xor_sync(0xffffffffu, st.m, offset);
    const acc_t os = __shfl_xor_sync(0xffffffffu, st.s, offset);
    acc_t osx = 0, osy = 0;
    if constexpr (kCoords) {
      osx = __shfl_xor_sync(0xffffffffu, st.sx, offset);
      osy = __shfl_xor_sync(0xffffffffu, st.sy, offset);
    }
    const acc_t m = st.m > om ? st.m : om;
    if (m == neg_inf) continue;  // both sides saw only -inf: sums are 0
    const acc_t fa = st.m == neg_inf ? acc_t(0) : fast_exp<acc_t>((st.m - m) * inv_t);
    const acc_t fb = om == neg_inf ? acc_t(0) : fast_exp<acc_t>((om - m) * inv_t);
    st.s = st.s * fa + os * fb;
    if constexpr (kCoords) {
      st.sx = st.sx * fa + osx * fb;
      st.sy = st.sy * fa + osy * fb;
    }
    st.m = m;
  }
  // A map of only -inf has no softmax.
  if (st.s == acc_t(0)) st.s = std::numeric_limits<acc_t>::quiet_NaN();
}

template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Pack {
  scalar_t v[kVec];
};

// Online reduction of one map by one warp; every lane returns the merged state.
template <typename scalar_t, typename acc_t, int kVec, bool kCoords>
__device__ __forceinline__ State<acc_t> reduce_map(const scalar_t* __restrict__ map, int hw, int W,
                                                   acc_t inv_t, int lane) {
  State<acc_t> st{-std::numeric_limits<acc_t>::infinity(), 0, 0, 0};
  const auto* packs = reinterpret_cast<const Pack<scalar_t, kVec>*>(map);
  for (int p = lane; p < hw / kVec; p += kWarp) {
    const Pack<scalar_t, kVec> pk = packs[p];
    const int idx = p * kVec;
    const int row = idx / W;
    const int col = idx - row * W;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      update<acc_t, kCoords>(st, static_cast<acc_t>(pk.v[k]), static_cast<acc_t>(col + k),
                             static_cast<acc_t>(row), inv_t);
    }
  }
  warp_merge<acc_t, kCoords>(st, inv_t);
  return st;
}

template <typename scalar_t, typename acc_t, int kVec>
__global__ void __launch_bounds__(kWarp* kWarpsPerBlock)
    soft_argmax_forward_kernel(const scalar_t* __restrict__ src, acc_t* __restrict__ coords,
                               acc_t* __restrict__ confidence, int64_t n_maps, int H, int W,
                               acc_t inv_t) {
  const int lane = threadIdx.x % kWarp;
  const int hw = H * W;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp; n < n_maps;
       n += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const State<acc_t> st = reduce_map<scalar_t, acc_t, kVec, true>(src + n * hw, hw, W, inv_t, lane);
    if (lane == 0) {
      coords[2 * n] = st.sx / st.s;
      coords[2 * n + 1] = st.sy / st.s;
      confidence[n] = acc_t(1) / st.s;
    }
  }
}

template <typename scalar_t, typename acc_t, int kVec>
__global__ void __launch_bounds__(kWarp* kWarpsPerBlock)
    soft_argmax_backward_kernel(const acc_t* __restrict__ grad_coords, const scalar_t* __restrict__ src,
                                const acc_t* __restrict__ coords, scalar_t* __restrict__ grad,
                                int64_t n_maps, int H, int W, acc_t inv_t) {
  const int lane = threadIdx.x % kWarp;
  const int hw = H * W;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp; n < n_maps;
       n += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const scalar_t* map = src + n * hw;
    const State<acc_t> st = reduce_map<scalar_t, acc_t, kVec, false>(map, hw, W, inv_t, lane);
    const acc_t k = inv_t / st.s;
    const acc_t cx = coords[2 * n], cy = coords[2 * n + 1];
    const acc_t gx = grad_coords[2 * n], gy = grad_coords[2 * n + 1];
    const auto* in = reinterpret_cast<const Pack<scalar_t, kVec>*>(map);
    auto* out = reinterpret_cast<Pack<scalar_t, kVec>*>(grad + n * hw);
    for (int p = lane; p < hw / kVec; p += kWarp) {
      const Pack<scalar_t, kVec> pk = in[p];
      const int idx = p * kVec;
      const int row = idx / W;
      const int col = idx - row * W;
      const acc_t c_row = (static_cast<acc_t>(row) - cy) * gy;
      Pack<scalar_t, kVec> res;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const acc_t e = fast_exp<acc_t>((static_cast<acc_t>(pk.v[j]) - st.m) * inv_t);
        res.v[j] = static_cast<scalar_t>(e * k * ((static_cast<acc_t>(col + j) - cx) * gx + c_row));
      }
      out[p] = res;
    }
  }
}

// Pack width: 16 bytes when every pack stays inside one row and is aligned.
template <typename scalar_t>
bool can_pack(const void* ptr, int64_t W) {
  constexpr int64_t vec = 16 / sizeof(scalar_t);
  return W % vec == 0 && reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

int blocks_for(int64_t n_maps) {
  const int64_t blocks = (n_maps + kWarpsPerBlock - 1) / kWarpsPerBlock;
  return static_cast<int>(std::min<int64_t>(blocks, int64_t{1} << 20));
}

void check_map_size(int64_t H, int64_t W) {
  TORCH_CHECK(H * W <= std::numeric_limits<int>::max(),
              "pyflm.soft_argmax: a CUDA heatmap may hold at most 2^31 - 1 values, got H * W = ", H * W);
}

template <typename acc_t>
acc_t inverse_temperature(double temperature) {
  return static_cast<acc_t>(std::min<double>(1.0 / temperature, std::numeric_limits<acc_t>::max()));
}

std::tuple<at::Tensor, at::Tensor> soft_argmax_cuda(const at::Tensor& heatmaps_in, double temperature) {
  const auto out_dtype = soft_argmax_check(heatmaps_in, temperature);
  const int64_t B = heatmaps_in.size(0), K = heatmaps_in.size(1);
  const int64_t H = heatmaps_in.size(2), W = heatmaps_in.size(3);
  const c10::cuda::CUDAGuard guard(heatmaps_in.device());
  auto opts = heatmaps_in.options().dtype(out_dtype);
  at::Tensor coords = at::empty({B, K, 2}, opts);
  at::Tensor confidence = at::empty({B, K}, opts);
  const int64_t N = B * K;
  if (N == 0) return {coords, confidence};
  check_map_size(H, W);
  const at::Tensor heatmaps = heatmaps_in.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, heatmaps.scalar_type(), "pyflm_soft_argmax_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    const scalar_t* src = heatmaps.const_data_ptr<scalar_t>();
    const acc_t inv_t = inverse_temperature<acc_t>(temperature);
    const dim3 grid(blocks_for(N)), block(kWarp * kWarpsPerBlock);
    if (can_pack<scalar_t>(src, W)) {
      soft_argmax_forward_kernel<scalar_t, acc_t, kVec><<<grid, block, 0, stream>>>(
          src, coords.mutable_data_ptr<acc_t>(), confidence.mutable_data_ptr<acc_t>(), N, H, W, inv_t);
    } else {
      soft_argmax_forward_kernel<scalar_t, acc_t, 1><<<grid, block, 0, stream>>>(
          src, coords.mutable_data_ptr<acc_t>(), confidence.mutable_data_ptr<acc_t>(), N, H, W, inv_t);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {coords, confidence};
}

at::Tensor soft_argmax_backward_cuda(const at::Tensor& grad_coords_in, const at::Tensor& heatmaps_in,
                                     const at::Tensor& coords_in, double temperature) {
  soft_argmax_backward_check(grad_coords_in, heatmaps_in, coords_in, temperature);
  const int64_t B = heatmaps_in.size(0), K = heatmaps_in.size(1);
  const int64_t H = heatmaps_in.size(2), W = heatmaps_in.size(3);
  const c10::cuda::CUDAGuard guard(heatmaps_in.device());
  const at::Tensor heatmaps = heatmaps_in.contiguous();
  at::Tensor grad = at::empty_like(heatmaps, at::MemoryFormat::Contiguous);
  const int64_t N = B * K;
  if (N == 0) return grad;
  check_map_size(H, W);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, heatmaps.scalar_type(), "pyflm_soft_argmax_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor gc = grad_coords_in.to(acc_dtype).contiguous();
    const at::Tensor cc = coords_in.to(acc_dtype).contiguous();
    const scalar_t* src = heatmaps.const_data_ptr<scalar_t>();
    scalar_t* dst = grad.mutable_data_ptr<scalar_t>();
    const acc_t inv_t = inverse_temperature<acc_t>(temperature);
    const dim3 grid(blocks_for(N)), block(kWarp * kWarpsPerBlock);
    if (can_pack<scalar_t>(src, W) && can_pack<scalar_t>(dst, W)) {
      soft_argmax_backward_kernel<scalar_t, acc_t, kVec><<<grid, block, 0, stream>>>(
          gc.const_data_ptr<acc_t>(), src, cc.const_data_ptr<acc_t>(), dst, N, H, W, inv_t);
    } else {
      soft_argmax_backward_kernel<scalar_t, acc_t, 1><<<grid, block, 0, stream>>>(
          gc.const_data_ptr<acc_t>(), src, cc.const_data_ptr<acc_t>(), dst, N, H, W, inv_t);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyflm, CUDA, m) {
  m.impl("soft_argmax", &soft_argmax_cuda);
  m.impl("_soft_argmax_backward", &soft_argmax_backward_cuda);
}

}  // namespace pyflm::ops
