// pyflm-detect: facial landmarks for images, folders and videos from the
// command line, with a model exported by pyflm (libtorch + OpenCV C++).
// See usage_text() in options.cpp; the JSON it writes is described in
// results_json.h.
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>

#include "errors.h"
#include "face_detector.h"
#include "image_io.h"
#include "model.h"
#include "options.h"
#include "pipeline.h"
#include "results_json.h"

namespace fs = std::filesystem;
using namespace pyflm::cli;

namespace {

constexpr int kAutoRefineRounds = 2;  // pyflm.landmarker.AUTO_REFINE_ROUNDS

struct Input {
  std::string path;
  bool video;
};

// INPUT arguments -> images and videos in order (folders: their images,
// sorted). Anything else counts as an image: if it is missing or not one, its
// record says so.
std::vector<Input> expand_inputs(const std::vector<std::string>& args, std::vector<std::pair<std::string, std::string>>& failures) {
  std::vector<Input> out;
  for (const std::string& arg : args) {
    std::error_code ec;
    if (fs::is_directory(arg, ec)) {
      try {
        const std::vector<std::string> images = list_images(arg);
        if (images.empty()) std::cerr << "pyflm-detect: warning: no images in folder " << arg << "\n";
        for (const std::string& p : images) out.push_back({p, false});
      } catch (const InputError& e) {
        failures.emplace_back(arg, e.what());
      }
    } else {
      out.push_back({arg, has_video_extension(arg)});
    }
  }
  return out;
}

void check_output_locations(const Options& o) {
  std::error_code ec;
  if (!o.json.empty()) {
    const fs::path parent = fs::path(o.json).parent_path();
    if (!parent.empty() && !fs::is_directory(parent, ec)) throw SetupError("--json: folder does not exist: " + parent.string());
    if (fs::is_directory(o.json, ec)) throw SetupError("--json: is a folder: " + o.json);
  }
  if (!o.out_dir.empty()) {
    fs::create_directories(o.out_dir, ec);
    if (!fs::is_directory(o.out_dir)) throw SetupError("--out-dir: cannot create folder " + o.out_dir + (ec ? ": " + ec.message() : ""));
  }
}

int run(const Options& o) {
  const auto t_start = std::chrono::steady_clock::now();
  auto ms_since = [](std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  set_threads(o.threads);
  check_output_locations(o);
  const BoxesMap boxes = o.boxes.empty() ? BoxesMap{} : load_boxes(o.boxes);
  load_ops_library(find_ops_library(o.ops));

  std::vector<std::pair<std::string, std::string>> listing_failures;
  const std::vector<Input> inputs = expand_inputs(o.inputs, listing_failures);
  bool need_detector = false;
  for (const Input& in : inputs) need_detector = need_detector || in.video || find_boxes(boxes, in.path, "") == nullptr;
  std::unique_ptr<HaarDetector> detector;
  if (need_detector) {
    detector = std::make_unique<HaarDetector>(o.cascade.empty() ? kDefaultCascade : o.cascade, o.max_side);
  }

  const auto t_model = std::chrono::steady_clock::now();
  LandmarkModel model(o.model, o.device, /*warm_up=*/true, o.flip_test);
  const double model_load_ms = ms_since(t_model);
  const BoxRule given_rule = model.box_rule(o.box_type);
  BoxRule detector_rule = given_rule;
  if (detector) {
    if (model.has_box_rule(kDetectorBoxType)) {
      detector_rule = model.box_rule(kDetectorBoxType);
    } else {  // as pyflm.FaceLandmarker does
      std::cerr << "pyflm-detect: warning: this model has no crop rule fitted for the 'haar' face detector; "
                   "using the 'tight' rule, landmarks may be less accurate\n";
      detector_rule = model.box_rule("tight");
    }
  }

  // refine "auto" (-1), as pyflm.FaceLandmarker's: rounds for every face but those of tight boxes
  const int given_rounds = o.refine >= 0 ? o.refine : (o.box_type == "tight" ? 0 : kAutoRefineRounds);
  const int detector_rounds = o.refine >= 0 ? o.refine : kAutoRefineRounds;
  Pipeline pipeline(model, given_rule, detector_rule, detector.get(), boxes, o.batch, o.out_dir, given_rounds,
                    detector_rounds);
  for (const auto& [path, error] : listing_failures) pipeline.add_failure(path, error);
  for (const Input& in : inputs) {
    if (in.video) pipeline.add_video(in.path);
    else pipeline.add_image(in.path);
  }
  pipeline.finish();

  const Timings& t = pipeline.totals();
  nlohmann::ordered_json doc;
  doc["version"] = 1;
  doc["model"] = o.model;
  doc["device"] = model.device();
  doc["box_type"] = o.box_type;
  doc["flip_test"] = model.flip_test();
  doc["refine"] = o.refine >= 0 ? nlohmann::ordered_json(o.refine) : nlohmann::ordered_json("auto");
  doc["images"] = pipeline.records();
  auto ms = [](double v) { return std::round(v * 100.0) / 100.0; };
  doc["timings_ms"] = {{"decode", ms(t.decode)}, {"detect", ms(t.detect)}, {"landmarks", ms(t.landmarks)},
                       {"model_load", ms(model_load_ms)}, {"total", ms(ms_since(t_start))}};
  try {
    write_json(o.json, doc);
  } catch (const std::exception& e) {
    throw SetupError(std::string("cannot write the results: ") + e.what());
  }
  if (pipeline.failures() > 0) {
    std::cerr << "pyflm-detect: " << pipeline.failures() << " input(s) failed; see \"error\" in the results\n";
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  try {
    options = parse_args(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "pyflm-detect: " << e.what() << "\n\n" << usage_text();
    return 2;
  }
  if (options.help) {
    std::cout << usage_text();
    return 0;
  }
  try {
    return run(options);
  } catch (const SetupError& e) {
    std::cerr << "pyflm-detect: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {  // anything unforeseen: still a clear line, not an abort
    std::cerr << "pyflm-detect: unexpected error: " << e.what() << "\n";
    return 2;
  }
}
