#include "annotate.h"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "image_io.h"

namespace pyflm::cli {

namespace {

constexpr int kShift = 4;  // cv drawing coordinates in 1/16 px
constexpr double kOne = 1 << kShift;

cv::Point fixed(double x, double y) {
  return {static_cast<int>(std::lround(x * kOne)), static_cast<int>(std::lround(y * kOne))};
}

}  // namespace

cv::Mat draw_faces(const cv::Mat& image, const std::vector<FaceDrawing>& faces) {
  cv::Mat out = image.clone();
  const int thickness = std::max(1, static_cast<int>(std::lround(std::max(image.cols, image.rows) / 400.0)));
  for (const FaceDrawing& f : faces) {
    cv::rectangle(out, fixed(f.box[0], f.box[1]), fixed(f.box[2], f.box[3]), cv::Scalar(0, 255, 0), thickness,
                  cv::LINE_AA, kShift);
    const double radius = std::max(1.0, (f.box[2] - f.box[0]) / 80.0);
    for (const cv::Point2d& p : f.landmarks) {
      cv::circle(out, fixed(p.x, p.y), static_cast<int>(std::lround(radius * kOne)), cv::Scalar(0, 0, 255),
                 cv::FILLED, cv::LINE_AA, kShift);
    }
  }
  return out;
}

std::string annotated_name(const std::string& path, int frame) {
  const std::filesystem::path p(path);
  if (frame >= 0) {
    char suffix[32];
    std::snprintf(suffix, sizeof suffix, "_f%06d.png", frame);
    return p.stem().string() + suffix;
  }
  const std::string name = p.filename().string();
  return has_image_extension(name) ? name : name + ".png";
}

}  // namespace pyflm::cli
