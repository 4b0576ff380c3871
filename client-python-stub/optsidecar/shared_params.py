"""The trainer's side of shared memory: parameters and gradients living in a segment.

Each parameter's ``.data`` becomes a float32 view of its weights region, so the weights the
server writes there are the parameters, and each ``.grad`` a view of its gradient region, so
``backward()`` accumulates straight into the segment (autograd adds into an existing ``.grad``
in place). Nothing is copied on the trainer's side.

``zero_grad`` zeroes the regions in place, yet behaves like torch's ``set_to_none``: a gradient not
written since (its view's version counter did not move) is sent as no gradient, as torch skips
a None ``.grad``. A ``.grad`` replaced by another tensor is copied into the segment at the step;
a ``.data`` replaced by another tensor is copied into the weights region and rebound.
"""

from typing import List, Optional, Sequence

import torch

from .shm import Segment


class SharedParameters:
    """Binds ``params`` (in the model's tensor order, CPU float32) to ``segment``'s regions."""

    def __init__(self, segment: Segment, params: Sequence[torch.Tensor]):
        self.segment = segment
        self.params = list(params)
        self._weights = [segment.weights_tensor(i).view(p.shape) for i, p in enumerate(self.params)]
        self._grads = [segment.gradient_tensor(i).view(p.shape) for i, p in enumerate(self.params)]
        #: Each gradient view's version counter when it was last zeroed; None: written since.
        self._zeroed_at: List[Optional[int]] = [None] * len(self.params)

    @staticmethod
    def supported(params: Sequence[torch.Tensor]) -> Optional[str]:
        """Why these parameters cannot live in shared memory, or None when they can."""
        for p in params:
            if p.device.type != "cpu" or p.dtype != torch.float32:
                return f"a parameter is {p.dtype} on {p.device}; shared memory holds CPU float32 parameters"
        return None

    @torch.no_grad()
    def bind(self) -> None:
        """Moves every parameter's values into its weights region and points ``.data`` there;
        gradients start as zeroed views, as after ``zero_grad``."""
        for i, p in enumerate(self.params):
            self._weights[i].copy_(p.data)
            p.data = self._weights[i]
        self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def rebind(self) -> List[int]:
        """Rebinds parameters whose ``.data`` was replaced (copying their values in); returns their indexes."""
        moved = []
        for i, p in enumerate(self.params):
            if p.data_ptr() != self._weights[i].data_ptr() or p.shape != self._weights[i].shape:
                self._weights[i].copy_(p.data.reshape(self._weights[i].shape))
                p.data = self._weights[i]
                moved.append(i)
        return moved

    def is_bound(self, index: int) -> bool:
        p = self.params[index]
        return p.data_ptr() == self._weights[index].data_ptr()

    @torch.no_grad()
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zeroes the gradient regions in place and points each ``.grad`` at its region. With
        ``set_to_none`` a gradient left unwritten until the step counts as None."""
        for i, p in enumerate(self.params):
            view = self._grads[i]
            view.zero_()
            if p.grad is None or p.grad.data_ptr() != view.data_ptr():
                p.grad = view
            self._zeroed_at[i] = view._version if set_to_none else None

    def gradients(self) -> List[Optional[torch.Tensor]]:
        """What each parameter contributes to the step: its gradient view when written since
        ``zero_grad``, another tensor the user put in ``.grad`` (copied in at the step), or None."""
        out: List[Optional[torch.Tensor]] = []
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                out.append(None)
            elif g.data_ptr() == self._grads[i].data_ptr() and self._zeroed_at[i] is not None \
                    and g._version == self._zeroed_at[i]:
                out.append(None)  # not written since zero_grad: torch would have None here
            else:
                out.append(g)
        return out
