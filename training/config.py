"""Training configuration: TOML, validated against a schema before anything runs.

Sections and keys (defaults in brackets):

[model]  task (str, required: a pyflm.tasks name, e.g. "hybrid", "pwc+disc"),
         num_landmarks [68]; every other key is passed to build_task as a
         keyword (e.g. input_size = 224). Unknown keywords fail when the task is
         built, still before training, with an error naming ``model.<key>``.
[data]   root [PYFLM_DATA or ../shared/data], train ["300w-train"] (a split
         name, a folder, or a list of them), val ["holdout"]: "holdout" takes
         a fixed random ``val_fraction`` [0.1] of the training photos (seed
         ``holdout_seed`` [0]) away from training; any other value is a split
         name / folder. extra_train [[]]: more splits / folders for training
         only, added after the held-out photos are chosen (so the validation
         set stays that of ``train`` alone, e.g. "youtube-train" frames).
         crop_scale [1.3], crop_center ["centroid"|"box"],
         augment ["paper1"|"paper2"|"light"|"none"], normalize ["imagenet"|"none"],
         warp ["cpu"|"device"]: where training crops are warped, jittered and
         occluded: in the DataLoader workers, or batched on the training
         device (the workers only decode and cut out the face's region; for
         GPUs the workers cannot keep fed),
         max_train_samples / max_val_samples [0 = all] for quick runs.
[optim]  name ["adam"|"rmsprop"], lr [1e-4], lr_milestones [[] steps],
         lr_gamma [0.1], weight_decay [0], momentum [0] (rmsprop), betas
         [[0.9, 0.999]] (adam), eps [1e-8], disc_lr [0 = lr] (discriminator,
         +disc tasks), grad_clip [0 = off].
[train]  batch_size [8] (per process), max_steps [100000], val_every [1000],
         patience [10] (validations without improvement; 0 = off), seed [0],
         bf16 [true] and channels_last [true] (GPU only), num_workers [2],
         log_every [50], val_batch_size [0 = batch_size], init_from [""]: a
         training checkpoint or pyflm model file whose network weights start
         the run (fine-tuning; same task and shapes; ignored by --resume,
         which restores everything from last.pt); keep_every [0 = off]: also
         keep the checkpoint of every step that is a multiple of it (and a
         validation step) as step_NNNNNNN.pt, e.g. for training.average;
         max_minutes [0 = off]: a wall-clock budget for this invocation's
         training loop: the first step checked after it is spent (every
         log_every steps) is validated, checkpointed, and ends the run.
[distill] teacher [""]: a model file or checkpoint of a distribution model,
         or a list of them (an ensemble: their maps are averaged), with the
         student's normalisation (any input size: resampled to the student's
         grid) whose maps are mixed into the targets (training/distill.py);
         weight [0.5] in (0, 1]: the teachers' share of the target; flip
         [true]: average each teacher's maps with those of the mirrored crops.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

__all__ = ["ConfigError", "SCHEMA", "load_config", "validate_config"]


class ConfigError(ValueError):
    """A bad configuration; the message names the offending key."""


_FLOAT = (int, float)


def _is(value, types) -> bool:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        return False
    return isinstance(value, types)


class _Key:
    def __init__(self, types, default, choices=None, check=None, desc=""):
        self.types, self.default, self.choices, self.check, self.desc = types, default, choices, check, desc


def _pos(v):
    return v > 0


def _nonneg(v):
    return v >= 0


def _str_or_list(v):
    return isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(s, str) for s in v))


def _str_list(v):
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def _int_list(v):
    return isinstance(v, list) and all(_is(x, int) and x > 0 for x in v)


def _float_list(n):
    return lambda v: isinstance(v, list) and len(v) == n and all(_is(x, _FLOAT) for x in v)


# types None means "checked by check()"
SCHEMA: dict[str, dict[str, _Key]] = {
    "data": {
        "root": _Key(str, ""),
        "train": _Key(None, "300w-train", check=_str_or_list, desc="a split name or a list of them"),
        "val": _Key(str, "holdout"),
        "extra_train": _Key(None, [], check=_str_list, desc="a list of split names / folders"),
        "val_fraction": _Key(_FLOAT, 0.1, check=lambda v: 0 < v < 1, desc="in (0, 1)"),
        "holdout_seed": _Key(int, 0),
        "crop_scale": _Key(_FLOAT, 1.3, check=_pos, desc="> 0"),
        "crop_center": _Key(str, "centroid", choices=("centroid", "box")),
        "augment": _Key(str, "paper1", choices=("paper1", "paper2", "light", "none")),
        "warp": _Key(str, "cpu", choices=("cpu", "device")),
        "normalize": _Key(str, "imagenet", choices=("imagenet", "none")),
        "max_train_samples": _Key(int, 0, check=_nonneg, desc=">= 0"),
        "max_val_samples": _Key(int, 0, check=_nonneg, desc=">= 0"),
    },
    "optim": {
        "name": _Key(str, "adam", choices=("adam", "rmsprop")),
        "lr": _Key(_FLOAT, 1e-4, check=_pos, desc="> 0"),
        "lr_milestones": _Key(None, [], check=_int_list, desc="a list of positive step numbers"),
        "lr_gamma": _Key(_FLOAT, 0.1, check=_pos, desc="> 0"),
        "weight_decay": _Key(_FLOAT, 0.0, check=_nonneg, desc=">= 0"),
        "momentum": _Key(_FLOAT, 0.0, check=_nonneg, desc=">= 0"),
        "betas": _Key(None, [0.9, 0.999], check=_float_list(2), desc="a list of two numbers"),
        "eps": _Key(_FLOAT, 1e-8, check=_pos, desc="> 0"),
        "disc_lr": _Key(_FLOAT, 0.0, check=_nonneg, desc=">= 0"),
        "grad_clip": _Key(_FLOAT, 0.0, check=_nonneg, desc=">= 0"),
    },
    "train": {
        "batch_size": _Key(int, 8, check=_pos, desc="> 0"),
        "max_steps": _Key(int, 100_000, check=_pos, desc="> 0"),
        "val_every": _Key(int, 1000, check=_pos, desc="> 0"),
        "patience": _Key(int, 10, check=_nonneg, desc=">= 0"),
        "seed": _Key(int, 0, check=_nonneg, desc=">= 0"),
        "bf16": _Key(bool, True),
        "channels_last": _Key(bool, True),
        "num_workers": _Key(int, 2, check=_nonneg, desc=">= 0"),
        "log_every": _Key(int, 50, check=_pos, desc="> 0"),
        "val_batch_size": _Key(int, 0, check=_nonneg, desc=">= 0"),
        "init_from": _Key(str, ""),
        "keep_every": _Key(int, 0, check=_nonneg, desc=">= 0"),
        "max_minutes": _Key(_FLOAT, 0.0, check=_nonneg, desc=">= 0"),
    },
    "distill": {
        "teacher": _Key(None, "", check=_str_or_list, desc="a path or a list of paths"),
        "weight": _Key(_FLOAT, 0.5, check=lambda v: 0 < v <= 1, desc="in (0, 1]"),
        "flip": _Key(bool, True),
    },
}
_MODEL_FIXED = {"task": _Key(str, None), "num_landmarks": _Key(int, 68, check=_pos, desc="> 0")}
_PRIMITIVES = (bool, int, float, str)


def _check_plain(value, where: str) -> None:
    """Only TOML values that torch.load(weights_only=True) restores (no dates)."""
    if isinstance(value, _PRIMITIVES):
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(v, f"{where}.{k}")
        return
    raise ConfigError(f"{where}: unsupported value type {type(value).__name__} (use numbers, strings, booleans, lists)")


def _check_key(section: str, name: str, spec: _Key, value):
    where = f"{section}.{name}"
    if spec.types is not None and not _is(value, spec.types):
        want = spec.types.__name__ if isinstance(spec.types, type) else "number"
        raise ConfigError(f"{where}: expected {want}, got {type(value).__name__} {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{where}: must be one of {', '.join(map(repr, spec.choices))}, got {value!r}")
    if spec.check is not None and not spec.check(value):
        raise ConfigError(f"{where}: must be {spec.desc or 'valid'}, got {value!r}")
    if spec.types == _FLOAT:
        value = float(value)
    return value


def validate_config(raw: dict) -> dict:
    """Check ``raw`` (as tomllib returns it) against :data:`SCHEMA`; return a
    new dict with defaults filled in. Raises ConfigError naming the key."""
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a table")
    for section in raw:
        if section not in SCHEMA and section != "model":
            raise ConfigError(f"{section}: unknown section (known: model, {', '.join(SCHEMA)})")
    cfg: dict = {}
    model = raw.get("model")
    if not isinstance(model, dict):
        raise ConfigError("model: missing [model] section (needs model.task)")
    _check_plain(model, "model")
    if "task" not in model:
        raise ConfigError("model.task: missing (the task name, e.g. 'hybrid')")
    m = copy.deepcopy(model)
    for name, spec in _MODEL_FIXED.items():
        if name in m:
            m[name] = _check_key("model", name, spec, m[name])
        else:
            m[name] = spec.default
    cfg["model"] = m
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{section}: expected a table [{section}], got {type(given).__name__}")
        out = {}
        for name, value in given.items():
            if name not in keys:
                raise ConfigError(f"{section}.{name}: unknown key (known: {', '.join(keys)})")
            out[name] = _check_key(section, name, keys[name], value)
        for name, spec in keys.items():
            out.setdefault(name, copy.deepcopy(spec.default))
        cfg[section] = out
    if cfg["optim"]["lr_milestones"] != sorted(set(cfg["optim"]["lr_milestones"])):
        raise ConfigError("optim.lr_milestones: must be strictly increasing")
    t = cfg["train"]
    if t["keep_every"] % t["val_every"]:
        raise ConfigError(f"train.keep_every: must be a multiple of train.val_every ({t['val_every']}), "
                          f"got {t['keep_every']} (checkpoints are written at validations)")
    if cfg["optim"]["name"] == "adam" and cfg["optim"]["momentum"]:
        raise ConfigError("optim.momentum: not used by adam (set optim.betas instead)")
    return cfg


def load_config(path) -> dict:
    """Read and validate a TOML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML ({e})") from None
    try:
        return validate_config(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
