#include "options.h"

#include <charconv>
#include <string_view>

#include "errors.h"

namespace pyflm::cli {

const char* usage_text() {
  return
      "usage: pyflm-detect --model FILE.ts [--ops PATH/libpyflm_ops.so] [--device cpu|cuda]\n"
      "                    [--cascade haarcascade_frontalface_default.xml] [--max-side N] [--boxes boxes.json]\n"
      "                    [--box-type tight|haar|dlib-hog] [--batch N] [--flip-test] [--refine N|auto]\n"
      "                    [--threads N] [--json out.json] [--out-dir DIR] INPUT...\n"
      "\n"
      "Facial landmarks for every face in images, folders of images (sorted, not\n"
      "recursive) or video files, with a model exported by pyflm (pyflm.deploy.export_torchscript).\n"
      "\n"
      "  --model FILE.ts   exported TorchScript predictor with its pyflm.json metadata\n"
      "  --ops PATH        pyflm's op library (default: $PYFLM_OPS_LIBRARY, else libpyflm_ops.so\n"
      "                    next to this binary)\n"
      "  --device D        cpu (default), cuda or cuda:N\n"
      "  --cascade XML     OpenCV Haar cascade for face detection (default:\n"
      "                    /usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml)\n"
      "  --max-side N      detect faces on a copy downscaled to this longer side (default 640,\n"
      "                    as pyflm's HaarFaceDetector; 0: full resolution, slower on big photos)\n"
      "  --boxes JSON      {\"<image path or file name>\": [[x0, y0, x1, y1], ...] or [x0, y0, x1, y1]}:\n"
      "                    use these face boxes instead of detecting (a video's name: its first\n"
      "                    frame; \"<path or name>#<frame>\": that frame)\n"
      "  --box-type T      how the --boxes are drawn, i.e. which of the model's crop rules makes\n"
      "                    the face crop (default tight: a tight box around the landmarks; haar:\n"
      "                    boxes like the Haar detector's; dlib-hog: dlib's HOG detector's; any\n"
      "                    rule the model carries, pyflm info lists them). Detected faces use\n"
      "                    the haar rule.\n"
      "  --batch N         faces per forward call (default 8)\n"
      "  --flip-test       also run each face mirrored and average the two predictions, as\n"
      "                    pyflm's FaceLandmarker(flip_test=True): more accurate, twice the time\n"
      "  --refine N|auto   re-crop each face from its predicted landmarks (the model's training\n"
      "                    crop) and predict again, N times (0-10); auto (default): 2 rounds for\n"
      "                    detected faces and non-tight --box-type boxes, none for tight boxes,\n"
      "                    as pyflm's FaceLandmarker(refine=\"auto\")\n"
      "  --threads N       CPU threads for libtorch and OpenCV (default: their own)\n"
      "  --json FILE       write the results there (default: standard output)\n"
      "  --out-dir DIR     also write annotated images (box and points) there\n"
      "  --help            this text\n"
      "\n"
      "Exit status: 0 all inputs done; 1 some input failed (see \"error\" in the JSON);\n"
      "2 bad command line, model, op library, cascade, boxes file or device.\n";
}

namespace {

int parse_int(std::string_view name, const std::string& text, int lo, int hi) {
  int value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr != end || value < lo || value > hi) {
    throw UsageError(std::string(name) + " expects an integer in " + std::to_string(lo) + ".." +
                     std::to_string(hi) + ", got '" + text + "'");
  }
  return value;
}

}  // namespace

Options parse_args(int argc, char** argv) {
  Options o;
  bool options_done = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (options_done || arg.size() < 2 || arg.rfind("--", 0) != 0) {
      if (!options_done && arg.size() > 1 && arg[0] == '-') throw UsageError("unknown option '" + arg + "'");
      o.inputs.push_back(arg);
      continue;
    }
    if (arg == "--") {
      options_done = true;
      continue;
    }
    if (arg == "--help") {
      o.help = true;
      continue;
    }
    if (arg == "--flip-test") {
      o.flip_test = true;
      continue;
    }
    // --name value or --name=value
    std::string name = arg, value;
    bool has_value = false;
    if (auto eq = arg.find('='); eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    auto take = [&]() -> std::string {
      if (has_value) return value;
      if (i + 1 >= argc) throw UsageError(name + " needs a value");
      return argv[++i];
    };
    if (name == "--model") o.model = take();
    else if (name == "--ops") o.ops = take();
    else if (name == "--device") o.device = take();
    else if (name == "--cascade") o.cascade = take();
    else if (name == "--max-side") {
      o.max_side = parse_int(name, take(), 0, 1 << 20);
      if (o.max_side > 0 && o.max_side < 32) throw UsageError("--max-side must be 0 (off) or >= 32");
    }
    else if (name == "--boxes") o.boxes = take();
    else if (name == "--box-type") o.box_type = take();
    else if (name == "--batch") o.batch = parse_int(name, take(), 1, 4096);
    else if (name == "--threads") o.threads = parse_int(name, take(), 1, 1024);
    else if (name == "--refine") {
      const std::string v = take();
      o.refine = v == "auto" ? -1 : parse_int(name + " (or auto)", v, 0, 10);
    }
    else if (name == "--json") o.json = take();
    else if (name == "--out-dir") o.out_dir = take();
    else throw UsageError("unknown option '" + name + "'");
  }
  if (o.help) return o;
  if (o.model.empty()) throw UsageError("--model FILE.ts is required");
  if (o.inputs.empty()) throw UsageError("no INPUT given (image files, folders or videos)");
  if (o.box_type.empty()) throw UsageError("--box-type must not be empty");
  const std::string& d = o.device;
  if (!(d == "cpu" || d == "cuda" || d.rfind("cuda:", 0) == 0)) {
    throw UsageError("--device must be cpu, cuda or cuda:N, got '" + d + "'");
  }
  if (d.rfind("cuda:", 0) == 0) parse_int("--device cuda:N", d.substr(5), 0, 1023);
  return o;
}

}  // namespace pyflm::cli
