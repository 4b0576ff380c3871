"""CUDA parameters over the transports that cross the host (gRPC chunks, Unix sockets, shared
memory): each step's gradients go from the device to page-locked host memory and the returned
weights come back from it, every copy queued without blocking and the device's current stream
synchronised once per direction, not once per tensor.

- Over chunks (:class:`HostStaging`), each parameter has a pinned host buffer for its gradient,
  allocated once and reused; the weights arrive in the destinations' pinned staging buffers
  (:class:`~optsidecar.buffers.Destination`) and are copied to the device at the end of the step.
- Over shared memory (:class:`SegmentStaging`), the segment's mapping *is* the staging area: it
  is registered with CUDA as page-locked memory (``cudaHostRegister``; unregistered at close), and
  gradients and weights are copied between the device and their regions directly.

CPU parameters need none of this: they are read and written in place (or live in the segment).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .buffers import Destination
from .shm import Segment


#: The torch dtype of each wire type's values.
_WIRE_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_cuda(tensors: Iterable[Any]) -> bool:
    """Whether any of the tensors is on a CUDA device."""
    return any(t is not None and getattr(t, "is_cuda", False) for t in tensors)


def synchronize(devices: Iterable[torch.device]) -> None:
    """Waits for the work queued on each device's current stream."""
    for device in set(devices):
        torch.cuda.current_stream(device).synchronize()


def device_fingerprints(params: Sequence[torch.Tensor]) -> List[Tuple[int, int]]:
    """Each CUDA parameter's fingerprint, computed where it lives: the 64-bit sums of its float32
    values' bit patterns at even and at odd positions (one reduction over pairs, one pass over the
    values), every parameter's read back in one transfer."""
    if not params:
        return []
    sums = []
    for p in params:
        bits = p.detach().to(torch.float32).reshape(-1).view(torch.int32)
        pairs = bits.numel() // 2
        even_odd = bits[:2 * pairs].view(pairs, 2).sum(dim=0, dtype=torch.int64)
        if bits.numel() % 2:
            even_odd = even_odd + torch.stack([bits[-1].to(torch.int64), torch.zeros_like(even_odd[1])])
        sums.append(even_odd)
    values = torch.cat(sums).cpu().tolist()
    return [(values[2 * k], values[2 * k + 1]) for k in range(len(params))]


class HostStaging:
    """Pinned host buffers for the CUDA gradients of a parameter set, one per parameter, allocated
    at the first step and again only when a parameter's size changes."""

    def __init__(self) -> None:
        self._buffers: Dict[int, torch.Tensor] = {}
        self._devices: List[torch.device] = []

    def gradients(self, grads: Sequence[Optional[torch.Tensor]],
                  wire_dtype: str = "float32") -> List[Optional[torch.Tensor]]:
        """The gradients with each CUDA one copied into its pinned buffer (of the wire type, a
        16-bit one rounded on the device so that half the bytes cross; all copies queued, then one
        synchronisation): host tensors that chunks are sliced from in place."""
        dtype = _WIRE_TORCH_DTYPES[wire_dtype]
        out: List[Optional[torch.Tensor]] = []
        devices = set()
        for i, g in enumerate(grads):
            if g is None or not g.is_cuda:
                out.append(g)
                continue
            buffer = self._buffers.get(i)
            if buffer is None or buffer.numel() != g.numel() or buffer.dtype != dtype:
                buffer = self._buffers[i] = torch.empty(g.numel(), dtype=dtype, pin_memory=True)
            buffer.copy_(g.detach().reshape(-1).to(dtype), non_blocking=True)
            devices.add(g.device)
            out.append(buffer)
        synchronize(devices)
        return out

    def destinations(self, destinations: Sequence[Destination]) -> List[Destination]:
        """The destinations, with copies to the device not blocking: :meth:`finish` waits for them."""
        self._devices = []
        for d in destinations:
            if d.staged and getattr(d.target, "is_cuda", False):
                d.non_blocking = True
                self._devices.append(d.target.device)
        return list(destinations)

    def finish(self) -> None:
        """Waits until the weights copied to the device are there (and their staging is free again)."""
        synchronize(self._devices)


class SegmentStaging:
    """A shared-memory segment registered as page-locked memory, for CUDA parameters that step
    through it: their gradients are copied into its gradient regions and the weights back out of
    its weights regions, on the device's DMA engines."""

    def __init__(self, segment: Segment):
        self.segment = segment
        self._mapping = torch.frombuffer(segment.mmap, dtype=torch.uint8)
        self._address = self._mapping.data_ptr()
        error = torch.cuda.cudart().cudaHostRegister(self._address, segment.size, 0)
        if int(getattr(error, "value", error)) != 0:
            raise OSError(f"cudaHostRegister of the segment's {segment.size} bytes failed: {error}")
        self._registered = True
        self._devices: List[torch.device] = []

    def gradients(self, grads: Sequence[Optional[torch.Tensor]]) -> List[Optional[torch.Tensor]]:
        """Each gradient copied into its region (CUDA ones without blocking, then one
        synchronisation); the regions are what the step reads, so they are returned in its place."""
        out: List[Optional[torch.Tensor]] = []
        devices = set()
        with torch.no_grad():
            for i, g in enumerate(grads):
                if g is None:
                    out.append(None)
                    continue
                region = self.segment.gradient_tensor(i)
                region.copy_(g.detach().reshape(-1), non_blocking=g.is_cuda)
                if g.is_cuda:
                    devices.add(g.device)
                out.append(region)
        synchronize(devices)
        return out

    def destinations(self) -> List[Destination]:
        """The weights regions as the step's destinations: the server writes them, nothing is copied."""
        return [Destination(self.segment.weights_tensor(i)) for i in range(len(self.segment.numels))]

    def weights_into(self, params: Sequence[torch.Tensor]) -> None:
        """Copies each weights region into its parameter (to the device without blocking, then one
        synchronisation), so the parameters hold the step's weights when it returns."""
        devices = set()
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(self.segment.weights_tensor(i).view(p.shape), non_blocking=p.is_cuda)
                if p.is_cuda:
                    devices.add(p.device)
        synchronize(devices)

    def close(self) -> None:
        """Unregisters the mapping (the segment itself is the optimizer's to remove)."""
        if self._registered:
            self._registered = False
            torch.cuda.cudart().cudaHostUnregister(self._address)
