"""The reference optimizers' shapes: which ``torch.optim`` or ``schedulefree`` class each server
algorithm matches, what that class keeps in its param groups and per-parameter state, and the
conversion between a model's state as the server holds it and the reference's state dict."""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from .checkpoint import ServerState
from .spec import from_struct, spec_from_info, to_struct
from .v1 import optimizer_pb2 as pb

__all__ = [
    "Reference",
    "reference",
    "has_reference",
    "required_slots",
    "group_entries",
    "client_side_entries",
    "tensor_state",
    "from_reference_state_dict",
    "SCHEDULE_FREE_GROUP_ENTRIES",
]


@dataclass(frozen=True)
class Reference:
    """The reference implementation of a server algorithm, as far as its state dict goes.

    Attributes:
        module: ``torch.optim`` or ``schedulefree``.
        name: the class name.
        slots: the per-parameter state entries it keeps besides ``step``, in its order (each kept
            only under the hyperparameters that need it, see :func:`required_slots`).
        tensor_step: whether it keeps a per-parameter ``step`` (a float32 tensor since torch 1.12).
    """

    module: str
    name: str
    slots: Tuple[str, ...]
    tensor_step: bool

    @property
    def qualified_name(self) -> str:
        return f"{self.module}.{self.name}"

    @property
    def schedule_free(self) -> bool:
        return self.module == "schedulefree"


_ADAM_SLOTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_RADAM = ("torch.optim", "RAdam", ("exp_avg", "exp_avg_sq"), True)
_REFERENCES = {
    "SGD": Reference("torch.optim", "SGD", ("momentum_buffer",), False),
    "Adam": Reference("torch.optim", "Adam", _ADAM_SLOTS, True),
    "AdamW": Reference("torch.optim", "AdamW", _ADAM_SLOTS, True),
    "RAdam": Reference(*_RADAM),
    "RAdam(torch2.x)": Reference(*_RADAM),
    # The paper's variant has no class of its own in torch; its state has torch RAdam's shape.
    "RAdam(original)": Reference(*_RADAM),
    "SGDScheduleFree": Reference("schedulefree", "SGDScheduleFree", ("z",), False),
    # exp_avg: only with the server's inner_momentum, which schedulefree's class does not have.
    "AdamWScheduleFree": Reference("schedulefree", "AdamWScheduleFree", ("z", "exp_avg_sq", "exp_avg"), False),
    "RAdamScheduleFree": Reference("schedulefree", "RAdamScheduleFree", ("z", "exp_avg_sq"), False),
}

#: What schedulefree's param groups hold besides hyperparameters: its counters (k, weight_sum,
#: lr_max: the server's group scalars), whether the parameters hold y (train) or x (eval), and the
#: lr its last step used (lr times the warmup or rectification factor).
SCHEDULE_FREE_GROUP_ENTRIES = ("k", "train_mode", "weight_sum", "lr_max", "scheduled_lr")
#: Entries torch keeps in param groups that choose an implementation, not the arithmetic.
_IMPLEMENTATION_ENTRIES = ("foreach", "capturable", "differentiable", "fused")
#: Hyperparameters that tell one reference algorithm from another: a state dict holding one that
#: this optimizer's algorithm lacks was saved by another algorithm.
_DISTINCTIVE = ("momentum", "dampening", "nesterov", "betas", "eps", "amsgrad", "warmup_steps", "r",
                "weight_lr_power", "silent_sgd_phase")
#: torch 1.13 stores SGD's momentum_buffer as None when momentum is 0; later torch (from about 2.1)
#: stores nothing then.
_SGD_STORES_NO_BUFFER_AS_NONE = tuple(int(x) for x in torch.__version__.split(".")[:2] if x.isdigit()) < (2, 1)


def reference(algorithm: str) -> Reference:
    """The reference of a server algorithm (``"AdamW"`` -> ``torch.optim.AdamW``). An algorithm
    without one (a server newer than this client) gets a stand-in that keeps no slot under a
    reference name: its state dicts hold every slot among the server's extras."""
    return _REFERENCES.get(algorithm) or Reference("optsidecar", algorithm, (), False)


def has_reference(algorithm: str) -> bool:
    return algorithm in _REFERENCES


def required_slots(ref: Reference, hyperparameters: Mapping[str, Any]) -> Tuple[str, ...]:
    """The state entries (besides ``step``) a parameter that has stepped keeps, as the reference
    keeps them under these hyperparameters."""
    def enabled(name: str) -> bool:
        value = hyperparameters.get(name, 0)
        return bool(value) if isinstance(value, bool) else float(value) != 0.0

    if ref.name == "SGD":
        return ("momentum_buffer",) if enabled("momentum") else ()
    if ref.name in ("Adam", "AdamW"):
        return _ADAM_SLOTS if enabled("amsgrad") else _ADAM_SLOTS[:2]
    if ref.name == "AdamWScheduleFree":
        return ref.slots if enabled("inner_momentum") else ref.slots[:2]
    return ref.slots


_IMPLEMENTATION_CACHE: Dict[str, Dict[str, Any]] = {}


def _reference_class(ref: Reference) -> Optional[type]:
    if ref.module == "optsidecar":  # a stand-in: nothing to import
        return None
    try:
        return getattr(importlib.import_module(ref.module), ref.name)
    except (ImportError, AttributeError):
        return None


def client_side_entries(ref: Reference, hyperparameter_names: Iterable[str]) -> Dict[str, Any]:
    """The entries the reference class puts in its param groups, on this torch, that choose an
    implementation (``foreach``, ``capturable``, ...), with its default values: kept in
    ``param_groups`` for the reference to load, never sent to the server."""
    if ref.schedule_free:
        # schedulefree turns foreach on wherever torch has _foreach_mul_, but its foreach step
        # needs _foreach_lerp_ (torch 1.13 lacks it): keep the value its step runs with.
        return {"foreach": hasattr(torch, "_foreach_lerp_")}
    if ref.name not in _IMPLEMENTATION_CACHE:
        cls = _reference_class(ref)
        probe = cls([torch.zeros(1, requires_grad=True)], lr=1.0) if cls is not None else None
        _IMPLEMENTATION_CACHE[ref.name] = {k: v for k, v in (probe.defaults if probe else {}).items()
                                           if k in _IMPLEMENTATION_ENTRIES}
    names = set(hyperparameter_names)
    return {k: v for k, v in _IMPLEMENTATION_CACHE[ref.name].items() if k not in names}


def group_entries(ref: Reference, scalars: Mapping[str, float], train_mode: bool,
                  scheduled_lr: Optional[float]) -> Dict[str, Any]:
    """The counters a reference param group holds besides hyperparameters: every group scalar the
    server declares, by name (Schedule-Free's k as the int schedulefree counts it), and for
    Schedule-Free ``train_mode`` and ``scheduled_lr`` (0 before the first step, as schedulefree)."""
    entries: Dict[str, Any] = {name: int(value) if name == "k" else float(value) for name, value in scalars.items()}
    if ref.schedule_free:
        entries["train_mode"] = bool(train_mode)
        entries["scheduled_lr"] = 0.0 if scheduled_lr is None else float(scheduled_lr)
    return entries


def tensor_state(ref: Reference, steps: int, slots: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """One parameter's state as the reference keeps it after ``steps`` steps: ``step`` (Adam and
    RAdam: a float32 tensor, as torch since 1.12), then its slots in the reference's order, then
    any others (EMA shadows, Lookahead's slow weights) under the server's names."""
    state: Dict[str, Any] = {}
    if ref.tensor_step:
        state["step"] = torch.tensor(float(steps))
    for name in ref.slots:
        if name in slots:
            state[name] = slots[name]
    if ref.name == "SGD" and "momentum_buffer" not in slots and _SGD_STORES_NO_BUFFER_AS_NONE:
        state["momentum_buffer"] = None
    state.update({name: value for name, value in slots.items() if name not in state})
    return state


def _number(value: Any) -> float:
    """A float from a number or a 0-d tensor (torch keeps ``step`` and may keep ``lr`` as tensors)."""
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def _steps_of(value: Any, where: str) -> int:
    steps = _number(value)
    if not (math.isfinite(steps) and steps >= 0 and steps == int(steps)):
        raise ValueError(f"{where}: 'step' must be a whole number of steps >= 0, not {value!r}")
    return int(steps)


def from_reference_state_dict(state_dict: Mapping[str, Any], info: pb.ModelInfo, weights: Sequence[torch.Tensor],
                              group_sizes: Sequence[int]) -> Tuple[ServerState, List[Dict[str, Any]], str]:
    """Converts a state dict saved by the reference of the model's algorithm (``torch.optim.X`` or
    ``schedulefree.X``) into a state to register the model with.

    Args:
        state_dict: ``{"state": {index: {...}}, "param_groups": [...]}`` as the reference saved it.
        info: the model as the server describes it now: its algorithm, configuration, tensors,
            groups (whose hyperparameters the saved groups' override) and declared group scalars.
        weights: the parameters' current values, one per model tensor (for Schedule-Free: y, or x
            when the saved groups are in eval mode), as the model's ``load_state_dict`` left them.
        group_sizes: how many parameters each of this optimizer's groups holds, in order.

    Returns:
        the state to register; per group, the saved entries ``param_groups`` take besides
        ``params`` (lr, a scheduler's ``initial_lr``, ...); and the mode the parameters are in.

    Counters the reference does not keep are derived: a tensor's step count from ``step``
    (Adam, RAdam), from whether it has a momentum buffer (SGD) or a ``z`` (Schedule-Free: its
    group's ``k``); the model version, and the server schedule's position, as the most steps any
    tensor took. EMA shadows and Lookahead's slow weights start afresh.
    """
    algorithm = info.optimizer.algorithm
    if not has_reference(algorithm):
        raise ValueError(f"{algorithm} has no torch.optim or schedulefree reference whose state dict could be "
                         f"loaded: load a state dict saved by RemoteOptimizer.state_dict()")
    ref = reference(algorithm)
    saved_groups = list(state_dict["param_groups"])
    saved_state = state_dict.get("state", {})
    saved_sizes = [len(g.get("params", ())) for g in saved_groups]
    if saved_sizes != list(group_sizes):
        raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups of {saved_sizes} parameters; "
                         f"this optimizer has {len(group_sizes)} of {list(group_sizes)}: build the optimizer with "
                         f"the same param groups as the one that saved it")
    # As torch maps them: by position, group by group.
    index_of = {saved: ours for ours, saved in enumerate(i for g in saved_groups for i in g["params"])}
    group_of = [gi for gi, size in enumerate(group_sizes) for _ in range(size)]

    spec = spec_from_info(info)
    spec.ClearField("state")
    group_hyperparameters: List[Dict[str, Any]] = []
    counters: List[pb.GroupCounters] = []
    for gi, (saved, group_info, group_spec) in enumerate(zip(saved_groups, info.groups, spec.groups)):
        ours = set(group_info.hyperparameters.fields)
        _refuse_another_family(ref, algorithm, gi, saved, ours)
        changed = {k: v for k, v in saved.items() if k in ours}
        group_hyperparameters.append({**from_struct(group_info.hyperparameters), **changed})
        for name, value in to_struct(changed, f"param_groups[{gi}]").fields.items():
            group_spec.hyperparameters.fields[name].CopyFrom(value)
        lr = _number(saved.get("lr", group_info.hyperparameters["lr"]))
        scalars = _saved_scalars(ref, gi, saved, group_info)
        counters.append(pb.GroupCounters(group=group_info.name, lr=lr, scalars=scalars))

    tensor_steps = [0] * len(info.tensors)
    slots: Dict[str, List[Optional[torch.Tensor]]] = {}
    for saved_index, entries in saved_state.items():
        if saved_index not in index_of:
            raise ValueError(f"loaded state dict has state for parameter {saved_index!r}, which no param group lists")
        i = index_of[saved_index]
        where = f"loaded state dict's state[{saved_index}] (parameter {info.tensors[i].name!r})"
        group_k = counters[group_of[i]].scalars.get("k", 0.0)
        tensor_steps[i], present = _saved_tensor(ref, where, entries, group_hyperparameters[group_of[i]], group_k,
                                                 tuple(weights[i].shape))
        for name, value in present.items():
            slots.setdefault(name, [None] * len(info.tensors))[i] = value.detach().to("cpu", torch.float32)

    version = max([0] + [int(c.scalars["k"]) for c in counters if "k" in c.scalars] + tensor_steps)
    eval_mode = ref.schedule_free and not bool(saved_groups[0].get("train_mode", True))
    spec.state.CopyFrom(pb.ModelState(
        version=version, schedule_step=version, tensor_steps=tensor_steps, groups=counters,
        weights_view=pb.VIEW_EVAL if eval_mode else pb.VIEW_TRAIN))
    cpu_weights = [w.detach().to("cpu", torch.float32) for w in weights]
    param_group_entries = [{k: v for k, v in saved.items() if k != "params"} for saved in saved_groups]
    return ServerState(spec, cpu_weights, slots), param_group_entries, "eval" if eval_mode else "train"


def _refuse_another_family(ref: Reference, algorithm: str, index: int, saved: Mapping[str, Any],
                           ours: Iterable[str]) -> None:
    """Raises when saved group ``index`` is plainly another algorithm's: Schedule-Free's counters
    where they do not belong (or missing where they do), or a hyperparameter that tells
    algorithms apart and this one lacks."""
    counters = ("k", "weight_sum", "lr_max")
    off = [k for k in counters if (k not in saved) == ref.schedule_free]
    foreign = sorted(k for k in saved if k in _DISTINCTIVE and k not in set(ours))
    if not off and not foreign:
        return
    what = (f"lacks the counters {off} that {ref.qualified_name} keeps in every param group" if off and
            ref.schedule_free else f"holds Schedule-Free's counters {off}" if off else
            f"holds {foreign}, which {algorithm} does not have")
    raise ValueError(f"loaded state dict's param_groups[{index}] {what}: it was saved by another algorithm than "
                     f"{ref.qualified_name}; load it into a RemoteOptimizer with that algorithm")


def _saved_scalars(ref: Reference, index: int, saved: Mapping[str, Any], group: pb.GroupInfo) -> Dict[str, float]:
    """The group scalars the server declares for the group, from saved group ``index``."""
    scalars = {}
    for scalar in group.scalars:
        if scalar.name not in saved:
            raise ValueError(f"loaded state dict's param_groups[{index}] lacks {scalar.name!r}, which "
                             f"{ref.qualified_name} keeps in every param group")
        value = _number(saved[scalar.name])
        if not math.isfinite(value):
            raise ValueError(f"loaded state dict's param_groups[{index}][{scalar.name!r}] must be finite, not {value}")
        scalars[scalar.name] = value
    return scalars


def _saved_tensor(ref: Reference, where: str, entries: Mapping[str, Any], hyperparameters: Mapping[str, Any],
                  group_k: float, shape: Tuple[int, ...]) -> Tuple[int, Dict[str, torch.Tensor]]:
    """One parameter's saved state: its step count (from ``step``; SGD: 1 once it has a buffer;
    Schedule-Free: its group's k once it has z) and its slots, checked against what the reference
    keeps under ``hyperparameters``."""
    required = required_slots(ref, hyperparameters)
    present = {k: v for k, v in entries.items() if k != "step" and v is not None}
    unknown = sorted(k for k in present if k not in required)
    if unknown:
        raise ValueError(f"{where} holds {unknown}, which {ref.qualified_name} with these hyperparameters does not "
                         f"keep (it keeps {list(required)}): it was saved by another algorithm or with other "
                         f"hyperparameters; load it into a RemoteOptimizer configured as the saving one")
    if ref.tensor_step:
        if "step" not in entries and present:
            raise ValueError(f"{where} lacks 'step', which {ref.qualified_name} keeps for every parameter it "
                             f"stepped: the state dict is incomplete; save it again from the optimizer that "
                             f"trained these parameters")
        steps = _steps_of(entries["step"], where) if "step" in entries else 0
    elif ref.schedule_free:
        steps = int(group_k) if "z" in present else 0
    else:
        steps = 1 if present else 0
    missing = [k for k in required if k not in present] if present or steps else []
    if missing:
        raise ValueError(f"{where} lacks {missing}, which {ref.qualified_name} keeps for a parameter that stepped "
                         f"under these hyperparameters: the state dict is incomplete; save it again from the "
                         f"optimizer that trained these parameters")
    for name, value in present.items():
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{where}[{name!r}] has shape {got}; the parameter has shape {shape}: load the state "
                             f"dict into an optimizer over the same parameters")
    return steps, present

