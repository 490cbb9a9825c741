#!/usr/bin/env bash
# Create the peers' venv (dlib, OpenCV's LBF) for benchmarks/peers/compare.py.
#
#   bash benchmarks/peers/setup_env.sh            # -> <repo>/.venv-peers
#   PYFLM_PEERS_VENV=/some/dir bash benchmarks/peers/setup_env.sh
#
# The peers run in subprocesses of this venv (peer_worker.py); pyflm itself runs
# in the project's own venv. Everything comes from PyPI; nothing is downloaded
# when the benchmark runs (the model files are found inside the installed packages).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${PYFLM_PEERS_VENV:-$repo/.venv-peers}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv with $($python --version 2>&1)"
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --upgrade --quiet pip
"$venv/bin/python" -m pip install -r "$here/requirements.txt"
"$venv/bin/python" "$here/peer_worker.py" --check
echo "peers venv ready: $venv"
