#!/usr/bin/env bash
# Builds the CUDA engine's library, liboptsidecar_cuda.so, into OUT_DIR: SASS for sm_80, sm_90
# and sm_100 plus compute_80 PTX, the CUDA runtime linked statically (the library needs only
# libc/libstdc++ and, at run time, the driver). The ptxas report (registers, spills per kernel)
# is printed and kept as OUT_DIR/ptxas-report.txt. Without a toolkit it says so and builds nothing,
# and the server runs on the CPU engine.
#
# The toolkit: $OPTSIDECAR_CUDA_HOME (a directory with bin/nvcc), else the pinned wheels that
# install-toolkit.sh puts in $OPTSIDECAR_CUDA_VENV (default ~/.cache/optsidecar/cuda-venv).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUT_DIR}
venv=${OPTSIDECAR_CUDA_VENV:-$HOME/.cache/optsidecar/cuda-venv}
cuda_home=${OPTSIDECAR_CUDA_HOME:-}
if [ -z "$cuda_home" ]; then
  for dir in "$venv"/lib/python3*/site-packages/nvidia/cu13; do
    if [ -x "$dir/bin/nvcc" ]; then cuda_home=$dir; fi
  done
fi
if [ -z "$cuda_home" ] || [ ! -x "$cuda_home/bin/nvcc" ]; then
  echo "[cuda] no CUDA toolkit (run server/src/main/cuda/install-toolkit.sh); the CUDA engine is not built"
  exit 0
fi
java_home=${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")}
library="$out/liboptsidecar_cuda.so"
mkdir -p "$out"
# Rebuild only when a source changed: nvcc for three architectures takes a while.
if [ -f "$library" ] && [ -z "$(find "$here" -newer "$library" -type f \( -name '*.cu' -o -name '*.h' -o -name build.sh \))" ]; then
  echo "[cuda] $library is up to date"
  exit 0
fi
gencode="-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
 -gencode arch=compute_100,code=sm_100 -gencode arch=compute_80,code=compute_80"
obj=$(mktemp -d)
trap 'rm -rf "$obj"' EXIT
# -fmad=false: a multiply and an add fuse only where the source says fmaf, as in the Java loops.
"$cuda_home/bin/nvcc" -O3 -std=c++17 $gencode -fmad=false -prec-div=true -prec-sqrt=true -Xptxas -v \
  -Xcompiler -fPIC,-fvisibility=hidden -I"$java_home/include" -I"$java_home/include/linux" \
  -c "$here/cuda_engine.cu" -o "$obj/cuda_engine.o" 2> "$obj/ptxas.log"
grep -E "Compiling entry|registers|spill" "$obj/ptxas.log" | sed -E 's/^ptxas info *: *//' > "$out/ptxas-report.txt" || true
echo "[cuda] ptxas report (registers and spills per kernel and architecture):"
sed 's/^/[cuda]   /' "$out/ptxas-report.txt"
if grep -E "[1-9][0-9]* bytes spill (stores|loads)" "$out/ptxas-report.txt" >/dev/null; then
  echo "[cuda] WARNING: a kernel spills registers (see above)"
fi
"$cuda_home/bin/nvcc" -shared -cudart static $gencode -L"$cuda_home/lib" -Xlinker --exclude-libs,ALL \
  -o "$library" "$obj/cuda_engine.o"
echo "[cuda] built $library ($(du -k "$library" | cut -f1) KiB)"
