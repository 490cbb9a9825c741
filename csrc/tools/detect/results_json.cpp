#include "results_json.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "errors.h"
#include "image_io.h"

namespace pyflm::cli {

BoxesMap load_boxes(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw SetupError("boxes file not found: " + path + " (--boxes)");
  std::ifstream in(path, std::ios::binary);
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw SetupError("cannot read boxes file " + path + " (not JSON?): " + e.what());
  }
  if (!doc.is_object()) throw SetupError("boxes file " + path + ": expected {\"<image>\": [[x0, y0, x1, y1], ...]}");
  BoxesMap out;
  for (const auto& [key, list] : doc.items()) {
    const std::string where = "boxes file " + path + ", entry \"" + key + "\"";
    if (!list.is_array()) throw SetupError(where + ": expected a list of boxes [[x0, y0, x1, y1], ...]");
    // one box [x0, y0, x1, y1] or a list of them
    const bool single = !list.empty() && !list[0].is_array();
    const nlohmann::json many = single ? nlohmann::json::array({list}) : list;
    std::vector<Box> boxes;
    for (const auto& b : many) {
      if (!b.is_array() || b.size() != 4) throw SetupError(where + ": each box must be [x0, y0, x1, y1]");
      Box box{};
      for (size_t i = 0; i < 4; ++i) {
        if (!b[i].is_number() || !std::isfinite(b[i].get<double>())) throw SetupError(where + ": box values must be finite numbers");
        box[i] = b[i].get<double>();
      }
      if (!(box[2] > box[0] && box[3] > box[1])) throw SetupError(where + ": box " + b.dump() + " needs x1 > x0 and y1 > y0");
      boxes.push_back(box);
    }
    out.emplace(key, std::move(boxes));
  }
  return out;
}

const std::vector<Box>* find_boxes(const BoxesMap& boxes, const std::string& path, const std::string& suffix) {
  if (boxes.empty()) return nullptr;
  std::error_code ec;
  const std::filesystem::path p(path);
  const std::filesystem::path resolved = std::filesystem::weakly_canonical(p, ec);
  for (const std::string& key : {path + suffix, (ec ? path : resolved.string()) + suffix,
                                 p.filename().string() + suffix}) {
    if (auto it = boxes.find(key); it != boxes.end()) return &it->second;
  }
  return nullptr;
}

void write_json(const std::string& path, const nlohmann::ordered_json& doc) {
  const std::string text = doc.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
  if (path.empty()) {
    std::cout << text << std::flush;
    if (!std::cout) throw std::runtime_error("cannot write the results to standard output");
    return;
  }
  write_file_atomic(path, text);
}

}  // namespace pyflm::cli
