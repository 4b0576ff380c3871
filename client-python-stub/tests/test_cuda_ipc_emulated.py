"""RemoteOptimizer over CUDA IPC, end to end on a CPU: the server runs its cuda engine over the
emulation of the device (``server/src/test/cuda/emulated_runtime.cpp``, compiled here), whose IPC
handles may name a file in /dev/shm that stands for the trainer's device memory, and the trainer's
"device buffer" is that file's shared mapping. So everything but the GPU itself runs: the
transport's choice and probe, parameters and gradients bound to the buffer, gradients read and
weights written by the server in the trainer's memory, zero_grad, edits pushed, eval and train
views, all bit for bit against the same run over chunks."""

from __future__ import annotations

import mmap
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

import optsidecar.optimizer as optimizer_module
from conftest import REPO_ROOT, ServerProcess
from optsidecar import RemoteOptimizer
from optsidecar.cuda_ipc import DeviceSegment, layout

SHAPES = [(600, 500), (500,), (1,)]
STEPS = 3
HYPERPARAMETERS = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
#: The emulation's marker of a handle naming a file (emulated_runtime.cpp, IPC_FILE_MARKER).
FILE_MARKER = b"osc-emulated-fi\0"


def _java_home() -> Path:
    java = shutil.which("java")
    if java is None:
        pytest.skip("no java")
    return Path(os.path.realpath(java)).parents[1]


@pytest.fixture(scope="module")
def emulated_cuda_server(tmp_path_factory):
    include = _java_home() / "include"
    if shutil.which("g++") is None or not (include / "jni.h").is_file():
        pytest.skip("needs g++ and the JDK's JNI headers to build the device emulation")
    library = tmp_path_factory.mktemp("emulation") / "liboptsidecar_cuda_emulated.so"
    cuda = REPO_ROOT / "server" / "src" / "main" / "cuda"
    subprocess.run(["g++", "-O2", "-std=c++17", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC",
                    f"-I{include}", f"-I{include / 'linux'}", f"-I{cuda}",
                    str(REPO_ROOT / "server" / "src" / "test" / "cuda" / "emulated_runtime.cpp"), "-o", str(library)],
                   check=True, capture_output=True)
    previous = os.environ.get("JAVA_TOOL_OPTIONS")
    os.environ["JAVA_TOOL_OPTIONS"] = f"-Doptsidecar.cuda.library={library}"
    try:
        # --shm-dir gives the server its doorbell: CUDA IPC steps commit over it.
        server = ServerProcess(args=["--engine", "cuda", "--shm-dir", str(tmp_path_factory.mktemp("shm"))])
    finally:
        if previous is None:
            del os.environ["JAVA_TOOL_OPTIONS"]
        else:
            os.environ["JAVA_TOOL_OPTIONS"] = previous
    yield server
    server.stop()


class FileBackedSegment(DeviceSegment):
    """A DeviceSegment whose "device memory" is a file's shared mapping, exported as the emulation's
    file handle."""

    def __init__(self, device, numels):  # pylint: disable=super-init-not-called
        self.numels = [int(n) for n in numels]
        self.weights_offsets, self.gradient_offsets, self.params_bytes, self.size = layout(self.numels)
        self.device = torch.device("cpu")
        # A short path: the emulation's handle holds at most 47 bytes of it.
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        self.path = os.path.join(directory, f"osc-test-{secrets.token_hex(8)}")
        assert len(self.path.encode()) < 48, self.path
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, self.size)
            self.mapping = mmap.mmap(fd, self.size)
        finally:
            os.close(fd)
        self.buffer = torch.frombuffer(self.mapping, dtype=torch.float32)
        self.handle = FILE_MARKER + self.path.encode().ljust(48, b"\0")
        self.offset = 0
        segments.append(self)

    def synchronize(self) -> None:
        pass


segments = []


@pytest.fixture
def emulated_ipc(monkeypatch):
    """RemoteOptimizer taking CPU parameters for the emulated GPU's: same GPU when the engine is cuda."""
    monkeypatch.setattr(optimizer_module, "DeviceSegment", FileBackedSegment)
    monkeypatch.setattr(optimizer_module, "unavailable_reason",
                        lambda params, engine, uuid: None if engine == "cuda" and uuid else f"engine {engine}")
    yield
    while segments:
        os.unlink(segments.pop().path)


def initial():
    g = torch.Generator().manual_seed(7)
    return [torch.nn.Parameter(torch.randn(*shape, generator=g)) for shape in SHAPES]


def put_gradients(params, t):
    for i, p in enumerate(params):
        g = torch.randn(*SHAPES[i], generator=torch.Generator().manual_seed(100 * t + i))
        if p.grad is None:
            p.grad = g
        else:
            p.grad.copy_(g)


def test_steps_edits_and_views_over_cuda_ipc_match_chunks(emulated_cuda_server, emulated_ipc):
    runs = []
    for transport in ("cuda-ipc", "grpc"):
        params = initial()
        opt = RemoteOptimizer(params, target=emulated_cuda_server.target, algorithm="AdamW", transport=transport,
                              **HYPERPARAMETERS)
        runs.append((params, opt))
    (ipc_params, ipc), (chunk_params, chunks) = runs
    try:
        assert ipc.transport == "cuda-ipc"
        buffer = ipc._device_segment.buffer
        start, end = buffer.data_ptr(), buffer.data_ptr() + 4 * buffer.numel()
        for t in range(STEPS):
            for params, opt in runs:
                opt.zero_grad()
                put_gradients(params, t)
                opt.step()
                if t == 0:
                    params[0].data.mul_(0.5)  # through .data: only the content check sees it
            assert all(start <= p.data_ptr() < end and start <= p.grad.data_ptr() < end for p in ipc_params)
            assert ipc.doorbell and not chunks.doorbell
            assert ipc.last_result.grad_norm == chunks.last_result.grad_norm, f"norm of step {t}"
            for i, (p, q) in enumerate(zip(ipc_params, chunk_params)):
                assert torch.equal(p, q), f"tensor {i} after step {t}"
        # The server reported the sums of what it wrote: they are the record the edit check compares
        # with (a mismatch would push every tensor before every step).
        assert len(ipc.last_result.weights_device_sums) == 2 * len(SHAPES)
        assert ipc.last_push is not None and ipc.last_push.tensors == ("p0",)
        assert ipc.version == chunks.version == STEPS + 1
        # A tensor without a gradient this step is skipped, as torch skips a None .grad.
        for params, opt in runs:
            opt.zero_grad()
            put_gradients(params, STEPS)
            params[1].grad = None
            opt.step()
        for i, (p, q) in enumerate(zip(ipc_params, chunk_params)):
            assert torch.equal(p, q), f"tensor {i} after a step without its gradient"
    finally:
        ipc.delete()
        chunks.delete()


def test_schedule_free_eval_and_train_views_reach_the_mapped_parameters(emulated_cuda_server, emulated_ipc):
    runs = []
    for transport in ("cuda-ipc", "grpc"):
        params = initial()
        opt = RemoteOptimizer(params, target=emulated_cuda_server.target, algorithm="AdamWScheduleFree", lr=1e-2,
                              warmup_steps=2, transport=transport)
        runs.append((params, opt))
    try:
        assert runs[0][1].transport == "cuda-ipc"
        for t in range(STEPS):
            for params, opt in runs:
                opt.train()
                opt.zero_grad()
                put_gradients(params, t)
                opt.step()
                opt.eval()
            for i, (p, q) in enumerate(zip(runs[0][0], runs[1][0])):
                assert torch.equal(p, q), f"eval point of tensor {i} after step {t}"
    finally:
        for _, opt in runs:
            opt.delete()


def test_a_handle_the_server_cannot_map_falls_back_under_auto(emulated_cuda_server, emulated_ipc, monkeypatch):
    class Unmappable(FileBackedSegment):
        def __init__(self, device, numels):
            super().__init__(device, numels)
            self.handle = FILE_MARKER + (self.path + "-missing").encode().ljust(48, b"\0")

    monkeypatch.setattr(optimizer_module, "DeviceSegment", Unmappable)
    params = initial()
    before = [p.detach().clone() for p in params]
    opt = RemoteOptimizer(params, target=emulated_cuda_server.target, algorithm="AdamW", **HYPERPARAMETERS)
    try:
        assert opt.transport in ("shm", "grpc")
        assert all(torch.equal(p, b) for p, b in zip(params, before))  # left where they were
        put_gradients(params, 0)
        opt.step()
        assert opt.version == 1
    finally:
        opt.delete()


def test_a_param_group_added_moves_every_parameter_into_a_new_buffer(emulated_cuda_server, emulated_ipc):
    runs = []
    for transport in ("cuda-ipc", "grpc"):
        params = initial()
        opt = RemoteOptimizer(params[:2], target=emulated_cuda_server.target, algorithm="AdamW", transport=transport,
                              **HYPERPARAMETERS)
        runs.append((params, opt))
    try:
        for t in range(2):
            for params, opt in runs:
                if t == 1:
                    opt.add_param_group({"params": [params[2]], "weight_decay": 0.0})
                opt.zero_grad()
                put_gradients(params, t)  # the third parameter's gradient counts once it is in a group
                opt.step()
        (ipc_params, ipc), (chunk_params, _) = runs
        assert ipc.transport == "cuda-ipc" and len(ipc._device_segment.numels) == 3
        buffer = ipc._device_segment.buffer
        assert all(buffer.data_ptr() <= p.data_ptr() < buffer.data_ptr() + 4 * buffer.numel() for p in ipc_params)
        for i, (p, q) in enumerate(zip(ipc_params, chunk_params)):
            assert torch.equal(p, q), f"tensor {i}"
        assert ipc.last_push is None
    finally:
        for _, opt in runs:
            opt.delete()
