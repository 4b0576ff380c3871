"""Exceptions for the server's gRPC status codes.

Every error the server returns becomes an :class:`OptSidecarError` subclass that keeps the server's
message (it names the field or tensor at fault, e.g. ``spec.optimizer.algorithm: unknown algorithm
'Adamm'``) and the status code. The subclasses also derive from the built-in exception a Python
caller would expect, so ``except ValueError`` catches a rejected argument and ``except
ConnectionError`` a server that cannot be reached.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Type

import grpc

__all__ = [
    "OptSidecarError",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "FailedPrecondition",
    "StaleGradient",
    "ResourceExhausted",
    "Aborted",
    "Unimplemented",
    "ServerUnavailable",
    "DeadlineExceeded",
    "DataLoss",
    "ProtocolError",
    "from_rpc_error",
]


class OptSidecarError(Exception):
    """Base class of every optsidecar error.

    Attributes:
        code: the gRPC status code, or None for errors detected on the client side.
        details: the server's message (or the client's, for client-side errors).
    """

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None, details: str = ""):
        super().__init__(message)
        self.code = code
        self.details = details or message


class InvalidArgument(OptSidecarError, ValueError):
    """INVALID_ARGUMENT: a bad spec, hyperparameter, shape, chunk, view or non-finite gradient."""


class NotFound(OptSidecarError, LookupError):
    """NOT_FOUND: no model of that name (never registered, deleted, or the server restarted)."""


class AlreadyExists(OptSidecarError):
    """ALREADY_EXISTS: a model of that name is registered already."""


class FailedPrecondition(OptSidecarError, RuntimeError):
    """FAILED_PRECONDITION: e.g. a commit with missing chunks, or an EMA view before its first update."""


class StaleGradient(FailedPrecondition):
    """FAILED_PRECONDITION for a gradient too stale to apply: in asynchronous mode with a staleness
    bound and the reject policy, the gradient was computed at a version more than ``max_staleness``
    versions behind the model's current one. Nothing was applied. Pull the current weights (with
    ``RemoteOptimizer.pull()``, or ``Client.pull`` and the stream's ``base_version``), compute the
    gradient again there and send it.

    Attributes:
        current_version: the model's version when the gradient was rejected.
        base_version: the version the gradient was computed at (None if the message lacks it).
        staleness: how many versions behind it was (None if the message lacks it).
        max_staleness: the model's bound (None if the message lacks it).
    """

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None, details: str = "", *,
                 current_version: int, base_version: Optional[int] = None, staleness: Optional[int] = None,
                 max_staleness: Optional[int] = None):
        super().__init__(message, code, details)
        self.current_version = current_version
        self.base_version = base_version
        self.staleness = staleness
        self.max_staleness = max_staleness


class ResourceExhausted(OptSidecarError, MemoryError):
    """RESOURCE_EXHAUSTED: the model would exceed the server's memory limit."""


class Aborted(OptSidecarError, RuntimeError):
    """ABORTED: another client's step is being assembled on the same model; retry."""


class Unimplemented(OptSidecarError, NotImplementedError):
    """UNIMPLEMENTED: the server does not implement what was asked (e.g. an algorithm)."""


class ServerUnavailable(OptSidecarError, ConnectionError):
    """UNAVAILABLE: the server cannot be reached, or the connection broke mid-call."""


class DeadlineExceeded(OptSidecarError, TimeoutError):
    """DEADLINE_EXCEEDED: the call took longer than its timeout."""


class DataLoss(OptSidecarError, OSError):
    """DATA_LOSS: a snapshot on the server's disk failed verification (a file missing or torn, or a
    checksum that does not match): it cannot be restored. ``list_snapshots()`` shows which snapshots
    verify (``valid``) and why the others do not (``problem``); restore one of those by id."""


class ProtocolError(OptSidecarError):
    """The server's reply broke the protocol (a chunk out of range, mixed views, missing weights)."""


_BY_CODE: Dict[grpc.StatusCode, Type[OptSidecarError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailable,
    # The client never shows its own cancellations as errors, so a CANCELLED status comes from the
    # other end: a server shutting down resets its open streams.
    grpc.StatusCode.CANCELLED: ServerUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.DATA_LOSS: DataLoss,
}


# The server's rejection of a too stale gradient: "step 7 of client 'a': its gradient was computed
# at version 3, 5 versions behind the current version 8 (the bound is 4); pull the weights ...".
_STALE = re.compile(r"behind the current version (\d+)")
_STALE_DETAILS = {
    "base_version": re.compile(r"computed at version (\d+)"),
    "staleness": re.compile(r"(\d+) versions? behind"),
    "max_staleness": re.compile(r"the bound is (\d+)"),
}


def from_rpc_error(error: grpc.RpcError, action: str, target: str) -> OptSidecarError:
    """Turns a failed gRPC call into the matching :class:`OptSidecarError`.

    Args:
        error: the exception grpc raised (it is also a grpc.Call carrying code and details).
        action: what the client was doing, e.g. ``"register model 'mlp'"``; starts the message.
        target: the server address, named in connection errors.
    """
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    cls = _BY_CODE.get(code, OptSidecarError)
    if cls is ServerUnavailable:
        message = f"{action}: optsidecar server at {target} is unavailable ({details})"
    else:
        message = f"{action}: {code.name}: {details}"
    if cls is FailedPrecondition:
        stale = _STALE.search(details)
        if stale:
            found = {name: pattern.search(details) for name, pattern in _STALE_DETAILS.items()}
            return StaleGradient(message, code, details, current_version=int(stale.group(1)),
                                 **{name: int(m.group(1)) if m else None for name, m in found.items()})
    return cls(message, code=code, details=details)
