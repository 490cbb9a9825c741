"""pyflm-detect, the C++ command-line tool: built with CMake against the installed
torch and Debian's OpenCV C++ (skipped when OpenCV C++ or nlohmann/json is
missing, unless PYFLM_REQUIRE_CLI=1), run on images the tests write, and compared
with the Python pipeline (pyflm.data.crops + pyflm.deploy): the same crops, the
same network, landmarks equal within 0.05 px."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import pyflm
import pyflm.deploy as deploy
from pyflm.data.crops import BoxToSquare, Crop
from pyflm.data.splits import default_data_root
from pyflm.landmarker import AUTO_REFINE_ROUNDS, FaceLandmarker

SOURCES = Path(__file__).resolve().parents[1] / "csrc" / "tools" / "detect"
TOLERANCE_PX = 0.05
TOP_TIMINGS = {"decode", "detect", "landmarks", "model_load", "total"}
IMAGE_TIMINGS = {"decode", "detect", "landmarks"}


# ----------------------------------------------------------------------------- fixtures
def _missing_dependency(log: str) -> str | None:
    for package, marker in (("OpenCV C++ (Debian: libopencv-dev)", "OpenCV"),
                            ("nlohmann/json (Debian: nlohmann-json3-dev)", "nlohmann_json")):
        if f"Could not find a package configuration file provided by \"{marker}\"" in log or \
                f"Could NOT find {marker}" in log:
            return package
    return None


@pytest.fixture(scope="module")
def cli(pytestconfig, tmp_path_factory) -> Path:
    """The built pyflm-detect. The build folder lives in pytest's cache, keyed by
    the torch it builds against, so later runs only rebuild what changed."""
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("needs cmake and a C++ compiler")
    key = hashlib.sha1(f"{torch.__file__}|{torch.__version__}".encode()).hexdigest()[:12]
    try:
        build = Path(pytestconfig.cache.mkdir(f"pyflm-detect-{key}"))
    except AttributeError:  # cache provider disabled (-p no:cacheprovider)
        build = tmp_path_factory.mktemp("pyflm-detect-build")
    cfg = subprocess.run(
        ["cmake", "-S", str(SOURCES), "-B", str(build), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
         "-DCMAKE_BUILD_TYPE=Release"],
        capture_output=True, text=True,
    )
    if cfg.returncode != 0:
        missing = _missing_dependency(cfg.stdout + cfg.stderr)
        if missing and os.environ.get("PYFLM_REQUIRE_CLI") != "1":
            pytest.skip(f"pyflm-detect needs {missing}")
        pytest.fail("configuring pyflm-detect failed:\n" + cfg.stdout[-3000:] + cfg.stderr[-3000:])
    jobs = os.environ.get("PYFLM_TEST_BUILD_JOBS", "2")
    bld = subprocess.run(["cmake", "--build", str(build), "-j", jobs], capture_output=True, text=True)
    assert bld.returncode == 0, bld.stdout[-5000:] + bld.stderr[-5000:]
    return build / "pyflm-detect"


@pytest.fixture(scope="module")
def model_file() -> dict:
    """The bundled model when present, else a small untrained one (parity does
    not need a trained network)."""
    path = deploy.default_model_path()
    if path.is_file():
        return deploy.load_model_file(path)
    from pyflm.tasks import build_task

    torch.manual_seed(0)
    task = build_task("compact", input_size=64, num_landmarks=68)
    meta = deploy.default_meta("compact", 64, 68, getattr(task.model, "output_stride", None))
    return {"format": deploy.MODEL_FORMAT, "version": 1, "task": "compact",
            "model_kwargs": {"input_size": 64, "num_landmarks": 68}, "state_dict": task.model.state_dict(),
            "meta": meta}


@pytest.fixture(scope="module")
def model_ts(compiled_module, model_file, tmp_path_factory) -> Path:
    return deploy.export_torchscript(model_file, tmp_path_factory.mktemp("model") / "model.ts")


@pytest.fixture(scope="module")
def compiled_module():
    """Module-scoped twin of conftest's ``compiled``: the export needs the op library."""
    if not pyflm.HAS_OPS:
        if os.environ.get("PYFLM_TEST_REFERENCE_ONLY") == "1":
            pytest.skip("compiled ops not built (PYFLM_TEST_REFERENCE_ONLY=1)")
        pytest.fail(f"pyflm compiled ops are not loaded: {pyflm._library.LOAD_ERROR}")


@pytest.fixture(scope="module")
def predictor(model_file):
    return deploy.build_predictor(model_file)


def _ops() -> str:
    return str(pyflm.library_path())


def _cascade() -> str:
    """Debian's opencv-data file, else opencv-python's copy (the same file)."""
    debian = Path("/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml")
    return str(debian if debian.is_file() else Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml")


def _run(cli: Path, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def _synthetic_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth random texture plus shapes: structure for the network, lossless as PNG."""
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(6):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.ellipse(img, (int(rng.integers(0, w)), int(rng.integers(0, h))),
                    (int(rng.integers(5, w // 3)), int(rng.integers(5, h // 3))), float(rng.uniform(0, 180)), 0, 360,
                    c, -1)
    return img


def _random_box(rng: np.random.Generator, h: int, w: int) -> list[float]:
    side = rng.uniform(0.25, 0.6) * min(h, w)
    x0, y0 = rng.uniform(-0.1 * w, w - 0.8 * side), rng.uniform(-0.1 * h, h - 0.8 * side)
    return [float(x0), float(y0), float(x0 + side * rng.uniform(0.8, 1.2)), float(y0 + side * rng.uniform(0.8, 1.2))]


def _python_landmarks(image_path: Path, boxes, meta: dict, predictor, box_type: str = "tight"):
    """The Python pipeline: decode as pyflm.io does, crop with the model's rule,
    run the (eager) predictor, map back. -> (landmarks [N, K, 2], scores [N, K])."""
    img = cv2.imdecode(np.fromfile(str(image_path), np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    rules = meta["crop"]["boxes"]
    # "tight" defaults to the landmark crop's scale around the box centre (as pyflm.FaceLandmarker)
    rule = BoxToSquare(**rules[box_type]) if box_type in rules or box_type != "tight" else \
        BoxToSquare(0.0, 0.0, float(meta["crop"]["landmarks"].get("scale", 1.3)), "max")
    crops = [Crop.from_box(b, int(meta["input_size"]), rule) for b in boxes]
    batch = torch.from_numpy(np.stack([c.warp(img) for c in crops]))
    with torch.no_grad():
        xy, sc = predictor(batch)
    pts = np.stack([c.to_image(p) for c, p in zip(crops, xy.numpy().astype(np.float64))])
    return pts, sc.numpy()


def _no_temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def _real_image() -> tuple[Path, np.ndarray] | None:
    folder = default_data_root() / "300w" / "lfpw" / "testset"
    if not folder.is_dir():
        return None
    from pyflm.data.readers import read_pts

    image = sorted(folder.glob("*.jpg"))[0]
    return image, read_pts(image.with_suffix(".pts"))


# --------------------------------------------------------------- one full run, many checks
@pytest.fixture(scope="module")
def main_run(cli, model_ts, tmp_path_factory):
    """Synthetic PNGs with given boxes (by file name and by path; one with an
    empty list; two with the same name in different folders), a real 300-W photo when present, a missing file, a corrupt
    JPEG and a text file; batch 2 across images, JSON and annotated images."""
    rng = np.random.default_rng()
    work = tmp_path_factory.mktemp("run")
    images = work / "images"
    images.mkdir()
    inputs, boxes = [], {}
    for i, (h, w, n) in enumerate([(120, 160, 2), (97, 131, 1), (80, 80, 0)]):
        path = images / f"synthetic_{i}.png"
        cv2.imwrite(str(path), _synthetic_image(rng, h, w))
        key = path.name if i != 1 else str(path)
        boxes[key] = [_random_box(rng, h, w) for _ in range(n)]
        inputs.append(path)
    (images / "sub").mkdir()
    twin = images / "sub" / "synthetic_0.png"  # same name, other folder: its boxes are synthetic_0.png's
    cv2.imwrite(str(twin), _synthetic_image(rng, 120, 160))
    inputs.append(twin)
    real = _real_image()
    if real is not None:
        pts = real[1]
        boxes[real[0].name] = [[*pts.min(0).tolist(), *pts.max(0).tolist()]]
        inputs.append(real[0])
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (images / "notes.txt").write_text("not an image")
    inputs[1:1] = [images / "missing.png"]
    inputs += [images / "corrupt.jpg", images / "notes.txt"]
    boxes_file = work / "boxes.json"
    boxes_file.write_text(json.dumps(boxes))
    out_dir, results = work / "annotated", work / "out" / "results.json"
    results.parent.mkdir()
    results.write_text("an older result, replaced atomically")
    proc = _run(cli, "--model", model_ts, "--ops", _ops(), "--boxes", boxes_file, "--box-type", "tight",
                "--batch", 2, "--cascade", _cascade(), "--json", results, "--out-dir", out_dir, *inputs)
    doc = json.loads(results.read_text()) if results.is_file() else None
    return dict(proc=proc, doc=doc, inputs=inputs, boxes=boxes, work=work, out_dir=out_dir, results=results,
                real=real)


def test_exit_code_and_errors_per_file(main_run):
    proc, doc = main_run["proc"], main_run["doc"]
    assert proc.returncode == 1, proc.stderr
    assert doc is not None, proc.stderr
    by_path = {r["path"]: r for r in doc["images"]}
    assert [r["path"] for r in doc["images"]] == [str(p) for p in main_run["inputs"]]
    missing, corrupt, text = (str(main_run["inputs"][1]), str(main_run["inputs"][-2]), str(main_run["inputs"][-1]))
    assert "image not found" in by_path[missing]["error"] and missing in by_path[missing]["error"]
    assert "cannot decode image" in by_path[corrupt]["error"]
    assert "cannot decode image" in by_path[text]["error"]
    for bad in (missing, corrupt, text):
        assert by_path[bad]["faces"] == []
        assert bad in proc.stderr
    good = [r for r in doc["images"] if r["path"] not in (missing, corrupt, text)]
    assert good and all("error" not in r for r in good)
    assert "3 input(s) failed" in proc.stderr


def test_json_schema(main_run, model_ts):
    doc = main_run["doc"]
    assert doc["version"] == 1 and doc["model"] == str(model_ts) and doc["device"] == "cpu"
    assert doc["box_type"] == "tight" and doc["flip_test"] is False
    assert set(doc["timings_ms"]) == TOP_TIMINGS
    assert all(isinstance(v, float) and v >= 0 for v in doc["timings_ms"].values())
    for r in doc["images"]:
        assert set(r) - {"error"} == {"path", "width", "height", "faces", "timings_ms"}
        assert set(r["timings_ms"]) == IMAGE_TIMINGS
        for f in r["faces"]:
            assert set(f) == {"box", "landmarks", "scores", "detection_score"}
            assert len(f["box"]) == 4 and len(f["landmarks"]) == 68 and len(f["scores"]) == 68
            assert all(len(p) == 2 for p in f["landmarks"])
            assert f["detection_score"] == 1.0  # given boxes
    sizes = {r["path"]: (r["width"], r["height"]) for r in doc["images"]}
    assert sizes[str(main_run["inputs"][0])] == (160, 120)


def test_landmarks_match_python(main_run, model_ts, predictor):
    doc = main_run["doc"]
    _, meta = deploy.load_torchscript(model_ts)
    boxes = main_run["boxes"]
    checked = 0
    for r in doc["images"]:
        path = Path(r["path"])
        given = boxes.get(path.name, boxes.get(str(path)))
        if given is None:
            continue
        assert len(r["faces"]) == len(given)
        if not given:
            continue
        np.testing.assert_allclose([f["box"] for f in r["faces"]], given, rtol=0, atol=5e-4 + 1e-9)  # 1e-3 rounding
        pts, scores = _python_landmarks(path, given, meta, predictor)
        cpp = np.array([f["landmarks"] for f in r["faces"]])
        assert np.abs(cpp - pts).max() < TOLERANCE_PX, f"{path}: max |C++ - Python| = {np.abs(cpp - pts).max()} px"
        np.testing.assert_allclose([f["scores"] for f in r["faces"]], scores, rtol=1e-3, atol=2e-4)
        checked += len(given)
    assert checked >= 3


def test_real_image_matches_python(main_run, model_ts, predictor):
    if main_run["real"] is None:
        pytest.skip("no 300-W data")
    image = str(main_run["real"][0])
    (r,) = [r for r in main_run["doc"]["images"] if r["path"] == image]
    _, meta = deploy.load_torchscript(model_ts)
    box = main_run["boxes"][Path(image).name]
    pts, _ = _python_landmarks(Path(image), box, meta, predictor)
    assert np.abs(np.array(r["faces"][0]["landmarks"]) - pts[0]).max() < TOLERANCE_PX


def test_output_written_atomically(main_run):
    results, out_dir = main_run["results"], main_run["out_dir"]
    assert _no_temp_files(results.parent) == [] and _no_temp_files(out_dir) == []
    json.loads(results.read_text())  # the old text was replaced by a whole document
    written = sorted(p.name for p in out_dir.iterdir())
    good = [p.name for p in main_run["inputs"] if p.suffix in (".png", ".jpg") and p.name not in
            ("missing.png", "corrupt.jpg")]
    good[good.index("synthetic_0.png", 1)] = "synthetic_0_2.png"  # the second one is never overwritten
    assert written == sorted(good)
    annotated = cv2.imread(str(out_dir / "synthetic_0.png"))
    original = cv2.imread(str(main_run["inputs"][0]))
    assert annotated.shape == original.shape and np.any(annotated != original)


def test_face_landmarker_agrees(main_run, model_file):
    """The public Python API, where it exists, on the same boxes."""
    if not hasattr(pyflm, "FaceLandmarker"):
        pytest.skip("pyflm.FaceLandmarker not available")
    if not deploy.default_model_path().is_file():
        pytest.skip("FaceLandmarker uses the bundled model, which is missing")
    landmarker = pyflm.FaceLandmarker(detector=None)
    r = main_run["doc"]["images"][0]
    image = cv2.imread(r["path"])
    faces = landmarker.detect(image, boxes=main_run["boxes"][Path(r["path"]).name], box_type="tight")
    got = np.array([f["landmarks"] if isinstance(f, dict) else f.landmarks for f in faces], dtype=np.float64)
    cpp = np.array([f["landmarks"] for f in r["faces"]])
    assert got.shape == cpp.shape and np.abs(got - cpp).max() < TOLERANCE_PX


def test_flip_test_matches_python(cli, model_ts, model_file, main_run, tmp_path):
    """--flip-test: FaceLandmarker(flip_test=True)'s landmarks on the same boxes
    (odd batch: the mirrored half must pair with its own crops), and a visible
    change from the plain run."""
    inputs = [p for p in main_run["inputs"] if p.is_file() and p.suffix in (".png", ".jpg") and "sub" not in p.parts
              and p.name != "corrupt.jpg"]
    out = tmp_path / "flip.json"
    proc = _run(cli, "--model", model_ts, "--ops", _ops(), "--boxes", main_run["work"] / "boxes.json",
                "--batch", 3, "--flip-test", "--cascade", _cascade(), "--json", out, *inputs)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["flip_test"] is True
    lm = pyflm.FaceLandmarker(model=model_file, detector=None, flip_test=True)
    plain = {r["path"]: r for r in main_run["doc"]["images"]}
    checked = 0
    for r in doc["images"]:
        boxes = main_run["boxes"].get(Path(r["path"]).name, main_run["boxes"].get(r["path"]))
        if not boxes:
            continue
        want = np.array([f.landmarks for f in lm.detect(cv2.imread(r["path"]), boxes=boxes, box_type="tight")])
        cpp = np.array([f["landmarks"] for f in r["faces"]])
        assert np.abs(cpp - want).max() < TOLERANCE_PX, f"{r['path']}: max |C++ - Python| = {np.abs(cpp - want).max()}"
        assert np.abs(cpp - np.array([f["landmarks"] for f in plain[r["path"]]["faces"]])).max() > 0.01
        checked += len(boxes)
    assert checked >= 3


def test_flip_test_needs_a_mirror(cli, tmp_path):
    from tests.test_deploy import _tiny_model_file

    ts = deploy.export_torchscript(_tiny_model_file(k=7), tmp_path / "seven.ts")
    assert "mirror" not in deploy.load_torchscript(ts)[1]  # no 7-point scheme is known
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"x.png": [[2, 2, 30, 30]]}))
    proc = _run(cli, "--model", ts, "--ops", _ops(), "--boxes", boxes, "--flip-test", image)
    assert proc.returncode == 2 and "mirror permutation" in proc.stderr
    assert _run(cli, "--model", ts, "--ops", _ops(), "--boxes", boxes, image).returncode == 0


def test_flip_test_keeps_the_calibration_offset(cli, compiled_module, tmp_path):
    """A model with a calibration offset (meta decode.offset, not mirror-symmetric):
    --flip-test gives FaceLandmarker(flip_test=True)'s landmarks, which carry the
    offset itself (tests/test_calibration.py); an offset that does not fit the
    model is a setup error naming the key."""
    from tests.test_deploy import _tiny_model_file

    rng = np.random.default_rng()
    torch.manual_seed(0)
    mf = _tiny_model_file("compact", 64)
    mf["meta"]["decode"]["offset"] = rng.uniform(-2, 2, (68, 2)).round(4).tolist()
    ts = deploy.export_torchscript(mf, tmp_path / "offset.ts")
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), _synthetic_image(rng, 120, 150))
    box = _random_box(rng, 120, 150)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"x.png": [box]}))
    out = tmp_path / "flip.json"
    proc = _run(cli, "--model", ts, "--ops", _ops(), "--boxes", boxes, "--box-type", "tight", "--flip-test",
                "--json", out, image)
    assert proc.returncode == 0, proc.stderr
    (cpp,) = [f["landmarks"] for f in json.loads(out.read_text())["images"][0]["faces"]]
    lm = pyflm.FaceLandmarker(model=mf, detector=None, flip_test=True, backend="torch")
    (want,) = lm.detect(cv2.imread(str(image)), boxes=[box], box_type="tight")
    assert np.abs(np.asarray(cpp) - want.landmarks).max() < TOLERANCE_PX
    # the same graph with a broken offset in its pyflm.json
    module = torch.jit.load(str(ts))
    meta = deploy.load_torchscript(ts)[1]
    meta["decode"]["offset"] = meta["decode"]["offset"][:-1]
    bad = tmp_path / "bad.ts"
    torch.jit.save(module, str(bad), _extra_files={"pyflm.json": json.dumps(meta)})
    proc = _run(cli, "--model", bad, "--ops", _ops(), "--boxes", boxes, "--flip-test", image)
    assert proc.returncode == 2 and "decode.offset" in proc.stderr


# ------------------------------------------------- detection, video, stdout, batch sizes
def test_detection_video_and_stdout(cli, model_ts, main_run, tmp_path):
    """No --json: the document goes to standard output. Images without given
    boxes go through the Haar detector (a gradient has no face: an empty list,
    not an error; without a fitted "haar" rule, the "tight" one with a
    warning, as pyflm.FaceLandmarker); a video gives one record per frame,
    boxes given by its name (first frame) or "name#frame"; a single box
    [x0, y0, x1, y1] is accepted; --box-type defaults to tight; batch 1 gives
    the landmarks batch 2 gave."""
    rng = np.random.default_rng()
    texture = tmp_path / "gradient.png"  # no face for certain (random textures could fool a cascade)
    ramp = np.linspace(0, 255, 110, dtype=np.float64)[None, :, None] + rng.uniform(-40, 40, 3)
    cv2.imwrite(str(texture), np.broadcast_to(np.clip(ramp, 0, 255), (90, 110, 3)).astype(np.uint8))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 64))
    assert writer.isOpened()
    for i in range(3):  # frame 1 is flat: nothing to detect there
        writer.write(_synthetic_image(rng, 64, 96) if i != 1 else np.full((64, 96, 3), 90, np.uint8))
    writer.release()
    first = main_run["inputs"][0]
    (single,) = main_run["boxes"][first.name][:1]
    boxes = {first.name: single, "clip.avi": [[3.0, 4.0, 40.0, 50.0]], "clip.avi#2": [[10.0, 5.0, 60.0, 55.0]]}
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps(boxes))
    proc = _run(cli, "--model", model_ts, "--ops", _ops(), "--boxes", boxes_file,
                "--batch", 1, "--threads", 1, "--cascade", _cascade(), first, texture, video)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    same, tex, *frames = doc["images"]
    before = [r for r in main_run["doc"]["images"] if r["path"] == str(first)][0]
    np.testing.assert_allclose([f["landmarks"] for f in same["faces"]], [f["landmarks"] for f in before["faces"]][:1],
                               rtol=0, atol=2e-3)
    _, meta = deploy.load_torchscript(model_ts)
    fallback_warning = "no crop rule fitted for the 'haar' face detector" in proc.stderr
    assert fallback_warning == ("haar" not in meta["crop"]["boxes"]), proc.stderr
    assert same["timings_ms"]["detect"] == 0.0
    assert tex["faces"] == [] and "error" not in tex and tex["timings_ms"]["detect"] > 0
    assert [f["frame"] for f in frames] == [0, 1, 2]
    assert all(f["path"] == str(video) and f["width"] == 96 and f["height"] == 64 for f in frames)
    assert [len(f["faces"]) for f in frames] == [1, 0, 1]
    assert frames[0]["faces"][0]["box"] == [3.0, 4.0, 40.0, 50.0]
    assert frames[2]["faces"][0]["box"] == [10.0, 5.0, 60.0, 55.0]
    assert frames[0]["t_s"] < frames[1]["t_s"] < frames[2]["t_s"]
    assert all(set(f) == {"path", "frame", "t_s", "width", "height", "faces", "timings_ms"} for f in frames)


def test_detected_face_matches_python(cli, model_ts, model_file, predictor, tmp_path):
    """A real photo without given boxes: the Haar boxes equal pyflm.face_detection's
    (same cascade and parameters; where that module exists) and the landmarks
    equal the Python pipeline's on those boxes with the detector's crop rule; by
    default (--refine auto) after FaceLandmarker's 2 refinement rounds, with
    --refine 0 straight from the box."""
    real = _real_image()
    if real is None:
        pytest.skip("no 300-W data")
    image = real[0]
    proc = _run(cli, "--model", model_ts, "--ops", _ops(), "--cascade", _cascade(), image)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    (r,) = doc["images"]
    assert doc["refine"] == "auto"
    assert len(r["faces"]) >= 1
    boxes = np.array([f["box"] for f in r["faces"]])
    try:
        from pyflm.face_detection import HaarFaceDetector
    except ImportError:
        HaarFaceDetector = None
    if HaarFaceDetector is not None:
        py_boxes, py_scores = HaarFaceDetector(cascade=_cascade())(cv2.imread(str(image)))
        np.testing.assert_allclose(boxes, py_boxes, rtol=0, atol=1e-9)
        np.testing.assert_allclose([f["detection_score"] for f in r["faces"]], py_scores, rtol=1e-9, atol=1e-12)
    _, meta = deploy.load_torchscript(model_ts)
    rule = "haar" if "haar" in meta["crop"]["boxes"] else "tight"
    # detected faces get AUTO_REFINE_ROUNDS whatever rule crops them (a fallback 'tight' one too)
    lm = FaceLandmarker(model=model_file, detector=None, backend="torch", refine=AUTO_REFINE_ROUNDS)
    refined = np.stack([f.landmarks for f in lm.detect(cv2.imread(str(image)), boxes=boxes, box_type=rule)])
    got = np.array([f["landmarks"] for f in r["faces"]])
    assert np.abs(got - refined).max() < TOLERANCE_PX
    pts, _ = _python_landmarks(image, boxes, meta, predictor, box_type=rule)
    assert np.abs(got - pts).max() > 10 * TOLERANCE_PX  # the rounds moved the points (a loose Haar box)
    proc = _run(cli, "--model", model_ts, "--ops", _ops(), "--cascade", _cascade(), "--refine", "0", image)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["refine"] == 0
    assert np.abs(np.array([f["landmarks"] for f in doc["images"][0]["faces"]]) - pts).max() < TOLERANCE_PX


def test_fallback_neighbours_match_python(cli, model_ts):
    """A HELEN test photo where no window group has 5 neighbours: the binary,
    like HaarFaceDetector, looks again with 3 and finds the same box."""
    from pyflm.data import default_data_root
    from pyflm.face_detection import HaarFaceDetector

    image = default_data_root() / "300w" / "helen" / "testset" / "2970690152_2.jpg"
    if not image.is_file():
        pytest.skip("no 300-W data")
    assert len(HaarFaceDetector(cascade=_cascade(), fallback_min_neighbors=None)(cv2.imread(str(image)))[0]) == 0
    py_boxes, py_scores = HaarFaceDetector(cascade=_cascade())(cv2.imread(str(image)))
    assert len(py_boxes) >= 1
    proc = _run(cli, "--model", model_ts, "--ops", _ops(), "--cascade", _cascade(), "--refine", "0", image)
    assert proc.returncode == 0, proc.stderr
    faces = json.loads(proc.stdout)["images"][0]["faces"]
    np.testing.assert_allclose([f["box"] for f in faces], py_boxes, rtol=0, atol=1e-9)
    np.testing.assert_allclose([f["detection_score"] for f in faces], py_scores, rtol=1e-9, atol=1e-12)


def test_refine_rounds_on_given_boxes_match_python(cli, model_ts, model_file, tmp_path):
    """--refine N on given boxes: N rounds for every face, as FaceLandmarker(refine=N);
    --refine auto leaves tight boxes alone and refines boxes of another --box-type;
    a bad value is a usage error."""
    photo = Path(pyflm.__file__).parent / "assets" / "astronaut.jpg"
    loose = [160.0, 50.0, 290.0, 185.0]  # a detector-like box around the sample face
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps({str(photo): [loose]}))
    img = cv2.imread(str(photo))
    _, meta = deploy.load_torchscript(model_ts)
    box_types = ["tight"] + sorted(k for k in meta["crop"]["boxes"] if k != "tight")  # haar, dlib-hog, ...
    for box_type in box_types:
        for refine, rounds in (("1", 1), ("auto", 0 if box_type == "tight" else AUTO_REFINE_ROUNDS)):
            proc = _run(cli, "--model", model_ts, "--ops", _ops(), "--boxes", boxes_file, "--box-type", box_type,
                        "--refine", refine, photo)
            assert proc.returncode == 0, proc.stderr
            got = np.array(json.loads(proc.stdout)["images"][0]["faces"][0]["landmarks"])
            lm = FaceLandmarker(model=model_file, detector=None, backend="torch", refine=rounds)
            want = lm.detect(img, boxes=[loose], box_type=box_type)[0].landmarks
            assert np.abs(got - want).max() < TOLERANCE_PX, (box_type, refine)
    for bad in ("11", "-1", "x"):
        proc = _run(cli, "--model", model_ts, "--refine", bad, photo)
        assert proc.returncode == 2 and "--refine" in proc.stderr


def test_refinement_square_from_meta_matches_python(cli, compiled_module, model_file, tmp_path):
    """pyflm-detect's rounds cut meta.crop.refine's square (FaceLandmarker's), not
    the training square; a bad one, or a bad training square under the tight
    fallback, is a setup error naming it."""
    photo = Path(pyflm.__file__).parent / "assets" / "astronaut.jpg"
    loose = [160.0, 50.0, 290.0, 185.0]
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps({str(photo): [loose]}))
    img = cv2.imread(str(photo))
    got = {}
    for scale in (1.3, 1.7):
        meta = {**model_file["meta"], "crop": {**model_file["meta"]["crop"], "refine": {"scale": scale}}}
        mf = {**model_file, "meta": meta}
        ts = deploy.export_torchscript(mf, tmp_path / f"refine{scale}.ts")
        proc = _run(cli, "--model", ts, "--ops", _ops(), "--boxes", boxes_file, "--refine", "1", photo)
        assert proc.returncode == 0, proc.stderr
        got[scale] = np.array(json.loads(proc.stdout)["images"][0]["faces"][0]["landmarks"])
        lm = FaceLandmarker(model=mf, detector=None, backend="torch", refine=1)
        assert lm.landmark_rule[0] == scale
        want = lm.detect(img, boxes=[loose], box_type="tight")[0].landmarks
        assert np.abs(got[scale] - want).max() < TOLERANCE_PX, scale
    assert np.abs(got[1.3] - got[1.7]).max() > 10 * TOLERANCE_PX  # the square really changed
    for key, bad in (("refine", {"scale": -1.0}), ("landmarks", {"scale": "x", "center": "box"})):
        crop = {**model_file["meta"]["crop"], key: bad}
        crop["boxes"] = {k: v for k, v in crop["boxes"].items() if k != "tight"}  # tight falls back on landmarks
        ts = deploy.export_torchscript({**model_file, "meta": {**model_file["meta"], "crop": crop}}, tmp_path / "bad.ts")
        proc = _run(cli, "--model", ts, "--ops", _ops(), "--boxes", boxes_file, "--refine", "1", photo)
        assert proc.returncode == 2 and f"bad crop.{key} rule" in proc.stderr, proc.stderr


def test_large_photo_downscaled_like_python(cli, model_ts, tmp_path):
    """A photo larger than --max-side (default 640): detection runs on a copy with
    a 640-pixel longer side, in C++ as in HaarFaceDetector, and the boxes map back
    to the photo. Built so the downscale is an exact 2x2 average (both OpenCVs
    agree bit for bit): a real face at 640 px, upscaled 2x by pixel repetition."""
    real = _real_image()
    if real is None:
        pytest.skip("no 300-W data")
    img = cv2.imread(str(real[0]))
    s = 640 / max(img.shape[:2])
    small = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_CUBIC)
    big = cv2.resize(small, (2 * small.shape[1], 2 * small.shape[0]), interpolation=cv2.INTER_NEAREST)
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), big)
    proc = _run(cli, "--model", model_ts, "--ops", _ops(), "--cascade", _cascade(), path)
    assert proc.returncode == 0, proc.stderr
    boxes = np.array([f["box"] for f in json.loads(proc.stdout)["images"][0]["faces"]])
    try:
        from pyflm.face_detection import HaarFaceDetector
    except ImportError:
        pytest.skip("pyflm.face_detection not importable")
    py_boxes, _ = HaarFaceDetector(cascade=_cascade())(big)
    small_boxes, _ = HaarFaceDetector(cascade=_cascade())(small)
    assert len(boxes) >= 1
    np.testing.assert_allclose(boxes, py_boxes, rtol=0, atol=1e-9)
    np.testing.assert_allclose(boxes, (small_boxes + 0.5) * 2 - 0.5, rtol=0, atol=1e-9)
    proc = _run(cli, "--model", model_ts, "--ops", _ops(), "--cascade", _cascade(), "--max-side", "0", path)
    assert proc.returncode == 0, proc.stderr  # full resolution: runs (other boxes, same face)
    full = np.array([f["box"] for f in json.loads(proc.stdout)["images"][0]["faces"]])
    assert len(full) >= 1 and np.abs(full[0] - boxes[0]).max() < 0.25 * (boxes[0, 2] - boxes[0, 0])


# ------------------------------------------------------------------------- exit code 2
def test_usage_errors(cli, tmp_path):
    proc = _run(cli)
    assert proc.returncode == 2 and "--model FILE.ts is required" in proc.stderr and "usage:" in proc.stderr
    for args, message in ((["--model", "m.ts"], "no INPUT"), (["--model", "m.ts", "--bogus", "x.png"], "unknown option"),
                          (["--model", "m.ts", "--batch", "0", "x.png"], "--batch expects an integer"),
                          (["--model", "m.ts", "--threads", "two", "x.png"], "--threads expects an integer"),
                          (["--model", "m.ts", "--device", "tpu", "x.png"], "--device must be"),
                          (["--model", "m.ts", "--max-side", "16", "x.png"], "--max-side must be 0 (off) or >= 32"),
                          (["--model"], "--model needs a value")):
        proc = _run(cli, *args)
        assert proc.returncode == 2 and message in proc.stderr and "usage:" in proc.stderr, (args, proc.stderr)
    proc = _run(cli, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: pyflm-detect")


def test_bad_models_exit_2(cli, model_ts, tmp_path):
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    out = tmp_path / "out.json"
    proc = _run(cli, "--model", tmp_path / "nope.ts", "--ops", _ops(), "--cascade", _cascade(), "--json", out, image)
    assert proc.returncode == 2 and "model not found" in proc.stderr and str(tmp_path / "nope.ts") in proc.stderr
    corrupt = tmp_path / "corrupt.ts"
    corrupt.write_bytes(model_ts.read_bytes()[:5000])
    proc = _run(cli, "--model", corrupt, "--ops", _ops(), "--cascade", _cascade(), "--json", out, image)
    assert proc.returncode == 2 and "cannot load TorchScript model" in proc.stderr
    bare = tmp_path / "bare.ts"
    torch.jit.script(torch.nn.Identity()).save(str(bare))
    proc = _run(cli, "--model", bare, "--ops", _ops(), "--cascade", _cascade(), "--json", out, image)
    assert proc.returncode == 2 and "no pyflm metadata" in proc.stderr
    assert not out.exists() and _no_temp_files(tmp_path) == []


def test_setup_errors_exit_2(cli, model_ts, tmp_path):
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    if not torch.cuda.is_available():
        proc = _run(cli, "--model", model_ts, "--ops", _ops(), "--cascade", _cascade(), "--device", "cuda", image)
        assert proc.returncode == 2 and "CUDA is not available" in proc.stderr
    proc = _run(cli, "--model", model_ts, "--ops", tmp_path / "nope.so", image)
    assert proc.returncode == 2 and "op library not found" in proc.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYFLM_OPS_LIBRARY"}
    proc = _run(cli, "--model", model_ts, image, env=env)
    assert proc.returncode == 2 and "cannot find pyflm's op library" in proc.stderr
    proc = _run(cli, "--model", model_ts, "--cascade", tmp_path / "none.xml", image, env={**env, "PYFLM_OPS_LIBRARY": _ops()})
    assert proc.returncode == 2 and "Haar cascade file not found" in proc.stderr
    for content, message in (("{not json", "not JSON"), ('{"x.png": [[1, 2, 3]]}', "[x0, y0, x1, y1]"),
                             ('{"x.png": [[5, 5, 1, 9]]}', "x1 > x0"), ("[1, 2]", "expected {")):
        boxes = tmp_path / "boxes.json"
        boxes.write_text(content)
        proc = _run(cli, "--model", model_ts, "--ops", _ops(), "--boxes", boxes, image)
        assert proc.returncode == 2 and message in proc.stderr, (content, proc.stderr)
    proc = _run(cli, "--model", model_ts, "--ops", _ops(), "--cascade", _cascade(), "--json",
                tmp_path / "no" / "such" / "out.json", image)
    assert proc.returncode == 2 and "folder does not exist" in proc.stderr


def test_unknown_box_type_exit_2(cli, model_ts, tmp_path):
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    boxes = tmp_path / "boxes.json"
    boxes.write_text('{"x.png": []}')
    proc = _run(cli, "--model", model_ts, "--ops", _ops(), "--boxes", boxes, "--box-type", "yolo", image)
    assert proc.returncode == 2 and "no crop rule for box type 'yolo'" in proc.stderr and "tight" in proc.stderr


def test_console_command_passes_pythons_cascade():
    """pyflm-detect (the console command) and pyflm demo hand the binary
    opencv-python's cascade file, the one the Python detector reads, so the
    binary needs no Debian opencv-data; a --cascade of the user's wins."""
    from pyflm._cpp_tool import cascade_args

    args = cascade_args(["--model", "m.ts", "x.jpg"])
    assert args[0] == "--cascade" and Path(args[1]).is_file()
    assert Path(args[1]).samefile(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml")
    assert cascade_args(["--cascade", "mine.xml"]) == [] and cascade_args(["--cascade=mine.xml"]) == []
