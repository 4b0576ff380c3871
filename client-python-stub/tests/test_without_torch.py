"""The package without torch: the Client works, RemoteOptimizer says how to get torch."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from conftest import PACKAGE_ROOT, subprocess_env

# torch made unimportable for the child, as on a machine without it.
HIDE_TORCH = "import sys; sys.modules['torch'] = None\n"


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE_TORCH + code], env=subprocess_env(), capture_output=True,
                          text=True, timeout=60)


def test_the_client_works_without_torch(target):
    run = run_without_torch(
        "import numpy as np\n"
        "import optsidecar\n"
        f"client = optsidecar.Client({target!r})\n"
        "print(type(client.list()).__name__)\n"
        "assert 'torch' not in {m for m in sys.modules if sys.modules[m] is not None}\n")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "list"


def test_remote_optimizer_without_torch_says_to_install_the_torch_extra():
    for code in ["import optsidecar\noptsidecar.RemoteOptimizer",
                 "from optsidecar import RemoteOptimizer",
                 "from optsidecar import recalibrate_batchnorm",
                 "import optsidecar.optimizer"]:
        run = run_without_torch(code)
        assert run.returncode == 1, code
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith("ImportError: ") and "pip install optsidecar[torch]" in last, f"{code}: {last}"


def test_the_torch_extra_is_declared():
    project = tomllib.loads((PACKAGE_ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("torch") for d in project["dependencies"])
    assert any(d.startswith("torch") for d in project["optional-dependencies"]["torch"])
