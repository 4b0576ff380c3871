"""``RemoteOptimizer.state``: each parameter's optimizer state, read from the server on access."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional

import torch

from .torch_format import reference, tensor_state
from .v1 import optimizer_pb2 as pb

if TYPE_CHECKING:
    from .optimizer import RemoteOptimizer

__all__ = ["ParameterState"]


class ParameterState(Mapping):
    """The optimizer state of each parameter, keyed by the parameter, as ``torch.optim``'s
    ``optimizer.state`` (a ``defaultdict(dict)``) holds it: ``state[p]`` is a dict of ``p``'s state
    slots under the reference's names (``step``, ``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``,
    ``z``, ...) plus any EMA shadow (``ema:0.999``) or Lookahead's ``slow`` weights.

    Every access reads the server: the values are a **copy**, and writing into them changes nothing
    on the server (load a state dict for that). Iteration, ``len`` and ``in`` cover the parameters
    that have state, i.e. that have stepped at least once, as in torch; ``state[p]`` of any other
    tensor is ``{}``."""

    def __init__(self, optimizer: "RemoteOptimizer"):
        self._optimizer = optimizer

    def _stepped(self, info: pb.ModelInfo) -> List[int]:
        return [i for i, t in enumerate(info.tensors) if t.steps > 0]

    def _index(self, key: Any) -> Optional[int]:
        if not isinstance(key, torch.Tensor):
            return None
        return self._optimizer._parameter_indices().get(id(key))

    def __getitem__(self, key: Any) -> Dict[str, Any]:
        index = self._index(key)
        if index is None:
            return {}
        opt = self._optimizer
        info = opt.client.describe(opt.model)
        tensor = info.tensors[index]
        if tensor.steps == 0:
            return {}
        shape = opt._params[index].shape
        slots = {}
        for name in tensor.slots:
            out: List[Optional[torch.Tensor]] = [None] * len(info.tensors)
            out[index] = torch.empty(shape, dtype=torch.float32)
            opt.client.pull(opt.model, f"slot:{name}", out, [index])
            slots[name] = out[index]
        return tensor_state(reference(info.optimizer.algorithm), tensor.steps, slots)

    def __contains__(self, key: Any) -> bool:
        index = self._index(key)
        if index is None:
            return False
        opt = self._optimizer
        return opt.client.describe(opt.model).tensors[index].steps > 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        opt = self._optimizer
        return iter([opt._params[i] for i in self._stepped(opt.client.describe(opt.model))])

    def __len__(self) -> int:
        opt = self._optimizer
        return len(self._stepped(opt.client.describe(opt.model)))

    def __repr__(self) -> str:
        return f"<state of the {len(self._optimizer._params)} parameters of model {self._optimizer.model!r}>"
