// The JSON files of pyflm-detect: the --boxes input and the results output.
//
// Output (version 1):
//   {"version": 1, "model": PATH, "device": "cpu",
//    "images": [{"path": P, ["frame": i, "t_s": t,] "width": W, "height": H (null on failure),
//                "faces": [{"box": [x0, y0, x1, y1], "landmarks": [[x, y] x K],
//                           "scores": [K], "detection_score": f}],
//                "timings_ms": {"decode", "detect", "landmarks"},   (landmarks: crop + share of the batch)
//                ["error": "..." (only on failure)]}],
//    "timings_ms": {"decode", "detect", "landmarks", "model_load", "total"}}
// Coordinates rounded to 1e-3 px, scores to 1e-4, timings to 1e-2 ms (as
// pyflm's Face.to_dict and `pyflm detect`); "box_type" names the rule used for
// given boxes.
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

#include "crop.h"

namespace pyflm::cli {

using BoxesMap = std::map<std::string, std::vector<Box>>;

// Read {"<path or name>": [[x0, y0, x1, y1], ...] or [x0, y0, x1, y1]}; throws SetupError naming
// the file and the bad entry (boxes need 4 finite numbers, x1 > x0, y1 > y0).
BoxesMap load_boxes(const std::string& path);

// The boxes given for an image: looked up by its path as listed, its resolved
// absolute path, then its file name; `suffix` ("#<frame>" for video frames, else empty) is appended
// to both. nullptr when none are given.
const std::vector<Box>* find_boxes(const BoxesMap& boxes, const std::string& path, const std::string& suffix);

// Serialise (invalid UTF-8 in paths replaced, not fatal) and write atomically;
// an empty path means standard output. Throws std::runtime_error.
void write_json(const std::string& path, const nlohmann::ordered_json& doc);

}  // namespace pyflm::cli
