#!/usr/bin/env bash
# The CUDA engine's device check, in two halves:
#
#   device-check.sh prepare [DIR]   on the build machine, after `mvn package` made the server jar
#                                   with its CUDA library: puts into DIR (default: device-check/ at
#                                   the repository root, git-ignored) the jar, a jlink Java runtime
#                                   (the GPU machines have no Java), the reference vectors, the
#                                   torch benches, and the Python client with its tests (and the
#                                   crc32c wheel for Python 3.12 when PyPI can be reached). About 45 MB.
#   device-check.sh run [DIR]       on a GPU machine (no Java or network needed): the engine's
#                                   self-test, every kernel against the CPU engine bit for bit,
#                                   determinism, the fused step against a device copy, the
#                                   conformance run against a server started with --engine cuda,
#                                   the Python client's CUDA tests (CUDA parameters over every
#                                   transport, CUDA IPC) against such a server, torch's fused AdamW
#                                   and RAdam on the same GPU, and the step a torch trainer sees
#                                   through CUDA IPC beside them. Writes DIR/report.txt (and
#                                   $OUT/report.txt when $OUT is set); exit 0 when every check passed.
#
# SIZES (default 10000000,100000000,1000000000) sets the engine bench's element counts, IPC_SIZES
# (default 10000000,100000000) the CUDA IPC bench's.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
mode=${1:-}
dir=${2:-$root/device-check}
sizes=${SIZES:-10000000,100000000,1000000000}
ipc_sizes=${IPC_SIZES:-10000000,100000000}

prepare() {
  set -e
  local jar="$root/server/target/optsidecar-server.jar"
  [ -f "$jar" ] || { echo "no $jar: run mvn -B -ntp package -pl server -am -DskipTests first" >&2; exit 2; }
  unzip -l "$jar" native/linux-x86_64/liboptsidecar_cuda.so > /dev/null \
    || { echo "$jar has no CUDA library: install the toolkit (install-toolkit.sh) and rebuild" >&2; exit 2; }
  rm -rf "$dir" && mkdir -p "$dir"
  cp "$jar" "$dir/"
  local runtime
  runtime=$(mktemp -d)/java
  jlink --add-modules java.base,java.logging,java.naming,java.management,jdk.unsupported \
    --strip-debug --no-header-files --no-man-pages --compress=2 --output "$runtime"
  tar -C "$(dirname "$runtime")" -czf "$dir/java-runtime.tar.gz" java
  rm -rf "$(dirname "$runtime")"
  local reference=${OPTSIDECAR_REFERENCE_DIR:-$root/../shared/reference}
  if [ -d "$reference" ]; then cp -r "$reference" "$dir/reference" && chmod -R u+w "$dir/reference"; fi
  cp "$here/device-check.sh" "$here/torch_bench.py" "$here/ipc_bench.py" "$dir/"
  mkdir -p "$dir/python/tests"
  cp -r "$root/client-python-stub/optsidecar" "$dir/python/"
  cp "$root"/client-python-stub/tests/{conftest.py,helpers.py,test_cuda_params.py,test_cuda_ipc.py} "$dir/python/tests/"
  find "$dir/python" -name __pycache__ -prune -exec rm -rf {} +
  # The client's optional CRC-32C (the edit check's fast hash); without it zlib's CRC32 is used.
  mkdir -p "$dir/wheels"
  if ! python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux2014_x86_64 --dest "$dir/wheels" crc32c 2> "$dir/wheels/download.log"; then
    echo "note: crc32c not downloaded (see $dir/wheels/download.log); the client falls back to zlib"
  fi
  du -sh "$dir"
}

run() {
  local report="$dir/report.txt"
  local work
  work=$(mktemp -d)
  local failed=0
  : > "$report"
  say() { echo "$*" | tee -a "$report"; }
  say "# optsidecar CUDA device check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  say "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
  tar -C "$work" -xzf "$dir/java-runtime.tar.gz"
  local java="$work/java/bin/java"
  local jar="$dir/optsidecar-server.jar"

  say "## self-test, kernels against the CPU engine, determinism, fused step against a device copy"
  timeout 300 "$java" -cp "$jar" dev.optsidecar.server.engine.cuda.DeviceCheck 0 "$sizes" 2>&1 | tee -a "$report"
  [ "${PIPESTATUS[0]}" -eq 0 ] || failed=1

  say "## conformance with --engine cuda"
  if [ -d "$dir/reference" ]; then
    "$java" -jar "$jar" --engine cuda --port 0 > "$work/server.log" 2>&1 &
    local server=$!
    local port=""
    for _ in $(seq 1 120); do
      port=$(sed -nE 's/.*serving on 127\.0\.0\.1:([0-9]+).*/\1/p' "$work/server.log" | head -1)
      [ -n "$port" ] && break
      kill -0 "$server" 2>/dev/null || break
      sleep 0.5
    done
    if [ -n "$port" ]; then
      grep -E "engine" "$work/server.log" | tee -a "$report"
      timeout 300 "$java" -jar "$jar" conformance "$dir/reference" --target "127.0.0.1:$port" 2>&1 | tail -40 | tee -a "$report"
      [ "${PIPESTATUS[0]}" -eq 0 ] || failed=1
    else
      say "FAIL the server did not start with --engine cuda:"; tee -a "$report" < "$work/server.log"; failed=1
    fi
    kill "$server" 2>/dev/null; wait "$server" 2>/dev/null
  else
    say "SKIP no reference vectors in $dir/reference"
  fi

  say "## torch on the same GPU: AdamW(fused=True) and RAdam"
  timeout 240 python3 "$dir/torch_bench.py" "$sizes" 2>&1 | tee -a "$report"

  # The Python client, its wheels unpacked beside it (a wheel is a zip), and java on the PATH for
  # the tests' and the bench's servers.
  local site="$work/site"
  mkdir -p "$site"
  for wheel in "$dir"/wheels/*.whl; do
    [ -f "$wheel" ] && python3 -m zipfile -e "$wheel" "$site"
  done
  export PYTHONPATH="$dir/python:$site${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$work/java/bin:$PATH" OPTSIDECAR_SERVER_JAR="$jar"
  say "## the Python client on this machine's python3"
  if python3 -c "import sys, grpc, google.protobuf, numpy, torch; import optsidecar.v1.optimizer_pb2, optsidecar
print('python', sys.version.split()[0], 'torch', torch.__version__, 'grpcio', grpc.__version__, 'protobuf', google.protobuf.__version__)" 2>&1 | tee -a "$report" \
      && [ "${PIPESTATUS[0]}" -eq 0 ]; then
    say "## the Python client's CUDA tests against a server on --engine cuda"
    (cd "$dir/python" && timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_params.py tests/test_cuda_ipc.py 2>&1) \
      | tail -40 | tee -a "$report"
    [ "${PIPESTATUS[0]}" -eq 0 ] || failed=1
    say "## the step a torch trainer on the same GPU sees through CUDA IPC"
    timeout 150 python3 "$dir/ipc_bench.py" "$jar" "$ipc_sizes" 2>&1 | tee -a "$report"
    [ "${PIPESTATUS[0]}" -eq 0 ] || failed=1
  else
    say "FAIL the Python client does not import here (above: the missing module, or a protobuf runtime older"
    say "     than the generated stubs need); its CUDA tests and the CUDA IPC bench did not run"
    failed=1
  fi

  say "## result: $([ "$failed" -eq 0 ] && echo all passed || echo FAILED)"
  if [ -n "${OUT:-}" ]; then cp "$report" "$OUT/report.txt"; fi
  rm -rf "$work"
  return "$failed"
}

case "$mode" in
  prepare) prepare ;;
  run) run ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
