"""Run one landmark method over a job list; write landmarks and timings as JSON.

Runs as a script in a subprocess, so that each method gets its own process
(its own peak RSS, thread settings and ``cv2``): dlib and LBF in the peers'
venv (``.venv-peers``, see setup_env.sh), pyflm in the project's venv. It
imports only the standard library, NumPy and the method's own packages.

    python peer_worker.py --job job.json --out result.json
    python peer_worker.py --check            # find the peers' model files, print versions

Job (JSON)::

    {"method": "dlib" | "lbf" | "pyflm" | "fake",
     "threads": 1,                  # OpenCV / torch threads (env vars are set by the parent)
     "options": {...},              # per method, see the Method classes
     "warmup": 2,                   # untimed calls on the first item before timing
     "items": [{"id": "helen/123", "image": "/path.jpg",
                "boxes": [[x0, y0, x1, y1], ...],      # landmarks in these boxes, or
                "box_type": "native" | "tight" | "dlib-hog"},
               {"id": ..., "image": ..., "detect": true}]}  # the method's own detector first

Boxes are float (x0, y0, x1, y1) in 0-based pixel coordinates. dlib and LBF
take only "native" boxes (their detector's kind: the parent maps ground-truth
boxes to it); pyflm takes "tight" boxes (the landmarks' bounding box) itself,
and "dlib-hog" boxes (dlib's detector's, read with the model's crop rule for them).

Result (JSON)::

    {"method", "threads", "versions": {...}, "model_files": {name: {"path", "bytes"}},
     "rss_kb": {"start", "after_load", "peak"},  # VmRSS / VmHWM of this process
     "items": [{"id", "detect_s": float | null,
                "detections": [[x0, y0, x1, y1, score | null], ...] | null,
                "full_s": float | null,   # one detect-and-landmark call (pyflm), if the
                                          # method's detector call also yields the landmarks
                "faces": [{"box": [4], "landmarks": [[x, y] * 68], "landmark_s": float,
                           "landmark_cpu_s": float}],      # wall and process CPU seconds
                "detect_cpu_s", "full_cpu_s": as detect_s / full_s, in process CPU seconds,
                "error": str (only when the image could not be read)}]}

With ``--progress`` it prints ``@progress <done> <total>`` lines to stderr.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MAX_DETECTIONS = 5  # landmarks on at most this many detections per image (largest first)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def find_package_file(package: str, names: list[str], env_var: str) -> Path:
    """A data file shipped inside an installed package (no import of the
    package itself, no download). ``env_var`` overrides the search."""
    override = os.environ.get(env_var)
    if override:
        p = Path(override)
        if not p.is_file():
            raise FileNotFoundError(f"{env_var}={override}: no such file")
        return p
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed in {sys.prefix}; "
                                "run benchmarks/peers/setup_env.sh")
    for root in spec.submodule_search_locations:
        for name in names:
            hits = sorted(Path(root).rglob(name))
            if hits:
                return hits[0]
    raise FileNotFoundError(f"none of {names} inside package {package!r} ({list(spec.submodule_search_locations)})")


def _rss_kb() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process in kB, from /proc/self/status."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    except OSError:
        pass
    if "VmHWM" not in out:
        import resource
        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss": out.get("VmRSS", 0), "peak": out["VmHWM"]}


def _read_image(path: str) -> np.ndarray:
    """uint8 BGR [H, W, 3]; raises naming the file."""
    import cv2

    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    return img


def _largest(boxes: list[list], k: int = MAX_DETECTIONS) -> list[list]:
    return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))[:k]


class Method:
    """Detector + landmarker. ``detect`` returns [[x0, y0, x1, y1, score|None]];
    ``landmarks`` returns a [68, 2] float array for one native box."""

    name = "?"
    versions: dict = {}
    model_files: dict = {}
    box_types = ("native",)
    detect_yields_landmarks = False  # detect() also fills self.last_landmarks

    def detect(self, image: np.ndarray) -> list[list]:
        raise NotImplementedError

    def landmarks(self, image: np.ndarray, box: list[float], box_type: str = "native") -> np.ndarray:
        raise NotImplementedError


class DlibMethod(Method):
    """dlib's HOG frontal face detector and 68-point shape predictor
    (``face_recognition_models``' shape_predictor_68_face_landmarks.dat).
    Options: ``upsample`` (detector image upsampling, default 1 as in dlib's
    example). dlib's Python API returns landmarks as integer pixels."""

    name = "dlib"

    def __init__(self, upsample: int = 1):
        import dlib

        self.dlib = dlib
        path = find_package_file("face_recognition_models", ["shape_predictor_68_face_landmarks.dat"],
                                 "PYFLM_DLIB_MODEL")
        self.predictor = dlib.shape_predictor(str(path))
        self.detector = dlib.get_frontal_face_detector()
        self.upsample = int(upsample)
        self.model_files = {"shape_predictor": {"path": str(path), "bytes": path.stat().st_size}}
        self.versions = {"dlib": dlib.__version__, "dlib-bin": _version("dlib-bin"),
                         "face-recognition-models": _version("face-recognition-models")}
        self._rgb_for = (None, None)

    def _rgb(self, image: np.ndarray) -> np.ndarray:
        # dlib wants RGB; convert once per image (not timed twice for several faces).
        if self._rgb_for[0] is not image:
            self._rgb_for = (image, np.ascontiguousarray(image[:, :, ::-1]))
        return self._rgb_for[1]

    def detect(self, image):
        rects, scores, _ = self.detector.run(self._rgb(image), self.upsample, 0.0)
        # dlib rectangles are inclusive (right = left + width - 1)
        return [[float(r.left()), float(r.top()), float(r.right()), float(r.bottom()), float(s)]
                for r, s in zip(rects, scores)]

    def landmarks(self, image, box, box_type="native"):
        x0, y0, x1, y1 = (int(round(v)) for v in box[:4])
        shape = self.predictor(self._rgb(image), self.dlib.rectangle(x0, y0, x1, y1))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


class LbfMethod(Method):
    """OpenCV's FacemarkLBF (cv2.face, opencv-contrib-python) with the LBF model
    file shipped in the GoldenFace wheel, and an OpenCV Haar cascade as detector.
    Options: ``cascade`` (file name in cv2.data.haarcascades, default
    haarcascade_frontalface_alt2.xml), ``scale_factor`` (1.1), ``min_neighbors`` (3)."""

    name = "lbf"

    def __init__(self, cascade: str = "haarcascade_frontalface_alt2.xml", scale_factor: float = 1.1,
                 min_neighbors: int = 3):
        import cv2

        if not hasattr(cv2, "face"):
            raise ImportError(f"cv2 {cv2.__version__} at {cv2.__file__} has no cv2.face: "
                              "install opencv-contrib-python (benchmarks/peers/setup_env.sh)")
        self.cv2 = cv2
        path = find_package_file("GoldenFace", ["lbfmodel.yaml", "landmark.yaml"], "PYFLM_LBF_MODEL")
        self.facemark = cv2.face.createFacemarkLBF()
        self.facemark.loadModel(str(path))
        cascade_path = Path(cv2.data.haarcascades) / cascade
        self.cascade = cv2.CascadeClassifier(str(cascade_path))
        if self.cascade.empty():
            raise FileNotFoundError(f"cannot load Haar cascade {cascade_path}")
        self.scale_factor, self.min_neighbors = float(scale_factor), int(min_neighbors)
        self.model_files = {"lbf_model": {"path": str(path), "bytes": path.stat().st_size},
                            "haar_cascade": {"path": str(cascade_path), "bytes": cascade_path.stat().st_size}}
        self.versions = {"opencv": cv2.__version__, "opencv-contrib-python": _version("opencv-contrib-python"),
                         "GoldenFace": _version("GoldenFace"), "cascade": cascade}

    def detect(self, image):
        gray = self.cv2.cvtColor(image, self.cv2.COLOR_BGR2GRAY)
        rects = self.cascade.detectMultiScale(gray, scaleFactor=self.scale_factor,
                                              minNeighbors=self.min_neighbors)
        return [[float(x), float(y), float(x + w), float(y + h), None] for x, y, w, h in rects]

    def landmarks(self, image, box, box_type="native"):
        x0, y0, x1, y1 = (int(round(v)) for v in box[:4])
        faces = np.array([[x0, y0, x1 - x0, y1 - y0]], dtype=np.int32)
        ok, shapes = self.facemark.fit(image, faces)
        if not ok:
            raise RuntimeError(f"FacemarkLBF.fit failed for box {box}")
        return np.asarray(shapes[0], dtype=np.float64).reshape(-1, 2)


class PyflmMethod(Method):
    """pyflm.FaceLandmarker (run with the project's venv, repo root on sys.path).
    Options: ``model`` ("default" or a model file), ``detector`` ("default"),
    ``backend`` ("torch" or "onnxruntime"), ``flip_test`` (bool), ``refine`` (int). Boxes sent to it are tight landmark
    boxes (``box_type="tight"``) or dlib's HOG boxes (``"dlib-hog"``)."""

    name = "pyflm"
    box_types = ("native", "tight", "dlib-hog")
    detect_yields_landmarks = True

    def __init__(self, model: str = "default", detector: str = "default", threads: int = 1, backend: str = "torch",
                 flip_test: bool = False, refine: int | str = "auto"):
        import torch

        torch.set_num_threads(int(threads))
        import pyflm

        if not hasattr(pyflm, "FaceLandmarker"):
            raise ImportError(f"pyflm {pyflm.__version__} at {pyflm.__file__} has no FaceLandmarker yet")
        self.lm = pyflm.FaceLandmarker(model=model, device="cpu", detector=detector, backend=backend,
                                       num_threads=int(threads), flip_test=bool(flip_test),
                                       refine=refine if refine == "auto" else int(refine))
        self.versions = {"pyflm": pyflm.__version__, "torch": torch.__version__}
        if backend == "onnxruntime":
            import onnxruntime

            self.versions["onnxruntime"] = onnxruntime.__version__
        path = getattr(self.lm, "model_source", None) or (model if model != "default" else None)
        self.model_files = ({"model": {"path": str(path), "bytes": Path(path).stat().st_size}}
                            if path and Path(path).is_file() else {})

    def detect(self, image):
        faces = self.lm.detect(image)
        self.last_landmarks = [np.asarray(f.landmarks, dtype=np.float64) for f in faces]
        return [[*map(float, f.box[:4]), None if f.detection_score is None else float(f.detection_score)]
                for f in faces]

    def landmarks(self, image, box, box_type="native"):
        # native boxes come from pyflm's own detector: read them with that detector's fitted crop rule
        native = getattr(getattr(self.lm, "detector", None), "name", None) or "tight"
        faces = self.lm.detect(image, boxes=[list(box[:4])], box_type=native if box_type == "native" else box_type)
        return np.asarray(faces[0].landmarks, dtype=np.float64)


class FakeMethod(Method):
    """For tests: a fixed 68-point ellipse in the box; 'detects' the central
    half of the image. Option ``delay`` (seconds) simulates work."""

    name = "fake"
    box_types = ("native", "tight", "dlib-hog")

    def __init__(self, delay: float = 0.0):
        self.delay = float(delay)
        t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
        self.template = np.stack([0.5 + 0.4 * np.cos(t), 0.5 + 0.4 * np.sin(t)], axis=1)
        self.versions = {"fake": "0"}

    def detect(self, image):
        h, w = image.shape[:2]
        return [[w / 4, h / 4, 3 * w / 4, 3 * h / 4, 1.0]]

    def landmarks(self, image, box, box_type="native"):
        if self.delay:
            time.sleep(self.delay)
        x0, y0, x1, y1 = box[:4]
        return self.template * [x1 - x0, y1 - y0] + [x0, y0]


METHODS = {"dlib": DlibMethod, "lbf": LbfMethod, "pyflm": PyflmMethod, "fake": FakeMethod}


def make_method(name: str, options: dict, threads: int) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    if name == "pyflm":
        options = {**options, "threads": threads}
    return METHODS[name](**options)


def run_item(method: Method, item: dict) -> dict:
    """One job item -> one result item (see the module docstring)."""
    out = {"id": item["id"], "detect_s": None, "detect_cpu_s": None, "full_s": None, "full_cpu_s": None,
           "detections": None, "faces": []}
    try:
        image = _read_image(item["image"])
    except ValueError as e:
        out["error"] = str(e)
        return out
    box_type = item.get("box_type", "native")
    if box_type not in method.box_types:
        raise ValueError(f"item {item['id']}: {method.name} takes box_type {method.box_types}, got {box_type!r}")
    if item.get("detect"):
        t0, c0 = time.perf_counter(), time.process_time()
        dets = method.detect(image)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        out["detections"] = dets
        boxes, box_type = _largest(dets), "native"
        if method.detect_yields_landmarks:
            # the detector call also ran the landmarks: it is the full pipeline's time;
            # the landmarks are timed again alone below, per detection
            out["full_s"], out["full_cpu_s"] = dt, dc
            full = {id(d): p for d, p in zip(dets, method.last_landmarks)}
        else:
            out["detect_s"], out["detect_cpu_s"] = dt, dc
    else:
        boxes = item.get("boxes") or []
    for box in boxes:
        t0, c0 = time.perf_counter(), time.process_time()
        pts = method.landmarks(image, box, box_type)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if out["full_s"] is not None:
            pts = full[id(box)]
        out["faces"].append({"box": [float(v) for v in box[:4]], "landmarks": np.asarray(pts).tolist(),
                             "landmark_s": dt, "landmark_cpu_s": dc})
    return out


def run_job(job: dict, progress: bool = False) -> dict:
    """Run a job dict (see the module docstring) and return the result dict."""
    for key in ("method", "items"):
        if key not in job:
            raise ValueError(f"job has no {key!r}")
    threads = int(job.get("threads", 1))
    try:
        import cv2
        cv2.setNumThreads(threads)
    except ImportError:
        pass
    rss_start = _rss_kb()["rss"]
    method = make_method(job["method"], job.get("options") or {}, threads)
    rss_loaded = _rss_kb()["rss"]
    items = job["items"]
    if items and job.get("warmup", 2):
        for _ in range(int(job.get("warmup", 2))):
            run_item(method, {**items[0], "detect": True})
    results = []
    for i, item in enumerate(items):
        results.append(run_item(method, item))
        if progress:
            print(f"@progress {i + 1} {len(items)}", file=sys.stderr, flush=True)
    rss = _rss_kb()
    return {"method": method.name, "threads": threads, "options": job.get("options") or {},
            "versions": {**method.versions, "numpy": np.__version__, "python": sys.version.split()[0]},
            "model_files": method.model_files,
            "rss_kb": {"start": rss_start, "after_load": rss_loaded, "peak": rss["peak"]},
            "items": results}


def write_json_atomic(path, obj) -> Path:
    # Its own copy: this worker runs in the peers' venv, where pyflm (and torch) are absent.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def check() -> dict:
    """Locate both peers' model files and report versions (setup_env.sh's last step)."""
    info = {"python": sys.executable}
    for name in ("dlib", "lbf"):
        m = make_method(name, {}, 1)
        info[name] = {"versions": m.versions, "model_files": m.model_files}
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", help="job JSON file")
    p.add_argument("--out", help="result JSON file (written atomically)")
    p.add_argument("--check", action="store_true", help="load dlib and LBF, print versions and model files")
    p.add_argument("--progress", action="store_true", help="print '@progress done total' lines to stderr")
    a = p.parse_args(argv)
    if a.check:
        print(json.dumps(check(), indent=1))
        return 0
    if not (a.job and a.out):
        p.error("--job and --out are required (or --check)")
    try:
        job = json.loads(Path(a.job).read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"peer_worker: cannot read job file {a.job}: {e}", file=sys.stderr)
        return 2
    write_json_atomic(a.out, run_job(job, progress=a.progress))
    return 0


if __name__ == "__main__":
    sys.exit(main())
