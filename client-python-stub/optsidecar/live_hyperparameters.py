"""Hyperparameters that change between steps, as torch allows: each group's values in
``param_groups`` are compared with the effective values the server last reported, and the ones
that differ are sent with the next step (``StepCommit.group_hyperparameters``).

``lr`` is not among them: every step sends each group's base lr in ``StepCommit.group_lr``. Keys
the server does not list for a group (a scheduler's ``initial_lr``, ``max_momentum``, ...) are the
trainer's own and are never sent.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import torch

from .errors import OptSidecarError
from .results import StepFigures
from .spec import from_struct
from .v1 import optimizer_pb2 as pb

__all__ = ["LiveHyperparameters", "normalized"]

_REFUSED_FIELD = re.compile(r"^commit\.group_hyperparameters\[([^\]]*)\](?:\.(.+))?$")


def normalized(value: Any) -> Any:
    """A hyperparameter value in a comparable form (tuples and lists alike, numbers as float)."""
    if isinstance(value, (list, tuple)):
        return tuple(normalized(v) for v in value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, torch.Tensor):
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _plain(value: Any) -> Any:
    """A value as a Struct holds it: tensors as numbers, tuples as lists."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


class LiveHyperparameters:
    """The effective hyperparameters the server holds for each group (but lr), by group name."""

    def __init__(self) -> None:
        self._server: Dict[str, Dict[str, Any]] = {}

    def adopt(self, groups: Iterable[pb.GroupInfo]) -> None:
        """Takes the server's values from a model's description (registration, attach, restore)."""
        self._server = {g.name: self._without_lr(from_struct(g.hyperparameters)) for g in groups}

    def server_values(self, group: str) -> Dict[str, Any]:
        """The values the server holds for ``group``, but lr."""
        return dict(self._server.get(group, {}))

    def changes(self, group_names: Sequence[str], param_groups: Sequence[Mapping[str, Any]]
                ) -> Dict[str, Dict[str, Any]]:
        """The values in ``param_groups`` that differ from the server's, by group name."""
        out: Dict[str, Dict[str, Any]] = {}
        for name, group in zip(group_names, param_groups):
            server = self._server.get(name, {})
            changed = {key: _plain(group[key]) for key, value in server.items()
                       if key in group and normalized(group[key]) != normalized(value)}
            if changed:
                out[name] = changed
        return out

    def confirm(self, sent: Mapping[str, Mapping[str, Any]], figures: StepFigures) -> None:
        """Takes the effective values a step reported; where it reported none (a step that was
        answered from the ledger, say), the values sent with it."""
        for name, values in sent.items():
            self._server.setdefault(name, {}).update(values)
        for g in figures.groups:
            if g.hyperparameters:
                self._server[g.name] = self._without_lr(g.hyperparameters)

    def explain(self, error: OptSidecarError, group_names: Sequence[str], param_groups: List[Mapping[str, Any]],
                sent: Mapping[str, Mapping[str, Any]]) -> Optional[OptSidecarError]:
        """For a step refused because of a hyperparameter change, the error saying which
        ``param_groups`` entries it was and what to do; None for any other error."""
        match = _REFUSED_FIELD.match(error.field or "")
        if not match:
            return None
        group, key = match.group(1), match.group(2)
        # The server names the key when one value is wrong, only the group when the change as a
        # whole would change the state the group keeps.
        keys = [key] if key else sorted(sent.get(group, {}))
        where = f"param_groups[{group_names.index(group)}]" if group in group_names else f"group {group!r}"
        server = self._server.get(group, {})
        changes = ", ".join(f"{where}[{k!r}] from {server.get(k, '(none)')!r} to {sent.get(group, {}).get(k)!r}"
                            for k in keys)
        restore = ", ".join(f"{k!r} back to {server[k]!r}" for k in keys if k in server)
        return error.with_message(
            f"group {group!r} on the server refuses the change of {changes}: {error.details}. Nothing was applied. "
            f"{'Set ' + restore if restore else 'Undo the change'} to go on; a change of the optimizer state the group keeps needs a new "
            f"model, registered with that setting.")

    @staticmethod
    def _without_lr(values: Mapping[str, Any]) -> Dict[str, Any]:
        return {k: v for k, v in values.items() if k != "lr"}
