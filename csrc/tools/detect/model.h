// The landmark model: pyflm's op library plus an exported TorchScript
// predictor (pyflm.deploy.export_torchscript) and its pyflm.json metadata.
// The only part of pyflm-detect that includes libtorch headers.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "crop.h"

namespace pyflm::cli {

// The op library to load: `option` if given, else $PYFLM_OPS_LIBRARY, else
// libpyflm_ops.so next to this executable. Throws SetupError when none exists.
std::string find_ops_library(const std::string& option);

// dlopen the op library (its static initialisers register torch.ops.pyflm.*;
// TorchScript resolves them while loading the model). Throws SetupError.
void load_ops_library(const std::string& path);

// CPU threads for libtorch (intra-op; inter-op 1) and OpenCV; 0 keeps their defaults.
void set_threads(int threads);

class LandmarkModel {
 public:
  // Loads the module onto `device` ("cpu", "cuda", "cuda:N") and reads its
  // metadata; with `warm_up`, runs one zero crop through it twice: the JIT's
  // first two calls profile and optimise the graph (~0.7 s each here), and the
  // optimised graph then serves every batch size. Throws SetupError for a
  // missing or unreadable model, one without pyflm.json, or an absent CUDA.
  // With `flip_test`, predict() also runs every crop mirrored left-right, maps
  // that prediction back (x -> S - 1 - x, meta["mirror"] re-orders the points)
  // and averages the two, as pyflm.FaceLandmarker(flip_test=True); SetupError
  // when the metadata has no valid "mirror" permutation.
  LandmarkModel(const std::string& path, const std::string& device, bool warm_up, bool flip_test = false);
  ~LandmarkModel();

  int input_size() const;     // S: crops are S x S
  int num_landmarks() const;  // K
  std::string device() const; // e.g. "cpu", "cuda:0"
  bool flip_test() const;

  // meta["crop"]["boxes"][box_type]; "tight" always exists (default: the
  // landmark crop's scale around the box centre, as pyflm.FaceLandmarker).
  // Throws SetupError naming the types the model has.
  BoxRule box_rule(const std::string& box_type) const;
  bool has_box_rule(const std::string& box_type) const;

  // meta["crop"]["refine"], else meta["crop"]["landmarks"] (default: scale 1.3
  // around the centroid, as pyflm.FaceLandmarker): the crop that refinement
  // rounds cut from a face's predicted landmarks. Throws SetupError for a bad
  // scale or centre.
  LandmarkRule landmark_rule() const;

  // crops: N uint8 BGR S x S images -> coords [N * K * 2] (crop pixels) and
  // scores [N * K], row-major. Throws std::runtime_error when the model fails.
  void predict(const std::vector<cv::Mat>& crops, std::vector<float>& coords, std::vector<float>& scores);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pyflm::cli
