"""The ``pyflm`` command line.

Commands::

    pyflm detect IMAGE|DIR|VIDEO... [--out DIR] [--json FILE] [--model M] [--device cpu|cuda]
                 [--detector haar|dlib|none] [--boxes JSON] [--batch N] [--no-draw]
    pyflm demo   [--out DIR]                 # detect on the bundled sample photo
    pyflm export [--model M] --out FILE.ts   # TorchScript predictor for C++ / torch.jit.load
    pyflm eval   [--model M] [--split common ...] [--crops gt|detector]
    pyflm bench  [--model M] [--threads 1 2]
    pyflm info                               # versions, build, devices, the model card

Exit status: 0 success; 1 some input file failed (the others are still
processed and written); 2 usage errors (bad arguments, a model that cannot be
loaded, ``--device cuda`` without CUDA, an unreadable ``--boxes`` file).

``pyflm detect`` output
-----------------------
Annotated copies of the inputs go to ``--out`` (default ``pyflm_output``):
images under their own names (an input folder ``D`` as ``OUT/D/...``), videos
as ``OUT/<stem>.avi`` (MJPG). The JSON (``--json``, default
``OUT/landmarks.json``, written atomically) is::

    {"version": 1,                       # this schema's version
     "model": "path/to/model.pt",
     "images": [
       {"path": "photo.jpg", "width": 640, "height": 480,
        "faces": [{"box": [x0, y0, x1, y1],          # the face box the crop came from
                   "detection_score": 0.98,           # 1.0 for --boxes
                   "landmarks": [[x, y], ... 68],     # image pixels
                   "scores": [s, ... 68]}],           # per-landmark confidence
        "timings_ms": {"load", "detect", "crop", "landmarks", "total"},
        "error": "message"}                           # only when this file failed
     ]}

Coordinates are 0-based pixels with pixel centres at integers (the centre of
the top-left pixel is (0, 0)); boxes are (x0, y0, x1, y1) in the same units.
A failed file has ``width``/``height`` null and ``faces`` empty. Each video
frame is one entry with two extra keys, ``"frame"`` (0-based index) and
``"t_s"`` (seconds); its ``path`` is the video's.

``--boxes FILE``: JSON ``{"<image path or file name>": [x0, y0, x1, y1] or
[[x0, y0, x1, y1], ...]}``: those images skip face detection (for a video: the
boxes of its first frame). Boxes are read as ``--box-type`` (default
``tight``: a tight box around the 68 landmarks).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

DEFAULT_OUT = "pyflm_output"
SCHEMA_VERSION = 1
CODE_LICENCE = "Apache-2.0"
WEIGHTS_LICENCE = "bundled weights: trained on 300-W images, for non-commercial research use only"


class UsageError(Exception):
    """A problem with the command's arguments (exit status 2)."""


def _err(msg: str) -> None:
    print(f"pyflm: {msg}", file=sys.stderr)


# ------------------------------------------------------------------ shared helpers
def _make_landmarker(args, detector="default", num_threads=None):
    from pyflm.deploy import ModelFileError
    from pyflm.landmarker import FaceLandmarker

    try:
        return FaceLandmarker(model=args.model, device=args.device, detector=detector,
                              max_batch_size=getattr(args, "batch", 32),
                              box_type=getattr(args, "box_type", None),
                              num_threads=num_threads or getattr(args, "threads", None),
                              backend=getattr(args, "backend", "auto"),
                              flip_test=getattr(args, "flip_test", False),
                              refine=getattr(args, "refine", "auto"))
    except (ModelFileError, RuntimeError, ValueError, ImportError) as e:
        raise UsageError(str(e)) from None


def _detector_spec(name: str, max_side: int | None = None):
    """The --detector name as get_face_detector takes it; Haar with --max-side."""
    if name == "none":
        return None
    if max_side is not None and name.strip().lower() in ("default", "haar"):
        from pyflm.face_detection import HaarFaceDetector

        try:
            return HaarFaceDetector(max_side=max_side or None)
        except ValueError as e:
            raise UsageError(f"--max-side: {e}") from None
    return name


def _timings(t: dict) -> dict:
    return {k: round(float(v), 2) for k, v in t.items()}


def _load_boxes_file(path) -> dict:
    from pyflm.landmarker import check_boxes

    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--boxes file not found: {p}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"--boxes file {p} is not readable JSON: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--boxes file {p}: expected an object {{image: boxes}}, got {type(data).__name__}")
    try:
        return {str(k): check_boxes(v, f"{p}[{k!r}]") for k, v in data.items()}
    except ValueError as e:
        raise UsageError(str(e)) from None


def _boxes_for(boxes: dict | None, path: Path, given: str):
    if not boxes:
        return None
    for key in (given, str(path), str(path.resolve()), path.name):
        if key in boxes:
            return boxes[key]
    return None


class _OutputNames:
    """Output paths under ``out`` that never repeat and never overwrite an input."""

    def __init__(self, out: Path):
        self.out, self.used = out, set()

    def __call__(self, rel: Path, source: Path, suffix: str | None = None) -> Path:
        rel = rel.with_suffix(suffix) if suffix else rel
        cand, n = self.out / rel, 1
        while cand in self.used or (cand.exists() and cand.resolve() == source.resolve()):
            n += 1
            cand = self.out / rel.with_name(f"{rel.stem}_{n}{rel.suffix}")
        self.used.add(cand)
        return cand


def _expand_inputs(inputs, recursive: bool):
    """[(kind "image"|"video", path, output relative path, as given)]."""
    from pyflm.io import is_video, iter_images

    out = []
    for given in inputs:
        p = Path(given)
        if p.is_dir():
            found = list(iter_images(p, recursive=recursive))
            if not found:
                _err(f"no images in folder {p}")
            out += [("image", f, Path(p.resolve().name or "root") / f.relative_to(p), given) for f in found]
        elif is_video(p):
            out.append(("video", p, Path(p.name), given))
        else:
            out.append(("image", p, Path(p.name), given))
    return out


def _progress(iterable, total, desc, quiet):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img" if desc == "images" else "frame",
                disable=True if quiet else None, leave=False)


def run_detect(lm, inputs, out_dir: Path | None, boxes: dict | None = None, recursive: bool = False,
               quiet: bool = False, smooth: bool = True, redetect_every: int = 0) -> tuple[dict, int]:
    """Detect on every input; write annotated files to ``out_dir`` (None: none).
    Returns (the JSON payload, number of failed files)."""
    from pyflm.drawing import draw_faces
    from pyflm.io import write_image_atomic

    names = _OutputNames(out_dir) if out_dir is not None else None
    entries: list[dict] = []
    failed = 0
    todo = _expand_inputs(inputs, recursive)
    images = [t for t in todo if t[0] == "image"]
    slots: dict[int, dict] = {}

    def items():
        for i, (_, path, _, given) in enumerate(images):
            b = _boxes_for(boxes, path, given)
            if b is None and lm.detector is None:
                slots[i] = _error_entry(path, ValueError(f"{path}: no face detector (--detector none) and no "
                                                         "boxes for this file in --boxes"))
                continue
            yield i, path, b

    for i, res, timings, img in _progress(lm._iter_detect(items()), len(images), "images", quiet):
        path = images[i][1]
        if isinstance(res, Exception):
            slots[i] = _error_entry(path, res)
            continue
        slots[i] = {"path": str(path), "width": int(img.shape[1]), "height": int(img.shape[0]),
                    "faces": [f.to_dict() for f in res], "timings_ms": _timings(timings)}
        if names is not None:
            try:
                write_image_atomic(names(images[i][2], path), draw_faces(img, res))
            except Exception as e:  # noqa: BLE001 (report, go on)
                slots[i]["error"] = f"cannot write the annotated image: {e}"
    for i in range(len(images)):
        entries.append(slots[i])
    for kind, path, rel, given in todo:
        if kind == "video":
            entries += _run_video(lm, path, rel, names, _boxes_for(boxes, path, given), quiet, smooth,
                                  redetect_every)
    for e in entries:
        if "error" in e:
            failed += 1
            _err(f"{e['path']}: {e['error']}")
    payload = {"version": SCHEMA_VERSION, "model": lm.model_source, "images": entries}
    return payload, failed


def _error_entry(path, exc: Exception) -> dict:
    return {"path": str(path), "width": None, "height": None, "faces": [], "timings_ms": {},
            "error": str(exc) or type(exc).__name__}


def _run_video(lm, path: Path, rel: Path, names, boxes, quiet, smooth, redetect_every) -> list[dict]:
    import cv2

    from pyflm.drawing import draw_faces
    from pyflm.io import iter_video_frames

    if boxes is None and lm.detector is None:
        return [_error_entry(path, ValueError("no face detector (--detector none) and no boxes for this video"))]
    cap = cv2.VideoCapture(str(path))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    cap.release()
    entries: list[dict] = []
    writer, tmp, target = None, None, None
    frames: dict = {}

    def remember():  # frames pass through here so that the annotated video can use them
        for index, t_s, frame in iter_video_frames(path):
            frames["last"] = (time.perf_counter(), frame)
            yield frame

    try:
        t_prev = time.perf_counter()
        for index, t_s, faces in _progress(lm.detect_video(remember(), smooth=smooth, redetect_every=redetect_every,
                                                           boxes=boxes, fps=fps), total, path.name, quiet):
            frame = frames["last"][1]
            now = time.perf_counter()
            entries.append({"path": str(path), "frame": int(index), "t_s": round(float(t_s), 4),
                            "width": int(frame.shape[1]), "height": int(frame.shape[0]),
                            "faces": [f.to_dict() for f in faces], "timings_ms": {"total": round((now - t_prev) * 1e3, 2)}})
            if names is not None:
                if writer is None:
                    target = names(rel, path, ".avi")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".avi", dir=target.parent)
                    os.close(fd)
                    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"MJPG"), fps,
                                             (frame.shape[1], frame.shape[0]))
                writer.write(draw_faces(frame, faces))
            t_prev = time.perf_counter()
        if not entries:
            raise ValueError(f"no frames could be read from {path}")
    except Exception as e:  # noqa: BLE001 (the video is reported as failed, the run goes on)
        entries.append(_error_entry(path, e))
    finally:
        if writer is not None:
            writer.release()
            if "error" in entries[-1]:
                Path(tmp).unlink(missing_ok=True)
            else:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; an output video is for everyone to read
                os.replace(tmp, target)
    return entries


# ------------------------------------------------------------------ commands
def _detect(args: argparse.Namespace) -> int:
    from pyflm.io import write_json_atomic

    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    boxes = _load_boxes_file(args.boxes) if args.boxes else None
    lm = _make_landmarker(args, detector=_detector_spec(args.detector, args.max_side))
    if lm.detector is None and not boxes:
        raise UsageError("--detector none needs --boxes FILE (face boxes per image)")
    out_dir = Path(args.out)
    payload, failed = run_detect(lm, args.inputs, None if args.no_draw else out_dir, boxes, args.recursive,
                                 args.quiet, not args.no_smooth, args.redetect_every)
    json_path = Path(args.json) if args.json else out_dir / "landmarks.json"
    write_json_atomic(json_path, payload)
    n_faces = sum(len(e["faces"]) for e in payload["images"])
    where = "" if args.no_draw else f"; annotated files in {out_dir}"
    print(f"pyflm detect: {len(payload['images'])} images/frames, {n_faces} faces, {failed} failed{where}; "
          f"JSON: {json_path}")
    return 1 if failed else 0


def _demo(args: argparse.Namespace) -> int:
    """Landmarks on the bundled sample photo: annotated picture + JSON."""
    import numpy as np

    from pyflm.io import write_image_atomic, write_json_atomic

    if args.ops:
        return _demo_ops(args)
    import pyflm

    sample = Path(pyflm.__file__).parent / "assets" / "astronaut.jpg"
    out_dir = Path(args.out)
    t0 = time.perf_counter()
    lm = _make_landmarker(args)
    t_load = time.perf_counter() - t0
    for _ in range(3):  # warm-up: TorchScript's profiling executor optimises on the first calls
        lm.detect(np.zeros((lm.input_size, lm.input_size, 3), np.uint8), boxes=[[0, 0, 10, 10]])
    if sample.is_file():
        payload, failed = run_detect(lm, [str(sample)], out_dir, quiet=True)
        image_out = out_dir / sample.name
        print(f"sample photo: {sample} (public domain, NASA; see pyflm/assets/README.md)")
    else:  # a stripped install: a synthetic picture with a given box
        rng = np.random.default_rng(0)
        img = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        synth = out_dir / "synthetic_input.png"
        write_image_atomic(synth, img)
        payload, failed = run_detect(lm, [str(synth)], out_dir / "annotated",
                                     boxes={str(synth): np.array([[100.0, 60.0, 220.0, 180.0]])}, quiet=True)
        image_out = out_dir / "annotated" / synth.name
        print(f"the sample photo is missing ({sample}); ran on a synthetic image (no real face) with a given box")
    json_path = out_dir / "landmarks.json"
    write_json_atomic(json_path, payload)
    entry = payload["images"][0]
    if failed:
        _err(f"demo failed: {entry.get('error')}")
        return 1
    print(f"{lm!r}\nmodel loaded in {t_load:.2f} s")
    print(f"{len(entry['faces'])} face(s) in {entry['width']}x{entry['height']} px; "
          f"timings after warm-up (ms): {entry['timings_ms']}")
    for f in entry["faces"]:
        lms = np.asarray(f["landmarks"])
        print(f"  box {f['box']}  mean landmark score {np.mean(f['scores']):.3f}  "
              f"eye corners {lms[36].round(1).tolist()} {lms[45].round(1).tolist()}")
    print(f"wrote {image_out} and {json_path}")
    if sample.is_file() and not args.no_cpp:
        return _demo_cpp(lm, sample, out_dir, entry)
    return 0


def _demo_cpp(lm, sample: Path, out_dir: Path, entry: dict) -> int:
    """The same photo through the C++ binary (exported model, same crops): the
    landmarks must agree with Python's."""
    import subprocess

    import numpy as np

    from pyflm import _cpp_tool, deploy

    binary = _cpp_tool.binary_path()
    if binary is None:
        print("C++ binary: not built in this install (needs libopencv-dev and nlohmann-json3-dev at install time)")
        return 0
    if not isinstance(lm.model_source, str) or not Path(lm.model_source).is_file():
        return 0
    ts = out_dir / "model.ts"
    src = Path(lm.model_source)
    if src.suffix == ".ts":
        ts = src
    else:
        deploy.export_torchscript(deploy.load_model_file(src), ts)
    cpp_json, cpp_dir = out_dir / "landmarks_cpp.json", out_dir / "cpp"
    cmd = [str(binary), "--model", str(ts), "--threads", "1", *_cpp_tool.cascade_args([]), "--json", str(cpp_json),
           "--out-dir", str(cpp_dir), str(sample)]
    print("C++:", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        _err(f"demo: the C++ binary failed ({done.returncode}): {done.stderr.strip()}")
        return 1
    faces = json.loads(cpp_json.read_text(encoding="utf-8"))["images"][0]["faces"]
    if len(faces) != len(entry["faces"]):
        _err(f"demo: C++ found {len(faces)} face(s), Python {len(entry['faces'])}")
        return 1
    diff = max((float(np.abs(np.asarray(a["landmarks"]) - np.asarray(b["landmarks"])).max())
                for a, b in zip(faces, entry["faces"])), default=0.0)
    print(f"C++ binary: {len(faces)} face(s), landmarks within {diff:.4f} px of Python's; "
          f"wrote {cpp_dir / sample.name} and {cpp_json}")
    return 0 if diff <= 0.05 else 1


def _demo_ops(args: argparse.Namespace) -> int:
    """Encode random sub-pixel landmarks as heatmaps, refine them with the dilated
    skip block, and decode them back with both decoders."""
    import pyflm

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA device is available")
    gen = torch.Generator().manual_seed(0)
    b, k, size = 8, 68, 64
    coords = (torch.rand(b, k, 2, generator=gen) * (size - 8) + 4).to(device)
    t0 = time.perf_counter()
    heatmaps, _ = pyflm.heatmap_targets(coords, None, size, size, sigma=2.0, kind="gaussian")
    block = pyflm.DilatedSkipBlock(channels=k).to(device)
    with torch.no_grad():
        torch.nn.init.zeros_(block.layers[-1].weight)  # an untrained block: identity refinement
        torch.nn.init.zeros_(block.layers[-1].bias)
        refined = block(heatmaps)
    soft_xy, _ = pyflm.soft_argmax(refined, temperature=0.05)
    dark_xy, _ = pyflm.argmax_decode(refined, refine="dark")
    elapsed = time.perf_counter() - t0
    def err(xy):
        return (xy - coords).norm(dim=-1).mean().item()

    print(f"pyflm {pyflm.__version__}  compiled ops: {pyflm.HAS_OPS}  device: {device}")
    print(f"{b} x {k} landmarks -> heatmaps {tuple(heatmaps.shape)}; decode error soft-argmax "
          f"{err(soft_xy):.4f} px, argmax+DARK {err(dark_xy):.4f} px; {elapsed * 1e3:.1f} ms")
    return 0


def _export(args: argparse.Namespace) -> int:
    from pyflm import deploy
    from pyflm.landmarker import _is_torchscript

    path = deploy.model_path(args.model)
    if path.is_file() and _is_torchscript(path):
        raise UsageError(f"{path} is already an exported TorchScript model; export needs a model file (.pt)")
    try:
        mf = deploy.load_model_file(path)
    except deploy.ModelFileError as e:
        raise UsageError(str(e)) from None
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA device is available")
    try:
        path = deploy.export_torchscript(mf, args.out, device=args.device)
    except RuntimeError as e:  # e.g. no compiled op library in this install
        _err(f"export: {e}")
        return 1
    meta = mf["meta"]
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): task {meta['task']}, input "
          f"{meta['input_size']}x{meta['input_size']} uint8 BGR, {meta['num_landmarks']} landmarks, "
          f"device {args.device}; metadata in the extra file {deploy.EXTRA_FILE}")
    return 0


def _predict_split(lm, samples, crops: str, min_iou: float, desc: str, quiet: bool):
    """(pred, gt) lists of [68, 2] image-px arrays and the number of faces the
    detector missed. ``crops="gt"``: the model's ground-truth crop rule;
    ``"detector"``: the detected face matched to each annotation (IoU with the
    tight box of its landmarks >= ``min_iou``)."""
    import numpy as np

    from pyflm.data.crops import Crop, square_from_landmarks
    from pyflm.face_detection import match_detections
    from pyflm.io import load_image
    from pyflm.data import tight_box

    preds, gts, missed, batch = [], [], 0, []
    scale, center = lm.training_rule  # ground-truth crops: the square the model was trained on

    def flush():
        crops, frames, images, targets = zip(*batch)
        # the training crop is a tight-box crop: its refinement rounds are detect(boxes=tight)'s
        crops, coords, _ = lm._landmarks(list(crops), list(frames), list(images), lm.refine_rounds("tight"))
        for crop, gt, xy in zip(crops, targets, coords):
            preds.append(crop.to_image(xy))
            gts.append(gt)
        batch.clear()

    by_image: dict = {}
    for s in samples:  # AFW-style images hold several annotated faces
        by_image.setdefault(s.image_path, []).append(s)
    for path, group in _progress(by_image.items(), len(by_image), desc, quiet):
        img = load_image(path)
        if crops == "gt":
            for s in group:
                crop = Crop.from_square(*square_from_landmarks(s.landmarks, scale, center), lm.input_size)
                batch.append((crop, img, crop.warp(img), s.landmarks))
            if len(batch) >= lm.max_batch_size:
                flush()
            continue
        faces = lm.detect(img)
        match = match_detections(np.array([f.box for f in faces]).reshape(-1, 4),
                                 np.stack([tight_box(s.landmarks) for s in group]), min_iou=min_iou)
        for s, m in zip(group, match):
            if m < 0:
                missed += 1
            else:
                preds.append(faces[m].landmarks.astype(np.float64))
                gts.append(s.landmarks)
    if batch:
        flush()
    return preds, gts, missed


def _eval(args: argparse.Namespace) -> int:
    import numpy as np

    from pyflm.data import load_split
    from pyflm.metrics import evaluate, format_table

    detector = _detector_spec(args.detector) if args.crops == "detector" else None
    if args.crops == "detector" and detector is None:
        raise UsageError("--crops detector needs a face detector (not --detector none)")
    lm = _make_landmarker(args, detector=detector)
    rows = {}
    for split in args.split:
        try:
            samples = load_split(split, root=args.root)
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise UsageError(f"split {split!r}: {e}") from None
        if args.limit:
            samples = samples[: args.limit]
        t0 = time.perf_counter()
        preds, gts, missed = _predict_split(lm, samples, args.crops, args.min_iou, split, args.quiet)
        name = f"{split} ({args.crops} crops)"
        rows[name] = {"n": 0}
        if preds:
            m = evaluate(np.stack(preds), np.stack(gts), scheme=samples[0].scheme)
            rows[name] = {k: v for k, v in m.items() if k != "per_image"}
        if args.crops == "detector":
            rows[name]["miss rate"] = missed / max(len(samples), 1)
        rows[name]["s"] = round(time.perf_counter() - t0, 1)
    cols = ["nme", "eye_nme", "fr@0.08", "fr@0.1", "auc@0.07", "auc@0.08", "auc@0.1"]
    if args.crops == "detector":
        cols.append("miss rate")
    print(f"{lm!r}\nNME normalised by the outer eye corners (inter-ocular); FR/AUC of that NME; "
          f"n = faces evaluated; s = seconds")
    print(format_table(rows, columns=[*cols, "n", "s"], percent=cols, row_header="Split"))
    return 0


def _bench(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np
    from torch.utils import benchmark

    import pyflm

    lm = _make_landmarker(args, detector="default", num_threads=args.thread_counts[0])
    sample = Path(pyflm.__file__).parent / "assets" / "astronaut.jpg"
    if sample.is_file():
        from pyflm.io import load_image

        img, what = load_image(sample), f"the sample photo ({sample.name})"
    else:
        img, what = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8), "a synthetic image"
    box = np.array([[177.5, 66.5, 269.5, 158.5]])  # the face of the sample photo
    crops = torch.zeros(args.faces, lm.input_size, lm.input_size, 3, dtype=torch.uint8, device=lm.device)
    print(f"{lm!r}\nper-face latency on {what}, {args.faces} face(s) per call, median of "
          f">= {args.min_time:g} s per row (torch.utils.benchmark); CPU: {os.cpu_count()} logical cores")
    print(f"{'threads':>7}  {'detect(boxes) ms/face':>21}  {'network ms/face':>15}  {'face detector ms':>16}")
    boxes = np.repeat(box, args.faces, axis=0)
    for n in args.thread_counts:
        if lm.backend == "onnxruntime" and n != args.thread_counts[0]:  # its thread count is set at start
            lm = _make_landmarker(args, detector="default", num_threads=n)
        cv2.setNumThreads(n)  # the face detector's row too (OpenCV's pool is process-wide)

        def median_ms(stmt, n=n, **g):
            t = benchmark.Timer(stmt=stmt, globals=g, num_threads=n)
            return t.blocked_autorange(min_run_time=args.min_time).median * 1e3

        with torch.inference_mode():
            detect_ms = median_ms("lm.detect(img, boxes=boxes)", lm=lm, img=img, boxes=boxes) / args.faces
            net_ms = median_ms("lm._predict(x)", lm=lm, x=crops) / args.faces
        det_ms = median_ms("d(img)", d=lm.detector, img=img) if lm.detector is not None else float("nan")
        print(f"{n:>7}  {detect_ms:>21.2f}  {net_ms:>15.2f}  {det_ms:>16.2f}")
    return 0


def _info(args: argparse.Namespace) -> int:
    import pyflm

    info = pyflm.build_info()
    devices = {"cpu": {"threads": torch.get_num_threads(), "logical_cores": os.cpu_count()},
               "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        devices["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["cuda_available"] = devices["cuda_available"]
    info["devices"] = devices
    info["model"] = _model_card(args.model)
    print(json.dumps(info, indent=2, default=str))
    return 0


def _model_card(model) -> dict:
    from pyflm import deploy

    path = deploy.model_path(model)
    try:
        meta = deploy.load_model_file(path)["meta"]
    except deploy.ModelFileError as e:
        return {"path": str(path), "error": str(e)}
    card = {"path": str(path), "task": meta.get("task"), "input_size": meta.get("input_size"),
            "input": meta.get("input"), "num_landmarks": meta.get("num_landmarks"), "scheme": meta.get("scheme"),
            "box_types": sorted(meta.get("crop", {}).get("boxes", {})), "coordinates": meta.get("coordinates"),
            "licence": {"code": CODE_LICENCE, "weights": meta.get("licence", WEIGHTS_LICENCE)}}
    if "metrics" in meta:
        card["metrics"] = meta["metrics"]
        card["metrics_note"] = meta.get("metrics_note", "fractions")
    training = meta.get("training") or {}
    if training:
        card["training"] = {"step": training.get("step"), "source": training.get("source")}
    if "calibration" in meta:  # where the decode.offset was fitted, and what it did there
        card["calibration"] = meta["calibration"]
    return card


# ------------------------------------------------------------------ parser
def _add_model_args(p, device=True):
    p.add_argument("--model", default="default",
                   help="a bundled model (default: 160 px, the most accurate; fast: 128 px, quicker on a CPU), "
                        "a model file (.pt) or an exported TorchScript file (default: default)")
    if device:
        p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")


def _refine_arg(text: str):
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 10:
        raise argparse.ArgumentTypeError(f"expected auto or an integer 0..10, got {text!r}")
    return n


def _add_backend_arg(p):
    from pyflm.landmarker import BACKENDS

    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="network runtime: auto (the default: onnxruntime on the CPU where the model allows, else "
                        "torch), torch (TorchScript) or onnxruntime (CPU, 1.4-2.2x faster per face than torch)")
    p.add_argument("--flip-test", action="store_true",
                   help="also run each face mirrored and average the two (more accurate, twice the network time)")
    p.add_argument("--refine", type=_refine_arg, default="auto", metavar="N|auto",
                   help="re-crop each face from its landmarks and predict again, N times (0-10), or auto (the "
                        "default): 2 rounds for faces from the face detector or non-tight --box-type boxes, none "
                        "for tight boxes; more accurate from detector boxes, one more network pass per round")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyflm", description="pyflm: 68-point facial landmark detection.",
        epilog="Start with `pyflm demo`; `pyflm COMMAND --help` explains each command. "
               "Exit status: 0 ok, 1 some input failed, 2 usage error.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("detect", help="landmarks for images, folders and videos (annotated copies + JSON)",
                       formatter_class=fmt,
                       description="Find faces (OpenCV Haar detector by default) and their 68 landmarks in images, "
                                   "folders of images and videos.\n\n"
                                   + __doc__.split("``pyflm detect`` output\n-----------------------\n")[1])
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|VIDEO", help="image files, folders of images, videos")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"folder for annotated copies and the JSON (default: {DEFAULT_OUT})")
    p.add_argument("--json", default=None, help="where to write the JSON (default: OUT/landmarks.json)")
    _add_model_args(p)
    p.add_argument("--detector", default="default",
                   help="face detector: haar (OpenCV, the default), dlib (needs the dlib package), "
                        "or none (then give --boxes)")
    p.add_argument("--max-side", type=int, default=None, metavar="N",
                   help="haar: detect on a copy downscaled to this longer side (default 640; 0: full resolution)")
    p.add_argument("--boxes", default=None, metavar="JSON", help="face boxes per image (see above); skips detection")
    p.add_argument("--box-type", default=None, help="how the --boxes were drawn: tight (default, a tight box around the 68 landmarks) "
                        "or a detector name the model has a crop rule for, e.g. haar")
    p.add_argument("--batch", type=int, default=32, help="faces per network forward (default: 32)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the network (default: torch's)")
    _add_backend_arg(p)
    p.add_argument("--recursive", action="store_true", help="also images in sub-folders of DIR")
    p.add_argument("--no-draw", action="store_true", help="write only the JSON, no annotated copies")
    p.add_argument("--no-smooth", action="store_true", help="videos: no One-Euro smoothing of the landmarks")
    p.add_argument("--redetect-every", type=int, default=0, metavar="N",
                   help="videos: run the face detector every N frames (default 0: only when a face is lost)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_detect)

    p = sub.add_parser("demo", help="landmarks on the bundled sample photo (annotated picture + JSON)",
                       description="Run the detector on pyflm/assets/astronaut.jpg and write the annotated "
                                   "picture and the JSON to --out; then the same through the C++ binary "
                                   "pyflm-detect (when this install has it), checking both agree.")
    p.add_argument("--out", default="pyflm_demo", help="output folder (default: pyflm_demo)")
    _add_model_args(p)
    p.add_argument("--ops", action="store_true", help="instead: a round trip through the heatmap ops (no model)")
    p.add_argument("--no-cpp", action="store_true",
                   help="skip the C++ binary (by default the photo also goes through pyflm-detect when it was built)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("export", help="save the model as TorchScript (for the C++ tool or torch.jit.load)",
                       description="Script the predictor (uint8 BGR crops [B,S,S,3] -> coords [B,K,2] in crop px, "
                                   "scores [B,K]) and save it with its metadata (extra file pyflm.json).")
    _add_model_args(p)
    p.add_argument("--out", required=True, metavar="FILE.ts", help="the TorchScript file to write")
    p.set_defaults(func=_export)

    p = sub.add_parser("eval", help="accuracy on 300-W splits (NME, failure rate, AUC)",
                       description="Evaluate on annotated 300-W splits (data under --root, default PYFLM_DATA or "
                                   "../shared/data). --crops gt: the ground-truth crop rule; --crops detector: "
                                   "faces found by the detector (reports the miss rate; NME over found faces).")
    _add_model_args(p)
    p.add_argument("--split", nargs="+", default=["common"],
                   help="split names: common, helen-test, lfpw-test, challenging, full, ... (default: common)")
    p.add_argument("--crops", choices=("gt", "detector"), default="gt", help="how faces are cropped (default: gt)")
    p.add_argument("--detector", default="default", help="face detector for --crops detector (default: haar)")
    p.add_argument("--min-iou", type=float, default=0.3,
                   help="--crops detector: a face counts as found when a detection overlaps the tight box of its "
                        "annotated landmarks by this IoU (default: 0.3)")
    p.add_argument("--root", default=None, help="data root")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of each split")
    p.add_argument("--batch", type=int, default=32, help="faces per forward (default: 32)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    _add_backend_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_eval)

    p = sub.add_parser("bench", help="per-face latency of the Python API on this machine",
                       description="Median per-face latency of FaceLandmarker.detect with given boxes (crop + "
                                   "network + mapping back), the network alone, and the face detector, for "
                                   "each thread count.")
    _add_model_args(p)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], dest="thread_counts",
                   help="thread counts (default: 1 2)")
    p.add_argument("--faces", type=int, default=1, help="faces per call (default: 1)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per measurement (default: 1)")
    _add_backend_arg(p)
    p.set_defaults(func=_bench)

    p = sub.add_parser("info", help="versions, build, devices and the model card (JSON)")
    p.add_argument("--model", default="default",
                   help="bundled model name (default, fast) or model file to describe (default: default)")
    p.set_defaults(func=_info)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    _err(f"warning: {message}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning  # one line, without the source location
    try:
        return args.func(args)
    except UsageError as e:
        _err(f"{args.command}: {e}")
        return 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
