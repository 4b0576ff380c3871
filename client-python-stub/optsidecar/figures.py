"""Figures a trainer reports with its steps: named scalars (loss, accuracy...) the server keeps
with each version (see :meth:`Client.figures`)."""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

__all__ = ["check_figures", "loss_figure"]


def _scalar(value: Any) -> float:
    """A Python number, numpy scalar or one-element tensor as a float."""
    if hasattr(value, "item"):  # torch tensors and numpy scalars
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"a figure is a number, not {type(value).__name__}")
    return float(value)


def check_figures(figures: Mapping[str, Any]) -> Dict[str, float]:
    """The figures as floats by name. The server checks names and values (1 to 64 characters of
    ``A-Z a-z 0-9 _ . : / -``, at most 64 names, finite values) and refuses others with
    InvalidArgument naming the field."""
    out = {}
    for name, value in figures.items():
        try:
            out[str(name)] = _scalar(value)
        except TypeError as e:
            raise TypeError(f"figure {name!r}: {e}") from None
    return out


def loss_figure(loss: Any) -> Optional[float]:
    """A closure's returned loss as a figure: a finite scalar, else None (not reported)."""
    if loss is None:
        return None
    if hasattr(loss, "numel") and loss.numel() != 1:
        return None
    try:
        value = _scalar(loss)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
