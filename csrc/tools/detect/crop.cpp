#include "crop.h"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace pyflm::cli {

Square box_to_square(const BoxRule& rule, const Box& box) {
  const double w = box[2] - box[0], h = box[3] - box[1];
  if (!(w > 0 && h > 0)) throw std::invalid_argument("box must have x1 > x0 and y1 > y0");
  const double size = rule.size == "geometric" ? std::sqrt(w * h) : std::max(w, h);
  return {(box[0] + box[2]) / 2 + rule.dx * w, (box[1] + box[3]) / 2 + rule.dy * h, rule.scale * size};
}

bool square_from_landmarks(const LandmarkRule& rule, const std::vector<cv::Point2d>& points, Square& out) {
  if (points.empty()) return false;
  double x0 = points[0].x, x1 = x0, y0 = points[0].y, y1 = y0, sx = 0, sy = 0;
  for (const cv::Point2d& p : points) {
    if (!std::isfinite(p.x) || !std::isfinite(p.y)) return false;
    x0 = std::min(x0, p.x), x1 = std::max(x1, p.x), y0 = std::min(y0, p.y), y1 = std::max(y1, p.y);
    sx += p.x, sy += p.y;
  }
  const double extent = std::max(x1 - x0, y1 - y0);
  if (!(extent > 0)) return false;
  const double n = static_cast<double>(points.size());
  if (rule.center == "box") out = {(x0 + x1) / 2, (y0 + y1) / 2, rule.scale * extent};
  else out = {sx / n, sy / n, rule.scale * extent};
  return true;
}

Affine crop_matrix(const Square& s, int out_size) {
  // Same operation order as crops.crop_matrix (translate by -centre, scale the
  // rows by S / side, add (S - 1) / 2), so the matrices agree bit for bit.
  const double k = static_cast<double>(out_size) / s.side;
  const double half = (out_size - 1) / 2.0;
  return Affine(k, 0.0, -s.cx * k + half,
                0.0, k, -s.cy * k + half);
}

Affine invert_affine(const Affine& m) {
  const double det = m(0, 0) * m(1, 1) - m(0, 1) * m(1, 0);
  if (det == 0 || !std::isfinite(det)) throw std::invalid_argument("affine matrix is singular");
  const double a = m(1, 1) / det, b = -m(0, 1) / det, c = -m(1, 0) / det, d = m(0, 0) / det;
  return Affine(a, b, -(a * m(0, 2) + b * m(1, 2)),
                c, d, -(c * m(0, 2) + d * m(1, 2)));
}

cv::Point2d apply_affine(const Affine& m, const cv::Point2d& p) {
  return {p.x * m(0, 0) + p.y * m(0, 1) + m(0, 2), p.x * m(1, 0) + p.y * m(1, 1) + m(1, 2)};
}

cv::Mat warp_crop(const cv::Mat& image, const Affine& m, int out_size) {
  cv::Mat crop;
  cv::warpAffine(image, crop, cv::Mat(m), cv::Size(out_size, out_size), cv::INTER_LINEAR, cv::BORDER_CONSTANT,
                 cv::Scalar::all(0));
  return crop;
}

}  // namespace pyflm::cli
