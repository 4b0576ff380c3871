"""The committed gRPC stubs are exactly what generate_stubs.sh makes from the .proto files now."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import PACKAGE_ROOT

STUBS = ["optsidecar/v1/optimizer_pb2.py", "optsidecar/v1/optimizer_pb2_grpc.py"]


def test_committed_stubs_are_fresh(tmp_path):
    for tool in ("protoc", "grpc_python_plugin"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not on PATH (Debian: protobuf-compiler, protobuf-compiler-grpc)")
    run = subprocess.run(["sh", str(PACKAGE_ROOT / "generate_stubs.sh"), str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    for stub in STUBS:
        fresh = (tmp_path / stub).read_bytes()
        committed = (PACKAGE_ROOT / stub).read_bytes()
        assert fresh == committed, f"{stub} is out of date with proto/: run client-python-stub/generate_stubs.sh"
    generated = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.py"))
    assert generated == sorted(STUBS), "the .proto files now generate other modules; commit them"
