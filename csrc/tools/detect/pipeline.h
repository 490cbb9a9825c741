// The per-image work of pyflm-detect: decode, find faces (given boxes or the
// Haar detector), crop, batch the crops across images for the model, map the
// landmarks back, and collect one JSON record per image or video frame.
#pragma once

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include <deque>
#include <set>
#include <string>
#include <vector>

#include "annotate.h"
#include "crop.h"
#include "face_detector.h"
#include "model.h"
#include "results_json.h"

namespace pyflm::cli {

struct Timings {
  double decode = 0, detect = 0, landmarks = 0;  // milliseconds
};

class Pipeline {
 public:
  // given_rule crops the --boxes, detector_rule the detector's boxes; detector may be
  // null when every input has given boxes; out_dir empty: no annotated images.
  // given_rounds / detector_rounds: refinement rounds for faces of each source (after
  // a prediction the face is cropped again from its landmarks by the model's
  // landmark rule and predicted again, as pyflm.FaceLandmarker's refine).
  Pipeline(LandmarkModel& model, const BoxRule& given_rule, const BoxRule& detector_rule, HaarDetector* detector,
           const BoxesMap& boxes, int batch, std::string out_dir, int given_rounds = 0, int detector_rounds = 0);

  void add_image(const std::string& path);
  void add_video(const std::string& path);
  // A record for an input that failed before decoding (e.g. an unreadable folder).
  void add_failure(const std::string& path, const std::string& error);
  // Runs the last partial batch and completes every record.
  void finish();

  const nlohmann::ordered_json& records() const { return records_; }
  const Timings& totals() const { return totals_; }
  int failures() const { return failures_; }

 private:
  struct Entry {
    std::string path;
    int frame = -1;  // >= 0: a video frame
    double time_s = 0;
    cv::Mat image;   // kept until done, for the annotated copy
    std::string error;
    Timings ms;
    nlohmann::ordered_json faces = nlohmann::ordered_json::array();
    std::vector<FaceDrawing> drawings;
    int pending = 0;      // faces queued but not yet through the model
    bool queued = false;  // all its faces are queued
  };
  struct PendingFace {
    Entry* entry;  // std::deque keeps element addresses on push_back / pop_front
    Box box;
    double detection_score;
    Affine to_image;  // crop px -> image px
    cv::Mat crop;
    int rounds_left;  // refinement rounds still to run after this crop's prediction
  };

  Entry& new_entry(const std::string& path, int frame, double time_s);
  void find_and_queue_faces(Entry& e, const std::string& suffix);
  void run_batch(size_t count);
  void complete_ready();
  void complete(Entry& e);
  std::string unique_output_name(const std::string& name);

  LandmarkModel& model_;
  BoxRule given_rule_, detector_rule_;
  LandmarkRule landmark_rule_;
  int given_rounds_, detector_rounds_;
  HaarDetector* detector_;
  const BoxesMap& boxes_;
  size_t batch_;
  std::string out_dir_;
  std::deque<Entry> entries_;
  std::deque<PendingFace> queue_;
  std::set<std::string> used_names_;  // annotated files written so far: never overwrite one
  nlohmann::ordered_json records_ = nlohmann::ordered_json::array();
  Timings totals_;
  int failures_ = 0;
};

}  // namespace pyflm::cli
