// Reading images and video frames the way pyflm.io does, and writing files
// atomically (temp file in the same folder, then rename).
#pragma once

#include <opencv2/core.hpp>
#include <opencv2/videoio.hpp>

#include <string>
#include <vector>

namespace pyflm::cli {

// Extensions (any case) pyflm.io treats as images / videos.
bool has_image_extension(const std::string& path);
bool has_video_extension(const std::string& path);

// Image files of a folder (not recursive), sorted by path, hidden ones
// ("."-prefixed, e.g. our own temp files) skipped. Throws InputError.
std::vector<std::string> list_images(const std::string& folder);

// Any decoded OpenCV image -> a new uint8 BGR [H, W, 3] image, as
// pyflm.io.to_bgr_uint8: grey copied to 3 channels, alpha dropped,
// uint16 -> round(v / 257), float in [0, 1] -> round(v * 255).
// Throws InputError naming `what` for anything else.
cv::Mat to_bgr_uint8(const cv::Mat& decoded, const std::string& what);

// Read and decode an image file (IMREAD_ANYDEPTH | IMREAD_ANYCOLOR, EXIF
// orientation applied) to uint8 BGR. Throws InputError naming the path.
cv::Mat read_image(const std::string& path);

// Frames of a video file, in order, as uint8 BGR.
class VideoFrames {
 public:
  explicit VideoFrames(const std::string& path);  // throws InputError
  // The next frame; false at the end. `time_s`: the container's timestamp
  // when it increases, else index / fps (as pyflm.io.iter_video_frames).
  bool next(cv::Mat& frame, int& index, double& time_s);

 private:
  std::string path_;
  cv::VideoCapture capture_;
  double fps_ = 0.0;
  double last_time_ = -1e300;
  int index_ = 0;
};

// Write bytes / an encoded image to `path` atomically. Throws std::runtime_error.
void write_file_atomic(const std::string& path, const std::string& bytes);
void write_image_atomic(const std::string& path, const cv::Mat& image);

}  // namespace pyflm::cli
