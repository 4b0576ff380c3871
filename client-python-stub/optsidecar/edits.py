"""Noticing weights a trainer changed in its parameters outside the optimizer (loaded pretrained
weights, a projection, a pruning mask), so that they reach the server before it overwrites them.

After the client writes weights into the parameters it records, for each one, three things:

- its **version counter** (``p._version``): every in-place write through the parameter or a view
  or ``.detach()`` of it bumps it, e.g. ``p.copy_(...)``, ``p.clamp_(...)`` or ``p.mul_(mask)``
  under ``torch.no_grad()``, ``p[0] = ...``, ``torch.nn.init.*_``, and
  ``model.load_state_dict(...)`` (which copies in place);
- its **data pointer**: ``p.data = other`` swaps the storage without bumping the counter;
- a **CRC32 of its values**: writes through ``p.data`` (``p.data.clamp_(...)``, the classic
  weight clipping) or through a numpy view do not bump ``p._version``, because ``.data`` is a new
  tensor with a version counter of its own (torch 1.13 and 2.x alike). Comparing contents catches
  them too. It costs one pass over the weights after each write and one before each step (CRC32
  runs at 1.5 to 2 GB/s: some 50 ms a step for 40 MB of parameters; a parameter that is not CPU
  float32 contiguous is copied to the host for it); set :attr:`ParameterEdits.compare_contents`
  to False to rely on the first two alone, which cost nothing.

A parameter whose version, data pointer or CRC differs from the record was changed by the trainer.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from .buffers import source_array

__all__ = ["ParameterEdits", "WeightsPush"]


@dataclass(frozen=True)
class WeightsPush:
    """Edited parameters the optimizer sent to the server as a set-weights step.

    Attributes:
        tensors: the names of the tensors sent (the others kept their weights on the server).
        view: which point the weights were: ``"train"`` (θ, Schedule-Free's y, Lookahead's fast
            weights), or ``"eval"`` (Schedule-Free's x, edited in eval mode; the server derived y).
        step_id: the trainer's sequence number the push went under.
        version: the model version after it.
        replayed: True when the server had applied it already, before a retry: it counted once.
    """

    tensors: Tuple[str, ...]
    view: str
    step_id: int
    version: int
    replayed: bool = False


def _fingerprint(p: torch.Tensor) -> int:
    return zlib.crc32(memoryview(source_array(p)).cast("B"))


class ParameterEdits:
    """What the client last wrote into each parameter, to tell which ones the trainer changed since.

    Args:
        params: the parameters, in the server's tensor order.
    """

    def __init__(self, params: Sequence[torch.Tensor]):
        self.params = list(params)
        #: Compare contents too, to catch writes through ``p.data`` (see the module's docstring).
        self.compare_contents = True
        self._recorded: List[Optional[Tuple[int, int, Optional[int]]]] = [None] * len(self.params)

    def _state(self, p: torch.Tensor) -> Tuple[int, int, Optional[int]]:
        return p._version, p.data_ptr(), _fingerprint(p) if self.compare_contents else None

    def record(self, indices: Optional[Sequence[int]] = None) -> None:
        """Notes the parameters (all, or those of ``indices``) as the server's: call after writing
        weights into them, or after the server received them."""
        for i in range(len(self.params)) if indices is None else indices:
            self._recorded[i] = self._state(self.params[i])

    def changed(self) -> List[int]:
        """Indices of the parameters written since they were recorded (all of them before the
        first :meth:`record`)."""
        out = []
        for i, p in enumerate(self.params):
            recorded = self._recorded[i]
            if recorded is None or recorded[:2] != (p._version, p.data_ptr()):
                out.append(i)
            elif self.compare_contents and (recorded[2] is None or recorded[2] != _fingerprint(p)):
                out.append(i)
        return out
