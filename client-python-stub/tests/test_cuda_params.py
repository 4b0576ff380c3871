"""CUDA parameters on a server on the cuda engine, over every transport: gRPC chunks (float32,
bfloat16, float16), a Unix socket, shared memory (staged through the page-locked segment) and CUDA
IPC (the server reads the gradients and writes the weights in the trainer's device memory). Each
run's weights equal bit for bit those of the same run with CPU parameters over chunks (the same
gradients, the same server), which stay within the reference tolerance of torch's AdamW; an edit
through ``p.data`` on the device is noticed and pushed. Needs a GPU: skipped without one (the
device check runs these)."""

from __future__ import annotations

from typing import Dict, List

import pytest
import torch

from conftest import ServerProcess
from helpers import assert_moved, assert_within_tolerance
from optsidecar import RemoteOptimizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the device check runs it)")

#: A tensor of more than one 1 MiB piece, a small one and a scalar-like one.
SHAPES = [(600, 500), (500,), (1,)]
STEPS = 3
HYPERPARAMETERS = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)


@pytest.fixture(scope="module")
def cuda_server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cuda")
    socket_path = directory / "optsidecar.sock"
    server = ServerProcess(args=["--engine", "cuda", "--shm-dir", str(directory), "--listen", f"unix:{socket_path}"])
    server.unix_target = f"unix://{socket_path}"
    yield server
    server.stop()


def initial(device: str) -> List[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(7)
    return [torch.nn.Parameter(torch.randn(*shape, generator=g).to(device)) for shape in SHAPES]


def gradient(t: int, index: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 * t + index)
    return torch.randn(*SHAPES[index], generator=g)


def put_gradients(params: List[torch.nn.Parameter], t: int) -> None:
    """As backward leaves them: into an existing ``.grad`` in place, else a new tensor."""
    for i, p in enumerate(params):
        g = gradient(t, i).to(p.device)
        if p.grad is None:
            p.grad = g
        else:
            p.grad.copy_(g)


def train(params: List[torch.nn.Parameter], target: str, edit_at: int = -1, **options) -> RemoteOptimizer:
    opt = RemoteOptimizer(params, target=target, algorithm="AdamW", **HYPERPARAMETERS, **options)
    for t in range(STEPS):
        opt.zero_grad()
        put_gradients(params, t)
        opt.step()
        if t == edit_at:
            params[0].data.mul_(0.5)  # bypasses the version counter: only the content check sees it
    return opt


CASES: Dict[str, Dict] = {
    "grpc": dict(transport="grpc"),
    "grpc-bfloat16": dict(transport="grpc", wire_dtype="bfloat16"),
    "grpc-float16": dict(transport="grpc", wire_dtype="float16"),
    "uds": dict(transport="grpc"),
    "shm": dict(transport="shm"),
    "cuda-ipc": dict(transport="cuda-ipc"),
    "auto": dict(),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cuda_parameters_match_cpu_parameters_bit_for_bit(cuda_server, case):
    options = CASES[case]
    target = cuda_server.unix_target if case == "uds" else cuda_server.target
    on_device = initial("cuda")
    opt = train(on_device, target, **options)
    twin = initial("cpu")
    reference = train(twin, cuda_server.target, transport="grpc", wire_dtype=options.get("wire_dtype", "float32"))
    try:
        expected_transport = {"auto": "cuda-ipc", "uds": "grpc", "grpc-bfloat16": "grpc",
                              "grpc-float16": "grpc"}.get(case, case)
        assert opt.transport == expected_transport
        assert all(p.is_cuda for p in on_device)
        for i, (p, q) in enumerate(zip(on_device, twin)):
            assert torch.equal(p.detach().cpu(), q.detach()), f"{case}: tensor {i} differs from the CPU run's"
        assert opt.version == reference.version == STEPS
        assert opt.last_result.grad_norm == reference.last_result.grad_norm
        if "wire_dtype" not in options:
            local = initial("cpu")
            torch_opt = torch.optim.AdamW(local, foreach=False, **HYPERPARAMETERS)
            for t in range(STEPS):
                torch_opt.zero_grad()
                put_gradients(local, t)
                torch_opt.step()
            assert_moved(initial("cpu"), [p.detach().cpu() for p in on_device])
            assert_within_tolerance([p.detach().cpu() for p in on_device], local, f"{case} against torch's AdamW")
    finally:
        opt.delete()
        reference.delete()


def test_cuda_ipc_parameters_live_in_the_mapped_buffer(cuda_server):
    params = initial("cuda")
    opt = RemoteOptimizer(params, target=cuda_server.target, algorithm="AdamW", **HYPERPARAMETERS)
    try:
        assert opt.transport == "cuda-ipc"
        info = opt.client.server_info()
        assert info.device_uuid.replace("GPU-", "").lower() == \
            str(torch.cuda.get_device_properties(params[0].device).uuid).replace("GPU-", "").lower()
        buffer = opt._device_segment.buffer
        start, end = buffer.data_ptr(), buffer.data_ptr() + 4 * buffer.numel()
        opt.zero_grad()
        for p in params:
            assert start <= p.data_ptr() < end and start <= p.grad.data_ptr() < end
        put_gradients(params, 0)
        opt.step()
        assert opt.last_result.weights_version == 1
    finally:
        opt.delete()


@pytest.mark.parametrize("transport", ["cuda-ipc", "grpc", "shm"])
def test_an_edit_through_p_data_on_the_device_is_pushed(cuda_server, transport):
    on_device = initial("cuda")
    opt = train(on_device, cuda_server.target, edit_at=0, transport=transport)
    twin = initial("cpu")
    reference = train(twin, cuda_server.target, edit_at=0, transport="grpc")
    try:
        assert opt.last_push is not None and opt.last_push.tensors == ("p0",) == reference.last_push.tensors
        for i, (p, q) in enumerate(zip(on_device, twin)):
            assert torch.equal(p.detach().cpu(), q.detach()), f"{transport}: tensor {i} after the edit"
    finally:
        opt.delete()
        reference.delete()


@pytest.mark.parametrize("transport", ["cuda-ipc", "shm", "grpc"])
def test_eval_and_train_views_reach_cuda_parameters(cuda_server, transport):
    """Schedule-Free's eval point pulled into CUDA parameters and the train view back, between steps."""
    runs = []
    for device, options in (("cuda", dict(transport=transport)), ("cpu", dict(transport="grpc"))):
        params = initial(device)
        opt = RemoteOptimizer(params, target=cuda_server.target, algorithm="AdamWScheduleFree", lr=1e-2,
                              warmup_steps=2, **options)
        runs.append((params, opt))
    try:
        assert runs[0][1].transport == transport
        for t in range(STEPS):
            for params, opt in runs:
                opt.train()
                opt.zero_grad()
                put_gradients(params, t)
                opt.step()
                opt.eval()
            (on_device, _), (twin, _) = runs
            for i, (p, q) in enumerate(zip(on_device, twin)):
                assert torch.equal(p.detach().cpu(), q.detach()), f"{transport}: eval point of tensor {i}, step {t}"
    finally:
        for _, opt in runs:
            opt.delete()
