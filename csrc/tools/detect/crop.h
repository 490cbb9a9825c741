// Face crops, exactly as pyflm/data/crops.py: a detector box becomes a square
// (BoxToSquare), the square a 2x3 image->crop matrix (crop_matrix), the image
// is warped with it (warp_image: bilinear, constant 0 border) and the model's
// crop coordinates map back with the exact inverse (invert_affine).
// Coordinates: 0-based (x, y), pixel centres at integers, on both sides.
#pragma once

#include <opencv2/core.hpp>

#include <array>
#include <string>
#include <vector>

namespace pyflm::cli {

using Box = std::array<double, 4>;  // x0, y0, x1, y1
using Affine = cv::Matx23d;         // [x', y'] = M [x, y, 1]

struct Square {
  double cx, cy, side;
};

// meta["crop"]["boxes"][box_type]: cx = (x0 + x1) / 2 + dx * w,
// cy = (y0 + y1) / 2 + dy * h, side = scale * (max(w, h) or sqrt(w * h)).
struct BoxRule {
  double dx = 0.0, dy = 0.0, scale = 1.0;
  std::string size = "max";  // "max" or "geometric"
};

// Throws std::invalid_argument for a box without x1 > x0 and y1 > y0.
Square box_to_square(const BoxRule& rule, const Box& box);

// meta["crop"]["refine"] (else ["landmarks"], the training crop): the square
// cut around a face's landmarks, as pyflm.data.crops.square_from_landmarks:
// side = scale x the larger side of their bounding box, centred at their mean
// ("centroid") or the box's centre ("box").
struct LandmarkRule {
  double scale = 1.3;
  std::string center = "centroid";
};

// The square of `rule` around `points`; false (and `out` untouched) when a point
// is not finite or the points have no extent, as pyflm's refinement keeps the crop then.
bool square_from_landmarks(const LandmarkRule& rule, const std::vector<cv::Point2d>& points, Square& out);

// Image px -> crop px for `square`, output out_size x out_size:
// x' = (S / side) (x - cx) + (S - 1) / 2 (same for y).
Affine crop_matrix(const Square& square, int out_size);

// The exact inverse, computed as pyflm.data.crops.invert_affine does.
Affine invert_affine(const Affine& m);

cv::Point2d apply_affine(const Affine& m, const cv::Point2d& p);

// out_size x out_size crop of `image` (uint8 BGR): output pixel p samples the
// image at M^-1 p, bilinear, constant 0 border (cv::warpAffine).
cv::Mat warp_crop(const cv::Mat& image, const Affine& m, int out_size);

}  // namespace pyflm::cli
