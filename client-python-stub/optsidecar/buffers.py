"""Tensors as sources and destinations of protocol chunks, with as few copies as possible.

The wire format is little-endian float32. A CPU float32 contiguous tensor (torch or numpy) is
read and written in place through a flat numpy view; anything else (a CUDA tensor, another dtype,
a non-contiguous layout) is converted once into a float32 CPU buffer on the way out, and received
into a staging buffer that is copied into the original when the whole view has arrived.

torch is optional: numpy arrays work without it.
"""

from __future__ import annotations

import sys
from typing import Any, Iterator, Optional, Tuple

import numpy as np

__all__ = ["CHUNK_BYTES", "CHUNK_ELEMENTS", "numel_of", "source_array", "chunks", "Destination", "as_destination"]

#: Payload bytes per chunk: 1 MiB, the protocol's limit.
CHUNK_BYTES = 1 << 20
CHUNK_ELEMENTS = CHUNK_BYTES // 4

_WIRE_DTYPE = np.dtype("<f4")


def _torch_tensor_type() -> Optional[type]:
    # Only look torch up if the caller imported it; a tensor cannot exist otherwise.
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None) if torch is not None else None


def _is_torch(x: Any) -> bool:
    tensor_type = _torch_tensor_type()
    return tensor_type is not None and isinstance(x, tensor_type)


def numel_of(x: Any) -> int:
    """Number of elements of a tensor or array, without touching its data."""
    if _is_torch(x):
        return int(x.numel())
    return int(np.size(x))


def source_array(x: Any) -> np.ndarray:
    """A flat little-endian float32 array holding ``x``'s values: a view when ``x`` already is
    one in CPU memory, else a single converted copy (a CUDA tensor is copied to the host once)."""
    if _is_torch(x):
        import torch

        t = x.detach()
        if t.device.type != "cpu" or t.dtype != torch.float32:
            t = t.to(device="cpu", dtype=torch.float32)
        arr = t.contiguous().view(-1).numpy()
    else:
        arr = np.asarray(x)
    if arr.dtype != _WIRE_DTYPE or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=_WIRE_DTYPE)
    return arr.reshape(-1)


def chunks(arr: np.ndarray) -> Iterator[Tuple[int, memoryview]]:
    """``(element offset, bytes)`` pieces of a flat wire-format array, at most 1 MiB each.

    The memoryviews share ``arr``'s memory; nothing is copied here.
    """
    raw = memoryview(arr).cast("B")
    for start in range(0, arr.size, CHUNK_ELEMENTS):
        stop = min(start + CHUNK_ELEMENTS, arr.size)
        yield start, raw[start * 4:stop * 4]


class Destination:
    """Where one tensor's received values go.

    ``array`` is a flat, writable float32 numpy array that chunks are copied into. For a CPU
    float32 contiguous tensor or array it *is* the tensor's memory; otherwise it is a staging
    buffer, and :meth:`commit` copies it into the tensor (to its device and dtype).

    Args:
        target: a torch tensor or numpy array.
        staging: a float32 buffer of the right size to reuse as staging, if one is needed.
    """

    def __init__(self, target: Any, staging: Optional[np.ndarray] = None):
        self.target = target
        self.numel = numel_of(target)
        direct = self._direct_view(target)
        if direct is not None:
            self.array = direct
            self.staged = False
        else:
            if staging is None or staging.size != self.numel or staging.dtype != np.float32:
                staging = self.new_staging(target, self.numel)
            self.array = staging
            self.staged = True

    @staticmethod
    def _direct_view(target: Any) -> Optional[np.ndarray]:
        if _is_torch(target):
            import torch

            t = target.detach()
            if t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous():
                return t.view(-1).numpy()
            return None
        if (isinstance(target, np.ndarray) and target.dtype == np.float32
                and target.flags.c_contiguous and target.flags.writeable):
            return target.reshape(-1)
        if not isinstance(target, np.ndarray):
            raise TypeError(f"a destination must be a torch tensor or a numpy array, not {type(target).__name__}")
        return None

    @staticmethod
    def new_staging(target: Any, numel: int) -> np.ndarray:
        """A float32 host buffer for ``target``; page-locked for CUDA tensors (faster uploads)."""
        if _is_torch(target) and target.is_cuda:
            import torch

            return torch.empty(numel, dtype=torch.float32, pin_memory=True).numpy()
        return np.empty(numel, dtype=np.float32)

    def write(self, offset: int, data: memoryview) -> None:
        """Copies little-endian float32 bytes into place at element ``offset``."""
        values = np.frombuffer(data, dtype=_WIRE_DTYPE)
        self.array[offset:offset + values.size] = values

    def commit(self) -> None:
        """Moves staged values into the target; a no-op when values were written in place."""
        if not self.staged:
            return
        if _is_torch(self.target):
            import torch

            staged = torch.from_numpy(self.array).view(self.target.shape)
            with torch.no_grad():
                self.target.copy_(staged)
        else:
            np.copyto(self.target, self.array.reshape(np.shape(self.target)), casting="unsafe")


def as_destination(target: Any) -> Destination:
    """``target`` as a :class:`Destination` (one already is passes through, keeping its staging)."""
    return target if isinstance(target, Destination) else Destination(target)
