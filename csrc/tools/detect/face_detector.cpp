#include "face_detector.h"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "errors.h"

namespace pyflm::cli {

HaarDetector::HaarDetector(const std::string& path, int max_side, int fallback_neighbours)
    : max_side_(max_side), fallback_neighbours_(fallback_neighbours) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    throw SetupError("Haar cascade file not found: " + path +
                     " (install Debian's opencv-data, or pass --cascade with the file from opencv-python: "
                     "python -c \"import cv2; print(cv2.data.haarcascades)\")");
  }
  bool loaded = false;
  try {
    loaded = cascade_.load(path);
  } catch (const cv::Exception&) {
    loaded = false;
  }
  if (!loaded || cascade_.empty()) throw SetupError("cannot load Haar cascade (not a cascade XML?): " + path);
}

std::vector<Detection> HaarDetector::detect(const cv::Mat& bgr) {
  // Downscale as HaarFaceDetector does: the longer side to max_side, the other
  // rounded half to even (Python's round, std::nearbyint), then map back.
  double sx = 1.0, sy = 1.0;
  cv::Mat image = bgr;
  if (max_side_ > 0 && std::max(bgr.rows, bgr.cols) > max_side_) {
    const double s = static_cast<double>(max_side_) / std::max(bgr.rows, bgr.cols);
    const int nw = std::max(1, static_cast<int>(std::nearbyint(bgr.cols * s)));
    const int nh = std::max(1, static_cast<int>(std::nearbyint(bgr.rows * s)));
    cv::resize(bgr, image, cv::Size(nw, nh), 0, 0, cv::INTER_AREA);
    sx = static_cast<double>(nw) / bgr.cols;
    sy = static_cast<double>(nh) / bgr.rows;
  }
  cv::Mat grey, equalised;
  cv::cvtColor(image, grey, cv::COLOR_BGR2GRAY);
  cv::equalizeHist(grey, equalised);
  std::vector<cv::Rect> rects;
  std::vector<int> reject_levels;
  std::vector<double> weights;
  cascade_.detectMultiScale(equalised, rects, reject_levels, weights, 1.1, 5, 0, cv::Size(), cv::Size(),
                            /*outputRejectLevels=*/true);
  if (rects.empty() && fallback_neighbours_ >= 0) {
    cascade_.detectMultiScale(equalised, rects, reject_levels, weights, 1.1, fallback_neighbours_, 0, cv::Size(),
                              cv::Size(), /*outputRejectLevels=*/true);
  }
  std::vector<Detection> out;
  out.reserve(rects.size());
  for (size_t i = 0; i < rects.size(); ++i) {
    const cv::Rect& r = rects[i];
    const double w = i < weights.size() ? weights[i] : 0.0;
    const double score = weights.size() == rects.size() ? 0.5 * (1.0 + std::tanh(0.5 * w)) : 1.0;
    // edge e' (pixel-centre coordinates of the small image) -> (e' + 0.5) / s - 0.5
    out.push_back({{r.x / sx - 0.5, r.y / sy - 0.5, (r.x + r.width) / sx - 0.5, (r.y + r.height) / sy - 0.5},
                   score});
  }
  std::stable_sort(out.begin(), out.end(), [](const Detection& a, const Detection& b) { return a.score > b.score; });
  return out;
}

}  // namespace pyflm::cli
