"""optsidecar: an optimizer as a service, for PyTorch trainers.

- :class:`RemoteOptimizer` (needs torch): a ``torch.optim`` optimizer whose parameters and state
  live on an optsidecar server; :func:`recalibrate_batchnorm` recomputes BatchNorm statistics at
  its eval view.
- :class:`Client` and :class:`StepStream`: the low-level client (works with numpy alone).
- :mod:`optsidecar.errors`: one exception per gRPC status, keeping the server's message
  (:class:`StaleGradient` for a gradient rejected as too stale, with the current version).
- Several trainers on one model: ``RemoteOptimizer(..., coordination=dict(mode="sync"))``,
  :meth:`Client.coordination`, :meth:`Client.history`.
"""

from .client import Client, StateBuffer, StepStream
from .errors import (
    Aborted,
    AlreadyExists,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ModelChanged,
    NotFound,
    OptSidecarError,
    PermissionDenied,
    ProtocolError,
    ResourceExhausted,
    ServerUnavailable,
    StaleGradient,
    Unauthenticated,
    Unimplemented,
)
from .results import (Contribution, CoordinationStatus, GroupFigures, StepFigures, VersionContributions,
                      VersionFigures, Weights)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "StepStream",
    "StateBuffer",
    "RemoteOptimizer",
    "recalibrate_batchnorm",
    "StepFigures",
    "GroupFigures",
    "Weights",
    "Contribution",
    "VersionContributions",
    "VersionFigures",
    "CoordinationStatus",
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
]


#: What needs torch, imported only when asked for, so that numpy-only users need no torch.
_NEEDS_TORCH = {"RemoteOptimizer": "optimizer", "recalibrate_batchnorm": "batchnorm"}


def __getattr__(name: str):
    if name not in _NEEDS_TORCH:
        raise AttributeError(f"module 'optsidecar' has no attribute {name!r}")
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise ImportError(f"optsidecar.{name} needs torch, which is not installed: pip install optsidecar[torch] "
                          f"(the Client works without it)") from e
    import importlib

    return getattr(importlib.import_module(f".{_NEEDS_TORCH[name]}", __name__), name)
