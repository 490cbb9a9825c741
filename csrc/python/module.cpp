// pyflm._C: importing it loads libpyflm_ops (a link-time dependency), whose
// static initialisers register every op with the PyTorch dispatcher. It also
// reports how the library was built. It deliberately does not link
// libtorch_python: ops are reached through torch.ops.pyflm.*.
#include <pybind11/pybind11.h>

#include "ops/build_info.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyflm compiled op library loader and build facts";
  m.def(
      "build_info",
      [] {
        const pyflm::BuildInfo b = pyflm::build_info();
        py::dict d;
        d["version"] = b.version;
        d["torch_version"] = b.torch_version;
        d["with_cuda"] = b.with_cuda;
        d["cuda_arch_list"] = b.cuda_arch_list;
        d["cuda_version"] = b.cuda_version;
        d["num_threads"] = b.num_threads;
        d["parallel_info"] = b.parallel_info;
        return d;
      },
      "How the op library was built: version, torch version, CUDA kernels and "
      "architectures, intra-op thread count.");
}
