#pragma once
// Input validation shared by every op. Messages name the op and the argument,
// so a user sees e.g. "pyflm.soft_argmax: heatmaps must be 4-D [B, K, H, W],
// got 3-D [2, 68, 64]".
#include <ATen/ATen.h>

#include <cmath>
#include <initializer_list>
#include <sstream>
#include <string>

namespace pyflm::checks {

inline std::string shape_str(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* arg,
                      const char* layout) {
  TORCH_CHECK(t.dim() == dim, "pyflm.", op, ": ", arg, " must be ", dim, "-D ", layout,
              ", got ", t.dim(), "-D ", shape_str(t));
}

inline void check_floating(const at::Tensor& t, const char* op, const char* arg,
                           std::initializer_list<at::ScalarType> allowed) {
  for (auto s : allowed) {
    if (t.scalar_type() == s) return;
  }
  std::ostringstream os;
  bool first = true;
  for (auto s : allowed) {
    os << (first ? "" : ", ") << s;
    first = false;
  }
  TORCH_CHECK(false, "pyflm.", op, ": ", arg, " must have dtype in {", os.str(), "}, got ",
              t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op,
                              const char* arg_a, const char* arg_b) {
  TORCH_CHECK(a.device() == b.device(), "pyflm.", op, ": ", arg_a, " (on ", a.device(),
              ") and ", arg_b, " (on ", b.device(), ") must be on the same device");
}

inline void check_positive_finite(double v, const char* op, const char* arg) {
  TORCH_CHECK(std::isfinite(v) && v > 0, "pyflm.", op, ": ", arg,
              " must be a positive finite number, got ", v);
}

}  // namespace pyflm::checks
