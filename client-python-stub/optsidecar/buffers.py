"""Tensors as sources and destinations of protocol chunks, with as few copies as possible.

The wire format is little-endian float32, or on request (``wire_dtype``) bfloat16 or float16,
which halve the bytes while the server keeps float32. A CPU float32 contiguous tensor (torch or
numpy) is read and written in place through a flat numpy view; anything else (a CUDA tensor,
another dtype, a non-contiguous layout) is converted once into a float32 CPU buffer on the way
out, and received into a staging buffer that is copied into the original when the whole view has
arrived. A 16-bit wire type is rounded on the way out chunk by chunk into one reused buffer (a CUDA
gradient whole, on its device, so that it crosses to the host at half the size), and widened on the
way in by the copy into the float32 destination; torch does both on the calling thread alone.

torch is optional: numpy arrays work without it (bfloat16 is then converted with integer
arithmetic on the float32 bits, rounding to nearest even like torch).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Any, Iterator, Optional, Tuple

import numpy as np

__all__ = ["CHUNK_BYTES", "CHUNK_ELEMENTS", "WIRE_DTYPES", "check_wire_dtype", "numel_of", "source_array", "chunks",
           "wire_chunks", "Destination", "as_destination"]

#: Payload bytes per chunk: 1 MiB, the protocol's limit.
CHUNK_BYTES = 1 << 20
CHUNK_ELEMENTS = CHUNK_BYTES // 4

_WIRE_DTYPE = np.dtype("<f4")

#: The wire types by name, as ``WireDtype`` numbers (optimizer.proto).
WIRE_DTYPES = {"float32": 0, "bfloat16": 1, "float16": 2}

#: How each wire type's bytes are held in numpy (bfloat16 has no numpy type: its bits as uint16).
_WIRE_ARRAY_DTYPES = {"float32": _WIRE_DTYPE, "bfloat16": np.dtype("<u2"), "float16": np.dtype("<f2")}


def check_wire_dtype(wire_dtype: str) -> str:
    """``wire_dtype`` if it names a wire type, else ValueError."""
    if wire_dtype not in WIRE_DTYPES:
        raise ValueError(f"wire_dtype must be one of {sorted(WIRE_DTYPES)}, not {wire_dtype!r}")
    return wire_dtype


def _bfloat16_bits(arr: np.ndarray) -> np.ndarray:
    """float32 values rounded to nearest even as bfloat16 bits (a NaN stays a quiet NaN)."""
    bits = arr.view(np.uint32)
    rounded = ((bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) >> 16).astype("<u2")
    nan = np.isnan(arr)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x40).astype("<u2")
    return rounded


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


def source_array(x: Any, wire_dtype: str = "float32") -> np.ndarray:
    """A flat array of ``x``'s values in wire format: for float32 a view when ``x`` already is
    one in CPU memory, else a single converted copy (a CUDA tensor is copied to the host once);
    for a 16-bit wire type the values rounded to it (bfloat16 as uint16 bits)."""
    if wire_dtype != "float32":
        return _narrow_array(x, wire_dtype)
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


def _narrow_array(x: Any, wire_dtype: str) -> np.ndarray:
    """``x`` rounded to a 16-bit wire type in one conversion (torch's, on the tensor's device)."""
    if _is_torch(x):
        import torch

        t = x.detach().to(dtype=torch.bfloat16 if wire_dtype == "bfloat16" else torch.float16)
        if t.device.type != "cpu":
            t = t.cpu()
        # numpy has no bfloat16: both 16-bit types leave torch as their bits.
        return t.contiguous().view(-1).view(torch.int16).numpy().view(_WIRE_ARRAY_DTYPES[wire_dtype])
    arr = np.asarray(x)
    values = np.ascontiguousarray(arr, dtype=_WIRE_DTYPE).reshape(-1)  # float32 first, as the server would hold it
    if wire_dtype == "float16":
        with np.errstate(over="ignore"):  # past float16's range is ±Inf, which the server reports
            return values.astype("<f2")
    return _bfloat16_bits(values)


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Runs torch's conversions on the calling thread alone. A chunk is a few milliseconds of
    work at most; split over torch's OpenMP threads, those threads then spin for cores that the
    server (on the same host) needs for the rest of the step."""
    import torch

    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _torch_wire_dtype(wire_dtype: str) -> Any:
    import torch

    return torch.bfloat16 if wire_dtype == "bfloat16" else torch.float16


def wire_chunks(x: Any, wire_dtype: str = "float32") -> Iterator[Tuple[int, memoryview]]:
    """``(element offset, bytes)`` pieces of ``x`` in wire format, as :func:`chunks` cuts them.

    For a 16-bit wire type and a CPU tensor of another type, each piece is rounded only when it
    is reached, into one scratch buffer that the next piece reuses: the caller copies each piece
    (into its message) before it asks for the next. So the rounding reads the gradient once and
    writes 1 MiB that stays in cache, instead of a new wire-sized array every step.
    """
    if wire_dtype == "float32" or not _is_torch(x) or x.device.type != "cpu":
        yield from chunks(source_array(x, wire_dtype))
        return
    import torch

    flat = x.detach().reshape(-1)
    narrow = _torch_wire_dtype(wire_dtype)
    if flat.dtype == narrow:
        yield from chunks(flat.view(torch.int16).numpy().view(_WIRE_ARRAY_DTYPES[wire_dtype]))
        return
    per_chunk = CHUNK_BYTES // 2
    scratch = torch.empty(min(per_chunk, flat.numel()), dtype=narrow)
    raw = memoryview(scratch.view(torch.int16).numpy()).cast("B")
    for start in range(0, flat.numel(), per_chunk):
        count = min(per_chunk, flat.numel() - start)
        with _one_torch_thread():
            scratch[:count].copy_(flat[start:start + count])
        yield start, raw[:2 * count]


def chunks(arr: np.ndarray) -> Iterator[Tuple[int, memoryview]]:
    """``(element offset, bytes)`` pieces of a flat wire-format array, at most 1 MiB each (twice
    the elements for a 16-bit type; offsets count elements).

    The memoryviews share ``arr``'s memory; nothing is copied here.
    """
    raw = memoryview(arr).cast("B")
    size = arr.itemsize
    per_chunk = CHUNK_BYTES // size
    for start in range(0, arr.size, per_chunk):
        stop = min(start + per_chunk, arr.size)
        yield start, raw[start * size:stop * size]


class Destination:
    """Where one tensor's received values go.

    ``array`` is a flat, writable float32 numpy array that chunks are copied into. For a CPU
    float32 contiguous tensor or array it *is* the tensor's memory; otherwise it is a staging
    buffer, and :meth:`commit` copies it into the tensor (to its device and dtype).

    Args:
        target: a torch tensor or numpy array.
        staging: a float32 buffer of the right size to reuse as staging, if one is needed.
    """

    #: Copy staged values to a CUDA target without waiting (the caller synchronises the device
    #: before it reads the target or reuses the staging buffer).
    non_blocking = False

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

    def write(self, offset: int, data: memoryview, wire_dtype: str = "float32") -> None:
        """Copies little-endian values of ``wire_dtype`` into place at element ``offset``, widened
        to float32 in the same copy (a bfloat16 value is its float32's top half)."""
        values = np.frombuffer(data, dtype=_WIRE_ARRAY_DTYPES[wire_dtype])
        into = self.array[offset:offset + values.size]
        if wire_dtype == "float32":
            into[...] = values
        elif _torch_tensor_type() is not None:
            import torch

            # torch widens with vectorised loops, on this thread alone (see _one_torch_thread): about
            # 3 ms per 10M values here, against 8 for numpy's shift. The message bytes are read-only,
            # which torch warns about; they are only read here.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                wide = torch.frombuffer(data, dtype=_torch_wire_dtype(wire_dtype))
            with _one_torch_thread():
                torch.from_numpy(into).copy_(wide)
        elif wire_dtype == "bfloat16":
            np.left_shift(values, 16, out=into.view(np.uint32), dtype=np.uint32)  # its float32's top half
        else:
            into[...] = values

    def commit(self) -> None:
        """Moves staged values into the target; a no-op when values were written in place."""
        if not self.staged:
            return
        if _is_torch(self.target):
            import torch

            staged = torch.from_numpy(self.array).view(self.target.shape)
            with torch.no_grad():
                self.target.copy_(staged, non_blocking=self.non_blocking)
        else:
            np.copyto(self.target, self.array.reshape(np.shape(self.target)), casting="unsafe")


def as_destination(target: Any) -> Destination:
    """``target`` as a :class:`Destination` (one already is passes through, keeping its staging)."""
    return target if isinstance(target, Destination) else Destination(target)
