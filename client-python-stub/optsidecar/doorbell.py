"""The doorbell: a shared-memory Step stream's commits and results over the server's Unix socket.

With shared memory the data of a step is already in the segment; what is left is a commit and a
result of a few hundred bytes each. Through grpc's Python stack that exchange costs about a
millisecond (its threads hand each message over); over a plain Unix socket it is a write and a
read. The Step stream stays open beside the socket: it authenticated the trainer, it carries the
secret that lets this socket speak for it, and its end ends the doorbell (protocol:
``DoorbellFrame``).
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from typing import Any, Optional

import grpc

from .errors import ProtocolError
from .v1 import optimizer_pb2 as pb

_LENGTH = struct.Struct("<I")
#: The largest frame either side sends.
MAX_FRAME_BYTES = 1 << 20
#: How long the server may take to see the stream's StepOpen and attach the socket to it.
ATTACH_TIMEOUT = 10.0
_DETAILS_TRAILER = "grpc-status-details-bin"
_LOG = logging.getLogger("optsidecar")


class DoorbellError(grpc.RpcError):
    """The status the server ended a doorbell (and its Step stream) with, shaped like the failed
    call grpc raises, so the same error handling applies."""

    def __init__(self, code: grpc.StatusCode, details: str, status_details: bytes = b""):
        super().__init__(details)
        self._code = code
        self._details = details
        self._status_details = status_details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return ((_DETAILS_TRAILER, self._status_details),) if self._status_details else ()

    @classmethod
    def from_frame(cls, error: pb.DoorbellError) -> "DoorbellError":
        code = next((c for c in grpc.StatusCode if c.value[0] == error.code), grpc.StatusCode.UNKNOWN)
        return cls(code, error.message, error.status_details)


def _closed(why: str) -> DoorbellError:
    return DoorbellError(grpc.StatusCode.UNAVAILABLE, f"the doorbell socket closed ({why})")


class Doorbell:
    """A connection to the server's doorbell socket at ``path``, attached to the Step stream whose
    StepOpen carried ``secret``. Waits until the server attached it, watching ``call`` (the Step
    stream): if the stream fails first, its error is raised.

    Raises:
        grpc.RpcError: the stream's error, or the server's refusal (a :class:`DoorbellError`).
        OSError: the socket cannot be reached.
    """

    def __init__(self, path: str, secret: bytes, call: Any, timeout: float = ATTACH_TIMEOUT):
        self._buffer = bytearray()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(path)
            self._send(pb.DoorbellFrame(secret=secret))
            self._await_attached(call, time.monotonic() + timeout)
        except BaseException:
            self.close()
            raise

    def _await_attached(self, call: Any, deadline: float) -> None:
        self._sock.settimeout(0.05)
        while True:
            try:
                frame = self._read_frame()
                break
            except socket.timeout:
                if call.done():
                    raise call if call.code() != grpc.StatusCode.OK else _closed("the Step stream ended")
                if time.monotonic() > deadline:
                    raise DoorbellError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                        "the server did not attach the doorbell in time") from None
        self._sock.settimeout(None)
        kind = frame.WhichOneof("kind")
        if kind == "error":
            raise DoorbellError.from_frame(frame.error)
        if kind != "attached":
            raise ProtocolError(f"the doorbell answered its secret with {kind!r}, not 'attached'")

    def commit(self, commit: pb.StepCommit) -> pb.StepResult:
        """Sends a commit and returns its result (raises the error that ended the stream instead)."""
        try:
            self._send(pb.DoorbellFrame(commit=commit))
            frame = self._read_frame()
        except OSError as e:
            raise _closed(str(e)) from None
        kind = frame.WhichOneof("kind")
        if kind == "result":
            return frame.result
        if kind == "error":
            raise DoorbellError.from_frame(frame.error)
        raise ProtocolError(f"the doorbell answered a commit with {kind!r}")

    def _send(self, frame: pb.DoorbellFrame) -> None:
        body = frame.SerializeToString()
        self._sock.sendall(_LENGTH.pack(len(body)) + body)

    def _read_frame(self) -> pb.DoorbellFrame:
        buffer = self._buffer
        while True:
            if len(buffer) >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(buffer)
                if length > MAX_FRAME_BYTES:
                    raise ProtocolError(f"the doorbell sent a frame of {length} bytes")
                end = _LENGTH.size + length
                if len(buffer) >= end:
                    frame = pb.DoorbellFrame.FromString(bytes(buffer[_LENGTH.size:end]))
                    del buffer[:end]
                    return frame
            received = self._sock.recv(65536)
            if not received:
                raise _closed("end of stream")
            buffer += received

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


def connect(path: Optional[str], secret: bytes, call: Any) -> Optional[Doorbell]:
    """A doorbell for the stream ``call`` if ``path`` is set and the server attaches one; otherwise
    None, and commits go on the stream (where a stream that failed to open shows its error)."""
    if not path:
        return None
    try:
        return Doorbell(path, secret, call)
    except (OSError, grpc.RpcError, ProtocolError) as e:
        _LOG.debug("no doorbell at %s (%s): commits go on the Step stream", path, e)
        return None
