"""Naming the views a model serves: ``"train"``, ``"eval"``, ``"slow"``, ``"ema"``,
``"ema:0.999"``, ``"slot:exp_avg"`` or ``"none"``, or a ``View`` message as it is."""

from __future__ import annotations

from typing import Union

from .v1 import optimizer_pb2 as pb

__all__ = ["ViewLike", "make_view", "view_name"]

ViewLike = Union[str, pb.View, None]

_KINDS = {
    "train": pb.VIEW_TRAIN,
    "eval": pb.VIEW_EVAL,
    "slow": pb.VIEW_SLOW,
    "none": pb.VIEW_NONE,
    "ema": pb.VIEW_EMA,
}


def make_view(view: ViewLike) -> pb.View:
    """The ``View`` message for a view name (None means train)."""
    if view is None:
        return pb.View(kind=pb.VIEW_TRAIN)
    if isinstance(view, pb.View):
        return view
    if not isinstance(view, str):
        raise TypeError(f"a view is a name such as 'train' or 'ema:0.999' or a View message, not {type(view).__name__}")
    name, _, argument = view.partition(":")
    if name == "slot":
        if not argument:
            raise ValueError("view 'slot:NAME' needs a slot name, e.g. 'slot:exp_avg'")
        return pb.View(kind=pb.VIEW_SLOT, slot=argument)
    if name not in _KINDS or (argument and name != "ema"):
        raise ValueError(f"unknown view {view!r}; expected train, eval, slow, none, ema, ema:DECAY or slot:NAME")
    if argument:
        try:
            decay = float(argument)
        except ValueError:
            raise ValueError(f"view {view!r}: the EMA decay {argument!r} is not a number") from None
        return pb.View(kind=pb.VIEW_EMA, ema_decay=decay)
    return pb.View(kind=_KINDS[name])


def view_name(view: pb.View) -> str:
    """The short name of a ``View`` message, as :func:`make_view` accepts it."""
    if view.kind == pb.VIEW_EMA:
        return f"ema:{view.ema_decay!r}" if view.ema_decay else "ema"
    if view.kind == pb.VIEW_SLOT:
        return f"slot:{view.slot}"
    if view.kind == pb.VIEW_KIND_UNSPECIFIED:
        return "train"
    return pb.ViewKind.Name(view.kind)[len("VIEW_"):].lower()
