"""Reading torch-style ``params`` arguments into named tensors and parameter groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch

__all__ = ["ParsedGroup", "parse_params"]


@dataclass
class ParsedGroup:
    """One parameter group: its server name, its tensors with their names, its overrides."""

    name: str
    names: List[str]
    params: List[torch.Tensor]
    overrides: Dict[str, Any] = field(default_factory=dict)


def _split_named(items: Any, where: str) -> List[Tuple[Any, torch.Tensor]]:
    """``[(name or None, tensor)]`` from tensors and/or ``(name, tensor)`` pairs."""
    if isinstance(items, torch.Tensor):
        items = [items]
    out = []
    for item in items:
        if isinstance(item, torch.Tensor):
            out.append((None, item))
        elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], torch.Tensor):
            if not isinstance(item[0], str):
                raise TypeError(f"{where}: a named parameter is (str, Tensor), got ({type(item[0]).__name__}, Tensor)")
            out.append((item[0], item[1]))
        else:
            raise TypeError(f"{where}: expected Tensors or (name, Tensor) pairs, got {type(item).__name__}")
    return out


def parse_params(params: Any) -> List[ParsedGroup]:
    """Groups from what torch optimizers accept, plus names.

    ``params`` may be ``model.named_parameters()`` (names become tensor names), an iterable of
    tensors (named ``p0``, ``p1``, ... in order), or a list of dicts, torch's param groups, whose
    ``"params"`` hold tensors or ``(name, tensor)`` pairs and whose other keys are that group's
    hyperparameters; a dict may carry a ``"name"`` for its group (default ``group0``, ``group1``, ...).
    """
    if isinstance(params, torch.Tensor):
        raise TypeError("params argument given to the optimizer should be an iterable of Tensors, "
                        "(name, Tensor) pairs or dicts, but got a Tensor")
    items = list(params)
    if not items:
        raise ValueError("optimizer got an empty parameter list")
    raw_groups = items if isinstance(items[0], dict) else [{"params": items}]

    groups: List[ParsedGroup] = []
    seen: Dict[int, str] = {}
    used_names: Dict[str, int] = {}
    index = 0
    for gi, raw in enumerate(raw_groups):
        if not isinstance(raw, dict):
            raise TypeError(f"param group {gi}: expected a dict, got {type(raw).__name__}")
        if "params" not in raw:
            raise ValueError(f"param group {gi} has no 'params'")
        overrides = {k: v for k, v in raw.items() if k not in ("params", "name")}
        group = ParsedGroup(name=str(raw.get("name", f"group{gi}")), names=[], params=[], overrides=overrides)
        for name, tensor in _split_named(raw["params"], f"param group {gi}"):
            if not tensor.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
            if not tensor.is_floating_point():
                raise TypeError(f"parameter {name or index} has dtype {tensor.dtype}; only floating-point "
                                f"parameters can be optimized")
            name = name if name is not None else f"p{index}"
            if id(tensor) in seen:
                raise ValueError(f"parameter {name!r} appears more than once (also as {seen[id(tensor)]!r})")
            if name in used_names:
                raise ValueError(f"two parameters are named {name!r}")
            seen[id(tensor)] = name
            used_names[name] = index
            group.names.append(name)
            group.params.append(tensor)
            index += 1
        groups.append(group)
    if len({g.name for g in groups}) != len(groups):
        raise ValueError(f"param group names must differ: {[g.name for g in groups]}")
    return groups
