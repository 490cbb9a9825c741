"""The C++ command-line tool ``pyflm-detect`` shipped inside the package.

``pip install`` builds it into the package folder when OpenCV 4 C++ and
nlohmann/json are installed (see the README); the ``pyflm-detect`` console
command runs it (this module's :func:`main` execs the binary, so exit codes
and output are the binary's own).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["binary_path", "cascade_args", "main"]

_NAME = "pyflm-detect"


def binary_path() -> Path | None:
    """The pyflm-detect binary: ``$PYFLM_DETECT_BINARY``, else the one inside the
    package; None when it was not built."""
    env = os.environ.get("PYFLM_DETECT_BINARY")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent / _NAME)
    for p in candidates:
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def cascade_args(args: list[str]) -> list[str]:
    """``["--cascade", FILE]`` with opencv-python's copy of the frontal-face cascade
    (the file pyflm's Python detector reads; opencv-python is a dependency, Debian's
    opencv-data, the binary's own default, may be absent), unless ``args`` names one."""
    if any(a == "--cascade" or a.startswith("--cascade=") for a in args):
        return []
    try:
        import cv2
    except ImportError:
        return []
    path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    return ["--cascade", str(path)] if path.is_file() else []


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    binary = binary_path()
    if binary is None:
        print(f"{_NAME}: this pyflm was installed without the C++ tool (OpenCV 4 C++ or nlohmann/json were "
              "missing at build time): apt-get install libopencv-dev nlohmann-json3-dev, then reinstall pyflm",
              file=sys.stderr)
        return 2
    sys.stdout.flush()
    if "--help" not in args:
        args = [*cascade_args(args), *args]
    os.execv(binary, [str(binary), *args])
    return 0  # not reached
