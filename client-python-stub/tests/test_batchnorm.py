"""recalibrate_batchnorm against torch's own update_bn run on the eval weights."""

from __future__ import annotations

import copy

import numpy as np
import torch

from helpers import batch
from optsidecar import RemoteOptimizer, recalibrate_batchnorm


def bn_model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 3))


def test_statistics_are_recomputed_at_the_eval_view(client, target):
    model = bn_model()
    opt = RemoteOptimizer(model.parameters(), target=target, algorithm="AdamWScheduleFree", lr=5e-2)
    norm = model[1]
    try:
        for t in range(1, 21):
            x, y = batch(t)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        loader = [batch(100 + i) for i in range(8)]
        at_y = copy.deepcopy(model)  # the statistics a recalibration at y would give
        torch.optim.swa_utils.update_bn(loader, at_y)

        # Reference: torch's update_bn on a copy holding the server's eval view.
        expected = copy.deepcopy(model)
        x_view = [np.empty(p.numel(), np.float32) for p in expected.parameters()]
        client.pull(opt.model, "eval", x_view)
        with torch.no_grad():
            for p, v in zip(expected.parameters(), x_view):
                p.copy_(torch.from_numpy(v).view_as(p))
        torch.optim.swa_utils.update_bn(loader, expected)

        model.eval()
        assert recalibrate_batchnorm(model, opt, loader, num_batches=None) == 8
        assert opt.mode == "eval" and not model.training
        assert torch.equal(norm.running_mean, expected[1].running_mean)
        assert torch.equal(norm.running_var, expected[1].running_var)
        assert norm.momentum == expected[1].momentum == 0.1
        assert not torch.allclose(norm.running_mean, at_y[1].running_mean), "x and y give the same statistics"
        assert recalibrate_batchnorm(model, opt, loader, num_batches=3) == 3
    finally:
        opt.delete()
