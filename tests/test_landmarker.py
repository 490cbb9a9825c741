"""FaceLandmarker / Face / draw_faces on the bundled model, with images made here
(the sample photo shipped in pyflm/assets, synthetic images, a video written with
OpenCV); one optional check on a real 300-W image when the data is present."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import pyflm
from pyflm import deploy
from pyflm.data.crops import Crop
from pyflm.drawing import draw_faces
from pyflm.landmarker import Face, FaceLandmarker, check_boxes

ASTRONAUT = Path(pyflm.__file__).parent / "assets" / "astronaut.jpg"
pytestmark = pytest.mark.skipif(not deploy.default_model_path().is_file(), reason="no bundled model file")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # one intra-op thread: faster on a small shared CPU, and no thread-count effects
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def lm():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no fitted 'haar' rule in the provisional model
        yield FaceLandmarker()


@pytest.fixture(scope="module")
def nodet():
    return FaceLandmarker(detector=None)


@pytest.fixture(scope="module")
def astronaut():
    img = cv2.imread(str(ASTRONAUT))
    assert img is not None
    return img


@pytest.fixture
def rng():
    return np.random.default_rng()


class CountingDetector:
    """Wraps a detector and counts its calls."""

    def __init__(self, inner, name=None):
        self.inner, self.calls = inner, 0
        self.name = name or inner.name

    def __call__(self, image):
        self.calls += 1
        return self.inner(image)


def _random_boxes(rng, n, w, h):
    x0 = rng.uniform(0, w * 0.6, n)
    y0 = rng.uniform(0, h * 0.6, n)
    s = rng.uniform(30, min(w, h) * 0.4, n)
    return np.c_[x0, y0, x0 + s, y0 + s * rng.uniform(0.8, 1.2, n)]


def _check_face(f: Face, k=68):
    assert f.box.dtype == np.float64 and f.box.shape == (4,)
    assert f.landmarks.dtype == np.float32 and f.landmarks.shape == (k, 2)
    assert f.scores.dtype == np.float32 and f.scores.shape == (k,)
    assert np.isfinite(f.landmarks).all() and np.isfinite(f.scores).all()
    assert isinstance(f.detection_score, float)


# ------------------------------------------------------------------ detection
def test_detect_sample_photo(lm, astronaut):
    faces = lm.detect(ASTRONAUT)
    assert len(faces) == 1
    f = faces[0]
    _check_face(f)
    x0, y0, x1, y1 = f.box
    # the face box of the photo (Haar: about 178..270 x 67..159); landmarks around it
    assert 150 < x0 < 200 and 50 < y0 < 90 and 60 < x1 - x0 < 130
    c = f.landmarks.mean(0)
    assert x0 < c[0] < x1 and y0 < c[1] < y1
    lo, hi = f.landmarks.min(0), f.landmarks.max(0)
    assert (hi - lo).min() > 0.5 * (x1 - x0)  # spread over the face, not collapsed
    # eyes above the nose tip above the mouth; left-right order of the eye corners
    assert f.landmarks[36:48, 1].mean() < f.landmarks[30, 1] < f.landmarks[48:68, 1].mean()
    assert f.landmarks[36, 0] < f.landmarks[45, 0]
    # path and array give the same result
    same = lm.detect(astronaut)
    np.testing.assert_array_equal(same[0].landmarks, f.landmarks)
    d = f.to_dict()
    assert set(d) == {"box", "detection_score", "landmarks", "scores"}
    assert len(d["landmarks"]) == 68 and len(d["landmarks"][0]) == 2 and len(d["scores"]) == 68
    json.dumps(d, allow_nan=False)


def test_input_order_grey_and_bgra(lm, astronaut):
    box = [[170.0, 60.0, 275.0, 165.0]]
    ref = lm.detect(astronaut, boxes=box)[0].landmarks
    rgb = np.ascontiguousarray(astronaut[..., ::-1])
    np.testing.assert_array_equal(lm.detect(rgb, boxes=box, input_order="rgb")[0].landmarks, ref)
    bgra = cv2.cvtColor(astronaut, cv2.COLOR_BGR2BGRA)
    np.testing.assert_allclose(lm.detect(bgra, boxes=box)[0].landmarks, ref, atol=1e-3)
    grey = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    g = lm.detect(grey, boxes=box)[0].landmarks
    assert np.abs(g - ref).mean() < 5.0  # colour matters a little, not a lot


def test_boxes_given_synthetic(nodet, rng):
    h, w = 240, 320
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    boxes = _random_boxes(rng, 3, w, h)
    faces = nodet.detect(img, boxes=boxes)
    assert len(faces) == 3
    for f, b in zip(faces, boxes):
        _check_face(f)
        np.testing.assert_array_equal(f.box, b)
        assert f.detection_score == 1.0
    one = nodet.detect(img, boxes=boxes[1])  # a single [4] box
    np.testing.assert_allclose(one[0].landmarks, faces[1].landmarks, atol=1e-4)
    assert nodet.detect(img, boxes=[]) == []
    assert nodet.detect(img, boxes=np.zeros((0, 4))) == []
    tb = nodet.detect(img, boxes=torch.tensor(boxes[:1]))  # CPU tensors work too
    np.testing.assert_allclose(tb[0].landmarks, faces[0].landmarks, atol=1e-4)


def test_multi_face_and_crops(nodet, astronaut):
    """Two copies of the photo side by side, one box each: two faces, each
    within its own crop square, the second shifted by exactly the image width."""
    w = astronaut.shape[1]
    pair = np.concatenate([astronaut, astronaut], axis=1)
    box = np.array([170.0, 60.0, 275.0, 165.0])
    faces = nodet.detect(pair, boxes=[box, box + [w, 0, w, 0]])
    assert len(faces) == 2
    rule = nodet.box_rules["tight"]
    for f in faces:
        cx, cy, side = rule(f.box)
        assert np.all(np.abs(f.landmarks - [cx, cy]) <= side / 2)
    np.testing.assert_allclose(faces[1].landmarks - faces[0].landmarks, [[w, 0]] * 68, atol=1e-3)


def test_batch_matches_single(nodet, rng):
    imgs = [rng.integers(0, 256, (rng.integers(100, 200), rng.integers(100, 200), 3), dtype=np.uint8)
            for _ in range(3)]
    boxes = [_random_boxes(rng, n, im.shape[1], im.shape[0]) for n, im in zip((2, 0, 3), imgs)]
    batch = nodet.detect_batch(imgs, boxes=boxes)
    assert [len(b) for b in batch] == [2, 0, 3]
    small = FaceLandmarker(model=deploy.load_model_file(deploy.default_model_path()),
                           detector=None, max_batch_size=2)
    for im, b, got in zip(imgs, boxes, batch):
        single = small.detect(im, boxes=b)
        for s, g in zip(single, got):
            np.testing.assert_allclose(s.landmarks, g.landmarks, atol=1e-3)
            np.testing.assert_allclose(s.scores, g.scores, atol=1e-5)
    with pytest.raises(ValueError, match="entries"):
        nodet.detect_batch(imgs, boxes=boxes[:2])


def test_detect_reads_the_callers_image_without_changing_it(lm, astronaut):
    # detect() works on the caller's array itself (no copy); it must leave it as it was
    img = astronaut.copy()
    faces = lm.detect(img)
    np.testing.assert_array_equal(img, astronaut)
    boxed = lm.detect_batch([img, img], boxes=[[f.box for f in faces], None])
    np.testing.assert_array_equal(img, astronaut)
    np.testing.assert_allclose(boxed[1][0].landmarks, faces[0].landmarks, atol=1e-4)
    for f in faces + boxed[0]:
        assert not any(np.shares_memory(a, img) for a in (f.box, f.landmarks, f.scores))


def test_no_face_gives_empty_list(lm):
    assert lm.detect(np.full((200, 240, 3), 127, np.uint8)) == []
    assert lm.detect_batch([np.zeros((64, 64, 3), np.uint8)] * 2) == [[], []]


def test_custom_detector_and_fallback_warning(rng):
    img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)

    class Det:
        name = "mydetector"

        def __call__(self, image):
            return np.array([[10.0, 20.0, 90.0, 100.0]]), np.array([0.7])

    lm = FaceLandmarker(detector=None)
    lm.detector = Det()
    with pytest.warns(UserWarning, match="mydetector"):
        faces = lm.detect(img)
    assert len(faces) == 1 and faces[0].detection_score == pytest.approx(0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per landmarker
        lm.detect(img)
        lm.detect(img, box_type="tight")


def test_box_type(nodet, rng):
    img = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"unknown box_type 'nope'.*'tight'"):
        nodet.detect(img, boxes=[[10, 10, 60, 60]], box_type="nope")
    with pytest.raises(ValueError, match="unknown box_type"):
        FaceLandmarker(detector=None, box_type="nope")


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("boxes,match", [
    ([[1, 2, 3]], "shape"),
    ([[[1, 2, 3, 4]]], "shape"),
    ([["a", "b", "c", "d"]], "real numbers"),
    ([[True, False, True, True]], "real numbers"),
    ([[0, 0, np.nan, 10]], "non-finite"),
    ([[0, 0, np.inf, 10]], "non-finite"),
    ([[10, 0, 5, 10]], "x1 > x0"),
    ([[0, 10, 10, 10]], "x1 > x0"),
    ([[0, 0, 10, 10], [1, 2]], "boxes"),
])
def test_bad_boxes(nodet, boxes, match):
    img = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match=match):
        nodet.detect(img, boxes=boxes)


def test_check_boxes_shapes():
    assert check_boxes([1, 2, 3, 4]).shape == (1, 4)
    assert check_boxes(np.arange(8, dtype=np.int16).reshape(2, 4) * [1, 1, 2, 2] + [0, 0, 1, 1]).dtype == np.float64


def test_bad_images(nodet, tmp_path):
    box = [[0, 0, 10, 10]]
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        nodet.detect(tmp_path / "nope.jpg", boxes=box)
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    with pytest.raises(ValueError, match="corrupt.jpg"):
        nodet.detect(bad, boxes=box)
    with pytest.raises(ValueError):
        nodet.detect(np.zeros((10, 10, 3), np.float32) + 100, boxes=box)  # float images must be in [0, 1]
    with pytest.raises(ValueError):
        nodet.detect(np.zeros((10, 10, 5), np.uint8), boxes=box)


def test_no_detector_needs_boxes(nodet):
    with pytest.raises(ValueError, match="boxes"):
        nodet.detect(np.zeros((50, 50, 3), np.uint8))
    with pytest.raises(ValueError, match="boxes"):
        nodet.detect_video([np.zeros((50, 50, 3), np.uint8)])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_gpu():
    with pytest.raises(RuntimeError, match="CUDA"):
        FaceLandmarker(device="cuda", detector=None)


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_batch_size"):
        FaceLandmarker(detector=None, max_batch_size=0)
    with pytest.raises(ValueError, match="num_threads"):
        FaceLandmarker(detector=None, num_threads=0)


def test_num_threads_sets_torch_and_opencv():
    import cv2

    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        for n in (1, 2):
            FaceLandmarker(detector=None, num_threads=n)
            assert (torch.get_num_threads(), cv2.getNumThreads()) == (n, n)
        torch.set_num_threads(3)
        cv2.setNumThreads(3)
        FaceLandmarker(detector=None)  # not given: both left as they are
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (3, 3)
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def test_bad_model_files(tmp_path):
    good = deploy.default_model_path().read_bytes()
    trunc = tmp_path / "truncated.pt"
    trunc.write_bytes(good[: len(good) // 2])
    with pytest.raises(deploy.ModelFileError, match="truncated.pt"):
        FaceLandmarker(model=trunc, detector=None)
    text = tmp_path / "notes.pt"
    text.write_text("not a model")
    with pytest.raises(deploy.ModelFileError, match="notes.pt"):
        FaceLandmarker(model=text, detector=None)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(deploy.ModelFileError, match="not a pyflm model"):
        FaceLandmarker(model=other, detector=None)
    with pytest.raises(deploy.ModelFileError, match="missing.pt"):
        FaceLandmarker(model=tmp_path / "missing.pt", detector=None)
    with pytest.raises(deploy.ModelFileError):
        FaceLandmarker(model={"format": "something"}, detector=None)


# ------------------------------------------------------------------ folders
def test_detect_folder_reports_bad_files(lm, tmp_path):
    cv2.imwrite(str(tmp_path / "a_face.jpg"), cv2.imread(str(ASTRONAUT)))
    cv2.imwrite(str(tmp_path / "b_blank.png"), np.full((80, 80, 3), 200, np.uint8))
    (tmp_path / "c_corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "d_text.png").write_text("hello, not a picture")
    (tmp_path / "e_readme.txt").write_text("ignored: not an image name")
    res = lm.detect_folder(tmp_path, progress=False)
    names = {p.name: r for p, r in res.items()}
    assert set(names) == {"a_face.jpg", "b_blank.png", "c_corrupt.jpg", "d_text.png"}
    assert len(names["a_face.jpg"]) == 1
    assert names["b_blank.png"] == []
    assert isinstance(names["c_corrupt.jpg"], Exception) and "c_corrupt.jpg" in str(names["c_corrupt.jpg"])
    assert isinstance(names["d_text.png"], Exception)
    with pytest.raises(FileNotFoundError):
        lm.detect_folder(tmp_path / "nope", progress=False)


# ------------------------------------------------------------------ video
def _moving_frames(img, n, step=(3, 2)):
    h, w = img.shape[:2]
    return [cv2.warpAffine(img, np.float64([[1, 0, step[0] * i], [0, 1, step[1] * i]]), (w, h)) for i in range(n)]


def _write_avi(path, frames, fps=10.0):
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(f)
    vw.release()


def test_detect_video_tracks_without_redetection(astronaut, tmp_path):
    frames = _moving_frames(astronaut[:320, 80:400], 6)
    path = tmp_path / "clip.avi"
    _write_avi(path, frames)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = FaceLandmarker()
        lm.detector = det = CountingDetector(lm.detector)
        out = list(lm.detect_video(path, smooth=False))
    assert [i for i, _, _ in out] == list(range(6))
    assert out[1][1] == pytest.approx(0.1, abs=1e-3)  # t = index / fps
    assert all(len(faces) == 1 for _, _, faces in out)
    assert det.calls == 1  # first frame only; the rest tracked from landmarks
    first, last = out[0][2][0].landmarks, out[-1][2][0].landmarks
    shift = (last - first).mean(0)
    np.testing.assert_allclose(shift, [15, 10], atol=2.5)  # 5 frames x (3, 2) px

    # the same frames as an iterable, re-detecting every 3rd frame
    det.calls = 0
    out2 = list(lm.detect_video(frames, smooth=False, redetect_every=3, fps=10.0))
    assert len(out2) == 6 and det.calls == 2  # frames 0, 3

    # smoothing: the face jumps by 8 px at frame 3; the filter (beta 0: a plain
    # low-pass at 0.5 Hz, 30 fps) passes the first frame and damps the jump
    jump = [frames[0]] * 3 + _moving_frames(frames[0], 2, step=(8, 0))[1:] * 2
    raw = np.stack([f[0].landmarks for _, _, f in lm.detect_video(jump, smooth=False)])
    smooth = np.stack([f[0].landmarks for _, _, f in lm.detect_video(jump, smooth=True, min_cutoff=0.5, beta=0.0)])
    np.testing.assert_allclose(smooth[0], raw[0])
    raw_jump = (raw[3] - raw[2]).mean(0)[0]
    assert raw_jump == pytest.approx(8, abs=2)
    assert 0 < (smooth[3] - smooth[2]).mean(0)[0] < 0.3 * raw_jump


def test_detect_video_lost_and_found(astronaut):
    face = astronaut[:320, 80:400]
    blank = np.full_like(face, 90)
    frames = [face, face, blank, blank, face]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = FaceLandmarker()
        lm.detector = det = CountingDetector(lm.detector)
        out = [faces for _, _, faces in lm.detect_video(frames, smooth=True)]
    assert [len(f) for f in out] == [1, 1, 0, 0, 1]
    # frame 2: the track is lost -> detector; frame 3: nothing tracked -> detector; frame 4 finds it
    assert det.calls == 4


def test_detect_video_errors(lm, nodet, tmp_path):
    with pytest.raises(FileNotFoundError):
        lm.detect_video(tmp_path / "missing.avi")
    with pytest.raises(ValueError, match="redetect_every"):
        lm.detect_video([], redetect_every=-1)
    box = [[100, 20, 260, 180]]
    frames = [np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)] * 2
    out = list(nodet.detect_video(frames, boxes=box, min_score=0.0))
    assert [len(f) for _, _, f in out] == [1, 1]


# ------------------------------------------------------------------ export, crops, drawing
@pytest.mark.skipif(not pyflm.HAS_OPS, reason="export needs the compiled op library")
def test_export_matches_eager(tmp_path, rng):
    mf = deploy.load_model_file(deploy.default_model_path())
    ts = deploy.export_torchscript(mf, tmp_path / "model.ts")
    module, meta = deploy.load_torchscript(ts)
    assert meta["input_size"] == mf["meta"]["input_size"]
    eager = deploy.build_predictor(mf)
    crops = torch.from_numpy(rng.integers(0, 256, (3, meta["input_size"], meta["input_size"], 3), dtype=np.uint8))
    with torch.inference_mode():
        (c1, s1), (c2, s2) = eager(crops), module(crops)
    assert (c1 - c2).abs().max() < 1e-3
    assert (s1 - s2).abs().max() < 1e-4
    # the landmarker runs an exported file too, with the same results
    img = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    box = [[30, 20, 130, 120]]
    a = FaceLandmarker(model=ts, detector=None).detect(img, boxes=box)[0]
    b = FaceLandmarker(model=mf, detector=None).detect(img, boxes=box)[0]
    assert np.abs(a.landmarks - b.landmarks).max() < 1e-3


def test_crop_round_trip(rng):
    for _ in range(5):
        crop = Crop.from_square(*rng.uniform(-50, 500, 2), rng.uniform(10, 400), 160)
        p = rng.uniform(-100, 600, (68, 2))
        np.testing.assert_allclose(crop.to_image(crop.to_crop(p)), p, atol=1e-9)


def test_draw_faces(astronaut, nodet):
    faces = nodet.detect(astronaut, boxes=[[170.0, 60.0, 275.0, 165.0]])
    out = draw_faces(astronaut, faces, label_scores=True)
    assert out.shape == astronaut.shape and out.dtype == np.uint8
    assert not np.shares_memory(out, astronaut)
    diff = np.any(out != astronaut, axis=2)
    assert diff[60:170, 165:280].sum() > 500 and diff[300:, :].sum() == 0  # drawn on the face only
    x, y = np.round(faces[0].landmarks[30]).astype(int)
    assert tuple(out[y, x]) != tuple(astronaut[y, x])
    grey = draw_faces(cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY), faces)
    assert grey.shape == astronaut.shape
    with pytest.raises(ValueError):
        draw_faces(astronaut.astype(np.float32), faces)


def test_repr_and_package_exports(nodet):
    assert pyflm.FaceLandmarker is FaceLandmarker and pyflm.Face is Face
    r = repr(nodet)
    assert "default.pt" in r and f"input_size={nodet.meta['input_size']}" in r and "detector=None" in r
    assert nodet.input_size == nodet.meta["input_size"]


# ------------------------------------------------------------------ real data (optional)
def _real_sample():
    try:
        from pyflm.data import load_split

        return load_split("lfpw-test")[0]
    except (FileNotFoundError, ValueError):
        return None


def test_real_300w_image_tight_box(nodet):
    s = _real_sample()
    if s is None:
        pytest.skip("300-W data not present")
    from pyflm.metrics import nme

    box = np.r_[s.landmarks.min(0), s.landmarks.max(0)]
    f = nodet.detect(s.image_path, boxes=[box], box_type="tight")[0]
    e = float(nme(f.landmarks, s.landmarks)[0])
    assert math.isfinite(e) and e < 0.15


def test_model_without_box_rules_gets_tight(rng):
    mf = deploy.load_model_file(deploy.default_model_path())
    mf["meta"] = {k: v for k, v in mf["meta"].items() if k != "crop"}
    lm = FaceLandmarker(model=mf, detector=None)
    assert lm.box_rules["tight"].scale == 1.3 and lm.landmark_rule == (1.3, "centroid")
    img = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
    assert len(lm.detect(img, boxes=[[10, 10, 60, 60]])) == 1


# ------------------------------------------------------------------ flip test
FACE_BOX = np.array([177.5, 66.5, 269.5, 158.5])  # the sample photo's face


@pytest.fixture(scope="module")
def flipped():
    return FaceLandmarker(detector=None, flip_test=True)


def _face_crops(lm, img, rng, n=3) -> torch.Tensor:
    """n crops of the sample face, each from a randomly shifted box."""
    return torch.from_numpy(np.stack([lm._prepare(img, [FACE_BOX + rng.uniform(-6, 6, 4)], "tight", "bgr").images[0]
                                      for _ in range(n)]))


def _offset(lm) -> np.ndarray:
    """The model's calibration offset [68, 2] (zeros when it has none)."""
    off = deploy.decode_offset(lm.meta)
    return np.zeros((lm.num_landmarks, 2)) if off is None else off.double().numpy()


def test_flip_test_averages_the_mirrored_prediction(nodet, flipped, astronaut, rng):
    """The average of the plain pass and the mirrored pass mapped back, whose
    calibration offset is then its own again (pyflm.deploy.flip_shift)."""
    from pyflm.data.schemes import get_scheme

    sch, s = get_scheme("68"), nodet.input_size
    x = _face_crops(nodet, astronaut, rng)
    plain, plain_scores = (t.double().numpy() for t in nodet.predictor(x))
    mirror, mirror_scores = (t.double().numpy() for t in nodet.predictor(x.flip(2)))
    got, scores = flipped._predict(x)
    shift = deploy.flip_shift(torch.from_numpy(_offset(nodet)), sch.mirror_array).numpy()
    want = (plain + sch.flip_landmarks(mirror, s) + shift) / 2
    np.testing.assert_allclose(got.double().numpy(), want, atol=1e-3)
    np.testing.assert_allclose(scores.double().numpy(), (plain_scores + mirror_scores[:, sch.mirror_array]) / 2,
                               atol=1e-5)


def test_flip_test_is_mirror_equivariant(nodet, flipped, astronaut, rng):
    """Crops mirrored -> landmarks mirrored (and re-ordered), to float rounding,
    once the model's calibration offset o (not mirror-symmetric: 300-W's
    protocol is not) is taken off: flip(F(mirrored) - o) = F(x) - o. The plain
    model is visibly not, so this fails if flip_test did nothing. (On crops,
    where mirroring is exact: cv2 rounds sampling positions to 1/32 px, so a
    mirrored image's crop is not exactly the mirrored crop.)"""
    from pyflm.data.schemes import get_scheme

    sch, s = get_scheme("68"), nodet.input_size
    x = _face_crops(nodet, astronaut, rng)
    o = _offset(nodet)
    for lm, tol in ((flipped, 1e-3), (nodet, None)):
        a = lm._predict(x)[0].double().numpy() - o
        b = lm._predict(x.flip(2))[0].double().numpy() - o
        err = np.abs(sch.flip_landmarks(b, s) - a).max()
        if tol is None:
            assert err > 0.05, f"plain model mirror-equivariant to {err} px: the flip test check is vacuous"
        else:
            assert err < tol, err


def test_flip_test_batches_and_empty(flipped, astronaut, rng):
    boxes = [FACE_BOX + rng.uniform(-6, 6, 4) for _ in range(5)]
    lm = FaceLandmarker(detector=None, flip_test=True, max_batch_size=2)
    many = lm.detect(astronaut, boxes=boxes)
    for f, box in zip(many, boxes):
        one = flipped.detect(astronaut, boxes=[box])[0]
        np.testing.assert_allclose(f.landmarks, one.landmarks, atol=2e-3)
        _check_face(f)
    assert flipped.detect(astronaut, boxes=np.zeros((0, 4))) == []
    assert "flip_test=True" in repr(flipped)


def test_flip_test_needs_a_mirror_permutation():
    from tests.test_deploy import _tiny_model_file

    mf = _tiny_model_file(k=7)
    assert FaceLandmarker(model=mf, detector=None).flip_test is False
    with pytest.raises(ValueError, match="mirror permutation.*7 points"):
        FaceLandmarker(model=mf, detector=None, flip_test=True)
    mf = _tiny_model_file(k=68)
    mf["meta"]["scheme"] = "custom"  # unknown name: the 68-point count still finds iBUG's mirror
    assert FaceLandmarker(model=mf, detector=None, flip_test=True).flip_test


# ------------------------------------------------------------------ refinement
def test_refine_recrops_from_the_landmarks(nodet, astronaut, rng):
    """refine=N: N more passes, each from the refinement square of the previous
    landmarks (for this model: a square around their box's centre, meta.crop.refine's
    scale x its larger side); boxes stay."""
    from pyflm.data.crops import BoxToSquare, tight_box

    scale, center = nodet.landmark_rule
    assert center == "box" and scale > nodet.training_rule[0]  # the bundled model's fitted, larger square
    by_hand = FaceLandmarker(detector=None, refine=0)
    by_hand.box_rules["refine-square"] = BoxToSquare(0.0, 0.0, scale, "max")  # the round's crop as a box rule
    loose = FACE_BOX + np.r_[-18, -10, 14, 22] + rng.uniform(-3, 3, 4)  # a detector-like, off-centre box
    want = nodet.detect(astronaut, boxes=[loose])
    for rounds in (1, 2):
        want = by_hand.detect(astronaut, boxes=[tight_box(want[0].landmarks)], box_type="refine-square")
        lm = FaceLandmarker(detector=None, refine=rounds)
        got = lm.detect(astronaut, boxes=[loose, FACE_BOX])
        # by hand the chain goes through float32 landmarks; cv2 rounds sampling positions to
        # 1/32 px, so a 1e-5 px shift of a crop can move a point by a few thousandths
        np.testing.assert_allclose(got[0].landmarks, want[0].landmarks, atol=0.05)  # seen: <= 0.004
        np.testing.assert_allclose(got[0].box, loose)
        _check_face(got[1])
    plain = nodet.detect(astronaut, boxes=[loose])[0]
    assert np.abs(plain.landmarks - got[0].landmarks).max() > 1.0  # the loose box's crop mattered (seen: >= 2.6)
    assert lm.detect(astronaut, boxes=np.zeros((0, 4))) == [] and "refine=2" in repr(lm)
    for bad in (-1, 11, 1.0, True):
        with pytest.raises(ValueError, match="refine"):
            FaceLandmarker(detector=None, refine=bad)


def test_refine_auto_rounds_by_box_type(astronaut, rng):
    """refine="auto" (the default): AUTO_REFINE_ROUNDS rounds for faces from the
    face detector and from boxes of a non-tight box_type, none for tight boxes;
    one detect_batch call mixes both, face by face."""
    from pyflm.face_detection import CallableDetector
    from pyflm.landmarker import AUTO_REFINE_ROUNDS

    assert AUTO_REFINE_ROUNDS == 2
    loose = FACE_BOX + np.r_[-18, -10, 14, 22] + rng.uniform(-3, 3, 4)
    det = CallableDetector(lambda img: ([loose], [0.9]), name="haar")
    auto = FaceLandmarker(detector=det)
    assert auto.refine == "auto" and "refine='auto'" in repr(auto)
    assert [auto.refine_rounds(t) for t in ("tight", "haar", None)] == [0, 2, 2]
    assert FaceLandmarker(detector=None, refine=1).refine_rounds("tight") == 1
    by_rounds = {n: FaceLandmarker(detector=None, refine=n) for n in (0, 2)}

    def same(a, b):  # the same crops through the same network: equal to float rounding
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)

    tight_want = by_rounds[0].detect(astronaut, boxes=[FACE_BOX])[0]
    haar_want = by_rounds[2].detect(astronaut, boxes=[loose], box_type="haar")[0]
    assert np.abs(tight_want.landmarks - by_rounds[2].detect(astronaut, boxes=[FACE_BOX])[0].landmarks).max() > 0.01
    assert np.abs(haar_want.landmarks - by_rounds[0].detect(astronaut, boxes=[loose], box_type="haar")[0]
                  .landmarks).max() > 0.5  # the rounds matter for a loose box (seen: >= 2)
    same(auto.detect(astronaut, boxes=[FACE_BOX])[0], tight_want)
    same(auto.detect(astronaut, boxes=[loose], box_type="haar")[0], haar_want)
    detected = auto.detect(astronaut)[0]
    same(detected, haar_want)
    np.testing.assert_allclose(detected.box, loose)
    assert detected.detection_score == pytest.approx(0.9)
    mixed = auto.detect_batch([astronaut, astronaut, astronaut], boxes=[None, [FACE_BOX], [loose, FACE_BOX]])
    same(mixed[0][0], haar_want)
    same(mixed[1][0], tight_want)
    same(mixed[2][1], tight_want)
    for bad in ("Auto", "2", None):
        with pytest.raises(ValueError, match="refine"):
            FaceLandmarker(detector=None, refine=bad)


@pytest.mark.skipif(not deploy.bundled_model_path("fast").is_file(), reason="no bundled fast model file")
def test_fast_bundled_model(nodet, astronaut):
    """model="fast": the bundled 128 px model; the sample face's landmarks land
    near the default model's (0.77 px apart on average when written; a wrong input
    size or decoding stride would scale them about the crop's centre, many pixels
    off), and its card carries its accuracy."""
    fast = FaceLandmarker(model="fast", detector=None)
    assert fast.input_size == 128 and fast.model_source == str(deploy.bundled_model_path("fast"))
    assert fast.meta["metrics"]["gt_crops"]["common"]["nme"] < 0.05
    box = [[177.5, 66.5, 269.5, 158.5]]
    a, b = nodet.detect(astronaut, boxes=box)[0], fast.detect(astronaut, boxes=box)[0]
    assert np.abs(b.landmarks - a.landmarks).mean() < 1.5  # px, a 92 px face
    assert FaceLandmarker(model=str(deploy.bundled_model_path("fast")), detector=None).input_size == 128


@pytest.mark.parametrize("model", ["default", "fast"])
def test_dlib_detector_uses_its_fitted_rule(model, astronaut):
    """detector="dlib": dlib's HOG boxes are cropped by the model's "dlib-hog"
    rule (no tight-rule warning), and after the refinement rounds the sample face's
    landmarks land where Haar's box leads (0.09 / 0.19 px apart on average for
    default / fast when written; one pass without the rounds: 0.48 / 0.39 px, and
    0.65 / 0.61 px from the tight rule)."""
    pytest.importorskip("dlib")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hog = FaceLandmarker(model=model, detector="dlib")
        face = hog.detect(astronaut)[0]  # the best-scored box; dlib also boxes the suit's mission patch
    assert hog.detector.name == "dlib-hog" and hog._detector_rule() is hog.box_rules["dlib-hog"]
    haar = FaceLandmarker(model=model, detector="haar").detect(astronaut)[0]
    assert np.abs(face.landmarks - haar.landmarks).mean() < 0.5
