"""RemoteOptimizer as a drop-in for torch.optim and schedulefree: the constructor, ``defaults``,
param groups, ``state``, and training real networks step for step against the reference."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from helpers import assert_moved, assert_within_tolerance, make_mlp, train_step
from optsidecar import RemoteOptimizer
from reference_runs import (HYPERPARAMETERS, SCHEDULE_FREE, assert_group_counters_match, build, cases,
                            loss_at, make_scheduler, needs_schedulefree, no_decay_groups, pair,
                            reference_optimizer)

STEPS = 12


# -- constructor -------------------------------------------------------------------------------


def test_lr_is_the_second_positional_argument(target):
    model = make_mlp()
    opt = RemoteOptimizer(model.parameters(), 0.05, target=target, algorithm="SGD")
    try:
        assert opt.param_groups[0]["lr"] == 0.05 == opt.defaults["lr"]
        train_step(model, opt, 1)
        assert opt.last_result.groups[0].lr == 0.05
    finally:
        opt.delete()


def test_a_target_passed_positionally_says_target_is_keyword_only(target):
    for args in [(target,), (target, "SGD"), (0.1, "SGD")]:
        with pytest.raises(TypeError, match="target is keyword-only now: pass target='host:port'"):
            RemoteOptimizer(make_mlp().parameters(), *args)


def test_target_defaults_to_the_environment(target, monkeypatch):
    monkeypatch.setenv("OPTSIDECAR_TARGET", target)
    model = make_mlp()
    opt = RemoteOptimizer(model.parameters(), 0.1, algorithm="SGD")
    try:
        assert opt.client.target == target
        train_step(model, opt, 1)
        assert opt.version == 1
    finally:
        opt.delete()


@needs_schedulefree
def test_lr_defaults_to_the_algorithms(target):
    import schedulefree

    model = make_mlp()
    for algorithm, reference_class in [("AdamWScheduleFree", schedulefree.AdamWScheduleFree),
                                       ("Adam", torch.optim.Adam), ("RAdam", torch.optim.RAdam)]:
        opt = RemoteOptimizer(model.parameters(), target=target, algorithm=algorithm)
        try:
            assert opt.param_groups[0]["lr"] == reference_class(model.parameters()).defaults["lr"]
        finally:
            opt.delete()


# -- defaults and param groups ---------------------------------------------------------------------


def same(ours: Any, theirs: Any) -> bool:
    """Hyperparameter values alike: flags and None exactly, numbers and tuples of them closely."""
    if isinstance(theirs, bool) or theirs is None:
        return ours is theirs
    return ours == pytest.approx(theirs)


@pytest.mark.parametrize("algorithm", cases())
def test_defaults_and_groups_hold_every_reference_entry(target, algorithm):
    """Every key the reference keeps in ``defaults`` and in its param groups, with its value."""
    model = make_mlp()
    hyperparameters = HYPERPARAMETERS[algorithm]
    groups = [{"params": [model[0].weight, model[2].weight]}, {"params": [model[0].bias, model[2].bias],
                                                                "weight_decay": 0.0}]
    opt = RemoteOptimizer([dict(g) for g in groups], target=target, algorithm=algorithm, **hyperparameters)
    reference = reference_optimizer(algorithm, [dict(g) for g in groups])
    try:
        implementation = {"foreach", "capturable", "differentiable", "fused"}
        for key, value in reference.defaults.items():
            if key in implementation or key in ("k", "train_mode", "weight_sum", "lr_max", "scheduled_lr"):
                continue
            assert key in opt.defaults, f"defaults lack {key!r}"
            assert same(opt.defaults[key], value), f"defaults[{key!r}]: {opt.defaults[key]!r} != {value!r}"
        if algorithm in SCHEDULE_FREE:
            reference.train()  # schedulefree starts in eval mode; RemoteOptimizer's parameters start as y
        for ours, theirs in zip(opt.param_groups, reference.param_groups):
            assert set(theirs) <= set(ours), f"param group lacks {sorted(set(theirs) - set(ours))}"
            for key, value in theirs.items():
                if key not in implementation and key != "params":
                    assert same(ours[key], value), f"param group [{key!r}]: {ours[key]!r} != {value!r}"
        assert opt.param_groups[1]["weight_decay"] == 0.0
        assert opt.defaults["weight_decay"] == hyperparameters["weight_decay"]
    finally:
        opt.delete()


def test_defaults_are_model_wide_whatever_the_first_group_overrides(target):
    model = make_mlp()
    groups = [{"params": [model[0].bias, model[2].bias], "weight_decay": 0.0},
              {"params": [model[0].weight, model[2].weight]}]
    opt = RemoteOptimizer([dict(g) for g in groups], 1e-2, target=target, algorithm="AdamW", weight_decay=0.05,
                          betas=(0.8, 0.99))
    reference = torch.optim.AdamW([dict(g) for g in groups], 1e-2, weight_decay=0.05, betas=(0.8, 0.99))
    try:
        assert opt.param_groups[0]["weight_decay"] == 0.0 and opt.defaults["weight_decay"] == 0.05
        assert opt.defaults == {**opt.defaults, **{k: v for k, v in reference.defaults.items() if k in opt.defaults}}
        assert {"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"} <= set(opt.defaults)
    finally:
        opt.delete()


# -- state -----------------------------------------------------------------------------------------


def test_state_is_keyed_by_parameter_like_torchs(target):
    model = make_mlp()
    twin = copy.deepcopy(model)
    opt = RemoteOptimizer(model.parameters(), target=target, algorithm="Adam", lr=1e-2, amsgrad=True, ema=0.9)
    shadow = [s for s in opt.client.describe(opt.model).tensors[0].slots if s.startswith("ema")]
    reference = torch.optim.Adam(twin.parameters(), lr=1e-2, amsgrad=True)
    try:
        assert len(opt.state) == 0 and list(opt.state) == [] and model[0].weight not in opt.state
        for m, o in [(model, opt), (twin, reference)]:
            o.zero_grad()
            loss = torch.nn.functional.mse_loss(m(torch.ones(4, 6)), torch.zeros(4, 3))
            loss.backward()
            m[2].bias.grad = None  # no gradient: no state, as in torch
            o.step()
        stepped = [p for n, p in model.named_parameters() if n != "2.bias"]
        assert len(opt.state) == len(reference.state) == 3
        assert [id(p) for p in opt.state] == [id(p) for p in stepped]
        assert model[2].bias not in opt.state and model[0].weight in opt.state
        assert opt.state[model[2].bias] == {} and opt.state[torch.zeros(2)] == {}
        for p, q in zip(model.parameters(), twin.parameters()):
            ours, theirs = opt.state[p], reference.state[q]
            assert sorted(ours) == sorted(list(theirs) + (shadow if theirs else [])), "slots"
            for key, value in theirs.items():
                assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, key
                assert_within_tolerance([ours[key]], [value], f"state[{key!r}]")
        # A copy: writing into it changes nothing on the server.
        opt.state[model[0].weight]["exp_avg"].zero_()
        assert opt.state[model[0].weight]["exp_avg"].abs().sum() > 0
    finally:
        opt.delete()


def test_torchs_own_code_paths_work_with_the_remote_state(target):
    model = make_mlp()
    opt = RemoteOptimizer(model.parameters(), target=target, algorithm="SGD", lr=0.1, momentum=0.9)
    try:
        train_step(model, opt, 1)
        assert "Parameter Group 0" in repr(opt) and "momentum: 0.9" in repr(opt)
        opt.zero_grad()
        assert all(p.grad is None for p in model.parameters())
        # torch's base state_dict reads the state through the mapping.
        base = torch.optim.Optimizer.state_dict(opt)
        assert sorted(base["state"]) == [0, 1, 2, 3]
        assert all(torch.equal(base["state"][i]["momentum_buffer"], opt.state_dict()["state"][i]["momentum_buffer"])
                   for i in range(4))
        state = opt.__getstate__()
        assert state["state"] is opt.state and state["param_groups"] is opt.param_groups
        opt.__setstate__(state)
        train_step(model, opt, 2)
        assert opt.version == 2 and len(opt.state) == 4
    finally:
        opt.delete()


# -- step for step against the reference -----------------------------------------------------------


@pytest.mark.parametrize("architecture", ["cnn_batchnorm", "mlp_layernorm"])
@pytest.mark.parametrize("algorithm,scheduler", cases("scheduler"))
def test_matches_the_reference_step_for_step(target, architecture, algorithm, scheduler):
    """A CNN with BatchNorm and an MLP with LayerNorm, no weight decay on norms and biases, a torch
    lr scheduler: the weights after every step, the groups' lr and counters, and at the end the
    state and (Schedule-Free) the eval point, against torch.optim / schedulefree."""
    local, remote = pair(architecture)
    reference = reference_optimizer(algorithm, no_decay_groups(local, named=False))
    opt = RemoteOptimizer(no_decay_groups(remote, named=True), target=target, algorithm=algorithm,
                          **HYPERPARAMETERS[algorithm])
    reference_scheduler, remote_scheduler = make_scheduler(scheduler, reference), make_scheduler(scheduler, opt)
    schedule_free = algorithm in SCHEDULE_FREE
    before = [p.detach().clone() for p in remote.parameters()]
    try:
        if schedule_free:
            reference.train()
            opt.train()
        for t in range(1, STEPS + 1):
            for model, o, s in [(local, reference, reference_scheduler), (remote, opt, remote_scheduler)]:
                o.zero_grad()
                loss_at(model, architecture, t).backward()
                o.step()
                if s is not None:
                    s.step()
            assert_within_tolerance(list(remote.parameters()), list(local.parameters()), f"step {t}")
            assert_group_counters_match(opt.param_groups, reference.param_groups, f"step {t}")
        assert_moved(before, list(remote.parameters()))
        for p, q in zip(remote.parameters(), local.parameters()):
            ours, theirs = opt.state[p], reference.state[q]
            assert sorted(ours) == sorted(theirs)
            for key, value in theirs.items():
                if value is not None:
                    assert_within_tolerance([ours[key]], [value], f"state[{key!r}]")
        ours_saved, theirs_saved = opt.state_dict(), reference.state_dict()
        assert sorted(ours_saved["state"]) == sorted(theirs_saved["state"])
        assert all(sorted(ours_saved["state"][i]) == sorted(v) for i, v in theirs_saved["state"].items())
        assert [g["params"] for g in ours_saved["param_groups"]] == [g["params"] for g in theirs_saved["param_groups"]]
        if schedule_free:
            reference.eval()
            opt.eval()
            assert_within_tolerance(list(remote.parameters()), list(local.parameters()), "eval point x")
            assert_group_counters_match(opt.param_groups, reference.param_groups, "eval")
            assert opt.param_groups[0]["train_mode"] is False
    finally:
        opt.delete()


def test_one_cycle_lr_drives_the_remote_lr_as_on_torch(target):
    """OneCycleLR (lr only: cycle_momentum=False) drives the lr exactly as on torch.optim.SGD."""
    local, remote = pair("mlp_layernorm")
    reference = torch.optim.SGD(no_decay_groups(local, named=False), lr=0.05, momentum=0.9)
    opt = RemoteOptimizer(no_decay_groups(remote, named=True), 0.05, target=target, algorithm="SGD", momentum=0.9)
    schedulers = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=STEPS, cycle_momentum=False)
                  for o in (reference, opt)]
    try:
        for t in range(1, STEPS + 1):
            for model, o, s in [(local, reference, schedulers[0]), (remote, opt, schedulers[1])]:
                o.zero_grad()
                loss_at(model, "mlp_layernorm", t).backward()
                o.step()
                s.step()
            assert_within_tolerance(list(remote.parameters()), list(local.parameters()), f"step {t}")
            assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in reference.param_groups]
    finally:
        opt.delete()


def test_build_is_deterministic():
    """The comparisons rely on identical networks and batches."""
    a, b = build("cnn_batchnorm"), build("cnn_batchnorm")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.equal(loss_at(a, "cnn_batchnorm", 3), loss_at(b, "cnn_batchnorm", 3))
