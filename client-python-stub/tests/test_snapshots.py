"""Snapshots, restore, fork and export through the Python client, against a server with a state
directory; snapshot and export files read back with safetensors."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Dict

import pytest
import torch
from safetensors.torch import load_file

from conftest import ServerProcess
from helpers import make_mlp, run_steps, train_step, twin
from optsidecar import AlreadyExists, DataLoss, FailedPrecondition, RemoteOptimizer
from optsidecar.v1 import optimizer_pb2 as pb


@pytest.fixture(scope="module")
def durable(tmp_path_factory):
    """A server that keeps its models in a state directory (``durable.state_dir``)."""
    state_dir = tmp_path_factory.mktemp("state")
    server = ServerProcess(args=["--state-dir", state_dir])
    server.state_dir = state_dir
    yield server
    server.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def pulled(opt: RemoteOptimizer, view: str) -> Dict[str, torch.Tensor]:
    """The view as the server streams it, by tensor name, in the parameters' shapes."""
    info = opt.client.describe(opt.model)
    out = [torch.empty(p.shape) for p in opt._params]
    opt.client.pull(opt.model, view, out)
    return {t.name: o for t, o in zip(info.tensors, out)}


def assert_same(loaded: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor], what: str) -> None:
    assert sorted(loaded) == sorted(expected), what
    for name, tensor in expected.items():
        assert loaded[name].dtype == torch.float32 and loaded[name].shape == tensor.shape, f"{what}: {name}"
        assert torch.equal(loaded[name], tensor), f"{what}: {name} differs"


def figures(opt: RemoteOptimizer) -> str:
    # step_id (also in contributions) is each trainer's own sequence number; repr compares NaN
    # figures as equal
    return repr(dataclasses.asdict(dataclasses.replace(opt.last_result, step_id=0, contributions=())))


def test_snapshot_files_hold_what_pull_returns(durable):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=durable.target, algorithm="RAdamScheduleFree", lr=2e-2,
                          weight_decay=0.01, model=unique("sf-snapshot"))
    try:
        run_steps(model, opt, None, 1, 6)
        snapshot = opt.snapshot()
        assert (snapshot.model, snapshot.version, snapshot.trigger) == (opt.model, 6, "rpc")
        folder = durable.state_dir / snapshot.path
        files = {p.name: p for p in folder.iterdir()}
        assert {"weights.safetensors", "state.safetensors", "eval.safetensors", "manifest.json",
                "manifest.crc32c"} <= set(files)
        assert snapshot.bytes == sum(p.stat().st_size for p in files.values())

        train, evaluation = pulled(opt, "train"), pulled(opt, "eval")
        assert any(not torch.equal(train[n], evaluation[n]) for n in train)  # y and x differ
        # weights.safetensors: the train weights (where training resumes), keyed by tensor name.
        assert_same(load_file(files["weights.safetensors"]), train, "weights.safetensors")
        assert_same(load_file(files["eval.safetensors"]), evaluation, "eval.safetensors")
        # state.safetensors: every state buffer under "<tensor>/<slot>".
        info = opt.client.describe(opt.model)
        slots = {f"{t.name}/{slot}": pulled(opt, f"slot:{slot}")[t.name] for t in info.tensors for slot in t.slots}
        assert any(key.endswith("/z") for key in slots)
        assert_same(load_file(files["state.safetensors"]), slots, "state.safetensors")

        # The eval weights load straight into a torch model of the same architecture.
        deployed = make_mlp(seed=9)
        deployed.load_state_dict(load_file(files["eval.safetensors"]))
        opt.eval()
        assert all(torch.equal(a, b) for a, b in zip(deployed.parameters(), model.parameters()))
    finally:
        opt.delete()


def test_export_writes_one_view(durable):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=durable.target, algorithm="AdamWScheduleFree", lr=1e-2,
                          model=unique("sf-export"))
    try:
        run_steps(model, opt, None, 1, 4)
        exported = opt.export()  # the eval view, for an algorithm that has one
        assert exported.view.kind == pb.VIEW_EVAL and exported.version == 4
        assert exported.path == f"exports/{opt.model}/v4-eval.safetensors"
        path = durable.state_dir / exported.path
        assert exported.bytes == path.stat().st_size
        assert_same(load_file(path), pulled(opt, "eval"), "eval export")
        train_export = opt.export(view="train")
        assert train_export.path == f"exports/{opt.model}/v4-train.safetensors"
        assert_same(load_file(durable.state_dir / train_export.path), pulled(opt, "train"), "train export")
    finally:
        opt.delete()


def test_list_snapshots_and_restore_into_a_new_name(durable):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=durable.target, algorithm="AdamW", lr=1e-2,
                          model=unique("restore"))
    client = opt.client
    restored = []
    try:
        run_steps(model, opt, None, 1, 3)
        at_3 = [p.detach().clone() for p in model.parameters()]
        first = opt.snapshot()
        run_steps(model, opt, None, 4, 6)
        second = opt.snapshot()
        run_steps(model, opt, None, 7, 7)  # journaled after the last snapshot

        listed = opt.list_snapshots()
        assert [s.trigger for s in listed] == ["register", "rpc", "rpc"]
        assert [s.id for s in listed[1:]] == [first.id, second.id] and first.id < second.id
        assert [s.version for s in listed] == [0, 3, 6] and all(s.valid and not s.problem for s in listed)
        assert {s.id for s in listed} <= {s.id for s in client.list_snapshots() if s.model == opt.model}

        # A snapshot by id: exactly as it was.
        name = f"{opt.model}-at-3"
        info = client.restore(opt.model, first.id, as_model=name)
        restored.append(name)
        assert (info.name, info.version) == (name, 3)
        out = [torch.empty(p.shape) for p in model.parameters()]
        client.pull(name, "train", out)
        assert all(torch.equal(a, b) for a, b in zip(out, at_3))
        # The latest: its snapshot and the journal after it, i.e. as of the last acknowledged step.
        latest = client.restore(opt.model, as_model=f"{opt.model}-latest")
        restored.append(latest.name)
        assert latest.version == 7
        client.pull(latest.name, "train", out)
        assert all(torch.equal(a, p) for a, p in zip(out, model.parameters()))
        assert latest.state.clients[0].last_step_id == 7  # the trainers' ledger came along
        with pytest.raises(AlreadyExists):
            client.restore(opt.model, first.id, as_model=name)
        assert client.restore(opt.model, second.id, as_model=name, replace=True).version == 6
    finally:
        for name in restored:
            client.delete(name)
        opt.delete()


def test_restore_rolls_the_optimizer_back_and_training_repeats_bit_for_bit(durable):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=durable.target, algorithm="RAdam", lr=1e-2,
                          weight_decay=0.01, model=unique("rollback"))
    try:
        run_steps(model, opt, None, 1, 3)
        snapshot = opt.snapshot()
        run_steps(model, opt, None, 4, 8)
        first_pass = [p.detach().clone() for p in model.parameters()]
        first_figures = figures(opt)

        info = opt.restore(snapshot)
        assert info.version == 3 and opt.version == 3
        run_steps(model, opt, None, 4, 8)
        assert opt.version == 8 and figures(opt) == first_figures
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), first_pass))
        # The trainer's sequence numbers kept growing: steps 4 to 8 again were new steps 9 to 13.
        assert opt.last_result.step_id == 13 and not opt.last_result.replayed
    finally:
        opt.delete()


def test_a_fork_continues_exactly_as_its_source(durable):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=durable.target, algorithm="AdamW", lr=1e-2, weight_decay=0.1,
                          ema=[0.9], model=unique("source"))
    branch = cooled = None
    try:
        run_steps(model, opt, None, 1, 4)
        info = opt.fork(f"{opt.model}-branch")
        assert info.version == 4 and info.optimizer.algorithm == "AdamW"
        branch_model = twin(model)
        branch = RemoteOptimizer(branch_model.named_parameters(), target=durable.target, model=info.name, attach=True)
        for t in range(5, 9):
            train_step(model, opt, t)
            train_step(branch_model, branch, t)  # the same gradients
            assert figures(branch) == figures(opt)
        assert all(torch.equal(a, b) for a, b in zip(branch_model.parameters(), model.parameters()))
        assert all(torch.equal(pulled(branch, "ema")[n], t) for n, t in pulled(opt, "ema").items())

        # A branch with its own schedule, from the current step on: a cosine over 16 steps is at
        # half the base lr at step 9 (schedule step 8).
        cooled_info = opt.fork(f"{opt.model}-cooldown", schedule=dict(type="cosine", warmup_steps=0, total_steps=16))
        assert cooled_info.schedule.type == "cosine"
        cooled_model = twin(model)
        cooled = RemoteOptimizer(cooled_model.named_parameters(), target=durable.target, model=cooled_info.name,
                                 attach=True)
        train_step(cooled_model, cooled, 9)
        train_step(model, opt, 9)
        assert opt.last_result.lr == {"group0": 1e-2}
        assert cooled.last_result.lr["group0"] == pytest.approx(0.5e-2, rel=1e-12)
    finally:
        for other in (branch, cooled):
            if other is not None:
                other.delete()
        opt.delete()


def test_a_corrupt_snapshot_is_data_loss(durable):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=durable.target, algorithm="Adam", lr=1e-2,
                          model=unique("corrupt"))
    try:
        run_steps(model, opt, None, 1, 2)
        snapshot = opt.snapshot()
        weights = Path(durable.state_dir / snapshot.path / "weights.safetensors")
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
        listed = {s.id: s for s in opt.list_snapshots()}
        assert not listed[snapshot.id].valid and "weights.safetensors" in listed[snapshot.id].problem
        with pytest.raises(DataLoss, match=snapshot.id) as caught:
            opt.client.restore(opt.model, snapshot.id, as_model=f"{opt.model}-copy")
        assert isinstance(caught.value, OSError) and caught.value.code.name == "DATA_LOSS"
        assert f"{opt.model}-copy" not in opt.client.list()
        with pytest.raises(DataLoss):
            opt.restore(snapshot)
        assert opt.client.describe(opt.model).version == 2  # the live model is untouched
        train_step(model, opt, 3)
        assert opt.version == 3
    finally:
        opt.delete()


def test_snapshots_need_a_state_directory(client):
    opt = RemoteOptimizer(make_mlp().named_parameters(), client=client, algorithm="SGD", lr=0.1)
    try:
        with pytest.raises(FailedPrecondition, match="--state-dir"):
            opt.snapshot()
        with pytest.raises(FailedPrecondition, match="--state-dir"):
            opt.export()
        # Fork does not.
        assert opt.fork(f"{opt.model}-fork").name == f"{opt.model}-fork"
        client.delete(f"{opt.model}-fork")
    finally:
        opt.delete()
