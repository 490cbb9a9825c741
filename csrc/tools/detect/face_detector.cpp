#include "face_detector.h"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "errors.h"

namespace pyflm::cli {

HaarDetector::HaarDetector(const std::string& path) {
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
  cv::Mat grey, equalised;
  cv::cvtColor(bgr, grey, cv::COLOR_BGR2GRAY);
  cv::equalizeHist(grey, equalised);
  std::vector<cv::Rect> rects;
  std::vector<int> reject_levels;
  std::vector<double> weights;
  cascade_.detectMultiScale(equalised, rects, reject_levels, weights, 1.1, 5, 0, cv::Size(), cv::Size(),
                            /*outputRejectLevels=*/true);
  std::vector<Detection> out;
  out.reserve(rects.size());
  for (size_t i = 0; i < rects.size(); ++i) {
    const cv::Rect& r = rects[i];
    const double w = i < weights.size() ? weights[i] : 0.0;
    const double score = weights.size() == rects.size() ? 0.5 * (1.0 + std::tanh(0.5 * w)) : 1.0;
    out.push_back({{r.x - 0.5, r.y - 0.5, r.x + r.width - 0.5, r.y + r.height - 0.5}, score});
  }
  std::stable_sort(out.begin(), out.end(), [](const Detection& a, const Detection& b) { return a.score > b.score; });
  return out;
}

}  // namespace pyflm::cli
