"""Loads the compiled op library, or explains why pyflm runs on its references.

Importing ``pyflm._C`` loads ``libpyflm_ops`` beside it, whose static
initialisers register every op as ``torch.ops.pyflm.*``. When it is missing
(a source checkout that was never built, or ``PYFLM_DISABLE_OPS=1``), every op
wrapper falls back to its plain-PyTorch reference and warns once.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import warnings
from pathlib import Path

import torch

_C = None
LOAD_ERROR: Exception | None = None


def _installed_build():
    """The compiled module of an installed pyflm of this same version that this
    source tree shadows (``python -m pytest`` or ``python -m benchmarks...`` run
    from a checkout after ``pip install .``), or None."""
    from pyflm import __version__

    try:
        if importlib.metadata.version("pyflm") != __version__:
            return None
    except importlib.metadata.PackageNotFoundError:
        return None
    here = Path(__file__).resolve().parent
    for entry in sys.path:
        folder = Path(entry or ".").resolve() / "pyflm"
        if folder == here or not folder.is_dir():
            continue
        for candidate in sorted(folder.glob("_C.*")):
            if candidate.suffix not in (".so", ".pyd"):
                continue
            spec = importlib.util.spec_from_file_location("pyflm._C", candidate)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules["pyflm._C"] = module
            return module
    return None


if os.environ.get("PYFLM_DISABLE_OPS", "") not in ("", "0"):
    LOAD_ERROR = RuntimeError("disabled by PYFLM_DISABLE_OPS")
else:
    try:
        from pyflm import _C  # noqa: F811  (loads libpyflm_ops)
    except ImportError as exc:  # not built here, or built for another torch
        LOAD_ERROR = exc
        try:
            _C = _installed_build()
        except ImportError as exc2:
            LOAD_ERROR = exc2
        if _C is not None:
            LOAD_ERROR = None

HAS_OPS: bool = _C is not None
_WITH_CUDA: bool = bool(_C is not None and _C.build_info()["with_cuda"])
_warned: set[str] = set()


def library_path() -> Path | None:
    """Path of ``libpyflm_ops``, for ``torch.ops.load_library`` or a C++ program.

    Located next to the compiled ``_C`` module (not next to this file: with an
    editable install the sources and the built libraries live apart).
    """
    if _C is None:
        return None
    folder = Path(_C.__file__).resolve().parent
    for name in ("libpyflm_ops.so", "libpyflm_ops.dylib", "pyflm_ops.dll"):
        if (folder / name).exists():
            return folder / name
    return None


def build_info() -> dict:
    """How pyflm was built (version, torch, CUDA kernels and arches, threads)."""
    from pyflm import __version__

    if _C is None:
        return {
            "version": __version__,
            "compiled": False,
            "reason": str(LOAD_ERROR),
            "torch_version": torch.__version__,
            "with_cuda": False,
            "num_threads": torch.get_num_threads(),
        }
    info = dict(_C.build_info())
    info["compiled"] = True
    info["library"] = str(library_path())
    info["runtime_torch_version"] = torch.__version__
    return info


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def use_compiled(op: str, device: torch.device) -> bool:
    """True when ``torch.ops.pyflm.<op>`` can run on ``device``; else warn once.

    Other devices than CPU/CUDA (e.g. ``meta``) go through the compiled op too:
    its fake kernel handles them.
    """
    if not HAS_OPS:
        _warn_once(
            "missing",
            f"pyflm: compiled ops unavailable ({LOAD_ERROR}); using the plain-PyTorch "
            "reference implementations (slower). Build with `pip install .`.",
        )
        return False
    if device.type == "cuda" and not _WITH_CUDA:
        _warn_once(
            "cuda",
            "pyflm: the op library was built without CUDA kernels; CUDA tensors use "
            "the plain-PyTorch references. Rebuild against a CUDA torch with nvcc present.",
        )
        return False
    return True
