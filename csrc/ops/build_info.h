#pragma once
#include <string>

namespace pyflm {

struct BuildInfo {
  std::string version;          // pyflm version the library was built as
  std::string torch_version;    // torch the library was compiled against
  bool with_cuda;               // CUDA kernels compiled in
  std::string cuda_arch_list;   // e.g. "80;90"; empty without CUDA
  std::string cuda_version;     // CUDA toolkit used; empty without CUDA
  int num_threads;              // at::get_num_threads() at call time
  std::string parallel_info;    // at::get_parallel_info(), first line
};

BuildInfo build_info();
// The same facts as a JSON object (for TorchScript / C++ callers).
std::string build_info_json();

}  // namespace pyflm
