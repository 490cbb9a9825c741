// CPU kernel of pyflm::argmax_decode (conventions: csrc/ops/argmax_decode.cpp).
// Maps are independent: at::parallel_for over B*K maps. Per map, a vectorised
// max + NaN pass, then a vectorised search for the first element equal to that
// max (so ties resolve to the first index in row-major order, as torch.argmax
// does), then scalar refinement on at most 9 neighbours.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>

#include "ops/argmax_decode.h"

namespace pyflm {

namespace {

// Why not at::vec here: this file is compiled once for the baseline ISA, where
// at::vec::Vectorized falls back to its generic element loops (measured ~8x
// slower than torch.amax on the same data, and float max/compare with NaN
// semantics do not auto-vectorise without -ffast-math). Instead the scan works
// on the floats' bits as integers with GCC/Clang vector extensions (32-byte
// vectors), and its entry points are compiled for AVX2 and for the baseline
// with a runtime pick (target_clones) where the toolchain supports it.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && defined(__linux__)
#define PYFLM_SCAN_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PYFLM_SCAN_CLONES
#endif
#define PYFLM_ALWAYS_INLINE __attribute__((always_inline)) inline
// The 32-byte vectors never cross a non-inlined call boundary (all helpers are
// inlined into the entry points), so GCC's note about their ABI is moot.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

// Order-preserving integer keys from IEEE bits: flipping the magnitude bits of
// negatives turns sign-magnitude order into two's complement order, and -0
// (which becomes -1) is folded onto +0 so that -0 == +0 as in float
// comparisons. NaN: magnitude bits above the infinity pattern. Works the same
// on scalars and on vector-extension types (where a true comparison is -1).
template <typename S, typename T>
PYFLM_ALWAYS_INLINE T order_key(T s) {
  constexpr int kShift = 8 * sizeof(S) - 1;
  constexpr S kMag = std::numeric_limits<S>::max();
  const T k = s ^ ((s >> kShift) & kMag);
  if constexpr (std::is_integral_v<T>) {
    return k == S(-1) ? S(0) : k;
  } else {
    return k - (k == S(-1));  // a true lane compares as -1: -1 - (-1) = 0
  }
}

// First index of the maximum (row-major first on ties, as torch.argmax), or -1
// when the map holds a NaN. Pass 1: max key and NaN flag, two 32-byte vectors
// per step; pass 2: first 128-byte block holding the max key, then the first
// element of it. Maps are small (L1/L2), so the second pass is cheap.
template <typename S>
PYFLM_ALWAYS_INLINE int64_t first_argmax_bits(const S* p, int64_t n, S inf_bits) {
  typedef S V __attribute__((vector_size(32)));
  constexpr int64_t L = 32 / sizeof(S);
  constexpr S kMag = std::numeric_limits<S>::max();
  auto load = [p](int64_t i) {
    V v;
    std::memcpy(&v, p + i, sizeof(V));
    return v;
  };
  auto skey = [p](int64_t i) { return order_key<S>(p[i]); };
  auto snan = [p, inf_bits](int64_t i) { return static_cast<S>(p[i] & kMag) > inf_bits; };

  int64_t i = 0;
  S m = skey(0);
  bool bad = false;
  if (n >= 2 * L) {
    V m0 = order_key<S>(load(0)), m1 = order_key<S>(load(L));
    V b0 = (load(0) & kMag) > inf_bits, b1 = (load(L) & kMag) > inf_bits;
    for (i = 2 * L; i + 2 * L <= n; i += 2 * L) {
      const V r0 = load(i), r1 = load(i + L);
      const V k0 = order_key<S>(r0), k1 = order_key<S>(r1);
      m0 = k0 > m0 ? k0 : m0;
      m1 = k1 > m1 ? k1 : m1;
      b0 |= (r0 & kMag) > inf_bits;
      b1 |= (r1 & kMag) > inf_bits;
    }
    m0 = m1 > m0 ? m1 : m0;
    b0 |= b1;
    for (int64_t l = 0; l < L; ++l) {
      m = m0[l] > m ? m0[l] : m;
      bad |= b0[l] != 0;
    }
  }
  for (; i < n; ++i) {
    const S k = skey(i);
    m = k > m ? k : m;
    bad |= snan(i);
  }
  if (bad) return -1;

  i = 0;
  const V mv = m - V{};  // broadcast
  // Test 4 vectors at a time: reading a vector's lanes back as scalars costs a
  // store-forwarding round trip, so do it once per 128 bytes.
  for (; i + 4 * L <= n; i += 4 * L) {
    const V eq = (order_key<S>(load(i)) == mv) | (order_key<S>(load(i + L)) == mv) |
                 (order_key<S>(load(i + 2 * L)) == mv) | (order_key<S>(load(i + 3 * L)) == mv);
    uint64_t w[4];
    std::memcpy(w, &eq, sizeof(w));
    if ((w[0] | w[1] | w[2] | w[3]) != 0) break;
  }
  for (; i < n; ++i) {
    if (skey(i) == m) return i;
  }
  return 0;  // unreachable: m is one of the keys
}

PYFLM_SCAN_CLONES int64_t first_argmax_32(const int32_t* p, int64_t n) {
  return first_argmax_bits<int32_t>(p, n, 0x7f800000);
}

PYFLM_SCAN_CLONES int64_t first_argmax_64(const int64_t* p, int64_t n) {
  return first_argmax_bits<int64_t>(p, n, 0x7ff0000000000000LL);
}

PYFLM_SCAN_CLONES int64_t first_argmax_16(const int16_t* p, int64_t n, int16_t inf_bits) {
  return first_argmax_bits<int16_t>(p, n, inf_bits);
}

template <typename scalar_t>
inline int64_t first_argmax(const scalar_t* p, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    static_assert(sizeof(float) == 4 && std::numeric_limits<float>::is_iec559);
    return first_argmax_32(reinterpret_cast<const int32_t*>(p), n);
  } else if constexpr (std::is_same_v<scalar_t, double>) {
    static_assert(sizeof(double) == 8 && std::numeric_limits<double>::is_iec559);
    return first_argmax_64(reinterpret_cast<const int64_t*>(p), n);
  } else {
    static_assert(sizeof(scalar_t) == 2, "float16 / bfloat16 expected");
    constexpr int16_t inf_bits = std::is_same_v<scalar_t, c10::Half> ? 0x7c00 : 0x7f80;
    return first_argmax_16(reinterpret_cast<const int16_t*>(p), n, inf_bits);
  }
}

// Sub-pixel refinement at the integer peak (px, py); see argmax_decode.cpp.
template <typename scalar_t, typename acc_t>
inline void refine_peak(const scalar_t* map, int64_t H, int64_t W, int64_t px, int64_t py,
                        int mode, acc_t& x, acc_t& y) {
  x = static_cast<acc_t>(px);
  y = static_cast<acc_t>(py);
  if (mode == kRefineNone) return;
  auto at_ = [&](int64_t r, int64_t c) { return static_cast<acc_t>(map[r * W + c]); };
  if (mode == kRefineQuarter) {
    if (px > 0 && px < W - 1) {
      const acc_t d = at_(py, px + 1) - at_(py, px - 1);
      x += d > 0 ? acc_t(0.25) : (d < 0 ? acc_t(-0.25) : acc_t(0));
    }
    if (py > 0 && py < H - 1) {
      const acc_t d = at_(py + 1, px) - at_(py - 1, px);
      y += d > 0 ? acc_t(0.25) : (d < 0 ? acc_t(-0.25) : acc_t(0));
    }
  } else if (mode == kRefineDark) {
    if (px < 1 || px > W - 2 || py < 1 || py > H - 2) return;
    const acc_t eps = acc_t(1e-10);
    auto L = [&](int64_t dr, int64_t dc) { return std::log(std::max(at_(py + dr, px + dc), eps)); };
    // Same operation order as the Python reference, so float64 agrees to rounding.
    const acc_t c = L(0, 0), l = L(0, -1), r = L(0, 1), u = L(-1, 0), d = L(1, 0);
    const acc_t gx = (r - l) / 2;
    const acc_t gy = (d - u) / 2;
    const acc_t dxx = r - 2 * c + l;
    const acc_t dyy = d - 2 * c + u;
    const acc_t dxy = (L(1, 1) - L(1, -1) - L(-1, 1) + L(-1, -1)) / 4;
    const acc_t det = dxx * dyy - dxy * dxy;
    if (dxx < 0 && det > 0) {
      const acc_t ox = -(dyy * gx - dxy * gy) / det;
      const acc_t oy = -(dxx * gy - dxy * gx) / det;
      x += std::min(std::max(ox, acc_t(-0.5)), acc_t(0.5));
      y += std::min(std::max(oy, acc_t(-0.5)), acc_t(0.5));
    }
  }
}

std::tuple<at::Tensor, at::Tensor> argmax_decode_cpu(const at::Tensor& heatmaps_in,
                                                     c10::string_view refine) {
  argmax_decode_check_input(heatmaps_in);
  const int mode = argmax_decode_parse_refine(refine);
  const int64_t B = heatmaps_in.size(0), K = heatmaps_in.size(1);
  const int64_t H = heatmaps_in.size(2), W = heatmaps_in.size(3);
  const auto out_dtype = heatmaps_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto opts = heatmaps_in.options().dtype(out_dtype);
  at::Tensor coords = at::empty({B, K, 2}, opts);
  at::Tensor scores = at::empty({B, K}, opts);
  if (B * K == 0) return {coords, scores};

  const at::Tensor heatmaps = heatmaps_in.contiguous();
  const int64_t n = H * W;
  const int64_t maps = B * K;
  // Enough maps per task that a task is worth a thread (~32k elements).
  const int64_t grain = std::max<int64_t>(1, 32768 / n);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, heatmaps.scalar_type(),
                                  "argmax_decode_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* hp = heatmaps.const_data_ptr<scalar_t>();
    acc_t* cp = coords.mutable_data_ptr<acc_t>();
    acc_t* sp = scores.mutable_data_ptr<acc_t>();
    at::parallel_for(0, maps, grain, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const scalar_t* map = hp + k * n;
        const int64_t idx = first_argmax(map, n);
        if (idx < 0) {  // the map holds a NaN
          cp[2 * k] = cp[2 * k + 1] = sp[k] = std::numeric_limits<acc_t>::quiet_NaN();
          continue;
        }
        acc_t x, y;
        refine_peak<scalar_t, acc_t>(map, H, W, idx % W, idx / W, mode, x, y);
        cp[2 * k] = x;
        cp[2 * k + 1] = y;
        sp[k] = static_cast<acc_t>(map[idx]);
      }
    });
  });
  return {coords, scores};
}

}  // namespace
}  // namespace pyflm

TORCH_LIBRARY_IMPL(pyflm, CPU, m) {
  m.impl("argmax_decode", &pyflm::argmax_decode_cpu);
}
