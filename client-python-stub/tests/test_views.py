"""train()/eval(): which view the parameters hold, as with schedule_free's optimizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import batch, make_mlp, train_step, twin
from optsidecar import FailedPrecondition, InvalidArgument, RemoteOptimizer
from optsidecar.v1 import optimizer_pb2 as pb


def pull(client, model, view, like):
    out = [np.empty(p.numel(), dtype=np.float32) for p in like]
    weights = client.pull(model, view, out)
    return [torch.from_numpy(o).view(p.shape) for o, p in zip(out, like)], weights


@pytest.mark.parametrize("algorithm", ["AdamWScheduleFree", "RAdamScheduleFree"])
def test_schedule_free_eval_and_train_switch_views(client, target, algorithm):
    model = make_mlp()
    never_evaluated = twin(model)
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm=algorithm, lr=2e-2, weight_decay=0.01)
    twin_opt = RemoteOptimizer(never_evaluated.named_parameters(), target=target, algorithm=algorithm, lr=2e-2,
                               weight_decay=0.01)
    params = list(model.parameters())
    try:
        for t in range(1, 31):
            train_step(model, opt, t)
            train_step(never_evaluated, twin_opt, t)
            if t % 5 == 0:
                y = [p.detach().clone() for p in params]
                opt.eval()
                assert opt.mode == "eval"
                x = [p.detach().clone() for p in params]
                # The parameters hold exactly what the server serves as the eval view ...
                served, weights = pull(client, opt.model, "eval", params)
                assert weights.version == t
                assert all(torch.equal(a, b) for a, b in zip(x, served))
                # ... which is x = lerp(y, z, 1 − 1/β) from the server's y and z (algorithms.md §5.1).
                z, _ = pull(client, opt.model, "slot:z", params)
                beta = opt.param_groups[0]["betas"][0]
                for xi, yi, zi in zip(x, y, z):
                    torch.testing.assert_close(xi, torch.lerp(yi, zi, 1 - 1 / beta), rtol=1e-6, atol=1e-7)
                with torch.no_grad():
                    model(batch(t)[0])  # evaluate at x
                if t > 5 or algorithm != "RAdamScheduleFree":  # RAdam-SF's first steps leave y = z = x
                    assert any(not torch.equal(a, b) for a, b in zip(x, y)), "eval view equals train view"
                opt.train()
                assert opt.mode == "train"
                assert all(torch.equal(p.detach(), b) for p, b in zip(params, y))
        # Round trips never perturb the trajectory: bit-identical to the twin that never evaluated.
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), never_evaluated.parameters()))
        figures = opt.last_result.groups[0]
        assert figures.k == 30 and 0 < figures.averaging_weight < 1 and figures.weight_sum > 0
        assert figures.scalars == {"k": 30.0, "lr_max": figures.lr_max, "weight_sum": figures.weight_sum}
        assert dict(client.describe(opt.model).state.groups[0].scalars) == figures.scalars
    finally:
        opt.delete()
        twin_opt.delete()


def test_step_in_eval_mode_raises(target):
    model = make_mlp()
    opt = RemoteOptimizer(model.parameters(), target=target, algorithm="SGDScheduleFree", lr=0.5)
    try:
        train_step(model, opt, 1)
        opt.eval()
        with pytest.raises(RuntimeError, match="train mode"):
            train_step(model, opt, 2)
        assert opt.version == 1
        opt.train()
        train_step(model, opt, 2)
        assert opt.version == 2
    finally:
        opt.delete()


def test_eval_without_an_eval_view_names_the_algorithm(target):
    model = make_mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = RemoteOptimizer(model.parameters(), target=target, algorithm="AdamW")
    try:
        with pytest.raises(InvalidArgument, match="AdamW has no eval view"):
            opt.eval()
        assert opt.mode == "train"
        assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))
    finally:
        opt.delete()


def test_ema_eval_view_is_the_shadow(client, target):
    model = make_mlp()
    opt = RemoteOptimizer(model.parameters(), target=target, algorithm="SGD", lr=0.1, ema=[{"decay": 0.9, "every": 2}])
    params = list(model.parameters())
    try:
        train_step(model, opt, 1)
        with pytest.raises(FailedPrecondition, match="no update yet"):
            opt.eval()
        assert opt.mode == "train"
        train_step(model, opt, 2)  # the first update copies θ
        theta = [p.detach().clone() for p in params]
        opt.eval()
        assert all(torch.equal(p.detach(), b) for p, b in zip(params, theta))
        opt.train()
        for t in range(3, 7):
            train_step(model, opt, t)
        opt.eval()
        shadow, _ = pull(client, opt.model, "ema:0.9", params)
        assert all(torch.equal(p.detach(), s) for p, s in zip(params, shadow))
        opt.train()
        assert any(not torch.equal(p.detach(), s) for p, s in zip(params, shadow))
    finally:
        opt.delete()


def test_lookahead_eval_view_is_the_slow_weights(client, target):
    model = make_mlp()
    opt = RemoteOptimizer(model.parameters(), target=target, algorithm="SGD", lr=0.1, lookahead=dict(k=3, alpha=0.5))
    params = list(model.parameters())
    try:
        for t in range(1, 5):
            train_step(model, opt, t)
        opt.eval()
        slow, weights = pull(client, opt.model, "slow", params)
        assert weights.view.kind == pb.VIEW_SLOW
        assert all(torch.equal(p.detach(), s) for p, s in zip(params, slow))
        opt.train()
        assert any(not torch.equal(p.detach(), s) for p, s in zip(params, slow))
    finally:
        opt.delete()
