"""The user-facing detector: images in, 68 landmarks per face out.

::

    from pyflm import FaceLandmarker

    lm = FaceLandmarker()                       # bundled model, CPU, OpenCV Haar face detector
    faces = lm.detect("photo.jpg")              # list[Face]
    faces[0].landmarks                          # float32 [68, 2], image pixels
    lm.detect(img, boxes=[[x0, y0, x1, y1]])    # your own face boxes, no detection

Pipeline per face: a face box -> a square ``(cx, cy, side)`` by the model's crop
rule for that box type -> the ``S x S`` crop (``cv2.warpAffine``, bilinear,
border 0; the C++ tool does the same) -> the network (crops batched,
``max_batch_size`` per forward) -> landmarks in crop pixels -> image pixels by
the exact inverse of the crop matrix.

Refinement (``refine``): after the first prediction, a face is cropped again
around its predicted landmarks and predicted again, with the model's refinement
square (``meta["crop"]["refine"]``; models without one use their training
square). A detector's box is a noisy guess of where the face is; the landmarks
are a much better one. ``refine="auto"`` (the default) gives every face whose
box is not a tight landmark box (the face detector's boxes, or boxes you pass
with another ``box_type``) ``AUTO_REFINE_ROUNDS`` = 2 rounds and faces from
tight boxes none; an int N gives every face N rounds. Each round is one more
network pass for the faces it covers. The bundled models' squares (1.5 x the
landmarks' extent for ``default``, 1.45 for ``fast``, against 1.3 in training:
their augmentation trained them on faces smaller in the crop) and their detector
and tight rules, scaled to match, were chosen by ``training.fit_inference_crops``
on the held-out 10% of the 300-W training photos (2026-12-06; not the test sets),
where the default's NME with Haar boxes is 4.08% with no round, 3.82% with one
and 3.73% with two (with the training square: 4.44 / 4.11 / 4.00%): with a
detector, which costs 50-100 ms an image on a 2-core CPU, two more passes of
1-3 ms a face are the cheapest accuracy there is. From exact tight boxes rounds
cost a little (3.74% -> 3.80% with two, same photos), so ``"auto"`` leaves those
faces alone.

Flip test (``flip_test=True``, mmpose's ``flip_test``): each crop also runs
mirrored left-right; that prediction is mirrored back (``x -> S - 1 - x``, the
scheme's mirror permutation, so point 36 stays the right eye's outer corner)
and averaged with the plain one. Twice the network cost; on the 300-W common
set with tight boxes it lowers the bundled model's NME from 3.62% to 3.51%.
A model's calibration offset (:func:`pyflm.deploy.decode_offset`) stays what it
is: the mirrored pass brings it back mirrored, and :func:`pyflm.deploy.flip_shift`
puts that right.

Box types (``meta["crop"]["boxes"]``, one ``BoxToSquare`` rule each):

* ``"tight"``: a tight bounding box of the 68 landmarks (what you get from an
  annotation, or from the landmarks of a previous frame);
* ``"haar"``: boxes as OpenCV's frontal-face Haar cascade reports them
  (the default detector); other detectors by their ``name``.

Boxes you pass are read as ``box_type`` (argument of ``detect``, else of the
constructor, else ``"tight"``). Boxes from the face detector always use the
rule named after the detector (``detector.name``); if the model has no rule
fitted for it, the ``"tight"`` rule is used and a warning says so (landmarks
are then less accurate). An unknown ``box_type`` is a ``ValueError`` listing
the model's types.

Coordinates: 0-based (x, y), pixel centres at integers (see :mod:`pyflm`);
boxes are ``(x0, y0, x1, y1)`` in the same coordinates.
"""

from __future__ import annotations

import time
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyflm import deploy
from pyflm.data.crops import BoxToSquare, Crop, square_from_landmarks, tight_box
from pyflm.data.schemes import model_mirror
from pyflm.face_detection import box_iou, get_face_detector
from pyflm.io import iter_images, iter_video_frames, load_image
from pyflm.smoothing import OneEuroFilter

__all__ = ["Face", "FaceLandmarker"]


@dataclass
class Face:
    """One face.

    ``box``: float64 [4] (x0, y0, x1, y1), the box the crop came from (the
    detector's, the one you gave, or in tracked video frames the tight box of
    the landmarks). ``landmarks``: float32 [K, 2] (K = 68) in image pixels.
    ``scores``: float32 [K], the network's per-landmark confidence (the peak
    probability of each heatmap; higher is surer; scale depends on the model).
    ``detection_score``: the face detector's score; 1.0 for boxes you gave
    (tracked video faces keep the score of the detection that started them).
    """

    box: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray
    detection_score: float = 1.0

    def to_dict(self, decimals: int | None = 3) -> dict:
        """JSON-able dict: ``{"box": [4], "detection_score", "landmarks": [[x, y]] * K,
        "scores": [K]}``; coordinates rounded to ``decimals`` (scores to
        ``decimals + 1``), ``None`` keeps full precision."""
        def r(a, d):
            a = np.asarray(a, dtype=np.float64)
            return (a if d is None else np.round(a, d)).tolist()

        ds = None if decimals is None else decimals + 1
        return {"box": r(self.box, decimals), "detection_score": float(self.detection_score),
                "landmarks": r(self.landmarks, decimals), "scores": r(self.scores, ds)}

    @property
    def score(self) -> float:
        """Mean landmark score (a face/no-face hint for tracking)."""
        return float(np.mean(self.scores)) if len(self.scores) else float("nan")


@dataclass
class _Job:
    """One image's faces, prepared up to the network."""

    boxes: np.ndarray        # float64 [N, 4]
    det_scores: np.ndarray   # float64 [N]
    crops: list              # N x Crop
    images: list             # N x uint8 [S, S, 3]
    image: np.ndarray        # the loaded uint8 BGR image [H, W, 3]
    timings: dict
    rounds: int = 0          # refinement rounds for these faces (FaceLandmarker.refine_rounds)


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _check_model_dict(mf: dict) -> dict:
    if not isinstance(mf, dict) or mf.get("format") != deploy.MODEL_FORMAT:
        raise deploy.ModelFileError(f"model dict is not a pyflm model file (no format {deploy.MODEL_FORMAT!r})")
    missing = [k for k in ("task", "model_kwargs", "state_dict", "meta") if k not in mf]
    if missing:
        raise deploy.ModelFileError(f"model dict lacks {missing}")
    return mf


def check_boxes(boxes, name: str = "boxes") -> np.ndarray:
    """``boxes`` as float64 [N, 4] (one box [4] becomes [1, 4]; ``[]`` is [0, 4]).
    ValueError naming ``name`` for a wrong shape or dtype, non-finite values
    or x1 <= x0 / y1 <= y0."""
    try:
        a = np.asarray(boxes)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"{name} must be [N, 4] numbers: {e}") from None
    if a.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be real numbers, got dtype {a.dtype}")
    if a.shape == (4,):
        a = a[None]
    if a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"{name} must be [N, 4] (x0, y0, x1, y1) or [4], got shape {a.shape}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has non-finite values in rows {np.nonzero(~np.isfinite(a).all(1))[0].tolist()}")
    bad = (a[:, 2] <= a[:, 0]) | (a[:, 3] <= a[:, 1])
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise ValueError(f"{name}[{i}] = {a[i].tolist()} needs x1 > x0 and y1 > y0 (boxes are x0, y0, x1, y1)")
    return a


def _frozen(predictor):
    """TorchScript + freeze (see FaceLandmarker's ``optimize``); eager on failure."""
    from pyflm import _library

    if not _library.HAS_OPS:
        return predictor
    try:
        scripted = predictor if isinstance(predictor, torch.jit.ScriptModule) else torch.jit.script(predictor)
        return torch.jit.freeze(scripted.eval())
    except Exception as e:  # a custom network TorchScript cannot compile: still usable eagerly
        warnings.warn(f"FaceLandmarker: could not compile the predictor with TorchScript ({e}); running it eagerly",
                      stacklevel=3)
        return predictor


BACKENDS = ("auto", "torch", "onnxruntime")
AUTO_REFINE_ROUNDS = 2  # refine="auto": rounds for faces whose box is not a tight landmark box


def _onnx_predictor(predictor, num_threads, required: bool):
    """The ONNX Runtime predictor for ``predictor``; with ``required=False``
    (``backend="auto"``) None where torch stays: onnx / onnxruntime not installed,
    a model whose decoding is not in the ONNX graph, or a network ONNX cannot
    express (e.g. the pyflm dilated_skip op of DSC models)."""
    try:
        from pyflm.onnx_backend import OnnxPredictor, decodes_in_graph

        if required or decodes_in_graph(predictor):
            return OnnxPredictor(predictor, num_threads)
    except (ImportError, torch.onnx.OnnxExporterError):
        if required:
            raise
    return None


class FaceLandmarker:
    """Detects faces and their 68 landmarks.

    Args:
        model: a bundled model: ``"default"`` (``pyflm/weights/default.pt``,
            160 px, the most accurate) or ``"fast"`` (the same network
            fine-tuned at 128 px and pruned: about 0.43x the arithmetic), or a path
            to a model file (``.pt``, see :mod:`pyflm.deploy`) or to an exported
            TorchScript predictor (``pyflm export``), or a model-file dict.
        device: ``"cpu"`` or ``"cuda"`` (RuntimeError if CUDA is not available).
        detector: ``"default"`` (OpenCV Haar), a name or callable understood
            by :func:`pyflm.face_detection.get_face_detector`, or ``None``: then
            every call must give ``boxes``.
        max_batch_size: faces per network forward.
        box_type: how the boxes you pass are drawn, unless a call says
            otherwise (default ``"tight"``; see the module docstring).
        num_threads: if given, ``torch.set_num_threads(num_threads)`` and
            ``cv2.setNumThreads(num_threads)`` (both process-wide settings):
            the network, the crops and the OpenCV face detector then use at
            most that many threads.
        optimize: compile the predictor with TorchScript and freeze it (folds
            batch norm into the convolutions, constant weights): about 2-3x
            faster on the CPU than eager PyTorch for the default model. Needs
            the compiled op library; falls back to eager (with a warning) if
            compiling fails. Results match eager within ~1e-4 px.
        backend: ``"auto"`` (the default): ``"onnxruntime"`` on the CPU for
            a model file whose decoding fits in the ONNX graph (the bundled
            models) when onnx and onnxruntime are installed (they are
            dependencies of pyflm), else ``"torch"``; ``self.backend`` says
            which. ``"torch"``: the above. ``"onnxruntime"``: the predictor
            exported to ONNX when the landmarker is built and run by ONNX
            Runtime on the CPU (see :mod:`pyflm.onnx_backend`); 1.4-2.2x
            faster per face than TorchScript for the bundled model (peer runs
            of 2026-12-01 and -02; ``pyflm bench --backend onnxruntime``), same
            landmarks within ~1e-3 px. Needs a model file (not an exported
            TorchScript file); ``num_threads`` sets its threads too.
        refine: ``"auto"`` (the default: ``AUTO_REFINE_ROUNDS`` rounds for
            faces from detector boxes or non-tight ``box_type`` boxes, none
            for tight boxes) or an int 0..10 for every face: rounds of
            re-cropping a face from its predicted landmarks and predicting
            again (module docstring).
        flip_test: also run each crop mirrored and average the two
            predictions (module docstring): more accurate, twice the
            network's cost. Needs a model whose landmark scheme has a mirror
            permutation (68, 98, 29 or 19 points).

    Raises :class:`pyflm.deploy.ModelFileError` (a ValueError) naming the file
    for a missing, truncated or foreign model file.
    """

    def __init__(self, model: Any = "default", device: str = "cpu", detector: Any = "default",
                 max_batch_size: int = 32, box_type: str | None = None, num_threads: int | None = None,
                 optimize: bool = True, backend: str = "auto", flip_test: bool = False,
                 refine: int | str = "auto"):
        dev = torch.device(device)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
        if backend == "onnxruntime" and dev.type != "cpu":
            raise ValueError(f"backend='onnxruntime' runs on the CPU; got device={device!r}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"FaceLandmarker: device={device!r} asked for, but no CUDA device is available "
                               "(torch.cuda.is_available() is False); use device='cpu'")
        if not (refine == "auto" or (isinstance(refine, int) and not isinstance(refine, bool) and 0 <= refine <= 10)):
            raise ValueError(f"refine must be 'auto' or an int in 0..10, got {refine!r}")
        if not (isinstance(max_batch_size, int) and max_batch_size >= 1):
            raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
        if num_threads is not None:
            if not (isinstance(num_threads, int) and num_threads >= 1):
                raise ValueError(f"num_threads must be an int >= 1, got {num_threads!r}")
            torch.set_num_threads(num_threads)
            import cv2

            cv2.setNumThreads(num_threads)  # the Haar detector and warps; OpenCV's own pool otherwise
        self.device = dev
        self.max_batch_size = max_batch_size
        self.predictor, self.meta, self.model_source = self._load(model, dev)
        scripted = isinstance(self.predictor, torch.jit.ScriptModule)
        if backend == "onnxruntime" and scripted:
            raise ValueError(f"backend='onnxruntime' needs a model file (.pt), not exported TorchScript: "
                             f"{self.model_source}")
        onnx = None
        if backend == "onnxruntime" or (backend == "auto" and dev.type == "cpu" and not scripted):
            onnx = _onnx_predictor(self.predictor, num_threads, required=backend == "onnxruntime")
        self.backend = "onnxruntime" if onnx is not None else "torch"
        if onnx is not None:
            self.predictor = onnx
        elif optimize:
            self.predictor = _frozen(self.predictor)
        self.input_size = int(self.meta["input_size"])
        self.num_landmarks = int(self.meta["num_landmarks"])
        self.flip_test = bool(flip_test)
        self.refine = refine
        self._mirror = self._mirror_permutation() if self.flip_test else None
        offset = deploy.decode_offset(self.meta) if self.flip_test else None
        self._flip_shift = None if offset is None else deploy.flip_shift(offset, self._mirror.cpu()).to(dev)
        crop_meta = self.meta.get("crop", {})
        train_rule = crop_meta.get("landmarks", {})
        train_scale = float(train_rule.get("scale", 1.3))
        self.training_rule = (train_scale, str(train_rule.get("center", "centroid")))  # the training square
        # the square cut around predicted landmarks (refinement rounds, video tracking): the
        # model's fitted meta.crop.refine (training.fit_inference_crops), else the training square
        lm_rule = crop_meta.get("refine", train_rule)
        self.landmark_rule = (float(lm_rule.get("scale", train_scale)),
                              str(lm_rule.get("center", train_rule.get("center", "centroid"))))
        self.box_rules = {k: BoxToSquare(**v) for k, v in crop_meta.get("boxes", {}).items()}
        # every model reads tight landmark boxes: the training square is scale x their larger side
        self.box_rules.setdefault("tight", BoxToSquare(0.0, 0.0, train_scale, "max"))
        if box_type is not None:
            self._rule(box_type)  # validate early
        self.box_type = box_type
        self.detector = get_face_detector(detector) if detector is not None else None
        self._warned_fallback = False

    @staticmethod
    def _load(model, dev: torch.device):
        if isinstance(model, dict):
            mf, source = _check_model_dict(model), "<model dict>"
        else:
            path = deploy.model_path(model)
            source = str(path)
            if path.is_file() and _is_torchscript(path):
                module, meta = deploy.load_torchscript(path, device=str(dev))
                return module.eval(), meta, source
            mf = deploy.load_model_file(path)
        predictor = deploy.build_predictor(mf).to(dev).eval()
        return predictor, mf["meta"], source

    def _mirror_permutation(self) -> torch.Tensor:
        """The mirror permutation of this model's landmarks (flip test)."""
        mirror = model_mirror(self.meta)
        if mirror is None:
            raise ValueError(f"flip_test=True needs the mirror permutation of the model's landmark scheme; "
                             f"none is known for {self.num_landmarks} points (scheme {self.meta.get('scheme')!r})")
        return torch.as_tensor(mirror, device=self.device)

    def _predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 crops [B, S, S, 3] -> (coords [B, K, 2] crop px, scores [B, K]),
        with the flip test if asked for (one forward of 2B crops)."""
        if not self.flip_test:
            return self.predictor(x)
        if x.device.type == "cpu":  # mirrored in NumPy: no torch op between ONNX Runtime calls (pyflm.onnx_backend)
            a = x.numpy()
            both = torch.from_numpy(np.concatenate([a, a[:, :, ::-1]]))
        else:
            both = torch.cat([x, x.flip(2)])
        return self._merge_mirrored(*self.predictor(both))

    def _merge_mirrored(self, c: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The flip test's average: predictions of [crops; mirrored crops]
        (2B rows) -> B rows."""
        b = c.shape[0] // 2
        c, s = c.float(), s.float()
        mirrored = c[b:, self._mirror]
        mirrored[..., 0] = (self.input_size - 1) - mirrored[..., 0]
        if self._flip_shift is not None:  # the mirrored pass carries the calibration offset mirrored
            mirrored = mirrored + self._flip_shift.to(mirrored.device)
        return (c[:b] + mirrored) * 0.5, (s[:b] + s[b:, self._mirror]) * 0.5

    def __repr__(self) -> str:
        det = getattr(self.detector, "name", None) if self.detector is not None else None
        return (f"FaceLandmarker(model={self.model_source!r}, task={self.meta.get('task')!r}, "
                f"input_size={self.input_size}, landmarks={self.num_landmarks}, device={str(self.device)!r}, "
                f"detector={det!r}, box_types={sorted(self.box_rules)}, max_batch_size={self.max_batch_size}, "
                f"backend={self.backend!r}, flip_test={self.flip_test}, refine={self.refine!r})")

    # ------------------------------------------------------------------ crop rules
    def _rule(self, box_type: str) -> BoxToSquare:
        try:
            return self.box_rules[box_type]
        except KeyError:
            raise ValueError(f"unknown box_type {box_type!r}; this model has crop rules for "
                             f"{sorted(self.box_rules)}") from None

    def _detector_rule(self) -> BoxToSquare:
        name = getattr(self.detector, "name", "custom")
        if name in self.box_rules:
            return self.box_rules[name]
        if not self._warned_fallback:
            warnings.warn(f"this model has no crop rule fitted for the {name!r} face detector (it has "
                          f"{sorted(self.box_rules)}); using the 'tight' rule, landmarks may be less accurate",
                          stacklevel=4)
            self._warned_fallback = True
        return self._rule("tight")

    # ------------------------------------------------------------------ pipeline
    def _prepare(self, image, boxes, box_type, input_order, copy: bool = False) -> _Job:
        """``copy=False``: the job may hold the caller's array itself (read only);
        right while the caller cannot change it before the job is finished."""
        t0 = time.perf_counter()
        img = load_image(image, input_order=input_order, copy=copy)
        t1 = time.perf_counter()
        if boxes is not None:
            b = check_boxes(boxes)
            det = np.ones(len(b))
            if box_type is None:
                box_type = self.box_type if self.box_type is not None else "tight"
            rule = self._rule(box_type)
        elif self.detector is None:
            raise ValueError("this FaceLandmarker has no face detector (detector=None): pass boxes=[[x0, y0, x1, y1], ...]")
        else:
            b, det = self.detector(img)
            b = check_boxes(b, "face detector boxes")
            det = np.asarray(det, dtype=np.float64).reshape(-1)
            rule = self._detector_rule()
            box_type = None  # a detector's box, whatever crop rule it gets
        t2 = time.perf_counter()
        crops = [Crop.from_square(*rule(box), self.input_size) for box in b]
        warped = [c.warp(img) for c in crops]
        t3 = time.perf_counter()
        timings = {"load": (t1 - t0) * 1e3, "detect": (t2 - t1) * 1e3 if boxes is None else 0.0,
                   "crop": (t3 - t2) * 1e3}
        return _Job(b, det, crops, warped, img, timings, self.refine_rounds(box_type))

    def refine_rounds(self, box_type: str | None) -> int:
        """Refinement rounds for faces cropped from boxes of ``box_type``
        (None: the face detector's boxes): ``self.refine`` if it is an int,
        else (``"auto"``) none for ``"tight"`` boxes and ``AUTO_REFINE_ROUNDS``
        for any other."""
        if self.refine != "auto":
            return self.refine
        return 0 if box_type == "tight" else AUTO_REFINE_ROUNDS

    def _forward(self, images: list) -> tuple[np.ndarray, np.ndarray]:
        """uint8 crops -> (coords float64 [M, K, 2] crop px, scores float32 [M, K])."""
        k = self.num_landmarks
        if not images:
            return np.zeros((0, k, 2)), np.zeros((0, k), dtype=np.float32)
        coords, scores = [], []
        with torch.inference_mode():
            for i in range(0, len(images), self.max_batch_size):
                part = images[i:i + self.max_batch_size]
                batch = torch.from_numpy(part[0][None] if len(part) == 1 else np.stack(part))
                c, s = self._predict(batch.to(self.device))
                coords.append(c.float().cpu().numpy().astype(np.float64))
                scores.append(s.float().cpu().numpy())
        return np.concatenate(coords), np.concatenate(scores)

    def _landmarks(self, crops: list, frames: list, images: list, rounds) -> tuple[list, np.ndarray, np.ndarray]:
        """The network on ``images`` (the warps of ``crops`` from ``frames``, one
        frame per crop), then ``rounds[i]`` rounds (an int: the same for all)
        of re-cropping face i from its landmarks by the training crop rule and
        predicting again -> (the final crops, coords [M, K, 2] crop px, scores
        [M, K]). A face whose landmarks are not finite, or all one point, keeps
        its crop."""
        coords, scores = self._forward(images)
        rounds = np.asarray(rounds, dtype=np.int64)
        if rounds.ndim == 0:
            rounds = np.full(len(crops), rounds)
        crops = list(crops)
        scale, center = self.landmark_rule
        for r in range(int(rounds.max(initial=0))):
            todo = np.nonzero(rounds > r)[0]
            for i in todo:
                pts = crops[i].to_image(coords[i])
                if np.isfinite(pts).all() and np.ptp(pts, axis=0).max() > 0:
                    crops[i] = Crop.from_square(*square_from_landmarks(pts, scale, center), self.input_size)
            coords[todo], scores[todo] = self._forward([crops[i].warp(frames[i]) for i in todo])
        return crops, coords, scores

    def _faces(self, job: _Job, crops: list, coords: np.ndarray, scores: np.ndarray) -> list[Face]:
        return [Face(job.boxes[i].copy(), crop.to_image(coords[i]).astype(np.float32), scores[i].astype(np.float32),
                     float(job.det_scores[i]) if i < len(job.det_scores) else 1.0)
                for i, crop in enumerate(crops)]

    def _finish(self, jobs: list) -> list:
        """Run the network on the crops of ``jobs`` (a _Job or an Exception each);
        returns list[Face] or the Exception per job, and adds "landmarks" and
        "total" to each job's timings (the forward's time shared by crop count)."""
        ready = [j for j in jobs if isinstance(j, _Job)]
        images = [im for j in ready for im in j.images]
        t0 = time.perf_counter()
        crops, coords, scores = self._landmarks([c for j in ready for c in j.crops],
                                                [j.image for j in ready for _ in j.crops], images,
                                                [j.rounds for j in ready for _ in j.crops])
        per_crop = (time.perf_counter() - t0) * 1e3 / max(len(images), 1)
        out, at = [], 0
        for j in jobs:
            if not isinstance(j, _Job):
                out.append(j)
                continue
            n = len(j.images)
            out.append(self._faces(j, crops[at:at + n], coords[at:at + n], scores[at:at + n]))
            at += n
            j.timings["landmarks"] = per_crop * n
            j.timings["total"] = sum(j.timings[k] for k in ("load", "detect", "crop", "landmarks"))
        return out

    # ------------------------------------------------------------------ public API
    def detect(self, image, boxes=None, box_type: str | None = None, input_order: str = "bgr") -> list[Face]:
        """Faces in one image.

        Args:
            image: a path, or a uint8 array [H, W, 3] (BGR, or RGB with
                ``input_order="rgb"``; grey [H, W] and BGRA are converted).
            boxes: face boxes [N, 4] or [4] (x0, y0, x1, y1); skips face
                detection. ``[]`` gives ``[]``.
            box_type: how ``boxes`` are drawn (module docstring); not used
                for detected faces.

        Returns one :class:`Face` per box or detected face (``[]`` if none).
        Raises FileNotFoundError / ValueError for an unreadable image or bad boxes.
        """
        return self._finish([self._prepare(image, boxes, box_type, input_order)])[0]

    def detect_batch(self, images: Iterable, boxes=None, box_type: str | None = None,
                     input_order: str = "bgr") -> list[list[Face]]:
        """:meth:`detect` for several images, their crops batched together
        (``max_batch_size`` per forward). ``boxes``: None or one entry per image
        (None = detect, or [N, 4])."""
        images = list(images)
        if boxes is None:
            boxes = [None] * len(images)
        boxes = list(boxes)
        if len(boxes) != len(images):
            raise ValueError(f"boxes has {len(boxes)} entries for {len(images)} images")
        jobs = [self._prepare(im, b, box_type, input_order) for im, b in zip(images, boxes)]
        return self._finish(jobs)

    def _iter_detect(self, items: Iterable, box_type: str | None = None, input_order: str = "bgr",
                     group: int | None = None) -> Iterator[tuple[Any, Any, dict, Any]]:
        """For ``items`` of ``(key, image, boxes_or_None)`` yield, in order,
        ``(key, list[Face] or the Exception, timings_ms, the loaded BGR image or
        None)``. Errors of one item do not stop the others. Crops of up to
        ``group`` images (default ``max_batch_size``) share forwards."""
        group = group or self.max_batch_size
        pending: list = []

        def flush():
            results = self._finish([p[1] for p in pending])
            for (key, job), res in zip(pending, results):
                ok = isinstance(job, _Job)
                yield key, res, (job.timings if ok else {}), (job.image if ok else None)
            pending.clear()

        for key, image, boxes in items:
            try:  # a copy: the caller's iterable may reuse one frame buffer before the flush
                job: Any = self._prepare(image, boxes, box_type, input_order, copy=True)
            except Exception as e:  # noqa: BLE001 (one bad file must not stop a folder)
                job = e
            pending.append((key, job))
            if len(pending) >= group:
                yield from flush()
        if pending:
            yield from flush()

    def detect_folder(self, folder, recursive: bool = False, progress: bool = True,
                      box_type: str | None = None) -> dict[Path, list[Face] | Exception]:
        """Every image of ``folder`` (see :func:`pyflm.io.iter_images`) ->
        its faces, or the exception that stopped that file (the run goes on)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"folder not found: {folder}")
        paths = list(iter_images(folder, recursive=recursive))
        it = self._iter_detect(((p, p, None) for p in paths), box_type=box_type)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=len(paths), desc=f"pyflm {folder.name or folder}", unit="img")
        return {key: res for key, res, _, _ in it}

    def detect_video(self, source, smooth: bool = True, redetect_every: int = 0, min_cutoff: float = 1.0,
                     beta: float = 0.05, d_cutoff: float = 1.0, min_score_ratio: float = 0.6,
                     min_score: float | None = None, boxes=None, box_type: str | None = None,
                     input_order: str = "bgr", fps: float = 30.0) -> Iterator[tuple[int, float, list[Face]]]:
        """Landmarks through a video, tracking faces from frame to frame.

        ``source``: a video file (anything :func:`pyflm.io.is_video` accepts
        and OpenCV reads) or an iterable of frames (uint8 arrays; time stamps
        ``index / fps``). Yields ``(frame_index, t_s, faces)``.

        Faces are detected on the first frame (or taken from ``boxes``), then
        each face's crop is re-made from its landmarks on the previous frame
        (the model's landmark crop rule, no face detection). The detector runs
        again every ``redetect_every`` frames (0: never on schedule), when no
        face is tracked, and on the frame where a track is lost: its mean
        landmark score falls below ``min_score`` if given, else below
        ``min_score_ratio`` times the track's mean score when it was detected.
        ``smooth``: a One-Euro filter (``min_cutoff`` Hz, ``beta``, ``d_cutoff``)
        per face on the landmarks; the next crop uses the unsmoothed ones.
        Without a detector (``detector=None``), lost faces stay lost.
        """
        if redetect_every < 0:
            raise ValueError(f"redetect_every must be >= 0, got {redetect_every}")
        if boxes is None and self.detector is None:
            raise ValueError("detect_video without a face detector (detector=None) needs boxes for the first frame")
        if isinstance(source, (str, Path)):
            if not Path(source).is_file():
                raise FileNotFoundError(f"video not found: {source}")
            frames: Iterable = iter_video_frames(source)
        else:
            frames = ((i, i / fps, f) for i, f in enumerate(source))
        return self._track_video(frames, smooth, redetect_every, min_cutoff, beta, d_cutoff, min_score_ratio,
                                 min_score, boxes, box_type, input_order)

    def _track_video(self, frames, smooth, redetect_every, min_cutoff, beta, d_cutoff, min_score_ratio, min_score,
                     boxes, box_type, input_order) -> Iterator[tuple[int, float, list[Face]]]:
        if boxes is not None:
            boxes = check_boxes(boxes)
        scale, center = self.landmark_rule
        tracks: list[dict] = []
        since_detection = 0

        def new_tracks(faces: list[Face], old: list[dict]) -> list[dict]:
            out = []
            for f in faces:
                match = None
                if old:  # the old track this face overlaps most, if by more than 0.3
                    ious = box_iou(tight_box(f.landmarks), [tight_box(tr["raw"]) for tr in old])[0]
                    k = int(np.argmax(ious))
                    match = old[k] if ious[k] > 0.3 else None
                if match is not None:
                    old.remove(match)
                    filt = match["filter"]
                else:
                    filt = OneEuroFilter(min_cutoff, beta, d_cutoff) if smooth else None
                out.append({"raw": f.landmarks.astype(np.float64), "filter": filt, "ref": f.score,
                            "det": f.detection_score})
            return out

        def output(tr: dict, f: Face, t: float, tracked: bool) -> Face:
            pts = f.landmarks.astype(np.float64)
            if tr["filter"] is not None:
                pts = np.asarray(tr["filter"](pts, t), dtype=np.float64)
            box = tight_box(pts) if tracked else f.box
            return Face(box, pts.astype(np.float32), f.scores, tr["det"])

        first = True
        for index, t_s, frame in frames:
            img = load_image(frame, input_order=input_order)
            scheduled = bool(self.detector is not None and redetect_every and since_detection >= redetect_every)
            if first and boxes is not None:
                faces = self.detect(img, boxes=boxes, box_type=box_type)
            elif tracks and not scheduled:
                crops = [Crop.from_square(*square_from_landmarks(tr["raw"], scale, center), self.input_size)
                         for tr in tracks]
                coords, scores = self._forward([c.warp(img) for c in crops])
                pts = [c.to_image(coords[i]) for i, c in enumerate(crops)]
                tracked = [Face(tight_box(p), p.astype(np.float32), scores[i], tr["det"])
                           for i, (p, tr) in enumerate(zip(pts, tracks))]
                lost = [f.score < (min_score if min_score is not None else min_score_ratio * tr["ref"])
                        for f, tr in zip(tracked, tracks)]
                if not (any(lost) and self.detector is not None):
                    tracks = [tr for tr, lo in zip(tracks, lost) if not lo]
                    out = []
                    for tr, f in zip(tracks, [f for f, lo in zip(tracked, lost) if not lo]):
                        tr["raw"] = f.landmarks.astype(np.float64)
                        out.append(output(tr, f, t_s, True))
                    since_detection += 1
                    first = False
                    yield index, t_s, out
                    continue
                faces = self.detect(img, box_type=box_type)  # a track was lost: find the faces again
            else:
                faces = self.detect(img, box_type=box_type) if self.detector is not None else []
            tracks = new_tracks(faces, list(tracks))
            since_detection = 1
            first = False
            yield index, t_s, [output(tr, f, t_s, False) for tr, f in zip(tracks, faces)]
