#!/usr/bin/env bash
# Builds the CPU engine's native loops, liboptsidecar_cpu.so, from every .cc file here, into
# OUT_DIR with the system's g++ (x86-64 only: each loop is compiled for AVX2, or AVX-512 and AVX2,
# and for any x86-64 CPU, picked when it loads).
# Without g++, or on another architecture, it says so and builds nothing, and the CPU engine runs
# its Java loops, which give the same bits.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUT_DIR}
cxx=${CXX:-g++}
if ! command -v "$cxx" >/dev/null 2>&1; then
  echo "[cpu] no $cxx; the CPU engine's native loops are not built (it runs the Java loops)"
  exit 0
fi
if [ "$(uname -m)" != x86_64 ]; then
  echo "[cpu] the native loops are built for x86-64 only, not $(uname -m) (the CPU engine runs the Java loops)"
  exit 0
fi
java_home=${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")}
library="$out/liboptsidecar_cpu.so"
mkdir -p "$out"
if [ -f "$library" ] && [ -z "$(find "$here" -newer "$library" -type f \( -name '*.cc' -o -name '*.h' -o -name build.sh \))" ]; then
  echo "[cpu] $library is up to date"
  exit 0
fi
# -ffp-contract=off and no -ffast-math: every operation rounds as the Java loops' do.
"$cxx" -O3 -std=c++17 -shared -fPIC -fvisibility=hidden -ffp-contract=off -fno-math-errno \
  -static-libstdc++ -static-libgcc -Wall -Wextra -Werror \
  -I"$java_home/include" -I"$java_home/include/linux" \
  -o "$library" "$here"/*.cc
echo "[cpu] built $library"
