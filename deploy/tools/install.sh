#!/usr/bin/env bash
# Installs the tools that check deploy/ into deploy/.tools, pinned: helm (built from the Go module
# proxy) and kubernetes-validate with its schemas (from PyPI). Does nothing for a tool already there
# at its version. Needs Go and Debian's python3 with pip.
set -euo pipefail
cd "$(dirname "$0")/.."
HELM_VERSION=v4.3.2
tools="$PWD/.tools"
mkdir -p "$tools/bin"

go=$(command -v go || echo /usr/local/go/bin/go)
if [ -z "${HOME:-}" ]; then  # go keeps its module and build caches under $HOME
  export GOPATH="$tools/go" GOCACHE="$tools/go-build"
fi
if ! "$go" version -m "$tools/bin/helm" 2>/dev/null | grep -qE "^\s+mod\s+helm.sh/helm/v4\s+${HELM_VERSION}\s"; then
  GOBIN="$tools/bin" GOFLAGS=-buildvcs=false "$go" install "helm.sh/helm/v4/cmd/helm@${HELM_VERSION}"
fi

if ! PYTHONPATH="$tools/python" /usr/bin/python3 -c \
    'import importlib.metadata as m, sys; sys.exit(m.version("kubernetes-validate") != "1.37.0")' 2>/dev/null; then
  rm -rf "$tools/python"
  /usr/bin/python3 -m pip install --quiet --no-deps --target "$tools/python" -r tools/requirements.txt
fi
