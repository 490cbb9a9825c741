// CPU kernel of pyflm::heatmap_targets.
//
// Every map is separable, g(i, j) = gx[j] * gy[i]: per landmark, validity,
// mask and the 1-D tables gx [W] and gy [H] (zero for invalid landmarks,
// already normalised for kind "distribution"), then the outer products, which
// are memory bound. The plain kinds do both per map (parallel over maps);
// when a channel depends on all K maps (gaussian background = 1 - max_k,
// pwc = g_k / max(1, sum_k)) every table comes first, then the rows (parallel
// over (batch, row)). What makes it fast: few exps (a recurrence), no
// denormal multiplies, and streaming stores for large targets (each below).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#include <xmmintrin.h>
#endif

#include "ops/heatmap_targets.h"

namespace pyflm {
using namespace heatmap_targets_detail;  // kinds and check_inputs

namespace {


// The targets are large (64 x 68 x 64 x 64 float32 = 71 MB), freshly mmapped
// by the allocator, and written once: on some machines first-touch page faults
// cost more than the arithmetic and the stores together. Asking for
// transparent huge pages on the 2 MB-aligned interior of the buffer (what
// PyTorch's allocator does itself under THP_MEM_ALLOC_ENABLE=1) cuts the
// faults by 512x. Only advice: a no-op when THP is off or pages already exist.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const size_t nbytes = t.nbytes();
  if (nbytes < 4 * kHuge) return;
  const auto begin = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (begin + nbytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#endif
}

// The 1-D tables of one landmark: fills gx [W] and gy [H]; returns validity.
// For "distribution" the exponent is shifted by the nearest pixel's distance
// (mathematically a no-op after normalising) so tiny sigmas cannot underflow
// the whole table to 0 and divide 0 by 0.
//
// g[j] = exp(-((j - centre)^2 - shift) c) comes from the exact recurrence
// g[j +- 1] = g[j] r, r *= exp(-2c), run outward from the nearest pixel j0:
// three exps a table instead of one a pixel (those were ~40% of the kernel's
// time), in double, so the error after k steps is ~k^2 ulp of double (< 1e-10
// relative for tables of 1,000). g only falls moving outward; below acc_t's
// smallest normal the rest of that side is 0.
template <typename acc_t>
bool landmark_tables(acc_t x, acc_t y, bool visible, int64_t H, int64_t W, double c,
                     bool distribution, acc_t* gx, acc_t* gy) {
  const bool valid = visible && std::isfinite(x) && std::isfinite(y) && x >= acc_t(-0.5) &&
                     x < acc_t(W) - acc_t(0.5) && y >= acc_t(-0.5) &&
                     y < acc_t(H) - acc_t(0.5);
  auto fill = [&](acc_t centre, int64_t n, acc_t* g) {
    if (!valid || n == 0) {
      std::fill(g, g + n, acc_t(0));
      return;
    }
    const double tiny = std::numeric_limits<acc_t>::min();
    const int64_t j0 = std::clamp<int64_t>(static_cast<int64_t>(std::nearbyint(centre)), 0, n - 1);
    const double d0 = static_cast<double>(j0) - static_cast<double>(centre);  // in [-0.5, 0.5]
    const double shift = distribution ? d0 * d0 : 0.0;
    const double q = std::exp(-2.0 * c);
    double g0 = std::exp(-(d0 * d0 - shift) * c);
    if (g0 < tiny) g0 = 0;
    g[j0] = static_cast<acc_t>(g0);
    double sum = g0, v = g0, r = std::exp(-(2.0 * d0 + 1.0) * c);
    int64_t j = j0 + 1;
    for (; j < n && (v *= r) >= tiny; ++j, r *= q) {
      g[j] = static_cast<acc_t>(v);
      sum += v;
    }
    std::fill(g + j, g + n, acc_t(0));
    v = g0, r = std::exp((2.0 * d0 - 1.0) * c);
    j = j0 - 1;
    for (; j >= 0 && (v *= r) >= tiny; --j, r *= q) {
      g[j] = static_cast<acc_t>(v);
      sum += v;
    }
    std::fill(g, g + j + 1, acc_t(0));
    if (distribution) {
      const acc_t inv = static_cast<acc_t>(1.0 / sum);  // sum >= 1: g[j0] is exp(0)
      for (int64_t k = 0; k < n; ++k) g[k] *= inv;
    }
  };
  fill(x, W, gx);
  fill(y, H, gy);
  return valid;
}

// Targets larger than this are written with streaming (non-temporal) stores.
// They are written once and read much later (by the loss, after the network's
// forward), so caching them only evicts the working set, and a plain store
// first reads every cache line it writes (read-for-ownership): streaming
// roughly doubles the store bandwidth into a reused 71 MB buffer here
// (benchmarks/bench_heatmap_targets.py). Small targets stay cached.
constexpr size_t kStreamBytes = size_t(8) << 20;

// memcpy with non-temporal stores on the 16-byte-aligned part of dst (SSE2 is
// baseline x86-64, no run-time dispatch needed). The caller issues
// stream_fence() before its writes must be visible to another thread.
inline void stream_copy(void* dst, const void* src, size_t n) {
#if defined(__SSE2__)
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
  const size_t head = std::min(n, (16 - (reinterpret_cast<uintptr_t>(d) & 15)) & 15);
  std::memcpy(d, s, head);
  d += head, s += head, n -= head;
  for (; n >= 16; n -= 16, d += 16, s += 16)
    _mm_stream_si128(reinterpret_cast<__m128i*>(d),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
  std::memcpy(d, s, n);
#else
  std::memcpy(dst, src, n);
#endif
}

// dst[j] = a * g[j], j < n: the whole work of a plain map row. SSE2 intrinsics
// for float and double (baseline x86-64; ATen's Vectorized is its scalar
// fallback in this translation unit, ~2x slower here), streamed when kStream.
template <bool kStream, typename T>
void scaled_row(T* dst, const T* g, T a, int64_t n) {
  int64_t j = 0;
#if defined(__SSE2__)
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    constexpr int64_t kLanes = 16 / sizeof(T);
    if constexpr (kStream) {  // aligned head, so the body can stream
      for (; j < n && (reinterpret_cast<uintptr_t>(dst + j) & 15); ++j) dst[j] = a * g[j];
    }
    if constexpr (std::is_same_v<T, float>) {
      const __m128 av = _mm_set1_ps(a);
      for (; j + kLanes <= n; j += kLanes) {
        const __m128 v = _mm_mul_ps(av, _mm_loadu_ps(g + j));
        if constexpr (kStream) _mm_stream_ps(dst + j, v); else _mm_storeu_ps(dst + j, v);
      }
    } else {
      const __m128d av = _mm_set1_pd(a);
      for (; j + kLanes <= n; j += kLanes) {
        const __m128d v = _mm_mul_pd(av, _mm_loadu_pd(g + j));
        if constexpr (kStream) _mm_stream_pd(dst + j, v); else _mm_storeu_pd(dst + j, v);
      }
    }
  }
#endif
  for (; j < n; ++j) dst[j] = a * g[j];
}

inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Most of a Gaussian map is far from its centre: there gy[i] * gx[j] (two
// tiny, normal factors) underflows, and many x86 cores (Intel's among them)
// take a ~100-cycle microcode assist for every multiply whose result is
// denormal or underflows; with sigma 2 on a 64 x 64 map ~70% of the pixels do,
// making the kernel ~2.5x slower than its stores. Within the kernel, on each
// thread, denormal results and inputs are flushed to zero (MXCSR FTZ + DAZ,
// restored on exit): values under FLT_MIN (DBL_MIN) become 0, far below any
// precision a target has. The tables are normal numbers either way (their
// recurrence stops below acc_t's smallest normal).
class FlushDenormalsScope {
 public:
#if defined(__SSE2__)
  FlushDenormalsScope() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040u); }
  ~FlushDenormalsScope() { _mm_setcsr(saved_); }
#else
  FlushDenormalsScope() {}  // elsewhere denormals are only slow, never wrong
#endif
  FlushDenormalsScope(const FlushDenormalsScope&) = delete;
  FlushDenormalsScope& operator=(const FlushDenormalsScope&) = delete;

 private:
#if defined(__SSE2__)
  unsigned int saved_;
#endif
};

// Rows are computed in acc_t. They go straight to dst when the types match
// and the targets are small; otherwise through a scratch row (L1-resident):
// one vectorised conversion when scalar_t is narrower, then a streaming copy
// when the targets are large. One RowOut per thread (it owns its scratch).
template <typename scalar_t, typename acc_t>
class RowOut {
 public:
  static constexpr bool kSame = std::is_same_v<scalar_t, acc_t>;
  RowOut(int64_t width, bool stream)
      : stream_(stream),
        tmp_(kSame && !stream ? 0 : width),
        narrow_(!kSame && stream ? width : 0) {}
  RowOut(const RowOut&) = delete;
  RowOut& operator=(const RowOut&) = delete;
  ~RowOut() {
    if (stream_) stream_fence();  // before at::parallel_for's join publishes the rows
  }
  acc_t* begin(scalar_t* dst) {
    if constexpr (kSame) {
      if (!stream_) return dst;
    }
    return tmp_.data();
  }
  // dst[:n] = a * g[:n] (a plain map row).
  void scaled(scalar_t* dst, const acc_t* g, acc_t a, int64_t n) {
    if constexpr (kSame) {
      if (stream_) scaled_row<true>(dst, g, a, n); else scaled_row<false>(dst, g, a, n);
    } else {
      scaled_row<false>(tmp_.data(), g, a, n);
      finish(dst, n);
    }
  }
  void finish(scalar_t* dst, int64_t n) {
    if constexpr (kSame) {
      if (stream_) stream_copy(dst, tmp_.data(), n * sizeof(scalar_t));
    } else if (stream_) {
      at::vec::convert(tmp_.data(), narrow_.data(), n);
      stream_copy(dst, narrow_.data(), n * sizeof(scalar_t));
    } else {
      at::vec::convert(tmp_.data(), dst, n);
    }
  }

 private:
  bool stream_;
  std::vector<acc_t> tmp_;
  std::vector<scalar_t> narrow_;
};

template <typename scalar_t>
void heatmap_targets_cpu_impl(const at::Tensor& coords, const at::Tensor& vis, int64_t H,
                              int64_t W, double sigma, int kind, bool background,
                              at::Tensor& targets, at::Tensor& mask) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  const int64_t B = coords.size(0), K = coords.size(1), M = B * K;
  const int64_t T = W + H;  // table stride per landmark
  const bool with_bg = kind == kPwc || (kind == kGaussian && background);
  const int64_t C = K + (with_bg ? 1 : 0);
  // exponent factor 1/(2 sigma^2), clamped so a denormal sigma gives a delta
  // (0 * c stays 0) instead of 0 * inf = NaN.
  const double c =
      std::min(0.5 / sigma / sigma, static_cast<double>(std::numeric_limits<acc_t>::max()));

  const scalar_t* xy = coords.const_data_ptr<scalar_t>();
  const bool* visp = vis.defined() ? vis.const_data_ptr<bool>() : nullptr;
  scalar_t* out = targets.mutable_data_ptr<scalar_t>();
  scalar_t* maskp = mask.mutable_data_ptr<scalar_t>();
  const bool stream = targets.nbytes() >= kStreamBytes;
  auto tables_of = [&](int64_t m, acc_t* table) {
    const bool valid = landmark_tables<acc_t>(
        static_cast<acc_t>(xy[2 * m]), static_cast<acc_t>(xy[2 * m + 1]), visp ? visp[m] : true,
        H, W, c, kind == kDistribution, table, table + W);
    maskp[m] = static_cast<scalar_t>(valid ? 1 : 0);
  };

  if (!with_bg) {
    // One map per task, its tables in L1 right before its rows:
    // out[m, i, :] = gy[i] * gx.
    at::parallel_for(0, M, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, H * W)),
                     [&](int64_t m0, int64_t m1) {
      const FlushDenormalsScope ftz;
      RowOut<scalar_t, acc_t> ro(W, stream);
      std::vector<acc_t> table(static_cast<size_t>(T));
      const acc_t* gx = table.data();
      const acc_t* gy = gx + W;
      for (int64_t m = m0; m < m1; ++m) {
        tables_of(m, table.data());
        for (int64_t i = 0; i < H; ++i) ro.scaled(out + (m * H + i) * W, gx, gy[i], W);
      }
    });
    return;
  }

  // A channel depends on all K maps: first every landmark's tables, then rows.
  std::vector<acc_t> tables(static_cast<size_t>(M * T));
  acc_t* tab = tables.data();
  at::parallel_for(0, M, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, T)),
                   [&](int64_t m0, int64_t m1) {
    const FlushDenormalsScope ftz;
    for (int64_t m = m0; m < m1; ++m) tables_of(m, tab + m * T);
  });
  if (H * W == 0 || C == 0 || B == 0) return;

  // Per (batch, row): channel k's row and the running max (gaussian) or sum (pwc).
  at::parallel_for(0, B * H, std::max<int64_t>(1, 32768 / (C * W)), [&](int64_t r0, int64_t r1) {
    const FlushDenormalsScope ftz;
    std::vector<acc_t> acc(W), inv(W);
    RowOut<scalar_t, acc_t> ro(W, stream);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / H, i = r % H;
      auto dst_of = [&](int64_t k) { return out + ((b * C + k) * H + i) * W; };
      std::fill(acc.begin(), acc.end(), acc_t(0));
      if (kind == kGaussian) {
        for (int64_t k = 0; k < K; ++k) {
          const acc_t* gx = tab + (b * K + k) * T;
          const Vec a(gx[W + i]);
          scalar_t* dst = dst_of(k);
          acc_t* row = ro.begin(dst);
          int64_t j = 0;
          for (; j + L <= W; j += L) {
            const Vec g = a * Vec::loadu(gx + j);
            g.store(row + j);
            at::vec::maximum(g, Vec::loadu(acc.data() + j)).store(acc.data() + j);
          }
          for (; j < W; ++j) {
            const acc_t g = gx[W + i] * gx[j];
            row[j] = g;
            acc[j] = std::max(acc[j], g);
          }
          ro.finish(dst, W);
        }
        scalar_t* dst = dst_of(K);
        acc_t* row = ro.begin(dst);
        for (int64_t j = 0; j < W; ++j) row[j] = acc_t(1) - acc[j];
        ro.finish(dst, W);
      } else {  // pwc
        for (int64_t k = 0; k < K; ++k) {
          const acc_t* gx = tab + (b * K + k) * T;
          const Vec a(gx[W + i]);
          int64_t j = 0;
          for (; j + L <= W; j += L)
            (Vec::loadu(acc.data() + j) + a * Vec::loadu(gx + j)).store(acc.data() + j);
          for (; j < W; ++j) acc[j] += gx[W + i] * gx[j];
        }
        for (int64_t j = 0; j < W; ++j) inv[j] = acc_t(1) / std::max(acc_t(1), acc[j]);
        for (int64_t k = 0; k < K; ++k) {
          const acc_t* gx = tab + (b * K + k) * T;
          const Vec a(gx[W + i]);
          scalar_t* dst = dst_of(k);
          acc_t* row = ro.begin(dst);
          int64_t j = 0;
          for (; j + L <= W; j += L)
            (a * Vec::loadu(gx + j) * Vec::loadu(inv.data() + j)).store(row + j);
          for (; j < W; ++j) row[j] = gx[W + i] * gx[j] * inv[j];
          ro.finish(dst, W);
        }
        // 1 - sum_k g_k / max(1, S) == max(0, 1 - S), without the rounding of a second sum.
        scalar_t* dst = dst_of(K);
        acc_t* row = ro.begin(dst);
        for (int64_t j = 0; j < W; ++j) row[j] = std::max(acc_t(0), acc_t(1) - acc[j]);
        ro.finish(dst, W);
      }
    }
  });
}

// Writes every element of targets [B, C, H, W] and mask [B, K] (contiguous).
void fill_cpu(const at::Tensor& coords_in, const std::optional<at::Tensor>& visibility,
              int64_t height, int64_t width, double sigma, int kind, bool background,
              at::Tensor& targets, at::Tensor& mask) {
  const at::Tensor coords = coords_in.contiguous();
  at::Tensor vis;
  if (visibility.has_value()) {
    vis = visibility->scalar_type() == at::kBool ? visibility->contiguous()
                                                 : at::gt(*visibility, 0).contiguous();
  }
  if (coords.size(0) == 0 || targets.size(1) == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, coords.scalar_type(),
                                  "heatmap_targets_cpu", [&] {
    heatmap_targets_cpu_impl<scalar_t>(coords, vis, height, width, sigma, kind, background,
                                       targets, mask);
  });
}

std::tuple<at::Tensor, at::Tensor> heatmap_targets_cpu(
    const at::Tensor& coords, const std::optional<at::Tensor>& visibility, int64_t height,
    int64_t width, double sigma, c10::string_view kind_str, bool background) {
  const int kind = check_inputs(coords, visibility, height, width, sigma, kind_str, background);
  const int64_t B = coords.size(0), K = coords.size(1);
  at::Tensor targets = at::empty({B, target_channels(kind, background, K), height, width},
                                 coords.options());
  at::Tensor mask = at::empty({B, K}, coords.options());
  advise_huge_pages(targets);
  fill_cpu(coords, visibility, height, width, sigma, kind, background, targets, mask);
  return {targets, mask};
}

void heatmap_targets_out_cpu(
    const at::Tensor& coords, const std::optional<at::Tensor>& visibility, int64_t height,
    int64_t width, double sigma, c10::string_view kind_str, bool background,
    at::Tensor& targets, at::Tensor& mask) {
  const int kind = check_inputs(coords, visibility, height, width, sigma, kind_str, background);
  check_out(coords, target_channels(kind, background, coords.size(1)), height, width, targets,
            mask);
  fill_cpu(coords, visibility, height, width, sigma, kind, background, targets, mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyflm, CPU, m) {
  m.impl("heatmap_targets", &heatmap_targets_cpu);
  m.impl("heatmap_targets.out", &heatmap_targets_out_cpu);
}

}  // namespace pyflm
