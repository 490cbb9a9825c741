// Annotated copies of the input: each face's box and landmarks drawn on it.
#pragma once

#include <opencv2/core.hpp>

#include <string>
#include <vector>

#include "crop.h"

namespace pyflm::cli {

struct FaceDrawing {
  Box box;
  std::vector<cv::Point2d> landmarks;
};

// A copy of `image` with boxes (green) and landmarks (red dots), drawn with
// sub-pixel precision in the pyflm convention (pixel centres at integers).
cv::Mat draw_faces(const cv::Mat& image, const std::vector<FaceDrawing>& faces);

// File name for the annotated copy of `path` (frame >= 0: a video frame):
// the input's name (".png" appended if its extension is no image one),
// "<stem>_f<frame, 6 digits>.png" for video frames. (The pipeline appends
// _2, _3, ... to names already written in this run.)
std::string annotated_name(const std::string& path, int frame);

}  // namespace pyflm::cli
