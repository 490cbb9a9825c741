"""benchmarks/peers: box maps, matching, summaries, tables, the JSON writer and
the worker's job/result protocol with the fake method (no dlib, no LBF, no data)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.peers import compare
from benchmarks.peers.evaluation import (
    BoxMap,
    accuracy_summary,
    accuracy_table,
    iou,
    latency_summary,
    match_detection,
    shared_summary,
    speed_table,
    write_json_atomic,
)
from pyflm import deploy
from pyflm.data import tight_box

WORKER_PATH = Path(compare.__file__).with_name("peer_worker.py")


def _worker_module():
    spec = importlib.util.spec_from_file_location("peer_worker_under_test", WORKER_PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _random_boxes(rng, n):
    xy = rng.uniform(0, 300, (n, 2))
    wh = rng.uniform(40, 200, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def _face_points(rng, box):
    """68 points spread over ``box`` with distinct outer eye corners (36, 45)."""
    x0, y0, x1, y1 = box
    pts = rng.uniform([x0, y0], [x1, y1], (68, 2))
    pts[36], pts[45] = [x0 + 0.2 * (x1 - x0), y0 + 0.4 * (y1 - y0)], [x0 + 0.8 * (x1 - x0), y0 + 0.4 * (y1 - y0)]
    pts[0], pts[16] = [x0, y0], [x1, y1]  # make ``box`` the tight box
    return pts


# ---------------------------------------------------------------- boxes


def test_tight_box_and_iou():
    rng = np.random.default_rng()
    pts = rng.uniform(-50, 400, (68, 2))
    tb = tight_box(pts)
    np.testing.assert_allclose(tb, [*pts.min(0), *pts.max(0)])
    assert iou(tb, tb) == pytest.approx(1.0)
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0
    with pytest.raises(ValueError, match="landmarks"):
        tight_box(np.zeros((68, 3)))


def test_match_detection():
    face = [100, 100, 200, 200]
    dets = [[0, 0, 40, 40, 0.9], [110, 105, 205, 210, None], [95, 95, 205, 205, 0.5]]
    assert match_detection(face, dets) == 2  # highest IoU wins, not the first or the highest score
    assert match_detection(face, dets[:1]) is None  # no overlap: a miss
    assert match_detection(face, []) is None
    assert match_detection(face, [[100, 100, 300, 300]], min_iou=0.3) is None  # IoU 0.25


def test_box_map_fit_recovers_a_linear_map():
    rng = np.random.default_rng()
    a = rng.normal(0, 0.1, (4, 2)) + [[0, 0], [0, 0], [1.1, 0], [0, 1.2]]
    # the size rows' cross terms small enough that every mapped box keeps a positive size
    # (with N(0, 0.1) ones, a 40 px wide, 200 px tall box could map to a negative width:
    # an empty box, IoU 0 with itself, a flaky mean_iou)
    a[2:] = [[1.1, 0], [0, 1.2]] + rng.uniform(-0.05, 0.05, (2, 2))
    truth = BoxMap(a=tuple(map(tuple, a)))
    tight = _random_boxes(rng, 50)
    native = truth.apply(tight)
    fitted = BoxMap.fit(tight, native)
    np.testing.assert_allclose(fitted.a, a, atol=1e-9)
    assert fitted.n == 50 and fitted.mean_iou == pytest.approx(1.0)
    np.testing.assert_allclose(fitted(tight[0]), native[0], atol=1e-9)
    again = BoxMap.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert again == fitted


def test_box_map_fit_with_noise_is_close_and_identity_default():
    rng = np.random.default_rng()
    tight = _random_boxes(rng, 400)
    native = BoxMap(a=((0.05, 0.0), (0.0, -0.1), (1.2, 0.0), (0.0, 1.0))).apply(tight)
    native += rng.normal(0, 1.0, native.shape)
    fitted = BoxMap.fit(tight, native)
    np.testing.assert_allclose(fitted.a, ((0.05, 0.0), (0.0, -0.1), (1.2, 0.0), (0.0, 1.0)), atol=0.03)
    assert 0.9 < fitted.mean_iou < 1.0
    np.testing.assert_allclose(BoxMap()([1, 2, 30, 40]), [1, 2, 30, 40])


def test_box_map_errors():
    with pytest.raises(ValueError, match="at least 2"):
        BoxMap.fit([[0, 0, 1, 1]], [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="native boxes"):
        BoxMap.fit(np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="4 x 2"):
        BoxMap(a=((1.0, 0.0),))


# ---------------------------------------------------------------- summaries and tables


def test_accuracy_summary_counts_misses_and_measures_detected_faces():
    rng = np.random.default_rng()
    gt = [_face_points(rng, b) for b in _random_boxes(rng, 6)]
    d = [np.linalg.norm(g[36] - g[45]) for g in gt]
    pred = [g + [0.05 * di, 0.0] for g, di in zip(gt, d)]  # NME exactly 0.05
    pred[1] = gt[1] + [0.2 * d[1], 0.0]  # a failure at 0.08 and 0.10
    pred[4] = None  # a detection miss
    r = accuracy_summary(pred, gt)
    assert (r["n"], r["misses"]) == (6, 1) and r["miss_rate"] == pytest.approx(1 / 6)
    assert r["nme"] == pytest.approx((4 * 0.05 + 0.2) / 5)
    assert r["eye_nme"] == pytest.approx(r["nme"])  # every point moved alike
    assert r["fr@0.08"] == pytest.approx(0.2) and r["fr@0.1"] == pytest.approx(0.2)
    assert r["auc@0.08"] == pytest.approx(4 * (1 - 0.05 / 0.08) / 5)
    assert r["mean_offset_xy"][1] == pytest.approx(0.0, abs=1e-12) and r["mean_offset_xy"][0] > 0
    assert len(r["per_image"]) == 5
    # per face, misses kept in place: what methods that miss different faces are compared on
    assert r["per_face"][4] is None and r["per_face_eye"][4] is None
    np.testing.assert_allclose([r["per_face"][i] for i in (0, 1, 2, 3, 5)], r["per_image"])
    np.testing.assert_allclose([r["per_face"][i] for i in (0, 2)], 0.05)
    assert r["per_face_eye"][1] == pytest.approx(0.2)


def test_shared_summary_scores_the_faces_every_method_found():
    rng = np.random.default_rng()
    gt = [_face_points(rng, b) for b in _random_boxes(rng, 5)]
    d = [np.linalg.norm(g[36] - g[45]) for g in gt]
    errs = {"a": [0.01, 0.02, 0.03, 0.04, 0.09], "b": [0.05, 0.06, 0.07, 0.08, 0.12]}
    preds = {k: [g + [e * di, 0.0] for g, di, e in zip(gt, d, v)] for k, v in errs.items()}
    preds["a"][1] = None  # a misses face 1, b misses face 3
    preds["b"][3] = None
    summaries = {k: accuracy_summary(v, gt) for k, v in preds.items()}
    assert summaries["a"]["nme"] == pytest.approx((0.01 + 0.03 + 0.04 + 0.09) / 4)
    got = shared_summary(summaries)
    for k, v in errs.items():  # faces 0, 2, 4
        g = got[k]
        assert (g["n"], g["misses"]) == (5, 2) and g["miss_rate"] == pytest.approx(0.4)
        np.testing.assert_allclose(g["per_image"], [v[0], v[2], v[4]])
        assert g["nme"] == pytest.approx((v[0] + v[2] + v[4]) / 3) and g["eye_nme"] == pytest.approx(g["nme"])
    assert got["a"]["fr@0.08"] == pytest.approx(1 / 3) and got["a"]["fr@0.1"] == 0.0
    assert got["b"]["fr@0.1"] == pytest.approx(1 / 3) and summaries["b"]["fr@0.1"] == pytest.approx(1 / 4)
    assert got["a"]["auc@0.08"] == pytest.approx((1 - 0.01 / 0.08 + 1 - 0.03 / 0.08) / 3)
    assert shared_summary({}) == {}
    none = shared_summary({"a": summaries["a"], "c": accuracy_summary([None] * 5, gt)})
    assert none["a"]["misses"] == 5 and none["a"]["nme"] is None
    with pytest.raises(ValueError, match="different face lists"):
        shared_summary({"a": summaries["a"], "d": accuracy_summary(preds["a"][:4], gt[:4])})


def test_accuracy_summary_all_missed_and_errors():
    rng = np.random.default_rng()
    gt = [_face_points(rng, [0, 0, 100, 100])]
    r = accuracy_summary([None], gt)
    assert r["misses"] == 1 and r["nme"] is None and r["per_image"] == []
    with pytest.raises(ValueError, match="predictions"):
        accuracy_summary([None, None], gt)
    with pytest.raises(ValueError, match="no faces"):
        accuracy_summary([], [])


def test_accuracy_and_speed_tables():
    rows = {"dlib, helen, own boxes": {"n": 10, "misses": 2, "nme": 0.0251, "eye_nme": 0.0149, "fr@0.08": 0.0,
                                       "fr@0.1": 0.0, "auc@0.08": 0.6543},
            "lbf, helen, own boxes": {"n": 10, "misses": 10, "nme": None}}
    table = accuracy_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| Method | nme (%) | eye_nme (%)")
    assert "| dlib, helen, own boxes | 2.51 | 1.49 | 0.00 | 0.00 | 65.43 | 2 | 10 |" in lines
    assert "| lbf, helen, own boxes | - | - | - | - | - | 10 | 10 |" in lines
    speed = speed_table({"dlib": {"lat1": {"landmark_ms": 2.84, "landmark_cpu_ms": 1.96, "detect_plus_landmark_ms": 58.2},
                                  "lat2": {"landmark_ms": 2.5}, "rss_mb": 232.31, "model_mb": 95.07}})
    assert "| dlib | 2.8 | 2.5 | 2.0 | 58.2 | - | - | 232.3 | 95.1 |" in speed.splitlines()


def test_latency_summary_medians():
    items = [{"detect_s": 0.010, "detect_cpu_s": 0.008,
              "faces": [{"landmark_s": 0.001, "landmark_cpu_s": 0.001}, {"landmark_s": 0.003, "landmark_cpu_s": 0.002}]},
             {"detect_s": 0.030, "detect_cpu_s": 0.009, "faces": [{"landmark_s": 0.002, "landmark_cpu_s": 0.002}]},
             {"detect_s": 0.020, "detect_cpu_s": 0.010, "faces": []},
             {"detect_s": None, "faces": [{"landmark_s": 0.004, "landmark_cpu_s": 0.003}]}]
    lat = latency_summary(items)
    assert lat["landmark_ms"] == pytest.approx(2.5) and lat["landmark_cpu_ms"] == pytest.approx(2.0)
    assert lat["detect_ms"] == pytest.approx(20.0) and lat["detect_cpu_ms"] == pytest.approx(9.0)
    assert lat["detect_plus_landmark_ms"] == pytest.approx((11 + 32) / 2)
    assert lat["detect_plus_landmark_cpu_ms"] == pytest.approx((9 + 11) / 2)
    assert (lat["faces_timed"], lat["images_timed"]) == (4, 3)
    assert latency_summary([])["landmark_ms"] is None
    # one call that detects and places landmarks (pyflm): that call is the pipeline's time
    full = latency_summary([{"full_s": 0.05, "full_cpu_s": 0.04, "faces": [{"landmark_s": 0.01, "landmark_cpu_s": 0.01}]}])
    assert full["detect_plus_landmark_ms"] == pytest.approx(50.0) and full["detect_ms"] is None
    assert full["images_timed"] == 1


def test_write_json_atomic(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "r.json", {"a": np.float32(1.5), "b": np.arange(3), "c": None})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": None}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text())["a"] == 1.5  # the old file survives a failed write
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp file left
    nested = {"per_face": [0.031, None, -1e-05, 2.5e+20, 0.036123456789, 7], "rows": [{"x": [1, 2]}, "s"],
              "empty": [], "t": ["a", "b"], "f": 0.036123456789}
    text = write_json_atomic(path, nested).read_text()
    # number lists on one line, their floats to 7 significant digits; everything else as json.dumps writes it
    assert json.loads(text) == {**nested, "per_face": [0.031, None, -1e-05, 2.5e+20, 0.03612346, 7]}
    assert '"per_face": [0.031, null, -1e-05, 2.5e+20, 0.03612346, 7]' in text and '"x": [1, 2]' in text
    assert '"a",\n' in text and '"f": 0.036123456789' in text


# ---------------------------------------------------------------- the worker protocol


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng()
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        cv2.imwrite(str(p), rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
        paths.append(str(p))
    return paths


def test_worker_run_job_with_fake_method(images, tmp_path):
    w = _worker_module()
    job = {"method": "fake", "threads": 1, "warmup": 1,
           "items": [{"id": "a", "image": images[0], "boxes": [[10, 20, 50, 80]], "box_type": "tight"},
                     {"id": "b", "image": images[1], "detect": True},
                     {"id": "c", "image": str(tmp_path / "missing.png"), "detect": True}]}
    r = w.run_job(job)
    assert r["method"] == "fake" and r["threads"] == 1 and r["versions"]["fake"] == "0"
    assert set(r["rss_kb"]) == {"start", "after_load", "peak"} and r["rss_kb"]["peak"] > 0
    a, b, c = r["items"]
    pts = np.array(a["faces"][0]["landmarks"])
    assert pts.shape == (68, 2)
    np.testing.assert_allclose(tight_box(pts), [14, 26, 46, 74], atol=1e-9)  # the ellipse fills 80% of the box
    assert a["detect_s"] is None and a["faces"][0]["landmark_s"] >= 0
    assert b["detections"] == [[40.0, 30.0, 120.0, 90.0, 1.0]] and b["detect_s"] >= 0
    assert b["faces"][0]["box"] == [40.0, 30.0, 120.0, 90.0]
    assert "cannot read image" in c["error"] and c["faces"] == []
    json.dumps(r)  # the result is plain JSON


def test_worker_errors(images):
    w = _worker_module()
    with pytest.raises(ValueError, match="unknown method"):
        w.run_job({"method": "nope", "items": []})
    with pytest.raises(ValueError, match="no 'items'"):
        w.run_job({"method": "fake"})
    with pytest.raises(ValueError, match="box_type"):
        w.run_item(w.FakeMethod(), {"id": "x", "image": images[0], "boxes": [[0, 0, 9, 9]], "box_type": "odd"})
    with pytest.raises(FileNotFoundError, match="PYFLM_DLIB_MODEL"):
        import os
        old = os.environ.get("PYFLM_DLIB_MODEL")
        os.environ["PYFLM_DLIB_MODEL"] = "/nonexistent/model.dat"
        try:
            w.find_package_file("face_recognition_models", ["x.dat"], "PYFLM_DLIB_MODEL")
        finally:
            os.environ.pop("PYFLM_DLIB_MODEL") if old is None else os.environ.update(PYFLM_DLIB_MODEL=old)
    with pytest.raises(FileNotFoundError, match="not installed"):
        w.find_package_file("no_such_package_pyflm_test", ["x"], "PYFLM_TEST_UNSET_VAR")


def test_worker_cli_bad_job_file(tmp_path):
    bad = tmp_path / "job.json"
    bad.write_text("{not json")
    p = subprocess.run([sys.executable, str(WORKER_PATH), "--job", str(bad), "--out", str(tmp_path / "o.json")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "cannot read job file" in p.stderr
    assert not (tmp_path / "o.json").exists()


def test_run_worker_subprocess_and_evaluate_method(images, tmp_path, monkeypatch):
    """compare's whole path for one method (the fake one, in this Python): jobs,
    subprocess, matching, accuracy per split, latency, RSS, the report files."""
    rng = np.random.default_rng()
    faces = []
    for i, img in enumerate(images):
        part = "helen-test" if i < 2 else "lfpw-test"
        faces.append({"id": f"{part}/{i}", "image": img, "part": part,
                      "gt": _face_points(rng, [40 + i, 30, 120, 90 - i])})
    faces[2]["gt"] = _face_points(rng, [0, 0, 20, 20])  # far from the fake detector's box: a miss
    identity = BoxMap()
    r = compare.evaluate_method("fake", "peer", sys.executable, {}, faces, ["common", "helen", "lfpw"],
                                identity, timing_faces=2, workdir=tmp_path / "work")
    acc = r["accuracy"]
    assert acc["common/gt"]["misses"] == 0 and acc["common/gt"]["n"] == 3
    assert acc["common/own"]["misses"] == 1 and acc["lfpw/own"]["nme"] is None
    assert acc["helen/own"]["n"] == 2 and acc["helen/own"]["nme"] > 0
    sp = r["speed"]
    assert sp["lat1"]["faces_timed"] == 2 and sp["lat2"]["landmark_ms"] >= 0
    assert sp["rss_mb"] > 1 and sp["rss_kb"]["child_ru_maxrss"] > 0
    assert sp["rss_mb"] == sp["rss_kb"]["peak"] / 1024 and sp["lat1"]["landmark_cpu_ms"] >= 0
    assert list((tmp_path / "work").iterdir()) == []  # job and result files removed

    doc = compare.report([r], ["common", "helen", "lfpw"], tmp_path / "out", {"machine": {"cpu": "test"}})
    saved = json.loads((tmp_path / "out" / "peers.json").read_text())
    assert saved["machine"] == {"cpu": "test"} and saved["methods"][0]["label"] == "fake"
    assert "| fake, helen, own boxes |" in doc["tables"]["accuracy"]
    assert cv2.imread(str(tmp_path / "out" / "ced.png")) is not None


def test_hog_boxes_and_found_by_all_rows(images, tmp_path):
    """pyflm rows on dlib's detections ("hog"): the boxes go to the worker as
    "dlib-hog" boxes, faces dlib missed are misses; the report puts dlib's own rows
    beside them and scores every method on the faces all own detectors found."""
    rng = np.random.default_rng()
    faces = [{"id": f"helen-test/{i}", "image": img, "part": "helen-test",
              "gt": _face_points(rng, [40 + i, 30, 120, 90 - i])} for i, img in enumerate(images)]
    faces[2]["gt"] = _face_points(rng, [0, 0, 20, 20])  # the fake detector's box misses it
    hog = [[38.0, 28.0, 122.0, 92.0], None, [0.0, 0.0, 21.0, 21.0]]
    items = compare.hog_items(faces, hog)
    assert [it["id"] for it in items] == ["helen-test/0", "helen-test/2"]
    assert all(it["box_type"] == "dlib-hog" and len(it["boxes"]) == 1 for it in items)
    args = ({}, faces, ["helen"], BoxMap(), 1, tmp_path / "work")
    r = compare.evaluate_method("fake", "peer", sys.executable, *args, hog_boxes=hog)
    acc = r["accuracy"]
    assert acc["helen/hog"]["misses"] == 1 and acc["helen/hog"]["per_face"][1] is None
    assert acc["helen/own"]["misses"] == 1 and r["own_boxes"][2] is None and len(r["own_boxes"][0]) == 4
    # face 0's landmarks are the fake method's template drawn in the hog box it was given
    from pyflm import metrics

    want = _worker_module().FakeMethod().landmarks(None, hog[0])
    assert acc["helen/hog"]["per_face"][0] == pytest.approx(float(metrics.nme(want[None], faces[0]["gt"][None])[0]))
    dlib = compare.evaluate_method("fake", "peer", sys.executable, *args)
    dlib.update(label="dlib", method="dlib")  # stands in for dlib's row: its "hog" boxes are its own
    assert "helen/hog" not in dlib["accuracy"]
    doc = compare.report([r, dlib], ["helen"], tmp_path / "out", {})
    table = doc["tables"]["accuracy"]
    for row in ("fake, helen, dlib HOG boxes", "dlib, helen, dlib HOG boxes", "fake, helen, own boxes, found by all",
                "dlib, helen, own boxes, found by all"):
        assert f"| {row} |" in table
    assert r["accuracy"]["helen/shared"]["misses"] == 1  # both own detectors miss face 2 only
    assert r["accuracy"]["helen/shared"]["nme"] == pytest.approx(r["accuracy"]["helen/own"]["nme"])
    alone = compare.report([dlib], ["helen"], tmp_path / "out1", {})["tables"]["accuracy"]
    assert "HOG" not in alone and "found by all" not in alone  # nothing to set them beside
    assert cv2.imread(str(tmp_path / "out" / "ced.png")).shape[0] > cv2.imread(str(tmp_path / "out1" / "ced.png")).shape[0]


def test_has_hog_rule(tmp_path):
    for name in ("default", "fast"):
        assert compare.has_hog_rule(name) == ("dlib-hog" in deploy.load_model_file(
            deploy.model_path(name))["meta"]["crop"]["boxes"])
    assert not compare.has_hog_rule(str(tmp_path / "missing.pt"))


def test_run_worker_reports_worker_failure(tmp_path):
    with pytest.raises(RuntimeError, match="unknown method"):
        compare.run_worker(sys.executable, {"method": "nope", "items": []}, "nope", tmp_path)


def test_parse_args():
    a = compare.parse_args(["--quick", "--splits", "helen", "--methods", "dlib"])
    assert a.splits == ["helen"] and a.methods == ["dlib"] and a.timing_faces == 50
    a = compare.parse_args(["--splits", "youtube", "--stride", "5"])
    assert a.splits == ["youtube"] and a.stride == 5 and compare.SPLIT_PARTS["youtube"] == ("youtube-train",)
    for bad in (["--splits", "ibug"], ["--methods", "dlib,xyz"], ["--pyflm-model", "nolabel"], ["--stride", "0"],
                ["--pyflm-model", "x=/nonexistent/model.pt"], ["--pyflm-options", "flop"],
                ["--pyflm-options", "refine=11"], ["--pyflm-options", "flip+refine"], ["--pyflm-bundled", "tiny"]):
        with pytest.raises(SystemExit):
            compare.parse_args(bad)
    a = compare.parse_args([])
    assert compare.pyflm_rows("default", "m.pt", a) == [
        ("pyflm default (onnxruntime)", {"model": "m.pt", "backend": "onnxruntime", "flip_test": False,
                                         "refine": "auto"})]  # "plain": FaceLandmarker's defaults
    installed = [n for n in ("default", "fast") if deploy.bundled_model_path(n).is_file()]
    assert a.pyflm_bundled == (installed or ["default"])
    assert compare.parse_args(["--pyflm-bundled", "fast"]).pyflm_bundled == ["fast"]
    a = compare.parse_args(["--pyflm-backend", "torch", "onnxruntime", "--pyflm-options", "plain", "flip+refine=2"])
    rows = compare.pyflm_rows("x", "m.pt", a)
    assert [row for row, _ in rows] == ["pyflm x", "pyflm x (flip test, refine 2)", "pyflm x (onnxruntime)",
                                        "pyflm x (onnxruntime, flip test, refine 2)"]
    assert [(o["flip_test"], o["refine"]) for _, o in rows] == [(False, "auto"), (True, 2)] * 2
    a = compare.parse_args(["--pyflm-options", "refine=0", "flip+refine=auto"])
    assert [(row, o["flip_test"], o["refine"]) for row, o in compare.pyflm_rows("x", "m.pt", a)] == [
        ("pyflm x (onnxruntime, refine 0)", False, 0), ("pyflm x (onnxruntime, flip test)", True, "auto")]


def test_method_jobs_and_predictions():
    rng = np.random.default_rng()
    gt = _face_points(rng, [10, 20, 110, 140])
    faces = [{"id": "f", "image": "x.png", "gt": gt, "part": "helen-test"}]
    shift = BoxMap(a=((0.1, 0.0), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0)))
    jobs = compare.method_jobs("peer", faces, shift)
    np.testing.assert_allclose(jobs["gt"][0]["boxes"][0], [20, 20, 120, 140])
    assert jobs["gt"][0]["box_type"] == "native" and jobs["own"][0]["detect"] is True
    tight = compare.method_jobs("pyflm", faces, None)["gt"][0]
    assert tight["box_type"] == "tight" and tight["boxes"][0] == [10, 20, 110, 140]
    result = {"method": "m", "items": [{"id": "f", "faces": [{"box": [0, 0, 5, 5], "landmarks": [[0, 0]] * 68},
                                                             {"box": [12, 18, 108, 150], "landmarks": gt.tolist()}]}]}
    np.testing.assert_allclose(compare.predictions("own", faces, result)[0], gt)
    np.testing.assert_allclose(compare.predictions("gt", faces, result)[0], 0)
    result["items"][0]["error"] = "cannot read image x.png"
    with pytest.raises(RuntimeError, match="cannot read image"):
        compare.predictions("gt", faces, result)


def _write_pts(path, pts):
    lines = ["version: 1", "n_points:  68", "{"] + [f"{x + 1:.3f} {y + 1:.3f}" for x, y in pts] + ["}"]
    path.write_text("\n".join(lines) + "\n")


def test_main_without_peers_or_pyflm_api(tmp_path, monkeypatch, capsys):
    """The command line end to end on a tiny data root: pyflm without
    FaceLandmarker is skipped with its reason, and the JSON still lands."""

    monkeypatch.setattr(compare, "pyflm_available", lambda: "pyflm has no FaceLandmarker (simulated)")
    import benchmarks.run_ops

    kernel_calls = []
    fake = {"soft_argmax": {"columns": ["case", "op_ms", "ratio"], "rows": [{"case": "forward", "op_ms": 1.5, "ratio": 12.0}]}}
    monkeypatch.setattr(benchmarks.run_ops, "run_all", lambda device, quick: kernel_calls.append((device, quick)) or fake)
    rng = np.random.default_rng()
    for folder in ("300w/helen/testset", "300w/lfpw/testset"):
        d = tmp_path / "data" / folder
        d.mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(d / f"f{i}.jpg"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
            _write_pts(d / f"f{i}.pts", _face_points(rng, [10, 10, 50, 50]))
    out = tmp_path / "out"
    assert compare.main(["--methods", "pyflm", "--data-root", str(tmp_path / "data"), "--out", str(out)]) == 0
    doc = json.loads((out / "peers.json").read_text())
    assert doc["faces"] == 4 and doc["methods"] == [] and "FaceLandmarker" in doc["skipped"]["pyflm"]
    assert doc["machine"]["cpu_count"] >= 1 and doc["command"].endswith(f"--out {out}")
    assert not (out / "ced.png").exists()
    # the op microbenchmarks ride along (quick by default), as rows and as a table
    assert kernel_calls == [("cpu", True)] and doc["kernels"] == {"mode": "quick", "ops": fake}
    assert "| case | op_ms | ratio |" in doc["tables"]["kernels"] and "| forward | 1.5 | 12 |" in doc["tables"]["kernels"]
    assert compare.main(["--methods", "pyflm", "--data-root", str(tmp_path / "data"), "--out", str(out),
                         "--kernels", "off"]) == 0
    doc = json.loads((out / "peers.json").read_text())
    assert doc["kernels"] is None and "kernels" not in doc["tables"] and len(kernel_calls) == 1
    assert compare.main(["--methods", "pyflm", "--data-root", str(tmp_path / "data"), "--out", str(out),
                         "--kernels", "off", "--stride", "2"]) == 0
    doc = json.loads((out / "peers.json").read_text())
    assert doc["faces"] == 2 and doc["stride"] == 2  # every 2nd face of each split
    # a split whose folder the data root lacks: one line, exit 2, nothing written
    (out / "peers.json").unlink()
    assert compare.main(["--methods", "pyflm", "--data-root", str(tmp_path / "data"), "--out", str(out),
                         "--splits", "youtube"]) == 2
    assert "youtube_faces/training" in capsys.readouterr().err and not (out / "peers.json").exists()


def test_pyflm_adapter_against_the_face_landmarker_api(images, monkeypatch):
    """The worker's pyflm adapter calls FaceLandmarker(model, device, detector,
    backend, num_threads, flip_test, refine) and detect(image, boxes, box_type) as specified (with a
    stand-in FaceLandmarker)."""
    import types

    import pyflm

    calls = []

    class StandIn:
        def __init__(self, model, device, detector, backend, num_threads, flip_test, refine):
            calls.append(("init", model, device, detector, backend, num_threads, flip_test, refine))

        def detect(self, image, boxes=None, box_type=None):
            calls.append(("detect", image.shape, boxes, box_type))
            bx = boxes or [[5.0, 6.0, 55.0, 66.0]]
            return [types.SimpleNamespace(box=np.array(b), landmarks=np.full((68, 2), float(i)), scores=None,
                                          detection_score=None if boxes else 0.9) for i, b in enumerate(bx)]

    import torch

    monkeypatch.setattr(pyflm, "FaceLandmarker", StandIn, raising=False)
    w = _worker_module()
    threads = torch.get_num_threads()
    try:  # the adapter sets torch's threads for its process; give this one its own back
        r = w.run_job({"method": "pyflm", "threads": 1, "warmup": 0, "options": {"model": "m.pt"},
                       "items": [{"id": "a", "image": images[0], "boxes": [[1, 2, 30, 40]], "box_type": "tight"},
                                 {"id": "b", "image": images[1], "detect": True}]})
    finally:
        torch.set_num_threads(threads)
    assert calls[0] == ("init", "m.pt", "cpu", "default", "torch", 1, False, "auto")
    assert calls[1] == ("detect", (120, 160, 3), [[1, 2, 30, 40]], "tight")
    assert calls[2] == ("detect", (120, 160, 3), None, None)  # own detector: one full call
    # then landmarks alone, timed, read with the detector's crop rule (the stand-in has none: tight)
    assert calls[3] == ("detect", (120, 160, 3), [[5.0, 6.0, 55.0, 66.0]], "tight")
    a, b = r["items"]
    assert a["faces"][0]["box"] == [1, 2, 30, 40] and a["full_s"] is None
    assert b["detections"] == [[5.0, 6.0, 55.0, 66.0, 0.9]] and b["full_s"] >= 0 and b["detect_s"] is None
    assert np.array(b["faces"][0]["landmarks"]).shape == (68, 2)
    calls.clear()
    try:
        w.run_job({"method": "pyflm", "threads": 1, "warmup": 0, "options": {"model": "m.pt"},
                   "items": [{"id": "h", "image": images[0], "boxes": [[3, 4, 50, 60]], "box_type": "dlib-hog"}]})
    finally:
        torch.set_num_threads(threads)
    assert calls[1] == ("detect", (120, 160, 3), [[3, 4, 50, 60]], "dlib-hog")  # read with the model's HOG rule

    assert compare.pyflm_available() is None  # the real API is there
