"""Adding a parameter group to a live model: ``RemoteOptimizer.add_param_group`` on the server."""

from __future__ import annotations

from typing import Any, Collection, Mapping, Sequence, Tuple

import torch

from .client import Client
from .params import ParsedGroup, _split_named
from .v1 import optimizer_pb2 as pb

__all__ = ["NewGroup", "parse_new_group", "add_group"]


#: A parameter group to add has what a constructor's group has.
NewGroup = ParsedGroup


def parse_new_group(param_group: Mapping[str, Any], *, group_index: int, first_param: int,
                    names_taken: Collection[str], params_taken: Collection[torch.Tensor]) -> NewGroup:
    """Reads a torch param group dict to add to an optimizer that has ``group_index`` groups and
    ``first_param`` parameters. Its ``"params"`` hold tensors or ``(name, tensor)`` pairs; names
    come from the pairs, else from a ``"names"`` list, else ``p<index>`` by position among all the
    optimizer's parameters. The group is named by its ``"name"``, else ``group<index>``; its other
    keys override the model's hyperparameters."""
    if not isinstance(param_group, Mapping):
        raise TypeError(f"param group must be a dict, got {type(param_group).__name__}")
    if "params" not in param_group:
        raise ValueError("param group has no 'params'")
    where = f"param group {group_index}"
    items = _split_named(param_group["params"], where)
    given = param_group.get("names")
    if given is not None:
        if isinstance(given, str) or len(given) != len(items):
            raise ValueError(f"{where}: 'names' must list one name per parameter ({len(items)})")
        if any(name is not None for name, _ in items):
            raise ValueError(f"{where}: name the parameters either with (name, tensor) pairs or with 'names'")
        items = [(str(name), tensor) for name, (_, tensor) in zip(given, items)]
    if not items:
        raise ValueError(f"{where} has no parameters")
    taken_ids = {id(p) for p in params_taken}
    used = set(names_taken)
    group = NewGroup(name=str(param_group.get("name", f"group{group_index}")), names=[], params=[],
                     overrides={k: v for k, v in param_group.items() if k not in ("params", "names", "name")})
    for offset, (name, tensor) in enumerate(items):
        name = name if name is not None else f"p{first_param + offset}"
        if not tensor.is_leaf:
            raise ValueError("can't optimize a non-leaf Tensor")
        if not tensor.is_floating_point():
            raise TypeError(f"parameter {name!r} has dtype {tensor.dtype}; only floating-point parameters can be "
                            f"optimized")
        if id(tensor) in taken_ids:
            raise ValueError(f"parameter {name!r} is optimized already: some parameters appear in more than one "
                             f"parameter group")
        if name in used:
            raise ValueError(f"{where}: a parameter is named {name!r} already")
        taken_ids.add(id(tensor))
        used.add(name)
        group.names.append(name)
        group.params.append(tensor)
    return group


def _added_by_another(info: pb.ModelInfo, first: int, group: NewGroup) -> bool:
    """Whether the model's tensors from ``first`` on are exactly this group, added by another trainer."""
    added = info.tensors[first:]
    return ([t.name for t in added] == group.names and all(t.group == group.name for t in added)
            and all(list(t.shape) == (list(p.shape) or [1]) for t, p in zip(added, group.params)))


def add_group(client: Client, model: str, first: int, group: NewGroup) -> Tuple[pb.ModelInfo, bool]:
    """Adds ``group`` to ``model``, whose first ``first`` tensors are the optimizer's parameters.

    Returns:
        the model's description, and whether another trainer of the model had added the group
        already (its parameters must then take the model's weights).
    """
    info = client.describe(model)
    if len(info.tensors) > first:
        if _added_by_another(info, first, group):
            return info, True
        extra = [(t.name, t.group) for t in info.tensors[first:]]
        raise ValueError(f"model {model!r} has tensors this optimizer does not know, added by another trainer: "
                         f"{extra} as (name, group); add them first, with the same names and group")
    tensors: Sequence[Tuple[str, Sequence[int]]] = [(n, tuple(p.shape)) for n, p in zip(group.names, group.params)]
    return client.add_tensors(model, tensors, group.name, group.overrides, group.params), False
