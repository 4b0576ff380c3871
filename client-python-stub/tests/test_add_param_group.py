"""add_param_group on a live model (AddTensors): progressive unfreezing against torch.optim.AdamW,
resuming after it, and a second trainer of the model."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch

from helpers import assert_moved, assert_within_tolerance, make_mlp, train_step, twin
from optsidecar import Client, InvalidArgument, ModelChanged, RemoteOptimizer, wire
from optsidecar.v1 import optimizer_pb2 as pb

HEAD_STEPS = 10
LAST = 30
HYPERPARAMETERS = dict(lr=1e-2, weight_decay=0.05, betas=(0.9, 0.99))


@pytest.fixture(autouse=True)
def one_thread():
    # Runs compared bit for bit compute their gradients with the same thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def named(module: torch.nn.Module, prefix: str) -> list:
    return [(f"{prefix}.{n}", p) for n, p in module.named_parameters()]


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    """The MLP with its first layer (the "backbone") frozen, as before unfreezing."""
    for p in model[0].parameters():
        p.requires_grad_(False)
    return model


def unfreeze(model: torch.nn.Module) -> list:
    for p in model[0].parameters():
        p.requires_grad_(True)
    return named(model[0], "backbone")


def test_progressive_unfreezing_matches_torch_adamw(client, target):
    remote_model = frozen(make_mlp())
    local_model = twin(remote_model)
    initial_backbone = [p.detach().clone() for p in remote_model[0].parameters()]
    opt = RemoteOptimizer(named(remote_model[2], "head"), target=target, algorithm="AdamW", **HYPERPARAMETERS)
    reference = torch.optim.AdamW(local_model[2].parameters(), foreach=False, **HYPERPARAMETERS)
    try:
        for t in range(1, HEAD_STEPS + 1):
            train_step(remote_model, opt, t)
            train_step(local_model, reference, t)
        assert [torch.equal(a, b) for a, b in zip(initial_backbone, remote_model[0].parameters())] == [True, True]

        opt.add_param_group({"params": unfreeze(remote_model), "lr": 1e-3, "name": "backbone"})
        reference.add_param_group({"params": [p for _, p in unfreeze(local_model)], "lr": 1e-3})
        assert len(opt.param_groups) == 2
        for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"):
            assert opt.param_groups[1][key] == pytest.approx(reference.param_groups[1][key]), key
        info = client.describe(opt.model)
        assert [g.name for g in info.groups] == ["group0", "backbone"]
        assert [t.name for t in info.tensors] == ["head.weight", "head.bias", "backbone.weight", "backbone.bias"]
        assert info.version == HEAD_STEPS

        for t in range(HEAD_STEPS + 1, LAST + 1):
            train_step(remote_model, opt, t)
            train_step(local_model, reference, t)
        assert opt.version == LAST
        assert [t.steps for t in client.describe(opt.model).tensors] == [LAST, LAST, LAST - HEAD_STEPS,
                                                                          LAST - HEAD_STEPS]
        assert_moved(initial_backbone, list(remote_model[0].parameters()))
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()),
                                f"AdamW, backbone unfrozen after {HEAD_STEPS} steps")
    finally:
        opt.delete()


def unfrozen_run(target: str, **options):
    """The head trained alone for HEAD_STEPS steps, then the backbone added with a lower lr."""
    model = frozen(make_mlp())
    opt = RemoteOptimizer(named(model[2], "head"), target=target, algorithm="AdamW", **options, **HYPERPARAMETERS)
    for t in range(1, HEAD_STEPS + 1):
        train_step(model, opt, t)
    opt.add_param_group({"params": unfreeze(model), "lr": 1e-3, "name": "backbone"})
    return model, opt


def test_a_state_dict_taken_after_it_resumes_bit_for_bit(target):
    model, opt = unfrozen_run(target)
    try:
        for t in range(HEAD_STEPS + 1, 15 + 1):
            train_step(model, opt, t)
        state = opt.state_dict()
        for t in range(16, LAST + 1):
            train_step(model, opt, t)
        uninterrupted = [p.detach().clone() for p in model.parameters()]
    finally:
        opt.delete()

    # A fresh optimizer with both groups from the start, as a resumed script builds it.
    resumed_model = make_mlp()
    resumed = RemoteOptimizer([{"params": named(resumed_model[2], "head")},
                               {"params": named(resumed_model[0], "backbone"), "lr": 1e-3}],
                              target=target, algorithm="AdamW", **HYPERPARAMETERS)
    try:
        resumed.load_state_dict(state)
        assert [g["lr"] for g in resumed.param_groups] == [1e-2, 1e-3]
        for t in range(16, LAST + 1):
            train_step(resumed_model, resumed, t)
        for a, b in zip(uninterrupted, resumed_model.parameters()):
            assert torch.equal(a, b)
    finally:
        resumed.delete()


def test_a_snapshot_taken_after_it_restores(start_server, tmp_path):
    server = start_server("--state-dir", str(tmp_path))
    model, opt = unfrozen_run(server.target)
    try:
        snapshot = opt.snapshot()
        assert snapshot.trigger == "rpc" and snapshot.version == HEAD_STEPS
        triggers = [s.trigger for s in opt.list_snapshots()]
        assert "add_tensors" in triggers
        for t in range(HEAD_STEPS + 1, 15 + 1):
            train_step(model, opt, t)
        first = [p.detach().clone() for p in model.parameters()]
        opt.restore(snapshot)
        assert opt.version == HEAD_STEPS
        for t in range(HEAD_STEPS + 1, 15 + 1):
            train_step(model, opt, t)
        for a, b in zip(first, model.parameters()):
            assert torch.equal(a, b)
    finally:
        opt.delete()


def test_a_second_trainer_is_told_and_continues_after_adding_the_same_group(target):
    name = f"unfreeze-{uuid.uuid4().hex[:8]}"
    first_model = frozen(make_mlp())
    second_model = frozen(make_mlp())
    first = RemoteOptimizer(named(first_model[2], "head"), target=target, algorithm="AdamW", model=name, client_id="first",
                            **HYPERPARAMETERS)
    second = RemoteOptimizer(named(second_model[2], "head"), target=target, model=name, attach=True, client_id="second")
    try:
        train_step(first_model, first, 1)
        train_step(second_model, second, 2)
        first.add_param_group({"params": unfreeze(first_model), "lr": 1e-3, "name": "backbone"})

        with pytest.raises(ModelChanged, match="add_param_group") as raised:
            train_step(second_model, second, 3)
        assert raised.value.reason == "MODEL_CHANGED"

        with torch.no_grad():
            for p in second_model[0].parameters():
                p.zero_()  # the model's weights replace whatever the parameters hold
        second.add_param_group({"params": unfreeze(second_model), "name": "backbone"})
        assert second.param_groups[1]["lr"] == pytest.approx(1e-3)  # the group as the server holds it
        for a, b in zip(first_model[0].parameters(), second_model[0].parameters()):
            assert torch.equal(a.detach(), b.detach())
        train_step(second_model, second, 3)
        assert second.version == 3
        assert all(p.grad is not None for p in second_model[0].parameters())
    finally:
        second.close()
        first.delete()


def test_add_tensors_refusals_name_the_field(client, target):
    opt = RemoteOptimizer(named(make_mlp()[2], "head"), target=target, algorithm="AdamW", lr=1e-2)
    try:
        with pytest.raises(InvalidArgument) as taken:
            client.add_tensors(opt.model, [("head.bias", (3,))], "late", {}, [np.zeros(3, np.float32)])
        assert taken.value.field == "spec.tensors[0].name"
        with pytest.raises(InvalidArgument) as unknown:
            client.add_tensors(opt.model, [("x", (3,))], "late", {"lrr": 1.0}, [np.zeros(3, np.float32)])
        assert unknown.value.field == "spec.group.hyperparameters.lrr"
        assert len(client.describe(opt.model).tensors) == 2
        with pytest.raises(ValueError, match="optimized already"):
            opt.add_param_group({"params": [opt.param_groups[0]["params"][0]]})
    finally:
        opt.delete()


def test_weights_chunks_are_encoded_as_protobuf_encodes_them():
    data = np.arange(5, dtype=np.float32)
    encoded = wire.register_weights_chunk(7, 3, memoryview(data).cast("B"))
    expected = pb.AddTensorsRequest(weights=pb.WeightsChunk(tensor=7, offset=3, data=data.tobytes()))
    assert wire.serialize(encoded) == expected.SerializeToString()
