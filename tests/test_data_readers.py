"""Readers, landmark schemes and splits (pyflm.data)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import pyflm
from pyflm.data import (
    SCHEMES,
    get_scheme,
    load_folder,
    load_split,
    parse_wflw_line,
    read_aflw2000_mat,
    read_coco_keypoints,
    read_cofw_mat,
    read_landmarks_csv,
    read_pts,
    read_wflw_annotations,
    write_pts,
)


def data_root() -> Path:
    env = os.environ.get("PYFLM_DATA")
    return Path(env) if env else Path(pyflm.__file__).parents[1].parent / "shared" / "data"


DATA = data_root()
needs_data = pytest.mark.skipif(not (DATA / "300w").is_dir(), reason=f"no landmark data at {DATA}")
needs_fixtures = pytest.mark.skipif(not (DATA / "fixtures").is_dir(), reason=f"no fixtures at {DATA}")


@pytest.fixture
def rng():
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed={seed}")
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------
# .pts
# ---------------------------------------------------------------------------

PTS_WITH_HEADER = "version: 1\nn_points:  3\n{\n1 2\n10.5 20.25\n3 4\n}\n"


def test_pts_header_one_based(tmp_path):
    p = tmp_path / "a.pts"
    p.write_text(PTS_WITH_HEADER)
    pts = read_pts(p)
    assert pts.dtype == np.float64 and pts.shape == (3, 2)
    np.testing.assert_array_equal(pts, [[0, 1], [9.5, 19.25], [2, 3]])
    np.testing.assert_array_equal(read_pts(p, one_based=False), [[1, 2], [10.5, 20.25], [3, 4]])


def test_pts_without_header(tmp_path):
    p = tmp_path / "b.pts"
    p.write_text("1 2\n\n10.5 20.25\n3 4\n")
    np.testing.assert_array_equal(read_pts(p), [[0, 1], [9.5, 19.25], [2, 3]])
    p.write_text("{\n1 2\n3 4\n}\n")  # braces without header
    np.testing.assert_array_equal(read_pts(p), [[0, 1], [2, 3]])


def test_pts_round_trip(tmp_path, rng):
    pts = rng.uniform(-5, 300, size=(68, 2))
    write_pts(tmp_path / "c.pts", pts, precision=12)
    np.testing.assert_allclose(read_pts(tmp_path / "c.pts", num_points=68), pts, atol=1e-9)
    assert (tmp_path / "c.pts").read_text().startswith("version: 1\nn_points: 68\n{\n")


@pytest.mark.parametrize(
    "text, match",
    [
        ("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n", r"n_points 3 but the file holds 2"),
        ("version: 1\nn_points: 2\n{\n1 2\n3 x\n}\n", r"\.pts:5: not numbers"),
        ("version: 1\nn_points: 2\n{\n1 2\n3 4 5\n}\n", r"\.pts:5: expected 'x y'"),
        ("version: 1\nn_points: 2\n{\n1 2\n3 4\n", r"missing closing"),
        ("version: 1\nn_points: two\n{\n1 2\n}\n", r"\.pts:2: bad n_points"),
        ("version: 1\nn_points: 1\n{\n1 2\n}\n5 6\n", r"\.pts:6: content after"),
        ("version: 1\nn_points: 1\n{\nnan 2\n}\n", r"\.pts:4: landmark values are not finite"),
        ("", r"no points"),
    ],
)
def test_pts_malformed(tmp_path, text, match):
    p = tmp_path / "bad.pts"
    p.write_text(text)
    with pytest.raises(ValueError, match=match) as ei:
        read_pts(p)
    assert "bad.pts" in str(ei.value)


def test_pts_num_points_checked(tmp_path):
    p = tmp_path / "a.pts"
    p.write_text(PTS_WITH_HEADER)
    with pytest.raises(ValueError, match="expected 68 points, found 3"):
        read_pts(p, num_points=68)


# ---------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------


def test_csv_interleaved_and_planar(tmp_path, rng):
    pts = rng.uniform(0, 200, size=(2, 68, 2))
    lines = ["name," + ",".join(f"v{i}" for i in range(136))]
    lines += [f"img{k}.jpg," + ",".join(repr(float(v)) for v in pts[k].reshape(-1)) for k in range(2)]
    (tmp_path / "a.csv").write_text("\n".join(lines) + "\n")
    out = read_landmarks_csv(tmp_path / "a.csv")
    assert list(out) == ["img0.jpg", "img1.jpg"]
    np.testing.assert_array_equal(out["img1.jpg"], pts[1])
    planar = [f"img{k}.jpg," + ",".join(repr(float(v)) for v in pts[k].T.reshape(-1)) for k in range(2)]
    (tmp_path / "b.csv").write_text("\n".join(planar) + "\n")
    out = read_landmarks_csv(tmp_path / "b.csv", layout="planar", one_based=True)
    np.testing.assert_allclose(out["img0.jpg"], pts[0] - 1, atol=1e-12)


def test_csv_malformed(tmp_path):
    good = "a.jpg," + ",".join(["1"] * 136)
    (tmp_path / "short.csv").write_text(good + "\nb.jpg," + ",".join(["1"] * 135) + "\n")
    with pytest.raises(ValueError, match=r"short\.csv:2: expected a name and 136 values, got 136 fields"):
        read_landmarks_csv(tmp_path / "short.csv")
    (tmp_path / "nan.csv").write_text(good + "\nb.jpg," + ",".join(["1"] * 135 + ["oops"]) + "\n")
    with pytest.raises(ValueError, match=r"nan\.csv:2: non-numeric"):
        read_landmarks_csv(tmp_path / "nan.csv")
    (tmp_path / "dup.csv").write_text(good + "\n" + good + "\n")
    with pytest.raises(ValueError, match=r"dup\.csv:2: duplicate name"):
        read_landmarks_csv(tmp_path / "dup.csv")


# ---------------------------------------------------------------------------
# WFLW lines
# ---------------------------------------------------------------------------


def _wflw_line(pts, box, attrs, name):
    return " ".join([f"{v:.6f}" for v in pts.reshape(-1)] + [str(b) for b in box] + [str(a) for a in attrs] + [name])


def test_wflw_lines(tmp_path, rng):
    pts = rng.uniform(0, 500, size=(98, 2))
    line1 = _wflw_line(pts, [10, 20, 300, 310], [1, 0, 0, 1, 0, 1], "51--Dresses/51_Dresses_wearingdress_51_377.jpg")
    line2 = _wflw_line(pts + 1, [11, 21, 301, 311], [0, 0, 0, 0, 1, 0], "0--Parade/a.jpg")
    (tmp_path / "list_98pt_rect_attr_test.txt").write_text(line1 + "\n" + line2 + "\n")
    anns = read_wflw_annotations(tmp_path / "list_98pt_rect_attr_test.txt")
    assert len(anns) == 2
    a = anns[0]
    assert a.image == "51--Dresses/51_Dresses_wearingdress_51_377.jpg"
    assert a.landmarks.shape == (98, 2) and a.landmarks.dtype == np.float64
    np.testing.assert_allclose(a.landmarks, pts, atol=1e-6)
    np.testing.assert_array_equal(a.box, [10, 20, 300, 310])
    assert a.attributes == dict(pose=1, expression=0, illumination=0, make_up=1, occlusion=0, blur=1)
    assert anns[1].attributes["occlusion"] == 1
    np.testing.assert_allclose(anns[1].landmarks, pts + 1, atol=1e-6)


def test_wflw_malformed(tmp_path):
    line = " ".join(["1.0"] * 200 + ["0"] * 6 + ["x.jpg"])
    parse_wflw_line(line)
    (tmp_path / "w.txt").write_text(line + "\n" + " ".join(["1.0"] * 199 + ["0"] * 6 + ["x.jpg"]) + "\n")
    with pytest.raises(ValueError, match=r"w\.txt:2: expected 207 fields"):
        read_wflw_annotations(tmp_path / "w.txt")
    (tmp_path / "v.txt").write_text(" ".join(["1.0"] * 199 + ["abc"] + ["0"] * 6 + ["x.jpg"]) + "\n")
    with pytest.raises(ValueError, match=r"v\.txt:1: non-numeric"):
        read_wflw_annotations(tmp_path / "v.txt")


# ---------------------------------------------------------------------------
# .mat (COFW, AFLW2000-3D): scipy may be absent
# ---------------------------------------------------------------------------


def test_mat_without_scipy_names_package(tmp_path, monkeypatch):
    f = tmp_path / "x.mat"
    f.write_bytes(b"MATLAB 5.0 MAT-file" + b" " * 109 + b"\x00" * 16)
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(ImportError, match=r"x\.mat.*'scipy' package"):
        read_cofw_mat(f)
    with pytest.raises(ImportError, match="'scipy' package"):
        read_aflw2000_mat(f)


def test_mat_v73_without_h5py_names_package(tmp_path, monkeypatch):
    f = tmp_path / "COFW_train_color.mat"
    f.write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64" + b" " * 90)
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="'h5py' package"):
        read_cofw_mat(f)


def test_cofw_and_aflw2000_mat(tmp_path, rng):
    sio = pytest.importorskip("scipy.io")
    phis = np.hstack([rng.uniform(1, 200, (5, 58)), rng.integers(0, 2, (5, 29)).astype(float)])
    boxes = rng.uniform(1, 100, (5, 4))
    sio.savemat(tmp_path / "COFW_test_color.mat", {"phisT": phis, "bboxesT": boxes})
    out = read_cofw_mat(tmp_path / "COFW_test_color.mat")
    assert out["landmarks"].shape == (5, 29, 2)
    np.testing.assert_allclose(out["landmarks"][:, :, 0], phis[:, :29] - 1)
    np.testing.assert_allclose(out["landmarks"][:, :, 1], phis[:, 29:58] - 1)
    np.testing.assert_array_equal(out["occluded"], phis[:, 58:] > 0.5)
    pt3d = np.vstack([rng.uniform(1, 400, (2, 68)), rng.normal(size=(1, 68))])
    sio.savemat(tmp_path / "image00002.mat", {"pt3d_68": pt3d, "Pose_Para": np.zeros((1, 7))})
    np.testing.assert_allclose(read_aflw2000_mat(tmp_path / "image00002.mat"), pt3d[:2].T - 1)
    sio.savemat(tmp_path / "bad.mat", {"other": np.zeros(3)})
    with pytest.raises(ValueError, match=r"bad\.mat: no 'pt3d_68'"):
        read_aflw2000_mat(tmp_path / "bad.mat")
    with pytest.raises(ValueError, match=r"bad\.mat: no 'phisTr' / 'phisT' array \(keys: \['other'\]\)"):
        read_cofw_mat(tmp_path / "bad.mat")
    sio.savemat(tmp_path / "short.mat", {"phisT": phis[:, :80]})
    with pytest.raises(ValueError, match=r"short\.mat: 'phisT' has shape \(5, 80\), expected \[M, 87\]"):
        read_cofw_mat(tmp_path / "short.mat")
    nan = phis.copy()
    nan[2, 3] = np.nan
    sio.savemat(tmp_path / "nan.mat", {"phisT": nan})
    with pytest.raises(ValueError, match=r"nan\.mat"):
        read_cofw_mat(tmp_path / "nan.mat")
    (tmp_path / "corrupt.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\x00" * 40)
    for reader in (read_cofw_mat, read_aflw2000_mat):
        with pytest.raises(ValueError, match=r"corrupt\.mat"):
            reader(tmp_path / "corrupt.mat")
    with pytest.raises(FileNotFoundError, match=r"missing\.mat"):
        read_cofw_mat(tmp_path / "missing.mat")


def test_cofw_mat_v73(tmp_path, rng):
    """COFW_train_color.mat is a MATLAB v7.3 (HDF5) file: read through h5py,
    which sees Matlab arrays transposed; cell arrays of images are skipped."""
    h5py = pytest.importorskip("h5py")
    phis = np.hstack([rng.uniform(1, 200, (4, 58)), rng.integers(0, 2, (4, 29)).astype(float)])
    f = tmp_path / "COFW_train_color.mat"
    with h5py.File(f, "w", userblock_size=512) as h:
        h.create_dataset("phisTr", data=phis.T)  # as Matlab writes [4, 87]
        h.create_dataset("bboxesTr", data=np.ones((4, 4)).T)
        h.create_dataset("IsTr", (1, 4), dtype=h5py.ref_dtype)
    with f.open("r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: x HDF5 schema 1.00 .")
    out = read_cofw_mat(f)
    np.testing.assert_allclose(out["landmarks"][:, :, 0], phis[:, :29] - 1)
    np.testing.assert_array_equal(out["occluded"], phis[:, 58:] > 0.5)
    np.testing.assert_array_equal(out["boxes"], np.zeros((4, 4)) + [0, 0, 1, 1])


# ---------------------------------------------------------------------------
# COCO-style JSON fixtures
# ---------------------------------------------------------------------------


@needs_fixtures
@pytest.mark.parametrize(
    "rel, n_faces, n_points",
    [("300w/test_300w.json", 2, 68), ("300vw/anno_300vw.json", 3, 68), ("wflw/test_wflw.json", 4, 98),
     ("cofw/test_cofw.json", 2, 29), ("aflw/test_aflw.json", 2, 19)],
)
def test_coco_fixtures(rel, n_faces, n_points):
    faces = read_coco_keypoints(DATA / "fixtures" / rel, num_points=n_points)
    assert len(faces) == n_faces
    for f in faces:
        assert f.landmarks.shape == (n_points, 2) and f.landmarks.dtype == np.float64
        assert f.image_path.is_file(), f.image_path
        # landmarks inside the image they annotate
        assert np.all(f.landmarks >= -1) and np.all(f.landmarks[:, 0] <= f.width) and np.all(f.landmarks[:, 1] <= f.height)
        if f.box is not None:  # box (x, y, w, h) holds the landmarks
            x, y, w, h = f.box
            assert np.all(f.landmarks[:, 0] >= x - 1) and np.all(f.landmarks[:, 0] <= x + w + 1)


@needs_fixtures
def test_300vw_json_matches_pts_minus_one():
    """The 300-VW JSON keeps the raw (1-based) .pts values: with one_based=True
    both readers agree exactly."""
    root = DATA / "fixtures" / "300vw"
    faces = read_coco_keypoints(root / "anno_300vw.json", one_based=True)
    for f in faces:
        seq, _, frame = f.image_path.relative_to(root).parts
        pts = read_pts(root / seq / "annot" / (Path(frame).stem + ".pts"))
        np.testing.assert_allclose(f.landmarks, pts, atol=1e-9)


def test_coco_malformed(tmp_path):
    (tmp_path / "a.json").write_text('{"images": [], "annotations": [')
    with pytest.raises(ValueError, match=r"a\.json:1: invalid JSON"):
        read_coco_keypoints(tmp_path / "a.json")
    data = {"images": [{"id": 1, "file_name": "x.jpg"}],
            "annotations": [{"image_id": 1, "keypoints": [1, 2, 1, 3, 4]}]}
    (tmp_path / "b.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"b\.json: annotations\[0\]: 'keypoints' length 5"):
        read_coco_keypoints(tmp_path / "b.json")
    data["annotations"][0] = {"image_id": 7, "keypoints": [1, 2, 1]}
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"image_id 7 not in 'images'"):
        read_coco_keypoints(tmp_path / "c.json")


# ---------------------------------------------------------------------------
# Schemes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_mirror_twice_is_identity(name, rng):
    s = get_scheme(name)
    m = s.mirror_array
    assert sorted(m.tolist()) == list(range(s.num_points))
    np.testing.assert_array_equal(m[m], np.arange(s.num_points))
    pts = rng.uniform(0, 100, size=(s.num_points, 2))
    np.testing.assert_allclose(s.flip_landmarks(s.flip_landmarks(pts, 101), 101), pts, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_symmetric_face_maps_onto_itself(name, rng):
    """Points paired by the mirror sit at (c - d, y) and (c + d, y), points on
    the axis at x = c; flipping such a face about c gives the same array."""
    s = get_scheme(name)
    width = 201  # flip maps x -> 200 - x, the axis is x = 100
    pts = np.empty((s.num_points, 2))
    for i, j in enumerate(s.mirror):
        if j < i:
            continue
        y = rng.uniform(0, 200)
        d = 0.0 if i == j else rng.uniform(1, 90)
        pts[i] = (100 - d, y)
        pts[j] = (100 + d, y)
    np.testing.assert_allclose(s.flip_landmarks(pts, width), pts, atol=1e-12)
    # a wrong permutation (identity) does not map it onto itself
    flipped_only = pts.copy()
    flipped_only[:, 0] = 200 - flipped_only[:, 0]
    assert np.abs(flipped_only - pts).max() > 1


def test_scheme_fields():
    s68 = get_scheme("68")
    assert s68.norm_indices == (36, 45) and s68.eye_anchor == tuple(range(36, 48))
    assert s68.mirror[36] == 45 and s68.mirror[8] == 8 and s68.mirror[30] == 30 and s68.mirror[48] == 54
    assert get_scheme("wflw").norm_indices == (60, 72) and get_scheme(98).mirror[96] == 97
    assert get_scheme("cofw").num_points == 29
    with pytest.raises(ValueError, match="unknown landmark scheme"):
        get_scheme("17")


def test_model_mirror():
    from pyflm.data.schemes import model_mirror

    s68 = list(get_scheme("68").mirror)
    assert model_mirror({"num_landmarks": 68, "scheme": "300w-68"}) == s68  # unknown name: found by count
    assert model_mirror({"num_landmarks": 98, "scheme": "wflw"}) == list(get_scheme("98").mirror)
    assert model_mirror({"num_landmarks": 68, "scheme": "wflw"}) == s68  # a name of another count is skipped
    assert model_mirror({"num_landmarks": 7}) is None
    swap = [1, 0, 2]
    assert model_mirror({"num_landmarks": 3, "mirror": swap}) == swap  # the model's own wins
    for bad in ([1, 2, 0], [0, 1], [0, 0, 2]):  # not an involution, wrong length, not a permutation
        with pytest.raises(ValueError, match="involutive permutation of 3"):
            model_mirror({"num_landmarks": 3, "mirror": bad})


def _align(a, b):
    """b after the best similarity transform (proper rotation, no reflection:
    that would undo the flip) onto a, and a, both centred ([N, 2])."""
    a0, b0 = a - a.mean(0), b - b.mean(0)
    u, sig, vt = np.linalg.svd(b0.T @ a0)
    d = np.sign(np.linalg.det(u @ vt))
    r = u @ np.diag([1.0, d]) @ vt
    scale = (sig[0] + d * sig[1]) / (b0 ** 2).sum()
    return scale * b0 @ r, a0


def _procrustes_residual(a, b):
    """RMS distance after aligning b onto a, over the RMS size of a."""
    b1, a0 = _align(a, b)
    return np.sqrt(((b1 - a0) ** 2).sum(1).mean()) / np.sqrt((a0 ** 2).sum(1).mean())


@needs_fixtures
@pytest.mark.parametrize("rel, n", [("wflw/test_wflw.json", 98), ("cofw/test_cofw.json", 29),
                                    ("aflw/test_aflw.json", 19), ("300w/test_300w.json", 68)])
def test_mirror_fits_real_faces(rel, n):
    """A flipped real face, re-ordered by the mirror permutation, is close to
    the original up to a similarity transform (faces are nearly symmetric);
    without the permutation it is not."""
    s = get_scheme(n)
    for f in read_coco_keypoints(DATA / "fixtures" / rel):
        flipped = s.flip_landmarks(f.landmarks, 1000)
        good = _procrustes_residual(f.landmarks, flipped)
        flipped_no_perm = f.landmarks.copy()
        flipped_no_perm[:, 0] = 999 - flipped_no_perm[:, 0]
        bad = _procrustes_residual(f.landmarks, flipped_no_perm)
        assert good < 0.3 and good < bad / 3, (f.image_path.name, good, bad)


@needs_data
def test_mirror_68_on_mean_300w_shape():
    """The mean normalised shape of the 554 common-test faces is almost exactly
    symmetric; every pair of the 68-point mirror must map it onto itself."""
    pts = np.stack([s.landmarks for s in load_split("common", root=DATA)])
    pts = pts - pts.mean(1, keepdims=True)
    pts /= np.sqrt((pts ** 2).sum(2).mean(1))[:, None, None]
    mean = pts.mean(0)
    s68 = get_scheme("68")
    flipped, mean = _align(mean, s68.flip_landmarks(mean, 1))
    per_point = np.linalg.norm(flipped - mean, axis=1)
    assert per_point.max() < 0.05, (per_point.argmax(), per_point.max())
    # swapping any single pair back breaks it
    for i in range(68):
        j = s68.mirror[i]
        if j > i:
            m = s68.mirror_array.copy()
            m[i], m[j] = i, j
            wrong = flipped[s68.mirror_array][m]
            assert np.linalg.norm(wrong - mean, axis=1).max() > 0.1, (i, j)


# ---------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("name, count", [("300w-train", 2012), ("common", 554), ("helen-test", 330), ("lfpw-test", 224)])
def test_split_counts(name, count):
    samples = load_split(name, root=DATA)
    assert len(samples) == count
    s = samples[0]
    assert s.image_path.is_file() and s.landmarks.shape == (68, 2) and s.scheme == "68"
    assert len({x.image_path for x in samples}) == count


@needs_data
def test_split_datasets_and_coordinates():
    samples = load_split("common", root=DATA)
    assert {s.dataset for s in samples} == {"helen", "lfpw"}
    s = next(x for x in samples if x.dataset == "lfpw")
    raw = read_pts(s.image_path.with_suffix(".pts"), one_based=False)
    np.testing.assert_array_equal(s.landmarks, raw - 1)  # converted to 0-based


def test_split_missing_folder(tmp_path):
    (tmp_path / "300w" / "helen" / "testset").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"split 'full' needs the folder .*lfpw[/\\]testset"):
        load_split("full", root=tmp_path)
    with pytest.warns(UserWarning, match=r"lfpw[/\\]testset.*ibug"):
        assert load_split("full", root=tmp_path, missing="warn") == []
    with pytest.raises(ValueError, match="unknown split"):
        load_split("nope", root=tmp_path)


def test_folder_and_300w_private_layout(tmp_path, rng):
    for sub in ("01_Indoor", "02_Outdoor"):
        d = tmp_path / "300w" / "300W" / sub
        d.mkdir(parents=True)
        for k in range(2):
            write_pts(d / f"{sub[3:].lower()}_{k:03d}.pts", rng.uniform(0, 100, (68, 2)))
            (d / f"{sub[3:].lower()}_{k:03d}.png").write_bytes(b"")
    (tmp_path / "300w" / "300W" / "01_Indoor" / "extra.png").write_bytes(b"")  # image without .pts: skipped
    samples = load_split("300w-test", root=tmp_path)
    assert [s.image_path.name for s in samples] == ["indoor_000.png", "indoor_001.png", "outdoor_000.png", "outdoor_001.png"]
    assert {s.dataset for s in samples} == {"300w-indoor", "300w-outdoor"}
    assert len(load_folder(tmp_path / "300w" / "300W" / "02_Outdoor")) == 2
    assert len(load_split(str(tmp_path / "300w" / "300W" / "01_Indoor"))) == 2
    write_pts(tmp_path / "lonely.pts", rng.uniform(0, 100, (68, 2)))
    with pytest.raises(FileNotFoundError, match=r"lonely\.pts: no image"):
        load_folder(tmp_path)


def test_every_300w_split_on_a_synthetic_root(tmp_path, rng):
    """Splits whose folders are not in ../shared/data (ibug: challenging, full)
    load for a user who has them; each split takes exactly its folders."""
    counts = {"afw": 2, "helen/trainset": 3, "lfpw/trainset": 1, "helen/testset": 2, "lfpw/testset": 3, "ibug": 4}
    for sub, n in counts.items():
        d = tmp_path / "300w" / sub
        d.mkdir(parents=True)
        for k in range(n):
            write_pts(d / f"{sub.replace('/', '_')}_{k}.pts", rng.uniform(0, 100, (68, 2)))
            (d / f"{sub.replace('/', '_')}_{k}.jpg").write_bytes(b"")
    want = {"300w-train": 6, "common": 5, "challenging": 4, "full": 9, "helen-test": 2, "lfpw-test": 3, "ibug": 4}
    for name, n in want.items():
        samples = load_split(name, root=tmp_path)
        assert len(samples) == n, name
    full = load_split("full", root=tmp_path)
    assert {s.dataset for s in full} == {"helen", "lfpw", "ibug"}
    assert all(s.image_path.parent.name in ("testset", "ibug") for s in full)
