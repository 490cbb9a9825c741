// The pyflm operator library. Each op declares its schema in its own file with
// TORCH_LIBRARY_FRAGMENT(pyflm, m); this file owns the namespace itself and the
// build-facts op, so a libtorch program can ask what it loaded.
#include <torch/library.h>

#include "ops/build_info.h"

TORCH_LIBRARY(pyflm, m) {
  m.def("build_info() -> str", &pyflm::build_info_json);
}
