"""Exceptions for the server's gRPC status codes.

Every error the server returns becomes an :class:`OptSidecarError` subclass that keeps the server's
message (it names the field or tensor at fault, e.g. ``spec.optimizer.algorithm: unknown algorithm
'Adamm'``) and the status code. The subclasses also derive from the built-in exception a Python
caller would expect, so ``except ValueError`` catches a rejected argument and ``except
ConnectionError`` a server that cannot be reached.

Programs should branch on what the server attaches for them rather than on the message: every
error it sends carries the standard rich error details (a ``google.rpc.Status`` in the
``grpc-status-details-bin`` trailer), which become :attr:`OptSidecarError.reason` (a stable name
such as ``"STALE_GRADIENT"``), :attr:`~OptSidecarError.field` (the request field at fault) and
:attr:`~OptSidecarError.metadata` (e.g. ``model``, ``current_version``, ``limit``). README,
"Errors", lists the reasons.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple, Type

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "OptSidecarError",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "FailedPrecondition",
    "StaleGradient",
    "ResourceExhausted",
    "Aborted",
    "ModelChanged",
    "Unimplemented",
    "Unauthenticated",
    "PermissionDenied",
    "ServerUnavailable",
    "DeadlineExceeded",
    "DataLoss",
    "ProtocolError",
    "from_rpc_error",
    "error_details",
]


class OptSidecarError(Exception):
    """Base class of every optsidecar error.

    Attributes:
        code: the gRPC status code, or None for errors detected on the client side.
        details: the server's message (or the client's, for client-side errors).
        reason: the server's stable name for the error, e.g. ``"INVALID_FIELD"``,
            ``"MODEL_NOT_FOUND"``, ``"STALE_GRADIENT"``; None when the error did not come from
            the server (a broken connection, a client-side check).
        field: the request field at fault, e.g. ``"spec.optimizer.hyperparameters.lr"``; None if
            the error is not about one field.
        metadata: values to act on, as strings, e.g. ``{"model": "mlp", "current_version": "8"}``.
    """

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None, details: str = "", *,
                 reason: Optional[str] = None, field: Optional[str] = None,
                 metadata: Optional[Mapping[str, str]] = None):
        super().__init__(message)
        self.code = code
        self.details = details or message
        self.reason = reason
        self.field = field
        self.metadata: Dict[str, str] = dict(metadata or {})

    def with_message(self, message: str) -> "OptSidecarError":
        """This error with another message (e.g. with advice added), keeping its code, details,
        reason, field, metadata and whatever its class adds."""
        again = type(self).__new__(type(self))
        again.__dict__.update(self.__dict__)
        again.args = (message,)
        return again


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

    Attributes (from the error's metadata):
        current_version: the model's version when the gradient was rejected.
        base_version: the version the gradient was computed at (None if the server sent none).
        staleness: how many versions behind it was (None if the server sent none).
        max_staleness: the model's bound (None if the server sent none).
    """

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None, details: str = "", *,
                 current_version: int, base_version: Optional[int] = None, staleness: Optional[int] = None,
                 max_staleness: Optional[int] = None, reason: Optional[str] = "STALE_GRADIENT",
                 field: Optional[str] = None, metadata: Optional[Mapping[str, str]] = None):
        super().__init__(message, code, details, reason=reason, field=field, metadata=metadata)
        self.current_version = current_version
        self.base_version = base_version
        self.staleness = staleness
        self.max_staleness = max_staleness


class ResourceExhausted(OptSidecarError, MemoryError):
    """RESOURCE_EXHAUSTED: the model would exceed the server's memory limit."""


class Aborted(OptSidecarError, RuntimeError):
    """ABORTED: another client's step is being assembled on the same model; retry."""


class ModelChanged(Aborted):
    """ABORTED, reason MODEL_CHANGED: tensors were added to the model (AddTensors, e.g. another
    trainer's ``add_param_group``) while this stream was open on it. The step was not applied by
    this stream; a new stream must send a gradient (or None) for every tensor the model has now.
    A ``RemoteOptimizer`` continues after ``add_param_group`` with the same parameters."""


class Unimplemented(OptSidecarError, NotImplementedError):
    """UNIMPLEMENTED: the server does not implement what was asked (e.g. an algorithm)."""


class Unauthenticated(OptSidecarError, PermissionError):
    """UNAUTHENTICATED: the server takes tokens (``--auth-tokens``) and the call carried none it
    knows (pass ``token=`` or set OPTSIDECAR_TOKEN), or it came in plaintext from another host."""


class PermissionDenied(OptSidecarError, PermissionError):
    """PERMISSION_DENIED: the token's role or models do not allow the call; ``metadata`` names the
    ``model`` and the ``required_role``."""


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
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailable,
    # The client never shows its own cancellations as errors, so a CANCELLED status comes from the
    # other end: a server shutting down resets its open streams.
    grpc.StatusCode.CANCELLED: ServerUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.DATA_LOSS: DataLoss,
}


# The rich error model's messages, declared here rather than imported: Debian packages no
# google.rpc protos for Python. Field numbers and types match google/rpc/status.proto and
# error_details.proto; Any and the metadata map are their wire-compatible equivalents (a map is a
# repeated key/value message on the wire), in a pool of their own so they clash with nothing.
def _rich_error_messages() -> Dict[str, Any]:
    T = descriptor_pb2.FieldDescriptorProto
    messages = {
        "Any": [("type_url", 1, T.TYPE_STRING, None), ("value", 2, T.TYPE_BYTES, None)],
        "Status": [("code", 1, T.TYPE_INT32, None), ("message", 2, T.TYPE_STRING, None),
                   ("details", 3, T.TYPE_MESSAGE, "Any")],
        "MetadataEntry": [("key", 1, T.TYPE_STRING, None), ("value", 2, T.TYPE_STRING, None)],
        "ErrorInfo": [("reason", 1, T.TYPE_STRING, None), ("domain", 2, T.TYPE_STRING, None),
                      ("metadata", 3, T.TYPE_MESSAGE, "MetadataEntry")],
        "FieldViolation": [("field", 1, T.TYPE_STRING, None), ("description", 2, T.TYPE_STRING, None)],
        "BadRequest": [("field_violations", 1, T.TYPE_MESSAGE, "FieldViolation")],
    }
    package = "optsidecar.rich_error"
    proto = descriptor_pb2.FileDescriptorProto(name="optsidecar/rich_error.proto", package=package, syntax="proto3")
    for name, fields in messages.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind, type_name in fields:
            repeated = kind == T.TYPE_MESSAGE
            message.field.add(name=field_name, number=number, type=kind,
                              label=T.LABEL_REPEATED if repeated else T.LABEL_OPTIONAL,
                              type_name=f".{package}.{type_name}" if type_name else None)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    # protobuf 4.22+ has GetMessageClass and dropped MessageFactory.GetPrototype; 4.21 has only the latter.
    get_class = getattr(message_factory, "GetMessageClass", None) or message_factory.MessageFactory(pool).GetPrototype
    return {name: get_class(pool.FindMessageTypeByName(f"{package}.{name}")) for name in messages}


_RICH = _rich_error_messages()
_DETAILS_TRAILER = "grpc-status-details-bin"
_ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


def error_details(error: grpc.RpcError) -> Tuple[Optional[str], Optional[str], Dict[str, str]]:
    """The reason, field and metadata the server attached to a failed call (from the
    ``grpc-status-details-bin`` trailer); ``(None, None, {})`` when it attached none."""
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    raw = next((value for key, value in trailers or () if key == _DETAILS_TRAILER), None)
    if not raw:
        return None, None, {}
    try:
        status = _RICH["Status"].FromString(raw)
        reason, field, metadata = None, None, {}
        for detail in status.details:
            if detail.type_url == _ERROR_INFO_TYPE:
                info = _RICH["ErrorInfo"].FromString(detail.value)
                reason = info.reason or None
                metadata = {entry.key: entry.value for entry in info.metadata}
                field = field or metadata.get("field") or None
            elif detail.type_url == _BAD_REQUEST_TYPE:
                violations = _RICH["BadRequest"].FromString(detail.value).field_violations
                if violations:
                    field = violations[0].field or field
        return reason, field, metadata
    except Exception:  # a trailer that does not parse tells nothing; the status code still stands
        return None, None, {}


def _int(metadata: Mapping[str, str], key: str) -> Optional[int]:
    value = metadata.get(key)
    return int(value) if value is not None and value.isdigit() else None


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
    reason, field, metadata = error_details(error)
    if reason == "STALE_GRADIENT" and _int(metadata, "current_version") is not None:
        return StaleGradient(message, code, details, current_version=_int(metadata, "current_version"),
                             base_version=_int(metadata, "base_version"), staleness=_int(metadata, "staleness"),
                             max_staleness=_int(metadata, "max_staleness"), reason=reason, field=field,
                             metadata=metadata)
    if reason == "MODEL_CHANGED":
        cls = ModelChanged
    return cls(message, code=code, details=details, reason=reason, field=field, metadata=metadata)
