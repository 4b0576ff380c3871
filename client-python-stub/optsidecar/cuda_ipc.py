"""CUDA IPC between a trainer and a server on the cuda engine, on the same GPU: the server maps the
trainer's device memory (``StepOpen.cuda_ipc``), reads the gradients there and writes the updated
weights there, and nothing crosses the host but the control messages.

The client lays out every parameter and then every gradient in one CUDA allocation (each region at
a multiple of 256 bytes, as :func:`layout` computes), exports it with CUDA IPC (torch's
``UntypedStorage._share_cuda_()``: the allocation's ``cudaIpcMemHandle_t`` and the buffer's offset
in it) and binds each parameter's ``.data`` and ``.grad`` to views of its regions, as
:class:`~optsidecar.shared_params.SharedParameters` does with a shared-memory segment. Before each
commit it synchronises the device's current stream (backward must be done); the server
synchronises its own stream before it answers, so the weights are in place when ``step()``
returns.

Same GPU means the same physical device: the server reports its GPU's UUID (``ServerInfo``'s
``device_uuid``) and the client compares it with torch's ``get_device_properties(i).uuid``, never
device indexes (``CUDA_VISIBLE_DEVICES`` renumbers them per process).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

from .buffers import Destination
from .v1 import optimizer_pb2 as pb

#: Each region starts at a multiple of this many bytes (a float4 load needs 16; 256 keeps cache lines whole).
ALIGNMENT = 256


def _aligned(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def layout(numels: Sequence[int]) -> Tuple[List[int], List[int], int, int]:
    """Byte offsets of each tensor's parameters (from the allocation's start) and of its gradient
    (from the gradient buffer's start, which follows the parameters), the parameter buffer's bytes
    and the allocation's bytes."""
    weights, gradients = [], []
    at = 0
    for n in numels:
        weights.append(at)
        at = _aligned(at + 4 * int(n))
    params_bytes = at
    for n in numels:
        gradients.append(at - params_bytes)
        at = _aligned(at + 4 * int(n))
    return weights, gradients, params_bytes, max(at, ALIGNMENT)


#: Bytes of a ``cudaIpcMemHandle_t``.
HANDLE_BYTES = 64


def ipc_mem_handle(exported: bytes) -> bytes:
    """The ``cudaIpcMemHandle_t`` in what torch's ``_share_cuda_()`` returns: the handle itself
    (older torch), or a version byte, a kind byte (``c``: a cudaMalloc allocation) and the handle.
    An expandable segment (``e``, ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``) has no such
    handle: ValueError."""
    if len(exported) == HANDLE_BYTES:
        return exported
    if len(exported) == HANDLE_BYTES + 2 and exported[1:2] == b"c":
        return exported[2:]
    if len(exported) > 1 and exported[1:2] == b"e":
        raise ValueError("torch allocated the parameters in an expandable segment, which CUDA IPC cannot export "
                         "(unset expandable_segments in PYTORCH_CUDA_ALLOC_CONF to step through CUDA IPC)")
    raise ValueError(f"torch exported a CUDA IPC handle of {len(exported)} bytes in a form this client does not know")


def normalized_uuid(value: Any) -> str:
    """A GPU UUID as the server writes it: lowercase, without nvidia-smi's ``GPU-`` prefix."""
    text = str(value or "").strip().lower()
    return text[4:] if text.startswith("gpu-") else text


def local_uuid(device: Any) -> str:
    """The UUID of a CUDA device of this process, as torch reports it ('' when it does not)."""
    import torch

    return normalized_uuid(getattr(torch.cuda.get_device_properties(device), "uuid", ""))


def unavailable_reason(params: Sequence[Any], engine: str, server_uuid: str,
                       uuid_of: Callable[[Any], str] = local_uuid) -> Optional[str]:
    """Why these parameters cannot step through CUDA IPC with a server on ``engine`` whose GPU is
    ``server_uuid``; None when they can (CUDA float32 parameters on the server's very GPU)."""
    import torch

    if not params:
        return "there are no parameters"
    for p in params:
        if p.device.type != "cuda" or p.dtype != torch.float32:
            return f"a parameter is {p.dtype} on {p.device}; CUDA IPC moves CUDA float32 parameters"
    devices = {p.device for p in params}
    if len(devices) > 1:
        return f"the parameters are on {len(devices)} GPUs; CUDA IPC needs them on one"
    if engine != "cuda":
        return f"the server's engine is {engine or 'not reported'}; CUDA IPC needs a server on the cuda engine"
    if not server_uuid:
        return "the server does not report its GPU's UUID"
    mine = uuid_of(next(iter(devices)))
    if normalized_uuid(mine) != normalized_uuid(server_uuid):
        return f"the parameters are on GPU {mine or '(unknown UUID)'}, the server on GPU {server_uuid}"
    return None


class DeviceSegment:
    """One CUDA allocation on ``device`` holding tensors of ``numels`` elements: every parameter,
    then every gradient, float32 (see :func:`layout`), exported for the server to map. It has the
    shape of a shared-memory :class:`~optsidecar.shm.Segment` (``weights_tensor``,
    ``gradient_tensor``), so :class:`~optsidecar.shared_params.SharedParameters` binds parameters
    to it the same way."""

    def __init__(self, device: Any, numels: Sequence[int]):
        import torch

        self.numels = [int(n) for n in numels]
        self.weights_offsets, self.gradient_offsets, self.params_bytes, size = layout(self.numels)
        self.device = torch.device(device)
        self.buffer = torch.zeros(size // 4, dtype=torch.float32, device=self.device)
        # (device, handle, storage bytes, storage offset in the allocation, ...): torch's export.
        shared = self.buffer.untyped_storage()._share_cuda_()
        self.handle: bytes = ipc_mem_handle(bytes(shared[1]))
        self.offset: int = int(shared[3])
        self.size = size

    def weights_tensor(self, index: int) -> Any:
        """Tensor ``index``'s parameter region as a flat float32 tensor on the device."""
        return self.buffer.narrow(0, self.weights_offsets[index] // 4, self.numels[index])

    def gradient_tensor(self, index: int) -> Any:
        """Tensor ``index``'s gradient region as a flat float32 tensor on the device."""
        return self.buffer.narrow(0, (self.params_bytes + self.gradient_offsets[index]) // 4, self.numels[index])

    def synchronize(self) -> None:
        """Waits for the work queued on the device's current stream (backward, copies into the regions)."""
        import torch

        torch.cuda.current_stream(self.device).synchronize()

    def message(self) -> pb.CudaIpcBuffers:
        """The buffers as ``StepOpen.cuda_ipc``: both in the one allocation, at their offsets."""
        return message(self.handle, self.offset, self.numels, self.weights_offsets, self.gradient_offsets,
                       self.params_bytes, self.size)


def message(handle: bytes, offset: int, numels: Sequence[int], weights_offsets: Sequence[int],
            gradient_offsets: Sequence[int], params_bytes: int, size: int) -> pb.CudaIpcBuffers:
    """``StepOpen.cuda_ipc`` for one allocation (``handle``) whose buffer starts ``offset`` bytes in
    and holds ``size`` bytes laid out as :func:`layout` says."""
    return pb.CudaIpcBuffers(params_handle=handle, params_offset=offset, params_bytes=params_bytes,
                             weights_offsets=list(weights_offsets), gradients_handle=handle,
                             gradients_offset=offset + params_bytes, gradients_bytes=size - params_bytes,
                             gradient_offsets=list(gradient_offsets))


def probe(client: Any, model: str, buffers: Any) -> Optional[str]:
    """Whether the server can map ``buffers`` (a :class:`DeviceSegment`, or what has its
    ``message()``) for ``model``: opens a Step stream with them, anonymously, and ends it at once
    (the server maps the buffers when the stream opens). Returns the server's reason when it
    cannot (``CUDA_IPC_UNAVAILABLE``), None when it can; other errors are raised."""
    import grpc

    from .errors import from_rpc_error

    request = pb.StepRequest(open=pb.StepOpen(model=model, cuda_ipc=buffers.message()))
    try:
        for _ in client._step(iter([request]), timeout=client.timeout):
            pass
    except grpc.RpcError as e:
        error = from_rpc_error(e, f"open a CUDA IPC stream on model {model!r}", client.target)
        if error.reason == "CUDA_IPC_UNAVAILABLE":
            return f"the server cannot map the parameters' device memory: {error.details}"
        raise error from None
    return None


def attempt(stream: Any, live: Any, grads: Sequence[Any], commit: pb.StepCommit,
            destinations: Optional[Sequence[Any]], action: str) -> Any:
    """Sends a step once on ``stream``'s device segment (a :class:`~optsidecar.client.StepStream`
    with ``device_segment``): gradients (or weights to set) not already in their regions are copied
    there on the device, the device is synchronised, and only the commit travels; the view comes
    back in the parameter regions, copied on the device into destinations that are not them."""
    import torch

    segment = stream.device_segment
    region = segment.weights_tensor if commit.kind == pb.STEP_SET_WEIGHTS else segment.gradient_tensor

    def put() -> None:
        with torch.no_grad():
            for index, g in enumerate(grads):
                if g is not None and g.data_ptr() != region(index).data_ptr():
                    region(index).copy_(torch.as_tensor(g).detach().reshape(-1))
        segment.synchronize()

    return stream.attempt_outside(live, commit, destinations, action, put=put,
                                  written=lambda reply: reply.weights_on_device, where="the device buffers",
                                  copy_back=lambda: copy_out(segment, destinations))


class DeviceDestination(Destination):
    """A CUDA tensor that a view reaches on the device (see :func:`copy_out`): no host staging."""

    def __init__(self, target: Any):  # pylint: disable=super-init-not-called
        self.target = target
        self.numel = int(target.numel())
        self.array = None
        self.staged = False

    def commit(self) -> None:
        pass


def copy_out(segment: DeviceSegment, destinations: Sequence[Any]) -> None:
    """Copies each parameter region into its destination on the device, unless it is the region."""
    import torch

    copied = False
    with torch.no_grad():
        for i, d in enumerate(destinations):
            target = getattr(d, "target", d)
            if target is None:
                continue
            source = segment.weights_tensor(i)
            if target.data_ptr() != source.data_ptr():
                target.copy_(source.view(target.shape), non_blocking=True)
                copied = True
    if copied:
        segment.synchronize()
