// Command-line options of pyflm-detect.
#pragma once

#include <string>
#include <vector>

namespace pyflm::cli {

struct Options {
  std::string model;                // --model FILE.ts (required): pyflm's exported predictor
  std::string ops;                  // --ops: libpyflm_ops.so (empty: $PYFLM_OPS_LIBRARY, then next to the binary)
  std::string device = "cpu";       // --device cpu | cuda | cuda:N
  std::string cascade;              // --cascade: Haar cascade XML (empty: Debian's opencv-data file)
  int max_side = 640;               // --max-side: detection on a copy with this longer side (0: off)
  std::string boxes;                // --boxes: JSON {"<path or basename>": [[x0, y0, x1, y1], ...]}
  std::string box_type = "tight";   // --box-type: the crop rule for --boxes, meta["crop"]["boxes"][box_type]
  int batch = 8;                    // --batch: faces per forward call
  bool flip_test = false;           // --flip-test: also run each crop mirrored, average the two
  int refine = -1;                  // --refine N | auto (-1): rounds of re-cropping from the landmarks
  int threads = 0;                  // --threads: CPU threads (0: libtorch's / OpenCV's default)
  std::string json;                 // --json: output file (empty: stdout)
  std::string out_dir;              // --out-dir: annotated images
  bool help = false;                // --help
  std::vector<std::string> inputs;  // INPUT...: images, folders of images, videos
};

// The usage text printed by --help and after a usage error.
const char* usage_text();

// Parse argv; throws UsageError naming the bad argument.
Options parse_args(int argc, char** argv);

}  // namespace pyflm::cli
