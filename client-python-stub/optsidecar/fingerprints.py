"""CRC-32C fingerprints of float32 values, in pieces of 1 MiB: what the optimizer records of each
parameter to notice edits (:mod:`optsidecar.edits`), and what the server reports of the weights it
writes into a shared segment. Needs no torch.
"""

from __future__ import annotations

import zlib
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


def piece_fingerprints(data: memoryview) -> Tuple[int, ...]:
    """The checksum of each :data:`PIECE_BYTES` piece of ``data`` (bytes), in order."""
    crc = _crc32c if _crc32c is not None else zlib.crc32
    return tuple(crc(data[at:at + PIECE_BYTES]) for at in range(0, len(data), PIECE_BYTES))


def pieces_of(numels: Sequence[int], crc32c: Sequence[int]) -> Optional[List[Tuple[int, ...]]]:
    """Splits the server's per-piece checksums of float32 tensors of ``numels`` elements into one
    tuple per tensor; None when their number does not fit."""
    out, at = [], 0
    for n in numels:
        count = -(-4 * n // PIECE_BYTES)
        out.append(tuple(crc32c[at:at + count]))
        at += count
    return out if at == len(crc32c) else None
