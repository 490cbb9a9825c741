// CPU kernel of pyflm::heatmap_targets.
//
// Every map is separable, g(i, j) = gx[j] * gy[i], so the work is two phases:
//  1. per landmark (parallel over B*K): validity, mask, and the 1-D tables gx
//     [W] and gy [H] (W + H exps; zero for invalid landmarks, already
//     normalised for kind "distribution");
//  2. the outer products, memory bound: parallel over maps for the plain
//     kinds, or over (batch, row) when a channel depends on all K maps
//     (gaussian background = 1 - max_k, pwc = g_k / max(1, sum_k)).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
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

// Phase 1 for one landmark: fills gx [W] and gy [H]; returns validity.
// For "distribution" the exponent is shifted by the nearest pixel's distance
// (mathematically a no-op after normalising) so tiny sigmas cannot underflow
// the whole table to 0 and divide 0 by 0.
template <typename acc_t>
bool landmark_tables(acc_t x, acc_t y, bool visible, int64_t H, int64_t W, acc_t c,
                     bool distribution, acc_t* gx, acc_t* gy) {
  const bool valid = visible && std::isfinite(x) && std::isfinite(y) && x >= acc_t(-0.5) &&
                     x < acc_t(W) - acc_t(0.5) && y >= acc_t(-0.5) &&
                     y < acc_t(H) - acc_t(0.5);
  auto fill = [&](acc_t centre, int64_t n, acc_t* g) {
    if (!valid) {
      std::fill(g, g + n, acc_t(0));
      return;
    }
    acc_t shift = 0;
    if (distribution) {
      const acc_t nearest = std::clamp<acc_t>(std::nearbyint(centre), acc_t(0), acc_t(n - 1));
      const acc_t d0 = nearest - centre;
      shift = d0 * d0;
    }
    // Below log(FLT_MIN) (or DBL_MIN) the value is flushed to 0 by hand: glibc's
    // exp takes a ~100x slower errno/underflow path there, and with sigma = 2 on
    // a 64-pixel map most of a table lies in that tail.
    const acc_t cutoff = std::log(std::numeric_limits<acc_t>::min());
    acc_t sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      const acc_t d = acc_t(j) - centre;
      const acc_t e = -(d * d - shift) * c;
      g[j] = e > cutoff ? std::exp(e) : acc_t(0);
      sum += g[j];
    }
    if (distribution) {
      const acc_t inv = acc_t(1) / sum;  // sum >= 1: the nearest pixel contributes exp(0)
      for (int64_t j = 0; j < n; ++j) g[j] *= inv;
    }
  };
  fill(x, W, gx);
  fill(y, H, gy);
  return valid;
}

// Rows are computed in acc_t; when scalar_t is narrower they go through a
// scratch row and one vectorised conversion.
template <typename scalar_t, typename acc_t>
struct RowOut {
  static constexpr bool kSame = std::is_same_v<scalar_t, acc_t>;
  acc_t* tmp;
  acc_t* begin(scalar_t* dst) const {
    if constexpr (kSame) return dst; else return tmp;
  }
  void finish(scalar_t* dst, int64_t n) const {
    if constexpr (!kSame) at::vec::convert(tmp, dst, n);
  }
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
  const acc_t c = static_cast<acc_t>(
      std::min(0.5 / sigma / sigma, static_cast<double>(std::numeric_limits<acc_t>::max())));

  const scalar_t* xy = coords.const_data_ptr<scalar_t>();
  const bool* visp = vis.defined() ? vis.const_data_ptr<bool>() : nullptr;
  scalar_t* out = targets.mutable_data_ptr<scalar_t>();
  scalar_t* maskp = mask.mutable_data_ptr<scalar_t>();
  std::vector<acc_t> tables(static_cast<size_t>(M * T));
  acc_t* tab = tables.data();

  at::parallel_for(0, M, std::max<int64_t>(1, 4096 / T), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const bool valid = landmark_tables<acc_t>(
          static_cast<acc_t>(xy[2 * m]), static_cast<acc_t>(xy[2 * m + 1]),
          visp ? visp[m] : true, H, W, c, kind == kDistribution, tab + m * T, tab + m * T + W);
      maskp[m] = static_cast<scalar_t>(valid ? 1 : 0);
    }
  });
  if (H * W == 0 || C == 0 || B == 0) return;

  if (!with_bg) {
    // One map per task: out[m, i, :] = gy[i] * gx.
    at::parallel_for(0, M, std::max<int64_t>(1, 32768 / (H * W)), [&](int64_t m0, int64_t m1) {
      std::vector<acc_t> scratch(RowOut<scalar_t, acc_t>::kSame ? 0 : W);
      RowOut<scalar_t, acc_t> ro{scratch.data()};
      for (int64_t m = m0; m < m1; ++m) {
        const acc_t* gx = tab + m * T;
        const acc_t* gy = gx + W;
        for (int64_t i = 0; i < H; ++i) {
          scalar_t* dst = out + (m * H + i) * W;
          acc_t* row = ro.begin(dst);
          const Vec a(gy[i]);
          int64_t j = 0;
          for (; j + L <= W; j += L) (a * Vec::loadu(gx + j)).store(row + j);
          if (j < W) (a * Vec::loadu(gx + j, W - j)).store(row + j, W - j);
          ro.finish(dst, W);
        }
      }
    });
    return;
  }

  // Per (batch, row): channel k's row and the running max (gaussian) or sum (pwc).
  at::parallel_for(0, B * H, std::max<int64_t>(1, 32768 / (C * W)), [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> acc(W), scratch(RowOut<scalar_t, acc_t>::kSame ? 0 : W), inv(W);
    RowOut<scalar_t, acc_t> ro{scratch.data()};
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
