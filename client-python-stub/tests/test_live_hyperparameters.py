"""Hyperparameters changed in ``param_groups`` between steps take effect from the next step, as in
torch: schedulers that cycle momentum, weight decay or eps changed mid-run, Schedule-Free's own."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_within_tolerance, make_mlp, train_step, twin
from optsidecar import InvalidArgument, RemoteOptimizer

STEPS = 24


def run_side_by_side(remote_model, opt, local_model, reference, make_scheduler, momentum_of, steps=STEPS):
    """Trains both with the same scheduler, checking each step that the server used the momentum
    torch used and that the weights agree."""
    remote_schedule, local_schedule = make_scheduler(opt), make_scheduler(reference)
    seen = set()
    for t in range(1, steps + 1):
        used = momentum_of(reference.param_groups[0])
        lr = reference.param_groups[0]["lr"]
        train_step(remote_model, opt, t)
        train_step(local_model, reference, t)
        reported = opt.last_result.hyperparameters["group0"]
        assert momentum_of(reported) == used and opt.last_result.lr["group0"] == lr, f"step {t}"
        seen.add(used)
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()), f"step {t}")
        remote_schedule.step()
        local_schedule.step()
    assert len(seen) >= 5, f"the momentum did not cycle: {sorted(seen)}"


@pytest.mark.parametrize("algorithm, local, hyperparameters", [
    ("Adam", torch.optim.Adam, dict(lr=1e-2, betas=(0.9, 0.999))),
    ("AdamW", torch.optim.AdamW, dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.05)),
    ("SGD", torch.optim.SGD, dict(lr=5e-2, momentum=0.9)),
])
def test_one_cycle_lr_cycling_momentum_matches_torch(target, algorithm, local, hyperparameters):
    remote_model = make_mlp()
    local_model = twin(remote_model)
    opt = RemoteOptimizer(remote_model.named_parameters(), target=target, algorithm=algorithm, **hyperparameters)
    reference = local(local_model.parameters(), foreach=False, **hyperparameters)
    try:
        def one_cycle(o):
            return torch.optim.lr_scheduler.OneCycleLR(o, max_lr=5e-2, total_steps=STEPS + 1)  # cycle_momentum=True

        momentum_of = (lambda g: g["momentum"]) if algorithm == "SGD" else (lambda g: tuple(g["betas"])[0])
        run_side_by_side(remote_model, opt, local_model, reference, one_cycle, momentum_of)
    finally:
        opt.delete()


@pytest.mark.parametrize("algorithm, local, hyperparameters", [
    ("SGD", torch.optim.SGD, dict(lr=5e-2, momentum=0.9)),
    ("Adam", torch.optim.Adam, dict(lr=1e-2, betas=(0.9, 0.999))),
    ("AdamW", torch.optim.AdamW, dict(lr=1e-2, betas=(0.9, 0.999), weight_decay=0.05)),
])
def test_cyclic_lr_cycling_momentum_matches_torch(target, algorithm, local, hyperparameters):
    remote_model = make_mlp()
    local_model = twin(remote_model)
    reference = local(local_model.parameters(), foreach=False, **hyperparameters)

    def cyclic(o):
        return torch.optim.lr_scheduler.CyclicLR(o, base_lr=1e-3, max_lr=3e-2, step_size_up=5)  # cycle_momentum=True

    try:
        cyclic(local(twin(local_model).parameters(), **hyperparameters))
    except ValueError as e:
        pytest.skip(f"this torch's CyclicLR cycles no {algorithm} momentum ({e}); torch 2.x cycles Adam's betas")
    opt = RemoteOptimizer(remote_model.named_parameters(), target=target, algorithm=algorithm, **hyperparameters)
    try:
        momentum_of = (lambda g: g["momentum"]) if algorithm == "SGD" else (lambda g: tuple(g["betas"])[0])
        run_side_by_side(remote_model, opt, local_model, reference, cyclic, momentum_of)
    finally:
        opt.delete()


def test_weight_decay_and_eps_changed_mid_run_match_torch(client, target):
    remote_model = make_mlp()
    local_model = twin(remote_model)
    opt = RemoteOptimizer(remote_model.named_parameters(), target=target, algorithm="AdamW", lr=1e-2,
                          weight_decay=0.01, eps=1e-8)
    reference = torch.optim.AdamW(local_model.parameters(), lr=1e-2, weight_decay=0.01, eps=1e-8, foreach=False)
    try:
        for t in range(1, 31):
            if t == 11:
                for o in (opt, reference):
                    o.param_groups[0]["weight_decay"] = 0.5
            if t == 21:
                for o in (opt, reference):
                    o.param_groups[0]["eps"] = 1e-3
            train_step(remote_model, opt, t)
            train_step(local_model, reference, t)
            reported = opt.last_result.hyperparameters["group0"]
            assert (reported["weight_decay"], reported["eps"]) == (reference.param_groups[0]["weight_decay"],
                                                                   reference.param_groups[0]["eps"]), f"step {t}"
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()),
                                "AdamW with weight_decay and eps changed mid-run")
        described = client.describe(opt.model).groups[0].hyperparameters
        assert (described["weight_decay"], described["eps"]) == (0.5, 1e-3)
        # Without the changes the weights would differ.
        unchanged_model = make_mlp()
        unchanged = torch.optim.AdamW(unchanged_model.parameters(), lr=1e-2, weight_decay=0.01, foreach=False)
        for t in range(1, 31):
            train_step(unchanged_model, unchanged, t)
        assert not torch.allclose(unchanged_model[0].weight, remote_model[0].weight, atol=1e-4)
    finally:
        opt.delete()


def test_schedule_free_hyperparameters_changed_mid_run_match_schedulefree(target):
    schedulefree = pytest.importorskip("schedulefree")
    hyperparameters = dict(lr=2e-2, warmup_steps=2, weight_decay=0.01)
    remote_model = make_mlp()
    local_model = twin(remote_model)
    opt = RemoteOptimizer(remote_model.named_parameters(), target=target, algorithm="AdamWScheduleFree",
                          **hyperparameters)
    reference = schedulefree.AdamWScheduleFree(local_model.parameters(), foreach=False, **hyperparameters)
    reference.train()
    try:
        for t in range(1, 21):
            if t == 8:
                for o in (opt, reference):
                    o.param_groups[0].update(r=0.5, weight_lr_power=1.0)
            if t == 14:
                for o in (opt, reference):
                    o.param_groups[0].update(betas=(0.8, 0.99), warmup_steps=20)
            train_step(remote_model, opt, t)
            train_step(local_model, reference, t)
        reported = opt.last_result.hyperparameters["group0"]
        assert (reported["r"], reported["weight_lr_power"], tuple(reported["betas"]), reported["warmup_steps"]) == (
            0.5, 1.0, (0.8, 0.99), 20)
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()),
                                "AdamWScheduleFree's y with r, weight_lr_power, betas and warmup changed")
        opt.eval()
        reference.eval()
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()),
                                "AdamWScheduleFree's x with r, weight_lr_power, betas and warmup changed")
    finally:
        opt.delete()


def test_a_refused_change_names_the_group_and_key_and_changes_nothing(client, target):
    model = make_mlp()
    weights = [{"params": [p for n, p in model.named_parameters() if n.endswith("weight")]},
               {"params": [p for n, p in model.named_parameters() if n.endswith("bias")], "name": "biases"}]
    opt = RemoteOptimizer(weights, target=target, algorithm="Adam", lr=1e-2)
    try:
        train_step(model, opt, 1)
        before = [p.detach().clone() for p in model.parameters()]
        opt.param_groups[1]["amsgrad"] = True
        with pytest.raises(InvalidArgument) as refused:
            train_step(model, opt, 2)
        message = str(refused.value)
        assert "group 'biases' on the server refuses the change of param_groups[1]['amsgrad'] from False to True" in message
        assert "Set 'amsgrad' back to False to go on" in message
        assert refused.value.field.startswith("commit.group_hyperparameters[biases]")
        assert client.describe(opt.model).version == 1 and opt.version == 1
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
        assert client.describe(opt.model).groups[1].hyperparameters["amsgrad"] is False
    finally:
        opt.delete()


def test_a_changed_hyperparameter_survives_snapshot_and_restore(start_server, tmp_path):
    durable = start_server("--state-dir", tmp_path / "state")
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=durable.target, algorithm="AdamW", lr=1e-2,
                          weight_decay=0.01)
    try:
        for t in range(1, 4):
            train_step(model, opt, t)
        opt.param_groups[0]["weight_decay"] = 0.3
        opt.param_groups[0]["betas"] = (0.8, 0.99)
        train_step(model, opt, 4)
        snapshot = opt.snapshot()
        for t in range(5, 8):
            train_step(model, opt, t)
        continued = [p.detach().clone() for p in model.parameters()]
        # Back to the snapshot with the registration's values in param_groups: the restore brings
        # back the changed ones, and the same steps give the same weights.
        opt.param_groups[0]["weight_decay"] = 0.01
        opt.param_groups[0]["betas"] = (0.9, 0.999)
        info = opt.restore(snapshot)
        described = info.groups[0].hyperparameters
        assert (described["weight_decay"], tuple(described["betas"])) == (0.3, (0.8, 0.99))
        assert (opt.param_groups[0]["weight_decay"], tuple(opt.param_groups[0]["betas"])) == (0.3, (0.8, 0.99))
        assert opt.version == 4
        for t in range(5, 8):
            train_step(model, opt, t)
        assert opt.last_result.hyperparameters["group0"]["weight_decay"] == 0.3
        assert all(torch.equal(p, c) for p, c in zip(model.parameters(), continued))
        described = opt.client.describe(opt.model).groups[0].hyperparameters
        assert (described["weight_decay"], tuple(described["betas"])) == (0.3, (0.8, 0.99))
    finally:
        opt.delete()
