#include "image_io.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <unistd.h>

#include "errors.h"

namespace fs = std::filesystem;

namespace pyflm::cli {

namespace {

std::string lower_extension(const std::string& path) {
  std::string ext = fs::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext;
}

template <size_t N>
bool one_of(const std::string& ext, const std::array<const char*, N>& list) {
  return std::any_of(list.begin(), list.end(), [&](const char* e) { return ext == e; });
}

// pyflm.io.IMAGE_EXTENSIONS / VIDEO_EXTENSIONS
constexpr std::array<const char*, 7> kImageExtensions{".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"};
constexpr std::array<const char*, 6> kVideoExtensions{".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"};

}  // namespace

bool has_image_extension(const std::string& path) { return one_of(lower_extension(path), kImageExtensions); }
bool has_video_extension(const std::string& path) { return one_of(lower_extension(path), kVideoExtensions); }

std::vector<std::string> list_images(const std::string& folder) {
  std::vector<std::string> out;
  std::error_code ec;
  fs::directory_iterator it(folder, ec);
  if (ec) throw InputError("cannot list folder " + folder + ": " + ec.message());
  for (const auto& entry : it) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name[0] == '.') continue;
    if (!has_image_extension(name)) continue;
    std::error_code ec2;
    if (!entry.is_regular_file(ec2)) continue;
    out.push_back(entry.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

cv::Mat to_bgr_uint8(const cv::Mat& decoded, const std::string& what) {
  if (decoded.empty()) throw InputError(what + ": empty image");
  const int channels = decoded.channels();
  if (channels != 1 && channels != 3 && channels != 4) {
    throw InputError(what + ": unsupported number of channels " + std::to_string(channels));
  }
  cv::Mat eight_bit;
  switch (decoded.depth()) {
    case CV_8U:
      eight_bit = decoded;
      break;
    case CV_16U: {
      // round(v / 257) in integers: (v + 128) / 257, exact for every uint16
      cv::Mat flat = decoded.reshape(1);
      eight_bit.create(flat.size(), CV_8U);
      for (int r = 0; r < flat.rows; ++r) {
        const uint16_t* src = flat.ptr<uint16_t>(r);
        uint8_t* dst = eight_bit.ptr<uint8_t>(r);
        for (int c = 0; c < flat.cols; ++c) dst[c] = static_cast<uint8_t>((src[c] + 128u) / 257u);
      }
      eight_bit = eight_bit.reshape(channels);
      break;
    }
    case CV_16F:
    case CV_32F:
    case CV_64F: {
      cv::Mat f64;
      decoded.convertTo(f64, CV_64F);
      if (!cv::checkRange(f64)) throw InputError(what + ": float image holds NaN or inf values");
      double lo = 0, hi = 0;
      cv::minMaxIdx(f64.reshape(1), &lo, &hi);
      if (lo < 0.0 || hi > 1.0) throw InputError(what + ": float images must lie in [0, 1]");
      f64.convertTo(eight_bit, CV_8U, 255.0);  // rounds half to even, like np.rint
      break;
    }
    default:
      throw InputError(what + ": unsupported pixel depth (use 8 or 16 bit, or float in [0, 1])");
  }
  cv::Mat bgr;
  if (channels == 1) cv::cvtColor(eight_bit, bgr, cv::COLOR_GRAY2BGR);
  else if (channels == 4) cv::cvtColor(eight_bit, bgr, cv::COLOR_BGRA2BGR);
  else bgr = eight_bit.clone();
  return bgr;
}

cv::Mat read_image(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw InputError("image not found: " + path);
  if (!fs::is_regular_file(path, ec)) throw InputError("not an image file (a directory or special file): " + path);
  std::ifstream in(path, std::ios::binary);
  std::vector<uchar> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in && !in.eof()) throw InputError("cannot read image file " + path);
  if (data.empty()) throw InputError("cannot decode image (empty file): " + path);
  cv::Mat decoded;
  try {
    decoded = cv::imdecode(data, cv::IMREAD_ANYDEPTH | cv::IMREAD_ANYCOLOR);
  } catch (const cv::Exception& e) {
    throw InputError("cannot decode image (corrupt or not an image): " + path + " (" + e.what() + ")");
  }
  if (decoded.empty()) throw InputError("cannot decode image (corrupt or not an image): " + path);
  return to_bgr_uint8(decoded, path);
}

VideoFrames::VideoFrames(const std::string& path) : path_(path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw InputError("video not found: " + path);
  if (!fs::is_regular_file(path, ec)) throw InputError("not a video file: " + path);
  if (!capture_.open(path) || !capture_.isOpened()) {
    throw InputError("cannot open video (unsupported codec or not a video): " + path);
  }
  fps_ = capture_.get(cv::CAP_PROP_FPS);
}

bool VideoFrames::next(cv::Mat& frame, int& index, double& time_s) {
  cv::Mat raw;
  if (!capture_.read(raw) || raw.empty()) return false;
  double t = capture_.get(cv::CAP_PROP_POS_MSEC) / 1000.0;
  if (!(std::isfinite(t) && t > last_time_ && (t > 0 || index_ == 0))) {
    t = fps_ > 0 ? index_ / fps_ : static_cast<double>(index_);
  }
  last_time_ = t;
  frame = to_bgr_uint8(raw, path_ + " frame " + std::to_string(index_));
  index = index_++;
  time_s = t;
  return true;
}

namespace {

// A hidden temp name in the target's folder, so rename() is atomic and folder
// listings (ours and pyflm.io's) skip it.
std::string temp_path_for(const std::string& path, const std::string& suffix) {
  fs::path p(path);
  std::string name = ".";  // appended piecewise: "." + string trips GCC 12's false -Wrestrict
  name += p.filename().string();
  name += '.';
  name += std::to_string(::getpid());
  name += suffix;
  return (p.parent_path() / name).string();
}

void rename_or_throw(const std::string& tmp, const std::string& path) {
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot write " + path + " (rename failed)");
  }
}

}  // namespace

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = temp_path_for(path, ".tmp");
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error("cannot write " + path + " (cannot create a file in its folder)");
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) {
      out.close();
      std::remove(tmp.c_str());
      throw std::runtime_error("cannot write " + path);
    }
  }
  rename_or_throw(tmp, path);
}

void write_image_atomic(const std::string& path, const cv::Mat& image) {
  std::vector<uchar> encoded;
  const std::string ext = fs::path(path).extension().string();
  bool ok = false;
  try {
    ok = cv::imencode(ext, image, encoded);
  } catch (const cv::Exception& e) {
    throw std::runtime_error("cannot encode " + path + ": " + e.what());
  }
  if (!ok) throw std::runtime_error("cannot encode " + path);
  write_file_atomic(path, std::string(encoded.begin(), encoded.end()));
}

}  // namespace pyflm::cli
