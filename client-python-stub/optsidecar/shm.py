"""Shared memory between a trainer and a server on the same host: a segment file in the server's
``--shm-dir`` holding every tensor's weights and gradient, so that steps move only control
messages over gRPC (see ``StepOpen.shared`` in the protocol).

A segment is created by the client with an unguessable name (``optsidecar-`` and 32 hex digits),
owner-only permissions and ``O_EXCL``, and removed by it when it is closed, when the process exits
and when the :class:`Segment` is garbage collected. The server removes segments abandoned by a
client killed outright once none of its streams maps them and they were unused for its
``--idle-stream-timeout``.

A :class:`SealedSegment` is the faster kind, where the platform allows it: an anonymous memfd
sealed against shrinking, handed to the server over its segment socket (``SegmentHandoffReply`` in
the protocol). The server maps it and reads gradients from, and writes weights into, this process's
memory directly, one copy each way instead of two through a file; it cannot be truncated under the
server, and it is gone when the process and the server's mapping are.

Layout: the weights of tensor 0, 1, ..., then their gradients, each region little-endian float32,
starting at a multiple of 64 bytes. Needs no torch.
"""

import fcntl
import mmap
import os
import secrets
import socket
import struct
import weakref
from typing import Any, Callable, List, Optional, Sequence

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


class _Regions:
    """Each tensor's weights and gradient regions in a mapped segment of ``self.size`` bytes, and
    its letting go (``self._finalizer``: a file is removed, a sealed segment's memfd and
    connection closed)."""

    mmap: mmap.mmap
    _finalizer: weakref.finalize

    @property
    def removed(self) -> bool:
        """Whether the segment was let go (the mapping stays valid while arrays use it)."""
        return not self._finalizer.alive

    def remove(self) -> None:
        """Lets go of the segment (a file is removed); arrays and tensors on it keep their memory."""
        self._finalizer()

    def _lay_out(self, numels: Sequence[int]) -> None:
        self.numels = [int(n) for n in numels]
        self.weights_offsets: List[int] = []
        self.gradient_offsets: List[int] = []
        at = 0
        for offsets in (self.weights_offsets, self.gradient_offsets):
            for n in self.numels:
                offsets.append(at)
                at = _aligned(at + 4 * n)
        self.size = max(at, ALIGNMENT)

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


class Segment(_Regions):
    """A new segment in ``directory`` for tensors of ``numels`` elements, mapped into this process.

    Attributes:
        name: the file's name (what the server is told).
        path: the file's path here.
        weights_offsets, gradient_offsets: each tensor's byte offsets.
    """

    sealed = False

    def __init__(self, directory: str, numels: Sequence[int]):
        self._lay_out(numels)
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

    def renewed(self, numels: Sequence[int]) -> "Segment":
        """A new segment of the same kind and place, for tensors of ``numels`` elements."""
        return Segment(os.path.dirname(self.path), numels)


#: Seals a sealed segment carries: it can neither shrink (what the server relies on) nor grow.
_SEALS = getattr(fcntl, "F_SEAL_SHRINK", 0) | getattr(fcntl, "F_SEAL_GROW", 0) | getattr(fcntl, "F_SEAL_SEAL", 0)


def sealed_segments_work() -> bool:
    """Whether this platform can make sealed segments (Linux: memfd_create, seals, SCM_RIGHTS)."""
    return hasattr(os, "memfd_create") and hasattr(fcntl, "F_ADD_SEALS") and hasattr(socket, "send_fds")


class HandoffRefused(OSError):
    """The server would not take a sealed segment (the reason is the message)."""


def _close_handoff(connection: Optional[socket.socket], fd: int) -> None:
    if connection is not None:
        connection.close()
    try:
        os.close(fd)
    except OSError:
        pass


class SealedSegment(_Regions):
    """A memfd for tensors of ``numels`` elements, sealed against shrinking, mapped here and handed
    to the server, which maps it too (see the module's doc). ``locate()`` gives the server's segment
    socket as this process sees it (a path), asked again when the server was restarted.

    The connection it was handed over on stays open while the segment is in use: the server
    keeps the segment while it is open. :meth:`message` hands it over again (with a fresh token)
    when the server has lost it.
    """

    sealed = True

    def __init__(self, numels: Sequence[int], locate: Callable[[], str]):
        self._lay_out(numels)
        self._locate = locate
        self.name = "sealed-" + secrets.token_hex(4)
        self._fd = os.memfd_create("optsidecar-segment", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        self._connection: Optional[socket.socket] = None
        self._token = b""
        # The descriptor and the connection go at close, at exit and when this object is collected.
        self._finalizer = weakref.finalize(self, _close_handoff, None, self._fd)
        try:
            os.ftruncate(self._fd, self.size)
            fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, _SEALS)
            self.mmap = mmap.mmap(self._fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._hand_over()
        except BaseException:
            self._finalizer()
            raise

    def _hand_over(self) -> None:
        """Hands the memfd to the server with a fresh token; raises HandoffRefused, or OSError."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        path = self._locate()
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            connection.settimeout(10)
            connection.connect(path)
            token = secrets.token_bytes(32)
            socket.send_fds(connection, [bytes([len(token)]) + token], [self._fd])
            length = struct.unpack("<I", _receive_exactly(connection, 4))[0]
            if length > 1 << 16:
                raise OSError(f"the segment socket {path!r} answered with a frame of {length} bytes")
            reply = pb.SegmentHandoffReply.FromString(_receive_exactly(connection, length))
            if reply.refused:
                raise HandoffRefused(reply.refused)
            connection.settimeout(None)
        except BaseException:
            connection.close()
            raise
        self._connection, self._token = connection, token
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _close_handoff, connection, self._fd)

    def _held(self) -> bool:
        """Whether the server still holds the segment: its connection has not ended."""
        if self._connection is None:
            return False
        try:
            return self._connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    def message(self) -> pb.SharedSegment:
        """The segment as a protocol message, handing it over again first if the server lost it
        (it was restarted). A server that cannot be reached or refuses it raises ServerUnavailable
        (a step retries) or FailedPrecondition, SHARED_MEMORY_UNAVAILABLE."""
        if not self._held():
            from .errors import FailedPrecondition, ServerUnavailable

            try:
                self._hand_over()
            except HandoffRefused as e:
                raise FailedPrecondition(f"the server refused the sealed segment: {e}",
                                         reason="SHARED_MEMORY_UNAVAILABLE") from e
            except OSError as e:
                raise ServerUnavailable(f"cannot hand the sealed segment to the server: {e}") from e
        return pb.SharedSegment(handoff_token=self._token, weights_offsets=self.weights_offsets,
                                gradient_offsets=self.gradient_offsets)

    def renewed(self, numels: Sequence[int]) -> "SealedSegment":
        """A new sealed segment for tensors of ``numels`` elements, handed to the same server."""
        return SealedSegment(numels, self._locate)


def _receive_exactly(connection: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = connection.recv(n - len(data))
        if not more:
            raise OSError("the segment socket closed before answering")
        data += more
    return data


def same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two flat arrays are the very same memory (so copying one into the other is a no-op)."""
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.size == b.size


def usable_directory(server_dir: str, override: Optional[str] = None) -> Optional[str]:
    """The shared-memory directory as this process sees it: ``override``, else the environment's
    ``OPTSIDECAR_SHM_DIR``, else the server's own path; None when that is not a directory here."""
    directory = override or os.environ.get(SHM_DIR_ENVIRONMENT_VARIABLE) or server_dir
    return directory if directory and os.path.isdir(directory) else None
