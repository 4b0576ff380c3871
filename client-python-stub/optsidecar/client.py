"""A low-level client for an optsidecar server: register, describe, list, delete, pull views, and
stream steps.

Bulk data moves as chunks of at most 1 MiB of little-endian float32 (or, with ``wire_dtype``,
bfloat16 or float16: half the bytes, while the server keeps float32). Outgoing chunks are sliced
from a flat float32 view of each tensor and copied once, into the message; incoming chunks are
copied once, from the message into the destination tensor (see :mod:`optsidecar.wire` and
:mod:`optsidecar.buffers`). Request streams are fed through iterators, which grpc consumes one
message at a time as the transport accepts them, so a model is never queued whole in memory.

Example::

    from optsidecar import Client
    from optsidecar.v1 import optimizer_pb2 as pb

    with Client("127.0.0.1:50051") as client:
        spec = pb.ModelSpec(name="linear", tensors=[pb.TensorSpec(name="w", shape=[784, 10])],
                            optimizer=pb.OptimizerConfig(algorithm="RAdam"))
        client.register(spec, [w])                # w: a numpy array or torch tensor
        with client.step_stream("linear") as stream:
            figures = stream.step([grad_w], [w])  # w now holds the updated weights
        client.pull("linear", "train", [w])

Steps are exactly-once: each carries the stream's client id and a growing sequence number, and a
step that fails because the server is unavailable (restarting, connection dropped) is sent again,
the same step with the same gradients, until it gets through; the server answers a step it already
applied from its ledger of each client's last step (``StepFigures.replayed``) instead of applying
it twice.

Each step also carries the version of the weights its gradient was computed at (the stream's
``base_version``, kept up to date from the train weights each step returns), so that a model
shared by several trainers can tell how stale a gradient is (asynchronous mode) or which step it
is for (synchronous mode).
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
import uuid
import weakref
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import grpc

from . import wire
from .doorbell import Doorbell, connect as connect_doorbell
from .buffers import (WIRE_DTYPES, Destination, as_destination, check_wire_dtype, chunks, numel_of, source_array,
                      wire_chunks)
from .figures import check_figures
from .fingerprints import FINGERPRINTS_ARE_CRC32C, PIECE_BYTES, piece_fingerprints
from .errors import OptSidecarError, ProtocolError, ServerUnavailable, error_details, from_rpc_error
from .shm import Segment, same_memory
from .results import Contribution, CoordinationStatus, StepFigures, VersionContributions, VersionFigures, Weights
from .spec import make_schedule, to_struct
from .security import Security
from .v1 import optimizer_pb2 as pb
from .v1 import optimizer_pb2_grpc as pb_grpc
from .views import ViewLike, make_view, view_name

__all__ = ["Client", "StepStream", "StateBuffer", "MAX_MESSAGE_BYTES", "DEFAULT_RETRY_SECONDS",
           "next_step_id"]

#: Largest message either side sends: a few chunks, whatever the model's size.
MAX_MESSAGE_BYTES = 4 << 20

log = logging.getLogger("optsidecar")


def backoff_ceilings(first: float, most: float) -> Iterator[float]:
    """The longest pause before each retry: ``first``, doubling up to ``most``, then ``most`` on.
    Each actual pause is drawn uniformly below its ceiling (full jitter)."""
    ceiling = first
    while True:
        yield ceiling
        ceiling = min(2 * ceiling, most)

#: How long a step is retried while the server is unavailable, by default.
DEFAULT_RETRY_SECONDS = 60.0

#: StepStream.step's kinds of step.
_STEP_KINDS = {"gradient": pb.STEP_GRADIENT, "set_weights": pb.STEP_SET_WEIGHTS}

_SERVICE = "/" + pb.DESCRIPTOR.services_by_name["Optimizer"].full_name + "/"


class StateBuffer(NamedTuple):
    """One saved optimizer state buffer, for restoring a model with :meth:`Client.register`.

    Attributes:
        tensor: index of the tensor in the spec.
        slot: the slot's name as Describe lists it (``exp_avg``, ``z``, ``ema:0``, ``slow``, ...).
        data: its values (a numpy array or torch tensor with the tensor's number of elements).
    """

    tensor: int
    slot: str
    data: Any


class Client:
    """A connection to an optsidecar server. Thread-safe; one per server is enough.

    Args:
        target: ``host:port`` of the server, or ``unix:PATH`` (always plaintext).
        timeout: seconds allowed for a unary call (Describe, List, Delete); None for no limit.
            Streams (Register, Pull, Step) and the calls that read or write a whole model
            (Snapshot, Restore, Fork, Export) have no deadline: their length grows with the model.
        connect_timeout: seconds a new Step stream waits for the connection when it is down and
            the stream does not retry steps (``retry_for=0``), so that the first step after a
            server restart finds it again; then the step fails with ``ServerUnavailable``.
        options: extra gRPC channel options.
        tls_ca: PEM file of the CA that issued the server's certificate; given, the channel is TLS
            (default: ``OPTSIDECAR_TLS_CA``; without either, plaintext).
        tls_cert, tls_key: a client certificate chain and its key (PEM), for a server that
            requires them (mutual TLS); need ``tls_ca`` (default: ``OPTSIDECAR_TLS_CERT`` and
            ``OPTSIDECAR_TLS_KEY``).
        token: sent as ``authorization: Bearer <token>`` with every call (default:
            ``OPTSIDECAR_TOKEN``). A setting left None comes from the environment; ``""`` turns it off.
    """

    def __init__(self, target: str = "127.0.0.1:50051", *, timeout: Optional[float] = 60.0,
                 connect_timeout: float = 5.0, options: Sequence[tuple] = (), tls_ca: Optional[str] = None,
                 tls_cert: Optional[str] = None, tls_key: Optional[str] = None, token: Optional[str] = None):
        self.target = target
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        #: The TLS files and token in use (see :mod:`optsidecar.security`).
        self.security = Security.resolve(tls_ca, tls_cert, tls_key, token)
        self._channel = self.security.channel(target, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Reconnect soon after a server restart instead of backing off for up to two minutes:
            # while the server is away, a step waits for it to come back (the Python API cannot
            # reset the backoff, as a client that knows the server is back would), so try every
            # quarter second at most; a refused connection on a restarting server costs nothing.
            # (Not grpc.min_reconnect_backoff_ms: grpc also uses it as the deadline of a connection
            # attempt, and a busy server may need more than a fraction of a second to answer.)
            ("grpc.initial_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 250),
            *options,
        ])
        self._stub = pb_grpc.OptimizerStub(self._channel)
        # The bulk-data methods use the hand-written chunk encoding of optsidecar.wire.
        self._register = self._channel.stream_unary(
            _SERVICE + "Register", request_serializer=wire.serialize,
            response_deserializer=pb.ModelInfo.FromString)
        self._add_tensors = self._channel.stream_unary(
            _SERVICE + "AddTensors", request_serializer=wire.serialize,
            response_deserializer=pb.ModelInfo.FromString)
        self._pull = self._channel.unary_stream(
            _SERVICE + "Pull", request_serializer=pb.PullRequest.SerializeToString,
            response_deserializer=wire.parse_weights_chunk)
        self._step = self._channel.stream_stream(
            _SERVICE + "Step", request_serializer=wire.serialize,
            response_deserializer=wire.parse_step_response)

    # -- unary calls ---------------------------------------------------------------------------

    def server_info(self) -> pb.ServerInfoResponse:
        """The server's version, engine (``"cpu"`` or ``"cuda"``) and its ``device`` (empty on the
        CPU), and shared-memory directory (``shm_dir``, empty when it offers none)."""
        return self._unary(self._stub.ServerInfo, pb.ServerInfoRequest(), "read the server's info")

    def describe(self, model: str) -> pb.ModelInfo:
        """The model's tensors (with their state slots), groups with effective hyperparameters and
        current lr, configuration, schedule, version, views and restorable counters."""
        return self._unary(self._stub.Describe, pb.DescribeRequest(model=model), f"describe model {model!r}")

    def list(self) -> List[str]:
        """Names of the registered models."""
        return list(self._unary(self._stub.List, pb.ListRequest(), "list models").models)

    def delete(self, model: str, timeout: Optional[float] = None) -> None:
        """Removes a model and frees its memory on the server."""
        self._unary(self._stub.Delete, pb.DeleteRequest(model=model), f"delete model {model!r}",
                    timeout=self.timeout if timeout is None else timeout)

    def renew_lease(self, model: str, timeout: Optional[float] = None) -> int:
        """Keeps an ephemeral model alive for another grace period; returns that period in seconds
        (0: the model has no lease and persists anyway)."""
        return self._unary(self._stub.RenewLease, pb.RenewLeaseRequest(model=model), f"renew the lease of {model!r}",
                           timeout=self.timeout if timeout is None else timeout).lease_seconds

    # -- several trainers ----------------------------------------------------------------------

    def coordination(self, model: str) -> CoordinationStatus:
        """How trainers share ``model`` (its sync or async settings), which trainers are attached
        now, and what their contributions did: applied, late (sync), rejected as too stale
        (async), steps applied after a straggler timeout, and the staleness histogram."""
        return CoordinationStatus.from_proto(self.describe(model).coordination)

    def history(self, model: str, from_version: int = 0) -> List[VersionContributions]:
        """Which contributions (client id, step id) each version of ``model`` from
        ``from_version`` on combined, oldest first: every contributor of a sync step, the one
        gradient of an async step. The server keeps the most recent versions (100,000); older
        ones are left out. The server answers in pages of about a megabyte; this reads them all."""
        versions = []
        while True:
            response = self._unary(self._stub.History, pb.HistoryRequest(model=model, from_version=from_version),
                                   f"history of model {model!r}")
            versions.extend(VersionContributions(v.version, tuple(Contribution.from_proto(c) for c in v.contributions))
                            for v in response.versions)
            if not response.next_from_version:
                return versions
            from_version = response.next_from_version

    def figures(self, model: str, from_version: int = 0) -> List[VersionFigures]:
        """What each version of ``model`` from ``from_version`` on did (learning rates, c_t,
        gradient and update norms, staleness, step time) with the figures its trainers reported
        (loss, accuracy...), oldest first: a model's training curves. The server keeps as many
        versions as for :meth:`history`, in memory only; this reads every page."""
        versions = []
        while True:
            response = self._unary(self._stub.Figures, pb.FiguresRequest(model=model, from_version=from_version),
                                   f"figures of model {model!r}")
            versions.extend(VersionFigures.from_proto(v) for v in response.versions)
            if not response.next_from_version:
                return versions
            from_version = response.next_from_version

    def log_figures(self, model: str, figures: Optional[Mapping[str, float]] = None, **more: float) -> int:
        """Reports figures without a step, e.g. an evaluation's accuracy: they join the figures of
        the model's current version (a mean with values of the same name there). Names are 1 to
        64 characters of ``A-Z a-z 0-9 _ . : / -``, at most 64 of them, values finite numbers.
        Returns the version they joined."""
        request = pb.LogFiguresRequest(model=model, figures=check_figures({**(figures or {}), **more}))
        return self._unary(self._stub.LogFigures, request, f"log figures of model {model!r}").version

    def wait_for_trainers(self, model: str, count: int, timeout: float = 30.0) -> CoordinationStatus:
        """Waits until at least ``count`` trainers are attached to ``model`` (each with a Step
        stream open, e.g. after :meth:`StepStream.open`), so that a sync step with ``k=0``
        counts them all from the first step. Raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.coordination(model)
            if len(status.trainers) >= count:
                return status
            if time.monotonic() >= deadline:
                raise TimeoutError(f"model {model!r}: {len(status.trainers)} of {count} trainers attached after "
                                   f"{timeout} s: {list(status.trainers)}")
            time.sleep(0.01)

    def _unary(self, method, request, action: str, timeout: Any = "default"):
        try:
            return method(request, timeout=self.timeout if timeout == "default" else timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e, action, self.target) from None

    # -- snapshots, restore, fork, export --------------------------------------------------------

    def snapshot(self, model: str) -> pb.SnapshotInfo:
        """Writes a resumable snapshot of ``model`` to the server's state directory, atomically:
        weights, every optimizer state buffer, counters, configuration and the clients' sequence
        numbers. Needs a server started with ``--state-dir``.

        Returns:
            its ``SnapshotInfo``: ``id`` (e.g. ``"000007"``), ``version`` (steps applied), ``path``
            (its directory, relative to the state directory), ``bytes``, ``created_unix_millis``
            and ``trigger`` (``"rpc"``).
        """
        return self._unary(self._stub.Snapshot, pb.SnapshotRequest(model=model), f"snapshot model {model!r}",
                           timeout=None)

    def list_snapshots(self, model: str = "") -> List[pb.SnapshotInfo]:
        """The snapshots in the server's state directory, oldest first: of ``model``, or of every
        model when it is empty. Each is verified: ``valid`` is False for one with a missing, torn
        or corrupt file, and ``problem`` says why."""
        action = f"list the snapshots of model {model!r}" if model else "list snapshots"
        return list(self._unary(self._stub.ListSnapshots, pb.ListSnapshotsRequest(model=model), action,
                                timeout=None).snapshots)

    def restore(self, model: str, id: str = "", as_model: str = "", replace: bool = False) -> pb.ModelInfo:
        """Loads a model from its snapshots into the running server.

        Args:
            model: the model whose snapshots to restore from.
            id: a snapshot id; empty restores the latest valid snapshot and replays the steps
                journaled after it, so the model is exactly as of its last acknowledged step. A
                given id restores that snapshot exactly, as a new timeline.
            as_model: the name to restore under (default: ``model``).
            replace: replace a loaded model of that name; it keeps serving until the restored one
                is complete. Without it, restoring over an existing model raises ``AlreadyExists``.

        Returns:
            the restored model's description. A corrupt snapshot raises :class:`~optsidecar.DataLoss`.
        """
        target = as_model or model
        action = f"restore model {model!r}" + (f" snapshot {id}" if id else "") + (
            f" as {target!r}" if target != model else "")
        return self._unary(self._stub.Restore,
                           pb.RestoreRequest(model=model, id=id, as_model=as_model, replace=replace), action,
                           timeout=None)

    def fork(self, model: str, new_model: str,
             schedule: Union[None, Mapping[str, Any], pb.Schedule] = None) -> pb.ModelInfo:
        """Copies ``model`` with all its optimizer state and counters into a new model
        ``new_model``: a branch that steps exactly as the source would from here.

        Args:
            schedule: the branch's lr schedule from the current position on (the schedule step
                carries over), e.g. ``dict(type="wsd", ...)`` for a cooldown that starts now; None
                keeps the source's.

        Returns:
            the new model's description.
        """
        request = pb.ForkRequest(model=model, new_model=new_model)
        if schedule is not None:
            request.schedule.CopyFrom(make_schedule(schedule))
        return self._unary(self._stub.Fork, request, f"fork model {model!r} into {new_model!r}", timeout=None)

    def export(self, model: str, view: ViewLike = None) -> pb.ExportInfo:
        """Writes one view of ``model``'s weights as a safetensors file, for deployment. An export
        holds no optimizer state and cannot be resumed (a snapshot can).

        Args:
            view: ``"eval"``, ``"train"``, ``"ema:0.999"``, ...; None means the eval view, or the
                train view for an algorithm without one.

        Returns:
            its ``ExportInfo``: ``path`` (relative to the server's state directory, e.g.
            ``exports/MODEL/v30-eval.safetensors``), ``version``, ``view`` and ``bytes``.
        """
        request = pb.ExportRequest(model=model, view=pb.View() if view is None else make_view(view))
        action = f"export model {model!r}" + ("" if view is None else f" view {view_name(request.view)}")
        return self._unary(self._stub.Export, request, action, timeout=None)

    # -- register ------------------------------------------------------------------------------

    def register(self, spec: pb.ModelSpec, weights: Sequence[Any],
                 state: Iterable[StateBuffer] = ()) -> pb.ModelInfo:
        """Registers a model and uploads its initial weights.

        Args:
            spec: the model: named tensors with shapes, parameter groups, optimizer configuration;
                to restore a saved run, ``spec.state`` carries its counters.
            weights: one tensor or array per tensor of the spec, in order.
            state: saved optimizer state buffers (with ``spec.state``); slots not sent start as a
                fresh model's would.

        Returns:
            the server's description of the new model.
        """
        numels = [_numel(t) for t in spec.tensors]
        if len(weights) != len(numels):
            raise ValueError(f"spec has {len(numels)} tensors but {len(weights)} initial weights were given")
        for i, (w, n) in enumerate(zip(weights, numels)):
            if numel_of(w) != n:
                raise ValueError(f"initial weights of tensor {spec.tensors[i].name!r} (index {i}) have "
                                 f"{numel_of(w)} elements; its shape {list(spec.tensors[i].shape)} has {n}")
        state = list(state)
        for buffer in state:
            if not 0 <= buffer.tensor < len(numels):
                raise ValueError(f"state buffer {buffer.slot!r}: tensor index {buffer.tensor} out of range")
            if numel_of(buffer.data) != numels[buffer.tensor]:
                raise ValueError(f"state buffer {buffer.slot!r} of tensor {spec.tensors[buffer.tensor].name!r} has "
                                 f"{numel_of(buffer.data)} elements; the tensor has {numels[buffer.tensor]}")

        def requests() -> Iterator[Any]:
            # Each tensor is converted only when its turn comes, so at most one extra copy exists.
            yield pb.RegisterRequest(spec=spec)
            for index, w in enumerate(weights):
                for offset, data in chunks(source_array(w)):
                    yield wire.register_weights_chunk(index, offset, data)
            for buffer in state:
                for offset, data in chunks(source_array(buffer.data)):
                    yield wire.register_state_chunk(buffer.tensor, buffer.slot, offset, data)

        try:
            return self._register(requests())
        except grpc.RpcError as e:
            raise from_rpc_error(e, f"register model {spec.name!r}", self.target) from None

    # -- add tensors ---------------------------------------------------------------------------

    def add_tensors(self, model: str, tensors: Sequence[Tuple[str, Sequence[int]]], group: str,
                    hyperparameters: Mapping[str, Any], weights: Sequence[Any]) -> pb.ModelInfo:
        """Adds tensors to a registered model as a new parameter group, as torch's
        ``add_param_group`` does (e.g. unfreezing a backbone).

        The new tensors come after the model's, with fresh optimizer state; the model's weights,
        state, counters and trainers' sequence numbers carry over. Step streams open on the model
        end with :class:`~optsidecar.errors.ModelChanged`: their trainers open new ones, with a
        gradient (or None) for every tensor. With ``--state-dir`` the server snapshots the model
        before answering.

        Args:
            model: the model's name.
            tensors: the new tensors as ``(name, shape)``; no name may be one of the model's. A
                scalar (shape ``()``) is sent as shape ``[1]``.
            group: the new group's name, one the model does not have.
            hyperparameters: the group's overrides of the model's hyperparameters (e.g. ``lr``).
            weights: the new tensors' initial values, one tensor or array per tensor, in order.

        Returns:
            the extended model's description.
        """
        specs = [pb.TensorSpec(name=name, shape=[int(d) for d in shape] or [1]) for name, shape in tensors]
        if len(weights) != len(specs):
            raise ValueError(f"{len(specs)} tensors to add but {len(weights)} initial weights were given")
        for t, w in zip(specs, weights):
            if numel_of(w) != _numel(t):
                raise ValueError(f"initial weights of tensor {t.name!r} have {numel_of(w)} elements; its shape "
                                 f"{list(t.shape)} has {_numel(t)}")
        action = f"add tensors to model {model!r}"
        spec = pb.AddTensorsSpec(model=model, tensors=specs, group=pb.ParamGroup(
            name=group, hyperparameters=to_struct(hyperparameters, f"param group {group!r}")))
        first = len(self.describe(model).tensors)  # the new tensors' weights are indexed from here

        def requests() -> Iterator[Any]:
            yield pb.AddTensorsRequest(spec=spec)
            for index, w in enumerate(weights):
                for offset, data in chunks(source_array(w)):
                    # AddTensorsRequest.weights has RegisterRequest.weights' field number and type.
                    yield wire.register_weights_chunk(first + index, offset, data)

        try:
            return self._add_tensors(requests())
        except grpc.RpcError as e:
            raise from_rpc_error(e, action, self.target) from None

    # -- pull ----------------------------------------------------------------------------------

    def pull(self, model: str, view: ViewLike, out: Sequence[Any],
             tensors: Optional[Sequence[int]] = None, *, wire_dtype: str = "float32",
             segment: Optional[Segment] = None) -> Weights:
        """Pulls a view's weights into preallocated tensors or arrays, one per model tensor.

        Args:
            model: the model's name.
            view: ``"train"``, ``"eval"``, ``"slow"``, ``"ema"``, ``"ema:DECAY"``, ``"slot:NAME"``
                or a ``View`` message.
            out: destinations (torch tensors on any device, or numpy arrays) with each tensor's
                number of elements; written in place. ``None`` for tensors not pulled.
            tensors: indexes of the tensors to pull (default: all), e.g. for a state slot only
                some parameter groups have.
            wire_dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``: the server sends
                the values rounded to it (nearest even), half the bytes; they are widened into
                ``out``.
            segment: a shared-memory :class:`~optsidecar.shm.Segment` for the model: the server
                writes the view into its weights regions, and from there it is copied into ``out``
                (nothing is copied for a destination that is the region itself).

        Returns:
            the view (as the server labels it) and the model version the weights belong to.
        """
        request = pb.PullRequest(model=model, view=make_view(view), tensors=list(tensors or []),
                                 wire_dtype=WIRE_DTYPES[check_wire_dtype(wire_dtype)])
        action = f"pull view {view_name(request.view)} of model {model!r}"
        if segment is not None:
            request.shared.CopyFrom(segment.message())
            request.wire_dtype = pb.WIRE_FLOAT32  # the segment holds float32
            try:
                replies = list(self._pull(request))
            except grpc.RpcError as e:
                raise from_rpc_error(e, action, self.target) from None
            if len(replies) != 1 or replies[0].data.nbytes:
                raise ProtocolError(f"{action}: expected one chunk without data for a pull into shared memory")
            copy_from_segment(segment, [None if t is None else as_destination(t) for t in out],
                              list(tensors or range(len(out))))
            return Weights(replies[0].view, replies[0].version)
        sink = _Sink([None if t is None else as_destination(t) for t in out], wire_dtype)
        try:
            for chunk in self._pull(request):
                sink.accept(chunk)
        except grpc.RpcError as e:
            raise from_rpc_error(e, action, self.target) from None
        return sink.finish(action)

    # -- step ----------------------------------------------------------------------------------

    def step_stream(self, model: str, client_id: Optional[str] = None, *,
                    retry_for: float = DEFAULT_RETRY_SECONDS, base_version: Optional[int] = None,
                    wire_dtype: str = "float32") -> "StepStream":
        """Opens a trainer's :class:`StepStream` for ``model`` (the stream itself opens lazily; see
        :meth:`StepStream.open`).

        Args:
            client_id: identifies the trainer; a new one is made up if None. Under a client id the
                server already knows for this model, steps continue from its last step.
            retry_for: seconds a step is retried while the server is unavailable (0: never).
            base_version: the version of the weights the first gradient will be computed at;
                None takes the model's current version (right for weights just registered or
                pulled; after a pull, pass the version :meth:`pull` returned).
            wire_dtype: the stream's element type both ways (see :class:`StepStream`).
        """
        check_wire_dtype(wire_dtype)
        info = self.describe(model)
        client_id = client_id or f"py-{uuid.uuid4().hex[:12]}"
        return StepStream(self, model, client_id, [t.numel for t in info.tensors],
                          next_step_id=next_step_id(info, client_id), retry_for=retry_for,
                          base_version=info.version if base_version is None else base_version,
                          wire_dtype=wire_dtype)

    # -- connection ----------------------------------------------------------------------------

    def wait_for_connection(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for the server to answer; True if it does.

        After the server went away, gRPC retries the connection with a backoff (at most 0.25 s
        here) and fails calls at once in between; waiting lets a call see a server that is back.
        A List call that waits for the connection does it (grpc's connectivity watchers race
        with closing the channel in grpcio 1.51); it costs one round trip when the server is up.
        A connection whose server died while no call was using it is found dead only by the next
        call, which fails with UNAVAILABLE however long it may wait; the call is then made again.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                self._stub.List(pb.ListRequest(), timeout=max(0.001, deadline - time.monotonic()),
                                wait_for_ready=True)
                return True
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + 0.02 >= deadline:
                    return False
            time.sleep(0.02)

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the channel; calls in progress are cancelled."""
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def next_step_id(info: pb.ModelInfo, client_id: str) -> int:
    """The sequence number client ``client_id``'s next step on the described model must carry:
    one past the last step the server applied for it (its ledger, ``info.state.clients``), or 1
    for a client the model does not know."""
    for progress in info.state.clients:
        if progress.client_id == client_id:
            return progress.last_step_id + 1
    return 1


def _numel(tensor: pb.TensorSpec) -> int:
    n = 1
    for d in tensor.shape:
        n *= d
    return n


def copy_from_segment(segment: Segment, destinations: Sequence[Optional[Destination]], indices: Iterable[int]) -> None:
    """Copies the weights regions of ``indices`` into their destinations (skipping a destination
    that is the region itself)."""
    for i in indices:
        d = destinations[i]
        if d is None:
            continue
        region = segment.weights(i)
        if not same_memory(d.array, region):
            d.array[:] = region
        d.commit()


def copy_into_segment(value: Any, region: Any) -> None:
    """Copies a tensor or array into a segment region, unless it is that region."""
    source = source_array(value)
    if not same_memory(source, region):
        region[:] = source


class _Sink:
    """Copies received chunks into their destinations and checks that they cover one view of one
    version completely; with ``fingerprint``, also fingerprints the pieces each chunk fills."""

    def __init__(self, destinations: List[Optional[Destination]], wire_dtype: str = "float32",
                 fingerprint: bool = False):
        self.destinations = destinations
        self.wire_dtype = wire_dtype
        self.fingerprint = fingerprint and FINGERPRINTS_ARE_CRC32C
        self._pieces: Dict[int, Dict[int, int]] = {}
        self.element_bytes = 4 if wire_dtype == "float32" else 2
        self.expected = sum(d.numel for d in destinations if d is not None)
        self.received = 0
        self.view: Optional[pb.View] = None
        self.version = -1

    def accept(self, chunk: wire.ReceivedChunk) -> None:
        if chunk.tensor >= len(self.destinations) or self.destinations[chunk.tensor] is None:
            raise ProtocolError(f"server sent tensor {chunk.tensor}, which has no destination")
        if self.view is None:
            self.view, self.version = chunk.view, chunk.version
        elif chunk.view != self.view or chunk.version != self.version:
            raise ProtocolError("weights chunks mix views or versions")
        destination = self.destinations[chunk.tensor]
        count = chunk.data.nbytes // self.element_bytes
        if chunk.data.nbytes % self.element_bytes or chunk.offset + count > destination.numel:
            raise ProtocolError(f"chunk for tensor {chunk.tensor} at offset {chunk.offset} with "
                                f"{chunk.data.nbytes} bytes does not fit its {destination.numel} elements")
        destination.write(chunk.offset, chunk.data, self.wire_dtype)
        self.received += count
        if self.fingerprint and not destination.staged:
            self._fingerprint_pieces(chunk.tensor, destination, chunk.offset, count)

    def _fingerprint_pieces(self, tensor: int, destination: Destination, offset: int, count: int) -> None:
        """Fingerprints the pieces of the destination that ``[offset, offset + count)`` filled
        whole, while they are in cache; a piece filled by parts of several chunks is left out."""
        per_piece = PIECE_BYTES // 4
        pieces = self._pieces.setdefault(tensor, {})
        for k in range(-(-offset // per_piece), -(-destination.numel // per_piece)):
            start, stop = k * per_piece, min((k + 1) * per_piece, destination.numel)
            if stop > offset + count:
                break
            pieces[k], = piece_fingerprints(memoryview(destination.array[start:stop]).cast("B"))

    def fingerprints(self) -> Dict[int, Tuple[int, ...]]:
        """The fingerprints of the destinations whose every piece was filled whole by one chunk."""
        per_piece = PIECE_BYTES // 4
        out = {}
        for tensor, pieces in self._pieces.items():
            count = -(-self.destinations[tensor].numel // per_piece)
            if len(pieces) == count:
                out[tensor] = tuple(pieces[k] for k in range(count))
        return out

    def finish(self, action: str) -> Weights:
        if self.received != self.expected:
            raise ProtocolError(f"{action}: received {self.received} of {self.expected} values")
        for d in self.destinations:
            if d is not None:
                d.commit()
        return Weights(self.view if self.view is not None else pb.View(), self.version)


class _ClosedStream(grpc.RpcError):
    """The server ended a Step stream without an error while a step was waiting for its reply."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the server closed the Step stream"


_END = object()  # ends a request iterator


class _LiveStream:
    """One open Step call: a bounded outbox that grpc's sending thread drains, and the replies."""

    #: Requests queued ahead of the transport: a few chunks, so memory stays bounded.
    OUTBOX = 4

    def __init__(self, step_method, open_request: pb.StepRequest):
        self.outbox: "queue.Queue[Any]" = queue.Queue(maxsize=self.OUTBOX)
        self.outbox.put(open_request)
        self.call = step_method(self._requests())
        self.broken = False
        #: The doorbell carrying this stream's commits and results, when one attached.
        self.doorbell: Optional[Doorbell] = None

    def _requests(self) -> Iterator[Any]:
        while True:
            item = self.outbox.get()
            if item is _END:
                return
            yield item

    def send(self, request: Any) -> None:
        """Queues a request, waiting while the outbox is full; stops if the call has ended. (A
        request queued on a call that has just ended is not lost unnoticed: the reply it waits
        for never comes, and :meth:`receive` raises the call's end instead.)"""
        while True:
            try:
                # The call's state is looked at only while waiting: it takes a lock grpc's own
                # threads contend for, once per chunk otherwise.
                self.outbox.put(request, timeout=0.05)
                return
            except queue.Full:
                if self.call.done():
                    raise self.call if self.call.code() != grpc.StatusCode.OK else _ClosedStream()

    def receive(self) -> Any:
        try:
            return next(self.call)
        except StopIteration:
            raise _ClosedStream() from None

    def _end_requests(self) -> None:
        # Wake grpc's sending thread if it waits for a request, so it can finish.
        while True:
            try:
                self.outbox.put_nowait(_END)
                return
            except queue.Full:
                try:
                    self.outbox.get_nowait()
                except queue.Empty:
                    pass

    def close(self, wait: float = 5.0) -> None:
        """Half-closes the stream; the server ends it once nothing is pending."""
        self._close_doorbell()
        self._end_requests()
        finished = threading.Event()
        self.call.add_done_callback(lambda _: finished.set())
        if not finished.wait(wait):
            self.call.cancel()

    def abandon(self) -> None:
        """Cancels the call: the server drops any uncommitted step, and nothing changes."""
        self.broken = True
        self._close_doorbell()
        self.call.cancel()
        self._end_requests()

    def commit_without_chunks(self, commit: pb.StepCommit, action: str) -> pb.StepResult:
        """Commits a step whose data is outside the stream (a segment, device buffers) and returns
        its result: over the doorbell when one attached, else on the stream."""
        if self.doorbell is not None:
            reply = self.doorbell.commit(commit)
        else:
            self.send(pb.StepRequest(commit=commit))
            reply = self.receive()
        if isinstance(reply, wire.ReceivedChunk):
            raise ProtocolError(f"{action}: the server streamed weights for a step whose data is outside the stream")
        if reply.step_id != commit.step_id:
            raise ProtocolError(f"{action}: server answered step {reply.step_id}")
        return reply

    def _close_doorbell(self) -> None:
        if self.doorbell is not None:
            self.doorbell.close()
            self.doorbell = None


class StepStream:
    """One trainer's Step stream: :meth:`step` streams a gradient set, commits it, and copies the
    returned weights into the caller's tensors.

    Steps are synchronous and exactly-once. Each carries the stream's ``client_id`` and a sequence
    number (:attr:`next_step_id`, growing by one per step). When a step fails because the server
    is unavailable (it is restarting, the connection dropped, or a shutdown ended the stream), the
    same step, with the same sequence number and gradients, is sent again on a fresh stream, with
    a growing random pause in between (exponential backoff with full jitter: up to 50 ms, doubling
    to at most 2 s), until it is answered or ``retry_for`` seconds have passed; then it raises
    ``ServerUnavailable``. The ``optsidecar`` logger notes, once each, when a step starts being
    retried (WARNING) and when the server answers again (INFO). A server that applied the step before the failure answers
    the retry from its ledger (``replayed=True``) and sends the current weights, so the step
    counts once either way. Other errors are raised at once and never retried.

    **Base version.** Each step tells the server the version of the weights its gradient was
    computed at: :attr:`base_version`, which every step returning the train view sets to the
    version of the weights it wrote into ``out`` (after a retry answered from the ledger, or a
    late sync contribution, those are the current weights). Weights taken from elsewhere (a
    :meth:`Client.pull`) must be announced by setting :attr:`base_version` to the version the pull
    returned. With ``base_version=None`` (the default of a stream made directly) steps carry none
    until the first train weights arrive, and the server takes each gradient as current.

    Not thread-safe: one StepStream per training thread.

    Args:
        client: the :class:`Client`.
        model: the model's name.
        client_id: identifies the trainer to the server.
        numels: the number of elements of each model tensor, in order.
        next_step_id: the sequence number of the first step. Under a client id the model already
            knows, it must be past that client's last applied step (:func:`next_step_id` reads it
            from Describe; :meth:`Client.step_stream` does so).
        retry_for: seconds a step is retried while the server is unavailable; 0 never retries.
        base_version: the version of the weights the first gradient is computed at (None: send none).
        wire_dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``: gradients (and
            weights set) are sent rounded to it, to nearest even, and the returned weights arrive
            as the server's float32 weights rounded to it, widened into ``out``: half the bytes
            each way, while the server keeps float32 weights and optimizer state (mixed-precision
            training's master weights). A float16 gradient past ±65504 becomes ±Inf and is
            refused (or skipped) as non-finite.
        segment: a shared-memory segment the stream's data goes through instead of chunks.
        doorbell_path: with a segment, the server's doorbell socket as this process sees it
            (``ServerInfo.doorbell_socket`` in its ``shm_dir``): commits and results then go over
            it instead of through grpc.
    """

    #: Longest pause before the first retry of a step, doubled after each failure up to
    #: ``MAX_PAUSE``; each pause is drawn uniformly below it (full jitter), so that trainers cut
    #: off by the same restart do not all come back at the same instant.
    FIRST_PAUSE = 0.05
    MAX_PAUSE = 2.0

    def __init__(self, client: Client, model: str, client_id: str, numels: Sequence[int], *,
                 next_step_id: int = 1, retry_for: float = DEFAULT_RETRY_SECONDS,
                 base_version: Optional[int] = None, wire_dtype: str = "float32",
                 segment: Optional[Segment] = None, doorbell_path: Optional[str] = None):
        if retry_for < 0:
            raise ValueError(f"retry_for must be 0 or more seconds, not {retry_for}")
        self.client = client
        self.model = model
        self.client_id = client_id
        self.numels = list(numels)
        #: The element type of the stream's chunks, both ways.
        self.wire_dtype = check_wire_dtype(wire_dtype)
        #: The sequence number the next step will carry.
        self.next_step_id = next_step_id
        #: Seconds a step is retried while the server is unavailable (0: never).
        self.retry_for = retry_for
        #: Attempts made again after the server was unavailable, over the stream's life.
        self.retries = 0
        #: The version of the weights the next gradient is computed at, sent with each step (None:
        #: none is sent). Steps that return the train view set it; set it after pulling weights.
        self.base_version = base_version
        #: The shared-memory segment the stream's data goes through (None: chunks): gradients
        #: (or weights to set) are copied into it unless they are its regions already, and the
        #: returned view is copied out of it unless the destinations are its regions.
        self.segment = segment
        #: The server's doorbell socket as this process sees it (None: none): with a segment, the
        #: stream's commits and results go over it, not through grpc (see :mod:`optsidecar.doorbell`).
        self.doorbell = doorbell_path
        #: The trainer's device buffers (a :class:`~optsidecar.cuda_ipc.DeviceSegment`) the server
        #: maps through CUDA IPC (None: not used): the data never leaves the GPU.
        self.device_segment: Any = None
        self._live: Optional[_LiveStream] = None
        self._failed = False
        #: True after a step failed while its weights were arriving: the destinations may hold a
        #: mix of old and new values until the next successful step or pull.
        self.partial_weights = False
        #: Fingerprint weights as their chunks arrive (see :attr:`received_fingerprints`).
        self.fingerprint_received = False
        #: After a step that received weights in chunks, with :attr:`fingerprint_received`: for
        #: each destination that is a CPU float32 tensor's own memory and was filled by whole
        #: 1 MiB pieces, its :func:`~optsidecar.fingerprints.piece_fingerprints`, computed from
        #: each chunk right after it was written, while in cache (the parameters need no pass of
        #: their own to be recorded).
        self.received_fingerprints: Dict[int, Tuple[int, ...]] = {}

    def open(self) -> "StepStream":
        """Opens the Step stream now rather than at the first step: from then on the server counts
        this trainer as attached to the model (a sync step with ``k=0`` waits for every attached
        trainer). See :meth:`Client.wait_for_trainers` to know when the server has seen it."""
        self._open()
        return self

    def step(self, grads: Sequence[Any], out: Optional[Sequence[Any]] = None, *,
             view: ViewLike = None, group_lr: Optional[Mapping[str, float]] = None,
             base_version: Optional[int] = None,
             group_hyperparameters: Optional[Mapping[str, Mapping[str, Any]]] = None,
             kind: str = "gradient", weights_view: ViewLike = None,
             figures: Optional[Mapping[str, float]] = None,
             weights_crc32c: Optional[Sequence[int]] = None) -> StepFigures:
        """Applies one step, exactly once.

        Args:
            grads: one gradient per model tensor (torch tensor or numpy array with the tensor's
                number of elements), or None for a tensor without a gradient this step (it is
                skipped: its weights, state and step count do not change). They must not change
                until the step returns: a retry sends them again.
            out: destinations for the returned view, one per model tensor; None with view "none".
            view: the view to return (default train); ``"none"`` returns figures only.
            group_lr: new base learning rates by group name, from this step on.
            base_version: the version of the weights the gradients were computed at; None sends
                :attr:`base_version`.
            group_hyperparameters: hyperparameter changes by group name, from this step on, e.g.
                ``{"group0": {"betas": [0.85, 0.999], "weight_decay": 0.05}}`` (names as the
                group's ``hyperparameters`` list them; ``lr`` goes in ``group_lr`` or here, not both).
            kind: ``"gradient"``, or ``"set_weights"``: ``grads`` then holds new weights for the
                tensors it covers (None keeps a tensor's), which replace the model's while its
                optimizer state is kept (see :meth:`set_weights`).
            weights_view: with ``kind="set_weights"``: ``"train"`` (default) or ``"eval"``
                (Schedule-Free: the weights are x, and the server computes y from them).
            figures: named scalars to report with this step (``{"loss": 0.3}``), kept by the
                server with the version it makes (see :meth:`Client.figures`).
            weights_crc32c: over a shared segment, the CRC-32C of each 1 MiB piece of its
                weights regions as last recorded (``StepResult.weights_crc32c``): the server
                checks the segment against them first and fails the step with
                ``FailedPrecondition`` (reason ``WEIGHTS_EDITED``, metadata ``tensors``) if the
                weights were written since, applying nothing.

        Returns:
            the step's :class:`~optsidecar.results.StepFigures` (``replayed`` when the server had
            applied it already, before a retry; ``late``, ``staleness``, ``lr_scale`` and
            ``contributions`` when several trainers share the model).

        Raises:
            StaleGradient: asynchronous mode with the reject policy: the gradient was computed
                more than the model's ``max_staleness`` versions ago. Nothing was applied; pull
                the current weights, set :attr:`base_version` and compute the gradient again.
        """
        if kind not in _STEP_KINDS:
            raise ValueError(f"kind must be one of {sorted(_STEP_KINDS)}, not {kind!r}")
        if weights_view is not None and kind != "set_weights":
            raise ValueError("weights_view applies to kind='set_weights' only")
        both = sorted(set(group_lr or {}) & {g for g, values in (group_hyperparameters or {}).items() if "lr" in values})
        if both:
            raise ValueError(f"group_lr and group_hyperparameters both set the lr of {both}; give it in one of them")
        if len(grads) != len(self.numels):
            raise ValueError(f"model {self.model!r} has {len(self.numels)} tensors but {len(grads)} gradients "
                             f"were given")
        for i, g in enumerate(grads):
            if g is not None and numel_of(g) != self.numels[i]:
                raise ValueError(f"gradient {i} of model {self.model!r} has {numel_of(g)} elements; the tensor "
                                 f"has {self.numels[i]}")
        requested = make_view(view)
        destinations: Optional[List[Destination]] = None
        if requested.kind != pb.VIEW_NONE:
            if out is None or len(out) != len(self.numels):
                raise ValueError(f"out must hold one destination per model tensor ({len(self.numels)})")
            destinations = [as_destination(t) for t in out]
            for i, d in enumerate(destinations):
                if d.numel != self.numels[i]:
                    raise ValueError(f"destination {i} has {d.numel} elements; the tensor has {self.numels[i]}")

        step_id = self.next_step_id
        self.next_step_id += 1
        commit = pb.StepCommit(step_id=step_id, view=requested,
                               no_grad=[i for i, g in enumerate(grads) if g is None],
                               group_lr=dict(group_lr or {}), kind=_STEP_KINDS[kind],
                               weights_view=make_view(weights_view).kind if weights_view is not None else 0)
        for group, values in (group_hyperparameters or {}).items():
            commit.group_hyperparameters[group].CopyFrom(to_struct(values, f"group_hyperparameters[{group!r}]"))
        commit.figures.update(check_figures(figures or {}))
        commit.weights_crc32c.extend(weights_crc32c or ())
        computed_at = self.base_version if base_version is None else base_version
        if computed_at is not None:
            commit.base_version = int(computed_at)
        action = f"step {step_id} of model {self.model!r}"
        if self._failed and self._live is None and not self.retry_for:
            # The last step failed, perhaps because the server went away: give the connection a
            # moment to come back; if it does not, the attempt below fails with UNAVAILABLE.
            self.client.wait_for_connection(self.client.connect_timeout)
        started = time.monotonic()
        deadline = started + self.retry_for
        ceilings = backoff_ceilings(self.FIRST_PAUSE, self.MAX_PAUSE)
        retried = 0
        while True:
            try:
                figures = self._attempt(step_id, grads, commit, destinations, action)
                if figures.weights_version is not None and requested.kind in (pb.VIEW_KIND_UNSPECIFIED, pb.VIEW_TRAIN):
                    self.base_version = figures.weights_version
                if retried:
                    log.info("%s: the server at %s answered again after %d retries (%.1f s)", action,
                             self.client.target, retried, time.monotonic() - started)
                return figures
            except ServerUnavailable as e:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                if not retried:
                    log.warning("%s; retrying for up to %g s", e, self.retry_for)
            # The server is restarting or the connection broke: send the same step again, on a
            # fresh stream (the failed one was cancelled), once the server answers.
            time.sleep(min(random.uniform(0, next(ceilings)), remaining))
            self.client.wait_for_connection(max(0.0, deadline - time.monotonic()))
            self.retries += 1
            retried += 1

    def set_weights(self, weights: Sequence[Any], out: Optional[Sequence[Any]] = None, *, view: ViewLike = "none",
                    weights_view: ViewLike = None, base_version: Optional[int] = None,
                    group_hyperparameters: Optional[Mapping[str, Mapping[str, Any]]] = None) -> StepFigures:
        """Replaces the weights of the tensors ``weights`` covers (None keeps a tensor's), exactly
        once, as a step of its own: the trainer changed them outside the optimizer (loaded
        pretrained weights, projected or pruned them). The optimizer state is kept, as torch keeps
        it. It counts as a version. By default no weights come back (``view="none"``): the
        trainer has them already.

        Args:
            weights_view: ``"train"`` (default: the weights replace the train weights) or
                ``"eval"`` (Schedule-Free: they are x, and the server computes y from them).
        """
        return self.step(weights, out, view=view, base_version=base_version, kind="set_weights",
                         weights_view=weights_view, group_hyperparameters=group_hyperparameters)

    def _attempt(self, step_id: int, grads: Sequence[Any], commit: pb.StepCommit,
                 destinations: Optional[List[Destination]], action: str) -> StepFigures:
        """Sends the step once on the open stream (or a new one) and reads its reply."""
        # A new sink per attempt: a retry receives every value again, into the same destinations.
        sink = _Sink(destinations, self.wire_dtype, self.fingerprint_received) if destinations is not None else None
        self.received_fingerprints = {}
        live = self._open()
        if self.device_segment is not None:
            from . import cuda_ipc

            return cuda_ipc.attempt(self, live, grads, commit, destinations, action)
        if self.segment is not None:
            return self._attempt_shared(live, grads, commit, destinations, action)
        try:
            for index, g in enumerate(grads):
                if g is not None:
                    # Sliced from the gradient itself (converted once if it is not CPU float32;
                    # rounded chunk by chunk to a 16-bit wire type).
                    for offset, data in wire_chunks(g, self.wire_dtype):
                        live.send(wire.gradient_chunk(step_id, index, offset, data))
            live.send(pb.StepRequest(commit=commit))
            while True:
                reply = live.receive()
                if isinstance(reply, wire.ReceivedChunk):
                    if sink is None:
                        raise ProtocolError(f"{action}: server sent weights for a step that asked for none")
                    self.partial_weights = True
                    sink.accept(reply)
                    continue
                if reply.step_id != step_id:
                    raise ProtocolError(f"{action}: server answered step {reply.step_id}")
                weights_version = None
                if sink is not None:
                    received = sink.finish(action)
                    weights_version = received.version if received.version >= 0 else reply.version
                    self.received_fingerprints = sink.fingerprints()
                self.partial_weights = False
                self._failed = False
                return StepFigures.from_proto(reply, weights_version)
        except grpc.RpcError as e:
            self._drop(live)
            raise from_rpc_error(e, action, self.client.target) from None
        except BaseException:
            # Includes KeyboardInterrupt: a half-sent step must be abandoned, never resumed.
            self._drop(live)
            raise

    def _attempt_shared(self, live: _LiveStream, grads: Sequence[Any], commit: pb.StepCommit,
                        destinations: Optional[List[Destination]], action: str) -> StepFigures:
        """Sends the step once through the segment: only the commit travels."""
        segment = self.segment
        region = segment.weights if commit.kind == pb.STEP_SET_WEIGHTS else segment.gradient

        def put() -> None:
            for index, g in enumerate(grads):
                if g is not None:
                    copy_into_segment(g, region(index))

        return self.attempt_outside(live, commit, destinations, action, put=put,
                                    written=lambda reply: reply.weights_in_segment, where="the segment",
                                    copy_back=lambda: copy_from_segment(segment, destinations, range(len(destinations))))

    def attempt_outside(self, live: _LiveStream, commit: pb.StepCommit, destinations: Optional[Sequence[Any]],
                        action: str, *, put: Callable[[], None], written: Callable[[pb.StepResult], bool],
                        where: str, copy_back: Callable[[], None]) -> StepFigures:
        """One attempt of a step whose data is outside the stream (a segment, device buffers):
        ``put()`` places the data, the commit goes (over the doorbell or the stream), and when the
        step returns weights, which ``written(result)`` says the server put in ``where``,
        ``copy_back()`` brings them into the destinations."""
        try:
            put()
            reply = live.commit_without_chunks(commit, action)
            weights_version = None
            if destinations is not None:
                if not written(reply):
                    raise ProtocolError(f"{action}: the server did not write the weights into {where}")
                self.partial_weights = True
                copy_back()
                weights_version = reply.weights_version
            self.partial_weights = False
            self._failed = False
            return StepFigures.from_proto(reply, weights_version)
        except grpc.RpcError as e:
            self._drop(live)
            raise from_rpc_error(e, action, self.client.target) from None
        except BaseException:
            self._drop(live)
            raise

    def _open(self) -> _LiveStream:
        if self._live is not None and not self._live.broken and self._live.call.done():
            # The server ended the stream between steps (an idle stream past its timeout, a
            # shutdown): nothing is pending on it, so a new one takes over.
            ended = self._forget()
            ended.abandon()
            if error_details(ended.call)[0] == "MODEL_CHANGED":
                # The model's tensors changed: a step with a gradient per old tensor no longer fits.
                raise from_rpc_error(ended.call, f"step stream of model {self.model!r}", self.client.target)
        if self._live is None or self._live.broken:
            request = pb.StepRequest(open=pb.StepOpen(model=self.model, client_id=self.client_id))
            if self.device_segment is not None:  # float32 on the device: the wire type is the chunks'
                request.open.cuda_ipc.CopyFrom(self.device_segment.message())
            elif self.segment is not None:  # a segment holds float32: the wire type is the chunks'
                request.open.shared.CopyFrom(self.segment.message())
            else:
                request.open.wire_dtype = WIRE_DTYPES[self.wire_dtype]
            # Data outside the stream: the commits and results may take the doorbell too.
            outside = self.device_segment is not None or self.segment is not None
            secret = os.urandom(32) if self.doorbell and outside else None
            if secret is not None:
                request.open.doorbell_secret = secret
            self._live = _LiveStream(self.client._step, request)
            if secret is not None:
                self._live.doorbell = self._ring(secret)
            # A StepStream dropped without close() must not leave its call (and grpc's sending
            # thread, waiting for requests) behind.
            self._finalizer = weakref.finalize(self, _LiveStream.abandon, self._live)
        return self._live

    def _ring(self, secret: bytes) -> Optional[Doorbell]:
        """Attaches a doorbell to the new stream; a server that restarted has a socket of another
        name in the same directory, which ServerInfo gives."""
        line = connect_doorbell(self.doorbell, secret, self._live.call)
        if line is None and not self._live.call.done():
            try:
                name = self.client.server_info().doorbell_socket
            except OptSidecarError:
                return None
            moved = os.path.join(os.path.dirname(self.doorbell), name) if name else None
            if moved != self.doorbell:
                self.doorbell = moved
                line = connect_doorbell(self.doorbell, secret, self._live.call)
        return line

    def _forget(self) -> Optional[_LiveStream]:
        live, self._live = self._live, None
        if live is not None:
            self._finalizer.detach()
        return live

    def _drop(self, live: _LiveStream) -> None:
        self._failed = True
        live.abandon()
        if self._live is live:
            self._forget()

    def close(self) -> None:
        """Ends the stream cleanly (the server drops nothing: no step is pending between steps)."""
        live = self._forget()
        if live is not None:
            live.close()

    def __enter__(self) -> "StepStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

