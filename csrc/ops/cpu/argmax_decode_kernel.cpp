// CPU kernel of pyflm::argmax_decode (conventions: csrc/ops/argmax_decode.cpp).
// Maps are independent: at::parallel_for over B*K maps. Per map, a vectorised
// NaN-propagating max pass, then a vectorised search for the first element equal
// to that max (so ties resolve to the first index in row-major order, as
// torch.argmax does), then scalar refinement on at most 9 neighbours.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>

namespace pyflm {

// Defined in csrc/ops/argmax_decode.cpp.
int argmax_decode_parse_refine(c10::string_view refine);
void argmax_decode_check_input(const at::Tensor& heatmaps);

namespace {

constexpr int kRefineNone = 0;
constexpr int kRefineQuarter = 1;
constexpr int kRefineDark = 2;

template <typename acc_t>
inline acc_t nan_max(acc_t a, acc_t b) {
  // IEEE maximum: NaN wins, so one pass both finds the max and detects NaN.
  if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<acc_t>::quiet_NaN();
  return a > b ? a : b;
}

// Max over a map in its opmath type, NaN if any element is NaN.
template <typename scalar_t>
inline at::opmath_type<scalar_t> map_max(const scalar_t* p, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  using AVec = at::vec::Vectorized<acc_t>;
  int64_t i = 0;
  acc_t m = static_cast<acc_t>(p[0]);
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    constexpr int64_t L = AVec::size();
    if (n >= 2 * L) {
      // Two accumulators hide the latency of the max.
      AVec m0 = AVec::loadu(p), m1 = AVec::loadu(p + L);
      for (i = 2 * L; i + 2 * L <= n; i += 2 * L) {
        m0 = at::vec::maximum(m0, AVec::loadu(p + i));
        m1 = at::vec::maximum(m1, AVec::loadu(p + i + L));
      }
      m0 = at::vec::maximum(m0, m1);
      acc_t lanes[L];
      m0.store(lanes);
      for (int64_t l = 0; l < L; ++l) m = nan_max(m, lanes[l]);
    }
  } else {
    // float16 / bfloat16: widen each vector to two float vectors.
    using SVec = at::vec::Vectorized<scalar_t>;
    constexpr int64_t L = SVec::size();
    if (n >= L) {
      auto [m0, m1] = at::vec::convert_to_float<scalar_t>(SVec::loadu(p));
      for (i = L; i + L <= n; i += L) {
        auto [a, b] = at::vec::convert_to_float<scalar_t>(SVec::loadu(p + i));
        m0 = at::vec::maximum(m0, a);
        m1 = at::vec::maximum(m1, b);
      }
      m0 = at::vec::maximum(m0, m1);
      constexpr int64_t FL = AVec::size();
      acc_t lanes[FL];
      m0.store(lanes);
      for (int64_t l = 0; l < FL; ++l) m = nan_max(m, lanes[l]);
    }
  }
  for (; i < n; ++i) m = nan_max(m, static_cast<acc_t>(p[i]));
  return m;
}

// First index whose value equals m (m is one of the map's values, not NaN).
template <typename scalar_t>
inline int64_t first_index_of(const scalar_t* p, int64_t n, at::opmath_type<scalar_t> m) {
  using SVec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t L = SVec::size();
  static_assert(L <= 32, "lane mask must fit an int");
  constexpr unsigned full = L == 32 ? 0xffffffffu : ((1u << L) - 1u);
  const scalar_t ms = static_cast<scalar_t>(m);  // exact: m came from the map
  const SVec vm(ms);
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    // zero_mask() marks the lanes where the comparison failed.
    const unsigned miss = static_cast<unsigned>((SVec::loadu(p + i) == vm).zero_mask()) & full;
    if (miss != full) return i + __builtin_ctz(~miss & full);
  }
  for (; i < n; ++i) {
    if (static_cast<at::opmath_type<scalar_t>>(p[i]) == m) return i;
  }
  return 0;  // unreachable for a NaN-free map
}

// Sub-pixel refinement at the integer peak (px, py); see argmax_decode.cpp.
template <typename scalar_t, typename acc_t>
inline void refine_peak(const scalar_t* map, int64_t H, int64_t W, int64_t px, int64_t py,
                        int mode, acc_t& x, acc_t& y) {
  x = static_cast<acc_t>(px);
  y = static_cast<acc_t>(py);
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
        const acc_t m = map_max(map, n);
        if (std::isnan(m)) {
          cp[2 * k] = cp[2 * k + 1] = sp[k] = std::numeric_limits<acc_t>::quiet_NaN();
          continue;
        }
        const int64_t idx = first_index_of(map, n, m);
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
