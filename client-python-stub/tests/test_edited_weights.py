"""Weights the trainer changes in its parameters (pretrained weights loaded after the optimizer was
built, a projection after each step, a pruning mask) reach the server before the next step, so
that training goes on from them as torch.optim's would."""

from __future__ import annotations

import threading
import time
import warnings

import pytest
import torch

from helpers import assert_within_tolerance, batch, make_mlp, train_step, twin
from optsidecar import Client, RemoteOptimizer

STEPS = 20
BOUND = 0.2


def project(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.clamp_(-BOUND, BOUND)


def edit_cases():
    def in_place(f):
        def run(model):
            with torch.no_grad():
                f(model)
        return run

    return {
        "copy_": in_place(lambda m: m[0].weight.copy_(torch.ones_like(m[0].weight))),
        "clamp_": in_place(lambda m: m[0].weight.clamp_(-0.1, 0.1)),
        "mul_ by a mask": in_place(lambda m: m[0].weight.mul_((m[0].weight > 0).float())),
        "an element set": in_place(lambda m: m[0].weight.__setitem__((0, 0), 5.0)),
        "nn.init": lambda m: torch.nn.init.zeros_(m[0].weight),
        "load_state_dict": lambda m: m.load_state_dict(make_mlp(seed=5).state_dict()),
        "detach().add_": lambda m: m[0].weight.detach().add_(1.0),
        "p.data = other": lambda m: setattr(m[0].weight, "data", torch.randn(m[0].weight.shape)),
        "p.data.clamp_": lambda m: m[0].weight.data.clamp_(-0.1, 0.1),
        "a numpy view": lambda m: m[0].weight.detach().numpy().__setitem__((0, 0), 5.0),
    }


@pytest.mark.parametrize("case", list(edit_cases()))
def test_each_kind_of_edit_is_noticed(case):
    """No server: what the client notices, on the torch it runs with."""
    from optsidecar.edits import ParameterEdits

    model = make_mlp()
    edits = ParameterEdits(list(model.parameters()))
    edits.record()
    assert edits.changed() == []
    counted = model[0].weight._version
    edit_cases()[case](model)
    assert 0 in edits.changed()
    if case in ("p.data.clamp_", "a numpy view"):
        # torch does not count these: only the content check sees them.
        assert model[0].weight._version == counted
        edits.compare_contents = False
        assert edits.changed() == []


def test_pretrained_weights_loaded_after_building_the_optimizer_are_trained_from(client, target):
    remote_model = make_mlp()
    pretrained = make_mlp(seed=7).state_dict()
    opt = RemoteOptimizer(remote_model.named_parameters(), target=target, algorithm="AdamW", lr=1e-2, weight_decay=0.05)
    local_model = make_mlp()
    reference = torch.optim.AdamW(local_model.parameters(), lr=1e-2, weight_decay=0.05, foreach=False)
    try:
        remote_model.load_state_dict(pretrained)
        local_model.load_state_dict(pretrained)
        train_step(remote_model, opt, 1)
        train_step(local_model, reference, 1)
        # One push of every tensor, then the gradient step: two versions.
        assert opt.last_push.tensors == tuple(n for n, _ in remote_model.named_parameters())
        assert (opt.last_push.view, opt.last_push.version, opt.last_push.replayed) == ("train", 1, False)
        assert opt.last_result.kind == "gradient" and opt.version == 2 == client.describe(opt.model).version
        for t in range(2, STEPS + 1):
            train_step(remote_model, opt, t)
            train_step(local_model, reference, t)
        assert opt.last_push.version == 1 and opt.version == STEPS + 1  # nothing edited since
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()),
                                "AdamW from weights loaded after the optimizer was built")
        # Without the push the run would have started from the random initial weights instead.
        assert not torch.allclose(remote_model[0].weight, twin_trained_from_scratch()[0].weight, atol=1e-3)
    finally:
        opt.delete()


def twin_trained_from_scratch() -> torch.nn.Module:
    model = make_mlp()
    reference = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05, foreach=False)
    for t in range(1, STEPS + 1):
        train_step(model, reference, t)
    return model


@pytest.mark.parametrize("algorithm, local, hyperparameters", [
    ("Adam", torch.optim.Adam, dict(lr=2e-2)),
    ("AdamW", torch.optim.AdamW, dict(lr=2e-2, weight_decay=0.1)),
    ("RAdam", torch.optim.RAdam, dict(lr=2e-2, betas=(0.9, 0.99))),
])
def test_a_projection_after_each_step_matches_torch(target, algorithm, local, hyperparameters):
    remote_model = make_mlp()
    local_model = twin(remote_model)
    opt = RemoteOptimizer(remote_model.named_parameters(), target=target, algorithm=algorithm, **hyperparameters)
    reference = local(local_model.parameters(), foreach=False, **hyperparameters)
    try:
        clipped = 0
        for t in range(1, STEPS + 1):
            train_step(remote_model, opt, t)
            train_step(local_model, reference, t)
            clipped += sum(int((p.abs() > BOUND).sum()) for p in remote_model.parameters())
            project(remote_model)
            project(local_model)
        assert clipped > 0, "the projection never changed a weight"
        assert opt.last_push is not None and opt.version == 2 * STEPS - 1  # a push before each step but the first
        remote_model_params = list(remote_model.parameters())
        assert all(p.abs().max() <= BOUND for p in remote_model_params)
        assert_within_tolerance(remote_model_params, list(local_model.parameters()),
                                f"{algorithm} with a projection after each step")
        # The server holds the projected weights of the last step too, once something reads them.
        opt.pull()
        assert opt.version == 2 * STEPS and all(p.abs().max() <= BOUND for p in remote_model.parameters())
    finally:
        opt.delete()


def test_a_projection_on_schedule_free_matches_schedulefree(target):
    schedulefree = pytest.importorskip("schedulefree")
    hyperparameters = dict(lr=2e-2, weight_decay=0.01, warmup_steps=3)
    remote_model = make_mlp()
    local_model = twin(remote_model)
    opt = RemoteOptimizer(remote_model.named_parameters(), target=target, algorithm="AdamWScheduleFree", **hyperparameters)
    reference = schedulefree.AdamWScheduleFree(local_model.parameters(), foreach=False, **hyperparameters)
    reference.train()
    try:
        for t in range(1, STEPS + 1):
            train_step(remote_model, opt, t)
            train_step(local_model, reference, t)
            project(remote_model)  # y, the train point
            project(local_model)
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()),
                                "AdamWScheduleFree's y with a projection after each step")
        opt.eval()
        reference.eval()
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()),
                                "AdamWScheduleFree's x after projected steps")
    finally:
        opt.delete()


def test_weights_edited_in_schedule_free_eval_mode_become_x_when_switching_back(client, target):
    """schedulefree's train() turns the parameters (x, possibly edited) into y; so does the
    server, from the pushed x."""
    schedulefree = pytest.importorskip("schedulefree")
    hyperparameters = dict(lr=2e-2, betas=(0.9, 0.999))
    remote_model = make_mlp()
    local_model = twin(remote_model)
    opt = RemoteOptimizer(remote_model.named_parameters(), target=target, algorithm="AdamWScheduleFree", **hyperparameters)
    reference = schedulefree.AdamWScheduleFree(local_model.parameters(), foreach=False, **hyperparameters)
    reference.train()
    try:
        for t in range(1, 6):
            train_step(remote_model, opt, t)
            train_step(local_model, reference, t)
        opt.eval()
        reference.eval()
        with torch.no_grad():
            remote_model[2].weight.mul_(0.5)
            local_model[2].weight.mul_(0.5)
        opt.train()
        reference.train()
        assert opt.last_push.tensors == ("2.weight",) and opt.last_push.view == "eval"
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()),
                                "y after x was edited in eval mode")
        for t in range(6, 11):
            train_step(remote_model, opt, t)
            train_step(local_model, reference, t)
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()),
                                "training on from an x edited in eval mode")
    finally:
        opt.delete()


def test_a_pruning_mask_through_p_data_is_noticed(target):
    """Writes through ``p.data`` do not bump the parameter's version counter; the content check
    notices them."""
    remote_model = make_mlp()
    local_model = twin(remote_model)
    opt = RemoteOptimizer(remote_model.named_parameters(), target=target, algorithm="SGD", lr=0.05, momentum=0.9)
    reference = torch.optim.SGD(local_model.parameters(), lr=0.05, momentum=0.9, foreach=False)
    mask = (torch.rand(remote_model[0].weight.shape, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    try:
        for t in range(1, STEPS + 1):
            for model in (remote_model, local_model):
                before = model[0].weight._version
                model[0].weight.data.mul_(mask)
                assert model[0].weight._version == before  # invisible to the version counter
            train_step(remote_model, opt, t)
            train_step(local_model, reference, t)
            assert opt.last_push.tensors == ("0.weight",)
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()),
                                "SGD with momentum and a pruning mask applied through p.data")
        # Without the content check such an edit goes unnoticed and is overwritten.
        opt.edits.compare_contents = False
        pushed = opt.last_push
        remote_model[0].weight.data.mul_(0)
        train_step(remote_model, opt, STEPS + 1)
        assert opt.last_push is pushed and remote_model[0].weight.abs().sum() > 0
    finally:
        opt.delete()


def test_only_edited_parameters_are_sent_and_nothing_when_none_is(client, target):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="SGD", lr=0.1)
    try:
        for t in range(1, 4):
            train_step(model, opt, t)
        assert opt.last_push is None and opt.version == 3
        other = [p.detach().clone() for p in model.parameters()]
        torch.nn.init.zeros_(model[2].bias)
        model[0].bias.data = torch.full_like(model[0].bias, 0.25)  # a new tensor: a new data pointer
        x, y = batch(4)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        for p in model.parameters():
            p.grad = None if p is not model[2].weight else p.grad  # step one tensor only
        opt.step()
        assert opt.last_push.tensors == ("0.bias", "2.bias")
        assert opt.version == 5 and client.describe(opt.model).version == 5
        # The server holds the pushed biases, and the untouched weights as they were.
        opt.pull()
        assert torch.equal(model[2].bias, torch.zeros_like(model[2].bias))
        assert torch.equal(model[0].bias, torch.full_like(model[0].bias, 0.25))
        assert torch.equal(model[0].weight, other[0])
        assert not torch.equal(model[2].weight, other[2])  # stepped
    finally:
        opt.delete()


def test_edits_in_an_ema_eval_view_are_discarded_with_one_warning(target):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="AdamW", lr=1e-2, ema=[0.9])
    try:
        train_step(model, opt, 1)
        train_weights = [p.detach().clone() for p in model.parameters()]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                opt.eval()
                with torch.no_grad():
                    model[0].weight.fill_(3.0)
                opt.train()
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(messages) == 1 and "edited in eval mode are discarded" in messages[0]
        assert all(torch.equal(p, w) for p, w in zip(model.parameters(), train_weights))
        assert opt.last_push is None and opt.version == 1
    finally:
        opt.delete()


def test_edits_reach_the_server_before_eval_and_fork(client, target):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="SGD", lr=0.1, lookahead=dict(k=5, alpha=0.5))
    branch = f"{opt.model}-branch"
    try:
        train_step(model, opt, 1)
        with torch.no_grad():
            model[0].bias.fill_(0.5)
        info = opt.fork(branch)
        assert opt.last_push.tensors == ("0.bias",) and info.version == 2
        pulled = [torch.empty_like(p) for p in model.parameters()]
        client.pull(branch, "train", pulled)
        assert torch.equal(pulled[1], torch.full_like(pulled[1], 0.5))
        with torch.no_grad():
            model[2].bias.fill_(-0.5)
        opt.eval()  # Lookahead's slow weights: unchanged by an edit of the fast ones
        assert opt.last_push.tensors == ("2.bias",) and opt.version == 3
        opt.train()
        assert torch.equal(model[2].bias, torch.full_like(model[2].bias, -0.5))
    finally:
        client.delete(branch)
        opt.delete()


def test_a_push_whose_reply_is_lost_is_applied_once(client, server):
    from test_exactly_once import Proxy

    remote_model = make_mlp()
    local_model = twin(remote_model)
    proxy = Proxy(server.port)
    with Client(proxy.target) as lossy:
        opt = RemoteOptimizer(remote_model.named_parameters(), client=lossy, algorithm="Adam", lr=1e-2, retry_for=30)
        reference = torch.optim.Adam(local_model.parameters(), lr=1e-2, foreach=False)
        try:
            train_step(remote_model, opt, 1)
            train_step(local_model, reference, 1)
            project(remote_model)
            project(local_model)

            def cut_once_applied() -> None:
                deadline = time.monotonic() + 20
                while client.describe(opt.model).version < 2 and time.monotonic() < deadline:
                    time.sleep(0.005)
                proxy.cut()

            proxy.drop_replies()
            cutter = threading.Thread(target=cut_once_applied)
            cutter.start()
            train_step(remote_model, opt, 2)
            cutter.join()
            train_step(local_model, reference, 2)
            assert opt._stream.retries >= 1
            assert opt.last_push.replayed and (opt.last_push.step_id, opt.last_push.version) == (2, 2)
            assert (opt.last_result.step_id, opt.last_result.version, opt.last_result.replayed) == (3, 3, False)
            assert [v.version for v in client.history(opt.model)][-3:] == [1, 2, 3]
            assert client.describe(opt.model).version == 3
            assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()),
                                    "Adam with a projection pushed through a lost reply")
        finally:
            opt.delete()
            proxy.close()


def test_hashing_large_parameters_in_software_warns(monkeypatch):
    from optsidecar import edits

    large = [torch.zeros(edits.SLOW_CHECK_WARNING_BYTES // 4 // 2), torch.zeros(edits.SLOW_CHECK_WARNING_BYTES // 4 // 2)]
    monkeypatch.setattr(edits, "FAST_FINGERPRINTS", False)
    recorded = edits.ParameterEdits(large)
    recorded.record()
    with pytest.warns(RuntimeWarning, match="computes in software"):
        assert recorded.changed() == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert recorded.changed() == []  # once
        small = edits.ParameterEdits([torch.zeros(1000)])  # a few milliseconds at most: not worth a word
        small.record()
        small.changed()
        checked_by_the_server = edits.ParameterEdits(large)
        checked_by_the_server.record()
        checked_by_the_server.changed(contents_checked_elsewhere=True)
        monkeypatch.setattr(edits, "FAST_FINGERPRINTS", True)
        fast = edits.ParameterEdits(large)
        fast.record()
        fast.changed()


def test_large_parameters_are_fingerprinted_as_one_pass_would():
    """Large data is hashed in two halves on two threads; the pieces are those of one pass."""
    import zlib

    import crc32c

    from optsidecar import fingerprints

    piece = fingerprints.PIECE_BYTES
    for size in (fingerprints.TWO_THREADS_FROM_PIECES * piece, 19 * piece + 12_344, 3 * piece + 4):
        data = memoryview(torch.randn(size // 4, generator=torch.Generator().manual_seed(size)).numpy()).cast("B")
        crc = crc32c.crc32c if fingerprints.FINGERPRINTS_ARE_CRC32C else zlib.crc32
        expected = tuple(crc(data[at:at + piece]) for at in range(0, len(data), piece))
        assert fingerprints.piece_fingerprints(data) == expected, size
