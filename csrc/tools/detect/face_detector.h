// OpenCV's Haar cascade face detector with the parameters of
// pyflm.face_detection.HaarFaceDetector (its defaults), so the C++ tool and
// the Python API find the same boxes.
#pragma once

#include <opencv2/objdetect.hpp>

#include <string>
#include <vector>

#include "crop.h"

namespace pyflm::cli {

struct Detection {
  Box box;       // pyflm convention: rect (x, y, w, h) -> (x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5)
  double score;  // logistic of the cascade's last-stage weight; only for ranking
};

// The box type (crop rule name) of this detector's boxes, as pyflm.face_detection names it.
inline constexpr const char* kDetectorBoxType = "haar";

// pyflm.face_detection.DEFAULT_FALLBACK_NEIGHBOURS (-1 for None).
inline constexpr int kDefaultFallbackNeighbours = 3;

// Debian's opencv-data location of the default frontal-face cascade.
inline constexpr const char* kDefaultCascade = "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml";

class HaarDetector {
 public:
  // Throws SetupError naming the file when it is missing or not a cascade.
  // max_side: images with a longer side above it are downscaled (INTER_AREA)
  // before detection and the boxes mapped back, as HaarFaceDetector(max_side)
  // does (0: never).
  // fallback_neighbours: when nothing has 5 neighbours, look again with this
  // many (HaarFaceDetector's fallback_min_neighbors; -1: never).
  explicit HaarDetector(const std::string& cascade_path, int max_side = 640,
                        int fallback_neighbours = kDefaultFallbackNeighbours);

  // Faces of a uint8 BGR image, highest score first: detectMultiScale with
  // reject levels on the grey, histogram-equalised image, scale factor 1.1,
  // 5 neighbours (then the fallback's if none), no minimum or maximum size.
  std::vector<Detection> detect(const cv::Mat& bgr);

 private:
  cv::CascadeClassifier cascade_;
  int max_side_;
  int fallback_neighbours_;
};

}  // namespace pyflm::cli
