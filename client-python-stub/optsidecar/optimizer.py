"""``RemoteOptimizer``: a torch optimizer whose parameters and state live on an optsidecar server."""

from __future__ import annotations

import atexit
import copy
import logging
import os
import socket
import threading
import uuid
import warnings
import weakref
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

try:
    import torch
except ImportError as e:  # the Client works without torch; RemoteOptimizer is a torch optimizer
    raise ImportError("RemoteOptimizer needs torch, which is not installed: pip install optsidecar[torch] "
                      "(the Client works without it)") from e
from google.protobuf import json_format

from .buffers import Destination, check_wire_dtype
from .checkpoint import ServerState, capture, restore
from .client import DEFAULT_RETRY_SECONDS, Client, StepStream, next_step_id
from .edits import ParameterEdits, WeightsPush
from .fingerprints import pieces_of
from .errors import (AlreadyExists, FailedPrecondition, InvalidArgument, ModelChanged, NotFound, OptSidecarError,
                     PermissionDenied, StaleGradient)
from .live_hyperparameters import LiveHyperparameters, normalized
from .param_groups import add_group, parse_new_group
from .param_state import ParameterState
from .params import ParsedGroup, parse_params
from .cuda_ipc import DeviceDestination, DeviceSegment, probe, unavailable_reason
from .device_staging import HostStaging, SegmentStaging, is_cuda, synchronize
from .shared_params import SharedParameters
from .shm import (SHM_DIR_ENVIRONMENT_VARIABLE, HandoffRefused, SealedSegment, Segment, sealed_segments_work,
                  usable_directory)
from .figures import check_figures, loss_figure
from .results import CoordinationStatus, StepFigures, VersionContributions, VersionFigures
from .spec import from_struct, model_spec, optimizer_config, tensor_groups
from .torch_format import client_side_entries, from_reference_state_dict, group_entries, reference, tensor_state
from .v1 import optimizer_pb2 as pb

__all__ = ["RemoteOptimizer"]

_LOG = logging.getLogger("optsidecar")
#: How gradients and weights may travel: ``auto`` takes CUDA IPC for CUDA parameters on the
#: server's GPU, else shared memory when the server and this process both can, else gRPC chunks.
_TRANSPORTS = ("auto", "cuda-ipc", "shm", "grpc")
#: Kinds of shared segment (``shm_segment``): see :class:`RemoteOptimizer`.
_SEGMENT_KINDS = ("auto", "sealed", "file")

#: The format of a state dict's ``"optsidecar"`` entry. 3: torch's format with that entry holding
#: the server's extras (a dict). Still loaded, with ``spec``, ``weights`` and ``slots`` at the top
#: level and the format as the entry itself: 2 (each group's counters in ``spec["state"]`` are a
#: ``scalars`` dict) and 1 (they were ``k``, ``weight_sum`` and ``lr_max`` entries of every group).
STATE_DICT_FORMAT = 3
_FORMAT1_SCALARS = ("k", "weight_sum", "lr_max")

#: Grace period of an ephemeral model's lease: the server deletes the model when its optimizer has
#: not renewed the lease for this long (its process died). Renewed every third of it.
DEFAULT_LEASE_SECONDS = 60

#: Where the server is when ``target`` is not given and the environment does not say.
DEFAULT_TARGET = "127.0.0.1:50051"
#: The environment variable naming the server's ``host:port`` when ``target`` is not given.
TARGET_ENVIRONMENT_VARIABLE = "OPTSIDECAR_TARGET"


class _LeaseKeeper:
    """Renews an ephemeral model's lease from a daemon thread every third of its grace period.

    It holds the client and the model's name, not the optimizer, so that the optimizer can still be
    garbage-collected (and its ``__del__`` delete the model) while the thread runs."""

    def __init__(self, client: Client, model: str, lease_seconds: int):
        self._client = client
        self._model = model
        self._interval = lease_seconds / 3.0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"optsidecar-lease-{model}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._client.renew_lease(self._model, timeout=self._interval)
            except Exception:  # noqa: BLE001 - a missed renewal is retried at the next interval
                pass

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=self._interval + 1.0)


#: Live optimizers that own an ephemeral model: deleted at interpreter exit if not closed before.
_EPHEMERAL_OPTIMIZERS: "weakref.WeakSet[RemoteOptimizer]" = weakref.WeakSet()


@atexit.register
def _close_ephemeral_optimizers() -> None:
    for opt in list(_EPHEMERAL_OPTIMIZERS):
        try:
            opt.close()
        except Exception:  # noqa: BLE001 - exiting: the lease expires on the server anyway
            pass


class RemoteOptimizer(torch.optim.Optimizer):
    r"""Runs the optimizer on an optsidecar server: each :meth:`step` streams the parameters'
    gradients to the server, which applies the update to its own copy of the weights and of the
    optimizer state, and writes the new weights back into the parameters.

    It behaves like a ``torch.optim`` optimizer (param groups, ``zero_grad``, closures, lr
    schedulers, ``state_dict``) and, for algorithms with an evaluation point, like schedule_free's
    optimizers (:meth:`train` / :meth:`eval`).

    Args:
        params (iterable): ``model.named_parameters()`` (the names become the server's tensor
            names), an iterable of tensors (named ``p0``, ``p1``, ...), or a list of dicts defining
            parameter groups, whose other keys override hyperparameters for that group (e.g.
            ``{"params": biases, "weight_decay": 0.0}``); groups are named ``group0``, ``group1``, ...
            unless a dict has a ``"name"``.
        lr (float, optional): the learning rate, second positional argument as in ``torch.optim``
            (default: the algorithm's, e.g. 1e-3 for AdamW, 0.0025 for AdamWScheduleFree).
        target (str, keyword-only): ``host:port`` of the server (default: the ``OPTSIDECAR_TARGET``
            environment variable, else ``127.0.0.1:50051``).
        algorithm (str, optional): ``SGD``, ``Adam``, ``AdamW`` (the default), ``RAdam``,
            ``RAdam(torch2.x)``, ``RAdam(original)``, ``SGDScheduleFree``, ``AdamWScheduleFree`` or
            ``RAdamScheduleFree``.
        model (str, optional): the model's name on the server; a unique one is generated if None.
            A generated name makes the model *ephemeral* (see ``ephemeral``); a given name keeps
            it on the server until it is deleted.
        client_id (str, optional): names this trainer to the server (a unique id is made up if
            None). Steps are exactly-once per client id: attaching under the id of an earlier
            trainer of the model continues its sequence numbers.
        attach (bool): continue the existing model ``model`` instead of registering one: its train
            weights are pulled into ``params`` (which must match its tensors' shapes, in order), and
            its parameter groups and hyperparameters apply (passing others is an error).
        schedule (dict, optional): a server-side lr schedule, e.g.
            ``dict(type="cosine", warmup_steps=100, total_steps=10_000)``.
        ema (float, list, optional): EMA shadow weights: a decay, a list of decays, or dicts
            ``{"decay": 0.999, "every": 1}``. The first one is the eval view unless the algorithm
            or Lookahead has its own.
        lookahead (dict, optional): ``dict(k=5, alpha=0.5, pullback_momentum="none")``.
        clip_grad_norm (float): clip each step's gradients to this global L2 norm on the server
            (as ``torch.nn.utils.clip_grad_norm_`` before ``step()``); 0 disables.
        report_update_norm (bool): report ``|θ_new − θ_old|`` in :attr:`last_result`.
        non_finite (str, optional): ``"reject"`` (default: the step raises ``InvalidArgument``) or
            ``"skip"`` (the step is acknowledged as skipped and changes nothing) for NaN/Inf gradients.
        coordination (dict, optional): how several trainers share the model, when registering it:
            ``dict(mode="sync", k=0, combine="mean", timeout_ms=0, min_k=0)`` or
            ``dict(mode="async", max_staleness=0, stale="reject")`` (``"downweight"``); see
            below. None: asynchronous without a staleness bound.
        client (Client, optional): an existing :class:`~optsidecar.Client` to use instead of
            connecting to ``target``.
        tls_ca, tls_cert, tls_key, token (str, keyword-only): TLS (on when a CA file is given),
            a client certificate and key for mutual TLS, a bearer token; each None is taken from
            ``OPTSIDECAR_TLS_CA``, ``OPTSIDECAR_TLS_CERT``, ``OPTSIDECAR_TLS_KEY``,
            ``OPTSIDECAR_TOKEN`` (see :class:`~optsidecar.Client`).
        retry_for (float): seconds a step is retried while the server is unavailable (restarting,
            connection dropped), default 60; 0 raises ``ServerUnavailable`` at once. See below.
        ephemeral (bool, optional): register the model with a lease: a daemon thread renews it
            every ``lease_seconds / 3`` while the optimizer lives, :meth:`close` (also on garbage
            collection and at interpreter exit) deletes the model, and if the process dies the
            server deletes it once ``lease_seconds`` pass without a renewal. Default: True for an
            auto-named model, False for a named one. With ``attach=True`` the optimizer renews the
            lease of an ephemeral model it attaches to but never deletes it.
        lease_seconds (int): the lease's grace period (default 60).
        transport (str): ``"auto"`` (default): CUDA IPC when the parameters are CUDA float32 on
            the very GPU of a server on the cuda engine, else shared memory when the server offers
            it (``--shm-dir``) and this process sees its directory, else gRPC chunks;
            ``"cuda-ipc"`` or ``"shm"`` (raise ``FailedPrecondition`` when it cannot be used) or
            ``"grpc"``. :attr:`transport` says which was chosen, the ``optsidecar`` logger why.
            Over shared memory CPU parameters and their ``.grad`` are views of the segment (see
            :mod:`optsidecar.shared_params`); over CUDA IPC CUDA parameters and their ``.grad``
            are views of one device buffer the server maps (see :mod:`optsidecar.cuda_ipc`).
            CUDA parameters over chunks or shared memory go through page-locked host memory (see
            :mod:`optsidecar.device_staging`). Over either, each step's commit and result go over
            the server's doorbell socket beside the segments (when this process sees its
            ``--shm-dir``) rather than through grpc (:attr:`doorbell`; see :mod:`optsidecar.doorbell`).
        shm_dir (str, optional): the server's shared-memory directory as this process sees it
            (default: the ``OPTSIDECAR_SHM_DIR`` environment variable, else the server's path).
        shm_segment (str): with shared memory, ``"auto"`` (default): a sealed segment where the
            server takes them (a memfd handed over on its segment socket, which the server maps:
            one copy each way instead of two; Linux), else a segment file in the directory;
            ``"sealed"`` (never a file: without a sealed segment the transport is gRPC, or
            ``FailedPrecondition`` with ``transport="shm"``) or ``"file"``.
        wire_dtype (str): ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``: gradients go
            to the server, and the weights come back into the parameters, rounded to this type
            (nearest even), half the bytes each way; the server keeps float32 weights and
            optimizer state, as mixed-precision training keeps float32 master weights. The
            parameters then hold the server's weights rounded to the type. State dicts and
            checkpoints stay float32. With float16 a gradient past ±65504 is non-finite. It applies
            to gRPC chunks: over shared memory values stay float32 and nothing is rounded.
        **hyperparameters: the algorithm's arguments under torch's and schedule_free's names
            (``lr``, ``betas``, ``eps``, ``weight_decay``, ``momentum``, ``warmup_steps``, ...);
            missing ones take the reference defaults.

    **Learning rate.** Each group's ``param_groups[i]["lr"]`` is its *base* lr and is sent with
    every step, so torch's lr schedulers work as usual. If the model also has a server-side
    ``schedule``, the server multiplies that base lr by the schedule's factor: the two compose.
    Use one or the other unless you mean both. :attr:`last_result` reports the lr actually used.

    **Other hyperparameters** may change between steps too, as in torch (``betas``, ``momentum``,
    ``weight_decay``, ``eps``, ``dampening``, Schedule-Free's ``warmup_steps``, ``r``,
    ``weight_lr_power``, ...; e.g. ``OneCycleLR`` cycling momentum): before each step every
    group's values are compared with the effective ones the server last reported, and those that
    differ are sent with the step and apply from it on. They are journaled and snapshotted with
    the model and shown by Describe; :attr:`last_result` reports each group's effective values
    (``last_result.hyperparameters``). A change that would change the state the group keeps
    (``amsgrad``, SGD's ``momentum`` to or from 0, ...) raises ``InvalidArgument`` naming the
    group and key, and nothing is applied.

    **Edited weights.** Weights the trainer writes into the parameters itself (pretrained weights
    loaded after the optimizer was built, a projection such as ``p.clamp_(-c, c)`` after each
    step, a pruning mask) are never lost: before a step, a switch of view (:meth:`eval`,
    :meth:`train`, :meth:`pull`) and :meth:`snapshot`, :meth:`fork`, :meth:`export` and
    :meth:`state_dict`, the parameters changed since the client last wrote them are sent as one
    set-weights step of their own (the others are left out), which counts as a version and is
    exactly-once like any step; :attr:`last_push` says what was sent. Detected: any in-place write
    through the parameter (it bumps ``p._version``: ``copy_``, ``clamp_``, ``mul_`` under
    ``no_grad``, ``nn.init``, ``model.load_state_dict``), a new tensor set as ``p.data``, and,
    by comparing a CRC32 of the values, writes through ``p.data`` (``p.data.clamp_(...)``), which
    torch does not count (``opt.edits.compare_contents = False`` turns that check off). The
    optimizer state (moments, step counts, Schedule-Free's z, EMA shadows) is kept, as torch
    keeps it. In eval mode on a Schedule-Free model edits are x, sent when switching back to
    train; the server derives y from them as schedule_free's ``train()`` does. Other eval views
    (slow weights, EMA shadows) do not map back to the train weights: edits made there are
    discarded with a warning. :meth:`resync` and :meth:`restore` discard edits too. With several
    trainers, an asynchronous model takes the edit as the last writer's (it replaces those
    tensors whatever the others did); a synchronous one applies it at once as a version of its
    own (the others' gradients for the version it took arrive late), and refuses it
    (``FailedPrecondition``) while a step's contributions are waiting.

    **Exactly-once steps.** A step that fails because the server is unavailable is sent again,
    the same step with the same gradients, until the server answers or ``retry_for`` runs out.
    The server applies each step once: if it had applied the step before the connection broke, it
    answers the retry from its ledger (``last_result.replayed``) with the current weights. With a
    server that keeps its state (``--state-dir``) and restarts with ``--restore latest``, training
    thus rides through a crash or a restart of the server without losing or doubling a step.

    **Several trainers.** Any number of optimizers, in as many processes, may train one model:
    each attaches with ``model=..., attach=True`` and its own ``client_id``. Each step carries
    the version of the weights in the parameters (:attr:`version`: from registration, attach,
    the last step or :meth:`pull`), which the server uses according to the model's
    ``coordination``. In *sync* mode a step is applied once ``k`` trainers have sent their
    gradient for it (``k=0``: all attached trainers; :meth:`join` attaches before the first
    step); ``step()`` blocks until then, and every trainer receives the same new weights. A
    gradient for a step already applied without it is *late*: nothing is applied and the
    parameters receive the current weights (``last_result.late``). In *async* mode each gradient
    is applied when it arrives; ``last_result.staleness`` says how many versions behind it was.
    Past ``max_staleness``, ``stale="reject"`` makes :meth:`step` raise
    :class:`~optsidecar.errors.StaleGradient` (call :meth:`pull`, compute the gradient again and
    step), and ``stale="downweight"`` applies it with its lr scaled by ``1/(1 + staleness)``
    (``last_result.lr_scale``). :meth:`coordination` and :meth:`history` report what happened.

    **Snapshots and branches.** :meth:`snapshot`, :meth:`list_snapshots`, :meth:`restore`,
    :meth:`fork` and :meth:`export` (the first three and the last need ``--state-dir``).

    **Views.** The parameters hold the train view (where gradients must be taken: Schedule-Free's
    y, Lookahead's fast weights). :meth:`eval` swaps in the eval view (Schedule-Free's x, else the
    slow weights, else the first EMA shadow) and :meth:`train` swaps the train view back; the
    server computes views without touching its state, so switching never perturbs training.
    :meth:`step` requires train mode. BatchNorm statistics collected at y are not statistics at x:
    recompute them before evaluating (see the README).

    Example:
        >>> opt = RemoteOptimizer(model.named_parameters(), 1e-3, algorithm="AdamW", target="127.0.0.1:50051")
        >>> opt.zero_grad()
        >>> loss_fn(model(input), target).backward()
        >>> opt.step()
        >>> opt.last_result.lr
        {'group0': 0.001}
    """

    def __init__(self, params: Any, lr: Optional[float] = None, *positional: Any, target: Optional[str] = None,
                 algorithm: Optional[str] = None, model: Optional[str] = None, client_id: Optional[str] = None,
                 attach: bool = False, schedule: Optional[Dict[str, Any]] = None, ema: Any = None,
                 lookahead: Optional[Dict[str, Any]] = None, clip_grad_norm: float = 0.0,
                 report_update_norm: bool = False, non_finite: Optional[str] = None,
                 client: Optional[Client] = None, retry_for: float = DEFAULT_RETRY_SECONDS,
                 coordination: Any = None, ephemeral: Optional[bool] = None,
                 lease_seconds: int = DEFAULT_LEASE_SECONDS, wire_dtype: str = "float32", transport: str = "auto",
                 shm_dir: Optional[str] = None, shm_segment: str = "auto", tls_ca: Optional[str] = None,
                 tls_cert: Optional[str] = None, tls_key: Optional[str] = None, token: Optional[str] = None,
                 **hyperparameters: Any):
        if isinstance(lr, str) or positional:
            given = f"{lr!r}" + "".join(f", {a!r}" for a in positional)
            raise TypeError(f"RemoteOptimizer(params, lr, *, target=..., algorithm=..., model=..., client_id=..., "
                            f"...) takes only params and lr positionally; target is keyword-only now: pass "
                            f"target='host:port' (and algorithm=...) by keyword (got {given} after params)")
        if transport not in _TRANSPORTS:
            raise ValueError(f"transport must be one of {list(_TRANSPORTS)}, not {transport!r}")
        if shm_segment not in _SEGMENT_KINDS:
            raise ValueError(f"shm_segment must be one of {list(_SEGMENT_KINDS)}, not {shm_segment!r}")
        self._segment_kind = shm_segment
        if lr is not None:
            hyperparameters["lr"] = lr
        check_wire_dtype(wire_dtype)
        if target is None:
            target = os.environ.get(TARGET_ENVIRONMENT_VARIABLE) or DEFAULT_TARGET
        groups = parse_params(params)
        self._frozen = False
        self._closed = False
        self._lease: Optional[_LeaseKeeper] = None
        if ephemeral is None:
            ephemeral = model is None and not attach
        if ephemeral and attach:
            raise ValueError("ephemeral=True registers a model; an attached model keeps the lease it was registered with")
        if ephemeral and int(lease_seconds) < 1:
            raise ValueError(f"lease_seconds must be a whole number of seconds, at least 1: {lease_seconds!r}")
        #: The grace period of the model's lease, when this optimizer registered it ephemeral; else 0.
        self.lease_seconds = int(lease_seconds) if ephemeral else 0
        self._owns_client = client is None
        self.client = client if client is not None else Client(target, tls_ca=tls_ca, tls_cert=tls_cert,
                                                               tls_key=tls_key, token=token)
        self.model = model if model is not None else f"torch-{uuid.uuid4().hex[:12]}"
        self.client_id = client_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        try:
            if attach:
                if model is None:
                    raise ValueError("attach=True needs the name of the model to attach to (model=...)")
                configured = dict(hyperparameters, schedule=schedule, ema=ema, lookahead=lookahead,
                                  clip_grad_norm=clip_grad_norm or None, report_update_norm=report_update_norm or None,
                                  non_finite=non_finite, coordination=coordination)
                configured = sorted(k for k, v in configured.items() if v is not None)
                if configured or any(len(g.overrides) for g in groups):
                    raise ValueError(f"attach=True continues model {model!r} as the server configured it; "
                                     f"settings given here would be ignored: {configured or 'param group overrides'}")
                info = self.client.describe(self.model)
                if algorithm is not None and algorithm != info.optimizer.algorithm:
                    raise ValueError(f"model {model!r} runs {info.optimizer.algorithm}, not {algorithm}")
                groups = _server_layout(groups, info)
            else:
                config = optimizer_config(algorithm or "AdamW", hyperparameters, schedule=schedule, ema=ema,
                                          lookahead=lookahead, clip_grad_norm=clip_grad_norm,
                                          report_update_norm=report_update_norm, non_finite=non_finite)
                tensors = [(n, tuple(p.shape)) for g in groups for n, p in zip(g.names, g.params)]
                spec = model_spec(self.model, tensors, [(g.name, g.names, g.overrides) for g in groups], config,
                                  coordination)
                spec.lease_seconds = self.lease_seconds
                try:
                    info = self.client.register(spec, [p for g in groups for p in g.params])
                except AlreadyExists as e:
                    raise e.with_message(f"{e} (pass attach=True to continue that model, or load a state dict "
                                         f"into an optimizer with another name)") from None
        except BaseException:
            if self._owns_client:
                self.client.close()
            raise

        super().__init__([{"params": g.params, **g.overrides} for g in groups], dict(hyperparameters))
        self._frozen = True
        # Server order: tensor i of the model is self._params[i].
        self._params: List[torch.Tensor] = [p for g in groups for p in g.params]
        self._names: List[str] = [n for g in groups for n in g.names]
        self._group_names: List[str] = [g.name for g in groups]
        self._staging: Dict[int, Any] = {}
        self._destination_cache: Dict[int, Tuple[Tuple[Any, ...], Destination]] = {}
        self._given_hyperparameters = dict(hyperparameters)
        self._mode = "train"
        #: Each parameter's optimizer state as torch keeps it, read from the server on access (a
        #: copy; see :class:`~optsidecar.param_state.ParameterState`).
        self.state = ParameterState(self)
        self.last_result = None
        #: Figures :meth:`log`ged since the last step: they go with the next one.
        self._pending_figures: Dict[str, float] = {}
        #: The model version (steps applied) the parameters belong to.
        self.version: int = info.version
        self._hyperparameters = LiveHyperparameters()
        self._adopt_server_groups(info)
        self._stream = StepStream(self.client, self.model, self.client_id, [t.numel for t in info.tensors],
                                  next_step_id=next_step_id(info, self.client_id), retry_for=retry_for,
                                  wire_dtype=wire_dtype)
        self._init_edits()
        self._segment: Optional[Segment] = None
        self._shared: Optional[SharedParameters] = None
        #: Whether the server checks a segment's weights against the trainer's records (ServerInfo).
        self._server_checks_weights = False
        #: CUDA parameters: their device buffer (CUDA IPC), or the host staging of chunks or of a segment.
        self._device_segment: Optional[DeviceSegment] = None
        self._host_staging: Optional[HostStaging] = None
        self._segment_staging: Optional[SegmentStaging] = None
        #: ``"cuda-ipc"``, ``"shm"`` or ``"grpc"``: how this optimizer's gradients and weights travel.
        self.transport = self._choose_transport(transport, shm_dir)
        if attach:
            self._pull_into_params("train")
            try:
                attached_lease = self.client.renew_lease(self.model)
            except PermissionDenied:
                attached_lease = 0  # a reader's token keeps no lease: only trainers keep a model alive
            if attached_lease:
                self._lease = _LeaseKeeper(self.client, self.model, attached_lease)
        elif self.lease_seconds:
            self._lease = _LeaseKeeper(self.client, self.model, self.lease_seconds)
            _EPHEMERAL_OPTIMIZERS.add(self)

    # -- transport -----------------------------------------------------------------------------

    def _choose_transport(self, transport: str, shm_dir: Optional[str]) -> str:
        """Sets up CUDA IPC or shared memory when asked (``"cuda-ipc"``, ``"shm"``) or possible
        (``"auto"``), else chunks over gRPC; logs which and why."""
        if transport in ("auto", "cuda-ipc"):
            why_not_ipc = self._setup_cuda_ipc(shm_dir)
            if why_not_ipc is None:
                _LOG.info("model %r: cuda-ipc transport (the server's GPU maps the parameters)", self.model)
                return "cuda-ipc"
            if transport == "cuda-ipc":
                raise FailedPrecondition(f"transport='cuda-ipc' for model {self.model!r}: {why_not_ipc}",
                                         reason="CUDA_IPC_UNAVAILABLE")
            _LOG.info("model %r: no cuda-ipc transport (%s)", self.model, why_not_ipc)
        chosen = self._choose_host_transport(transport, shm_dir)
        if chosen == "grpc" and is_cuda(self._params):
            self._host_staging = HostStaging()
        return chosen

    def _setup_cuda_ipc(self, shm_dir: Optional[str]) -> Optional[str]:
        """Moves the parameters and their gradients into one device buffer the server maps; returns
        why it cannot, or None. Steps ring the server's doorbell when this process sees its
        ``--shm-dir``."""
        try:
            info = self.client.server_info()
        except OptSidecarError as e:
            return f"the server does not say which engine it runs ({e})"
        why_not = unavailable_reason(self._params, info.engine, info.device_uuid)
        if why_not is not None:
            return why_not
        try:
            segment = DeviceSegment(self._params[0].device, [p.numel() for p in self._params])
        except (ValueError, RuntimeError) as e:
            return f"the parameters' device memory cannot be exported: {e}"
        why_not = probe(self.client, self.model, segment)  # before the parameters move in: a refusal leaves them
        if why_not is not None:
            return why_not
        self._bind_device_segment(segment)
        directory = usable_directory(info.shm_dir, shm_dir) if info.doorbell_socket else None
        self._stream.doorbell = os.path.join(directory, info.doorbell_socket) if directory else None
        return None

    def _bind_device_segment(self, segment: DeviceSegment) -> None:
        self._device_segment = segment
        self._shared = SharedParameters(segment, self._params)
        self._shared.bind()
        self._stream.device_segment = segment
        self._device_destinations = [DeviceDestination(p) for p in self._params]
        self._edits.summed = lambda i: True  # the buffer's sums: what the server reports of its writes
        self._pull_destinations: Optional[List[Destination]] = None
        self._edits.record()

    def _choose_host_transport(self, transport: str, shm_dir: Optional[str]) -> str:
        """Shared memory when asked (``"shm"``) or possible (``"auto"``), else chunks over gRPC."""
        if transport == "grpc":
            _LOG.info("model %r: grpc transport (asked for)", self.model)
            return "grpc"
        staged = is_cuda(self._params)
        if staged:
            why_not = None if all(p.dtype == torch.float32 for p in self._params) else \
                "a parameter is not float32; shared memory holds float32 parameters"
        else:
            why_not = SharedParameters.supported(self._params)
        directory = None
        doorbell = segment_socket = ""
        if why_not is None:
            try:
                info = self.client.server_info()
                server_dir, doorbell, segment_socket = info.shm_dir, info.doorbell_socket, info.segment_socket
                self._server_checks_weights = info.checks_segment_weights
            except OptSidecarError as e:
                server_dir, why_not = "", f"the server does not say whether it offers shared memory ({e})"
            if why_not is None and not server_dir and not shm_dir:
                why_not = "the server offers no shared memory (started without --shm-dir)"
            elif why_not is None:
                directory = usable_directory(server_dir, shm_dir)
                if directory is None:
                    why_not = (f"the shared-memory directory {shm_dir or os.environ.get(SHM_DIR_ENVIRONMENT_VARIABLE) or server_dir!r} "
                               f"is not a directory here (set {SHM_DIR_ENVIRONMENT_VARIABLE} or shm_dir= to its path in this "
                               f"container)")
        segment = None
        if why_not is None:
            segment, why_not = self._new_segment(directory, segment_socket)
        if segment is not None:
            try:
                # The server maps it and writes the train view there: proof that it sees the file.
                self.client.pull(self.model, "train", [None] * len(self._params), segment=segment)
            except FailedPrecondition as e:
                if e.reason != "SHARED_MEMORY_UNAVAILABLE":
                    segment.remove()
                    raise
                why_not = f"the server cannot map the segment: {e.details}"
                segment.remove()
        if segment is not None and why_not is None and staged:
            try:
                self._segment_staging = SegmentStaging(segment)
            except (OSError, RuntimeError) as e:
                why_not = f"the segment cannot be page-locked for CUDA copies: {e}"
                segment.remove()
        if why_not is not None:
            if transport == "shm":
                raise FailedPrecondition(f"transport='shm' for model {self.model!r}: {why_not}",
                                         reason="SHARED_MEMORY_UNAVAILABLE")
            _LOG.info("model %r: grpc transport (%s)", self.model, why_not)
            return "grpc"
        where = "sealed, mapped by the server" if segment.sealed else f"file {segment.name} in {directory}"
        if staged:
            self._segment = segment
            self._stream.segment = segment
            _LOG.info("model %r: shm transport, CUDA parameters staged through the segment (%s)", self.model, where)
            return "shm"
        self._bind_segment(segment)
        self._stream.doorbell = os.path.join(directory, doorbell) if doorbell else None
        self._edits.record()
        _LOG.info("model %r: shm transport (segment %s)", self.model, where)
        return "shm"

    def _new_segment(self, directory: str,
                     segment_socket: str) -> Tuple[Union[Segment, SealedSegment, None], Optional[str]]:
        """A sealed segment where the server takes them (see :class:`SealedSegment`), else a segment
        file in ``directory``; or None and why neither can be made."""
        numels = [p.numel() for p in self._params]
        if self._segment_kind == "sealed" and not (segment_socket and sealed_segments_work()):
            return None, ("the server takes no sealed segments (it has no segment socket)" if sealed_segments_work()
                          else "this platform cannot make sealed segments (memfd_create, seals, SCM_RIGHTS)")
        if self._segment_kind != "file" and segment_socket and sealed_segments_work():
            first = [os.path.join(directory, segment_socket)]

            def locate() -> str:
                """The server's segment socket: as first told, then as a restarted server tells it."""
                if first:
                    return first.pop()
                socket_name = self.client.server_info().segment_socket
                if not socket_name:
                    raise HandoffRefused("the server has no segment socket any more")
                return os.path.join(directory, socket_name)

            try:
                return SealedSegment(numels, locate), None
            except OSError as e:  # HandoffRefused too
                if self._segment_kind == "sealed":
                    return None, f"the server did not take a sealed segment: {e}"
                _LOG.info("model %r: no sealed segment (%s); a segment file instead", self.model, e)
        try:
            return Segment(directory, numels), None
        except OSError as e:
            return None, f"cannot create a segment in {directory!r}: {e}"

    def _bind_segment(self, segment: Segment) -> None:
        """Moves the parameters and their gradients into ``segment`` and steps through it."""
        self._segment = segment
        self._shared = SharedParameters(segment, self._params)
        self._shared.bind()
        self._stream.segment = segment

    # -- groups and hyperparameters ------------------------------------------------------------

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Adds a parameter group, as torch does, to the model on the server too (AddTensors), e.g.
        to unfreeze a backbone with a lower lr: ``opt.add_param_group({"params": backbone.parameters(),
        "lr": 1e-4})``. The new parameters start with fresh optimizer state; the model's counters,
        state and trainers carry over. Parameters are named by ``(name, tensor)`` pairs or a
        ``"names"`` list, else ``p<index>``; the group by ``"name"``, else ``group<index>``; other
        keys override the model's hyperparameters. ``param_groups`` gains the group with every
        effective hyperparameter. Other trainers of the model get
        :class:`~optsidecar.errors.ModelChanged` at their next step and continue after calling
        ``add_param_group`` with the same parameters, names and group name: their parameters
        then receive the model's weights.
        """
        if not getattr(self, "_frozen", False):
            super().add_param_group(param_group)  # torch's constructor adds the initial groups
            return
        group = parse_new_group(param_group, group_index=len(self.param_groups), first_param=len(self._params),
                                names_taken=self._names, params_taken=self._params)
        self._push_edits()  # the existing parameters' edits reach the model before it is rebuilt
        info, added_by_another = add_group(self.client, self.model, len(self._params), group)
        super().add_param_group({"params": group.params, **group.overrides})
        self._params.extend(group.params)
        self._names.extend(group.names)
        self._group_names.append(group.name)
        self._adopt_server_groups(info)
        compare_contents = self._edits.compare_contents
        self._init_edits()  # the new parameters hold the server's weights: those just uploaded
        self._edits.compare_contents = compare_contents
        self._edits.record()
        self._new_stream(info)  # the old one was ended by the server: the model's tensors changed
        if added_by_another:
            self._pull_into_params(self._mode)

    def _adopt_server_groups(self, info: pb.ModelInfo) -> None:
        """Fills param_groups with the server's effective hyperparameters (lr is the base lr) and
        remembers them, to send only what changes between steps. Each group also gets what its reference's groups hold besides hyperparameters (Schedule-Free's k,
        weight_sum, lr_max, train_mode, scheduled_lr; torch's foreach, ...), and ``defaults`` every
        hyperparameter's model-wide value."""
        by_name = {g.name: g for g in info.groups}
        self._algorithm = info.optimizer.algorithm
        ref = reference(self._algorithm)
        counters = {c.group: c for c in info.state.groups}
        for name, group in zip(self._group_names, self.param_groups):
            values = from_struct(by_name[name].hyperparameters)
            group.update(values)
            for key, value in client_side_entries(ref, values).items():
                group.setdefault(key, value)
            saved = counters.get(name)
            group.update(group_entries(ref, dict(saved.scalars) if saved else {}, self._mode == "train",
                                       group.get("scheduled_lr")))
        self._hyperparameters.adopt(info.groups)
        self.defaults = self._model_defaults(info)

    def _model_defaults(self, info: pb.ModelInfo) -> Dict[str, Any]:
        """Every hyperparameter with its model-wide value: the server's ``ModelInfo.defaults``; from
        a server that does not report them, the first group's values with the hyperparameters
        given to the constructor over them (a value only the first group overrides shows there)."""
        if info.defaults.fields:
            return from_struct(info.defaults)
        first = from_struct(info.groups[0].hyperparameters) if info.groups else {}
        return {**first, **{k: normalized(v) for k, v in self._given_hyperparameters.items()}}

    def _parameter_indices(self) -> Dict[int, int]:
        """Each parameter's index (its tensor's on the server), by ``id``."""
        return {id(p): i for i, p in enumerate(self._params)}

    @property
    def _mode(self) -> str:
        return self.__dict__.get("_mode_value", "train")

    @_mode.setter
    def _mode(self, mode: str) -> None:
        # Schedule-Free groups say which point the parameters hold, as schedulefree's train_mode.
        self.__dict__["_mode_value"] = mode
        for group in getattr(self, "param_groups", ()):
            if "train_mode" in group:
                group["train_mode"] = mode == "train"

    @property
    def last_result(self) -> Optional[StepFigures]:
        """Figures of the last step (:class:`~optsidecar.results.StepFigures`), None before the first."""
        return self.__dict__.get("_last_result")

    @last_result.setter
    def last_result(self, figures: Optional[StepFigures]) -> None:
        # Each step's group scalars and effective lr keep the groups' counters current, as the
        # reference's step() updates its param groups.
        self.__dict__["_last_result"] = figures
        if figures is None:
            return
        by_name = {g.name: g for g in figures.groups}
        for name, group in zip(self._group_names, self.param_groups):
            figures_of_group = by_name.get(name)
            if figures_of_group is None:
                continue
            for scalar, value in figures_of_group.scalars.items():
                group[scalar] = int(value) if scalar == "k" else float(value)
            if "scheduled_lr" in group and not figures.skipped:
                group["scheduled_lr"] = float(figures_of_group.effective_lr)

    def _group_lr(self) -> Dict[str, float]:
        # Every step sends each group's base lr here; the other hyperparameters go only when changed.
        return {name: float(group["lr"]) for name, group in zip(self._group_names, self.param_groups)}

    def _hyperparameter_changes(self) -> Dict[str, Dict[str, Any]]:
        return self._hyperparameters.changes(self._group_names, self.param_groups)

    # -- stepping ------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Performs a single optimization step on the server.

        Sends the parameters the trainer edited since the last step, if any (see **Edited
        weights** above), then each parameter's ``.grad`` (a parameter whose ``.grad`` is None is
        skipped, as torch skips it) with the hyperparameters changed in ``param_groups``, then
        writes the updated train weights into the parameters in place.

        The closure's loss (a finite scalar) is reported to the server as the step's ``loss``
        figure, with the figures :meth:`log`ged since the last step (an explicitly logged ``loss``
        wins); see :meth:`figures`.

        Args:
            closure (Callable, optional): a closure that reevaluates the model and returns the loss.

        Returns:
            the closure's loss, or None.
        """
        if self._mode != "train":
            raise RuntimeError("RemoteOptimizer.step() needs train mode, but the parameters hold the eval view: "
                               "call optimizer.train() before training steps and optimizer.eval() before "
                               "evaluating (as with schedule_free)")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = []
        if self._shared is not None:
            # A .data replaced by another tensor: into the segment, and an edit (at the segment's
            # address again, it has the pointer and version it was recorded with).
            self._edits.forget(self._shared.rebind())
        shared_grads = self._shared.gradients() if self._shared is not None else None
        for index, (name, p) in enumerate(zip(self._names, self._params)):
            g = p.grad if shared_grads is None else shared_grads[index]
            if g is not None:
                if g.is_sparse:
                    raise InvalidArgument(f"gradient of {name!r} is sparse; RemoteOptimizer needs dense gradients")
                if g.shape != p.shape:
                    raise InvalidArgument(f"gradient of {name!r} has shape {tuple(g.shape)} but the parameter has "
                                          f"shape {tuple(p.shape)}")
            grads.append(g)
        if self._stream.partial_weights:
            warnings.warn("the previous step failed while its weights were arriving, so the parameters may mix "
                          "two versions; call optimizer.resync() after such a failure", RuntimeWarning)
        self._push_edits(contents_checked_elsewhere=self._weights_check() is not None)
        changes = self._hyperparameter_changes()
        reported = {}
        closure_loss = loss_figure(loss)
        if closure_loss is not None:
            reported["loss"] = closure_loss
        reported.update(self._pending_figures)
        destinations = self._destinations()
        if self._host_staging is not None:
            grads = self._host_staging.gradients(grads, self.wire_dtype)
            destinations = self._host_staging.destinations(destinations)
        elif self._segment_staging is not None:
            grads = self._segment_staging.gradients(grads)
            destinations = self._segment_staging.destinations()
        try:
            figures = self._step_checking_weights(grads, destinations, changes, reported)
            if self._host_staging is not None:
                self._host_staging.finish()
            elif self._segment_staging is not None:
                self._segment_staging.weights_into(self._params)
        except StaleGradient as e:
            raise e.with_message(f"{e} [call optimizer.pull(), compute the gradient again and step]") from None
        except ModelChanged as e:
            raise e.with_message(f"{e} [another trainer added parameters to the model: call "
                                 f"optimizer.add_param_group() with the same parameters, names and group name, "
                                 f"then step again]") from None
        except InvalidArgument as e:
            raise (self._hyperparameters.explain(e, self._group_names, self.param_groups, changes) or e) from None
        finally:
            if self._stream.partial_weights:
                self._edits.record()  # what arrived is the server's, not the trainer's
        self._edits.record(crc32c={**self._written_crc32c(figures), **self._stream.received_fingerprints},
                           sums=self._written_sums(figures))
        self._pending_figures.clear()  # they went with this step
        self._hyperparameters.confirm(changes, figures)
        self.last_result = figures
        # The weights now in the parameters: the current ones after a replayed or late step.
        self.version = figures.weights_version if figures.weights_version is not None else figures.version
        return loss

    def _step_checking_weights(self, grads: List[Any], destinations: List[Destination],
                               changes: Dict[str, Dict[str, Any]], reported: Dict[str, float]) -> StepFigures:
        """The step on the server; over a segment whose weights the server checks, once more after
        pushing the parameters it found written (through ``p.data``, which no version counter
        sees): the first attempt applied nothing."""
        self._stream.fingerprint_received = self._edits.compare_contents

        def step() -> StepFigures:
            return self._stream.step(grads, destinations, view="train", group_lr=self._group_lr(),
                                     base_version=self.version, group_hyperparameters=changes,
                                     figures=reported, weights_crc32c=self._weights_check())

        try:
            return step()
        except FailedPrecondition as e:
            if e.reason != "WEIGHTS_EDITED":
                raise
            edited = [int(i) for i in e.metadata.get("tensors", "").split(",") if i]
        _LOG.debug("model %r: the server found parameters %s written since the last step; sending them",
                   self.model, edited)
        self._edits.forget(edited)
        self._push_edits(contents_checked_elsewhere=True)
        return step()

    def _weights_check(self) -> Optional[List[int]]:
        """The CRC-32C a step over this optimizer's segment sends for the server to check its
        weights against (so this process need not read its parameters before each step), or None
        where the client compares contents itself: no segment or a staged one (CUDA parameters),
        a parameter not bound to it, a server that does not check, no CRC-32C records."""
        if not self._server_checks_weights or self._shared is None or self._segment is None \
                or self._segment_staging is not None or self._device_segment is not None:
            return None
        if not all(self._shared.is_bound(i) for i in range(len(self._params))):
            return None
        return self._edits.recorded_crc32c()

    # -- edited parameters ---------------------------------------------------------------------

    def _init_edits(self) -> None:
        self._edits = ParameterEdits(self._params)
        self._edits.record()
        #: The last edited weights sent to the server (:class:`~optsidecar.edits.WeightsPush`), None before.
        self.last_push: Optional[WeightsPush] = None
        self._warned_eval_edits = False

    @property
    def doorbell(self) -> bool:
        """Whether steps commit over the server's doorbell socket (shared memory, once a step
        opened the stream), not through grpc."""
        live = self._stream._live
        return live is not None and live.doorbell is not None

    @property
    def shm_segment(self) -> Optional[str]:
        """The kind of shared-memory segment steps go through: ``"sealed"`` (the server maps this
        process's memory), ``"file"``, or None when they do not go through one."""
        if self._segment is None:
            return None
        return "sealed" if self._segment.sealed else "file"

    @property
    def edits(self) -> ParameterEdits:
        """How edited parameters are noticed; ``opt.edits.compare_contents = False`` skips the
        content check that catches writes through ``p.data`` (see :mod:`optsidecar.edits`)."""
        return self._edits

    def _written_crc32c(self, figures: StepFigures) -> Dict[int, Tuple[int, ...]]:
        """The CRC-32C the server reported of the weights it wrote into the segment, for each
        parameter that is that very memory (so it need not be hashed again)."""
        if self._shared is None or not figures.weights_crc32c:
            return {}
        pieces = pieces_of([p.numel() for p in self._params], figures.weights_crc32c)
        if pieces is None:
            return {}
        return {i: crc for i, crc in enumerate(pieces) if self._shared.is_bound(i)}

    def _written_sums(self, figures: StepFigures) -> Dict[int, Tuple[int, int]]:
        """The sums the server reported of the weights it wrote into the device buffer (CUDA IPC),
        for each parameter that is that very memory."""
        sums = figures.weights_device_sums
        if self._device_segment is None or len(sums) != 2 * len(self._params):
            return {}
        return {i: (sums[2 * i], sums[2 * i + 1]) for i in range(len(self._params)) if self._shared.is_bound(i)}

    def _push_edits(self, contents_checked_elsewhere: bool = False) -> None:
        """Sends the parameters the trainer changed since the client last wrote them, as one
        set-weights step (the others in ``no_grad``), before anything reads or overwrites them.
        ``contents_checked_elsewhere``: the step's server checks the segment's weights, so only
        version counters and data pointers are compared here."""
        changed = self._edits.changed(contents_checked_elsewhere)
        if not changed:
            return
        weights_view = "train"
        if self._mode == "eval":
            if not self._algorithm.endswith("ScheduleFree"):
                if not self._warned_eval_edits:
                    self._warned_eval_edits = True
                    warnings.warn(f"parameters edited in eval mode are discarded: {self._algorithm}'s eval view (its "
                                  f"slow weights or EMA shadow) does not map back to its train weights; edit them "
                                  f"in train mode", RuntimeWarning)
                self._edits.record(changed)
                return
            weights_view = "eval"  # x: the server computes y from it, as schedulefree's train() does
        chosen = set(changed)
        weights = [p if i in chosen else None for i, p in enumerate(self._params)]
        figures = self._stream.set_weights(weights, weights_view=weights_view, base_version=self.version)
        self._edits.record(changed)
        # The gradient that follows is computed at these weights: one version on from the last
        # ones received (more when other trainers stepped meanwhile: it is that much stale).
        self.version += 1
        self.last_push = WeightsPush(tuple(self._names[i] for i in changed), weights_view, figures.step_id,
                                     figures.version, figures.replayed)
        _LOG.debug("model %r: pushed %d edited parameter(s) as %s weights, step %d, version %d: %s", self.model,
                   len(changed), weights_view, figures.step_id, figures.version, ", ".join(self.last_push.tensors))

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Resets the gradients of all parameters (to None by default, as torch 2.x does). Over
        shared memory the gradients stay views of the segment, zeroed in place; one not written
        before the next step counts as None, as with torch."""
        if self._shared is not None:
            self._shared.zero_grad(set_to_none=set_to_none)
            return
        super().zero_grad(set_to_none=set_to_none)

    def _destinations(self) -> List[Destination]:
        """The parameters as destinations: written in place when they are CPU float32 and
        contiguous, else through a staging buffer kept for the next time. Each is made again only
        when its parameter's tensor, memory, shape, dtype or device changed (making one per
        parameter per step costs more than a small step)."""
        if self._device_segment is not None:
            return self._device_destinations
        destinations = []
        for i, p in enumerate(self._params):
            key = (id(p), p.data_ptr(), tuple(p.shape), p.dtype, p.device, p.is_contiguous())
            cached = self._destination_cache.get(i)
            if cached is None or cached[0] != key:
                d = Destination(p, staging=self._staging.get(i))
                if d.staged:
                    self._staging[i] = d.array
                cached = self._destination_cache[i] = (key, d)  # d holds p: its id stays its own
            destinations.append(cached[1])
        return destinations

    # -- views ---------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> "RemoteOptimizer":
        """Puts the train view (where gradients are taken) into the parameters; ``train(False)`` is
        :meth:`eval`. A no-op when already in that mode."""
        if not mode:
            return self.eval()
        if self._mode != "train":
            self._push_edits()
            self._pull_into_params("train")
            self._mode = "train"
        return self

    def eval(self) -> "RemoteOptimizer":
        """Puts the eval view into the parameters: Schedule-Free's x, else Lookahead's slow weights,
        else the first EMA shadow. Raises ``InvalidArgument`` for a model without one (e.g. plain
        AdamW) and ``FailedPrecondition`` for an EMA shadow before its first update."""
        if self._mode == "eval":
            return self
        self._push_edits()
        try:
            self._pull_into_params("eval")
        except InvalidArgument as e:
            raise e.with_message(f"eval(): {self._algorithm} has no eval view (Schedule-Free algorithms, Lookahead "
                                 f"and EMA have one); the server says: {e.details}") from None
        self._mode = "eval"
        return self

    @property
    def mode(self) -> str:
        """``"train"`` or ``"eval"``: which view the parameters hold."""
        return self._mode

    def pull(self) -> int:
        """Refreshes the parameters to the model's current train view (switching back to train
        mode if in eval mode), e.g. after a :class:`~optsidecar.errors.StaleGradient` or to catch
        up with other trainers; the next gradient is then taken at these weights.

        Returns:
            the version pulled (also :attr:`version`).
        """
        self._push_edits()
        self._pull_into_params("train")
        self._mode = "train"
        self._stream.partial_weights = False
        return self.version

    def join(self) -> "RemoteOptimizer":
        """Attaches this trainer to the model now (opens its Step stream) instead of at its first
        step, so that a sync model with ``k=0`` counts it from the first step. With several
        trainers, let each join, then wait for all (``client.wait_for_trainers(model, n)``)
        before the first step."""
        self._stream.open()
        return self

    def coordination(self) -> CoordinationStatus:
        """How trainers share the model, who is attached now and what their contributions did
        (see :meth:`Client.coordination`)."""
        return self.client.coordination(self.model)

    def history(self, from_version: int = 0) -> List[VersionContributions]:
        """The (client id, step id) contributions of each version from ``from_version`` on (see
        :meth:`Client.history`)."""
        return self.client.history(self.model, from_version)

    def log(self, **figures: float) -> None:
        """Reports named scalars with the next :meth:`step`, e.g. ``opt.log(loss=loss.item(),
        accuracy=acc)``: the server keeps them with the version that step makes, beside its lr,
        gradient norm and the rest (see :meth:`figures`). A later value of a name replaces an
        earlier one until the step. To report without stepping (an evaluation after training),
        use ``opt.client.log_figures(opt.model, ...)``, which joins the current version."""
        self._pending_figures.update(check_figures(figures))

    def figures(self, from_version: int = 0) -> List[VersionFigures]:
        """The model's training curves: each version's step figures and reported figures (see
        :meth:`Client.figures`)."""
        return self.client.figures(self.model, from_version)

    def resync(self) -> None:
        """Pulls the current mode's view into the parameters, e.g. after a step failed midway or
        when another trainer steps the same model. Edits not sent yet are discarded."""
        self._pull_into_params(self._mode)
        self._stream.partial_weights = False

    def _pull_into_params(self, view: str) -> None:
        if self._device_segment is not None:  # a pull comes as chunks: through host staging
            if self._pull_destinations is None:
                self._pull_destinations = [Destination(p) for p in self._params]
            destinations = self._pull_destinations
        else:
            destinations = self._destinations()
        try:
            weights = self.client.pull(self.model, view, destinations, wire_dtype=self.wire_dtype,
                                       segment=self._segment)
        finally:
            synchronize(p.device for p in self._params if p.is_cuda)  # copies to the device are done
            self._edits.record()  # what arrived is the server's, even if the pull broke off
        self.version = weights.version

    # -- state dict ----------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """The whole optimizer as the server holds it, in the format of its reference
        (``torch.optim.X`` or ``schedulefree.X``), for ``torch.save``.

        ``state`` maps each parameter index that has stepped to its state as the reference keeps
        it (``step`` as a float32 tensor for Adam, AdamW and RAdam; ``exp_avg``, ``exp_avg_sq``,
        ``max_exp_avg_sq``, ``momentum_buffer``, ``z``, ...), and ``param_groups`` are the groups as
        torch keeps them (``params`` as indices, every hyperparameter, Schedule-Free's ``k``,
        ``weight_sum``, ``lr_max``, ``train_mode``, ``scheduled_lr``, keys a scheduler added), so
        the reference's ``load_state_dict`` takes it and continues. The key ``"optsidecar"`` holds
        what only the server has: ``format``, ``algorithm``, ``model``, ``client_id``, ``mode``,
        ``spec`` (the ``ModelSpec`` that re-creates the model with its configuration and, in
        ``spec["state"]``, every counter: tensor steps, group scalars, the server schedule's
        position, EMA updates, Lookahead's step, the trainers' sequence numbers), ``weights`` (the
        train view) and ``slots`` (state the reference lacks: EMA shadows, Lookahead's slow
        weights). Loading it with :meth:`load_state_dict` continues training bit for bit.

        ``param_groups[i]["lr"]`` is the base lr: a server-side ``schedule`` is not carried into
        torch (give torch an lr scheduler of its own).
        """
        self._push_edits()

        def allocate(index: int, _info: pb.TensorInfo) -> torch.Tensor:
            return torch.empty(self._params[index].shape, dtype=torch.float32)

        server = capture(self.client, self.model, allocate)
        ref = reference(server.spec.optimizer.algorithm)
        steps = list(server.spec.state.tensor_steps)
        per_parameter = {}
        for i in range(len(self._params)):
            if steps[i] > 0:
                slots = {name: values[i] for name, values in server.slots.items()
                         if name in ref.slots and values[i] is not None}
                per_parameter[i] = tensor_state(ref, steps[i], slots)
        index_of = self._parameter_indices()
        groups = []
        for group in self.param_groups:
            saved = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            saved["params"] = [index_of[id(p)] for p in group["params"]]
            groups.append(saved)
        return {
            "state": per_parameter,
            "param_groups": groups,
            "optsidecar": {
                "format": STATE_DICT_FORMAT,
                "algorithm": server.spec.optimizer.algorithm,
                "reference": ref.qualified_name,
                "model": self.model,
                "client_id": self.client_id,
                "mode": self._mode,
                "spec": json_format.MessageToDict(server.spec, preserving_proto_field_name=True),
                "weights": server.weights,
                "slots": {name: values for name, values in server.slots.items() if name not in ref.slots},
            },
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores a state dict: one of :meth:`state_dict` (the model on the server under this
        optimizer's name is replaced by the saved one, weights, state buffers and counters, and
        the parameters receive the saved weights: training continues bit for bit), or one saved
        by the reference of this optimizer's algorithm (``torch.optim.SGD``, ``Adam``, ``AdamW``,
        ``RAdam``; ``schedulefree.SGDScheduleFree``, ``AdamWScheduleFree``,
        ``RAdamScheduleFree``): the model is re-registered with the parameters' current values
        (load the model's own state dict first, as with torch) and the saved state, slots and
        counters mapped to the server's (see :func:`optsidecar.torch_format.from_reference_state_dict`).
        Either way ``param_groups`` take the saved values (lr, hyperparameters, keys such as a
        scheduler's ``initial_lr``): load the scheduler's state dict after this one.

        Raises ValueError naming what does not fit: the group layout, a shape, a slot or counter
        that is missing, or a state dict of another algorithm.
        """
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"load_state_dict() takes a dict, as state_dict() returns, not "
                             f"{type(state_dict).__name__}")
        extras = state_dict.get("optsidecar")
        if isinstance(extras, int) and not isinstance(extras, bool):
            self._load_previous_format(state_dict)
        elif isinstance(extras, Mapping):
            self._load_own_format(state_dict, extras)
        elif "state" in state_dict and "param_groups" in state_dict:
            self._load_reference_format(state_dict)
        else:
            raise ValueError(f"not an optimizer state dict (keys {sorted(map(str, state_dict))}): expected one "
                             f"from RemoteOptimizer.state_dict() or from the {self._algorithm} reference's "
                             f"state_dict(), with 'state' and 'param_groups'")

    def _load_own_format(self, state_dict: Mapping[str, Any], extras: Mapping[str, Any]) -> None:
        if extras.get("format") != STATE_DICT_FORMAT:
            raise ValueError(f"state dict format {extras.get('format')!r} is not one this client reads (it reads "
                             f"{STATE_DICT_FORMAT} and the older 1 and 2): load it with the optsidecar that saved it")
        spec = json_format.ParseDict(extras["spec"], pb.ModelSpec())
        saved_groups = state_dict["param_groups"]
        self._check_layout(spec, saved_groups)
        count = len(self._params)
        slots: Dict[str, List[Any]] = {name: list(values) for name, values in extras.get("slots", {}).items()}
        for index, entries in state_dict.get("state", {}).items():
            i = int(index)
            if not 0 <= i < count:
                raise ValueError(f"loaded state dict has state for parameter {index!r}; this optimizer has {count}")
            for name, value in entries.items():
                if name != "step" and value is not None:
                    slots.setdefault(name, [None] * count)[i] = value
        self._replace_model(ServerState(spec, list(extras["weights"]), slots), saved_groups,
                            extras.get("mode", "train"), weights_into_params=True)

    def _load_reference_format(self, state_dict: Mapping[str, Any]) -> None:
        info = self.client.describe(self.model)
        server, saved_groups, mode = from_reference_state_dict(
            state_dict, info, self._params, [len(g["params"]) for g in self.param_groups])
        self._replace_model(server, saved_groups, mode, weights_into_params=False)

    def _load_previous_format(self, state_dict: Mapping[str, Any]) -> None:
        """Formats 1 and 2: ``spec``, ``weights`` and ``slots`` at the top level."""
        saved_format = state_dict.get("optsidecar")
        if saved_format not in (1, 2):
            raise ValueError("not a RemoteOptimizer state dict (its 'optsidecar' format entry is "
                             f"{saved_format!r}, expected 1, 2 or a dict of format {STATE_DICT_FORMAT})")
        spec_dict = state_dict["spec"]
        if saved_format == 1:
            declared = [s.name for s in self.client.describe(self.model).groups[0].scalars]
            spec_dict = _format1_upgraded(spec_dict, declared)
        spec = json_format.ParseDict(spec_dict, pb.ModelSpec())
        saved_groups = state_dict["param_groups"]
        self._check_layout(spec, saved_groups)
        state = ServerState(spec, list(state_dict["weights"]), {k: list(v) for k, v in state_dict["slots"].items()})
        self._replace_model(state, saved_groups, state_dict.get("mode", "train"), weights_into_params=True)

    def _replace_model(self, state: ServerState, saved_groups: Sequence[Mapping[str, Any]], mode: str,
                       weights_into_params: bool) -> None:
        """Replaces the model under this optimizer's name by ``state``; ``param_groups`` take the
        saved groups' entries, and the parameters the saved weights (or keep theirs, which the
        state was made from) in ``mode``'s view."""
        # The model stays as ephemeral as this optimizer made it, whatever the saved one was.
        state.spec.lease_seconds = self.lease_seconds
        self._stream.close()
        try:
            self.client.delete(self.model)
        except NotFound:
            pass
        new_info = restore(self.client, self.model, state, tensor_names=self._names)

        self._group_names = [g.name for g in new_info.groups]
        self._adopt_server_groups(new_info)
        for group, saved in zip(self.param_groups, saved_groups):
            group.update({k: copy.deepcopy(v) for k, v in saved.items() if k != "params"})
        self._new_stream(new_info)
        if weights_into_params:
            with torch.no_grad():
                for p, w in zip(self._params, state.weights):
                    p.copy_(torch.as_tensor(w).reshape(p.shape))
        self._edits.record()
        self.version = new_info.version
        self.last_result = None
        if weights_into_params:
            self._mode = "train"
            if mode == "eval":
                self.eval()
        else:
            self._mode = mode

    def _new_stream(self, info: pb.ModelInfo) -> None:
        """A Step stream for the model as ``info`` describes it (after it was replaced), keeping
        this trainer's sequence numbers growing past both its own and the model's ledger."""
        old = self._stream
        old.close()
        self._stream = StepStream(self.client, self.model, self.client_id, [t.numel for t in info.tensors],
                                  next_step_id=max(old.next_step_id, next_step_id(info, self.client_id)),
                                  retry_for=old.retry_for, wire_dtype=old.wire_dtype)
        if self._device_segment is not None:
            # The tensors changed: a device buffer laid out for them; the parameters keep their values.
            pending = set(self._edits.changed())
            self._bind_device_segment(DeviceSegment(self._params[0].device, [p.numel() for p in self._params]))
            self._edits.record([i for i in range(len(self._params)) if i not in pending])
        elif self._segment_staging is not None:
            old_segment = self._segment
            self._segment_staging.close()
            self._segment = old_segment.renewed([p.numel() for p in self._params])
            self._segment_staging = SegmentStaging(self._segment)
            self._stream.segment = self._segment
            old_segment.remove()
        elif self._segment is not None:
            # The tensors changed: a segment laid out for them; the parameters keep their values.
            pending = set(self._edits.changed())
            old_segment = self._segment
            self._bind_segment(old_segment.renewed([p.numel() for p in self._params]))
            old_segment.remove()
            self._edits.record([i for i in range(len(self._params)) if i not in pending])

    @property
    def wire_dtype(self) -> str:
        """The element type of chunks to and from the server: float32, bfloat16 or float16."""
        return self._stream.wire_dtype

    @property
    def retry_for(self) -> float:
        """Seconds a step is retried while the server is unavailable (0: never); settable."""
        return self._stream.retry_for

    @retry_for.setter
    def retry_for(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"retry_for must be 0 or more seconds, not {seconds}")
        self._stream.retry_for = seconds

    def _check_layout(self, spec: pb.ModelSpec, saved_groups: List[Dict[str, Any]]) -> None:
        if len(spec.tensors) != len(self._params):
            raise ValueError(f"loaded state dict holds {len(spec.tensors)} tensors; this optimizer has "
                             f"{len(self._params)} parameters")
        for i, (t, p) in enumerate(zip(spec.tensors, self._params)):
            if list(t.shape) != (list(p.shape) or [1]):
                raise ValueError(f"loaded state dict: tensor {i} ({t.name!r}) has shape {list(t.shape)}; parameter "
                                 f"{self._names[i]!r} has shape {list(p.shape)}")
        index_of = {id(p): i for i, p in enumerate(self._params)}
        ours = [sorted(index_of[id(p)] for p in g["params"]) for g in self.param_groups]
        theirs = [sorted(g["params"]) for g in saved_groups]
        by_spec = [sorted(i for i, g in enumerate(tensor_groups(spec)) if g == gi) for gi in range(len(spec.groups))]
        if ours != theirs or theirs != by_spec:
            raise ValueError(f"loaded state dict has parameter groups {theirs} (parameter indices); this optimizer "
                             f"has {ours}")

    # -- snapshots, branches and exports ------------------------------------------------------

    def snapshot(self) -> pb.SnapshotInfo:
        """Writes a resumable snapshot of the model to the server's state directory (weights,
        every state buffer, counters, configuration, the trainers' sequence numbers), atomically.
        Needs a server started with ``--state-dir``.

        Returns:
            its ``SnapshotInfo``: ``id``, ``version``, ``path`` (the snapshot's directory relative
            to the state directory, holding ``weights.safetensors`` with the train weights,
            ``state.safetensors`` with the state buffers under ``"<tensor>/<slot>"``, and
            ``eval.safetensors`` for a model with an eval view), ``bytes`` and
            ``created_unix_millis``.
        """
        self._push_edits()
        return self.client.snapshot(self.model)

    def list_snapshots(self) -> List[pb.SnapshotInfo]:
        """The model's snapshots on the server, oldest first, each verified (``valid``, ``problem``)."""
        return self.client.list_snapshots(self.model)

    def restore(self, snapshot: Union[str, pb.SnapshotInfo]) -> pb.ModelInfo:
        """Rolls the model back to one of its snapshots (an id, or a ``SnapshotInfo`` from
        :meth:`snapshot` or :meth:`list_snapshots`): the server replaces the model with the
        snapshot's weights, optimizer state and counters, and the parameters receive its weights
        (in the current mode's view). ``param_groups`` take the snapshot's base learning rates;
        a torch lr scheduler keeps its own position. A corrupt snapshot raises
        :class:`~optsidecar.DataLoss` and changes nothing.

        Returns:
            the restored model's description.
        """
        snapshot_id = snapshot.id if isinstance(snapshot, pb.SnapshotInfo) else str(snapshot)
        if not snapshot_id:
            raise ValueError("restore() needs the id of a snapshot (see list_snapshots())")
        self._stream.close()
        info = self.client.restore(self.model, snapshot_id, replace=True)
        self._adopt_server_groups(info)
        self._new_stream(info)
        self.last_result = None
        self._pull_into_params(self._mode)
        return info

    def fork(self, new_model: str, schedule: Union[None, Mapping[str, Any], pb.Schedule] = None) -> pb.ModelInfo:
        """Branches the model: the server copies it, with all its optimizer state and counters,
        into a new model ``new_model``, which steps exactly as this one would from here. Training
        this optimizer goes on unchanged. Does not need ``--state-dir``.

        Args:
            new_model: the branch's name; no model of that name may exist.
            schedule: the branch's server-side lr schedule from the current step on, e.g.
                ``dict(type="wsd", ...)`` for a cooldown starting now; None keeps this model's.

        Returns:
            the branch's description. Train it with another optimizer attached to it::

                branch = RemoteOptimizer(other_model.named_parameters(), target=target, model=new_model,
                                         attach=True)
        """
        self._push_edits()
        return self.client.fork(self.model, new_model, schedule)

    def export(self, view: Optional[str] = None) -> pb.ExportInfo:
        """Writes one view of the weights as a safetensors file on the server, for deployment
        (no optimizer state: it cannot be resumed). Needs ``--state-dir``.

        Args:
            view: ``"eval"``, ``"train"``, ``"ema:0.999"``, ...; None means the eval view, or the
                train view for an algorithm without one.

        Returns:
            its ``ExportInfo``: ``path`` relative to the state directory
            (``exports/<model>/v<version>-<view>.safetensors``), ``version``, ``view``, ``bytes``.
        """
        self._push_edits()
        return self.client.export(self.model, view)

    # -- lifetime ------------------------------------------------------------------------------

    def delete(self) -> None:
        """Deletes the model from the server (its weights and state are gone) and closes."""
        self._stream.close()
        self.client.delete(self.model)
        self.close()

    def close(self) -> None:
        """Ends the Step stream and, if this optimizer opened it, the connection. A named model
        stays on the server; an ephemeral one (see ``ephemeral``) is deleted."""
        if self._closed:
            return
        self._closed = True
        _EPHEMERAL_OPTIMIZERS.discard(self)
        if self._lease is not None:
            self._lease.stop()
        self._stream.close()
        if self._segment_staging is not None:
            self._segment_staging.close()
        if self._segment is not None:
            self._segment.remove()  # the parameters keep the mapping until they are gone
        try:
            if self.lease_seconds:
                try:
                    # Not waiting longer than the lease: if the server cannot be reached, it expires anyway.
                    self.client.delete(self.model, timeout=min(self.lease_seconds, self.client.timeout or self.lease_seconds))
                except NotFound:
                    pass  # deleted already, or its lease expired
                except OptSidecarError as e:
                    _LOG.info("could not delete ephemeral model %r (%s); the server deletes it when its %d s "
                              "lease expires", self.model, e, self.lease_seconds)
        finally:
            if self._owns_client:
                self.client.close()

    def __del__(self) -> None:
        # Only an optimizer that finished its constructor has anything to close.
        if getattr(self, "_stream", None) is not None and not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:  # noqa: BLE001 - the lease expires on the server anyway
                pass

    def __enter__(self) -> "RemoteOptimizer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _format1_upgraded(spec: Dict[str, Any], declared: Sequence[str]) -> Dict[str, Any]:
    """A format-1 state dict's spec in the current format: the ``k``, ``weight_sum`` and ``lr_max``
    of its groups (also in the trainers' stored step results; zeros left out, k a string) become
    the group scalars the algorithm declares, as this optimizer's model on the server lists them."""
    spec = copy.deepcopy(spec)
    state = spec.get("state", {})
    groups = list(state.get("groups", []))
    for progress in state.get("clients", []):
        groups.extend(progress.get("last_result", {}).get("groups", []))
    for group in groups:
        saved = {name: float(group.pop(name, 0.0)) for name in _FORMAT1_SCALARS}
        group["scalars"] = {name: saved[name] for name in declared if name in saved}
    return spec


def _server_layout(groups: List[ParsedGroup], info: pb.ModelInfo) -> List[ParsedGroup]:
    """The given parameters regrouped as the server's model groups them (for attach=True)."""
    params = [(n, p) for g in groups for n, p in zip(g.names, g.params)]
    if len(params) != len(info.tensors):
        raise ValueError(f"model {info.name!r} has {len(info.tensors)} tensors but {len(params)} parameters were "
                         f"given")
    for i, ((name, p), t) in enumerate(zip(params, info.tensors)):
        if list(t.shape) != (list(p.shape) or [1]):
            raise ValueError(f"model {info.name!r}: tensor {i} ({t.name!r}) has shape {list(t.shape)}; parameter "
                             f"{name!r} has shape {list(p.shape)}")
    out = []
    for g in info.groups:
        members = [i for i, t in enumerate(info.tensors) if t.group == g.name]
        out.append(ParsedGroup(g.name, [info.tensors[i].name for i in members], [params[i][1] for i in members]))
    if [id(p) for g in out for p in g.params] != [id(p) for _, p in params]:
        raise ValueError(f"model {info.name!r} interleaves its groups' tensors; attach needs each group's tensors "
                         f"to be consecutive")
    return out
