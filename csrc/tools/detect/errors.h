// The three kinds of failure pyflm-detect tells apart (they decide the exit code).
#pragma once

#include <stdexcept>

namespace pyflm::cli {

// A bad command line: main prints the message and the usage text, exits 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The run cannot start or finish (model, op library, cascade, boxes file,
// output location, device): main prints the message and exits 2.
struct SetupError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One input (file, frame) failed: reported in the JSON and on stderr, the run
// goes on and exits 1 at the end.
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace pyflm::cli
