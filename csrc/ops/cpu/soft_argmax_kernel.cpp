// CPU kernels of pyflm::soft_argmax and pyflm::_soft_argmax_backward.
//
// Forward: one pass over each map. Every SIMD lane keeps an online max m and
// running sums of e = exp((h - m) / T), e * x and e * y; when a lane's max grows,
// its sums are rescaled by exp((m_old - m_new) / T). The max is taken per segment
// (<= 256 values of a row, still in L1) so the rescale costs one exp per segment,
// not one per element. Lanes are merged at the end; maps run in parallel.
// Backward: the same reduction for (max, sum), then a second pass writing
// p / T * ((x - cx) * gx + (y - cy) * gy).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/NumericUtils.h>
#include <ATen/native/Math.h>
#include <c10/util/BFloat16-math.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/Load.h>
#include <c10/util/TypeCast.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <tuple>

#include "ops/soft_argmax.h"

// The extension is built without -mavx2 (it must load on any x86-64), so the
// at::vec types would fall back to scalar loops. On GCC/x86-64 compile the
// vectorised kernels for AVX2+FMA+F16C (in ATen's own at::vec::AVX2 namespace, as
// ATen does) and pick them at run time when the CPU has those; else scalar code.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PYFLM_SA_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
// g++ does not define the feature macros for a target pragma; sleef.h needs them.
#ifndef __AVX2__
#define PYFLM_SA_DEFINED_MACROS 1
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#endif
#ifndef CPU_CAPABILITY
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif
#else
#define PYFLM_SA_AVX2 0
#ifndef CPU_CAPABILITY
#define CPU_CAPABILITY DEFAULT
#endif
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

namespace pyflm::ops {
namespace {

// Per-map result of the reduction: max, sum of exp and (optionally) the
// exp-weighted coordinate sums, all relative to max. s is NaN when the map has
// no defined softmax (a NaN or +inf anywhere, or every value -inf).
template <typename acc_t>
struct MapStats {
  acc_t m, s, sx, sy;
};

template <typename acc_t>
inline at::vec::Vectorized<acc_t> vexp(const at::vec::Vectorized<acc_t>& v) {
  if constexpr (std::is_same_v<acc_t, float>) {
    return v.exp_u20();  // ~20 ulp, clamps underflow to 0; NaN is handled separately
  } else {
    return v.exp();
  }
}

// Vectorized<acc_t>::size() values starting at p, as acc_t lanes.
template <typename scalar_t, typename acc_t>
inline at::vec::Vectorized<acc_t> load_full(const scalar_t* p) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return at::vec::Vectorized<acc_t>::loadu(p);
  } else {
    at::vec::Vectorized<float> out;
    at::vec::load_to_float<scalar_t>(p, out);
    return out;
  }
}

// n < size() values, padded with -inf (which contributes exp(-inf) = 0).
template <typename scalar_t, typename acc_t>
inline at::vec::Vectorized<acc_t> load_tail(const scalar_t* p, int64_t n) {
  using Vec = at::vec::Vectorized<acc_t>;
  alignas(64) acc_t buf[Vec::size()];
  for (int64_t k = 0; k < Vec::size(); ++k) {
    buf[k] = k < n ? static_cast<acc_t>(p[k]) : -std::numeric_limits<acc_t>::infinity();
  }
  return Vec::loadu(buf);
}

constexpr int64_t kSegment = 256;

template <typename scalar_t, typename acc_t, bool kCoords>
MapStats<acc_t> reduce_map_vec(const scalar_t* map, int64_t H, int64_t W, acc_t inv_t) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  const Vec neg_inf(-inf), zero(acc_t(0)), vinv(inv_t), step(static_cast<acc_t>(L));
  const Vec iota = Vec::arange(acc_t(0), acc_t(1));
  Vec m(neg_inf), s(zero), sx(zero), sy(zero);
  for (int64_t i = 0; i < H; ++i) {
    const scalar_t* row = map + i * W;
    const Vec yv(static_cast<acc_t>(i));
    for (int64_t c0 = 0; c0 < W; c0 += kSegment) {
      const int64_t c1 = std::min(W, c0 + kSegment);
      Vec seg_max(neg_inf);
      int64_t j = c0;
      for (; j + L <= c1; j += L) seg_max = at::vec::maximum(seg_max, load_full<scalar_t, acc_t>(row + j));
      if (j < c1) seg_max = at::vec::maximum(seg_max, load_tail<scalar_t, acc_t>(row + j, c1 - j));
      const Vec m_new = at::vec::maximum(m, seg_max);  // propagates NaN
      // A lane that has seen only -inf keeps a finite reference so that
      // exp(-inf - ref) = 0 rather than exp(NaN).
      const Vec ref = Vec::blendv(m_new, zero, m_new == neg_inf);
      const Vec scale = vexp<acc_t>((m - ref) * vinv);
      s = s * scale;
      if constexpr (kCoords) {
        sx = sx * scale;
        sy = sy * scale;
      }
      m = m_new;
      Vec xv = iota + Vec(static_cast<acc_t>(c0));
      for (j = c0; j + L <= c1; j += L, xv = xv + step) {
        const Vec e = vexp<acc_t>((load_full<scalar_t, acc_t>(row + j) - ref) * vinv);
        s = s + e;
        if constexpr (kCoords) {
          sx = at::vec::fmadd(e, xv, sx);
          sy = at::vec::fmadd(e, yv, sy);
        }
      }
      if (j < c1) {
        const Vec e = vexp<acc_t>((load_tail<scalar_t, acc_t>(row + j, c1 - j) - ref) * vinv);
        s = s + e;
        if constexpr (kCoords) {
          sx = at::vec::fmadd(e, xv, sx);
          sy = at::vec::fmadd(e, yv, sy);
        }
      }
    }
  }
  alignas(64) acc_t am[L], as[L], asx[L], asy[L];
  m.store(am);
  s.store(as);
  sx.store(asx);
  sy.store(asy);
  MapStats<acc_t> r{-inf, 0, 0, 0};
  bool undefined = false;
  for (int64_t l = 0; l < L; ++l) {
    if (std::isnan(am[l])) undefined = true;
    else if (am[l] > r.m) r.m = am[l];
  }
  if (undefined || r.m == inf || r.m == -inf) {
    const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
    return {nan, nan, nan, nan};
  }
  for (int64_t l = 0; l < L; ++l) {
    const acc_t f = std::exp((am[l] - r.m) * inv_t);  // 0 for a lane of only -inf
    r.s += as[l] * f;
    r.sx += asx[l] * f;
    r.sy += asy[l] * f;
  }
  return r;
}

// grad = p / T * ((x - cx) * gx + (y - cy) * gy), p = exp((h - m) / T) / s.
template <typename scalar_t, typename acc_t>
void write_grad_vec(const scalar_t* map, scalar_t* out, int64_t H, int64_t W, acc_t inv_t,
                    const MapStats<acc_t>& st, acc_t cx, acc_t cy, acc_t gx, acc_t gy) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  const Vec vinv(inv_t), vm(st.m), vk(inv_t / st.s), vgx(gx), step(static_cast<acc_t>(L));
  const Vec iota = Vec::arange(acc_t(0), acc_t(1));
  alignas(64) acc_t buf[L];
  for (int64_t i = 0; i < H; ++i) {
    const scalar_t* row = map + i * W;
    scalar_t* orow = out + i * W;
    const Vec c_row((static_cast<acc_t>(i) - cy) * gy - cx * gx);
    Vec xv = iota;
    for (int64_t j = 0; j < W; j += L, xv = xv + step) {
      const int64_t n = std::min<int64_t>(L, W - j);
      const Vec h = n == L ? load_full<scalar_t, acc_t>(row + j) : load_tail<scalar_t, acc_t>(row + j, n);
      const Vec g = vexp<acc_t>((h - vm) * vinv) * vk * at::vec::fmadd(xv, vgx, c_row);
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        g.store(orow + j, n);
      } else {
        g.store(buf);
        for (int64_t k = 0; k < n; ++k) orow[j + k] = static_cast<scalar_t>(buf[k]);
      }
    }
  }
}

}  // namespace
}  // namespace pyflm::ops

#if PYFLM_SA_AVX2
#pragma GCC pop_options
#ifdef PYFLM_SA_DEFINED_MACROS
#undef __AVX__
#undef __AVX2__
#undef __FMA__
#undef __F16C__
#endif
#endif

namespace pyflm::ops {
namespace {

// Plain scalar versions for x86-64 CPUs without AVX2/FMA/F16C.
template <typename scalar_t, typename acc_t, bool kCoords>
MapStats<acc_t> reduce_map_scalar(const scalar_t* map, int64_t H, int64_t W, acc_t inv_t) {
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  acc_t m = -inf, s = 0, sx = 0, sy = 0;
  bool undefined = false;
  for (int64_t i = 0; i < H; ++i) {
    for (int64_t j = 0; j < W; ++j) {
      const acc_t h = static_cast<acc_t>(map[i * W + j]);
      if (std::isnan(h) || h == inf) undefined = true;
      if (h == -inf) continue;
      if (h > m) {
        const acc_t f = m == -inf ? acc_t(0) : std::exp((m - h) * inv_t);
        s *= f;
        sx *= f;
        sy *= f;
        m = h;
      }
      const acc_t e = std::exp((h - m) * inv_t);
      s += e;
      if constexpr (kCoords) {
        sx += e * static_cast<acc_t>(j);
        sy += e * static_cast<acc_t>(i);
      }
    }
  }
  if (undefined || m == -inf) {
    const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
    return {nan, nan, nan, nan};
  }
  return {m, s, sx, sy};
}

template <typename scalar_t, typename acc_t>
void write_grad_scalar(const scalar_t* map, scalar_t* out, int64_t H, int64_t W, acc_t inv_t,
                       const MapStats<acc_t>& st, acc_t cx, acc_t cy, acc_t gx, acc_t gy) {
  const acc_t k = inv_t / st.s;
  for (int64_t i = 0; i < H; ++i) {
    const acc_t c_row = (static_cast<acc_t>(i) - cy) * gy - cx * gx;
    for (int64_t j = 0; j < W; ++j) {
      const acc_t h = static_cast<acc_t>(map[i * W + j]);
      const acc_t p = std::exp((h - st.m) * inv_t) * k;
      out[i * W + j] = static_cast<scalar_t>(p * (static_cast<acc_t>(j) * gx + c_row));
    }
  }
}

// PYFLM_SOFT_ARGMAX_SCALAR=1 forces the scalar kernels (lets the tests cover them).
bool use_vec_kernels() {
  static const bool ok = [] {
    const char* force = std::getenv("PYFLM_SOFT_ARGMAX_SCALAR");
    if (force != nullptr && force[0] != '\0' && force[0] != '0') return false;
#if PYFLM_SA_AVX2
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
#else
    return true;
#endif
  }();
  return ok;
}

// 1 / T in the accumulation type, kept finite for absurdly small T.
template <typename acc_t>
acc_t inverse_temperature(double temperature) {
  const double inv = 1.0 / temperature;
  return static_cast<acc_t>(std::min<double>(inv, std::numeric_limits<acc_t>::max()));
}

int64_t grain_for(int64_t map_size) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, map_size)); }

std::tuple<at::Tensor, at::Tensor> soft_argmax_cpu(const at::Tensor& heatmaps_in, double temperature) {
  const auto out_dtype = soft_argmax_check(heatmaps_in, temperature);
  const int64_t B = heatmaps_in.size(0), K = heatmaps_in.size(1);
  const int64_t H = heatmaps_in.size(2), W = heatmaps_in.size(3);
  auto opts = heatmaps_in.options().dtype(out_dtype);
  at::Tensor coords = at::empty({B, K, 2}, opts);
  at::Tensor confidence = at::empty({B, K}, opts);
  const int64_t N = B * K;
  if (N == 0) return {coords, confidence};
  const at::Tensor heatmaps = heatmaps_in.contiguous();
  const bool vec = use_vec_kernels();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, heatmaps.scalar_type(), "pyflm_soft_argmax_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = heatmaps.const_data_ptr<scalar_t>();
    acc_t* c = coords.mutable_data_ptr<acc_t>();
    acc_t* conf = confidence.mutable_data_ptr<acc_t>();
    const acc_t inv_t = inverse_temperature<acc_t>(temperature);
    at::parallel_for(0, N, grain_for(H * W), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t* map = src + n * H * W;
        const MapStats<acc_t> st = vec ? reduce_map_vec<scalar_t, acc_t, true>(map, H, W, inv_t)
                                       : reduce_map_scalar<scalar_t, acc_t, true>(map, H, W, inv_t);
        c[2 * n] = st.sx / st.s;
        c[2 * n + 1] = st.sy / st.s;
        conf[n] = acc_t(1) / st.s;
      }
    });
  });
  return {coords, confidence};
}

at::Tensor soft_argmax_backward_cpu(const at::Tensor& grad_coords_in, const at::Tensor& heatmaps_in,
                                    const at::Tensor& coords_in, double temperature) {
  soft_argmax_backward_check(grad_coords_in, heatmaps_in, coords_in, temperature);
  const int64_t B = heatmaps_in.size(0), K = heatmaps_in.size(1);
  const int64_t H = heatmaps_in.size(2), W = heatmaps_in.size(3);
  const at::Tensor heatmaps = heatmaps_in.contiguous();
  at::Tensor grad = at::empty_like(heatmaps, at::MemoryFormat::Contiguous);
  const int64_t N = B * K;
  if (N == 0) return grad;
  const bool vec = use_vec_kernels();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, heatmaps.scalar_type(), "pyflm_soft_argmax_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor gc = grad_coords_in.to(acc_dtype).contiguous();
    const at::Tensor cc = coords_in.to(acc_dtype).contiguous();
    const acc_t* g = gc.const_data_ptr<acc_t>();
    const acc_t* c = cc.const_data_ptr<acc_t>();
    const scalar_t* src = heatmaps.const_data_ptr<scalar_t>();
    scalar_t* dst = grad.mutable_data_ptr<scalar_t>();
    const acc_t inv_t = inverse_temperature<acc_t>(temperature);
    at::parallel_for(0, N, grain_for(H * W), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t* map = src + n * H * W;
        scalar_t* out = dst + n * H * W;
        if (vec) {
          const auto st = reduce_map_vec<scalar_t, acc_t, false>(map, H, W, inv_t);
          write_grad_vec<scalar_t, acc_t>(map, out, H, W, inv_t, st, c[2 * n], c[2 * n + 1], g[2 * n], g[2 * n + 1]);
        } else {
          const auto st = reduce_map_scalar<scalar_t, acc_t, false>(map, H, W, inv_t);
          write_grad_scalar<scalar_t, acc_t>(map, out, H, W, inv_t, st, c[2 * n], c[2 * n + 1], g[2 * n], g[2 * n + 1]);
        }
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyflm, CPU, m) {
  m.impl("soft_argmax", &soft_argmax_cpu);
  m.impl("_soft_argmax_backward", &soft_argmax_backward_cpu);
}

}  // namespace pyflm::ops
