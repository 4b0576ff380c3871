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


def test_16_bit_wire_types_without_torch(target, tmp_path):
    """numpy alone rounds the gradients and widens the weights; torch, in this process, checks them."""
    import numpy as np
    import torch

    out = tmp_path / "weights.npz"
    run = run_without_torch(
        "import uuid\n"
        "import numpy as np\n"
        "import optsidecar\n"
        "from optsidecar.spec import model_spec, optimizer_config\n"
        f"client = optsidecar.Client({target!r})\n"
        "rng = np.random.default_rng(7)\n"
        "w0, grad = rng.standard_normal(70_000).astype(np.float32), rng.standard_normal(70_000).astype(np.float32)\n"
        "got = {}\n"
        "for wire in ('bfloat16', 'float16'):\n"
        "    name = f'no-torch-{wire}-{uuid.uuid4().hex[:6]}'\n"
        "    client.register(model_spec(name, [('w', (70_000,))], [], optimizer_config('SGD', {'lr': 0.5})), [w0])\n"
        "    stepped = np.zeros(70_000, np.float32)\n"
        "    with client.step_stream(name, wire_dtype=wire) as stream:\n"
        "        stream.step([grad], [stepped])\n"
        "    master = np.zeros(70_000, np.float32)\n"
        "    client.pull(name, 'train', [master])\n"
        "    pulled = np.zeros(70_000, np.float32)\n"
        "    client.pull(name, 'train', [pulled], wire_dtype=wire)\n"
        "    got.update({wire + '_stepped': stepped, wire + '_master': master, wire + '_pulled': pulled})\n"
        "    client.delete(name)\n"
        "got.update(w0=w0, grad=grad)\n"
        f"np.savez({str(out)!r}, **got)\n"
        "assert 'torch' not in {m for m in sys.modules if sys.modules[m] is not None}\n")
    assert run.returncode == 0, run.stderr
    got = np.load(out)
    w0, grad = torch.from_numpy(got["w0"]), torch.from_numpy(got["grad"])
    for wire, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        master = w0 - torch.tensor(0.5) * grad.to(dtype).float()
        assert torch.equal(torch.from_numpy(got[wire + "_master"]), master), wire
        for received in ("stepped", "pulled"):
            assert torch.equal(torch.from_numpy(got[f"{wire}_{received}"]), master.to(dtype).float()), (wire, received)
