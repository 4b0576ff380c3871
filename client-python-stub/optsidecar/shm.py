"""Shared memory between a trainer and a server on the same host: a segment file in the server's
``--shm-dir`` holding every tensor's weights and gradient, so that steps move only control
messages over gRPC (see ``StepOpen.shared`` in the protocol).

A segment is created by the client with an unguessable name (``optsidecar-`` and 32 hex digits),
owner-only permissions and ``O_EXCL``, and removed by it when it is closed, when the process exits
and when the :class:`Segment` is garbage collected. The server removes segments abandoned by a
client killed outright once none of its streams maps them and they were unused for its
``--idle-stream-timeout``.

Layout: the weights of tensor 0, 1, ..., then their gradients, each region little-endian float32,
starting at a multiple of 64 bytes. Needs no torch.
"""

import mmap
import os
import secrets
import weakref
from typing import Any, List, Optional, Sequence

import numpy as np

from .v1 import optimizer_pb2 as pb

#: The prefix of every segment's name; the server's sweeper removes only such files.
SEGMENT_PREFIX = "optsidecar-"
#: Each region starts at a multiple of this many bytes (the protocol needs 8).
ALIGNMENT = 64
#: The environment variable naming the shared-memory directory as this process sees it.
SHM_DIR_ENVIRONMENT_VARIABLE = "OPTSIDECAR_SHM_DIR"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _aligned(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


class Segment:
    """A new segment in ``directory`` for tensors of ``numels`` elements, mapped into this process.

    Attributes:
        name: the file's name (what the server is told).
        path: the file's path here.
        weights_offsets, gradient_offsets: each tensor's byte offsets.
    """

    def __init__(self, directory: str, numels: Sequence[int]):
        self.numels = [int(n) for n in numels]
        self.weights_offsets: List[int] = []
        self.gradient_offsets: List[int] = []
        at = 0
        for offsets in (self.weights_offsets, self.gradient_offsets):
            for n in self.numels:
                offsets.append(at)
                at = _aligned(at + 4 * n)
        self.size = max(at, ALIGNMENT)
        self.name = SEGMENT_PREFIX + secrets.token_hex(16)
        self.path = os.path.join(directory, self.name)
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        # Removed at close, at exit and when this object is collected, whichever comes first.
        self._finalizer = weakref.finalize(self, _unlink, self.path)
        try:
            os.ftruncate(fd, self.size)
            self.mmap = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            self._finalizer()
            raise
        finally:
            os.close(fd)

    def message(self) -> pb.SharedSegment:
        """The segment as a protocol message (``StepOpen.shared``, ``PullRequest.shared``)."""
        return pb.SharedSegment(name=self.name, weights_offsets=self.weights_offsets,
                                gradient_offsets=self.gradient_offsets)

    def weights(self, index: int) -> np.ndarray:
        """Tensor ``index``'s weights region as a flat float32 array (the segment's memory)."""
        return np.frombuffer(self.mmap, dtype="<f4", count=self.numels[index], offset=self.weights_offsets[index])

    def gradient(self, index: int) -> np.ndarray:
        """Tensor ``index``'s gradient region as a flat float32 array (the segment's memory)."""
        return np.frombuffer(self.mmap, dtype="<f4", count=self.numels[index], offset=self.gradient_offsets[index])

    def weights_tensor(self, index: int) -> Any:
        """Tensor ``index``'s weights region as a flat torch float32 tensor sharing the segment's memory."""
        import torch

        return torch.frombuffer(self.mmap, dtype=torch.float32, count=self.numels[index],
                                offset=self.weights_offsets[index])

    def gradient_tensor(self, index: int) -> Any:
        """Tensor ``index``'s gradient region as a flat torch float32 tensor sharing the segment's memory."""
        import torch

        return torch.frombuffer(self.mmap, dtype=torch.float32, count=self.numels[index],
                                offset=self.gradient_offsets[index])

    @property
    def removed(self) -> bool:
        """Whether the file was removed (the mapping stays valid while arrays use it)."""
        return not self._finalizer.alive

    def remove(self) -> None:
        """Removes the file; arrays and tensors on it keep their memory until they are gone."""
        self._finalizer()


def same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two flat arrays are the very same memory (so copying one into the other is a no-op)."""
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.size == b.size


def usable_directory(server_dir: str, override: Optional[str] = None) -> Optional[str]:
    """The shared-memory directory as this process sees it: ``override``, else the environment's
    ``OPTSIDECAR_SHM_DIR``, else the server's own path; None when that is not a directory here."""
    directory = override or os.environ.get(SHM_DIR_ENVIRONMENT_VARIABLE) or server_dir
    return directory if directory and os.path.isdir(directory) else None
