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

__all__ = ["binary_path", "main"]

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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    binary = binary_path()
    if binary is None:
        print(f"{_NAME}: this pyflm was installed without the C++ tool (OpenCV 4 C++ or nlohmann/json were "
              "missing at build time): apt-get install libopencv-dev nlohmann-json3-dev, then reinstall pyflm",
              file=sys.stderr)
        return 2
    sys.stdout.flush()
    os.execv(binary, [str(binary), *args])
    return 0  # not reached
