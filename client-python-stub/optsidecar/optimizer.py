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
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
from google.protobuf import json_format

from .buffers import Destination
from .checkpoint import ServerState, capture, restore
from .client import DEFAULT_RETRY_SECONDS, Client, StepStream, next_step_id
from .errors import AlreadyExists, InvalidArgument, ModelChanged, NotFound, OptSidecarError, StaleGradient
from .param_groups import add_group, parse_new_group
from .params import ParsedGroup, parse_params
from .results import CoordinationStatus, StepFigures, VersionContributions
from .spec import from_struct, model_spec, optimizer_config, tensor_groups
from .v1 import optimizer_pb2 as pb

__all__ = ["RemoteOptimizer"]

_LOG = logging.getLogger("optsidecar")

#: The ``"optsidecar"`` entry of a state dict: its format version. 2: each group's counters in
#: ``spec["state"]`` are a ``scalars`` dict; 1, still loaded: they were ``k``, ``weight_sum`` and
#: ``lr_max`` entries of every group, whatever the algorithm.
STATE_DICT_FORMAT = 2
_FORMAT1_SCALARS = ("k", "weight_sum", "lr_max")

#: Grace period of an ephemeral model's lease: the server deletes the model when its optimizer has
#: not renewed the lease for this long (its process died). Renewed every third of it.
DEFAULT_LEASE_SECONDS = 60


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
        target (str): ``host:port`` of the server (default ``127.0.0.1:50051``).
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
        retry_for (float): seconds a step is retried while the server is unavailable (restarting,
            connection dropped), default 60; 0 raises ``ServerUnavailable`` at once. See below.
        ephemeral (bool, optional): register the model with a lease: a daemon thread renews it
            every ``lease_seconds / 3`` while the optimizer lives, :meth:`close` (also on garbage
            collection and at interpreter exit) deletes the model, and if the process dies the
            server deletes it once ``lease_seconds`` pass without a renewal. Default: True for an
            auto-named model, False for a named one. With ``attach=True`` the optimizer renews the
            lease of an ephemeral model it attaches to but never deletes it.
        lease_seconds (int): the lease's grace period (default 60).
        **hyperparameters: the algorithm's arguments under torch's and schedule_free's names
            (``lr``, ``betas``, ``eps``, ``weight_decay``, ``momentum``, ``warmup_steps``, ...);
            missing ones take the reference defaults.

    **Learning rate.** Each group's ``param_groups[i]["lr"]`` is its *base* lr and is sent with
    every step, so torch's lr schedulers work as usual. If the model also has a server-side
    ``schedule``, the server multiplies that base lr by the schedule's factor: the two compose.
    Use one or the other unless you mean both. :attr:`last_result` reports the lr actually used.
    Other hyperparameters are fixed at registration; changing them in ``param_groups`` raises.

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
        >>> opt = RemoteOptimizer(model.named_parameters(), algorithm="AdamW", lr=1e-3)
        >>> opt.zero_grad()
        >>> loss_fn(model(input), target).backward()
        >>> opt.step()
        >>> opt.last_result.lr
        {'group0': 0.001}
    """

    def __init__(self, params: Any, target: str = "127.0.0.1:50051", algorithm: Optional[str] = None,
                 model: Optional[str] = None, client_id: Optional[str] = None, *, attach: bool = False,
                 schedule: Optional[Dict[str, Any]] = None, ema: Any = None,
                 lookahead: Optional[Dict[str, Any]] = None, clip_grad_norm: float = 0.0,
                 report_update_norm: bool = False, non_finite: Optional[str] = None,
                 client: Optional[Client] = None, retry_for: float = DEFAULT_RETRY_SECONDS,
                 coordination: Any = None, ephemeral: Optional[bool] = None,
                 lease_seconds: int = DEFAULT_LEASE_SECONDS, **hyperparameters: Any):
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
        self.client = client if client is not None else Client(target)
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
        self._mode = "train"
        #: Figures of the last step (:class:`~optsidecar.results.StepFigures`), None before the first.
        self.last_result: Optional[StepFigures] = None
        #: The model version (steps applied) the parameters belong to.
        self.version: int = info.version
        self._adopt_server_groups(info)
        self._stream = StepStream(self.client, self.model, self.client_id, [t.numel for t in info.tensors],
                                  next_step_id=next_step_id(info, self.client_id), retry_for=retry_for)
        if attach:
            self._pull_into_params("train")
            attached_lease = self.client.renew_lease(self.model)
            if attached_lease:
                self._lease = _LeaseKeeper(self.client, self.model, attached_lease)
        elif self.lease_seconds:
            self._lease = _LeaseKeeper(self.client, self.model, self.lease_seconds)
            _EPHEMERAL_OPTIMIZERS.add(self)

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
        info, added_by_another = add_group(self.client, self.model, len(self._params), group)
        super().add_param_group({"params": group.params, **group.overrides})
        values = from_struct(next(g for g in info.groups if g.name == group.name).hyperparameters)
        self.param_groups[-1].update(values)
        self._fixed.append({k: _normalized(v) for k, v in values.items() if k != "lr"})
        self._params.extend(group.params)
        self._names.extend(group.names)
        self._group_names.append(group.name)
        self._new_stream(info)  # the old one was ended by the server: the model's tensors changed
        if added_by_another:
            self._pull_into_params(self._mode)

    def _adopt_server_groups(self, info: pb.ModelInfo) -> None:
        """Fills param_groups with the server's effective hyperparameters (lr is the base lr) and
        remembers the ones that are fixed, to catch edits that would have no effect."""
        by_name = {g.name: g for g in info.groups}
        self._algorithm = info.optimizer.algorithm
        self._fixed: List[Dict[str, Any]] = []
        for name, group in zip(self._group_names, self.param_groups):
            values = from_struct(by_name[name].hyperparameters)
            group.update(values)
            self._fixed.append({k: _normalized(v) for k, v in values.items() if k != "lr"})

    def _check_fixed(self) -> None:
        for index, (group, fixed) in enumerate(zip(self.param_groups, self._fixed)):
            for key, value in fixed.items():
                if _normalized(group.get(key)) != value:
                    raise ValueError(
                        f"param_groups[{index}][{key!r}] changed from {value} to {group.get(key)}: the server fixes "
                        f"every hyperparameter but lr when the model is registered (a momentum-cycling scheduler "
                        f"needs cycle_momentum=False)")

    def _group_lr(self) -> Dict[str, float]:
        return {name: float(group["lr"]) for name, group in zip(self._group_names, self.param_groups)}

    # -- stepping ------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Performs a single optimization step on the server.

        Sends each parameter's ``.grad`` (a parameter whose ``.grad`` is None is skipped, as torch
        skips it), then writes the updated train weights into the parameters in place.

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
        self._check_fixed()
        grads = []
        for name, p in zip(self._names, self._params):
            g = p.grad
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
        try:
            figures = self._stream.step(grads, self._destinations(), view="train", group_lr=self._group_lr(),
                                        base_version=self.version)
        except StaleGradient as e:
            raise e.with_message(f"{e} [call optimizer.pull(), compute the gradient again and step]") from None
        except ModelChanged as e:
            raise e.with_message(f"{e} [another trainer added parameters to the model: call "
                                 f"optimizer.add_param_group() with the same parameters, names and group name, "
                                 f"then step again]") from None
        self.last_result = figures
        # The weights now in the parameters: the current ones after a replayed or late step.
        self.version = figures.weights_version if figures.weights_version is not None else figures.version
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Resets the gradients of all parameters (to None by default, as torch 2.x does)."""
        super().zero_grad(set_to_none=set_to_none)

    def _destinations(self) -> List[Destination]:
        """The parameters as destinations: written in place when they are CPU float32 and
        contiguous, else through a staging buffer kept for the next time."""
        destinations = [Destination(p, staging=self._staging.get(i)) for i, p in enumerate(self._params)]
        for i, d in enumerate(destinations):
            if d.staged:
                self._staging[i] = d.array
        return destinations

    # -- views ---------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> "RemoteOptimizer":
        """Puts the train view (where gradients are taken) into the parameters; ``train(False)`` is
        :meth:`eval`. A no-op when already in that mode."""
        if not mode:
            return self.eval()
        if self._mode != "train":
            self._pull_into_params("train")
            self._mode = "train"
        return self

    def eval(self) -> "RemoteOptimizer":
        """Puts the eval view into the parameters: Schedule-Free's x, else Lookahead's slow weights,
        else the first EMA shadow. Raises ``InvalidArgument`` for a model without one (e.g. plain
        AdamW) and ``FailedPrecondition`` for an EMA shadow before its first update."""
        if self._mode == "eval":
            return self
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

    def resync(self) -> None:
        """Pulls the current mode's view into the parameters, e.g. after a step failed midway or
        when another trainer steps the same model."""
        self._pull_into_params(self._mode)
        self._stream.partial_weights = False

    def _pull_into_params(self, view: str) -> None:
        weights = self.client.pull(self.model, view, self._destinations())
        self.version = weights.version

    # -- state dict ----------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """The whole optimizer as the server holds it, for ``torch.save``.

        Holds: ``spec``, the ``ModelSpec`` that re-creates the model (tensors, groups with their
        effective hyperparameters, configuration, and the counters of Describe's ``ModelState``
        in ``spec["state"]``), as a dict; ``weights``, the train view, and ``slots``, every state
        buffer of every tensor by slot name, as CPU float32 tensors; ``param_groups`` as torch
        keeps them (with parameter indices); and ``mode``. Loading it with :meth:`load_state_dict`
        continues training bit for bit.
        """
        def allocate(index: int, _info: pb.TensorInfo) -> torch.Tensor:
            return torch.empty(self._params[index].shape, dtype=torch.float32)

        state = capture(self.client, self.model, allocate)
        index_of = {id(p): i for i, p in enumerate(self._params)}
        groups = []
        for group in self.param_groups:
            saved = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            saved["params"] = [index_of[id(p)] for p in group["params"]]
            groups.append(saved)
        return {
            "optsidecar": STATE_DICT_FORMAT,
            "model": self.model,
            "mode": self._mode,
            "spec": json_format.MessageToDict(state.spec, preserving_proto_field_name=True),
            "weights": state.weights,
            "slots": state.slots,
            "param_groups": groups,
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores a :meth:`state_dict`: the server's model under this optimizer's name is replaced
        by the saved one (weights, state buffers and counters), the parameters receive the saved
        weights, and ``param_groups`` the saved values (lr, and keys such as a scheduler's
        ``initial_lr``). The parameters must have the saved shapes and group layout.
        """
        saved_format = state_dict.get("optsidecar")
        if saved_format not in (1, STATE_DICT_FORMAT):
            raise ValueError("not a RemoteOptimizer state dict (its 'optsidecar' format entry is "
                             f"{saved_format!r}, expected 1 or {STATE_DICT_FORMAT})")
        spec_dict = state_dict["spec"]
        if saved_format == 1:
            declared = [s.name for s in self.client.describe(self.model).groups[0].scalars]
            spec_dict = _format1_upgraded(spec_dict, declared)
        spec = json_format.ParseDict(spec_dict, pb.ModelSpec())
        # The model stays as ephemeral as this optimizer made it, whatever the saved one was.
        spec.lease_seconds = self.lease_seconds
        saved_groups = state_dict["param_groups"]
        self._check_layout(spec, saved_groups)

        self._stream.close()
        try:
            self.client.delete(self.model)
        except NotFound:
            pass
        state = ServerState(spec, list(state_dict["weights"]), {k: list(v) for k, v in state_dict["slots"].items()})
        new_info = restore(self.client, self.model, state, tensor_names=self._names)

        self._group_names = [g.name for g in new_info.groups]
        self._adopt_server_groups(new_info)
        for group, saved in zip(self.param_groups, saved_groups):
            group.update({k: copy.deepcopy(v) for k, v in saved.items() if k != "params"})
        self._new_stream(new_info)
        with torch.no_grad():
            for p, w in zip(self._params, state.weights):
                p.copy_(torch.as_tensor(w).reshape(p.shape))
        self.version = new_info.version
        self.last_result = None
        self._mode = "train"
        if state_dict.get("mode") == "eval":
            self.eval()

    def _new_stream(self, info: pb.ModelInfo) -> None:
        """A Step stream for the model as ``info`` describes it (after it was replaced), keeping
        this trainer's sequence numbers growing past both its own and the model's ledger."""
        old = self._stream
        old.close()
        self._stream = StepStream(self.client, self.model, self.client_id, [t.numel for t in info.tensors],
                                  next_step_id=max(old.next_step_id, next_step_id(info, self.client_id)),
                                  retry_for=old.retry_for)

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

                branch = RemoteOptimizer(other_model.named_parameters(), target, model=new_model,
                                         attach=True)
        """
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


def _normalized(value: Any) -> Any:
    """A hyperparameter value in a comparable form (tuples and lists alike, numbers as float)."""
    if isinstance(value, (list, tuple)):
        return tuple(_normalized(v) for v in value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, torch.Tensor):
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
