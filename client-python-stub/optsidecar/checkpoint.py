"""Reading a model's whole optimizer state off the server, and registering a model from it.

A model's state is the spec that re-creates it (tensors, groups with their effective
hyperparameters, configuration, and in ``spec.state`` the ``ModelState`` counters from Describe),
its train weights, and every state slot of every tensor (``exp_avg``, ``z``, ``ema:0``, ``slow``,
...). Registering all of it again continues training bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from .client import Client, StateBuffer
from .spec import renamed, spec_from_info
from .v1 import optimizer_pb2 as pb

__all__ = ["ServerState", "capture", "restore"]


@dataclass
class ServerState:
    """Everything the server holds for one model.

    Attributes:
        spec: the spec that re-creates the model, with its counters in ``spec.state``.
        weights: the train view (θ; Schedule-Free: y), one array or tensor per model tensor.
        slots: per slot name, one array or tensor per model tensor.
    """

    spec: pb.ModelSpec
    weights: List[Any]
    slots: Dict[str, List[Any]]


def capture(client: Client, model: str, allocate: Callable[[int, pb.TensorInfo], Any]) -> ServerState:
    """Reads a model's state. ``allocate(index, tensor_info)`` makes a destination for one tensor's
    values.

    Raises RuntimeError when the model steps while it is being read (another trainer is at it):
    the pieces would belong to different versions.
    """
    info = client.describe(model)
    version = info.version

    def pull(view: str, having: Optional[List[int]] = None) -> List[Any]:
        """The view for every tensor, or only those in ``having`` (None elsewhere)."""
        out = [allocate(i, t) if having is None or i in having else None for i, t in enumerate(info.tensors)]
        got = client.pull(model, view, out, having)
        if got.version != version:
            raise RuntimeError(f"model {model!r} stepped from version {version} to {got.version} while its "
                               f"state was being read; save when no other trainer is stepping it")
        return out

    slot_names: List[str] = []
    for t in info.tensors:
        slot_names.extend(s for s in t.slots if s not in slot_names)
    weights = pull("train")
    # A slot only some groups have (e.g. amsgrad in one group) is read from the tensors that have it.
    slots = {name: pull(f"slot:{name}", [i for i, t in enumerate(info.tensors) if name in t.slots])
             for name in slot_names}
    return ServerState(spec_from_info(info), weights, slots)


def restore(client: Client, name: str, state: ServerState,
            tensor_names: Optional[Sequence[str]] = None) -> pb.ModelInfo:
    """Registers model ``name`` with a captured state (its tensors renamed to ``tensor_names``, if
    given); returns the new model's description."""
    spec = renamed(state.spec, name, tensor_names)
    buffers = [StateBuffer(index, slot, values[index])
               for slot, values in state.slots.items() for index in range(len(values)) if values[index] is not None]
    return client.register(spec, state.weights, buffers)
