"""pyflm.face_detection: detectors, the box convention, matching."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from pyflm.data import BoxToSquare
from pyflm.face_detection import (
    DETECTOR_NAMES,
    CallableDetector,
    DlibHogDetector,
    FaceDetector,
    HaarFaceDetector,
    box_iou,
    get_face_detector,
    match_detections,
    rects_to_boxes,
)


@pytest.fixture
def rng():
    return np.random.default_rng()


def _noise(rng, h=120, w=160):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _real_face():
    """(image BGR, tight landmark box) of one 300-W test image, or skip."""
    from pyflm.data import default_data_root, load_folder

    folder = default_data_root() / "300w" / "helen" / "testset"
    if not folder.is_dir():
        pytest.skip(f"no real face data at {folder}")
    s = load_folder(folder)[0]
    from pyflm.io import load_image

    lm = s.landmarks
    return load_image(s.image_path), np.r_[lm.min(0), lm.max(0)]


# ---------------------------------------------------------------- conventions


def test_rects_to_boxes_outer_pixel_edges():
    b = rects_to_boxes([[10, 20, 30, 40], [0, 0, 1, 1]])
    np.testing.assert_array_equal(b, [[9.5, 19.5, 39.5, 59.5], [-0.5, -0.5, 0.5, 0.5]])
    assert b.dtype == np.float64
    assert rects_to_boxes(()).shape == (0, 4)


def test_rect_covering_whole_image_is_image_extent():
    # a W x H rect at (0, 0) covers the image, whose extent is [-0.5, W - 0.5]
    np.testing.assert_array_equal(rects_to_boxes([[0, 0, 64, 48]]), [[-0.5, -0.5, 63.5, 47.5]])


# ---------------------------------------------------------------- Haar


def test_haar_on_noise_returns_empty_shapes(rng):
    det = HaarFaceDetector()
    assert det.name == "haar" and isinstance(det, FaceDetector)
    boxes, scores = det(np.zeros((80, 100, 3), np.uint8))
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    assert boxes.dtype == np.float64 and scores.dtype == np.float64
    boxes, scores = det(_noise(rng))
    assert boxes.shape[1] == 4 and scores.shape == (len(boxes),)


def test_haar_finds_real_face():
    img, gt = _real_face()
    boxes, scores = HaarFaceDetector()(img)
    assert len(boxes) >= 1
    assert np.all(np.diff(scores) <= 0) and np.all((scores > 0) & (scores < 1))
    assert box_iou(gt, boxes).max() > 0.4
    assert match_detections(boxes, gt[None], 0.3)[0] >= 0


def test_haar_max_side_maps_back_exactly_on_real_face():
    img, _ = _real_face()
    h, w = img.shape[:2]
    big = cv2.resize(img, (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)  # INTER_AREA / 2 undoes it exactly
    small_boxes, small_scores = HaarFaceDetector()(img)
    boxes, scores = HaarFaceDetector(max_side=max(h, w))(big)
    assert len(small_boxes) >= 1
    np.testing.assert_allclose(boxes, (small_boxes + 0.5) * 2 - 0.5, atol=1e-9)
    np.testing.assert_allclose(scores, small_scores)


class _FakeCascade:
    """Stands in for cv2.CascadeClassifier: records the call, returns fixed rects."""

    def __init__(self, rects, weights):
        self.rects, self.weights, self.calls = rects, weights, []

    def detectMultiScale3(self, grey, **kw):
        self.calls.append((grey, kw))
        return (np.asarray(self.rects, np.int32).reshape(-1, 4), np.full(len(self.rects), 25, np.int32),
                np.asarray(self.weights, np.float64).reshape(-1, 1))


def test_haar_calls_cascade_on_equalised_grey_and_sorts(rng):
    det = HaarFaceDetector(min_size=20, scale_factor=1.2, min_neighbors=3)
    fake = _FakeCascade([[5, 6, 20, 20], [40, 10, 30, 30]], [1.0, 6.0])
    det._cascade = fake
    img = _noise(rng, 90, 110)
    boxes, scores = det(img)
    grey, kw = fake.calls[0]
    np.testing.assert_array_equal(grey, cv2.equalizeHist(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)))
    assert kw["scaleFactor"] == 1.2 and kw["minNeighbors"] == 3 and kw["minSize"] == (20, 20)
    assert kw["outputRejectLevels"] is True
    np.testing.assert_array_equal(boxes, [[39.5, 9.5, 69.5, 39.5], [4.5, 5.5, 24.5, 25.5]])
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-np.array([6.0, 1.0]))))


class _NeighboursCascade(_FakeCascade):
    """A fake cascade whose answer depends on minNeighbors: {neighbours: rects}."""

    def __init__(self, by_neighbours):
        super().__init__([], [])
        self.by_neighbours = by_neighbours

    def detectMultiScale3(self, grey, **kw):
        self.calls.append((grey, kw))
        rects = self.by_neighbours.get(kw["minNeighbors"], [])
        return (np.asarray(rects, np.int32).reshape(-1, 4), np.full(len(rects), 25, np.int32),
                np.full((len(rects), 1), 2.0))


@pytest.mark.parametrize("fallback,found,want_calls,want_boxes", [
    (3, {5: [], 3: [[10, 12, 30, 30]]}, [5, 3], [[9.5, 11.5, 39.5, 41.5]]),  # nothing at 5: the fallback's box
    (3, {5: [[40, 10, 30, 30]], 3: [[10, 12, 30, 30]]}, [5], [[39.5, 9.5, 69.5, 39.5]]),  # found: no second pass
    (None, {5: [], 3: [[10, 12, 30, 30]]}, [5], []),  # fallback off
    (0, {5: [], 0: []}, [5, 0], []),  # nothing either way
])
def test_haar_fallback_neighbours(rng, fallback, found, want_calls, want_boxes):
    det = HaarFaceDetector(fallback_min_neighbors=fallback)
    det._cascade = fake = _NeighboursCascade(found)
    boxes, scores = det(_noise(rng, 90, 110))
    assert [kw["minNeighbors"] for _, kw in fake.calls] == want_calls
    np.testing.assert_array_equal(boxes.reshape(-1, 4), np.asarray(want_boxes, np.float64).reshape(-1, 4))
    assert scores.shape == (len(want_boxes),)
    if len(fake.calls) == 2:  # the same image, scale and minimum size both times
        np.testing.assert_array_equal(fake.calls[0][0], fake.calls[1][0])
        assert {k: v for k, v in fake.calls[0][1].items() if k != "minNeighbors"} == \
            {k: v for k, v in fake.calls[1][1].items() if k != "minNeighbors"}


def test_haar_fallback_default_and_checks(rng):
    assert HaarFaceDetector().fallback_min_neighbors == 3
    for bad in (-1, 2.5, "3", True):
        with pytest.raises(ValueError, match=r"fallback_min_neighbors must be an integer >= 0 or None, got "):
            HaarFaceDetector(fallback_min_neighbors=bad)
    with pytest.raises(ValueError, match=r"min_neighbors must be an integer >= 0, got 4\.0"):
        HaarFaceDetector(min_neighbors=4.0)
    for mn in (3, 2):  # a fallback that is not below min_neighbors has nothing more to find: one pass
        det = HaarFaceDetector(min_neighbors=mn)
        det._cascade = fake = _NeighboursCascade({})
        det(_noise(rng, 60, 60))
        assert [kw["minNeighbors"] for _, kw in fake.calls] == [mn]


def test_haar_fallback_finds_a_face_five_neighbours_miss():
    """A HELEN test photo whose frontal face no window group with 5 neighbours
    covers (one of the 300-W common set's 28 such photos): the fallback finds it."""
    from pyflm.data import default_data_root
    from pyflm.io import load_image
    from pyflm.data.readers import read_pts

    path = default_data_root() / "300w" / "helen" / "testset" / "2970690152_2.jpg"
    if not path.is_file():
        pytest.skip(f"no real face data at {path}")
    img = load_image(path)
    lm = read_pts(path.with_suffix(".pts"))
    tight = np.r_[lm.min(0), lm.max(0)][None]
    assert len(HaarFaceDetector(fallback_min_neighbors=None)(img)[0]) == 0
    boxes, _ = HaarFaceDetector()(img)
    assert match_detections(boxes, tight, 0.3)[0] >= 0


def test_haar_default_max_side(rng):
    det = HaarFaceDetector()
    assert det.max_side == 640
    fake = _FakeCascade([], [])
    det._cascade = fake
    det(_noise(rng, 960, 1280))
    assert fake.calls[0][0].shape == (480, 640)


def test_haar_max_side_downscales_and_maps_back(rng):
    det = HaarFaceDetector(min_size=40, max_side=100)
    fake = _FakeCascade([[10, 20, 30, 30]], [3.0])
    det._cascade = fake
    img = _noise(rng, 150, 300)  # -> 50 x 100
    boxes, _ = det(img)
    grey, kw = fake.calls[0]
    assert grey.shape == (50, 100) and kw["minSize"] == (13, 13)
    # edges 9.5 / 39.5 (x), 19.5 / 49.5 (y) in the small image; x' = (x + 0.5) * 3 - 0.5
    np.testing.assert_allclose(boxes, [[29.5, 59.5, 119.5, 149.5]])
    fake.calls.clear()
    det(_noise(rng, 60, 80))  # smaller than max_side: untouched
    assert fake.calls[0][0].shape == (60, 80) and fake.calls[0][1]["minSize"] == (40, 40)


def test_haar_arguments_and_cascade_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.xml"):
        HaarFaceDetector(cascade=tmp_path / "nope.xml")
    for i, text in enumerate(["", "hello", "<opencv_storage></opencv_storage>",
                              '<?xml version="1.0"?>\n<opencv_storage><x>1</x></opencv_storage>\n']):
        bad = tmp_path / f"bad{i}.xml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=f"bad{i}.xml"):
            HaarFaceDetector(cascade=bad)
    alt = HaarFaceDetector(cascade=cv2.data.haarcascades + "haarcascade_frontalface_alt2.xml")
    assert alt.cascade_path.name == "haarcascade_frontalface_alt2.xml"
    for kw in (dict(scale_factor=1.0), dict(min_neighbors=-1), dict(min_size=0), dict(max_side=8)):
        with pytest.raises(ValueError, match=next(iter(kw))):
            HaarFaceDetector(**kw)
    # sizes are whole pixels: a float is not truncated, a string is not parsed, a bool is no size
    for name, bad in (("min_size", 30.5), ("min_size", "30"), ("min_size", True), ("max_side", 640.0),
                      ("max_side", "640")):
        with pytest.raises(ValueError, match=rf"{name} must be an integer >= \d+ pixels or None, got "):
            HaarFaceDetector(**{name: bad})
    det = HaarFaceDetector(min_size=np.int64(30), max_side=np.int32(320))
    assert (det.min_size, det.max_side) == (30, 320) and type(det.min_size) is int


@pytest.mark.parametrize("image", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32),
                                   np.zeros((10, 10, 4), np.uint8), np.zeros((0, 10, 3), np.uint8), "x.jpg"])
def test_detector_input_validation(image):
    with pytest.raises(ValueError, match="uint8 BGR"):
        HaarFaceDetector()(image)
    with pytest.raises(ValueError, match="uint8 BGR"):
        CallableDetector(lambda im: [])(image)


# ---------------------------------------------------------------- dlib


def test_dlib_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    with pytest.raises(ImportError, match="pip install dlib-bin"):
        DlibHogDetector()
    with pytest.raises(ImportError, match="pip install dlib-bin"):
        get_face_detector("dlib")


class _Rect:
    def __init__(self, l, t, r, b):
        self._v = (l, t, r, b)

    def left(self):
        return self._v[0]

    def top(self):
        return self._v[1]

    def right(self):
        return self._v[2]

    def bottom(self):
        return self._v[3]


def _fake_dlib(monkeypatch, rects, scores):
    calls = []

    class _Det:
        def run(self, img, upsample, adjust):
            calls.append((img.copy(), upsample, adjust))
            return [_Rect(*r) for r in rects], list(scores), [0] * len(rects)

    mod = types.ModuleType("dlib")
    mod.get_frontal_face_detector = lambda: _Det()
    monkeypatch.setitem(sys.modules, "dlib", mod)
    return calls


def test_dlib_conversion_with_mock(monkeypatch, rng):
    calls = _fake_dlib(monkeypatch, [(10, 20, 49, 69), (0, 0, 9, 9)], [-0.2, 1.5])
    det = get_face_detector("dlib-hog", upsample=2, adjust_threshold=-0.5)
    assert isinstance(det, DlibHogDetector) and det.name == "dlib-hog"
    img = _noise(rng, 30, 40)
    boxes, scores = det(img)
    # inclusive pixel ranges -> outer edges; sorted by score
    np.testing.assert_array_equal(boxes, [[-0.5, -0.5, 9.5, 9.5], [9.5, 19.5, 49.5, 69.5]])
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-np.array([1.5, -0.2]))))
    sent, up, adj = calls[0]
    np.testing.assert_array_equal(sent, img[:, :, ::-1])  # dlib gets RGB
    assert up == 2 and adj == -0.5
    for bad in (-1, 1.5, "1"):
        with pytest.raises(ValueError, match=r"upsample must be an integer >= 0, got "):
            DlibHogDetector(upsample=bad)


def test_dlib_mock_no_faces(monkeypatch, rng):
    _fake_dlib(monkeypatch, [], [])
    boxes, scores = DlibHogDetector()(_noise(rng))
    assert boxes.shape == (0, 4) and scores.shape == (0,)


# ---------------------------------------------------------------- callables


def test_callable_detector_forms(rng):
    img = _noise(rng, 20, 20)
    b2 = [[1, 2, 5, 6], [0, 0, 3, 3]]
    boxes, scores = CallableDetector(lambda im: b2)(img)
    np.testing.assert_array_equal(boxes, b2)
    np.testing.assert_array_equal(scores, [1, 1])
    boxes, scores = CallableDetector(lambda im: (np.array(b2), [0.2, 0.9]))(img)
    np.testing.assert_array_equal(boxes, [b2[1], b2[0]])  # sorted by score
    np.testing.assert_array_equal(scores, [0.9, 0.2])
    boxes, scores = CallableDetector(lambda im: (1.0, 2.0, 4.0, 5.0))(img)  # one box
    np.testing.assert_array_equal(boxes, [[1, 2, 4, 5]])
    two = ((0, 0, 1, 1), (2, 2, 4, 4))  # a tuple of two boxes is not (boxes, scores)
    assert CallableDetector(lambda im: two)(img)[0].shape == (2, 4)
    for empty in ([], np.zeros((0, 4)), ([], []), None):
        boxes, scores = CallableDetector(lambda im, e=empty: e)(img)
        assert boxes.shape == (0, 4) and scores.shape == (0,)


def test_callable_detector_gets_the_image(rng):
    seen = []
    det = CallableDetector(lambda im: seen.append(im) or [], name="mine")
    img = _noise(rng)
    det(img)
    assert seen[0] is img and det.name == "mine" and "mine" in repr(det)


@pytest.mark.parametrize("out,match", [
    ([[0, 0, 1]], r"shape \(1, 3\)"),
    ([[0, 0, np.nan, 1]], "non-finite box"),
    ([[0, 0, 5, 5], [3, 3, 3, 9]], "box 1"),
    ([[5, 0, 1, 5]], "box 0"),
    (([[0, 0, 1, 1]], [0.5, 0.4]), "1 boxes but 2 scores"),
    (([[0, 0, 1, 1]], [np.inf]), "non-finite scores"),
    ([["a", 0, 1, 1]], "not numbers"),
    (([[0, 0, 1, 1]], ["x"]), "not numbers"),
])
def test_callable_detector_validation(rng, out, match):
    with pytest.raises(ValueError, match=match):
        CallableDetector(lambda im: out, name="bad-det")(_noise(rng, 10, 10))
    with pytest.raises(ValueError, match="bad-det"):
        CallableDetector(lambda im: out, name="bad-det")(_noise(rng, 10, 10))


def test_callable_detector_constructor_errors():
    with pytest.raises(TypeError, match="callable"):
        CallableDetector(42)
    with pytest.raises(ValueError, match="name"):
        CallableDetector(lambda im: [], name="")


# ---------------------------------------------------------------- factory


def test_get_face_detector():
    for name in ("default", "haar", "HAAR", " Haar "):
        assert isinstance(get_face_detector(name), HaarFaceDetector)
    assert get_face_detector("haar", min_neighbors=2).min_neighbors == 2
    det = HaarFaceDetector()
    assert get_face_detector(det) is det
    wrapped = get_face_detector(lambda im: [])
    assert isinstance(wrapped, CallableDetector) and wrapped.name == "custom"
    assert get_face_detector(lambda im: [], name="x").name == "x"
    assert get_face_detector(None) is None
    with pytest.raises(ValueError) as e:
        get_face_detector("retinaface")
    for name in DETECTOR_NAMES:
        assert name in str(e.value)
    assert "retinaface" in str(e.value)
    with pytest.raises(TypeError, match="int"):
        get_face_detector(3)


# ---------------------------------------------------------------- IoU and matching


def test_box_iou_values():
    a = [[0, 0, 10, 10]]
    np.testing.assert_allclose(box_iou(a, [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 5, 5]]),
                               [[1.0, 50 / 150, 0.0, 0.25]])
    assert box_iou([], a).shape == (0, 1) and box_iou(a, np.zeros((0, 4))).shape == (1, 0)


def test_match_is_greedy_by_iou():
    gt = [[0, 0, 10, 10], [0, 0, 10, 7.5]]
    dets = [[0, 0, 10, 7], [0, 0, 10, 5]]
    # IoU gt0: 0.7, 0.5; gt1: 0.933, 0.667. Greedy takes (gt1, det0) first, so gt0 gets det1
    # (matching gt by gt in order would give gt0 det0, gt1 det1)
    m = match_detections(dets, gt, min_iou=0.3)
    assert m.tolist() == [1, 0] and m.dtype == np.int64
    assert match_detections(dets, gt, min_iou=0.6).tolist() == [-1, 0]
    gt = [[0, 0, 10, 10], [2, 0, 12, 10]]
    # a single detection goes to the gt it overlaps most; the other gt stays unmatched
    assert match_detections([[2, 0, 12, 10]], gt).tolist() == [-1, 0]
    # below min_iou: unmatched
    assert match_detections([[8, 8, 18, 18]], [[0, 0, 10, 10]], min_iou=0.3).tolist() == [-1]
    assert match_detections([[8, 8, 18, 18]], [[0, 0, 10, 10]], min_iou=0.01).tolist() == [0]


def test_match_empty():
    assert match_detections(np.zeros((0, 4)), [[0, 0, 1, 1], [1, 1, 2, 2]]).tolist() == [-1, -1]
    assert match_detections([[0, 0, 1, 1]], np.zeros((0, 4))).shape == (0,)


def test_match_recovers_jittered_permutation(rng):
    n = 8
    xy = rng.permutation(np.arange(n) * 100.0)[:, None] + rng.uniform(0, 10, (n, 2))
    gt = np.hstack([xy, xy + rng.uniform(40, 60, (n, 2))])
    perm = rng.permutation(n)
    dets = gt[perm] + rng.normal(0, 2, (n, 4))
    extras = np.array([[5000.0, 5000, 5050, 5050], [-500, -500, -450, -450]])
    dets = np.vstack([dets, extras])[rng.permutation(n + 2)]
    m = match_detections(dets, gt, 0.3)
    assert np.all(m >= 0) and len(set(m.tolist())) == n
    np.testing.assert_allclose(dets[m], gt, atol=15)


# ---------------------------------------------------------------- training.fit_detector_crops


def _synthetic_split(tmp_path, rng, n=12):
    """n images (unique widths) with random 68-point faces in a folder of image + .pts pairs; returns
    (folder, {width: ground-truth square (cx, cy, side)})."""
    from pyflm.data import square_from_landmarks, write_pts
    from pyflm.io import write_image_atomic

    squares = {}
    for i in range(n):
        w, h = 200 + i, 220
        lm = rng.uniform([40, 50], [40 + rng.uniform(60, 100), 50 + rng.uniform(60, 110)], (68, 2))
        write_image_atomic(tmp_path / f"f{i:02d}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        write_pts(tmp_path / f"f{i:02d}.pts", lm)  # 1-based on disk, read back 0-based
        squares[w] = square_from_landmarks(lm, 1.3, "centroid")
    return tmp_path, squares


def test_fit_detector_crops_recovers_a_known_rule(tmp_path, rng):
    from training.fit_detector_crops import crop_quality, run

    folder, squares = _synthetic_split(tmp_path, rng)
    widths = sorted(squares)

    def fake_detector(img):
        w = img.shape[1]
        if w == widths[0]:
            return []  # one face missed
        cx, cy, s = squares[w]
        b = s / 1.2  # square box, shifted up-left of the true crop: dx = 0.12, dy = 0.06, scale = 1.2
        x0, y0 = cx - 0.1 * s - b / 2, cy - 0.05 * s - b / 2
        return [[x0, y0, x0 + b, y0 + b], [150, 150, 190, 190]], [0.9, 0.95]  # plus a distractor

    report, boxes = run(CallableDetector(fake_detector, name="fake"), split=str(folder), progress=False)
    rule = report["rule"]
    assert report["detector"] == "fake"
    np.testing.assert_allclose([rule["dx"], rule["dy"], rule["scale"]], [0.12, 0.06, 1.2], atol=1e-6)
    fit = report["fit"]
    assert fit["faces"] == 12 and fit["detected"] == 11 and fit["images"] == 12
    assert fit["detections"] == 22 and fit["unmatched_detections"] == 11
    assert fit["detector_crops"]["centre_error"]["p90"] < 1e-6 and fit["detector_crops"]["side_error"]["p90"] < 1e-6
    assert fit["tight_crops"]["side_error"]["p90"] < 1e-9  # tight rule: side is exactly 1.3 x max extent
    assert report["tight_rule"]["scale"] == pytest.approx(1.3)
    assert len(boxes) == 11 and all(Path(p).suffix == ".png" for p in boxes)
    assert crop_quality(BoxToSquare(), np.zeros((0, 4)), np.zeros((0, 68, 2))) == {"faces": 0}
    # --max-images keeps whole images spread over the split
    small, _ = run(CallableDetector(fake_detector, name="fake"), split=str(folder), max_images=3, progress=False)
    assert small["fit"]["images"] == 3


def test_fit_detector_crops_box_centre(tmp_path, rng):
    """--center box (models trained on box-centred crops): the tight rule is
    exactly the training crop (dx = dy = 0, scale 1.3) and a detector's rule is
    fitted to box-centred squares."""
    from pyflm.data import load_folder, square_from_landmarks
    from training.fit_detector_crops import run

    folder, _ = _synthetic_split(tmp_path, rng)
    squares = {s.image_path.stem: square_from_landmarks(s.landmarks, 1.3, "box") for s in load_folder(folder)}
    assert any(abs(a[1] - square_from_landmarks(s.landmarks, 1.3, "centroid")[1]) > 1  # the centres differ
               for s, a in zip(load_folder(folder), squares.values()))
    by_width = {200 + int(k[1:]): v for k, v in squares.items()}

    def fake_detector(img):
        cx, cy, side = by_width[img.shape[1]]
        b = side / 1.1
        x0, y0 = cx + 0.05 * side - b / 2, cy - b / 2
        return [[x0, y0, x0 + b, y0 + b]], [0.9]

    report, _ = run(CallableDetector(fake_detector, name="fake"), split=str(folder), progress=False, center="box")
    np.testing.assert_allclose([report["rule"][k] for k in ("dx", "dy", "scale")], [-0.055, 0, 1.1], atol=1e-6)
    np.testing.assert_allclose([report["tight_rule"][k] for k in ("dx", "dy", "scale")], [0, 0, 1.3], atol=1e-9)
    assert report["center"] == "box" and "'box'" in report["target"]
    assert report["fit"]["tight_crops"]["centre_error"]["p90"] < 1e-9
    with pytest.raises(ValueError, match="center"):
        run(CallableDetector(fake_detector, name="fake"), split=str(folder), progress=False, center="middle")


def test_fit_detector_crops_cli(tmp_path, rng, capsys):
    from training.fit_detector_crops import main

    folder, _ = _synthetic_split(tmp_path / "data", rng, n=3)
    # Haar finds no face on noise: a clear error, exit code 2, no report written
    out = tmp_path / "r.json"
    assert main(["--detector", "haar", "--split", str(folder), "--out", str(out), "--no-progress"]) == 2
    assert "no face" in capsys.readouterr().err and not out.exists()
    assert main(["--detector", "nope", "--split", str(folder), "--no-progress"]) == 2
    assert "valid names" in capsys.readouterr().err
