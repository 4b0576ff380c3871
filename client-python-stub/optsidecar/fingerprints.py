"""CRC-32C fingerprints of float32 values, in pieces of 1 MiB: what the optimizer records of each
parameter to notice edits (:mod:`optsidecar.edits`), and what the server reports of the weights it
writes into a shared segment. Needs no torch.
"""

from __future__ import annotations

import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence, Tuple

try:
    import crc32c as _crc32c_package
    from crc32c import crc32c as _crc32c
except ImportError:  # the content check falls back to zlib's slower CRC32
    _crc32c_package = None
    _crc32c = None

__all__ = ["FAST_FINGERPRINTS", "FINGERPRINTS_ARE_CRC32C", "PIECE_BYTES", "piece_fingerprints", "pieces_of"]

#: Whether fingerprints are computed with the CPU's CRC instruction: PyPI's crc32c is; some
#: distributions build it software-only (Debian 12's python3-crc32c: about 1.4 GB/s, a fifth of
#: the speed), and zlib's CRC32 never is.
FAST_FINGERPRINTS = _crc32c_package is not None and bool(getattr(_crc32c_package, "hardware_based", True))

#: Whether parameters are fingerprinted with CRC-32C, the checksum the server reports for the
#: weights it writes into a shared segment (so those need not be hashed here again).
FINGERPRINTS_ARE_CRC32C = _crc32c is not None

#: Parameters are hashed in pieces of this many bytes: the pieces the server reports checksums of.
PIECE_BYTES = 1 << 20


#: Data of this many pieces or more is hashed on two threads (the checksums release the GIL).
TWO_THREADS_FROM_PIECES = 8

_helper: Optional[ThreadPoolExecutor] = None
_helper_lock = threading.Lock()


def _second_thread() -> Optional[ThreadPoolExecutor]:
    """One helper thread, started on first use; None on a single core."""
    global _helper
    if (os.cpu_count() or 1) < 2:
        return None
    with _helper_lock:
        if _helper is None:
            _helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optsidecar-fingerprints")
        return _helper


def _pieces(data: memoryview, start: int, stop: int) -> Tuple[int, ...]:
    crc = _crc32c if _crc32c is not None else zlib.crc32
    return tuple(crc(data[at:min(at + PIECE_BYTES, stop)]) for at in range(start, stop, PIECE_BYTES))


def piece_fingerprints(data: memoryview) -> Tuple[int, ...]:
    """The checksum of each :data:`PIECE_BYTES` piece of ``data`` (bytes), in order. Large data
    is hashed half on this thread and half on a helper: a parameter's check before a step is
    waited for, and one core reads memory at about half the rate two do."""
    size = len(data)
    helper = _second_thread() if size >= TWO_THREADS_FROM_PIECES * PIECE_BYTES else None
    if helper is None:
        return _pieces(data, 0, size)
    middle = (size // PIECE_BYTES // 2) * PIECE_BYTES
    second_half = helper.submit(_pieces, data, middle, size)
    return _pieces(data, 0, middle) + second_half.result()


def pieces_of(numels: Sequence[int], crc32c: Sequence[int]) -> Optional[List[Tuple[int, ...]]]:
    """Splits the server's per-piece checksums of float32 tensors of ``numels`` elements into one
    tuple per tensor; None when their number does not fit."""
    out, at = [], 0
    for n in numels:
        count = -(-4 * n // PIECE_BYTES)
        out.append(tuple(crc32c[at:at + count]))
        at += count
    return out if at == len(crc32c) else None
