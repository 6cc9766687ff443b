#!/usr/bin/env bash
# Installs Open MPI (mpirun and the headers and libraries the `mpi` feature links against) and libclang,
# which the mpi crate's build uses to generate its bindings from mpi.h. Debian or Ubuntu, as root or with
# sudo. Usage: scripts/install_mpi.sh; then cargo build --release --features mpi.
set -euo pipefail
if command -v mpicc >/dev/null && command -v mpirun >/dev/null && ldconfig -p | grep -q libclang; then
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openmpi-bin libopenmpi-dev libclang-dev clang >/dev/null
command -v mpirun >/dev/null && command -v mpicc >/dev/null
