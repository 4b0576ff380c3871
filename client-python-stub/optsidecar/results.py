"""Plain-Python records of what the server reports: a step's figures, a view's version, and how
several trainers share a model."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

from google.protobuf import struct_pb2

from .spec import from_struct
from .v1 import optimizer_pb2 as pb
from .views import view_name

__all__ = ["GroupFigures", "StepFigures", "Weights", "Contribution", "VersionContributions", "VersionFigures",
           "CoordinationStatus"]


class Contribution(NamedTuple):
    """One trainer's step that went into a version: its client id and sequence number."""

    client_id: str
    step_id: int

    @classmethod
    def from_proto(cls, c: pb.Contribution) -> "Contribution":
        return cls(c.client_id, c.step_id)


class VersionContributions(NamedTuple):
    """The contributions one model version combined (:meth:`Client.history`)."""

    version: int
    contributions: Tuple[Contribution, ...]


class VersionFigures(NamedTuple):
    """What made one model version and what its trainers reported (:meth:`Client.figures`).

    Attributes:
        version: the model version.
        kind: ``"gradient"`` or ``"set_weights"`` (whose norms are 0).
        time: when the version was made, in seconds since the Unix epoch.
        step_seconds: how long the server's engine took to apply the step.
        grad_norm, update_norm, staleness, clip_coefficient: as in :class:`StepFigures`
            (``update_norm`` None unless the model reports it).
        lr, effective_lr, averaging_weight: by group name, as :class:`GroupFigures` has them
            (``averaging_weight`` is Schedule-Free's c_t, NaN for other algorithms).
        contributions: how many contributions the version combined.
        figures: the trainers' figures by name (a step's ``loss``, :meth:`RemoteOptimizer.log`,
            :meth:`Client.log_figures`); several values of one name for one version are averaged.
    """

    version: int
    kind: str
    time: float
    step_seconds: float
    grad_norm: float
    update_norm: Optional[float]
    staleness: int
    clip_coefficient: float
    lr: Mapping[str, float]
    effective_lr: Mapping[str, float]
    averaging_weight: Mapping[str, float]
    contributions: int
    figures: Mapping[str, float]

    @classmethod
    def from_proto(cls, v: "pb.VersionFigures") -> "VersionFigures":
        return cls(version=v.version, kind="set_weights" if v.kind == pb.STEP_SET_WEIGHTS else "gradient",
                   time=v.time, step_seconds=v.step_seconds, grad_norm=v.grad_norm,
                   update_norm=v.update_norm if v.HasField("update_norm") else None, staleness=v.staleness,
                   clip_coefficient=v.clip_coefficient, lr={g.group: g.lr for g in v.groups},
                   effective_lr={g.group: g.effective_lr for g in v.groups},
                   averaging_weight={g.group: g.averaging_weight for g in v.groups},
                   contributions=v.contributions, figures=dict(sorted(v.figures.items())))


@dataclass(frozen=True)
class GroupFigures:
    """What one parameter group did in a step.

    Attributes:
        name: the group's name on the server (``group0``, ``group1``, ...).
        lr: the group's lr for the step: its base lr under the model's schedule, if any.
        effective_lr: the lr the update used (Schedule-Free: lr times its warmup or
            rectification factor; otherwise equal to ``lr``).
        averaging_weight: Schedule-Free's c_t (NaN for other algorithms, as the server reports it).
        scalars: the scalars the group's algorithm keeps between steps, after the step, by name
            (sorted; Schedule-Free: ``k``, ``lr_max``, ``weight_sum``; empty for an algorithm
            without any).
        hyperparameters: the group's effective hyperparameters for the step, by name (``lr``
            is the base lr), including changes made in ``param_groups`` between steps; empty when
            the server reported none.
    """

    name: str
    lr: float
    effective_lr: float
    averaging_weight: float
    scalars: Mapping[str, float] = field(default_factory=dict, hash=False)
    hyperparameters: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def k(self) -> Optional[int]:
        """Schedule-Free's step count ``scalars["k"]``; None if the group has no such scalar."""
        return int(self.scalars["k"]) if "k" in self.scalars else None

    @property
    def weight_sum(self) -> Optional[float]:
        """Schedule-Free's ``scalars["weight_sum"]``; None if the group has no such scalar."""
        return self.scalars.get("weight_sum")

    @property
    def lr_max(self) -> Optional[float]:
        """Schedule-Free's ``scalars["lr_max"]``; None if the group has no such scalar."""
        return self.scalars.get("lr_max")


_KINDS = {pb.STEP_GRADIENT: "gradient", pb.STEP_SET_WEIGHTS: "set_weights"}


@dataclass(frozen=True)
class StepFigures:
    """The figures of one step (the server's ``StepResult``).

    Attributes:
        step_id: the client's sequence number of the step.
        version: the model version (steps applied) after the step.
        view: the view the returned weights hold (``"train"``, ``"none"``, ...).
        skipped: True when the step was not applied (a non-finite gradient under the skip policy).
        groups: per group, in group order.
        grad_norm: the global L2 norm of the gradients as received, before clipping.
        clip_coefficient: the factor the gradients were scaled by (1 without clipping).
        update_norm: ``|θ_new − θ_old|`` when the model reports it, else None.
        replayed: True when the server had already applied this step (a retry after the connection
            dropped or the server restarted): the figures are those of when it was applied, and
            the weights returned with it are the model's current ones. The step counts once.
        late: sync mode: the gradient arrived after the step it was for had been applied without
            it. Nothing was applied; the weights returned with it are the current ones.
        staleness: async mode: how many versions old the gradient was when it was applied (the
            model's version minus the version it was computed at).
        lr_scale: the factor the step's learning rate was scaled by: 1, or ``1/(1 + staleness)``
            for a stale gradient under the down-weight policy.
        contributions: the (client id, step id) pairs the new version combined: every contributor
            of a sync step, this step alone in async mode; empty when nothing was applied.
        weights_version: the version of the weights that came back with the step (the current
            version for a replayed or late step, whose ``version`` is older or unchanged); None
            when the step returned no weights.
        kind: ``"gradient"``, or ``"set_weights"`` for a step that replaced weights.
        weights_crc32c: over shared memory, the CRC-32C of each tensor's weights as the server
            wrote them into the segment (empty otherwise).
        weights_device_sums: over CUDA IPC, per tensor the sums of its weights' bit patterns at
            even and at odd positions, as the server wrote them (signed 64-bit; empty otherwise).
    """

    step_id: int
    version: int
    view: str
    skipped: bool
    groups: Tuple[GroupFigures, ...]
    grad_norm: float
    clip_coefficient: float
    update_norm: Optional[float]
    replayed: bool = False
    late: bool = False
    staleness: int = 0
    lr_scale: float = 1.0
    contributions: Tuple[Contribution, ...] = ()
    weights_version: Optional[int] = None
    kind: str = "gradient"
    weights_crc32c: Tuple[int, ...] = ()
    weights_device_sums: Tuple[int, ...] = ()

    @property
    def lr(self) -> Dict[str, float]:
        """Each group's lr for this step, by group name."""
        return {g.name: g.lr for g in self.groups}

    @property
    def effective_lr(self) -> Dict[str, float]:
        """Each group's effective lr for this step, by group name."""
        return {g.name: g.effective_lr for g in self.groups}

    @property
    def averaging_weight(self) -> Dict[str, float]:
        """Each group's Schedule-Free averaging weight c_t, by group name."""
        return {g.name: g.averaging_weight for g in self.groups}

    @property
    def hyperparameters(self) -> Dict[str, Mapping[str, Any]]:
        """Each group's effective hyperparameters for this step, by group name."""
        return {g.name: g.hyperparameters for g in self.groups}

    @classmethod
    def from_proto(cls, result: pb.StepResult, weights_version: Optional[int] = None) -> "StepFigures":
        return cls(
            step_id=result.step_id,
            version=result.version,
            view=view_name(result.view),
            skipped=result.skipped,
            groups=tuple(
                GroupFigures(g.group, g.lr, g.effective_lr, g.averaging_weight, dict(sorted(g.scalars.items())),
                             dict(_hyperparameters(g.hyperparameters.SerializeToString())))
                for g in result.groups
            ),
            grad_norm=result.grad_norm,
            clip_coefficient=result.clip_coefficient,
            update_norm=result.update_norm if result.HasField("update_norm") else None,
            replayed=result.replayed,
            late=result.late,
            staleness=result.staleness,
            # 0 only in results stored by a server that did not report it: nothing was scaled.
            lr_scale=result.lr_scale or 1.0,
            contributions=tuple(Contribution.from_proto(c) for c in result.contributions),
            weights_version=weights_version,
            kind=_KINDS.get(result.kind, str(result.kind)),
            weights_crc32c=tuple(result.weights_crc32c) if weights_version is not None else (),
            # fixed64 on the wire; the sums are two's complement, as torch's int64 holds them.
            weights_device_sums=tuple(s - (1 << 64) if s >= 1 << 63 else s for s in result.weights_device_sums)
            if weights_version is not None else (),
        )


@dataclass(frozen=True)
class Weights:
    """The view and model version a set of received weights belongs to."""

    view: pb.View
    version: int


_MODES = {pb.COORDINATION_ASYNC: "async", pb.COORDINATION_SYNC: "sync"}


@dataclass(frozen=True)
class CoordinationStatus:
    """How trainers share a model, who is attached, and what their contributions did (the
    server's ``ModelInfo.coordination``).

    Attributes:
        mode: ``"async"`` or ``"sync"``.
        config: the model's ``Coordination`` message (sync and async options).
        trainers: client ids of the trainers attached now (with a Step stream open), sorted.
        contributions_applied: contributions that went into a version.
        contributions_late: sync: contributions that arrived after their step was applied.
        contributions_rejected: async: gradients rejected as staler than the bound.
        steps_timed_out: sync: steps applied after the straggler timeout with fewer than k.
        staleness_histogram: applied contributions by staleness: entry s counts staleness s, the
            last entry that staleness and above (the server keeps 16 exact buckets); trailing
            empty buckets are left out.
    """

    mode: str
    config: pb.Coordination
    trainers: Tuple[str, ...]
    contributions_applied: int
    contributions_late: int
    contributions_rejected: int
    steps_timed_out: int
    staleness_histogram: Tuple[int, ...]

    @property
    def staleness_mean(self) -> float:
        """Mean staleness of the applied contributions (the last bucket counted at its lower
        bound); 0 when none were applied."""
        total = sum(self.staleness_histogram)
        return sum(s * n for s, n in enumerate(self.staleness_histogram)) / total if total else 0.0

    @property
    def staleness_max(self) -> int:
        """The largest staleness seen (a lower bound when it falls in the last, open bucket)."""
        nonzero = [s for s, n in enumerate(self.staleness_histogram) if n]
        return nonzero[-1] if nonzero else 0

    @classmethod
    def from_proto(cls, status: pb.CoordinationStatus) -> "CoordinationStatus":
        return cls(
            mode=_MODES.get(status.config.mode, str(status.config.mode)),
            config=status.config,
            trainers=tuple(status.trainers),
            contributions_applied=status.contributions_applied,
            contributions_late=status.contributions_late,
            contributions_rejected=status.contributions_rejected,
            steps_timed_out=status.steps_timed_out,
            staleness_histogram=tuple(status.staleness_histogram),
        )


@functools.lru_cache(maxsize=64)
def _hyperparameters(serialized: bytes) -> Dict[str, Any]:
    """A group's hyperparameters as plain values, sorted by name. Every step reports them, and they
    rarely change: converting the Struct anew each time cost more than the rest of a small step's
    result. Callers copy the dict they get."""
    return dict(sorted(from_struct(struct_pb2.Struct.FromString(serialized)).items()))
