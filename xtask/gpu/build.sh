#!/usr/bin/env bash
# `cargo xtask gpu build`: the binaries of the prepared GPU runs, built with CUDA on a machine
# without a GPU or a system CUDA, into .gpu/ (git-ignored):
#
#   recompose       the command line, built with the `cuda` feature
#   recompose-nccl  the same with `nccl` too (data-parallel training; needs libnccl.so.2)
#   recompose-gpu   the GPU runs' driver (check, ...), with bench-steps beside it
#   parity          the device parity tests (benches/tests/parity.rs) with their CUDA half
#   REVISION        the source revision they were built from
#
# and the same as one archive, target/gpu.tar.xz.
#
# NVIDIA's compiler and libraries come from PyPI wheels (CUDA 13.0) in a virtualenv
# (RECOMPOSE_CUDA_VENV, default target/cuda-venv); a CUDA_HOME of links into them is assembled
# beside it, with a link-time stand-in for the driver library (the real libcuda.so.1 comes
# with the GPU's driver). Kernels are compiled for compute capability CUDA_COMPUTE_CAP
# (default 90: H100 / H200). The first build takes ~10 minutes on two cores (nvcc compiles
# candle's kernels); later ones are incremental. On the GPU machine, from the repository root:
#
#   tar -xJf target/gpu.tar.xz
#   LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib .gpu/recompose-gpu check
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
venv=${RECOMPOSE_CUDA_VENV:-$root/target/cuda-venv}
home=$venv/cuda-home
target=${RECOMPOSE_GPU_TARGET_DIR:-$root/target/gpu}

if ! "$venv/bin/python" -c 'import nvidia' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --disable-pip-version-check -q \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.88 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85 \
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
fi
wheels=$("$venv/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
# NCCL, for the data-parallel build (recompose-nccl).
if ! "$venv/bin/python" -c 'import nvidia.nccl' 2>/dev/null; then
  "$venv/bin/pip" install --disable-pip-version-check -q nvidia-nccl-cu13==2.32.6
fi
nccl=$("$venv/bin/python" -c 'import os, nvidia.nccl as n; print(os.path.join(list(n.__path__)[0], "lib"))')

cargo fetch --locked -q
cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-* | sort -V | tail -1)

if [ ! -e "$home/lib64/stubs/libcuda.so" ]; then
  rm -rf "$home"
  mkdir -p "$home/lib64/stubs"
  for d in bin include nvvm; do ln -s "$wheels/$d" "$home/$d"; done
  for f in "$wheels"/lib/*.so.* "$wheels"/lib/*.a; do ln -s "$f" "$home/lib64/"; done
  (
    cd "$home/lib64"
    for l in cudart cublas cublasLt curand nvrtc; do
      ln -s "$(ls "lib$l.so."* | head -1)" "lib$l.so"
    done
  )
  # nvcc links against TOP/lib64.
  [ -e "$wheels/lib64" ] || ln -s lib "$wheels/lib64"
  # Every driver entry point cudarc declares, as an empty function: enough to link.
  grep -ohE "pub unsafe fn cu[A-Za-z0-9_]+" "$cudarc/src/driver/sys/mod.rs" |
    awk '{ print "void " $4 "(void) {}" }' | sort -u > "$home/driver-stand-in.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$home/lib64/stubs/libcuda.so" \
    "$home/driver-stand-in.c"
fi

[ -e "$home/lib64/libnccl.so" ] || ln -s "$nccl/libnccl.so.2" "$home/lib64/libnccl.so"

export CUDA_HOME=$home CUDA_PATH=$home CUDA_ROOT=$home CUDA_TOOLKIT_ROOT_DIR=$home
export PATH=$home/bin:$PATH LIBRARY_PATH=$home/lib64:$home/lib64/stubs
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} CUDARC_CUDA_VERSION=13000
export CARGO_TARGET_DIR=$target

# The command line with NCCL first (kept as recompose-nccl: it needs libnccl.so.2 to start),
# then without it.
cargo build --release --locked -p recompose-cli --features nccl
mkdir -p .gpu
strip -o .gpu/recompose-nccl "$target/release/recompose"
cargo build --release --locked -p recompose-cli --features cuda
cargo build --release --locked -p recompose-benches --features cuda \
  --bin recompose-gpu --bin bench-steps
parity=$(cargo test --release --locked -p recompose-benches --features cuda --test parity \
  --no-run --message-format=json |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "parity" and m.get("executable"):
        print(m["executable"])')

mkdir -p .gpu
for b in recompose recompose-gpu bench-steps; do strip -o ".gpu/$b" "$target/release/$b"; done
strip -o .gpu/parity "$parity"
git rev-parse HEAD > .gpu/REVISION 2>/dev/null || echo unknown > .gpu/REVISION
# Dirty as the reports count it: reports, fixtures and Markdown do not change a result.
if [ -n "$(git status --porcelain --untracked-files=no -- . ':(exclude)docs' \
  ':(exclude)fixtures' ':(exclude,glob)**/*.md' 2>/dev/null)" ]; then
  sed -i 's/$/-dirty/' .gpu/REVISION
fi
# One archive to carry to the GPU machine (about 35 MB; the binaries hold candle's kernels as
# PTX text, which compresses well): unpack it there with `tar -xJf target/gpu.tar.xz`.
tar -cf - .gpu | xz -T0 -6 > target/gpu.tar.xz
ls -la .gpu target/gpu.tar.xz
