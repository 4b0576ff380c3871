"""Building ``ModelSpec`` messages from Python values, and back from a server's description."""

from __future__ import annotations

import numbers
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

from google.protobuf import struct_pb2

from .v1 import optimizer_pb2 as pb

__all__ = [
    "to_struct",
    "from_struct",
    "optimizer_config",
    "make_schedule",
    "make_coordination",
    "model_spec",
    "spec_from_info",
    "renamed",
    "tensor_groups",
]


def _plain(value: Any, field: str) -> Any:
    """A JSON-like value for a Struct: bools, numbers (as float), strings and lists of them."""
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{field}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, numbers.Real):
        return float(value)
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        return _plain(value.item(), field)  # numpy scalars, 0-d torch tensors
    raise TypeError(f"{field}: {type(value).__name__} is not a number, bool, string or list of them")


def to_struct(values: Mapping[str, Any], field: str = "hyperparameters") -> struct_pb2.Struct:
    """A ``google.protobuf.Struct`` of hyperparameters (numbers become doubles, tuples lists)."""
    struct = struct_pb2.Struct()
    for name, value in values.items():
        if not isinstance(name, str):
            raise TypeError(f"{field}: names must be strings, not {type(name).__name__}")
        plain = _plain(value, f"{field}[{name!r}]")
        if isinstance(plain, list):
            struct.get_or_create_list(name).extend(plain)
        else:
            struct[name] = plain
    return struct


def from_struct(struct: struct_pb2.Struct) -> Dict[str, Any]:
    """Plain Python values of a Struct; lists become tuples, as torch keeps ``betas``."""

    def convert(value: struct_pb2.Value) -> Any:
        kind = value.WhichOneof("kind")
        if kind == "number_value":
            return value.number_value
        if kind == "bool_value":
            return value.bool_value
        if kind == "string_value":
            return value.string_value
        if kind == "list_value":
            return tuple(convert(v) for v in value.list_value.values)
        if kind == "struct_value":
            return {k: convert(v) for k, v in value.struct_value.fields.items()}
        return None

    return {name: convert(value) for name, value in struct.fields.items()}


EmaLike = Union[float, Mapping[str, Any]]
_NON_FINITE = {
    None: pb.NON_FINITE_POLICY_UNSPECIFIED,
    "reject": pb.NON_FINITE_REJECT,
    "skip": pb.NON_FINITE_SKIP,
}


def optimizer_config(
    algorithm: str,
    hyperparameters: Mapping[str, Any],
    *,
    schedule: Optional[Mapping[str, Any]] = None,
    ema: Union[None, EmaLike, Sequence[EmaLike]] = None,
    lookahead: Optional[Mapping[str, Any]] = None,
    clip_grad_norm: float = 0.0,
    report_update_norm: bool = False,
    non_finite: Optional[str] = None,
) -> pb.OptimizerConfig:
    """An ``OptimizerConfig``.

    Args:
        algorithm: ``SGD``, ``Adam``, ``AdamW``, ``RAdam``, ``RAdam(torch2.x)``, ``RAdam(original)``,
            ``SGDScheduleFree``, ``AdamWScheduleFree`` or ``RAdamScheduleFree``.
        hyperparameters: the algorithm's arguments under torch's / schedule_free's names.
        schedule: ``dict(type="cosine", warmup_steps=..., total_steps=...)`` and so on.
        ema: EMA shadows: a decay, a list of decays, or dicts ``{"decay": 0.999, "every": 1}``.
        lookahead: ``dict(k=5, alpha=0.5, pullback_momentum="none")``.
        clip_grad_norm: clip the step's gradients to this global norm (0: no clipping).
        report_update_norm: report ``|θ_new − θ_old|`` in each step's figures.
        non_finite: ``"reject"`` (default) or ``"skip"`` a step whose gradient holds NaN or Inf.
    """
    if not isinstance(algorithm, str):
        raise TypeError(f"algorithm must be a string such as 'AdamW', not {type(algorithm).__name__}")
    config = pb.OptimizerConfig(
        algorithm=algorithm,
        hyperparameters=to_struct(hyperparameters),
        clip_grad_norm=float(clip_grad_norm),
        report_update_norm=bool(report_update_norm),
    )
    if non_finite not in _NON_FINITE:
        raise ValueError(f"non_finite must be 'reject' or 'skip', not {non_finite!r}")
    config.non_finite = _NON_FINITE[non_finite]
    if schedule is not None:
        config.schedule.CopyFrom(make_schedule(schedule))
    for shadow in _ema_list(ema):
        config.ema.append(shadow)
    if lookahead is not None:
        settings = dict(lookahead)
        unknown = set(settings) - {"k", "alpha", "pullback_momentum"}
        if unknown:
            raise ValueError(f"lookahead: unknown settings {sorted(unknown)}; expected k, alpha, pullback_momentum")
        config.lookahead.CopyFrom(pb.Lookahead(
            k=int(settings.get("k", 5)),
            alpha=float(settings.get("alpha", 0.8)),
            pullback_momentum=str(settings.get("pullback_momentum", "none")),
        ))
    return config


def make_schedule(schedule: Union[Mapping[str, Any], pb.Schedule]) -> pb.Schedule:
    """A ``Schedule`` message from ``dict(type="cosine", warmup_steps=100, total_steps=1000)`` (the
    type and the schedule's parameters), or a ``Schedule`` message as it is."""
    if isinstance(schedule, pb.Schedule):
        return schedule
    parameters = dict(schedule)
    kind = parameters.pop("type", None)
    if not isinstance(kind, str):
        raise ValueError("schedule needs a 'type', e.g. dict(type='cosine', warmup_steps=100, total_steps=1000)")
    return pb.Schedule(type=kind, parameters=to_struct(parameters, "schedule"))


CoordinationLike = Union[None, Mapping[str, Any], pb.Coordination]
_MODES = {"async": pb.COORDINATION_ASYNC, "sync": pb.COORDINATION_SYNC}
_COMBINE = {"mean": pb.COMBINE_MEAN, "sum": pb.COMBINE_SUM}
_STALE = {"reject": pb.STALE_REJECT, "downweight": pb.STALE_DOWNWEIGHT}
_SETTINGS = {"async": {"mode", "max_staleness", "stale"}, "sync": {"mode", "k", "combine", "timeout_ms", "min_k"}}


def _count(settings: Mapping[str, Any], name: str) -> int:
    value = settings.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"coordination: {name} must be a whole number >= 0, not {value!r}")
    return int(value)


def make_coordination(coordination: CoordinationLike) -> pb.Coordination:
    """A ``Coordination`` message: how several trainers share a model.

    ``dict(mode="sync", k=0, combine="mean", timeout_ms=0, min_k=0)``: a step is applied once k
    contributions have arrived (k=0: as many as trainers are attached), their mean (or sum);
    after ``timeout_ms`` from its first contribution, a step goes ahead with ``min_k`` (0 means 1).

    ``dict(mode="async", max_staleness=0, stale="reject")``: each gradient is applied when it
    arrives; one computed more than ``max_staleness`` versions ago (0: no bound) is rejected
    (:class:`~optsidecar.errors.StaleGradient`) or, with ``stale="downweight"``, applied with its
    learning rate scaled by ``1/(1 + staleness)``.

    Settings left out take the defaults shown. A ``Coordination`` message is returned as it is.
    """
    if isinstance(coordination, pb.Coordination):
        return coordination
    if coordination is None:
        return pb.Coordination()
    settings = dict(coordination)
    mode = settings.get("mode", "async")
    if mode not in _MODES:
        raise ValueError(f"coordination: mode must be 'sync' or 'async', not {mode!r}")
    unknown = set(settings) - _SETTINGS[mode]
    if unknown:
        raise ValueError(f"coordination: unknown settings for mode {mode!r}: {sorted(unknown)}; expected "
                         f"{sorted(_SETTINGS[mode] - {'mode'})}")
    out = pb.Coordination(mode=_MODES[mode])
    if mode == "sync":
        combine = settings.get("combine", "mean")
        if combine not in _COMBINE:
            raise ValueError(f"coordination: combine must be 'mean' or 'sum', not {combine!r}")
        out.sync.CopyFrom(pb.SyncOptions(k=_count(settings, "k"), combine=_COMBINE[combine],
                                         timeout_ms=_count(settings, "timeout_ms"), min_k=_count(settings, "min_k")))
    else:
        stale = settings.get("stale", "reject")
        if stale not in _STALE:
            raise ValueError(f"coordination: stale must be 'reject' or 'downweight', not {stale!r}")
        # "async" is a Python keyword: the field is reached by name.
        getattr(out, "async").CopyFrom(pb.AsyncOptions(max_staleness=_count(settings, "max_staleness"), stale=_STALE[stale]))
    return out


def _ema_list(ema: Union[None, EmaLike, Sequence[EmaLike]]) -> Iterable[pb.EmaShadow]:
    if ema is None:
        return []
    items = [ema] if isinstance(ema, (numbers.Real, Mapping)) else list(ema)
    shadows = []
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            unknown = set(item) - {"decay", "every"}
            if unknown or "decay" not in item:
                raise ValueError(f"ema[{i}]: expected {{'decay': ..., 'every': ...}}, got {dict(item)}")
            shadows.append(pb.EmaShadow(decay=float(item["decay"]), every=int(item.get("every", 1))))
        else:
            shadows.append(pb.EmaShadow(decay=float(item), every=1))
    return shadows


def model_spec(
    name: str,
    tensors: Sequence[Tuple[str, Sequence[int]]],
    groups: Sequence[Tuple[str, Sequence[str], Mapping[str, Any]]],
    config: pb.OptimizerConfig,
    coordination: CoordinationLike = None,
) -> pb.ModelSpec:
    """A ``ModelSpec``: ``tensors`` as ``(name, shape)``, ``groups`` as ``(name, tensor names,
    hyperparameter overrides)``. A scalar (shape ``()``) is sent as shape ``[1]``. ``coordination``
    as :func:`make_coordination` takes it (None: asynchronous, no staleness bound)."""
    spec = pb.ModelSpec(name=name, optimizer=config)
    if coordination is not None:
        spec.coordination.CopyFrom(make_coordination(coordination))
    for tensor_name, shape in tensors:
        spec.tensors.append(pb.TensorSpec(name=tensor_name, shape=[int(d) for d in shape] or [1]))
    for group_name, members, overrides in groups:
        spec.groups.append(pb.ParamGroup(
            name=group_name, tensors=list(members),
            hyperparameters=to_struct(overrides, f"param group {group_name!r}")))
    return spec


def spec_from_info(info: pb.ModelInfo) -> pb.ModelSpec:
    """The spec that re-creates a described model, counters (``ModelInfo.state``) and how
    trainers share it (``ModelInfo.coordination.config``) included.

    Each group carries its effective hyperparameters, so the new model does not depend on the
    server's defaults staying the same.
    """
    spec = pb.ModelSpec(name=info.name)
    spec.optimizer.CopyFrom(info.optimizer)
    for t in info.tensors:
        spec.tensors.append(pb.TensorSpec(name=t.name, shape=list(t.shape)))
    for g in info.groups:
        members = [t.name for t in info.tensors if t.group == g.name]
        spec.groups.append(pb.ParamGroup(name=g.name, tensors=members, hyperparameters=g.hyperparameters))
    spec.state.CopyFrom(info.state)
    if info.HasField("coordination"):
        spec.coordination.CopyFrom(info.coordination.config)
    return spec


def renamed(spec: pb.ModelSpec, name: str, tensor_names: Optional[Sequence[str]] = None) -> pb.ModelSpec:
    """A copy of ``spec`` for model ``name``, its tensors renamed in order (groups follow)."""
    out = pb.ModelSpec()
    out.CopyFrom(spec)
    out.name = name
    if tensor_names is not None:
        if len(tensor_names) != len(spec.tensors):
            raise ValueError(f"{len(tensor_names)} tensor names for {len(spec.tensors)} tensors")
        new_name = {t.name: n for t, n in zip(spec.tensors, tensor_names)}
        for t, n in zip(out.tensors, tensor_names):
            t.name = n
        for g in out.groups:
            members = [new_name[m] for m in g.tensors]
            del g.tensors[:]
            g.tensors.extend(members)
    return out


def tensor_groups(spec: pb.ModelSpec) -> list:
    """For each tensor of ``spec``, the index of its group in ``spec.groups`` (None: "default")."""
    index = {name: gi for gi, g in enumerate(spec.groups) for name in g.tensors}
    return [index.get(t.name) for t in spec.tensors]
