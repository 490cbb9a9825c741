"""The ``pyflm`` command line: ``pyflm info`` and ``pyflm demo``.

(``detect``, ``eval``, ``export`` and ``bench`` arrive with the detector.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def _info(args: argparse.Namespace) -> int:
    import pyflm

    info = pyflm.build_info()
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    print(json.dumps(info, indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Encode random sub-pixel landmarks as heatmaps, refine them with the dilated
    skip block, and decode them back with both decoders: the round trip the
    training and inference code is built on."""
    import pyflm

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("pyflm demo: --device cuda asked for, but no CUDA device is available", file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(args.seed)
    b, k, size = args.batch, 68, args.size
    coords = (torch.rand(b, k, 2, generator=gen) * (size - 8) + 4).to(device)

    t0 = time.perf_counter()
    heatmaps, mask = pyflm.heatmap_targets(coords, None, size, size, sigma=2.0, kind="gaussian")
    block = pyflm.DilatedSkipBlock(channels=k).to(device)
    with torch.no_grad():
        torch.nn.init.zeros_(block.layers[-1].weight)  # an untrained block: identity refinement
        torch.nn.init.zeros_(block.layers[-1].bias)
        refined = block(heatmaps)
    soft_xy, conf = pyflm.soft_argmax(refined, temperature=0.05)
    dark_xy, score = pyflm.argmax_decode(refined, refine="dark")
    elapsed = time.perf_counter() - t0

    def err(xy: torch.Tensor) -> float:
        return (xy - coords).norm(dim=-1).mean().item()

    print(f"pyflm {pyflm.__version__}  compiled ops: {pyflm.HAS_OPS}  device: {device}")
    print(f"{b} faces x {k} landmarks, heatmaps {size}x{size}, sigma 2 -> {tuple(heatmaps.shape)}")
    print(f"mean decode error, soft-argmax (T=0.05): {err(soft_xy):.4f} px")
    print(f"mean decode error, argmax + DARK:       {err(dark_xy):.4f} px")
    print(f"valid landmarks: {int(mask.sum())}/{b * k}, mean confidence {conf.mean():.3f}")
    print(f"encode + refine + decode: {elapsed * 1e3:.1f} ms")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyflm", description="pyflm: facial landmark detection")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="build facts: version, compiled ops, CUDA, threads")
    p.set_defaults(func=_info)
    p = sub.add_parser("demo", help="encode, refine and decode random landmarks with the ops")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--batch", type=int, default=8, help="faces in the batch (default: 8)")
    p.add_argument("--size", type=int, default=64, help="heatmap side in pixels (default: 64)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
