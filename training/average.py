"""Average the weights of several snapshots of one run (SWA) into a model file.

    python -m training.average --models runs/fast_swa/step_*.pt --out averaged.pt
        [--bn-batches 100] [--batch-size 32] [--root DATA] [--device cpu|cuda] [--workers N]

Why: snapshots taken along a run at a constant learning rate sit around a
minimum; their mean is nearer its centre than any one of them (stochastic
weight averaging, Izmailov et al. 2018). Inputs are training checkpoints or
model files of one network (same task, arguments and weight shapes; else exit 2
naming the file), averaged uniformly in float64. BatchNorm statistics of the
mean weights are not the mean of the statistics, so they are re-estimated
with ``torch.optim.swa_utils.update_bn`` on ``--bn-batches`` augmented batches
of the training split that the first input's training config names.

The output keeps the first input's meta (crop rules, decoding) without its
calibration offset, which was fitted to other weights: refit it with
``training.calibrate`` (``training.build_default_model --final`` does that and
packages the result). ``meta.training.averaged`` lists the sources.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import torch
from torch import nn

from pyflm import deploy

__all__ = ["average_state_dicts", "average_models", "main"]


def average_state_dicts(state_dicts: list[dict], names: list[str] | None = None) -> dict:
    """The uniform mean of ``state_dicts`` (float tensors, computed in float64
    and cast back); integer tensors (BatchNorm's ``num_batches_tracked``) are
    the first one's. ValueError naming the input whose keys or shapes differ
    from the first one's."""
    if not state_dicts:
        raise ValueError("nothing to average: no inputs")
    names = names or [f"input {i}" for i in range(len(state_dicts))]
    first = state_dicts[0]
    for sd, name in zip(state_dicts[1:], names[1:]):
        if sd.keys() != first.keys():
            diff = sorted(set(sd) ^ set(first))[:3]
            raise ValueError(f"{name}: its weights are not those of {names[0]} (keys differ, e.g. {diff})")
        for k, v in sd.items():
            if v.shape != first[k].shape:
                raise ValueError(f"{name}: {k} has shape {tuple(v.shape)}, {names[0]} {tuple(first[k].shape)}")
    out = {}
    for k, v in first.items():
        if v.is_floating_point():
            out[k] = (sum(sd[k].double() for sd in state_dicts) / len(state_dicts)).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def _training_images(meta: dict, batch_size: int, num_workers: int, root=None):
    """Augmented image batches of the training split ``meta``'s config names, as training sees them."""
    from training.dataset import make_loader
    from training.train import build_datasets, config_of_model

    cfg = config_of_model(meta, root, " to take BatchNorm batches from: give --bn-batches 0")
    train_ds, _ = build_datasets(cfg, int(meta["input_size"]))
    loader = make_loader(train_ds, batch_size, shuffle=True, num_workers=num_workers, seed=cfg["train"]["seed"])
    return (train_ds.images(b, "cpu") for b in loader)


@torch.no_grad()
def average_models(model_files: list[dict], names: list[str] | None = None, bn_batches: int = 100,
                   batch_size: int = 32, root=None, device: str = "cpu", num_workers: int = 2) -> dict:
    """A model file whose weights are the mean of ``model_files``' (see the
    module docstring), BatchNorm statistics re-estimated on ``bn_batches``
    training batches (0 = keep the averaged statistics)."""
    names = names or [f"input {i}" for i in range(len(model_files))]
    first = model_files[0]
    for mf, name in zip(model_files[1:], names[1:]):
        if (mf["task"], mf["model_kwargs"]) != (first["task"], first["model_kwargs"]):
            raise ValueError(f"{name}: a {mf['task']!r} network {mf['model_kwargs']}, not the "
                             f"{first['task']!r} {first['model_kwargs']} of {names[0]}")
    meta = {**first["meta"], "decode": {k: v for k, v in first["meta"]["decode"].items() if k != "offset"}}
    meta.pop("calibration", None)
    mf = {**first, "meta": meta, "state_dict": average_state_dicts([m["state_dict"] for m in model_files], names)}
    net: nn.Module = deploy.task_from_model_file(mf).model.to(device)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    if bn_batches and has_bn:
        try:
            images = _training_images(meta, batch_size, num_workers, root)
        except ValueError as e:
            raise ValueError(f"{names[0]}: {e}") from None
        torch.optim.swa_utils.update_bn(itertools.islice(images, bn_batches), net, device=torch.device(device))
    net.eval()
    mf["state_dict"] = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    training = dict(meta.get("training", {}))
    training["averaged"] = {"sources": list(names), "count": len(model_files),
                            "bn_batches": int(bn_batches) if has_bn else 0}
    meta["training"] = training
    return mf


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.average", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", required=True, help="training checkpoints or model files of one network")
    p.add_argument("--out", required=True, help="the model file to write (atomically)")
    p.add_argument("--bn-batches", type=int, default=100,
                   help="training batches to re-estimate BatchNorm statistics on (0 = keep the averaged ones)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--root", default=None, help="data root (default PYFLM_DATA or ../shared/data)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (0 = load in this process)")
    args = p.parse_args(argv)
    from training.config import ConfigError

    if args.bn_batches < 0 or args.batch_size < 1:
        print("training.average: error: --bn-batches must be >= 0 and --batch-size > 0", file=sys.stderr)
        return 2
    try:
        files = [deploy.load_model_file(m) for m in args.models]
        mf = average_models(files, list(args.models), args.bn_batches, args.batch_size, args.root, args.device,
                            args.workers)
    except (deploy.ModelFileError, ConfigError, FileNotFoundError, ValueError) as e:
        print(f"training.average: error: {e}", file=sys.stderr)
        return 2
    path = deploy.save_model_file(args.out, mf["task"], mf["model_kwargs"], mf["state_dict"], mf["meta"])
    print(f"averaged {len(files)} snapshots, BatchNorm statistics from {mf['meta']['training']['averaged']['bn_batches']}"
          f" training batches; wrote {path} (no calibration offset: run training.calibrate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
