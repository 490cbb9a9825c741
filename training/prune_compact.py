"""Prune a trained compact model's inverted residuals to a smaller ``expand``.

    python -m training.prune_compact --source pyflm/weights/fast.pt --expand 2 --out runs/slim/pruned.pt

Each inverted residual's hidden channels (1x1 expand -> 3x3 depthwise -> 1x1
project) are ranked by what they can pass on: the depthwise BN's ``|gamma|``
times the L1 norm of the projection weights reading the channel. The best
``round8(cin * expand)`` are kept, in their original order, with their rows of
the expand conv and its BN, the depthwise conv and its BN, and their columns
of the projection; every other weight is copied unchanged. The result is a
model file (``CompactHeatmapNet(expand=...)``) to fine-tune from
(``train.init_from``): a pruned net starts far closer to its parent's accuracy
than a random one, which matters when training runs on a CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from pyflm import deploy
from pyflm.models.compact import CompactHeatmapNet, InvertedResidual

__all__ = ["channel_importance", "prune_compact", "prune_model_file"]


def channel_importance(block: InvertedResidual) -> torch.Tensor:
    """``[hidden]``: depthwise BN |gamma| x L1 norm of the projection's column."""
    dw_bn = block.block[-2][1]
    project = block.block[-1][0].weight  # [cout, hidden, 1, 1]
    return dw_bn.weight.detach().abs() * project.detach().abs().sum(dim=(0, 2, 3))


def _take(dst: nn.Module, src: nn.Module, keep: torch.Tensor, dim: int) -> None:
    """Copy ``src``'s parameters and buffers into ``dst``, indexing ``dim`` with
    ``keep`` where their sizes differ (BN's num_batches_tracked is copied)."""
    dst_state = dst.state_dict()
    for name, value in src.state_dict().items():
        if value.dim() > dim and value.shape[dim] != dst_state[name].shape[dim]:
            value = value.index_select(dim, keep)
        dst_state[name].copy_(value)


def prune_compact(net: CompactHeatmapNet, expand: float) -> CompactHeatmapNet:
    """A copy of ``net`` with every expanding inverted residual pruned to
    ``expand`` x its input channels (see the module docstring); ``expand`` no
    larger than the net's own."""
    kwargs = dict(net.init_kwargs)
    if expand > kwargs.get("expand", 4.0):
        raise ValueError(f"can only prune to a smaller expand than the net's ({kwargs.get('expand', 4.0)}), "
                         f"got {expand}")
    out = CompactHeatmapNet(**{**kwargs, "expand": expand})
    out.load_state_dict({k: v for k, v in net.state_dict().items() if k in _unpruned_keys(net)}, strict=False)
    for src, dst in zip(net.modules(), out.modules()):
        if not isinstance(src, InvertedResidual) or len(src.block) != 3:
            continue
        hidden = dst.block[0][0].out_channels
        keep = channel_importance(src).topk(hidden).indices.sort().values
        expand_conv, dw, project = zip(src.block, dst.block)
        _take(expand_conv[1], expand_conv[0], keep, 0)
        _take(dw[1], dw[0], keep, 0)
        _take(project[1][0], project[0][0], keep, 1)
        project[1][1].load_state_dict(project[0][1].state_dict())
    return out.train(net.training)


def _unpruned_keys(net: CompactHeatmapNet) -> set[str]:
    pruned = {f"{name}." for name, m in net.named_modules() if isinstance(m, InvertedResidual) and len(m.block) == 3}
    return {k for k in net.state_dict() if not any(k.startswith(p) for p in pruned)}


def _load_source(path: Path) -> dict:
    from training.train import CheckpointError, load_checkpoint

    try:
        return deploy.model_file_from_checkpoint(load_checkpoint(path), source=str(path))
    except CheckpointError:
        return deploy.load_model_file(path)


def prune_model_file(source, expand: float, out) -> Path:
    """Prune the compact model of ``source`` (a model file or a training
    checkpoint) to ``expand``; write the pruned model file to ``out``
    (atomically) with the source's meta."""
    mf = _load_source(Path(source))
    if mf["task"] != "compact":
        raise ValueError(f"{source}: task {mf['task']!r}; only compact models can be pruned")
    net = CompactHeatmapNet(**mf["model_kwargs"])
    net.load_state_dict(mf["state_dict"])
    pruned = prune_compact(net.eval(), expand)
    meta = {**mf["meta"], "pruned_from": {"source": str(source), "expand": float(expand)}}
    return deploy.save_model_file(out, "compact", pruned.init_kwargs, pruned.state_dict(), meta)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.prune_compact", description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="compact model file or training checkpoint")
    p.add_argument("--expand", type=float, required=True, help="new hidden width (x input channels), e.g. 2")
    p.add_argument("--out", required=True, help="model file to write")
    a = p.parse_args(argv)
    try:
        path = prune_model_file(a.source, a.expand, a.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"prune_compact: error: {e}", file=sys.stderr)
        return 2
    n = sum(v.numel() for v in deploy.load_model_file(path)["state_dict"].values())
    print(f"wrote {path}: expand {a.expand}, {n:,} numbers in the state dict")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
