// Shifted-GEMM implementation of the dilated skip block (see dilated_skip_impl.h).
//
// A 3x3 dilated convolution is the sum over its 9 taps (ky, kx) of a channel
// GEMM W_tap [G, Cin] @ X [Cin, H*W] whose result is shifted by
// (dy, dx) = ((ky-1)*d, (kx-1)*d). On the row-major flattened map a shift is an
// offset s = dy*W + dx, so every output position p reads input position p + s:
// one contiguous span of columns of both matrices, i.e. a single GEMM straight
// into the destination slice (addmm_ accumulates in place, no temporaries).
// Only the columns a horizontal shift would wrap into the neighbouring row are
// wrong; for dx != 0 we GEMM from a per-sample copy of the right-hand operand
// (X in forward, the output gradient in backward) with those columns zeroed,
// shared by the three taps of that column. Taps whose shifted region is empty (|dy| >= H or |dx| >= W)
// are skipped, and clipped taps cost proportionally less.
#include "ops/dilated_skip_impl.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include "ops/checks.h"

namespace pyflm::dilated_skip {
namespace {

constexpr const char* kOp = "dilated_skip_block";

// The contiguous span [p, p + len) of flattened output positions a tap touches,
// reading input positions [p + s, p + s + len).
struct Span {
  int64_t p = 0, len = 0, s = 0;
};

Span tap_span(int64_t dy, int64_t dx, int64_t H, int64_t W) {
  Span sp;
  sp.s = dy * W + dx;
  const int64_t oy0 = std::max<int64_t>(0, -dy), oy1 = std::min<int64_t>(H, H - dy);
  const int64_t pa = std::max<int64_t>(oy0 * W, -sp.s);
  const int64_t pb = std::min<int64_t>(oy1 * W, H * W - sp.s);
  sp.p = pa;
  sp.len = std::max<int64_t>(0, pb - pa);
  return sp;
}

// Copies src [R, H*W] into scratch with the columns outside [c0, c1) zeroed.
const at::Tensor& masked_columns(const at::Tensor& src, at::Tensor& scratch, int64_t c0,
                                 int64_t c1, int64_t H, int64_t W) {
  auto s3 = scratch.view({scratch.size(0), H, W});
  auto x3 = src.view({src.size(0), H, W});
  s3.narrow(2, c0, c1 - c0).copy_(x3.narrow(2, c0, c1 - c0));
  if (c0 > 0) s3.narrow(2, 0, c0).zero_();
  if (c1 < W) s3.narrow(2, c1, W - c1).zero_();
  return scratch;
}

// y [G, HW] += conv(x [Cin, HW]) for one sample; wt is [3, 3, G, Cin].
void forward_taps(const at::Tensor& y, const at::Tensor& x, const at::Tensor& wt, int64_t d,
                  int64_t H, int64_t W, at::Tensor& scratch) {
  for (int64_t kx = 0; kx < 3; ++kx) {
    const int64_t dx = (kx - 1) * d;
    if (std::abs(dx) >= W) continue;
    // Wrapped outputs read input columns outside [c0, c1): zero them.
    const at::Tensor& src =
        dx == 0 ? x
                : masked_columns(x, scratch, std::max<int64_t>(0, dx),
                                 W + std::min<int64_t>(0, dx), H, W);
    for (int64_t ky = 0; ky < 3; ++ky) {
      const int64_t dy = (ky - 1) * d;
      if (std::abs(dy) >= H) continue;
      const Span sp = tap_span(dy, dx, H, W);
      if (sp.len == 0) continue;
      y.narrow(1, sp.p, sp.len).addmm_(wt[ky][kx], src.narrow(1, sp.p + sp.s, sp.len));
    }
  }
}

// Output positions all 9 taps of dilation d touch together on an H x W map.
int64_t clipped_work(int64_t d, int64_t H, int64_t W) {
  int64_t n = 0;
  for (int64_t k = 0; k < 3; ++k) {
    for (int64_t j = 0; j < 3; ++j) {
      n += std::max<int64_t>(0, H - std::abs((k - 1) * d)) *
           std::max<int64_t>(0, W - std::abs((j - 1) * d));
    }
  }
  return n;
}

// Small dilations clip little, and then one tall GEMM for all 9 taps
// (T [9G, HW] = W_all @ x) runs faster than 9 thin ones; its shifted slices
// are added into y afterwards (memory-bound, ~1/Cin of the GEMM's cost).
bool use_stacked(int64_t d, int64_t H, int64_t W) {
  return 10 * clipped_work(d, H, W) >= 8 * 9 * H * W;
}

void forward_taps_stacked(const at::Tensor& y, const at::Tensor& x, const at::Tensor& wall,
                          int64_t d, int64_t H, int64_t W, at::Tensor& scratch) {
  const int64_t G = y.size(0);
  at::mm_out(scratch, wall, x);
  const auto T = scratch.view({3, 3, G, H, W});
  const auto Y = y.view({G, H, W});
  for (int64_t ky = 0; ky < 3; ++ky) {
    const int64_t dy = (ky - 1) * d;
    if (std::abs(dy) >= H) continue;
    const int64_t oy0 = std::max<int64_t>(0, -dy), ny = std::min<int64_t>(H, H - dy) - oy0;
    for (int64_t kx = 0; kx < 3; ++kx) {
      const int64_t dx = (kx - 1) * d;
      if (std::abs(dx) >= W) continue;
      const int64_t ox0 = std::max<int64_t>(0, -dx), nx = std::min<int64_t>(W, W - dx) - ox0;
      Y.narrow(1, oy0, ny).narrow(2, ox0, nx).add_(
          T[ky][kx].narrow(1, oy0 + dy, ny).narrow(2, ox0 + dx, nx));
    }
  }
}

// For one sample: dwt [3, 3, G, Cin] += g (x) x^T per tap, and the input
// gradient W_tap^T @ g (shifted back) into gin (first C channels) and gmid
// (the intermediate channels, undefined for the first layer).
void backward_taps(const at::Tensor& g, const at::Tensor& x, const at::Tensor& gin,
                   const at::Tensor& gmid, const at::Tensor& wt, const at::Tensor& dwt,
                   int64_t d, int64_t H, int64_t W, at::Tensor& scratch) {
  const int64_t C = gin.size(0), cin = x.size(0);
  for (int64_t kx = 0; kx < 3; ++kx) {
    const int64_t dx = (kx - 1) * d;
    if (std::abs(dx) >= W) continue;
    // Here the wrapped positions are outputs: zero g's columns outside [c0, c1).
    const at::Tensor& gs_all =
        dx == 0 ? g
                : masked_columns(g, scratch, std::max<int64_t>(0, -dx),
                                 W - std::max<int64_t>(0, dx), H, W);
    for (int64_t ky = 0; ky < 3; ++ky) {
      const int64_t dy = (ky - 1) * d;
      if (std::abs(dy) >= H) continue;
      const Span sp = tap_span(dy, dx, H, W);
      if (sp.len == 0) continue;
      const auto gs = gs_all.narrow(1, sp.p, sp.len);
      const auto w = wt[ky][kx];
      dwt[ky][kx].addmm_(gs, x.narrow(1, sp.p + sp.s, sp.len).t());
      gin.narrow(1, sp.p + sp.s, sp.len).addmm_(w.narrow(1, 0, C).t(), gs);
      if (cin > C) {
        gmid.narrow(1, sp.p + sp.s, sp.len).addmm_(w.narrow(1, C, cin - C).t(), gs);
      }
    }
  }
}

// Runs fn(b0, b1, slot) over sample ranges. On CPU the samples are spread over
// the intra-op threads (each GEMM then runs single-threaded inside the parallel
// region: no per-GEMM synchronisation, which matters for these thin GEMMs);
// elsewhere (CUDA) one serial loop on the current stream. slot < max_slots().
int64_t max_slots(const at::Tensor& t) {
  return t.device().is_cpu() ? at::get_num_threads() : 1;
}

// Below this much work per sample (GEMM multiply-adds) waking threads costs
// more than it saves.
constexpr int64_t kParallelWork = 1 << 20;

template <typename Fn>
void for_samples(const at::Tensor& t, int64_t B, int64_t work_per_sample, const Fn& fn) {
  if (t.device().is_cpu() && B > 1 && at::get_num_threads() > 1 &&
      work_per_sample >= kParallelWork) {
    // The worker threads get the caller's thread-local state (inference mode,
    // grad mode, dispatch keys): without it an in-place GEMM on an inference
    // tensor fails on every thread but the caller's.
    const at::ThreadLocalState caller;
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      at::ThreadLocalStateGuard same_state(caller);
      fn(b0, b1, at::get_thread_num());
    });
  } else {
    fn(0, B, 0);
  }
}

bool is_reduced(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

std::vector<at::Tensor> to_float(at::TensorList ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.to(at::kFloat));
  return out;
}

std::string layer_arg(const char* name, size_t l) {
  return std::string(name) + "[" + std::to_string(l) + "]";
}

}  // namespace

void check_args(const at::Tensor& input, at::TensorList weights, at::TensorList biases,
                at::IntArrayRef dilations) {
  checks::check_dim(input, 4, kOp, "input", "[B, C, H, W]");
  checks::check_floating(input, kOp, "input",
                         {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
  const size_t L = weights.size();
  TORCH_CHECK(L >= 1, "pyflm.", kOp, ": weights must hold at least one layer, got none");
  TORCH_CHECK(biases.size() == L && dilations.size() == L, "pyflm.", kOp,
              ": weights, biases and dilations must have the same length (one per layer), got ",
              L, ", ", biases.size(), " and ", dilations.size());
  const int64_t C = input.size(1);
  TORCH_CHECK(C > 0, "pyflm.", kOp, ": input must have at least one channel, got ",
              checks::shape_str(input));
  int64_t cin = C;
  for (size_t l = 0; l < L; ++l) {
    const at::Tensor& w = weights[l];
    const at::Tensor& b = biases[l];
    const bool last = l + 1 == L;
    const std::string wname = layer_arg("weights", l), bname = layer_arg("biases", l);
    const bool shape_ok = w.dim() == 4 && w.size(1) == cin && w.size(2) == 3 &&
                          w.size(3) == 3 && (last ? w.size(0) == C : w.size(0) > 0);
    TORCH_CHECK(shape_ok, "pyflm.", kOp, ": ", wname, " must have shape [",
                last ? std::to_string(C) : std::string("G"), ", ", cin, ", 3, 3]",
                last ? " (the last layer outputs the input's channels)"
                     : " with G > 0 (layer l reads the input and every earlier layer's output)",
                ", got ", checks::shape_str(w));
    TORCH_CHECK(w.scalar_type() == input.scalar_type(), "pyflm.", kOp, ": ", wname,
                " has dtype ", w.scalar_type(), " but input has dtype ", input.scalar_type());
    checks::check_same_device(input, w, kOp, "input", wname.c_str());
    TORCH_CHECK(b.dim() == 1 && b.size(0) == w.size(0), "pyflm.", kOp, ": ", bname,
                " must have shape [", w.size(0), "], got ", checks::shape_str(b));
    TORCH_CHECK(b.scalar_type() == input.scalar_type(), "pyflm.", kOp, ": ", bname,
                " has dtype ", b.scalar_type(), " but input has dtype ", input.scalar_type());
    checks::check_same_device(input, b, kOp, "input", bname.c_str());
    TORCH_CHECK(dilations[l] >= 1, "pyflm.", kOp, ": dilations[", l,
                "] must be >= 1, got ", dilations[l]);
    if (!last) cin += w.size(0);
  }
}

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& input, at::TensorList weights,
                                           at::TensorList biases, at::IntArrayRef dilations) {
  check_args(input, weights, biases, dilations);
  if (is_reduced(input)) {
    // Summing 9 taps per layer and L layers in half/bfloat16 storage loses far
    // more than the convolutions it replaces (which accumulate in float32):
    // compute in float32, round the output once, keep the buffer in float32.
    auto [output, buffer] = forward(input.to(at::kFloat), to_float(weights), to_float(biases), dilations);
    return {output.to(input.scalar_type()), buffer};
  }
  const at::Tensor x = input.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const size_t L = weights.size();
  int64_t buf_ch = C;
  for (size_t l = 0; l + 1 < L; ++l) buf_ch += weights[l].size(0);

  at::Tensor buffer = at::empty({B, buf_ch, H, W}, x.options());
  if (x.numel() == 0) return {at::empty({B, C, H, W}, x.options()), buffer};

  buffer.narrow(1, 0, C).copy_(x);
  // The skip connection and the last bias, added up front: the last layer's
  // taps then accumulate straight into the output.
  at::Tensor output = at::empty({B, C, H, W}, x.options());
  at::add_out(output, x, biases[L - 1].view({1, C, 1, 1}));

  const int64_t HW = H * W;
  int64_t cin = C;
  for (size_t l = 0; l < L; ++l) {
    const bool last = l + 1 == L;
    const int64_t G = weights[l].size(0);
    const at::Tensor wt = weights[l].permute({2, 3, 0, 1}).contiguous();  // [3, 3, G, cin]
    at::Tensor target = last ? output : buffer.narrow(1, cin, G);
    if (!last) target.copy_(biases[l].view({1, G, 1, 1}).expand_as(target));
    const bool stacked = use_stacked(dilations[l], H, W);
    for_samples(x, B, 9 * G * cin * HW, [&](int64_t b0, int64_t b1, int64_t) {
      at::Tensor scratch = at::empty({stacked ? 9 * G : cin, HW}, x.options());
      for (int64_t b = b0; b < b1; ++b) {
        const auto y = target[b].view({G, HW});
        const auto xb = buffer[b].narrow(0, 0, cin).view({cin, HW});
        if (stacked) {
          forward_taps_stacked(y, xb, wt.view({9 * G, cin}), dilations[l], H, W, scratch);
        } else {
          forward_taps(y, xb, wt, dilations[l], H, W, scratch);
        }
      }
    });
    if (!last) {
      target.relu_();
      cin += G;
    }
  }
  return {output, buffer};
}

at::Tensor block(const at::Tensor& input, at::TensorList weights, at::TensorList biases,
                 at::IntArrayRef dilations) {
  return std::get<0>(forward(input, weights, biases, dilations));
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> backward(
    const at::Tensor& grad_output, const at::Tensor& buffer, at::TensorList weights,
    at::IntArrayRef dilations) {
  const char* op = "_dilated_skip_block_backward";
  checks::check_dim(grad_output, 4, op, "grad_output", "[B, C, H, W]");
  checks::check_dim(buffer, 4, op, "buffer", "[B, C + sum(G), H, W]");
  const size_t L = weights.size();
  TORCH_CHECK(L >= 1 && dilations.size() == L, "pyflm.", op,
              ": weights and dilations must have the same, nonzero length, got ", L, " and ",
              dilations.size());
  const int64_t B = grad_output.size(0), C = grad_output.size(1), H = grad_output.size(2),
                W = grad_output.size(3), HW = H * W;
  int64_t buf_ch = C;
  for (size_t l = 0; l + 1 < L; ++l) buf_ch += weights[l].size(0);
  TORCH_CHECK(buffer.size(0) == B && buffer.size(1) == buf_ch && buffer.size(2) == H &&
                  buffer.size(3) == W,
              "pyflm.", op, ": buffer must have shape [", B, ", ", buf_ch, ", ", H, ", ", W,
              "], got ", checks::shape_str(buffer));
  if (is_reduced(grad_output)) {  // the forward kept a float32 buffer
    auto [gi, gw, gb] = backward(grad_output.to(at::kFloat), buffer, to_float(weights), dilations);
    for (size_t l = 0; l < L; ++l) {
      gw[l] = gw[l].to(weights[l].scalar_type());
      gb[l] = gb[l].to(weights[l].scalar_type());
    }
    return {gi.to(grad_output.scalar_type()), gw, gb};
  }
  TORCH_CHECK(grad_output.scalar_type() == buffer.scalar_type() &&
                  grad_output.device() == buffer.device(),
              "pyflm.", op, ": grad_output and buffer must share dtype and device");

  const at::Tensor g_out = grad_output.contiguous();
  const at::Tensor buf = buffer.contiguous();
  // The skip connection passes grad_output through unchanged.
  at::Tensor grad_input = at::empty({B, C, H, W}, g_out.options());
  grad_input.copy_(g_out);
  std::vector<at::Tensor> grad_w(L), grad_b(L);
  if (g_out.numel() == 0) {
    for (size_t l = 0; l < L; ++l) {
      grad_w[l] = at::zeros(weights[l].sizes(), weights[l].options());
      grad_b[l] = at::zeros({weights[l].size(0)}, weights[l].options());
    }
    return {grad_input, grad_w, grad_b};
  }
  // Gradients wrt the intermediate activations, same layout as the buffer's
  // channels C.. ; each layer's slice is complete once the later layers ran.
  at::Tensor gmid;
  if (buf_ch > C) gmid = at::zeros({B, buf_ch - C, H, W}, g_out.options());

  int64_t cin = buf_ch;
  for (size_t li = L; li-- > 0;) {
    const bool last = li + 1 == L;
    const int64_t G = weights[li].size(0);
    if (!last) cin -= G;  // layer li reads channels [0, cin), writes [cin, cin + G)
    at::Tensor g;
    if (last) {
      g = g_out;
    } else {
      g = gmid.narrow(1, cin - C, G);
      g.masked_fill_(buf.narrow(1, cin, G).le(0), 0);  // ReLU backward
    }
    grad_b[li] = g.sum({0, 2, 3});
    const at::Tensor wt = weights[li].permute({2, 3, 0, 1}).contiguous();  // [3, 3, G, cin]
    // One weight-gradient accumulator per thread slot, summed afterwards.
    const int64_t slots = B > 1 && 27 * G * cin * HW >= kParallelWork ? max_slots(g_out) : 1;
    at::Tensor dwt = at::zeros({slots, 3, 3, G, cin}, g_out.options());
    for_samples(g_out, B, 27 * G * cin * HW, [&](int64_t b0, int64_t b1, int64_t slot) {
      at::Tensor scratch = at::empty({G, HW}, g_out.options());
      const at::Tensor dw = dwt[std::min(slot, slots - 1)];
      for (int64_t b = b0; b < b1; ++b) {
        at::Tensor gmid_b;
        if (cin > C) gmid_b = gmid[b].narrow(0, 0, cin - C).view({cin - C, HW});
        backward_taps(g[b].view({G, HW}), buf[b].narrow(0, 0, cin).view({cin, HW}),
                      grad_input[b].view({C, HW}), gmid_b, wt, dw, dilations[li], H, W, scratch);
      }
    });
    grad_w[li] = (slots == 1 ? dwt[0] : dwt.sum(0)).permute({2, 3, 0, 1}).contiguous();
  }
  return {grad_input, grad_w, grad_b};
}

}  // namespace pyflm::dilated_skip
