#!/usr/bin/env bash
# The CUDA engine's device check, in two halves:
#
#   device-check.sh prepare [DIR]   on the build machine, after `mvn package` made the server jar
#                                   with its CUDA library: puts into DIR (default: device-check/ at
#                                   the repository root, git-ignored) the jar, a jlink Java runtime
#                                   (the GPU machines have no Java), the reference vectors and the
#                                   torch bench. About 45 MB.
#   device-check.sh run [DIR]       on a GPU machine (no Java or network needed): the engine's
#                                   self-test, every kernel against the CPU engine bit for bit,
#                                   determinism, the fused step against a device copy, the
#                                   conformance run against a server started with --engine cuda,
#                                   and torch's fused AdamW and RAdam on the same GPU. Writes
#                                   DIR/report.txt (and $OUT/report.txt when $OUT is set); exit 0
#                                   when every check passed.
#
# SIZES (default 10000000,100000000,1000000000) sets the bench's element counts.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
mode=${1:-}
dir=${2:-$root/device-check}
sizes=${SIZES:-10000000,100000000,1000000000}

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
  cp "$here/device-check.sh" "$here/torch_bench.py" "$dir/"
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
