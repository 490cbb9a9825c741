#include "model.h"

#include <dlfcn.h>
#include <unistd.h>

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <nlohmann/json.hpp>
#include <opencv2/core/utility.hpp>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <filesystem>

#include "errors.h"

namespace fs = std::filesystem;

namespace pyflm::cli {

namespace {

std::string executable_folder() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : exe.parent_path().string();
}

// c10::Error::what() carries a C++ backtrace; users need the first part only.
std::string message_of(const std::exception& e) {
  if (const auto* c10e = dynamic_cast<const c10::Error*>(&e)) return c10e->what_without_backtrace();
  return e.what();
}

}  // namespace

std::string find_ops_library(const std::string& option) {
  std::error_code ec;
  if (!option.empty()) {
    if (!fs::is_regular_file(option, ec)) throw SetupError("op library not found: " + option + " (--ops)");
    return option;
  }
  if (const char* env = std::getenv("PYFLM_OPS_LIBRARY"); env != nullptr && *env != '\0') {
    if (!fs::is_regular_file(env, ec)) throw SetupError(std::string("op library not found: ") + env + " ($PYFLM_OPS_LIBRARY)");
    return env;
  }
  const std::string folder = executable_folder();
  if (!folder.empty()) {
    const fs::path beside = fs::path(folder) / "libpyflm_ops.so";
    if (fs::is_regular_file(beside, ec)) return beside.string();
  }
  throw SetupError(
      "cannot find pyflm's op library libpyflm_ops.so: pass --ops PATH or set PYFLM_OPS_LIBRARY "
      "(python -c \"import pyflm; print(pyflm.library_path())\" prints it)");
}

void load_ops_library(const std::string& path) {
  if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    const char* why = dlerror();
    throw SetupError("cannot load op library " + path + ": " + (why ? why : "unknown error"));
  }
}

void set_threads(int threads) {
  if (threads <= 0) return;
  at::set_num_interop_threads(1);
  at::set_num_threads(threads);
  cv::setNumThreads(threads);
}

struct LandmarkModel::Impl {
  torch::jit::Module module;
  torch::Device device{torch::kCPU};
  nlohmann::json meta;
  int input_size = 0;
  int num_landmarks = 0;
  bool flip_test = false;
  torch::Tensor mirror;  // int64 [K]: point i of a mirrored crop is point mirror[i] of the crop
  torch::Tensor flip_shift;  // float [K, 2], or undefined: see read_flip_shift
};

namespace {

// meta["mirror"] as an int64 tensor; SetupError unless it is an involutive permutation of k points.
torch::Tensor read_mirror(const nlohmann::json& meta, int k, const std::string& path) {
  if (!meta.contains("mirror")) {
    throw SetupError(path + ": --flip-test needs the landmarks' mirror permutation, and this model's pyflm.json has "
                     "none (re-export it with this pyflm: pyflm export)");
  }
  std::vector<int64_t> m;
  try {
    m = meta.at("mirror").get<std::vector<int64_t>>();
  } catch (const std::exception& e) {
    throw SetupError(path + ": pyflm.json 'mirror' is not a list of integers: " + std::string(e.what()));
  }
  bool ok = static_cast<int>(m.size()) == k;
  for (size_t i = 0; ok && i < m.size(); ++i) ok = m[i] >= 0 && m[i] < k && m[static_cast<size_t>(m[i])] == static_cast<int64_t>(i);
  if (!ok) throw SetupError(path + ": pyflm.json 'mirror' is not an involutive permutation of " + std::to_string(k) + " points");
  return torch::tensor(m, torch::kInt64);
}

// The flip test's correction for a model with a calibration offset (pyflm.deploy.decode_offset,
// meta decode.offset: [K][2] crop px that the graph adds to every point): the mirrored pass comes back
// carrying (-dx, dy) of point mirror[i] instead of point i's (dx, dy); adding this gives it the latter
// (pyflm.deploy.flip_shift). Undefined when the model has no offset.
torch::Tensor read_flip_shift(const nlohmann::json& meta, const torch::Tensor& mirror, int k, const std::string& path) {
  if (!meta.contains("decode") || !meta.at("decode").contains("offset") || meta.at("decode").at("offset").is_null()) {
    return {};
  }
  std::vector<std::vector<float>> rows;
  try {
    rows = meta.at("decode").at("offset").get<std::vector<std::vector<float>>>();
  } catch (const std::exception& e) {
    throw SetupError(path + ": pyflm.json decode.offset is not a list of (dx, dy) pairs: " + std::string(e.what()));
  }
  bool ok = static_cast<int>(rows.size()) == k;
  for (size_t i = 0; ok && i < rows.size(); ++i) ok = rows[i].size() == 2 && std::isfinite(rows[i][0]) && std::isfinite(rows[i][1]);
  if (!ok) throw SetupError(path + ": pyflm.json decode.offset must be " + std::to_string(k) + " finite (dx, dy) pairs");
  torch::Tensor off = torch::empty({k, 2}, torch::kFloat32);
  for (int i = 0; i < k; ++i) {
    off[i][0] = rows[static_cast<size_t>(i)][0];
    off[i][1] = rows[static_cast<size_t>(i)][1];
  }
  torch::Tensor back = off.index_select(0, mirror.to(torch::kCPU));
  return torch::stack({off.select(1, 0) + back.select(1, 0), off.select(1, 1) - back.select(1, 1)}, 1);
}

}  // namespace

LandmarkModel::LandmarkModel(const std::string& path, const std::string& device_name, bool warm_up, bool flip_test)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  try {
    m.device = torch::Device(device_name);
  } catch (const std::exception& e) {
    throw SetupError("bad --device '" + device_name + "': " + message_of(e));
  }
  if (m.device.is_cuda()) {
    if (!torch::cuda::is_available()) {
      throw SetupError("--device " + device_name + ": CUDA is not available (this libtorch has no CUDA, or no GPU is visible)");
    }
    const int count = static_cast<int>(torch::cuda::device_count());
    if (m.device.has_index() && m.device.index() >= count) {
      throw SetupError("--device " + device_name + ": only " + std::to_string(count) + " CUDA device(s) visible");
    }
    if (!m.device.has_index()) m.device = torch::Device(torch::kCUDA, 0);
  }

  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw SetupError("model not found: " + path);
  torch::jit::ExtraFilesMap extra{{"pyflm.json", ""}};
  try {
    m.module = torch::jit::load(path, m.device, extra);
  } catch (const std::exception& e) {  // c10::Error derives from std::exception
    throw SetupError("cannot load TorchScript model " + path + ": " + message_of(e));
  }
  m.module.eval();
  try {  // fold batch norm into the convolutions and constant weights, as FaceLandmarker(optimize=True) does
    m.module = torch::jit::freeze(m.module);
  } catch (const std::exception& e) {
    std::cerr << "pyflm-detect: warning: could not freeze the model (" << message_of(e) << "); running it as saved\n";
  }
  const std::string& meta_text = extra["pyflm.json"];
  if (meta_text.empty()) {
    throw SetupError(path + " has no pyflm metadata (pyflm.json); export it with pyflm.deploy.export_torchscript");
  }
  try {
    m.meta = nlohmann::json::parse(meta_text);
    m.input_size = m.meta.at("input_size").get<int>();
    m.num_landmarks = m.meta.at("num_landmarks").get<int>();
  } catch (const std::exception& e) {
    throw SetupError(path + ": unreadable pyflm.json metadata: " + std::string(e.what()));
  }
  if (m.input_size <= 0 || m.num_landmarks <= 0) throw SetupError(path + ": pyflm.json has a bad input_size or num_landmarks");
  if (flip_test) {
    torch::Tensor mirror = read_mirror(m.meta, m.num_landmarks, path);
    torch::Tensor shift = read_flip_shift(m.meta, mirror, m.num_landmarks, path);
    m.mirror = mirror.to(m.device);
    if (shift.defined()) m.flip_shift = shift.to(m.device);
    m.flip_test = true;
  }

  if (warm_up) {
    const std::vector<cv::Mat> zeros{cv::Mat::zeros(m.input_size, m.input_size, CV_8UC3)};
    std::vector<float> c, sc;
    try {
      for (int i = 0; i < 3; ++i) predict(zeros, c, sc);  // the profiling executor optimises on early calls
    } catch (const std::exception& e) {
      throw SetupError("model " + path + " fails on a test batch: " + message_of(e));
    }
  }
}

LandmarkModel::~LandmarkModel() = default;

int LandmarkModel::input_size() const { return impl_->input_size; }
int LandmarkModel::num_landmarks() const { return impl_->num_landmarks; }
std::string LandmarkModel::device() const { return impl_->device.str(); }
bool LandmarkModel::flip_test() const { return impl_->flip_test; }

namespace {

bool crop_has(const nlohmann::json& meta, const char* key) {
  return meta.contains("crop") && meta["crop"].is_object() && meta["crop"].contains(key);
}

// crop[key] over `rule` (fields it lacks keep rule's values); SetupError for a bad one
LandmarkRule read_landmark_rule(const nlohmann::json& crop, const char* key, LandmarkRule rule) {
  try {
    const nlohmann::json& r = crop.at(key);
    rule.scale = r.value("scale", rule.scale);
    rule.center = r.value("center", rule.center);
  } catch (const std::exception& e) {
    throw SetupError(std::string("bad crop.") + key + " rule in the model's metadata: " + e.what());
  }
  if (!(rule.scale > 0) || (rule.center != "centroid" && rule.center != "box")) {
    throw SetupError(std::string("bad crop.") + key +
                     " rule in the model's metadata: scale must be > 0 and center 'centroid' or 'box'");
  }
  return rule;
}

// meta.crop.landmarks, the square the model was trained on (default: 1.3 around the centroid)
LandmarkRule training_rule(const nlohmann::json& meta) {
  return crop_has(meta, "landmarks") ? read_landmark_rule(meta["crop"], "landmarks", LandmarkRule{}) : LandmarkRule{};
}

const nlohmann::json* crop_boxes(const nlohmann::json& meta) {
  return crop_has(meta, "boxes") && meta["crop"]["boxes"].is_object() ? &meta["crop"]["boxes"] : nullptr;
}

}  // namespace

bool LandmarkModel::has_box_rule(const std::string& box_type) const {
  const nlohmann::json* boxes = crop_boxes(impl_->meta);
  return box_type == "tight" || (boxes != nullptr && boxes->contains(box_type));
}

BoxRule LandmarkModel::box_rule(const std::string& box_type) const {
  const nlohmann::json& meta = impl_->meta;
  const nlohmann::json* boxes = crop_boxes(meta);
  if (box_type == "tight" && (boxes == nullptr || !boxes->contains("tight"))) {
    BoxRule rule;  // the training square: scale x the larger side of the landmarks' box
    rule.scale = training_rule(meta).scale;
    return rule;
  }
  if (boxes == nullptr || !boxes->contains(box_type)) {
    std::string have = "tight";
    if (boxes != nullptr) {
      for (const auto& item : boxes->items()) {
        if (item.key() != "tight") have += ", " + item.key();
      }
    }
    throw SetupError("the model has no crop rule for box type '" + box_type + "' (it has: " + have +
                     "); pass --box-type");
  }
  BoxRule rule;
  try {
    const nlohmann::json& r = boxes->at(box_type);
    rule.dx = r.value("dx", 0.0);
    rule.dy = r.value("dy", 0.0);
    rule.scale = r.value("scale", 1.0);
    rule.size = r.value("size", std::string("max"));
  } catch (const std::exception& e) {
    throw SetupError("bad crop rule for box type '" + box_type + "' in the model's metadata: " + e.what());
  }
  if (!(rule.scale > 0) || (rule.size != "max" && rule.size != "geometric")) {
    throw SetupError("bad crop rule for box type '" + box_type + "': scale must be > 0 and size 'max' or 'geometric'");
  }
  return rule;
}

LandmarkRule LandmarkModel::landmark_rule() const {
  // the square around predicted landmarks (refinement rounds): meta.crop.refine when the model
  // has one fitted (training.fit_inference_crops), else the training square meta.crop.landmarks
  const nlohmann::json& meta = impl_->meta;
  const LandmarkRule train = training_rule(meta);
  return crop_has(meta, "refine") ? read_landmark_rule(meta["crop"], "refine", train) : train;
}

void LandmarkModel::predict(const std::vector<cv::Mat>& crops, std::vector<float>& coords, std::vector<float>& scores) {
  Impl& m = *impl_;
  const int64_t n = static_cast<int64_t>(crops.size());
  const int s = m.input_size, k = m.num_landmarks;
  coords.clear();
  scores.clear();
  if (n == 0) return;
  c10::InferenceMode guard;
  torch::Tensor batch = torch::empty({n, s, s, 3}, torch::kUInt8);
  const size_t crop_bytes = static_cast<size_t>(s) * s * 3;
  for (int64_t i = 0; i < n; ++i) {
    const cv::Mat& c = crops[static_cast<size_t>(i)];
    if (c.type() != CV_8UC3 || c.rows != s || c.cols != s || !c.isContinuous()) {
      throw std::runtime_error("internal: crop " + std::to_string(i) + " is not a continuous uint8 BGR square of the model's size");
    }
    std::memcpy(batch.data_ptr<uint8_t>() + i * crop_bytes, c.data, crop_bytes);
  }
  torch::Tensor input = batch.to(m.device);
  if (m.flip_test) input = torch::cat({input, input.flip({2})});  // [2N, S, S, 3]: the crops, then their mirrors
  c10::IValue out;
  try {
    out = m.module.forward({input});
  } catch (const std::exception& e) {
    throw std::runtime_error("landmark model failed: " + message_of(e));
  }
  if (!out.isTuple() || out.toTupleRef().elements().size() != 2) {
    throw std::runtime_error("landmark model returned something other than (coords, scores)");
  }
  const auto& parts = out.toTupleRef().elements();
  torch::Tensor xy = parts[0].toTensor().to(torch::kFloat32);
  torch::Tensor sc = parts[1].toTensor().to(torch::kFloat32);
  if (m.flip_test && xy.dim() == 3 && xy.size(0) == 2 * n && sc.dim() == 2 && sc.size(0) == 2 * n) {
    torch::Tensor back = xy.slice(0, n).index_select(1, m.mirror);  // the mirrors' points, re-ordered
    back.select(2, 0).mul_(-1).add_(s - 1);                           // x -> S - 1 - x
    if (m.flip_shift.defined()) back.add_(m.flip_shift);                  // its calibration offset, unmirrored
    xy = (xy.slice(0, 0, n) + back) * 0.5;
    sc = (sc.slice(0, 0, n) + sc.slice(0, n).index_select(1, m.mirror)) * 0.5;
  }
  xy = xy.to(torch::kCPU).contiguous();
  sc = sc.to(torch::kCPU).contiguous();
  if (xy.sizes() != torch::IntArrayRef({n, k, 2}) || sc.sizes() != torch::IntArrayRef({n, k})) {
    throw std::runtime_error("landmark model returned coords " + c10::str(xy.sizes()) + " and scores " +
                             c10::str(sc.sizes()) + "; expected [" + std::to_string(n) + ", " + std::to_string(k) + ", 2] and [" +
                             std::to_string(n) + ", " + std::to_string(k) + "]");
  }
  coords.assign(xy.data_ptr<float>(), xy.data_ptr<float>() + xy.numel());
  scores.assign(sc.data_ptr<float>(), sc.data_ptr<float>() + sc.numel());
}

}  // namespace pyflm::cli
