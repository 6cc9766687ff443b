#!/usr/bin/env bash
# Installs NVRTC and the CUDA headers from PyPI into a folder (about 61 MB of wheels), enough to compile
# the CUDA kernels on a machine without a GPU. Usage: scripts/install_nvrtc.sh [folder (default local/cuda)]
# then: export LD_LIBRARY_PATH="$PWD/local/cuda/nvidia/cu13/lib:$LD_LIBRARY_PATH"
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-local/cuda}"
if [ -e "$dir/nvidia/cu13/lib/libnvrtc.so.13" ]; then
    exit 0
fi
python3 -m pip install --quiet --disable-pip-version-check --target "$dir" \
    "nvidia-cuda-nvrtc>=13,<14" "nvidia-cuda-runtime>=13,<14" "nvidia-cuda-crt>=13,<14"
test -e "$dir/nvidia/cu13/lib/libnvrtc.so.13"
