"""The package builds a wheel and an sdist, each with the Apache-2.0 license and its metadata."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile

from conftest import PACKAGE_ROOT, REPO_ROOT


def test_the_wheel_and_the_sdist_carry_the_license(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(PACKAGE_ROOT, source, ignore=shutil.ignore_patterns(
        "tests", "examples", "build", "dist", "*.egg-info", "__pycache__"))
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})"],
                   cwd=source, check=True, capture_output=True)
    license_text = (REPO_ROOT / "LICENSE").read_text()
    assert license_text.startswith("Copyright 2026 The optsidecar authors\n")
    assert "Apache License\n" in license_text and "Version 2.0, January 2004" in license_text
    assert (PACKAGE_ROOT / "LICENSE").read_text() == license_text, "the package's copy of the top-level LICENSE"

    (wheel,) = out.glob("optsidecar-*.whl")
    with zipfile.ZipFile(wheel) as w:
        names = w.namelist()
        assert "optsidecar/security.py" in names and "optsidecar/v1/optimizer_pb2.py" in names
        info = next(n.rsplit("/", 1)[0] for n in names if n.endswith(".dist-info/METADATA"))
        # dist-info/LICENSE before core metadata 2.4, dist-info/licenses/LICENSE since (newer setuptools).
        (license_file,) = [n for n in names if n in (f"{info}/LICENSE", f"{info}/licenses/LICENSE")]
        assert w.read(license_file).decode() == license_text
        metadata = w.read(f"{info}/METADATA").decode()
    lines = metadata.splitlines()
    assert "License: Apache-2.0" in lines or "License-Expression: Apache-2.0" in lines, metadata[:600]
    assert "Classifier: License :: OSI Approved :: Apache Software License" in metadata.splitlines()

    (sdist,) = out.glob("optsidecar-*.tar.gz")
    with tarfile.open(sdist) as t:
        root = t.getnames()[0].split("/")[0]
        assert t.extractfile(f"{root}/LICENSE").read().decode() == license_text
        assert f"{root}/optsidecar/client.py" in t.getnames()
