"""pyflm.io: image loading and conversion, folder listing, video frames, atomic writers."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from pyflm.io import (
    IMAGE_EXTENSIONS,
    is_video,
    iter_images,
    iter_video_frames,
    load_image,
    to_bgr_uint8,
    write_image_atomic,
    write_json_atomic,
)


@pytest.fixture
def rng():
    return np.random.default_rng()


def _bgr(rng, h=7, w=9):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- arrays


def test_uint8_bgr_is_copied_not_aliased(rng):
    a = _bgr(rng)
    out = load_image(a)
    assert out.dtype == np.uint8 and out.shape == a.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, a)
    assert not np.shares_memory(out, a)


def test_writes_do_not_propagate(rng):
    a = _bgr(rng)
    keep = a.copy()
    out = load_image(a)
    out[:] = 0
    np.testing.assert_array_equal(a, keep)
    a[:] = 255
    assert out.max() == 0


def test_copy_false_returns_the_array_itself_only_when_nothing_changes(rng):
    a = _bgr(rng)
    assert load_image(a, copy=False) is a
    big = _bgr(rng, 20, 30)
    converted = {"rgb order": (a, {"input_order": "rgb"}), "rgb output": (a, {"color": "rgb"}),
                 "grey": (a[:, :, 0], {}), "bgra": (np.dstack([a, a[:, :, :1]]), {}),
                 "uint16": (a.astype(np.uint16) * 257, {}), "non-contiguous": (big[::2, 1::3], {})}
    for name, (x, kw) in converted.items():
        out = load_image(x, copy=False, **kw)
        assert out.flags.c_contiguous and out.dtype == np.uint8 and out.shape[2] == 3, name
        assert not np.shares_memory(out, x), name
        np.testing.assert_array_equal(out, load_image(x, **kw), err_msg=name)


def test_rgb_input_and_output_orders(rng):
    a = _bgr(rng)
    rgb = a[:, :, ::-1]
    np.testing.assert_array_equal(load_image(rgb, input_order="rgb"), a)
    np.testing.assert_array_equal(load_image(a, color="rgb"), rgb)
    np.testing.assert_array_equal(load_image(rgb, color="rgb", input_order="rgb"), rgb)
    assert load_image(a, color="RGB").flags.c_contiguous


def test_non_contiguous_input(rng):
    big = _bgr(rng, 20, 30)
    view = big[::2, 1::3]
    out = load_image(view)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, view)


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 1)])
def test_grey_to_three_channels(rng, shape):
    g = rng.integers(0, 256, shape, dtype=np.uint8)
    out = load_image(g)
    assert out.shape == (6, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], g.reshape(6, 5))


@pytest.mark.parametrize("order", ["bgr", "rgb"])
def test_four_channels_drop_alpha(rng, order):
    a = rng.integers(0, 256, (5, 4, 4), dtype=np.uint8)
    out = load_image(a, input_order=order)
    want = a[:, :, :3] if order == "bgr" else a[:, :, 2::-1]
    np.testing.assert_array_equal(out, want)


def test_uint16_scaled_by_257_rounded():
    v = np.arange(0, 65536, dtype=np.uint16)
    out = load_image(v.reshape(256, 256))[:, :, 0].ravel()
    np.testing.assert_array_equal(out, np.rint(v / 257.0).astype(np.uint8))
    assert out[-1] == 255 and out[257 * 100] == 100


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_unit_range(rng, dtype):
    f = rng.random((4, 6, 3)).astype(dtype)
    f[0, 0] = [0.0, 1.0, 0.5]
    out = load_image(f)
    np.testing.assert_array_equal(out, np.rint(f.astype(np.float64) * 255).astype(np.uint8))
    assert out[0, 0].tolist() == [0, 255, 128]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_non_finite_rejected(bad):
    f = np.zeros((3, 3, 3), np.float32)
    f[1, 2, 0] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        load_image(f)


@pytest.mark.parametrize("lo,hi", [(-0.1, 0.5), (0.0, 255.0)])
def test_float_out_of_range_rejected(lo, hi):
    f = np.full((3, 3), lo, np.float64)
    f[0, 0] = hi
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image(f)


def test_bool_rejected():
    with pytest.raises(ValueError, match="boolean"):
        load_image(np.zeros((3, 3), bool))


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint32, np.complex64])
def test_other_dtypes_rejected(dtype):
    with pytest.raises(ValueError, match=np.dtype(dtype).name):
        load_image(np.zeros((3, 3, 3), dtype))


@pytest.mark.parametrize("shape", [(5,), (3, 3, 2), (3, 3, 5), (2, 3, 3, 3)])
def test_bad_shapes_rejected(shape):
    with pytest.raises(ValueError, match=r"shape \(" + ", ".join(map(str, shape))):
        load_image(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("shape", [(0, 5, 3), (4, 0), (0,)])
def test_empty_rejected(shape):
    with pytest.raises(ValueError, match="empty"):
        load_image(np.zeros(shape, np.uint8))


def test_bad_arguments(rng):
    with pytest.raises(ValueError, match="color"):
        load_image(_bgr(rng), color="hsv")
    with pytest.raises(ValueError, match="input_order"):
        load_image(_bgr(rng), input_order="bgra")
    with pytest.raises(TypeError, match="list"):
        load_image([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="dtype"):
        to_bgr_uint8(np.array([["a"]]))


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tiff"])
def test_lossless_round_trip(tmp_path, rng, ext):
    a = _bgr(rng, 11, 13)
    p = tmp_path / f"x{ext}"
    write_image_atomic(p, a)
    np.testing.assert_array_equal(load_image(p), a)
    np.testing.assert_array_equal(load_image(str(p), color="rgb"), a[:, :, ::-1])


def test_jpeg_round_trip(tmp_path, rng):
    a = np.clip(cv2.GaussianBlur(_bgr(rng, 32, 40), (7, 7), 2).astype(int) + 40, 0, 255).astype(np.uint8)
    p = tmp_path / "x.JPG"
    write_image_atomic(p, a, [cv2.IMWRITE_JPEG_QUALITY, 98])
    out = load_image(p)
    assert out.shape == a.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - a).mean() < 3


def test_png_16bit_and_grey(tmp_path, rng):
    a = rng.integers(0, 65536, (9, 8, 3), dtype=np.uint16)
    write_image_atomic(tmp_path / "c16.png", a)
    np.testing.assert_array_equal(load_image(tmp_path / "c16.png"), np.rint(a / 257.0).astype(np.uint8))
    g = rng.integers(0, 65536, (9, 8), dtype=np.uint16)
    write_image_atomic(tmp_path / "g16.png", g)
    out = load_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out, np.repeat(np.rint(g / 257.0).astype(np.uint8)[:, :, None], 3, 2))


def test_png_bgra_alpha_dropped(tmp_path, rng):
    a = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    a[..., 3] = rng.integers(0, 256, (6, 7))  # varying alpha must not leak into the colours
    write_image_atomic(tmp_path / "a.png", a)
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), a[:, :, :3])


def test_jpeg_exif_orientation_applied(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :10] = 255  # white band on the left
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    # APP1 Exif with one IFD entry: Orientation (0x0112) = 6, "rotate 90 clockwise to display"
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0) \
        + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + tiff
    p = tmp_path / "rot.jpg"
    p.write_bytes(jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpg[2:])
    out = load_image(p)
    assert out.shape == (40, 20, 3)
    assert out[:10].mean() > 200 and out[-10:].mean() < 50  # the left band is now on top


def test_non_ascii_path(tmp_path, rng):
    a = _bgr(rng)
    p = tmp_path / "Gesichter äöü 顔" / "bild ø.png"
    write_image_atomic(p, a)
    np.testing.assert_array_equal(load_image(p), a)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image(p)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image(str(p))


@pytest.mark.parametrize("content", [b"", b"not an image at all\n", b"\xff\xd8\xff\xe0garbage"])
def test_corrupt_or_non_image_file(tmp_path, content):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(ValueError, match="bad.jpg"):
        load_image(p)


def test_truncated_png(tmp_path, rng):
    p = tmp_path / "t.png"
    write_image_atomic(p, _bgr(rng, 40, 40))
    p.write_bytes(p.read_bytes()[:60])
    with pytest.raises(ValueError, match="t.png"):
        load_image(p)


def test_directory_is_not_an_image(tmp_path):
    d = tmp_path / "dir.png"
    d.mkdir()
    with pytest.raises(ValueError, match="dir.png"):
        load_image(d)


# ---------------------------------------------------------------- folders


def test_iter_images(tmp_path):
    for name in ["b.JPG", "a.png", "c.jpeg", "d.txt", "e.pts", ".hidden.jpg", "f.Tiff"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.bmp").write_bytes(b"x")
    (tmp_path / "folder.jpg").mkdir()
    assert [p.name for p in iter_images(tmp_path)] == ["a.png", "b.JPG", "c.jpeg", "f.Tiff"]
    rec = iter_images(str(tmp_path), recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in rec] == ["a.png", "b.JPG", "c.jpeg", "f.Tiff", "sub/z.bmp"]
    assert all(isinstance(p, Path) for p in rec)
    assert iter_images(tmp_path / "sub") == [tmp_path / "sub" / "z.bmp"]
    assert ".jpg" in IMAGE_EXTENSIONS and ".png" in IMAGE_EXTENSIONS


def test_iter_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        iter_images(tmp_path / "missing")
    (tmp_path / "f.jpg").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="f.jpg"):
        iter_images(tmp_path / "f.jpg")
    (tmp_path / "empty").mkdir()
    assert iter_images(tmp_path / "empty") == []


# ---------------------------------------------------------------- video


def test_is_video():
    assert is_video("a.mp4") and is_video(Path("x/B.MOV")) and is_video("c.webm") and is_video("d.M4V")
    assert not is_video("a.jpg") and not is_video("mp4") and not is_video("a.mp4.txt")


def _write_video(tmp_path, frames, fps=10.0):
    for fourcc, ext in (("mp4v", ".mp4"), ("MJPG", ".avi")):
        p = tmp_path / f"clip{ext}"
        w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*fourcc), fps, (frames[0].shape[1], frames[0].shape[0]))
        if not w.isOpened():
            continue
        for f in frames:
            w.write(f)
        w.release()
        cap = cv2.VideoCapture(str(p))
        ok = cap.isOpened() and cap.read()[0]
        cap.release()
        if ok:
            return p
    pytest.skip("this OpenCV build can neither write nor read back mp4v .mp4 or MJPG .avi")


def test_video_frames(tmp_path):
    levels = [0, 60, 120, 180, 240]
    frames = [np.full((48, 64, 3), v, np.uint8) for v in levels]
    p = _write_video(tmp_path, frames, fps=10.0)
    assert is_video(p)
    got = list(iter_video_frames(p))
    assert [i for i, _, _ in got] == list(range(len(levels)))
    np.testing.assert_allclose([t for _, t, _ in got], [0.0, 0.1, 0.2, 0.3, 0.4], atol=1e-6)
    for (_, _, f), v in zip(got, levels):
        assert f.shape == (48, 64, 3) and f.dtype == np.uint8 and f.flags.c_contiguous
        assert abs(float(f.mean()) - v) < 8  # lossy codec


def test_video_early_close_releases(tmp_path):
    p = _write_video(tmp_path, [np.full((32, 32, 3), 9 * i, np.uint8) for i in range(6)])
    gen = iter_video_frames(p)
    assert next(gen)[0] == 0
    gen.close()  # runs the finally: capture released, no error
    with pytest.raises(StopIteration):
        next(gen)


def test_video_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.mp4"):
        next(iter_video_frames(tmp_path / "gone.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 10)
    with pytest.raises(ValueError, match="bad.mp4"):
        next(iter_video_frames(bad))
    (tmp_path / "d.mp4").mkdir()
    with pytest.raises(ValueError, match="d.mp4"):
        next(iter_video_frames(tmp_path / "d.mp4"))


# ---------------------------------------------------------------- atomic writers


def _leftovers(folder: Path, keep: set[str]):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_atomic_writes_use_the_umask(tmp_path):
    import stat

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644  # not mkstemp's 0600


def test_write_json_atomic(tmp_path):
    p = tmp_path / "new" / "deeper" / "r.json"
    obj = {"a": np.arange(3, dtype=np.int32), "b": np.float32(1.5), "c": (1, np.int64(2)), np.int64(4): True,
           "d": {"p": Path("x/y"), "flag": np.bool_(False)}, "e": np.zeros((2, 2)), "ü": "顔"}
    write_json_atomic(p, obj)
    text = p.read_text(encoding="utf-8")
    assert json.loads(text) == {"a": [0, 1, 2], "b": 1.5, "c": [1, 2], "4": True,
                                "d": {"p": "x/y", "flag": False}, "e": [[0.0, 0.0], [0.0, 0.0]], "ü": "顔"}
    assert text.startswith('{\n  "a": [') and text.endswith("\n")
    assert _leftovers(p.parent, {"r.json"}) == []


def test_write_json_failure_keeps_old_content(tmp_path):
    p = tmp_path / "r.json"
    write_json_atomic(p, {"v": 1})
    with pytest.raises(TypeError, match="object"):
        write_json_atomic(p, {"v": object()})
    assert json.loads(p.read_text()) == {"v": 1}
    assert _leftovers(tmp_path, {"r.json"}) == []


def test_write_failure_during_replace_cleans_temp(tmp_path, monkeypatch):
    p = tmp_path / "r.json"
    write_json_atomic(p, {"v": 1})

    def fail(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="simulated"):
        write_json_atomic(p, {"v": 2})
    monkeypatch.undo()
    assert json.loads(p.read_text()) == {"v": 1}
    assert _leftovers(tmp_path, {"r.json"}) == []


def test_write_image_atomic(tmp_path, rng):
    a = _bgr(rng)
    p = tmp_path / "out" / "img.png"
    write_image_atomic(p, a)
    np.testing.assert_array_equal(cv2.imread(str(p), cv2.IMREAD_UNCHANGED), a)
    write_image_atomic(p, a[:, :, 0])  # overwrite with grey
    assert cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape == a.shape[:2]
    assert _leftovers(p.parent, {"img.png"}) == []


def test_write_image_atomic_errors_keep_old(tmp_path, rng):
    a = _bgr(rng)
    p = tmp_path / "img.png"
    write_image_atomic(p, a)
    before = p.read_bytes()
    with pytest.raises(ValueError, match="img.png"):
        write_image_atomic(p, np.zeros((0, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="img.xyz"):
        write_image_atomic(tmp_path / "img.xyz", a)
    with pytest.raises(ValueError, match="noext"):
        write_image_atomic(tmp_path / "noext", a)
    with pytest.raises(ValueError, match="float64"):
        write_image_atomic(p, np.zeros((4, 4, 3), np.float64) + 0.5)  # cv2 would truncate to 8 bit silently
    with pytest.raises(ValueError, match="uint16"):
        write_image_atomic(tmp_path / "img.jpg", np.zeros((4, 4, 3), np.uint16))  # JPEG is 8 bit
    with pytest.raises(ValueError, match="img.png"):
        write_image_atomic(p, np.zeros((4, 4, 2), np.uint8))  # 2 channels: the encoder refuses
    with pytest.raises(TypeError, match="img.png"):
        write_image_atomic(p, [[0]])
    assert p.read_bytes() == before
    assert _leftovers(tmp_path, {"img.png"}) == []
