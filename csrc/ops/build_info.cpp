#include "ops/build_info.h"

#include <ATen/Parallel.h>
#include <torch/version.h>

#include <sstream>

#ifdef PYFLM_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace pyflm {

BuildInfo build_info() {
  BuildInfo info;
  info.version = PYFLM_VERSION;
  info.torch_version = TORCH_VERSION;
#ifdef PYFLM_WITH_CUDA
  info.with_cuda = true;
  info.cuda_arch_list = PYFLM_CUDA_ARCH_LIST;
  info.cuda_version = std::to_string(CUDART_VERSION / 1000) + "." +
                      std::to_string((CUDART_VERSION % 1000) / 10);
#else
  info.with_cuda = false;
#endif
  info.num_threads = at::get_num_threads();
  // Keep the one line naming the backend (OpenMP / native thread pool).
  const std::string parallel = at::get_parallel_info();
  const auto at_backend = parallel.find("ATen parallel backend");
  if (at_backend != std::string::npos) {
    info.parallel_info = parallel.substr(at_backend, parallel.find('\n', at_backend) - at_backend);
  }
  return info;
}

static std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string build_info_json() {
  const BuildInfo b = build_info();
  std::ostringstream os;
  os << "{\"version\": " << quoted(b.version)
     << ", \"torch_version\": " << quoted(b.torch_version)
     << ", \"with_cuda\": " << (b.with_cuda ? "true" : "false")
     << ", \"cuda_arch_list\": " << quoted(b.cuda_arch_list)
     << ", \"cuda_version\": " << quoted(b.cuda_version)
     << ", \"num_threads\": " << b.num_threads << "}";
  return os.str();
}

}  // namespace pyflm
