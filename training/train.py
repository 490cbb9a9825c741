"""Train a landmark task from a TOML config.

    python -m training.train --config training/configs/hybrid.toml [--out runs/hybrid]
                             [--resume] [--max-steps N] [--max-minutes M] [--device cpu|cuda]
                             [--init-from FILE] [--teacher FILE]
    torchrun --nproc_per_node=N -m training.train --config ...   (DDP, same script)

One *step* is one detector update on one batch, except for the "+disc" tasks
(GAN schedule): there a step updates the discriminator once and the detector
twice, on two consecutive batches (detector on batch 1, discriminator on the
detached predictions of batch 1 vs their ground truth, detector on batch 2).
The task's ``loss`` is expected to include its adversarial term; the
discriminator has its own optimizer (same kind, lr ``optim.disc_lr``, no
schedule). The lr schedule (MultiStepLR over steps) steps once per step.
A ``[distill]`` section (distribution tasks) mixes a frozen teacher's
flip-averaged maps into every batch's targets (:mod:`training.distill`).

Every ``train.val_every`` steps (and at the last step) the model is validated
(mean inter-ocular NME in image pixels on the validation split, predictions
mapped back through the exact inverse crop), ``last.pt`` is written and, on
improvement, ``best.pt``; training stops after ``train.patience`` validations
without improvement, or, with ``train.max_minutes`` (``--max-minutes``), at the
first step checked (every ``log_every`` steps) after that wall-clock budget,
which is validated and checkpointed first (for runs on a lent machine with a
fixed time; the budget counts from this invocation's first step, so a resumed
run gets it afresh). Checkpoints are written atomically (temp file +
os.replace) and hold only tensors / plain Python values (loadable with
``torch.load(weights_only=True)``): model, optimizer(s), scheduler, step,
sampler position, best metric, RNG states (torch, numpy, python, CUDA, per
rank) and the config. ``--resume`` reloads ``<out>/last.pt`` and continues
exactly: the data stream, augmentation and RNG states are those of the
uninterrupted run. Resumed with a config whose ``[optim]`` differs (a new
learning-rate schedule, say), the run warns and goes on under the new section
from the resumed step, as if it had had it from the start. ``log.csv`` holds
step, time, lr, losses and val NME.

Under torchrun (WORLD_SIZE > 1) the process group is initialised from the
environment, the model is wrapped in DistributedDataParallel, every rank
reads its own shard of the data stream, rank 0 validates and writes files.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import random
import sys
import time
import warnings
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from training.config import ConfigError, load_config, validate_config
from training.dataset import (
    AUGMENT_PRESETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LandmarkDataset,
    ResumableSampler,
    holdout_split,
    make_loader,
)
from training.distill import build_teacher

__all__ = [
    "ConfigError",
    "CheckpointError",
    "register_task",
    "build_task",
    "build_datasets",
    "save_checkpoint",
    "load_checkpoint",
    "load_init_weights",
    "crop_to_image",
    "task_from_checkpoint",
    "train",
    "main",
]

CHECKPOINT_FORMAT = "pyflm-train-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read (missing, truncated, corrupt, wrong format)."""


# ---------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------

_EXTRA_TASKS: dict[str, Callable] = {}


def register_task(name: str, builder: Callable) -> None:
    """Make ``builder(num_landmarks=..., **kw) -> task`` available as model.task
    ``name`` (used by tests and experiments; pyflm.tasks covers the rest)."""
    _EXTRA_TASKS[name] = builder


def build_task(model_cfg: dict):
    """Build the task described by a validated [model] section; errors name the key."""
    kw = {k: v for k, v in model_cfg.items() if k not in ("task", "num_landmarks")}
    name = model_cfg["task"]
    if name in _EXTRA_TASKS:
        builder = lambda: _EXTRA_TASKS[name](num_landmarks=model_cfg["num_landmarks"], **kw)  # noqa: E731
    else:
        try:
            from pyflm.tasks import build_task as _build
        except ImportError as e:
            raise ConfigError(f"model.task: cannot import pyflm.tasks to build {name!r} ({e})") from None
        import pyflm.tasks

        known = getattr(pyflm.tasks, "TASKS", None)
        if known is not None and name not in known:
            raise ConfigError(f"model.task: unknown task {name!r}; valid names: {', '.join(known)}")
        builder = lambda: _build(name, num_landmarks=model_cfg["num_landmarks"], **kw)  # noqa: E731
    try:
        task = builder()
    except TypeError as e:
        bad = [k for k in kw if f"'{k}'" in str(e)]
        key = f"model.{bad[0]}" if bad else "model"
        raise ConfigError(f"{key}: rejected by task {name!r} ({e})") from None
    except (KeyError, ValueError) as e:
        msg = str(e)
        bad = [k for k in kw if k in msg]
        key = f"model.{bad[0]}" if bad else "model.task"
        raise ConfigError(f"{key}: task {name!r} could not be built ({msg})") from None
    for attr in ("model", "input_size", "encode", "loss", "decode"):
        if not hasattr(task, attr):
            raise ConfigError(f"model.task: {name!r} built an object without .{attr}")
    return task


def _is_gan(task) -> bool:
    return getattr(task, "discriminator", None) is not None and hasattr(task, "discriminator_loss")


def _discriminator_loss(task, outputs, targets, real_coords, fake_coords) -> torch.Tensor:
    """The critic's loss, whichever of the two task signatures is implemented:
    ``discriminator_loss(real_coords, fake_coords)`` (crop px) or
    ``discriminator_loss(outputs, targets)``; a dict result gives its "loss"."""
    import inspect

    try:
        names = list(inspect.signature(task.discriminator_loss).parameters)
    except (TypeError, ValueError):
        names = []
    if names[:2] == ["outputs", "targets"]:
        res = task.discriminator_loss(outputs, targets)
    else:
        res = task.discriminator_loss(real_coords, fake_coords)
    return res["loss"] if isinstance(res, dict) else res


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def _load_samples(spec, root, key: str):
    from pyflm.data import load_split

    names = [spec] if isinstance(spec, str) else list(spec)
    out = []
    for n in names:
        try:
            out.extend(load_split(n, root=root or None))
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"{key}: {e}") from None
    if not out:
        raise ConfigError(f"{key}: no samples in {names}")
    return out


def _norm(data_cfg: dict):
    return (IMAGENET_MEAN, IMAGENET_STD) if data_cfg["normalize"] == "imagenet" else (None, None)


def build_datasets(cfg: dict, input_size: int) -> tuple[LandmarkDataset, LandmarkDataset]:
    """(train, val) datasets from a validated config; missing data raises
    ConfigError naming data.train / data.val."""
    d = cfg["data"]
    train_samples = _load_samples(d["train"], d["root"], "data.train")
    if d["val"] == "holdout":
        train_samples, val_samples = holdout_split(train_samples, d["val_fraction"], d["holdout_seed"])
        if not train_samples or not val_samples:
            raise ConfigError("data.val_fraction: leaves an empty train or validation set")
    else:
        val_samples = _load_samples(d["val"], d["root"], "data.val")
    if d["extra_train"]:
        train_samples = train_samples + _load_samples(d["extra_train"], d["root"], "data.extra_train")
    if d["max_train_samples"]:
        train_samples = train_samples[: d["max_train_samples"]]
    if d["max_val_samples"]:
        val_samples = val_samples[: d["max_val_samples"]]
    mean, std = _norm(d)
    common = dict(crop_scale=d["crop_scale"], crop_center=d["crop_center"], mean=mean, std=std)
    train_ds = LandmarkDataset(train_samples, input_size, AUGMENT_PRESETS[d["augment"]], seed=cfg["train"]["seed"],
                               warp=d["warp"], **common)
    val_ds = LandmarkDataset(val_samples, input_size, None, **common)
    return train_ds, val_ds



def config_of_model(meta: dict, root=None, hint: str = "") -> dict:
    """The validated training config a model file's ``meta`` carries, with
    ``root`` (when given) as data.root; ValueError ending in ``hint`` when
    the file has none."""
    try:
        cfg = validate_config(meta["training"]["config"])
    except KeyError:
        raise ValueError(f"the model file has no training config (meta.training.config){hint}") from None
    if root:
        cfg["data"]["root"] = str(root)
    return cfg

# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    from pyflm.io import atomic_write

    atomic_write(path, write)


def save_checkpoint(path, state: dict) -> None:
    """torch.save ``state`` atomically (temp file in the same folder + os.replace)."""
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    _atomic_write(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a training checkpoint with ``weights_only=True``; a missing,
    truncated or foreign file raises CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zipfile / unpickling errors of many kinds
        raise CheckpointError(
            f"cannot read checkpoint {path} ({path.stat().st_size} bytes): truncated or corrupt? ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a pyflm training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')} (this code reads {CHECKPOINT_VERSION})")
    return ckpt


def load_init_weights(model: nn.Module, path) -> None:
    """``train.init_from``: copy the network weights of a training checkpoint or
    a pyflm model file into ``model`` (strict: same architecture). A missing,
    damaged or mismatched file raises ConfigError naming the key."""
    from pyflm.deploy import ModelFileError, load_model_file

    try:
        state = load_checkpoint(path)["model"]
    except CheckpointError:
        try:  # a pyflm model file (pyflm/weights/default.pt, pyflm export's input)
            state = load_model_file(path)["state_dict"]
        except ModelFileError as e:
            raise ConfigError(f"train.init_from: {e}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = str(e).strip().splitlines()
        raise ConfigError(f"train.init_from: {path} does not fit this model ({detail[0] if detail else e}"
                          f"{' ...' if len(detail) > 1 else ''})") from None


def _rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss_next": py_state[2]},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return out


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"].cpu())
    n = s["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = s["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in s["cuda"]])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def crop_to_image(coords: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Map crop-px points [B, K, 2] back to image px with the exact inverse of
    the image->crop matrices [B, 2, 3] (float64)."""
    m = matrices.to(torch.float64)
    a, t = m[:, :, :2], m[:, :, 2]
    inv = torch.linalg.inv(a)
    return (coords.to(torch.float64) - t[:, None, :]) @ inv.transpose(1, 2)


def _to_float(x):
    if torch.is_tensor(x):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _to_float(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_float(v) for v in x)
    return x


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _apply_optim_config(opt: torch.optim.Optimizer, sched, o: dict, lr: float) -> None:
    """Give a resumed optimizer (and its MultiStepLR ``sched``, or None for a
    constant ``lr``) the settings of ``o``, an ``[optim]`` section, at the
    scheduler's current step: the learning rate the schedule gives there,
    milestones, gamma, weight decay, eps, betas / momentum. Loading their state
    dicts restores the checkpoint's settings, so without this a changed
    ``[optim]`` on ``--resume`` would be silently ignored."""
    now = lr
    if sched is not None:
        sched.milestones = Counter(o["lr_milestones"])
        sched.gamma = o["lr_gamma"]
        sched.base_lrs = [lr] * len(opt.param_groups)
        now = lr * o["lr_gamma"] ** sum(1 for m in o["lr_milestones"] if m <= sched.last_epoch)
    for g in opt.param_groups:
        g.update(lr=now, initial_lr=lr, weight_decay=o["weight_decay"], eps=o["eps"])
        if "betas" in g:
            g["betas"] = tuple(o["betas"])
        if "momentum" in g:
            g["momentum"] = o["momentum"]
    if sched is not None:
        sched._last_lr = [g["lr"] for g in opt.param_groups]


def _make_optimizer(params, o: dict, lr: float) -> torch.optim.Optimizer:
    if o["name"] == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(o["betas"]), eps=o["eps"], weight_decay=o["weight_decay"])
    return torch.optim.RMSprop(params, lr=lr, momentum=o["momentum"], eps=o["eps"], weight_decay=o["weight_decay"])


class _Dist:
    def __init__(self, device_arg: str | None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.enabled = self.world > 1
        if device_arg is None:
            device_arg = "cuda" if torch.cuda.is_available() else "cpu"
        if device_arg.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit("training.train: --device cuda asked for, but no CUDA device is available")
        if self.enabled:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if device_arg.startswith("cuda"):
                torch.cuda.set_device(local)
                self.device = torch.device("cuda", local)
            else:
                self.device = torch.device("cpu")
            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
            self.rank = dist.get_rank()
        else:
            self.rank = 0
            self.device = torch.device(device_arg)
        self.main = self.rank == 0

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def broadcast_flag(self, flag: bool) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.broadcast(t, 0)
        return bool(t.item())

    def all_rng(self) -> list:
        s = _rng_state()
        if not self.enabled:
            return [s]
        out = [None] * self.world
        dist.all_gather_object(out, s)
        return out

    def average_grads(self, params):
        if not self.enabled:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)

    def close(self):
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


class _CsvLog:
    """log.csv; the columns are fixed by the first row. On resume, rows past
    the checkpoint's step are dropped (they belong to the lost run)."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        self.fields: list[str] | None = None
        if resume_step is not None and path.is_file():
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            if rows:
                self.fields = list(rows[0].keys())
                kept = [r for r in rows if int(r["step"]) <= resume_step]
                with path.open("w", newline="") as f:
                    w = csv.DictWriter(f, self.fields)
                    w.writeheader()
                    w.writerows(kept)
        elif path.exists():
            path.unlink()

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = ["step", "time_s", "lr", "loss"] + sorted(
                k for k in row if k not in ("step", "time_s", "lr", "loss", "val_nme")) + ["val_nme"]
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


@torch.no_grad()
def predict_image_coords(task, model: nn.Module, loader, device, autocast=None, channels_last=False):
    """Run ``model`` over ``loader`` (evaluation crops) and return
    (pred image px [N, K, 2], gt image px [N, K, 2], scores [N, K], indices [N]) as float64 NumPy."""
    model.eval()
    preds, gts, scores, idx = [], [], [], []
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast() if autocast else nullcontext():
            out = model(x)
        coords, sc = task.decode(_to_float(out))
        preds.append(crop_to_image(coords.detach().cpu(), batch["matrix"]).numpy())
        gts.append(batch["image_landmarks"].numpy())
        scores.append(sc.detach().float().cpu().numpy())
        idx.append(batch["index"].numpy())
    return np.concatenate(preds), np.concatenate(gts), np.concatenate(scores), np.concatenate(idx)


def validate(task, model, loader, device, autocast=None, channels_last=False) -> float:
    from pyflm.metrics import nme

    was_training = model.training
    pred, gt, _, _ = predict_image_coords(task, model, loader, device, autocast, channels_last)
    model.train(was_training)
    return float(nme(pred, gt, norm="corners").mean())


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------


def task_from_checkpoint(ckpt: dict, device="cpu"):
    """(task, config) of a checkpoint, with its trained weights loaded."""
    cfg = validate_config(ckpt["config"])
    task = build_task(cfg["model"])
    task.model.load_state_dict(ckpt["model"])
    task.model.to(device).eval()
    if _is_gan(task) and ckpt.get("discriminator") is not None:
        task.discriminator.load_state_dict(ckpt["discriminator"])
        task.discriminator.to(device)
    return task, cfg


def train(cfg: dict, out_dir, resume: bool = False, max_steps: int | None = None, device: str | None = None,
          progress: bool = True, max_minutes: float | None = None) -> dict:
    """Train from a validated config; returns a summary dict (also written as
    summary.json). See the module docstring."""
    t_cfg, o_cfg = cfg["train"], cfg["optim"]
    if max_steps is not None:
        if max_steps < 1:
            raise ConfigError(f"--max-steps: must be > 0, got {max_steps}")
        cfg = {**cfg, "train": {**t_cfg, "max_steps": int(max_steps)}}
    if max_minutes is not None:
        if not (math.isfinite(max_minutes) and max_minutes > 0):
            raise ConfigError(f"--max-minutes: must be > 0, got {max_minutes}")
        cfg = {**cfg, "train": {**cfg["train"], "max_minutes": float(max_minutes)}}
    t_cfg = cfg["train"]
    out_dir = Path(out_dir)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(out_dir / "last.pt")
        old = validate_config(ckpt["config"])
        if old["optim"]["name"] != o_cfg["name"]:  # one optimizer's state means nothing to another
            raise ConfigError(f"--resume: optim.name is {o_cfg['name']!r} but {out_dir / 'last.pt'} was trained with "
                              f"{old['optim']['name']!r}; its optimizer state cannot carry over (start a new run "
                              f"with --init-from {out_dir / 'last.pt'})")
        for sec in ("model", "data", "optim"):
            if old[sec] != cfg[sec]:
                warnings.warn(f"--resume: [{sec}] differs from the checkpoint's config; using the new one", stacklevel=2)

    # Everything that can fail on a bad config happens before any training.
    _seed_everything(t_cfg["seed"])
    task = build_task(cfg["model"])
    if t_cfg["init_from"] and ckpt is None:
        load_init_weights(task.model, t_cfg["init_from"])
    input_size = int(task.input_size)
    train_ds, val_ds = build_datasets(cfg, input_size)
    teacher = build_teacher(cfg["distill"], task, *_norm(cfg["data"]))

    dd = _Dist(device)
    dev = dd.device
    if dd.enabled:  # DDP broadcasts rank 0's weights; dropout etc. should differ per rank
        _seed_everything(t_cfg["seed"] + dd.rank)
    use_gpu_tricks = dev.type == "cuda"
    channels_last = use_gpu_tricks and t_cfg["channels_last"]
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_gpu_tricks and t_cfg["bf16"] else None

    if isinstance(task, nn.Module):
        task.to(dev)  # a task module may hold buffers besides model / discriminator
    model = task.model.to(dev)
    if teacher is not None:
        teacher.to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    gan = _is_gan(task)
    disc = task.discriminator.to(dev) if gan else None
    opt = _make_optimizer([p for p in model.parameters() if p.requires_grad], o_cfg, o_cfg["lr"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=o_cfg["lr_milestones"], gamma=o_cfg["lr_gamma"])
    disc_opt = _make_optimizer(disc.parameters(), o_cfg, o_cfg["disc_lr"] or o_cfg["lr"]) if gan else None

    step, consumed, best, best_step, bad_vals = 0, 0, math.inf, 0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if gan:
            disc.load_state_dict(ckpt["discriminator"])
            disc_opt.load_state_dict(ckpt["disc_optimizer"])
        if old["optim"] != o_cfg:  # --resume with a changed [optim]: use it
            _apply_optim_config(opt, sched, o_cfg, o_cfg["lr"])
            if gan:
                _apply_optim_config(disc_opt, None, o_cfg, o_cfg["disc_lr"] or o_cfg["lr"])
        step, consumed = int(ckpt["step"]), int(ckpt["consumed"])
        best = float(ckpt["best_metric"]) if ckpt["best_metric"] is not None else math.inf
        best_step, bad_vals = int(ckpt["best_step"]), int(ckpt["bad_validations"])
        rngs = ckpt["rng"]
        _set_rng_state(rngs[dd.rank] if dd.rank < len(rngs) else rngs[0])

    net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None) \
        if dd.enabled else model

    bs = t_cfg["batch_size"]
    sampler = ResumableSampler(len(train_ds), seed=t_cfg["seed"], rank=dd.rank, num_replicas=dd.world, start=consumed)
    nw = t_cfg["num_workers"]
    loader = make_loader(train_ds, bs, sampler=sampler, num_workers=nw, seed=t_cfg["seed"],
                         pin_memory=dev.type == "cuda")
    val_loader = make_loader(val_ds, t_cfg["val_batch_size"] or bs, num_workers=nw, seed=t_cfg["seed"],
                             pin_memory=dev.type == "cuda") if dd.main else None

    if dd.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    log = _CsvLog(out_dir / "log.csv", step if ckpt is not None else None) if dd.main else None

    def state(step_now: int) -> dict:
        return {
            "step": step_now, "consumed": consumed,
            "model": _unwrap(net).state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "discriminator": disc.state_dict() if gan else None,
            "disc_optimizer": disc_opt.state_dict() if gan else None,
            "best_metric": None if math.isinf(best) else best, "best_step": best_step, "bad_validations": bad_vals,
            "rng": rng_all, "config": cfg, "task": cfg["model"]["task"], "input_size": input_size,
            "num_landmarks": cfg["model"]["num_landmarks"],
        }

    def detector_update(batch) -> dict:
        x = train_ds.images(batch, dev)  # data.warp = "device": warped here, batched
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        coords = batch["landmarks"].to(dev, torch.float32)
        vis = batch["visibility"].to(dev)
        targets = task.encode(coords, vis)
        if teacher is not None:
            targets = teacher.mix(x, targets)
        with autocast() if autocast else nullcontext():
            outputs = net(x)
        outputs = _to_float(outputs)
        losses = task.loss(outputs, targets)
        loss = losses["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if o_cfg["grad_clip"]:
            nn.utils.clip_grad_norm_(model.parameters(), o_cfg["grad_clip"])
        opt.step()
        return {"outputs": outputs, "coords": coords, "targets": targets,
                # kept on the device: no host sync per step, read at log time
                "losses": {k: v.detach().float() for k, v in losses.items() if torch.is_tensor(v) and v.numel() == 1}}

    max_steps = t_cfg["max_steps"]
    rng_all = None
    t0 = time.perf_counter()
    sums: dict[str, torch.Tensor] = {}
    n_sum = 0
    stopped_early = time_up = False
    deadline = t0 + 60.0 * t_cfg["max_minutes"] if t_cfg["max_minutes"] else None
    val_nme = None
    bar = None
    if progress and dd.main:
        from tqdm import tqdm

        bar = tqdm(total=max_steps, initial=step, desc=f"train {cfg['model']['task']}", mininterval=1.0,
                   dynamic_ncols=True)
    it = iter(loader)
    net.train()
    try:
        while step < max_steps:
            r = detector_update(next(it))
            consumed += bs
            losses = dict(r["losses"])
            if gan:
                real = r["coords"]
                fake = task.decode(_tree_detach(r["outputs"]))[0].float().detach()
                d_loss = _discriminator_loss(task, _tree_detach(r["outputs"]), r["targets"], real, fake)
                disc_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                dd.average_grads(disc.parameters())
                disc_opt.step()
                r2 = detector_update(next(it))
                consumed += bs
                losses = {k: (v + r2["losses"].get(k, v)) / 2 for k, v in losses.items()}
                losses["d_loss"] = d_loss.detach().float()
            sched.step()
            step += 1
            for k, v in losses.items():
                sums[k] = sums[k] + v if k in sums else v
            n_sum += 1
            if bar is not None:
                bar.update(1)

            if deadline is not None and step % t_cfg["log_every"] == 0:  # rank 0's clock decides for all
                time_up = dd.broadcast_flag(time.perf_counter() >= deadline)
            is_val = step % t_cfg["val_every"] == 0 or step == max_steps or time_up
            if step % t_cfg["log_every"] == 0 or is_val:
                means = {k: float(v) / n_sum for k, v in sums.items()}
                sums, n_sum = {}, 0
                if not math.isfinite(means["loss"]):
                    raise FloatingPointError(f"step {step}: non-finite training loss ({means})")
                if bar is not None:
                    bar.set_postfix(loss=f"{means['loss']:.4g}", refresh=False)
            if dd.main and (step % t_cfg["log_every"] == 0 or is_val):
                val_nme = None
                if is_val:
                    val_nme = validate(task, model, val_loader, dev, autocast, channels_last)
                row = {"step": step, "time_s": f"{time.perf_counter() - t0:.3f}", "lr": f"{sched.get_last_lr()[0]:.6g}",
                       **{k: f"{v:.6g}" for k, v in means.items()},
                       "val_nme": "" if val_nme is None else f"{val_nme:.6g}"}
                log.write(row)
                if is_val and bar is not None:
                    bar.write(f"step {step}: val NME {val_nme * 100:.3f}% (best {min(best, val_nme) * 100:.3f}%)")
            if is_val:
                stop = False
                if dd.main:
                    if val_nme < best:
                        best, best_step, bad_vals = val_nme, step, 0
                        improved = True
                    else:
                        bad_vals += 1
                        improved = False
                    stop = t_cfg["patience"] > 0 and bad_vals >= t_cfg["patience"]
                rng_all = dd.all_rng()
                if dd.main:
                    st = state(step)
                    save_checkpoint(out_dir / "last.pt", st)
                    if improved:
                        save_checkpoint(out_dir / "best.pt", st)
                    if t_cfg["keep_every"] and step % t_cfg["keep_every"] == 0:
                        save_checkpoint(out_dir / f"step_{step:07d}.pt", st)
                stop = dd.broadcast_flag(stop)
                if stop:
                    stopped_early = True
                    break
                if time_up:
                    break
                net.train()
    finally:
        if bar is not None:
            bar.close()
        del it
    summary = {"task": cfg["model"]["task"], "steps": step, "best_val_nme": None if math.isinf(best) else best,
               "best_step": best_step, "stopped_early": stopped_early, "time_limit_reached": time_up,
               "time_s": time.perf_counter() - t0,
               "val_split": cfg["data"]["val"], "train_samples": len(train_ds), "val_samples": len(val_ds)}
    if dd.main:
        _atomic_write(out_dir / "summary.json", lambda f: f.write(json.dumps(summary, indent=2).encode()))
    dd.barrier()
    dd.close()
    return summary


def _tree_detach(x):
    if torch.is_tensor(x):
        return x.detach()
    if isinstance(x, dict):
        return {k: _tree_detach(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_tree_detach(v) for v in x)
    return x


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="TOML config (training/configs/<name>.toml)")
    p.add_argument("--out", default=None, help="output folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="override train.max_minutes: stop (validated and checkpointed) after this much training")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--init-from", default=None, metavar="FILE",
                   help="override train.init_from: start from this checkpoint's or model file's weights")
    p.add_argument("--teacher", default=None, nargs="+", metavar="FILE",
                   help="override distill.teacher: distil from this checkpoint or model file (several: their ensemble)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.init_from is not None:
            cfg["train"]["init_from"] = args.init_from
        if args.teacher is not None:
            cfg["distill"]["teacher"] = args.teacher[0] if len(args.teacher) == 1 else args.teacher
        out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
        summary = train(cfg, out, resume=args.resume, max_steps=args.max_steps, device=args.device,
                        progress=not args.no_progress, max_minutes=args.max_minutes)
    except (ConfigError, CheckpointError) as e:
        print(f"training.train: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
