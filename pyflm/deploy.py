"""Model files and the deployable predictor: uint8 crops in, landmarks out.

A **model file** (``.pt``, loaded with ``torch.load(weights_only=True)``) is a dict::

    {"format": "pyflm-model", "version": 1,
     "task": "compact", "model_kwargs": {...},      # pyflm.tasks.build_task(task, **model_kwargs)
     "state_dict": {...},                           # the network's weights (float32)
     "meta": {...}}                                 # see :func:`default_meta`

``meta`` holds everything a consumer needs besides the weights: input size,
landmark scheme, normalisation, decoding, crop rules (the ground-truth rule used
in training and one ``BoxToSquare`` rule per box type, e.g. ``"haar"``,
``"tight"``) and provenance (training config, data, metrics).

:class:`LandmarkPredictor` is the part that runs per face. Its ``forward`` takes
``uint8`` crops ``[B, S, S, 3]`` in **BGR** order (what ``cv2.warpAffine`` gives
for an OpenCV image) and returns ``(coords [B, K, 2] float32 in crop pixels,
scores [B, K])``: normalisation, the network and decoding (the ``pyflm`` ops)
in one module. ``torch.jit.script`` compiles it; :func:`export_torchscript`
saves it with the meta as the extra file ``pyflm.json``, which is what the C++
binary loads. Python and C++ therefore run the same graph.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "MODEL_FORMAT",
    "ModelFileError",
    "LandmarkPredictor",
    "BUNDLED_MODELS",
    "bundled_model_path",
    "default_model_path",
    "model_path",
    "load_model_file",
    "save_model_file",
    "model_file_from_checkpoint",
    "build_predictor",
    "export_torchscript",
    "load_torchscript",
    "decode_offset",
    "flip_shift",
]

MODEL_FORMAT = "pyflm-model"
MODEL_VERSION = 1
EXTRA_FILE = "pyflm.json"
_TRAIN_FORMAT = "pyflm-train-checkpoint"


class ModelFileError(ValueError):
    """A model file that is missing, truncated, corrupt or not a pyflm model."""


# The model files shipped in pyflm/weights, by the name FaceLandmarker(model=...) and
# the CLI's --model take: "default" (160 px, the most accurate) and "fast" (the same
# network fine-tuned at 128 px and pruned to half its hidden width, for the CPU
# latency target).
BUNDLED_MODELS = ("default", "fast")


def bundled_model_path(name: str) -> Path:
    """The bundled model file ``pyflm/weights/<name>.pt`` (``name`` in :data:`BUNDLED_MODELS`)."""
    if name not in BUNDLED_MODELS:
        raise ValueError(f"no bundled model {name!r}; bundled: {', '.join(BUNDLED_MODELS)}")
    return Path(__file__).resolve().parent / "weights" / f"{name}.pt"


def default_model_path() -> Path:
    """The bundled default model (``pyflm/weights/default.pt``)."""
    return bundled_model_path("default")


def model_path(model) -> Path:
    """A bundled model's name (:data:`BUNDLED_MODELS`) or a path -> the file's path."""
    if isinstance(model, str) and model in BUNDLED_MODELS:
        return bundled_model_path(model)
    return Path(model)


# --------------------------------------------------------------------- model files
def _atomic_save(obj: Any, path: Path, saver) -> None:
    from pyflm.io import atomic_write

    atomic_write(path, lambda f: saver(obj, f))


def save_model_file(path, task: str, model_kwargs: dict, state_dict: dict, meta: dict) -> Path:
    """Write a model file atomically (temp file + rename); weights as float32, on the CPU."""
    sd = {k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu())
          for k, v in state_dict.items()}
    obj = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "task": str(task),
           "model_kwargs": dict(model_kwargs), "state_dict": sd, "meta": dict(meta)}
    _atomic_save(obj, Path(path), torch.save)
    return Path(path)


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        bare_name = len(path.parts) == 1 and not path.suffix  # e.g. a misspelt bundled name
        hint = f" (bundled models by name: {', '.join(BUNDLED_MODELS)})" if bare_name else ""
        raise ModelFileError(f"model file not found: {path}{hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle error, not a torch file at all
        # torch's own text suggests weights_only=False, wrong advice for a damaged file: name the error, chain it
        raise ModelFileError(f"cannot read model file {path}: truncated, corrupt or not a torch file "
                             f"({type(e).__name__} from torch.load)") from e


def load_model_file(path) -> dict:
    """Read a model file (or a ``training/train.py`` checkpoint, converted on the fly).

    Raises :class:`ModelFileError` naming the file for a missing, truncated or
    corrupt file, or one that is not a pyflm model."""
    path = Path(path)
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == _TRAIN_FORMAT:
        return model_file_from_checkpoint(obj, source=str(path))
    if not isinstance(obj, dict) or obj.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path} is not a pyflm model file (no format {MODEL_FORMAT!r})")
    if int(obj.get("version", 0)) > MODEL_VERSION:
        raise ModelFileError(f"{path} is model-file version {obj['version']}; this pyflm reads <= {MODEL_VERSION}")
    missing = [k for k in ("task", "model_kwargs", "state_dict", "meta") if k not in obj]
    if missing:
        raise ModelFileError(f"{path}: model file lacks {missing}")
    return obj


_DECODE = {  # task -> (decoder kind, its options); see _Decoder
    "compact": ("soft", {}),
    "distribution": ("soft", {}),
    "hybrid": ("soft", {"drop_last": True}),
    "hybrid+disc": ("soft", {"drop_last": True}),
    "heatmap": ("argmax", {"drop_last": True}),
    "pwc": ("argmax", {"softmax": True, "drop_last": True}),
    "pwc+disc": ("argmax", {"softmax": True, "drop_last": True}),
    "dsc": ("argmax", {}),
    "direct": ("regression", {}),
    "cascade": ("regression", {}),
}


def default_meta(task: str, input_size: int, num_landmarks: int = 68, output_stride: float | None = None,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_scale: float = 1.3,
                 crop_center: str = "centroid", refine: str = "dark") -> dict:
    """The meta of a model file (JSON-able): what a consumer needs besides the weights.

    ``output_stride`` is the network's (``model.output_stride``: input pixels
    per heatmap pixel; None for coordinate regressors)."""
    kind, opts = _DECODE.get(task, ("soft", {}))
    decode = {"kind": kind, "stride": float(output_stride or 1.0), "temperature": 1.0,
              "softmax": bool(opts.get("softmax", False)), "drop_last": bool(opts.get("drop_last", False)),
              "refine": refine}
    import pyflm

    return {
        "pyflm_version": pyflm.__version__,
        "task": task,
        "input_size": int(input_size),
        "num_landmarks": int(num_landmarks),
        "scheme": "300w-68" if num_landmarks == 68 else f"{num_landmarks}-point",
        "input": {"dtype": "uint8", "layout": "NHWC", "channels": "bgr"},
        "normalize": {"network_channels": "rgb", "mean": list(map(float, mean)), "std": list(map(float, std))},
        "decode": decode,
        "crop": {"landmarks": {"scale": float(crop_scale), "center": crop_center},
                 "boxes": {"tight": _tight_rule(crop_scale)}},
        "coordinates": "0-based (x, y), pixel centres at integers",
    }


def _tight_rule(scale: float) -> dict:
    # A tight landmark bounding box -> the training square: same centre (box rule),
    # side = scale * max side. (The paper's centroid centre differs by a few % of
    # the box; fitted rules for detectors live beside this one.)
    return {"dx": 0.0, "dy": 0.0, "scale": float(scale), "size": "max"}


def model_file_from_checkpoint(ckpt: dict, source: str = "checkpoint") -> dict:
    """A model-file dict from a ``training/train.py`` checkpoint dict."""
    try:
        cfg = ckpt["config"]
        task = ckpt["task"]
        model_cfg = {k: v for k, v in cfg["model"].items() if k not in ("task",)}
        data = cfg.get("data", {})
    except (KeyError, TypeError) as e:
        raise ModelFileError(f"{source}: training checkpoint lacks {e}") from None
    kwargs = dict(model_cfg)
    k = int(kwargs.pop("num_landmarks", ckpt.get("num_landmarks", 68)))
    kwargs["num_landmarks"] = k
    from pyflm.tasks import build_task

    with torch.device("meta"):
        t = build_task(task, **kwargs)
    stride = getattr(t.model, "output_stride", None)
    norm = data.get("normalize", "imagenet")
    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if norm == "imagenet" else ((0, 0, 0), (1, 1, 1))
    meta = default_meta(task, int(ckpt.get("input_size", kwargs.get("input_size", 224))), k, stride, mean, std,
                        float(data.get("crop_scale", 1.3)), data.get("crop_center", "centroid"))
    meta["training"] = {"config": cfg, "step": int(ckpt.get("step", 0)), "source": source}
    return {"format": MODEL_FORMAT, "version": MODEL_VERSION, "task": task, "model_kwargs": kwargs,
            "state_dict": ckpt["model"], "meta": meta}


# ------------------------------------------------------------------------ calibration offsets
def decode_offset(meta: dict) -> Tensor | None:
    """``meta["decode"]["offset"]`` as a float32 ``[K, 2]`` tensor (crop pixels,
    added to every decoded point), or None when the model has none.
    :class:`ModelFileError` unless it is K finite (dx, dy) pairs.

    Why a model has one: 300-W's annotation protocol is not mirror-symmetric,
    so a network trained with horizontal flips learns the average of a point and
    its mirrored partner and misses each by a small, steady amount (about half a
    crop pixel). ``python -m training.calibrate`` measures that per point on the
    held-out training photos and stores it here."""
    off = meta.get("decode", {}).get("offset")
    if off is None:
        return None
    k = int(meta["num_landmarks"])
    try:
        t = torch.tensor(off, dtype=torch.float32)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"model meta decode.offset is not a list of (dx, dy) numbers: {e}") from None
    if t.shape != (k, 2) or not bool(torch.isfinite(t).all()):
        raise ModelFileError(f"model meta decode.offset must be {k} finite (dx, dy) pairs, got shape {list(t.shape)}")
    return t


def flip_shift(offset: Tensor, mirror) -> Tensor:
    """What the flip test adds to the mirrored pass after mapping it back
    (``x -> S - 1 - x``, then ``[:, mirror]``) so that it, too, carries
    ``offset`` rather than the offset's mirror image: the predictor adds
    ``offset[j]`` to point j of the mirrored crop, which comes back as
    ``(-dx, dy)`` of point ``mirror[i]``. ``[K, 2]``."""
    m = torch.as_tensor(mirror, dtype=torch.long, device=offset.device)
    back = offset[m]
    return torch.stack((offset[:, 0] + back[:, 0], offset[:, 1] - back[:, 1]), dim=1)


# ------------------------------------------------------------------------ predictor
class _SingleOutput(nn.Module):
    """Wraps nets whose forward returns several things into one tensor
    (DSC: the refined maps; cascade: the last stage's shape)."""

    def __init__(self, net: nn.Module, kind: str):
        super().__init__()
        self.net = net
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        if self.kind == "dsc":
            return out[1]
        return out[:, -1]


class LandmarkPredictor(nn.Module):
    """uint8 BGR crops ``[B, S, S, 3]`` -> ``(coords [B, K, 2] crop px, scores [B, K])``.

    Scriptable (``torch.jit.script``); in eager mode decoding uses the
    :mod:`pyflm.ops` wrappers (so it also runs without the compiled extension),
    in TorchScript the ``torch.ops.pyflm`` ops.
    """

    def __init__(self, net: nn.Module, meta: dict):
        super().__init__()
        self.net = net
        self.input_size = int(meta["input_size"])
        self.num_landmarks = int(meta["num_landmarks"])
        d = meta["decode"]
        self.decode_kind = str(d["kind"])
        self.stride = float(d.get("stride", 1.0))
        self.temperature = float(d.get("temperature", 1.0))
        self.softmax = bool(d.get("softmax", False))
        self.drop_last = bool(d.get("drop_last", False))
        self.refine = str(d.get("refine", "dark"))
        offset = decode_offset(meta)
        self.has_offset = offset is not None
        self.register_buffer("offset", (offset if offset is not None else torch.zeros(self.num_landmarks, 2))[None],
                             persistent=False)  # [1, K, 2] crop px; see decode_offset
        n = meta["normalize"]
        mean = torch.tensor(n["mean"], dtype=torch.float32)
        std = torch.tensor(n["std"], dtype=torch.float32)
        # x_net = (x / 255 - mean) / std, written as one multiply-add per channel
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("bias", (-mean / std).view(1, 3, 1, 1), persistent=False)
        self.bgr_to_net = n.get("network_channels", "rgb") == "rgb"
        self.meta_json = json.dumps(meta, sort_keys=True)

    def check_crops(self, crops: Tensor) -> None:
        """ValueError unless ``crops`` is uint8 ``[B, S, S, 3]`` at this model's size."""
        if crops.dtype != torch.uint8 or crops.dim() != 4 or crops.shape[3] != 3:
            raise ValueError("pyflm.LandmarkPredictor: crops must be uint8 [B, S, S, 3] (BGR), got "
                             + str(crops.dtype) + " " + str(list(crops.shape)))
        if crops.shape[1] != self.input_size or crops.shape[2] != self.input_size:
            raise ValueError("pyflm.LandmarkPredictor: crops must be " + str(self.input_size) + "x"
                             + str(self.input_size) + ", got " + str(list(crops.shape)))

    def preprocess(self, crops: Tensor) -> Tensor:
        self.check_crops(crops)
        x = crops.permute(0, 3, 1, 2)
        if self.bgr_to_net:
            x = x.flip(1)
        return x.to(self.scale.dtype) * self.scale + self.bias

    def forward(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(self.preprocess(crops))
        if torch.jit.is_scripting():
            return self._decode_ops(out)
        return self.decode(out)

    def _prepare_maps(self, out: Tensor) -> Tensor:
        if self.softmax:
            out = torch.softmax(out.float(), dim=1)
        if self.drop_last:
            out = out[:, :-1]
        return out

    def _to_input(self, coords: Tensor) -> Tensor:
        """Map cells -> input pixels, plus the calibration offset (if any)."""
        s = self.stride
        coords = coords * s + (s - 1.0) / 2.0
        return coords + self.offset if self.has_offset else coords

    def _regression(self, out: Tensor) -> tuple[Tensor, Tensor]:
        # regressors (wrapped to input pixels by build_predictor) have no confidence
        coords = out.float().reshape(out.shape[0], self.num_landmarks, 2)
        if self.has_offset:
            coords = coords + self.offset
        return coords, torch.ones(coords.shape[0], coords.shape[1], dtype=coords.dtype, device=coords.device)

    def _decode_ops(self, out: Tensor) -> tuple[Tensor, Tensor]:
        if self.decode_kind == "regression":
            return self._regression(out)
        maps = self._prepare_maps(out)
        if self.decode_kind == "soft":
            coords, scores = torch.ops.pyflm.soft_argmax(maps, self.temperature)
        else:
            coords, scores = torch.ops.pyflm.argmax_decode(maps, self.refine)
        return self._to_input(coords), scores

    @torch.jit.unused
    def decode(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """The network's output -> (coords [B, K, 2] crop px, scores [B, K]), eagerly
        through the :mod:`pyflm.ops` wrappers (also for other backends' outputs)."""
        from pyflm.ops import argmax_decode, soft_argmax

        if self.decode_kind == "regression":
            return self._regression(out)
        maps = self._prepare_maps(out)
        if self.decode_kind == "soft":
            coords, scores = soft_argmax(maps, self.temperature)
        else:
            coords, scores = argmax_decode(maps, self.refine)
        return self._to_input(coords), scores


def task_from_model_file(model_file: dict):
    """The :class:`pyflm.tasks.LandmarkTask` of a model-file dict, its weights
    loaded; ModelFileError when they do not fit the network."""
    from pyflm.tasks import build_task

    task_name = model_file["task"]
    task = build_task(task_name, **model_file["model_kwargs"])
    try:
        task.model.load_state_dict(model_file["state_dict"])
    except RuntimeError as e:
        raise ModelFileError(f"model weights do not fit the {task_name!r} network: {e}") from None
    return task


def build_predictor(model_file: dict) -> LandmarkPredictor:
    """The eval-mode :class:`LandmarkPredictor` of a model-file dict."""
    task_name, meta = model_file["task"], model_file["meta"]
    net: nn.Module = task_from_model_file(model_file).model
    base = task_name.split("+")[0]
    if base in ("dsc", "cascade"):
        net = _SingleOutput(net, base)
    if base == "direct":
        net = _DirectToPixels(net, int(meta["input_size"]))
    return LandmarkPredictor(net, meta).eval()


class _DirectToPixels(nn.Module):
    """Direct regression outputs [-1, 1] units (RegressionCodec); map to input pixels."""

    def __init__(self, net: nn.Module, input_size: int):
        super().__init__()
        self.net = net
        self.input_size = float(input_size)

    def forward(self, x: Tensor) -> Tensor:
        v = self.net(x)
        return ((v + 1.0) * self.input_size - 1.0) / 2.0


# ------------------------------------------------------------------------ TorchScript
def export_torchscript(model_file: dict, path, device: str = "cpu") -> Path:
    """Script the predictor of ``model_file`` and save it (atomically) with its meta
    as the extra file ``pyflm.json``. Loading it needs the pyflm op library
    (``import pyflm`` in Python; ``dlopen(libpyflm_ops.so)`` in C++)."""
    from pyflm import _library

    if not _library.HAS_OPS:
        raise RuntimeError("pyflm export needs the compiled pyflm op library (the graph calls torch.ops.pyflm)")
    predictor = build_predictor(model_file).to(device)
    scripted = torch.jit.script(predictor)
    meta = dict(model_file["meta"])
    meta["exported_with"] = {"torch": torch.__version__}
    from pyflm.data.schemes import model_mirror

    mirror = model_mirror(meta)
    if mirror is not None:  # for the flip test of readers without pyflm's schemes (pyflm-detect --flip-test)
        meta["mirror"] = mirror
    extra = {EXTRA_FILE: json.dumps(meta, indent=2, sort_keys=True)}

    def saver(m, f):
        torch.jit.save(m, f, _extra_files=extra)

    _atomic_save(scripted, Path(path), saver)
    return Path(path)


def load_torchscript(path, device: str = "cpu") -> tuple[torch.jit.ScriptModule, dict]:
    """Load an exported predictor and its meta; clear errors for a missing or
    corrupt file and for one without pyflm metadata."""
    import pyflm  # noqa: F401  (registers torch.ops.pyflm before the graph is read)

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"exported model not found: {path}")
    extra = {EXTRA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as e:
        raise ModelFileError(f"cannot load TorchScript model {path}: {e}") from e
    if not extra[EXTRA_FILE]:
        raise ModelFileError(f"{path} has no pyflm metadata ({EXTRA_FILE}); export it with `pyflm export`")
    return module, json.loads(extra[EXTRA_FILE])
