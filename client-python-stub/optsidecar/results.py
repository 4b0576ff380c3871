"""Plain-Python records of what the server reports: a step's figures and a view's version."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .v1 import optimizer_pb2 as pb
from .views import view_name

__all__ = ["GroupFigures", "StepFigures", "Weights"]


@dataclass(frozen=True)
class GroupFigures:
    """What one parameter group did in a step.

    Attributes:
        name: the group's name on the server (``group0``, ``group1``, ...).
        lr: the group's lr for the step: its base lr under the model's schedule, if any.
        effective_lr: the lr the update used (Schedule-Free: lr times its warmup or
            rectification factor; otherwise equal to ``lr``).
        averaging_weight: Schedule-Free's c_t (NaN for other algorithms, as the server reports it).
        k, weight_sum, lr_max: Schedule-Free's counters after the step.
    """

    name: str
    lr: float
    effective_lr: float
    averaging_weight: float
    k: int
    weight_sum: float
    lr_max: float


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

    @classmethod
    def from_proto(cls, result: pb.StepResult) -> "StepFigures":
        return cls(
            step_id=result.step_id,
            version=result.version,
            view=view_name(result.view),
            skipped=result.skipped,
            groups=tuple(
                GroupFigures(g.group, g.lr, g.effective_lr, g.averaging_weight, g.k, g.weight_sum, g.lr_max)
                for g in result.groups
            ),
            grad_norm=result.grad_norm,
            clip_coefficient=result.clip_coefficient,
            update_norm=result.update_norm if result.HasField("update_norm") else None,
            replayed=result.replayed,
        )


@dataclass(frozen=True)
class Weights:
    """The view and model version a set of received weights belongs to."""

    view: pb.View
    version: int
