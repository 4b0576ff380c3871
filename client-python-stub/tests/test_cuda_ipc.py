"""CUDA IPC's client logic that needs no GPU: the device buffer's layout, which transport a
trainer gets and why, the server refusing device buffers on the CPU engine (over a real stream),
and the device fingerprint the edit check uses for CUDA parameters (here on CPU tensors: the same
torch operations). Steps on a GPU are in test_cuda_params.py."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

from conftest import ServerProcess
from helpers import make_mlp
from optsidecar import Client, RemoteOptimizer
from optsidecar.client import StepStream
from optsidecar.cuda_ipc import (ALIGNMENT, ipc_mem_handle, layout, message, normalized_uuid, probe,
                                 unavailable_reason)
from optsidecar.device_staging import device_fingerprints
from optsidecar.errors import FailedPrecondition
from optsidecar.v1 import optimizer_pb2 as pb

SERVER_GPU = "0e0e0e0e-0000-4000-8000-000000000001"


@pytest.fixture(scope="module")
def cpu_server():
    """A server on the CPU engine even on a machine with a GPU (where auto would pick cuda)."""
    server = ServerProcess(args=["--engine", "cpu"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def target(cpu_server) -> str:
    return cpu_server.target


@pytest.fixture(scope="module")
def client(target):
    with Client(target) as c:
        yield c


def test_layout_puts_every_parameter_then_every_gradient_each_aligned():
    numels = [300_000, 500, 1, 64]
    weights, gradients, params_bytes, size = layout(numels)
    regions = [(w, 4 * n) for w, n in zip(weights, numels)] + [(params_bytes + g, 4 * n) for g, n in zip(gradients, numels)]
    assert all(start % ALIGNMENT == 0 for start, _ in regions)
    assert weights[0] == 0 and gradients[0] == 0
    for (start, length), (after, _) in zip(regions, regions[1:]):
        assert start + length <= after, "regions overlap or are out of order"
    assert weights[-1] + 4 * numels[-1] <= params_bytes
    assert params_bytes + gradients[-1] + 4 * numels[-1] <= size
    # The message names one allocation twice, the gradient buffer starting after the parameters.
    m = message(b"h" * 64, 512, numels, weights, gradients, params_bytes, size)
    assert m.params_handle == m.gradients_handle == b"h" * 64
    assert (m.params_offset, m.params_bytes) == (512, params_bytes)
    assert (m.gradients_offset, m.gradients_bytes) == (512 + params_bytes, size - params_bytes)
    assert list(m.weights_offsets) == weights and list(m.gradient_offsets) == gradients


def test_the_handle_is_found_in_either_form_torch_exports():
    handle = bytes(range(64))
    assert ipc_mem_handle(handle) == handle  # the handle alone
    assert ipc_mem_handle(b"\x01c" + handle) == handle  # a version and kind byte before it: a cudaMalloc block
    with pytest.raises(ValueError, match="expandable segment"):
        ipc_mem_handle(b"\x01e" + bytes(40))
    with pytest.raises(ValueError, match="of 10 bytes"):
        ipc_mem_handle(bytes(10))


class _Parameter(NamedTuple):
    """What the transport choice looks at: a parameter's device and dtype (no GPU needed)."""

    device: torch.device
    dtype: torch.dtype


def _cuda(index: int = 0, dtype: torch.dtype = torch.float32) -> _Parameter:
    return _Parameter(torch.device("cuda", index), dtype)


def test_cuda_ipc_is_chosen_only_for_cuda_float32_parameters_on_the_servers_very_gpu():
    same_gpu = lambda device: SERVER_GPU  # noqa: E731
    assert unavailable_reason([_cuda(), _cuda()], "cuda", SERVER_GPU, same_gpu) is None
    # nvidia-smi's spelling of the same UUID is the same GPU.
    assert unavailable_reason([_cuda()], "cuda", "GPU-" + SERVER_GPU.upper(), same_gpu) is None
    assert "the server on GPU" in unavailable_reason([_cuda()], "cuda", SERVER_GPU, lambda d: "another-gpu")
    assert "CUDA float32" in unavailable_reason([_cuda(), torch.zeros(2)], "cuda", SERVER_GPU, same_gpu)
    assert "CUDA float32" in unavailable_reason([_cuda(dtype=torch.float16)], "cuda", SERVER_GPU, same_gpu)
    assert "on 2 GPUs" in unavailable_reason([_cuda(0), _cuda(1)], "cuda", SERVER_GPU, same_gpu)
    assert "engine is cpu" in unavailable_reason([_cuda()], "cpu", "", same_gpu)
    assert "does not report its GPU's UUID" in unavailable_reason([_cuda()], "cuda", "", same_gpu)
    assert normalized_uuid("GPU-AbC") == "abc"


def test_the_cpu_servers_info_has_no_gpu_uuid(client):
    info = client.server_info()
    assert info.engine == "cpu"
    assert info.device_uuid == ""


def test_cuda_ipc_asked_for_cpu_parameters_is_refused_and_auto_falls_back(target):
    model = make_mlp()
    with pytest.raises(FailedPrecondition, match="transport='cuda-ipc' .*CUDA IPC moves CUDA float32 parameters") as e:
        RemoteOptimizer(model.parameters(), 0.1, target=target, algorithm="SGD", transport="cuda-ipc")
    assert e.value.reason == "CUDA_IPC_UNAVAILABLE"
    opt = RemoteOptimizer(model.parameters(), 0.1, target=target, algorithm="SGD")
    try:
        assert opt.transport in ("shm", "grpc")
    finally:
        opt.delete()


class _HostBuffers:
    """Stands in for a DeviceSegment on a CPU: regions in host memory, a handle the server cannot open."""

    def __init__(self, numels):
        self.numels = numels
        self.weights_offsets, self.gradient_offsets, self.params_bytes, self.size = layout(numels)
        self.memory = torch.zeros(self.size // 4)

    def weights_tensor(self, i):
        return self.memory.narrow(0, self.weights_offsets[i] // 4, self.numels[i])

    def gradient_tensor(self, i):
        return self.memory.narrow(0, (self.params_bytes + self.gradient_offsets[i]) // 4, self.numels[i])

    def synchronize(self):
        pass

    def message(self):
        return message(bytes(64), 0, self.numels, self.weights_offsets, self.gradient_offsets, self.params_bytes,
                       self.size)


def test_the_cpu_engine_refuses_device_buffers_and_the_model_is_unchanged(client):
    model = make_mlp()
    opt = RemoteOptimizer(model.parameters(), 0.1, client=client, algorithm="SGD", transport="grpc")
    try:
        numels = [p.numel() for p in model.parameters()]
        stream = StepStream(client, opt.model, "device-trainer", numels, retry_for=0)
        stream.device_segment = _HostBuffers(numels)
        with pytest.raises(FailedPrecondition, match="open.cuda_ipc: the server's engine is cpu") as e:
            stream.step([torch.ones(n) for n in numels], [torch.zeros(n) for n in numels])
        assert e.value.reason == "CUDA_IPC_UNAVAILABLE"
        stream.close()
        assert client.describe(opt.model).version == 0
    finally:
        opt.delete()


def test_the_probe_reports_why_the_server_cannot_map_the_buffers(client):
    model = make_mlp()
    opt = RemoteOptimizer(model.parameters(), 0.1, client=client, algorithm="SGD", transport="grpc")
    try:
        numels = [p.numel() for p in model.parameters()]
        assert "the server's engine is cpu" in probe(client, opt.model, _HostBuffers(numels))
        assert client.describe(opt.model).version == 0
    finally:
        opt.delete()


def test_device_fingerprints_see_a_changed_value_and_a_swap_across_even_and_odd_positions():
    values = torch.linspace(-1, 1, 1001)
    base = device_fingerprints([values])[0]
    assert device_fingerprints([values.clone()])[0] == base
    changed = values.clone()
    changed[500] = torch.nextafter(changed[500], torch.tensor(2.0))  # one bit of one value
    assert device_fingerprints([changed])[0] != base
    last = values.clone()
    last[-1] = 0.5  # the odd element out of the pairs
    assert device_fingerprints([last])[0] != base
    swapped = values.clone()
    swapped[[10, 11]] = swapped[[11, 10]]
    assert device_fingerprints([swapped])[0] != base
    # Several parameters in one call: each its own.
    assert device_fingerprints([values, changed]) == [base, device_fingerprints([changed])[0]]
