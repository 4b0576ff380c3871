#!/usr/bin/env bash
# Installs the pinned CUDA toolkit wheels (toolkit-requirements.txt) into a virtual environment
# outside the repository, where build.sh looks for them: $OPTSIDECAR_CUDA_VENV, by default
# ~/.cache/optsidecar/cuda-venv. About 105 MB; needs no GPU.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${OPTSIDECAR_CUDA_VENV:-$HOME/.cache/optsidecar/cuda-venv}
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/pip" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r "$here/toolkit-requirements.txt"
echo "CUDA toolkit wheels installed in $venv"
