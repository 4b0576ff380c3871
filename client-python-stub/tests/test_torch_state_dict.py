"""State dicts in torch's format: one saved by torch.optim / schedulefree loads into
RemoteOptimizer and continues as the reference does, one of RemoteOptimizer loads into the
reference and continues, and a checkpoint taken mid-schedule resumes at the schedule's lr."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import assert_within_tolerance
from optsidecar import RemoteOptimizer
from reference_runs import (HYPERPARAMETERS, SCHEDULE_FREE, assert_group_counters_match, build, cases,
                            make_scheduler, needs_schedulefree, no_decay_groups, reference_optimizer, snapshot,
                            train_step)

ARCHITECTURE = "mlp_layernorm"
SAVE_AFTER = 6
LAST = 16


def continue_side_by_side(runs, first: int, last: int, what: str) -> None:
    """Steps each (model, optimizer, scheduler) on the same batches; after every step the first's
    weights and groups must match the second's, the reference."""
    (ours_model, ours, _), (ref_model, ref, _) = runs
    for t in range(first, last + 1):
        for model, opt, scheduler in runs:
            train_step(model, ARCHITECTURE, opt, scheduler, t)
        assert_within_tolerance(list(ours_model.parameters()), list(ref_model.parameters()), f"{what}, step {t}")
        assert_group_counters_match(ours.param_groups, ref.param_groups, f"{what}, step {t}")


@pytest.mark.parametrize("algorithm,scheduler", cases("scheduler"))
def test_a_reference_state_dict_loads_and_continues_as_the_reference(target, algorithm, scheduler):
    schedule_free = algorithm in SCHEDULE_FREE
    ref_model = build(ARCHITECTURE)
    ref = reference_optimizer(algorithm, no_decay_groups(ref_model, named=False))
    ref_scheduler = make_scheduler(scheduler, ref)
    if schedule_free:
        ref.train()
    for t in range(1, SAVE_AFTER + 1):
        train_step(ref_model, ARCHITECTURE, ref, ref_scheduler, t)
    if schedule_free:
        ref.eval()  # schedulefree saves in eval mode: the parameters hold x
    saved = snapshot(ref_model, ref, ref_scheduler)

    model = build(ARCHITECTURE, seed=1)  # another start: the loads must win
    model.load_state_dict(saved["model"])
    settings = dict(HYPERPARAMETERS[algorithm], lr=HYPERPARAMETERS[algorithm]["lr"] * 3)
    opt = RemoteOptimizer(no_decay_groups(model, named=True), target=target, algorithm=algorithm, **settings)
    remote_scheduler = make_scheduler(scheduler, opt)
    try:
        opt.load_state_dict(saved["optimizer"])
        if remote_scheduler is not None:
            remote_scheduler.load_state_dict(saved["scheduler"])
        assert opt.mode == ("eval" if schedule_free else "train")
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in ref.param_groups]
        assert_group_counters_match(opt.param_groups, ref.param_groups, "after loading")
        if schedule_free:
            ref.train()
            opt.train()
            assert_within_tolerance(list(model.parameters()), list(ref_model.parameters()), "y after train()")
        continue_side_by_side([(model, opt, remote_scheduler), (ref_model, ref, ref_scheduler)],
                              SAVE_AFTER + 1, LAST, f"{algorithm} loaded from its reference")
    finally:
        opt.delete()


@pytest.mark.parametrize("algorithm,scheduler", cases("scheduler"))
def test_our_state_dict_loads_into_the_reference_and_continues(target, algorithm, scheduler):
    schedule_free = algorithm in SCHEDULE_FREE
    model = build(ARCHITECTURE)
    opt = RemoteOptimizer(no_decay_groups(model, named=True), target=target, algorithm=algorithm,
                          **HYPERPARAMETERS[algorithm])
    remote_scheduler = make_scheduler(scheduler, opt)
    try:
        for t in range(1, SAVE_AFTER + 1):
            train_step(model, ARCHITECTURE, opt, remote_scheduler, t)
        if schedule_free:
            opt.eval()
        saved = snapshot(model, opt, remote_scheduler)

        ref_model = build(ARCHITECTURE, seed=1)
        ref_model.load_state_dict(saved["model"])
        ref = reference_optimizer(algorithm, no_decay_groups(ref_model, named=False))
        ref_scheduler = make_scheduler(scheduler, ref)
        ref.load_state_dict(saved["optimizer"])
        if ref_scheduler is not None:
            ref_scheduler.load_state_dict(saved["scheduler"])
        for p, q in zip(model.parameters(), ref_model.parameters()):
            for key, value in opt.state[p].items():
                assert torch.equal(ref.state[q][key], value), f"{key} as loaded by the reference"
        if schedule_free:
            assert ref.param_groups[0]["train_mode"] is False
            ref.train()
            opt.train()
            assert_within_tolerance(list(ref_model.parameters()), list(model.parameters()), "y after train()")
        continue_side_by_side([(model, opt, remote_scheduler), (ref_model, ref, ref_scheduler)],
                              SAVE_AFTER + 1, LAST, f"{algorithm} loaded into its reference")
    finally:
        opt.delete()


# -- mid-schedule resume ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["cosine", "warmup"])
def test_a_checkpoint_taken_mid_schedule_resumes_at_the_schedules_lr(target, scheduler):
    """Against an uninterrupted torch.optim.AdamW run with the same torch scheduler."""
    ref_model = build(ARCHITECTURE)
    ref = torch.optim.AdamW(no_decay_groups(ref_model, named=False), lr=1e-2, weight_decay=0.1)
    ref_scheduler = make_scheduler(scheduler, ref)

    model = copy.deepcopy(ref_model)
    opt = RemoteOptimizer(no_decay_groups(model, named=True), 1e-2, target=target, algorithm="AdamW",
                          weight_decay=0.1)
    remote_scheduler = make_scheduler(scheduler, opt)
    resumed = None
    try:
        for t in range(1, SAVE_AFTER + 1):
            train_step(ref_model, ARCHITECTURE, ref, ref_scheduler, t)
            train_step(model, ARCHITECTURE, opt, remote_scheduler, t)
        saved = snapshot(model, opt, remote_scheduler)
        lr_at_save = [g["lr"] for g in ref.param_groups]
        opt.delete()

        resumed_model = build(ARCHITECTURE, seed=1)
        resumed_model.load_state_dict(saved["model"])
        resumed = RemoteOptimizer(no_decay_groups(resumed_model, named=True), 1e-2, target=target,
                                  algorithm="AdamW", weight_decay=0.1)
        resumed_scheduler = make_scheduler(scheduler, resumed)
        resumed.load_state_dict(saved["optimizer"])
        resumed_scheduler.load_state_dict(saved["scheduler"])
        assert [g["lr"] for g in resumed.param_groups] == lr_at_save
        for t in range(SAVE_AFTER + 1, LAST + 1):
            lr_of_step = [g["lr"] for g in ref.param_groups]
            train_step(ref_model, ARCHITECTURE, ref, ref_scheduler, t)
            train_step(resumed_model, ARCHITECTURE, resumed, resumed_scheduler, t)
            assert [g.lr for g in resumed.last_result.groups] == lr_of_step, f"lr of step {t}"
            assert [g["lr"] for g in resumed.param_groups] == [g["lr"] for g in ref.param_groups], f"step {t}"
            assert_within_tolerance(list(resumed_model.parameters()), list(ref_model.parameters()), f"step {t}")
    finally:
        (resumed or opt).delete()


def test_a_checkpoint_taken_mid_server_schedule_resumes_bit_for_bit(target):
    """The server-side schedule's position comes back with the state dict, and the groups' lr stay
    base lrs: the lr of every later step is the uninterrupted run's, not the schedule applied twice."""
    schedule = dict(type="cosine", warmup_steps=3, total_steps=LAST)

    def run(model, first, last, opt):
        lrs = []
        for t in range(first, last + 1):
            train_step(model, ARCHITECTURE, opt, None, t)
            lrs.append([g.lr for g in opt.last_result.groups])
        return lrs

    model = build(ARCHITECTURE)
    opt = RemoteOptimizer(no_decay_groups(model, named=True), 1e-2, target=target, algorithm="Adam", schedule=schedule)
    try:
        uninterrupted_lrs = run(model, 1, LAST, opt)
        uninterrupted = [p.detach().clone() for p in model.parameters()]
    finally:
        opt.delete()

    model = build(ARCHITECTURE)
    opt = RemoteOptimizer(no_decay_groups(model, named=True), 1e-2, target=target, algorithm="Adam", schedule=schedule)
    try:
        run(model, 1, SAVE_AFTER, opt)
        saved = snapshot(model, opt, None)
        assert [g["lr"] for g in saved["optimizer"]["param_groups"]] == [1e-2, 1e-2]
    finally:
        opt.delete()

    model = build(ARCHITECTURE, seed=1)
    model.load_state_dict(saved["model"])
    opt = RemoteOptimizer(no_decay_groups(model, named=True), 1e-2, target=target, algorithm="Adam", schedule=schedule)
    try:
        opt.load_state_dict(saved["optimizer"])
        assert [g["lr"] for g in opt.param_groups] == [1e-2, 1e-2]
        assert run(model, SAVE_AFTER + 1, LAST, opt) == uninterrupted_lrs[SAVE_AFTER:]
        for i, (a, b) in enumerate(zip(model.parameters(), uninterrupted)):
            assert torch.equal(a, b), f"parameter {i} differs by up to {(a - b).abs().max().item():.3g}"
    finally:
        opt.delete()


# -- what does not fit -----------------------------------------------------------------------------


def trained_reference(algorithm: str, model: torch.nn.Module, **hyperparameters):
    ref = reference_optimizer(algorithm, no_decay_groups(model, named=False), **hyperparameters)
    if algorithm in SCHEDULE_FREE:
        ref.train()
    for t in (1, 2):
        train_step(model, ARCHITECTURE, ref, None, t)
    return ref


@needs_schedulefree
def test_a_state_dict_of_another_algorithm_is_refused_naming_it(target, client):
    model = build(ARCHITECTURE)
    opt = RemoteOptimizer(no_decay_groups(model, named=True), 1e-2, target=target, algorithm="Adam")
    sf = RemoteOptimizer(no_decay_groups(build(ARCHITECTURE), named=True), target=target,
                         algorithm="AdamWScheduleFree")
    try:
        version = client.describe(opt.model).version
        with pytest.raises(ValueError, match=r"holds \['dampening', 'momentum', 'nesterov'\], which Adam does not "
                                             r"have: it was saved by another algorithm than torch.optim.Adam"):
            opt.load_state_dict(trained_reference("SGD", build(ARCHITECTURE)).state_dict())
        with pytest.raises(ValueError, match="holds Schedule-Free's counters"):
            opt.load_state_dict(trained_reference("AdamWScheduleFree", build(ARCHITECTURE)).state_dict())
        with pytest.raises(ValueError, match=r"lacks the counters \['k', 'weight_sum', 'lr_max'\] that "
                                             r"schedulefree.AdamWScheduleFree keeps"):
            sf.load_state_dict(trained_reference("Adam", build(ARCHITECTURE)).state_dict())
        with pytest.raises(ValueError, match=r"holds \['max_exp_avg_sq'\], which torch.optim.Adam with these "
                                             r"hyperparameters does not keep"):
            saved = trained_reference("Adam", build(ARCHITECTURE), amsgrad=True).state_dict()
            saved["param_groups"][0]["amsgrad"] = False
            opt.load_state_dict(saved)
        # Nothing was replaced on the server.
        assert client.describe(opt.model).version == version
    finally:
        opt.delete()
        sf.delete()


def test_missing_slots_shapes_and_layouts_are_named(target, client):
    model = build(ARCHITECTURE)
    opt = RemoteOptimizer(no_decay_groups(model, named=True), 1e-2, target=target, algorithm="Adam")
    try:
        saved = trained_reference("Adam", build(ARCHITECTURE)).state_dict()
        missing = copy.deepcopy(saved)
        del missing["state"][1]["exp_avg_sq"]
        with pytest.raises(ValueError, match=r"state\[1\] \(parameter '3.weight'\) lacks \['exp_avg_sq'\]"):
            opt.load_state_dict(missing)
        no_step = copy.deepcopy(saved)
        del no_step["state"][0]["step"]
        with pytest.raises(ValueError, match=r"state\[0\] .* lacks 'step'"):
            opt.load_state_dict(no_step)
        wrong_shapes = copy.deepcopy(saved)  # as saved for a network of another width
        wrong_shapes["state"][0]["exp_avg"] = torch.zeros(16, 5)
        with pytest.raises(ValueError, match=r"\['exp_avg'\] has shape \(16, 5\); the parameter has shape \(16, 6\)"):
            opt.load_state_dict(wrong_shapes)
        one_group = torch.optim.Adam(build(ARCHITECTURE).parameters()).state_dict()
        with pytest.raises(ValueError, match=r"has 1 parameter groups of \[6\] parameters; this optimizer has 2 of "
                                             r"\[2, 4\]"):
            opt.load_state_dict(one_group)
        assert client.describe(opt.model).version == 0
        assert len(opt.state) == 0
    finally:
        opt.delete()
