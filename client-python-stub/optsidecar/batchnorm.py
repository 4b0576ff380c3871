"""Recomputing BatchNorm statistics for the weights one evaluates (algorithms.md §5.6).

Running statistics collected during training describe the activations at the train view
(Schedule-Free's y, Lookahead's fast weights, the raw weights behind an EMA shadow), not at the
eval view. Before evaluating at the eval view they must be recomputed with the eval weights in
place: the model in train mode, the optimizer in eval mode, some training batches forward.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch

__all__ = ["recalibrate_batchnorm"]


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, optimizer: Any, batches: Iterable[Any],
                          num_batches: Optional[int] = 50, device: Optional[torch.device] = None) -> int:
    r"""Puts the eval view into the parameters and recomputes every BatchNorm layer's running
    mean and variance there, as the plain average over ``num_batches`` training batches.

    Afterwards the optimizer is in eval mode (the parameters hold the eval view) and the model in
    the train/eval mode it had; call ``optimizer.train()`` before the next training step.

    Args:
        model (torch.nn.Module): the model whose parameters the optimizer holds.
        optimizer (RemoteOptimizer): switched to eval mode first (a no-op if it already is).
        batches (iterable): training batches: tensors, or tuples/lists whose first element is
            the model's input (e.g. a DataLoader).
        num_batches (int, optional): how many batches to use (all of ``batches`` if None).
        device (torch.device, optional): where to move each input first.

    Returns:
        the number of batches used (0 if the model has no BatchNorm layer).
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    optimizer.eval()
    momenta = {m: m.momentum for m in norms}
    was_training = model.training
    used = 0
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches, not an exponential one
        model.train()
        for batch in batches:
            if num_batches is not None and used >= num_batches:
                break
            inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
            if device is not None:
                inputs = inputs.to(device)
            model(inputs)
            used += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        model.train(was_training)
    return used
