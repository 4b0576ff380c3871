#!/bin/sh
# Regenerates the Python gRPC stubs from ../proto into optsidecar/v1/ (or into DIR, for checks):
#
#   ./generate_stubs.sh [DIR]
#
# Uses protoc and grpc_python_plugin from PATH (Debian: protobuf-compiler, protobuf-compiler-grpc,
# libprotobuf-dev for google/protobuf/struct.proto). The proto root is the import root, so the
# modules land at optsidecar/v1/optimizer_pb2*.py and import each other as
# `from optsidecar.v1 import optimizer_pb2`: no rewriting needed.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
proto_root=$(cd "$here/../proto" && pwd)
out=${1:-$here}

protoc=$(command -v protoc) || { echo "generate_stubs.sh: protoc not on PATH" >&2; exit 2; }
plugin=$(command -v grpc_python_plugin) || { echo "generate_stubs.sh: grpc_python_plugin not on PATH" >&2; exit 2; }

# protoc needs google/protobuf/struct.proto: PROTOC_INCLUDE, else the usual system folders, else
# the copy the Maven build of ../proto extracts.
include=${PROTOC_INCLUDE:-}
if [ -z "$include" ]; then
    for candidate in /usr/include /usr/local/include "$proto_root"/target/protoc-dependencies/*; do
        if [ -f "$candidate/google/protobuf/struct.proto" ]; then
            include=$candidate
            break
        fi
    done
fi
if [ -z "$include" ]; then
    echo "generate_stubs.sh: google/protobuf/struct.proto not found; install libprotobuf-dev or set PROTOC_INCLUDE" >&2
    exit 2
fi

mkdir -p "$out"
cd "$proto_root"
"$protoc" -I . -I "$include" \
    --python_out="$out" \
    --grpc_python_out="$out" \
    --plugin=protoc-gen-grpc_python="$plugin" \
    optsidecar/v1/*.proto
