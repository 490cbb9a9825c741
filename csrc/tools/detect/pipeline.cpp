#include "pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <optional>

#include "errors.h"
#include "image_io.h"

namespace pyflm::cli {

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// JSON numbers rounded as pyflm's Face.to_dict writes them (coordinates 1e-3 px,
// scores 1e-4, timings 1e-2 ms): far below the model's accuracy, and short.
double round_to(double v, int decimals) {
  const double scale = std::pow(10.0, decimals);
  return std::round(v * scale) / scale;
}

}  // namespace

Pipeline::Pipeline(LandmarkModel& model, const BoxRule& given_rule, const BoxRule& detector_rule,
                   HaarDetector* detector, const BoxesMap& boxes, int batch, std::string out_dir, int given_rounds,
                   int detector_rounds)
    : model_(model), given_rule_(given_rule), detector_rule_(detector_rule), landmark_rule_(model.landmark_rule()),
      given_rounds_(given_rounds), detector_rounds_(detector_rounds), detector_(detector), boxes_(boxes),
      batch_(static_cast<size_t>(batch)), out_dir_(std::move(out_dir)) {}

Pipeline::Entry& Pipeline::new_entry(const std::string& path, int frame, double time_s) {
  Entry& e = entries_.emplace_back();
  e.path = path;
  e.frame = frame;
  e.time_s = time_s;
  return e;
}

void Pipeline::add_failure(const std::string& path, const std::string& error) {
  Entry& e = new_entry(path, -1, 0);
  e.error = error;
  e.queued = true;
  complete_ready();
}

void Pipeline::add_image(const std::string& path) {
  Entry& e = new_entry(path, -1, 0);
  const auto t0 = Clock::now();
  try {
    e.image = read_image(path);
  } catch (const InputError& err) {
    e.error = err.what();
  }
  e.ms.decode = ms_since(t0);
  if (e.error.empty()) find_and_queue_faces(e, "");
  e.queued = true;
  complete_ready();
}

void Pipeline::add_video(const std::string& path) {
  std::optional<VideoFrames> video;
  try {
    video.emplace(path);
  } catch (const InputError& err) {
    add_failure(path, err.what());
    return;
  }
  while (true) {
    cv::Mat frame;
    int index = 0;
    double time_s = 0;
    const auto t0 = Clock::now();
    bool more = false;
    std::string error;
    try {
      more = video->next(frame, index, time_s);
    } catch (const InputError& err) {
      error = err.what();
    }
    if (!error.empty()) {  // a frame OpenCV decoded but we cannot convert: report and stop
      add_failure(path, error);
      return;
    }
    if (!more) return;
    Entry& e = new_entry(path, index, time_s);
    e.ms.decode = ms_since(t0);
    e.image = std::move(frame);
    std::string suffix = "#";  // ("#" + to_string(...) trips GCC 12's false -Wrestrict)
    suffix += std::to_string(index);
    find_and_queue_faces(e, suffix);
    e.queued = true;
    complete_ready();
  }
}

void Pipeline::find_and_queue_faces(Entry& e, const std::string& suffix) {
  std::vector<Detection> faces;
  const std::vector<Box>* given = find_boxes(boxes_, e.path, suffix);
  if (given == nullptr && e.frame == 0) given = find_boxes(boxes_, e.path, "");  // a video's key: its first frame
  const BoxRule& rule = given != nullptr ? given_rule_ : detector_rule_;
  const int rounds = given != nullptr ? given_rounds_ : detector_rounds_;
  if (given != nullptr) {
    for (const Box& b : *given) faces.push_back({b, 1.0});
  } else {
    const auto t0 = Clock::now();
    faces = detector_->detect(e.image);
    e.ms.detect = ms_since(t0);
  }
  const int s = model_.input_size();
  for (const Detection& d : faces) {
    const auto t0 = Clock::now();
    const Affine to_crop = crop_matrix(box_to_square(rule, d.box), s);
    queue_.push_back({&e, d.box, d.score, invert_affine(to_crop), warp_crop(e.image, to_crop, s), rounds});
    ++e.pending;
    e.ms.landmarks += ms_since(t0);
  }
  while (queue_.size() >= batch_) run_batch(batch_);
}

void Pipeline::run_batch(size_t count) {
  std::vector<cv::Mat> crops;
  crops.reserve(count);
  for (size_t i = 0; i < count; ++i) crops.push_back(queue_[i].crop);
  const int k = model_.num_landmarks();
  std::vector<float> coords, scores;
  std::string error;
  const auto t0 = Clock::now();
  try {
    model_.predict(crops, coords, scores);
  } catch (const std::exception& err) {
    error = err.what();
  }
  const double share = ms_since(t0) / static_cast<double>(count);
  const int s = model_.input_size();
  for (size_t i = 0; i < count; ++i) {
    PendingFace& f = queue_.front();
    Entry& e = *f.entry;
    e.ms.landmarks += share;
    --e.pending;
    if (!error.empty()) {
      if (e.error.empty()) e.error = error;
    } else {
      std::vector<cv::Point2d> image_points;
      image_points.reserve(static_cast<size_t>(k));
      for (int j = 0; j < k; ++j) {
        const size_t at = i * static_cast<size_t>(k) + static_cast<size_t>(j);
        image_points.push_back(apply_affine(f.to_image, {coords[2 * at], coords[2 * at + 1]}));
      }
      if (f.rounds_left > 0) {  // refine: crop again from these landmarks, back into the queue
        const auto t1 = Clock::now();
        PendingFace again = f;  // a face whose points are not finite or all one point keeps its crop, as in Python
        --again.rounds_left;
        Square square{};
        if (square_from_landmarks(landmark_rule_, image_points, square)) {
          const Affine to_crop = crop_matrix(square, s);
          again.to_image = invert_affine(to_crop);
          again.crop = warp_crop(e.image, to_crop, s);
        }
        queue_.push_back(std::move(again));
        ++e.pending;
        e.ms.landmarks += ms_since(t1);
        queue_.pop_front();
        continue;
      }
      nlohmann::ordered_json points = nlohmann::ordered_json::array(), point_scores = nlohmann::ordered_json::array();
      FaceDrawing drawing{f.box, {}};
      for (int j = 0; j < k; ++j) {
        const size_t at = i * static_cast<size_t>(k) + static_cast<size_t>(j);
        const cv::Point2d& p = image_points[static_cast<size_t>(j)];
        points.push_back({round_to(p.x, 3), round_to(p.y, 3)});
        point_scores.push_back(round_to(scores[at], 4));
        drawing.landmarks.push_back(p);
      }
      e.faces.push_back({{"box", {round_to(f.box[0], 3), round_to(f.box[1], 3), round_to(f.box[2], 3),
                                  round_to(f.box[3], 3)}},
                         {"landmarks", std::move(points)},
                         {"scores", std::move(point_scores)},
                         {"detection_score", f.detection_score}});
      e.drawings.push_back(std::move(drawing));
    }
    queue_.pop_front();
  }
}

void Pipeline::complete_ready() {
  while (!entries_.empty() && entries_.front().queued && entries_.front().pending == 0) {
    complete(entries_.front());
    entries_.pop_front();
  }
}

void Pipeline::complete(Entry& e) {
  if (e.error.empty() && !out_dir_.empty()) {
    const std::string name = unique_output_name(annotated_name(e.path, e.frame));
    const std::string out = (std::filesystem::path(out_dir_) / name).string();
    try {
      write_image_atomic(out, draw_faces(e.image, e.drawings));
    } catch (const std::exception& err) {
      e.error = "cannot write the annotated image: " + std::string(err.what());
    }
  }
  nlohmann::ordered_json r;
  r["path"] = e.path;
  if (e.frame >= 0) {
    r["frame"] = e.frame;
    r["t_s"] = round_to(e.time_s, 6);
  }
  r["width"] = e.image.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(e.image.cols);
  r["height"] = e.image.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(e.image.rows);
  r["faces"] = e.error.empty() ? std::move(e.faces) : nlohmann::ordered_json::array();
  r["timings_ms"] = {{"decode", round_to(e.ms.decode, 2)}, {"detect", round_to(e.ms.detect, 2)},
                     {"landmarks", round_to(e.ms.landmarks, 2)}};
  if (!e.error.empty()) {
    r["error"] = e.error;
    ++failures_;
    const bool names_path = e.error.find(e.path) != std::string::npos;
    std::cerr << "pyflm-detect: " << (names_path ? "" : e.path + ": ") << e.error
              << (e.frame >= 0 ? " (frame " + std::to_string(e.frame) + ")" : "") << "\n";
  }
  totals_.decode += e.ms.decode;
  totals_.detect += e.ms.detect;
  totals_.landmarks += e.ms.landmarks;
  records_.push_back(std::move(r));
}

std::string Pipeline::unique_output_name(const std::string& name) {
  // a.jpg from two folders: a.jpg, a_2.jpg, ...
  const std::filesystem::path p(name);
  std::string candidate = name;
  for (int n = 2; used_names_.count(candidate) != 0; ++n) {
    candidate = p.stem().string() + "_" + std::to_string(n) + p.extension().string();
  }
  used_names_.insert(candidate);
  return candidate;
}

void Pipeline::finish() {
  while (!queue_.empty()) run_batch(std::min(queue_.size(), batch_));  // refinement rounds queue faces again
  complete_ready();
}

}  // namespace pyflm::cli
