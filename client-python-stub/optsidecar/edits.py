"""Noticing weights a trainer changed in its parameters outside the optimizer (loaded pretrained
weights, a projection, a pruning mask), so that they reach the server before it overwrites them.

After the client writes weights into the parameters it records, for each one, three things:

- its **version counter** (``p._version``): every in-place write through the parameter or a view
  or ``.detach()`` of it bumps it, e.g. ``p.copy_(...)``, ``p.clamp_(...)`` or ``p.mul_(mask)``
  under ``torch.no_grad()``, ``p[0] = ...``, ``torch.nn.init.*_``, and
  ``model.load_state_dict(...)`` (which copies in place);
- its **data pointer**: ``p.data = other`` swaps the storage without bumping the counter;
- a **CRC-32C of its values**: writes through ``p.data`` (``p.data.clamp_(...)``, the classic
  weight clipping) or through a numpy view do not bump ``p._version``, because ``.data`` is a new
  tensor with a version counter of its own (torch 1.13 and 2.x alike). Comparing contents catches
  them too. It costs one pass over the weights before each step, and one after each write unless
  the server reports the CRC of what it wrote (it does over shared memory, where the parameters
  are the segment's weights) or the weights came in chunks, which are hashed as they arrive,
  while in cache. With PyPI's ``crc32c`` package (the CPU's CRC instruction: about
  7 GB/s here, some 5 ms for 40 MB of parameters) this is cheap; a software-only build of it
  (Debian 12's python3-crc32c: about 1.4 GB/s, 28 ms for 40 MB) or zlib's CRC32 without one
  (1.5 to 2 GB/s, and server-reported values are then ignored) is not, and the optimizer warns
  once it would hash 16 MiB or more so. Over a shared segment the server does the check instead
  (``StepCommit.weights_crc32c``: the records are sent, and the server compares the segment's
  weights with them before it reads the gradient), so no parameter is read before a step. A CUDA parameter is fingerprinted on
  its device instead (:func:`~optsidecar.device_staging.device_fingerprints`: 64-bit sums of its
  values' bit patterns at even and at odd positions, one pass; every parameter's in one transfer),
  which sees any changed value and any change of several unless their bit patterns' differences
  cancel out in both sums (a permutation of values across even and odd positions is seen; one
  within either is not). Another parameter that is not CPU float32 contiguous is copied to the host for it. Set
  :attr:`ParameterEdits.compare_contents` to False to rely on the first two alone, which cost
  nothing.

A parameter whose version, data pointer or CRC differs from the record was changed by the trainer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .buffers import source_array
from .device_staging import device_fingerprints
from .fingerprints import FAST_FINGERPRINTS, FINGERPRINTS_ARE_CRC32C, PIECE_BYTES, piece_fingerprints

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


#: CPU parameters of this many bytes or more, fingerprinted without the CRC instruction, are
#: worth a warning: their content check then costs several milliseconds a step.
SLOW_CHECK_WARNING_BYTES = 16 << 20


def _fingerprint(p: torch.Tensor) -> Tuple[int, ...]:
    return piece_fingerprints(memoryview(source_array(p)).cast("B"))


class ParameterEdits:
    """What the client last wrote into each parameter, to tell which ones the trainer changed since.

    Args:
        params: the parameters, in the server's tensor order.
    """

    def __init__(self, params: Sequence[torch.Tensor]):
        self.params = list(params)
        #: Compare contents too, to catch writes through ``p.data`` (see the module's docstring).
        self.compare_contents = True
        #: Which parameters are fingerprinted by :func:`~optsidecar.device_staging.device_fingerprints`
        #: (sums, on their device) rather than by CRC: CUDA ones, and over CUDA IPC every one.
        self.summed: Callable[[int], bool] = lambda i: self.params[i].is_cuda
        self._recorded: List[Optional[Tuple[int, int, Optional[Tuple[int, ...]]]]] = [None] * len(self.params)
        self._hash_speed_judged = False

    def _state(self, p: torch.Tensor, fingerprint: Any = None) -> Tuple[int, int, Optional[Tuple[int, ...]]]:
        if self.compare_contents and fingerprint is None:
            fingerprint = _fingerprint(p)
        return p._version, p.data_ptr(), fingerprint if self.compare_contents else None

    def _device_fingerprints(self, indices: Sequence[int]) -> Dict[int, Tuple[int, ...]]:
        """The fingerprints of the CUDA parameters among ``indices``, computed on their devices
        and read back together (one synchronisation, not one per parameter)."""
        if not self.compare_contents:
            return {}
        on_device = [i for i in indices if self.summed(i)]
        return dict(zip(on_device, device_fingerprints([self.params[i] for i in on_device])))

    def record(self, indices: Optional[Sequence[int]] = None,
               crc32c: Optional[Mapping[int, Tuple[int, ...]]] = None,
               sums: Optional[Mapping[int, Tuple[int, int]]] = None) -> None:
        """Notes the parameters (all, or those of ``indices``) as the server's: call after writing
        weights into them, or after the server received them. ``crc32c``: the CRC-32C the server
        reported of the pieces it wrote into some of them, by index, taken instead of hashing them;
        ``sums``: likewise the sums it reported of parameters fingerprinted by sums."""
        known = crc32c if crc32c is not None and FINGERPRINTS_ARE_CRC32C and self.compare_contents else {}
        chosen = list(range(len(self.params)) if indices is None else indices)
        reported = {i: s for i, s in (sums or {}).items() if self.compare_contents and self.summed(i)}
        on_device = dict(reported)
        on_device.update(self._device_fingerprints([i for i in chosen if i not in reported]))
        for i in chosen:
            p = self.params[i]
            if i in known and not self.summed(i):
                self._recorded[i] = (p._version, p.data_ptr(), known[i])
            else:
                self._recorded[i] = self._state(p, on_device.get(i))

    def changed(self, contents_checked_elsewhere: bool = False) -> List[int]:
        """Indices of the parameters written since they were recorded (all of them before the
        first :meth:`record`). With ``contents_checked_elsewhere`` (the server checks a shared
        segment's weights against :meth:`recorded_crc32c`) only version counters and data
        pointers are compared here: no parameter is read."""
        out = []
        unchanged = [i for i, p in enumerate(self.params)
                     if self._recorded[i] is not None and self._recorded[i][:2] == (p._version, p.data_ptr())]
        if self.compare_contents and not contents_checked_elsewhere:
            self._warn_if_slow()
        on_device = {} if contents_checked_elsewhere else self._device_fingerprints(unchanged)
        for i, p in enumerate(self.params):
            recorded = self._recorded[i]
            if recorded is None or recorded[:2] != (p._version, p.data_ptr()):
                out.append(i)
            elif self.compare_contents and not contents_checked_elsewhere and (
                    recorded[2] is None or recorded[2] != (on_device[i] if i in on_device else _fingerprint(p))):
                out.append(i)
        return out

    def _warn_if_slow(self) -> None:
        """Warns, the first time parameters are hashed here, when that is slow; decided once."""
        if self._hash_speed_judged:
            return
        self._hash_speed_judged = True
        hashed = sum(4 * p.numel() for i, p in enumerate(self.params) if not self.summed(i))
        if not FAST_FINGERPRINTS and hashed >= SLOW_CHECK_WARNING_BYTES:
            warnings.warn(f"optsidecar: noticing edited parameters hashes their {hashed / 2**20:.0f} MiB before each "
                          f"step, and this crc32c package (or zlib, without one) computes in software, several "
                          f"times slower than the CPU's CRC instruction: install PyPI's crc32c, or set "
                          f"optimizer.edits.compare_contents = False to notice edits by version counters alone "
                          f"(writes through p.data are then not seen)", RuntimeWarning, stacklevel=4)

    def recorded_crc32c(self) -> Optional[List[int]]:
        """The CRC-32C of every parameter's 1 MiB pieces as recorded, in order (what a step over a
        shared segment sends for the server to check the segment's weights against), or None when
        some parameter has no such record: contents are not compared, a parameter is fingerprinted
        by sums or by zlib's CRC32, or it was never recorded."""
        if not self.compare_contents or not FINGERPRINTS_ARE_CRC32C:
            return None
        out: List[int] = []
        for i, p in enumerate(self.params):
            recorded = self._recorded[i]
            if recorded is None or recorded[2] is None or self.summed(i) \
                    or len(recorded[2]) != -(-4 * p.numel() // PIECE_BYTES):
                return None
            out.extend(recorded[2])
        return out

    def forget(self, indices: Sequence[int]) -> None:
        """Drops the records of ``indices``: :meth:`changed` reports them until recorded again
        (the server found their weights written since)."""
        for i in indices:
            self._recorded[i] = None
