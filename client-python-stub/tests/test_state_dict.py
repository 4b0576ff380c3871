"""state_dict() / load_state_dict(): save, continue in a fresh process, compare bit for bit."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys

import pytest
import torch
from google.protobuf import json_format

from conftest import TESTS_DIR, subprocess_env
from helpers import RESUME_CONFIGS, build_run, make_mlp, run_steps
from optsidecar import RemoteOptimizer
from optsidecar.v1 import optimizer_pb2 as pb

SAVE_AFTER = 10
LAST = 20


def figures_without_step_id(figures) -> str:
    # step_id (also in contributions, with the client id) is the client's own sequence number;
    # repr compares NaN figures as equal
    return repr(dataclasses.asdict(dataclasses.replace(figures, step_id=0, contributions=())))


def without_clients(state: dict) -> dict:
    # The ledger of trainers' sequence numbers names the trainers, and the resumed run had another one.
    return {k: v for k, v in state.items() if k != "clients"}


@pytest.fixture(autouse=True)
def one_thread():
    # The fresh process uses one thread too, so both compute identical gradients.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("config", RESUME_CONFIGS)
def test_resume_in_a_fresh_process_is_bit_identical(target, tmp_path, config):
    model, opt, scheduler = build_run(config, target, seed=0)
    try:
        run_steps(model, opt, scheduler, 1, LAST)
        uninterrupted = [p.detach().clone() for p in model.parameters()]
        uninterrupted_figures = figures_without_step_id(opt.last_result)
        uninterrupted_state = opt.state_dict()
    finally:
        opt.delete()

    model, opt, scheduler = build_run(config, target, seed=0)
    try:
        run_steps(model, opt, scheduler, 1, SAVE_AFTER)
        saved_in_eval = config.endswith("eval_mode")
        if saved_in_eval:
            opt.eval()  # as schedule_free's README asks before saving
        state = opt.state_dict()
        assert all(isinstance(w, torch.Tensor) for w in state["optsidecar"]["weights"])
        # Slots the reference lacks (EMA shadows, Lookahead's slow weights) are among the extras.
        assert all(t is None or isinstance(t, torch.Tensor)
                   for slot in state["optsidecar"]["slots"].values() for t in slot)
        checkpoint = tmp_path / "checkpoint.pt"
        torch.save({"optimizer": state, "scheduler": scheduler.state_dict() if scheduler else None}, checkpoint)
    finally:
        opt.delete()

    output = tmp_path / "resumed.pt"
    run = subprocess.run(
        [sys.executable, str(TESTS_DIR / "resume_worker.py"), target, config, str(checkpoint),
         str(SAVE_AFTER + 1), str(LAST), str(output)],
        env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    resumed = torch.load(output)
    assert resumed["mode_after_load"] == ("eval" if saved_in_eval else "train")
    assert resumed["figures"] == uninterrupted_figures
    for i, (a, b) in enumerate(zip(resumed["params"], uninterrupted)):
        assert torch.equal(a, b), f"parameter {i} differs by up to {(a - b).abs().max().item():.3g}"
    # The whole optimizer state too: every slot (moments, z, EMA shadow, slow weights) and counter.
    final, expected = resumed["state"]["optsidecar"], uninterrupted_state["optsidecar"]
    assert without_clients(final["spec"]["state"]) == without_clients(expected["spec"]["state"])
    assert final["spec"]["groups"] == expected["spec"]["groups"]
    assert sorted(final["slots"]) == sorted(expected["slots"])
    for slot, tensors in expected["slots"].items():
        assert all(a is b is None or torch.equal(a, b) for a, b in zip(final["slots"][slot], tensors)), \
            f"slot {slot} differs"
    assert sorted(resumed["state"]["state"]) == sorted(uninterrupted_state["state"])
    for index, slots in uninterrupted_state["state"].items():
        assert sorted(resumed["state"]["state"][index]) == sorted(slots)
        for slot, value in slots.items():
            assert torch.equal(resumed["state"]["state"][index][slot], value), f"state[{index}][{slot!r}] differs"
    groups = [{k: v for k, v in g.items()} for g in resumed["state"]["param_groups"]]
    assert groups == uninterrupted_state["param_groups"]


def test_state_dict_holds_every_slot_and_the_counters(client, target):
    model = make_mlp()
    opt = RemoteOptimizer(model.parameters(), target=target, algorithm="Adam", lr=1e-2, ema=[0.5])
    try:
        run_steps(model, opt, None, 1, 3)
        state = opt.state_dict()
        info = client.describe(opt.model)
        extras = state["optsidecar"]
        assert sorted(info.tensors[0].slots) == ["ema:0", "exp_avg", "exp_avg_sq"]
        assert sorted(state["state"]) == [0, 1, 2, 3]
        assert all(sorted(s) == ["exp_avg", "exp_avg_sq", "step"] for s in state["state"].values())
        assert sorted(extras["slots"]) == ["ema:0"]
        assert extras["spec"]["state"]["version"] == "3"
        assert extras["spec"]["state"]["ema_updates"] == ["3"]
        assert extras["spec"]["optimizer"]["algorithm"] == extras["algorithm"] == "Adam"
        assert extras["reference"] == "torch.optim.Adam"
        assert extras["model"] == opt.model and extras["client_id"] == opt.client_id and extras["mode"] == "train"
        assert all(torch.equal(w, p.detach()) for w, p in zip(extras["weights"], model.parameters()))
        assert state["param_groups"][0]["params"] == [0, 1, 2, 3]
    finally:
        opt.delete()


def test_load_rejects_another_layout(target):
    model = make_mlp()
    opt = RemoteOptimizer(model.parameters(), target=target, algorithm="SGD", lr=0.1)
    other_model = torch.nn.Linear(6, 3)
    other = RemoteOptimizer(other_model.parameters(), target=target, algorithm="SGD", lr=0.1)
    try:
        with pytest.raises(ValueError, match="tensors"):
            other.load_state_dict(opt.state_dict())
        with pytest.raises(ValueError, match="saved by another algorithm"):
            opt.load_state_dict(torch.optim.Adam(model.parameters(), lr=0.1).state_dict())
        with pytest.raises(ValueError, match="not an optimizer state dict"):
            opt.load_state_dict({"weights": []})
        # Nothing was replaced on the server.
        assert other.client.describe(other.model).tensors[0].shape == [3, 6]
    finally:
        opt.delete()
        other.delete()


def as_format2(state: dict) -> dict:
    """A state dict as format 2 held it: the server's spec, weights and every slot at the top level."""
    extras = state["optsidecar"]
    count = len(extras["weights"])
    slots = {name: list(values) for name, values in extras["slots"].items()}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if name != "step" and value is not None:
                slots.setdefault(name, [None] * count)[index] = value
    return {"optsidecar": 2, "model": extras["model"], "mode": extras["mode"], "spec": extras["spec"],
            "weights": extras["weights"], "slots": slots, "param_groups": state["param_groups"]}


def as_format1(spec: dict) -> dict:
    """A spec dict as the previous state dict format held it: each group's scalars as the entries
    k (a string, as MessageToDict prints a uint64), weight_sum and lr_max of every group (0, 0 and
    -1 for an algorithm without them), zeros left out."""
    spec = copy.deepcopy(spec)
    state = spec["state"]
    groups = state["groups"] + [g for c in state.get("clients", []) for g in c["last_result"]["groups"]]
    for group in groups:
        scalars = group.pop("scalars", {})
        old = {"k": str(int(scalars.get("k", 0))), "weight_sum": scalars.get("weight_sum", 0.0),
               "lr_max": scalars.get("lr_max", -1.0)}
        group.update({name: value for name, value in old.items() if value not in ("0", 0.0)})
    return spec


@pytest.mark.parametrize("previous_format", [1, 2])
@pytest.mark.parametrize("algorithm", ["AdamWScheduleFree", "Adam"])
def test_a_state_dict_of_a_previous_format_loads(client, target, algorithm, previous_format):
    model = make_mlp()
    opt = RemoteOptimizer(model.parameters(), target=target, algorithm=algorithm, lr=1e-2)
    try:
        run_steps(model, opt, None, 1, 4)
        state = as_format2(opt.state_dict())
        saved = json_format.ParseDict(state["spec"]["state"], pb.ModelState())
        scalars = dict(saved.groups[0].scalars)
        if algorithm == "Adam":
            assert scalars == {}
        else:
            assert sorted(scalars) == ["k", "lr_max", "weight_sum"] and scalars["k"] == 4
        if previous_format == 1:
            old = dict(state, optsidecar=1, spec=as_format1(state["spec"]))
            assert "scalars" not in old["spec"]["state"]["groups"][0]
        else:
            old = state
        run_steps(model, opt, None, 5, 6)  # the server moves on; loading must bring back version 4
        opt.load_state_dict(old)
        # As bytes: Adam's stored step result holds a NaN averaging weight, which == never matches.
        restored = client.describe(opt.model).state
        assert restored.SerializeToString(deterministic=True) == saved.SerializeToString(deterministic=True)
    finally:
        opt.delete()
