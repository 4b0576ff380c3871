"""Bad input, a server that is down or restarts, and how each surfaces in Python."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import torch

from conftest import free_port
from helpers import make_mlp, train_step
from optsidecar import (
    AlreadyExists,
    Client,
    InvalidArgument,
    NotFound,
    OptSidecarError,
    RemoteOptimizer,
    ResourceExhausted,
    ServerUnavailable,
)
from optsidecar.errors import from_rpc_error
from optsidecar.v1 import optimizer_pb2 as pb
from optsidecar.v1 import optimizer_pb2_grpc


def test_wrong_gradient_shape_names_the_parameter(target):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="SGD", lr=0.1)
    try:
        train_step(model, opt, 1)
        # torch refuses a .grad of another shape, but not a swapped .data
        model[2].weight.grad = torch.zeros(3, 16)
        model[2].weight.grad.data = torch.zeros(16, 3)
        with pytest.raises(InvalidArgument, match=r"'2\.weight' has shape \(16, 3\) but the parameter has shape "
                                                  r"\(3, 16\)") as caught:
            opt.step()
        assert isinstance(caught.value, ValueError)
        assert opt.version == 1
    finally:
        opt.delete()


def test_wrong_gradient_size_in_the_low_level_client(client, target):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="SGD", lr=0.1)
    grads = [np.zeros(p.numel(), np.float32) for p in model.parameters()]
    out = [np.zeros(p.numel(), np.float32) for p in model.parameters()]
    try:
        with client.step_stream(opt.model) as stream:
            wrong = list(grads)
            wrong[1] = np.zeros(17, np.float32)
            with pytest.raises(ValueError, match="gradient 1 of model .* has 17 elements; the tensor has 16"):
                stream.step(wrong, out)
            # Past the client's check, the server names the tensor itself.
            stream.numels[1] = 17
            with pytest.raises(InvalidArgument, match="'0.bias'") as caught:
                stream.step(wrong, view="none")
            stream.numels[1] = 16
            assert stream.step(grads, out).version == 1
    finally:
        opt.delete()


def test_server_rejects_a_non_finite_gradient_and_the_next_step_works(client, target):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="SGD", lr=0.1)
    try:
        train_step(model, opt, 1)
        before = [p.detach().clone() for p in model.parameters()]
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        model[0].bias.grad[3] = float("nan")
        with pytest.raises(InvalidArgument, match="0.bias") as caught:
            opt.step()
        assert caught.value.code.name == "INVALID_ARGUMENT"
        assert "non_finite" in caught.value.details or "NaN" in caught.value.details
        # Nothing changed, and the next step opens a fresh stream and is applied once.
        assert client.describe(opt.model).version == 1
        assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))
        train_step(model, opt, 2)
        assert opt.version == 2 == client.describe(opt.model).version
    finally:
        opt.delete()


def test_unknown_algorithm_names_the_field(target):
    with pytest.raises(InvalidArgument, match=r"spec\.optimizer\.algorithm: unknown algorithm 'AdamX'"):
        RemoteOptimizer(make_mlp().parameters(), target=target, algorithm="AdamX")


def test_unknown_and_bad_hyperparameters_name_the_field(target):
    with pytest.raises(InvalidArgument, match="lr_decay"):
        RemoteOptimizer(make_mlp().parameters(), target=target, algorithm="Adam", lr_decay=0.1)
    with pytest.raises(InvalidArgument, match=r"spec\.optimizer\.hyperparameters\.lr"):
        RemoteOptimizer(make_mlp().parameters(), target=target, algorithm="Adam", lr=-1.0)
    with pytest.raises(InvalidArgument, match=r"spec\.groups\[1\]\.hyperparameters\.eps"):
        RemoteOptimizer([{"params": [torch.nn.Parameter(torch.ones(2))]},
                         {"params": [torch.nn.Parameter(torch.ones(2))], "eps": -1.0}], target=target, algorithm="Adam")


def test_name_taken_and_model_missing(client, target):
    model = make_mlp()
    opt = RemoteOptimizer(model.parameters(), target=target, algorithm="SGD", lr=0.1)
    try:
        with pytest.raises(AlreadyExists, match="attach=True"):
            RemoteOptimizer(make_mlp().parameters(), target=target, algorithm="SGD", model=opt.model, lr=0.1)
        with pytest.raises(NotFound, match="no model named 'no-such-model'") as caught:
            RemoteOptimizer(make_mlp().parameters(), target=target, model="no-such-model", attach=True)
        assert isinstance(caught.value, LookupError)
    finally:
        opt.delete()
    with pytest.raises(NotFound):
        client.describe(opt.model)


def test_attach_continues_an_existing_model(client, target):
    model = make_mlp()
    first = RemoteOptimizer(model.named_parameters(), target=target, algorithm="Adam", lr=1e-2,
                            model=f"attach-{id(model)}")
    try:
        for t in range(1, 4):
            train_step(model, first, t)
        first.close()
        other = make_mlp(seed=7)
        attached = RemoteOptimizer(other.named_parameters(), target=target, model=first.model, attach=True)
        assert attached.version == 3
        assert attached.param_groups[0]["lr"] == 1e-2
        assert all(torch.equal(a, b) for a, b in zip(other.parameters(), model.parameters()))
        train_step(other, attached, 4)
        assert client.describe(first.model).version == 4
        narrower = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        with pytest.raises(ValueError, match="settings given here would be ignored: \\['lr'\\]"):
            RemoteOptimizer(other.named_parameters(), target=target, model=first.model, attach=True, lr=0.5)
        with pytest.raises(ValueError, match="runs Adam, not SGD"):
            RemoteOptimizer(other.named_parameters(), target=target, algorithm="SGD", model=first.model, attach=True)
        with pytest.raises(ValueError, match=r"tensor 0 \('0\.weight'\) has shape \[16, 6\]; parameter '0\.weight' has "
                                             r"shape \[8, 6\]"):
            RemoteOptimizer(narrower.named_parameters(), target=target, model=first.model, attach=True)
        attached.close()
    finally:
        client.delete(first.model)


def test_server_down_is_server_unavailable():
    down = f"127.0.0.1:{free_port()}"
    with Client(down, timeout=10) as client:
        with pytest.raises(ServerUnavailable, match=f"optsidecar server at {down} is unavailable") as caught:
            client.list()
        assert isinstance(caught.value, ConnectionError)
    with pytest.raises(ServerUnavailable, match=f"register model .* server at {down} is unavailable"):
        RemoteOptimizer(make_mlp().parameters(), target=down, algorithm="SGD", lr=0.1)


@pytest.mark.parametrize("crash", [True, False], ids=["killed", "shut-down"])
def test_steps_after_a_restart_of_a_server_without_state(private_server, crash):
    """A step is retried while the server is away, until retry_for runs out; a server restarted
    without a state directory has lost its models, which is NotFound (not retried); loading a
    state dict then continues, with sequence numbers past those the state dict's ledger holds."""
    model = make_mlp()
    client = Client(private_server.target, connect_timeout=1.0)
    opt = RemoteOptimizer(model.named_parameters(), target="unused", algorithm="Adam", lr=1e-2, model="restarted",
                          client=client, retry_for=0.6)
    train_step(model, opt, 1)
    saved = opt.state_dict()
    private_server.stop(crash=crash)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match="restarted"):
        train_step(model, opt, 2)
    assert 0.5 <= time.monotonic() - started < 10 and opt._stream.retries >= 1
    opt.retry_for = 0
    retries = opt._stream.retries
    with pytest.raises(ServerUnavailable):
        train_step(model, opt, 2)  # a new stream, and the server is still down
    assert opt._stream.retries == retries  # not retried
    private_server.restart()
    opt.retry_for = 30
    with pytest.raises(NotFound):
        train_step(model, opt, 2)  # reaches the new server, which lost its models
    opt.load_state_dict(saved)
    assert opt.version == 1
    train_step(model, opt, 2)
    assert opt.version == 2 and opt.client.describe("restarted").version == 2
    assert not opt.last_result.replayed and opt.last_result.step_id == 5  # steps 2 to 4 failed
    opt.delete()
    client.close()


def test_low_level_errors_keep_the_server_message(client):
    with pytest.raises(NotFound) as caught:
        client.pull("no-such-model", "train", [np.zeros(1, np.float32)])
    assert isinstance(caught.value, OptSidecarError)
    assert caught.value.details == "model: no model named 'no-such-model'"
    with pytest.raises(ValueError, match="unknown view"):
        client.pull("no-such-model", "best", [])


def test_server_errors_carry_reason_field_and_metadata(client, target):
    with pytest.raises(InvalidArgument) as caught:
        RemoteOptimizer(make_mlp().parameters(), target=target, algorithm="Adam", lr=-1.0)
    assert caught.value.reason == "INVALID_FIELD"
    assert caught.value.field == "spec.optimizer.hyperparameters.lr"
    assert caught.value.metadata == {"field": "spec.optimizer.hyperparameters.lr"}

    with pytest.raises(NotFound) as caught:
        client.describe("no-such-model")
    assert (caught.value.reason, caught.value.field) == ("MODEL_NOT_FOUND", "model")
    assert caught.value.metadata["model"] == "no-such-model"

    opt = RemoteOptimizer(make_mlp().parameters(), target=target, algorithm="SGD", lr=0.1)
    try:
        # The optimizer adds advice to the message and keeps what the server attached.
        with pytest.raises(AlreadyExists, match="attach=True") as caught:
            RemoteOptimizer(make_mlp().parameters(), target=target, algorithm="SGD", model=opt.model, lr=0.1)
        assert (caught.value.reason, caught.value.field) == ("MODEL_EXISTS", "spec.name")
        assert caught.value.metadata["model"] == opt.model
    finally:
        opt.delete()


def test_memory_limit_error_carries_the_limit(target):
    # Only the spec is sent: the server refuses the model before any weights arrive.
    spec = pb.ModelSpec(name="too-big", tensors=[pb.TensorSpec(name="huge", shape=[1 << 40])],
                        optimizer=pb.OptimizerConfig(algorithm="Adam"))
    with grpc.insecure_channel(target) as channel:
        with pytest.raises(grpc.RpcError) as raw:
            optimizer_pb2_grpc.OptimizerStub(channel).Register(iter([pb.RegisterRequest(spec=spec)]))
    error = from_rpc_error(raw.value, "register model 'too-big'", target)
    assert isinstance(error, ResourceExhausted) and isinstance(error, MemoryError)
    assert error.reason == "MEMORY_LIMIT" and error.field is None
    assert error.metadata["model"] == "too-big"
    assert int(error.metadata["limit"]) == 1 << 30  # the test servers run with --memory-limit 1g
    assert int(error.metadata["needed"]) > int(error.metadata["free"])


def test_errors_not_from_the_server_have_no_reason():
    down = f"127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnavailable) as caught:
        RemoteOptimizer(make_mlp().parameters(), target=down, algorithm="SGD", lr=0.1)
    assert (caught.value.reason, caught.value.field, caught.value.metadata) == (None, None, {})
    assert (InvalidArgument("client-side").reason, InvalidArgument("client-side").metadata) == (None, {})
