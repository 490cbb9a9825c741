"""The `pyflm` command line: detect (JSON schema, annotated outputs, exit codes),
demo, export, eval, bench, info and the help texts. Runs `pyflm.cli.main`
in-process on images and a video made here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import pyflm
from pyflm import deploy
from pyflm.cli import main

ASTRONAUT = Path(pyflm.__file__).parent / "assets" / "astronaut.jpg"
FACE_BOX = [170.0, 60.0, 275.0, 165.0]
pytestmark = [pytest.mark.skipif(not deploy.default_model_path().is_file(), reason="no bundled model file"),
              pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run(*argv) -> int:
    return main([str(a) for a in argv])


def _entry_ok(e: dict):
    assert set(e) >= {"path", "width", "height", "faces", "timings_ms"} and "error" not in e
    assert isinstance(e["width"], int) and isinstance(e["height"], int)
    for f in e["faces"]:
        assert set(f) == {"box", "detection_score", "landmarks", "scores"}
        assert len(f["box"]) == 4 and len(f["landmarks"]) == 68 and len(f["scores"]) == 68
        assert all(len(p) == 2 for p in f["landmarks"])


def _load(path) -> dict:
    d = json.loads(Path(path).read_text())
    assert set(d) == {"version", "model", "images"} and d["version"] == 1
    return d


@pytest.fixture
def inputs(tmp_path):
    """A folder with a face photo, a blank picture, a corrupt JPEG, a text file
    named .png and a .txt file (not an image name: ignored)."""
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(ASTRONAUT, d / "face.jpg")
    cv2.imwrite(str(d / "blank.png"), np.full((60, 90, 3), 180, np.uint8))
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really" * 5)
    (d / "text.png").write_text("not a picture")
    (d / "notes.txt").write_text("ignored")
    return d


def test_detect_folder_json_and_annotations(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    rc = run("detect", inputs, tmp_path / "missing.jpg", "--out", out, "--quiet", "--threads", "1")
    assert rc == 1  # corrupt.jpg, text.png and missing.jpg failed; the rest was done
    d = _load(out / "landmarks.json")
    by = {Path(e["path"]).name: e for e in d["images"]}
    assert set(by) == {"blank.png", "corrupt.jpg", "face.jpg", "text.png", "missing.jpg"}
    _entry_ok(by["face.jpg"])
    _entry_ok(by["blank.png"])
    assert len(by["face.jpg"]["faces"]) == 1 and by["blank.png"]["faces"] == []
    assert (by["face.jpg"]["width"], by["face.jpg"]["height"]) == (512, 512)
    assert set(by["face.jpg"]["timings_ms"]) == {"load", "detect", "crop", "landmarks", "total"}
    for bad in ("corrupt.jpg", "text.png", "missing.jpg"):
        e = by[bad]
        assert bad in e["error"] and e["faces"] == [] and e["width"] is None
    err = capsys.readouterr().err
    assert "corrupt.jpg" in err and "missing.jpg" in err
    # annotated copies: same size as the input, drawn on
    drawn = cv2.imread(str(out / "in" / "face.jpg"))
    src = cv2.imread(str(inputs / "face.jpg"))
    assert drawn.shape == src.shape and np.abs(drawn.astype(int) - src).max() > 100
    assert (out / "in" / "blank.png").is_file() and not (out / "in" / "corrupt.jpg").exists()
    assert not list(out.rglob(".*"))  # no temp files left


def test_detect_ok_no_draw_and_json_path(tmp_path):
    img = tmp_path / "face.jpg"
    shutil.copy(ASTRONAUT, img)
    out, js = tmp_path / "out", tmp_path / "elsewhere" / "r.json"
    assert run("detect", img, "--out", out, "--json", js, "--no-draw", "--quiet") == 0
    d = _load(js)
    assert len(d["images"]) == 1 and len(d["images"][0]["faces"]) == 1
    assert not out.exists() or not any(out.iterdir())
    assert d["model"] == str(deploy.default_model_path())


def test_detect_given_boxes_without_detector(tmp_path):
    rng = np.random.default_rng()
    img = tmp_path / "synthetic.png"
    cv2.imwrite(str(img), rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"synthetic.png": [[10, 20, 70, 90], [80, 10, 150, 100]]}))
    out = tmp_path / "out"
    assert run("detect", img, "--detector", "none", "--boxes", boxes, "--out", out, "--quiet") == 0
    faces = _load(out / "landmarks.json")["images"][0]["faces"]
    assert [f["box"] for f in faces] == [[10, 20, 70, 90], [80, 10, 150, 100]]
    assert all(f["detection_score"] == 1.0 for f in faces)
    # an image the boxes file does not mention fails (no detector to fall back on)
    other = tmp_path / "other.png"
    shutil.copy(img, other)
    assert run("detect", img, other, "--detector", "none", "--boxes", boxes, "--out", out, "--quiet") == 1
    by = {Path(e["path"]).name: e for e in _load(out / "landmarks.json")["images"]}
    assert "error" not in by["synthetic.png"] and "no boxes" in by["other.png"]["error"]


def _bad_model(tmp_path):
    p = tmp_path / "half.pt"
    p.write_bytes(deploy.default_model_path().read_bytes()[:1000])
    return p


@pytest.mark.parametrize("extra,needle", [
    (["--detector", "none"], "--boxes"),
    (["--model", "{tmp}/nope.pt"], "nope.pt"),
    (["--model", "BAD"], "half.pt"),
    (["--batch", "0"], "--batch"),
    (["--detector", "nosuch"], "nosuch"),
    (["--boxes", "{tmp}/nope.json"], "nope.json"),
    (["--boxes", "BOXES_TEXT"], "not readable JSON"),
    (["--boxes", "BOXES_SHAPE"], "shape"),
    (["--max-side", "16"], "--max-side: max_side must be an integer >= 32 pixels or None, got 16"),
])
def test_detect_usage_errors(tmp_path, capsys, extra, needle):
    (tmp_path / "boxes_text.json").write_text("{not json")
    (tmp_path / "boxes_shape.json").write_text(json.dumps({"a.jpg": [1, 2, 3]}))
    subs = {"BAD": str(_bad_model(tmp_path)), "BOXES_TEXT": str(tmp_path / "boxes_text.json"),
            "BOXES_SHAPE": str(tmp_path / "boxes_shape.json")}
    extra = [subs.get(a, a.format(tmp=tmp_path)) for a in extra]
    assert run("detect", ASTRONAUT, "--out", tmp_path / "out", "--quiet", *extra) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "out" / "landmarks.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_detect_cuda_without_gpu(tmp_path, capsys):
    assert run("detect", ASTRONAUT, "--device", "cuda", "--out", tmp_path) == 2
    assert "CUDA" in capsys.readouterr().err


def test_argparse_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["detect"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["nosuchcommand"])
    assert e.value.code == 2


def test_detect_video(tmp_path):
    face = cv2.imread(str(ASTRONAUT))[:320, 80:400]
    path = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 320))
    for i in range(4):
        vw.write(cv2.warpAffine(face, np.float64([[1, 0, 2 * i], [0, 1, i]]), (320, 320)))
    vw.release()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"no video here" * 50)
    out = tmp_path / "out"
    assert run("detect", path, broken, "--out", out, "--quiet") == 1
    entries = _load(out / "landmarks.json")["images"]
    frames = [e for e in entries if e["path"] == str(path)]
    assert [e["frame"] for e in frames] == [0, 1, 2, 3]
    assert [e["t_s"] for e in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3], abs=1e-3)
    for e in frames:
        _entry_ok({k: v for k, v in e.items() if k not in ("frame", "t_s")})
        assert len(e["faces"]) == 1
    assert "error" in [e for e in entries if e["path"] == str(broken)][0]
    cap = cv2.VideoCapture(str(out / "clip.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    cap.release()


def test_output_names_never_clash_or_overwrite(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    blank = np.full((40, 40, 3), 100, np.uint8)
    cv2.imwrite(str(a / "x.png"), blank)
    cv2.imwrite(str(b / "x.png"), blank)
    assert run("detect", a / "x.png", b / "x.png", "--out", tmp_path / "o", "--quiet") == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["landmarks.json", "x.png", "x_2.png"]
    # --out the input's own folder: the input is kept, the copy gets another name
    before = (a / "x.png").read_bytes()
    assert run("detect", a / "x.png", "--out", a, "--quiet") == 0
    assert (a / "x.png").read_bytes() == before and (a / "x_2.png").is_file()


# ------------------------------------------------------------------ other commands
def test_demo(tmp_path, capsys):
    assert run("demo", "--out", tmp_path) == 0
    d = _load(tmp_path / "landmarks.json")
    assert len(d["images"][0]["faces"]) == 1
    assert cv2.imread(str(tmp_path / "astronaut.jpg")).shape == (512, 512, 3)
    assert "1 face(s)" in capsys.readouterr().out


@pytest.mark.skipif(not pyflm.HAS_OPS, reason="export needs the compiled op library")
def test_export(tmp_path, capsys):
    ts = tmp_path / "m.ts"
    assert run("export", "--out", ts) == 0
    module, meta = deploy.load_torchscript(ts)
    assert meta["num_landmarks"] == 68
    assert run("export", "--model", ts, "--out", tmp_path / "again.ts") == 2
    assert "already an exported TorchScript" in capsys.readouterr().err
    assert run("export", "--model", _bad_model(tmp_path), "--out", tmp_path / "x.ts") == 2
    assert not (tmp_path / "x.ts").exists()
    # detect runs an exported model too
    assert run("detect", ASTRONAUT, "--model", ts, "--out", tmp_path / "o", "--quiet", "--no-draw") == 0


def test_info(capsys):
    assert run("info") == 0
    info = json.loads(capsys.readouterr().out)
    meta = deploy.load_model_file(deploy.default_model_path())["meta"]
    assert info["model"]["input_size"] == meta["input_size"] and info["model"]["num_landmarks"] == 68
    assert "non-commercial" in info["model"]["licence"]["weights"] and "devices" in info
    assert info["model"]["box_types"] == sorted(meta["crop"]["boxes"])
    assert info["model"]["calibration"] == meta["calibration"]  # the bundled model is calibrated: where, what it did


def test_bench(capsys):
    assert run("bench", "--threads", "1", "--min-time", "0.05") == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("1 ")]
    assert len(rows) == 1 and all(float(v) > 0 for v in rows[0][1:])


def test_eval(capsys):
    from pyflm.data.splits import default_data_root

    if not (default_data_root() / "300w" / "lfpw" / "testset").is_dir():
        pytest.skip("300-W data not present")
    nmes = []
    settings = ([], ["--flip-test"], ["--refine", "1"], ["--refine", "0"])
    for extra in settings:
        assert run("eval", "--split", "lfpw-test", "--limit", "6", "--quiet", *extra) == 0
        out = capsys.readouterr().out
        refine = repr(int(extra[1]) if "--refine" in extra else "auto")
        assert f"flip_test={'--flip-test' in extra}, refine={refine})" in out
        row = [line for line in out.splitlines() if line.startswith("| lfpw-test")][0]
        nmes.append(float(row.split("|")[2]))
    assert all(0 < nme < 15 for nme in nmes) and len(set(nmes[:3])) == 3  # each setting changes the landmarks
    assert nmes[3] == nmes[0]  # ground-truth crops are tight: "auto" refines them 0 times


def test_refine_argument(capsys):
    for bad in ("11", "-1", "two", "1.5"):
        with pytest.raises(SystemExit) as e:
            main(["eval", "--refine", bad])
        assert e.value.code == 2 and "--refine" in capsys.readouterr().err


def test_eval_bad_split(tmp_path, capsys):
    assert run("eval", "--split", "common", "--root", tmp_path / "nowhere", "--quiet") == 2
    assert "common" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [[], ["detect"], ["demo"], ["export"], ["eval"], ["bench"], ["info"]])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(cmd + ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: pyflm")
    if cmd == []:
        assert all(c in text for c in ("detect", "demo", "export", "eval", "bench", "info"))
    if cmd == ["detect"]:
        assert "--boxes" in text and '"version": 1' in text and "pixel centres" in text


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "pyflm", "--help"], capture_output=True, text=True, timeout=60,
                       cwd=Path(pyflm.__file__).parent.parent)
    assert r.returncode == 0 and "detect" in r.stdout and "demo" in r.stdout
