"""Several trainers on one model: sync steps of k contributions, async staleness (reject or
down-weight), late contributions, straggler timeouts, the contributions per version."""

from __future__ import annotations

import copy
import threading
import uuid
from typing import List

import grpc
import numpy as np
import pytest
import torch

from helpers import assert_moved, batch, make_mlp
from optsidecar import (
    Client,
    Contribution,
    FailedPrecondition,
    RemoteOptimizer,
    StaleGradient,
    VersionContributions,
)
from optsidecar.errors import from_rpc_error
from optsidecar.spec import make_coordination
from optsidecar.v1 import optimizer_pb2 as pb
from optsidecar.v1 import optimizer_pb2_grpc

STEPS = 20


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def gradient(model: torch.nn.Module, t: int) -> List[torch.Tensor]:
    """The gradient of the model's loss on batch ``t``, at its current weights."""
    x, y = batch(t)
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def step_on(model: torch.nn.Module, opt: RemoteOptimizer, t: int):
    """One training step of ``model`` on batch ``t``; returns the step's figures."""
    opt.zero_grad()
    x, y = batch(t)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    return opt.last_result


def test_sync_mean_of_three_trainers_is_one_trainer_stepping_the_mean(target, client):
    """Three trainers in threads, each on its own batches, make the same weights, bit for bit, as
    one trainer that computes the three gradients itself and steps their mean."""
    name = unique("sync3")
    ids = ["trainer-a", "trainer-b", "trainer-c"]  # the server sums in client-id order
    initial = make_mlp(3)
    models = [copy.deepcopy(initial) for _ in ids]
    settings = dict(lr=1e-2, weight_decay=0.05)
    opts = [RemoteOptimizer(models[0].named_parameters(), target=target, algorithm="AdamW", model=name,
                            client_id=ids[0], coordination=dict(mode="sync", k=0, combine="mean"), **settings)]
    opts += [RemoteOptimizer(m.named_parameters(), target=target, model=name, client_id=i, attach=True)
             for m, i in zip(models[1:], ids[1:])]
    reference_model = copy.deepcopy(initial)
    reference = RemoteOptimizer(reference_model.named_parameters(), target=target, algorithm="AdamW", **settings)
    try:
        for opt in opts:
            opt.join()
        assert client.wait_for_trainers(name, 3).trainers == tuple(ids)

        figures: List[list] = [[] for _ in ids]
        failures: list = []

        def train(rank: int) -> None:
            try:
                for t in range(1, STEPS + 1):
                    figures[rank].append(step_on(models[rank], opts[rank], 100 * rank + t))
            except BaseException as e:  # pragma: no cover - reported below
                failures.append(e)

        threads = [threading.Thread(target=train, args=(r,)) for r in range(len(ids))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not failures, failures

        for t in range(1, STEPS + 1):
            grads = [gradient(reference_model, 100 * rank + t) for rank in range(len(ids))]
            for i, p in enumerate(reference_model.parameters()):
                p.grad = (grads[0][i] + grads[1][i] + grads[2][i]) / 3  # float32, in client-id order
            reference.step()

        expected = list(reference_model.parameters())
        assert_moved(list(initial.parameters()), expected)
        for model in models:
            for actual, want in zip(model.parameters(), expected):
                assert torch.equal(actual, want)
        for rank, steps in enumerate(figures):
            assert [f.version for f in steps] == list(range(1, STEPS + 1))
            assert not any(f.late for f in steps)
            assert all(f.staleness == 0 and f.lr_scale == 1.0 for f in steps)
            assert [f.contributions for f in steps] == [
                tuple(Contribution(i, t) for i in ids) for t in range(1, STEPS + 1)]
            # Every contributor gets the same figures, as one step of the mean gradient.
            assert [f.grad_norm for f in steps] == [f.grad_norm for f in figures[0]]

        history = client.history(name, 5)
        assert [v.version for v in history] == list(range(5, STEPS + 1))
        assert history[0].contributions == tuple(Contribution(i, 5) for i in ids)

        status = opts[0].coordination()
        assert status.mode == "sync" and status.config.sync.combine == pb.COMBINE_MEAN
        assert status.contributions_applied == 3 * STEPS
        assert (status.contributions_late, status.contributions_rejected, status.steps_timed_out) == (0, 0, 0)
        assert status.staleness_histogram == (3 * STEPS,)
    finally:
        for opt in opts[1:]:
            opt.close()
        opts[0].delete()
        reference.delete()
    assert name not in client.list()


def test_sync_straggler_timeout_then_a_late_contribution(target, client):
    """k=0 with two trainers attached and a 200 ms straggler timeout: one trainer's step goes ahead
    alone; the other's gradient, computed at the old version, is late and gets the new weights."""
    name = unique("sync-late")
    fast_model, slow_model = make_mlp(4), make_mlp(4)
    fast = RemoteOptimizer(fast_model.named_parameters(), target=target, algorithm="SGD", model=name, client_id="fast",
                           coordination=dict(mode="sync", timeout_ms=200, min_k=1), lr=0.1)
    slow = RemoteOptimizer(slow_model.named_parameters(), target=target, model=name, client_id="slow", attach=True)
    try:
        fast.join()
        slow.join()
        client.wait_for_trainers(name, 2)
        before = [p.detach().clone() for p in slow_model.parameters()]
        slow.zero_grad()
        x, y = batch(2)
        torch.nn.functional.mse_loss(slow_model(x), y).backward()  # computed at version 0

        alone = step_on(fast_model, fast, 1)
        assert (alone.version, alone.late, alone.contributions) == (1, False, (Contribution("fast", 1),))

        slow.step()
        late = slow.last_result
        assert (late.late, late.version, late.contributions) == (True, 1, ())
        assert slow.version == 1
        for got, want in zip(slow_model.parameters(), fast_model.parameters()):
            assert torch.equal(got, want)  # the current weights, with nothing of the late gradient
        assert_moved(before, list(slow_model.parameters()))

        status = client.coordination(name)
        assert (status.contributions_applied, status.contributions_late, status.steps_timed_out) == (1, 1, 1)
        assert status.trainers == ("fast", "slow")
        assert [v.contributions for v in client.history(name)] == [(Contribution("fast", 1),)]
    finally:
        slow.close()
        fast.delete()


def test_async_stale_gradient_is_rejected_with_the_current_version_and_pull_recovers(target, client):
    name = unique("async-reject")
    a_model, b_model = make_mlp(5), make_mlp(5)
    a = RemoteOptimizer(a_model.named_parameters(), target=target, algorithm="Adam", model=name, client_id="a",
                        coordination=dict(mode="async", max_staleness=1, stale="reject"), lr=1e-2)
    b = RemoteOptimizer(b_model.named_parameters(), target=target, model=name, client_id="b", attach=True)
    try:
        assert b.version == 0
        step_on(a_model, a, 1)
        step_on(a_model, a, 2)
        before = [p.detach().clone() for p in b_model.parameters()]
        with pytest.raises(StaleGradient, match=r"behind the current version 2 .*optimizer\.pull\(\)") as caught:
            step_on(b_model, b, 3)  # computed at version 0: 2 behind, the bound is 1
        error = caught.value
        assert isinstance(error, FailedPrecondition) and isinstance(error, RuntimeError)
        assert (error.current_version, error.base_version, error.staleness, error.max_staleness) == (2, 0, 2, 1)
        assert error.reason == "STALE_GRADIENT"
        assert {k: error.metadata[k] for k in ("current_version", "base_version", "client_id")} == {
            "current_version": "2", "base_version": "0", "client_id": "b"}
        assert b.version == 0
        for got, want in zip(b_model.parameters(), before):
            assert torch.equal(got, want)
        assert client.describe(name).version == 2  # nothing applied

        assert b.pull() == 2
        for got, want in zip(b_model.parameters(), a_model.parameters()):
            assert torch.equal(got, want)
        fresh = step_on(b_model, b, 3)
        assert (fresh.version, fresh.staleness, fresh.lr_scale) == (3, 0, 1.0)
        assert fresh.contributions == (Contribution("b", 2),)  # the rejected step's number was used up

        # Within the bound: a gradient one version old is applied as it is.
        step_on(a_model, a, 4)
        within = step_on(b_model, b, 5)
        assert (within.version, within.staleness, within.lr_scale) == (5, 1, 1.0)

        status = a.coordination()
        assert status.mode == "async" and getattr(status.config, "async").max_staleness == 1
        assert (status.contributions_applied, status.contributions_rejected) == (5, 1)
        assert status.staleness_histogram == (3, 2)  # a's step 3 was one version behind too
        assert [v.contributions for v in a.history(4)] == [(Contribution("a", 3),), (Contribution("b", 3),)]
    finally:
        b.close()
        a.delete()


def test_async_downweight_scales_the_lr_by_one_over_one_plus_staleness(target, client):
    name = unique("async-down")
    a_model, b_model = make_mlp(6), make_mlp(6)
    lr = 0.05
    a = RemoteOptimizer(a_model.named_parameters(), target=target, algorithm="SGD", model=name, client_id="a",
                        coordination=dict(mode="async", max_staleness=1, stale="downweight"), lr=lr)
    b = RemoteOptimizer(b_model.named_parameters(), target=target, model=name, client_id="b", attach=True)
    try:
        for t in range(1, 4):
            assert step_on(a_model, a, t).lr_scale == 1.0
        at_version_3 = [p.detach().clone() for p in a_model.parameters()]
        stale_gradient = gradient(copy.deepcopy(b_model), 10)  # b's weights are version 0's

        stale = step_on(b_model, b, 10)
        assert (stale.version, stale.staleness) == (4, 3)
        assert stale.lr_scale == pytest.approx(1 / (1 + 3))
        assert stale.lr["group0"] == pytest.approx(lr / 4)
        assert b.version == 4
        # Plain SGD: version 4 is version 3 moved by -lr/4 times the stale gradient.
        for got, w, g in zip(b_model.parameters(), at_version_3, stale_gradient):
            torch.testing.assert_close(got, w - (lr / 4) * g, rtol=1e-6, atol=1e-7)
            assert not torch.allclose(got, w - lr * g, rtol=1e-6, atol=1e-7) or not g.any()
        assert client.coordination(name).staleness_histogram == (3, 0, 0, 1)

        a.pull()
        step_on(a_model, a, 11)
        step_on(a_model, a, 12)
        assert (step_on(b_model, b, 13).staleness, b.last_result.lr_scale) == (2, pytest.approx(1 / 3))
        assert step_on(a_model, a, 14).staleness == 1
        within = step_on(b_model, b, 15)  # within the bound: not scaled
        assert (within.version, within.staleness, within.lr_scale) == (9, 1, 1.0)
        assert [(v.version, v.contributions) for v in client.history(name, 8)] == [
            (8, (Contribution("a", 6),)), (9, (Contribution("b", 3),))]
        status = client.coordination(name)
        assert (status.contributions_applied, status.contributions_rejected) == (9, 0)
        assert status.staleness_histogram == (5, 2, 1, 1)
        assert status.staleness_max == 3
        assert status.staleness_mean == pytest.approx((1 + 1 + 2 + 3) / 9)
    finally:
        b.close()
        a.delete()


def test_step_stream_sends_the_version_of_the_weights_it_received(client, target):
    model = make_mlp(7)
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="SGD", lr=0.1)
    numels = [p.numel() for p in model.parameters()]
    grads = [np.full(n, 0.01, np.float32) for n in numels]
    out_a = [np.zeros(n, np.float32) for n in numels]
    out_b = [np.zeros(n, np.float32) for n in numels]
    try:
        with client.step_stream(opt.model, "low-a") as a, client.step_stream(opt.model, "low-b") as b:
            assert (a.base_version, b.base_version) == (0, 0)
            assert a.step(grads, out_a).staleness == 0
            assert a.step(grads, out_a).staleness == 0
            assert a.base_version == 2
            first = b.step(grads, out_b)  # computed at version 0
            assert (first.version, first.staleness, first.weights_version) == (3, 2, 3)
            assert b.base_version == 3
            assert b.step(grads, view="none").staleness == 0
            assert b.base_version == 3  # no weights came back: still the last ones received
            assert b.step(grads, view="none").staleness == 1
            weights = client.pull(opt.model, "train", out_b)
            b.base_version = weights.version
            assert b.step(grads, out_b, base_version=1).staleness == 5 - 1
            assert b.step(grads, out_b).staleness == 0
    finally:
        opt.delete()


def test_coordination_settings_are_checked():
    sync = make_coordination(dict(mode="sync", k=3, combine="sum", timeout_ms=50, min_k=2))
    assert (sync.mode, sync.sync.k, sync.sync.combine, sync.sync.timeout_ms, sync.sync.min_k) == (
        pb.COORDINATION_SYNC, 3, pb.COMBINE_SUM, 50, 2)
    down = make_coordination(dict(mode="async", max_staleness=4, stale="downweight"))
    assert (down.mode, getattr(down, "async").max_staleness, getattr(down, "async").stale) == (
        pb.COORDINATION_ASYNC, 4, pb.STALE_DOWNWEIGHT)
    assert make_coordination(None) == pb.Coordination()
    with pytest.raises(ValueError, match="unknown settings for mode 'async': \\['k'\\]"):
        make_coordination(dict(k=2))
    with pytest.raises(ValueError, match="mode must be 'sync' or 'async'"):
        make_coordination(dict(mode="ring"))
    with pytest.raises(ValueError, match="stale must be 'reject' or 'downweight'"):
        make_coordination(dict(stale="drop"))
    with pytest.raises(ValueError, match="k must be a whole number"):
        make_coordination(dict(mode="sync", k=-1))


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple = ()):
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailers


def _status_details(reason: str, **metadata: str) -> tuple:
    """The trailer a server error carries: a google.rpc.Status holding an ErrorInfo."""
    from optsidecar.errors import _RICH
    info = _RICH["ErrorInfo"](reason=reason, domain="optsidecar.dev")
    for key, value in metadata.items():
        info.metadata.add(key=key, value=value)
    status = _RICH["Status"](code=grpc.StatusCode.FAILED_PRECONDITION.value[0], message="stale")
    status.details.add(type_url="type.googleapis.com/google.rpc.ErrorInfo", value=info.SerializeToString())
    return (("grpc-status-details-bin", status.SerializeToString()),)


def test_stale_rejection_maps_to_stale_gradient_with_the_versions():
    details = ("step 7 of client 'w1': its gradient was computed at version 3, 5 versions behind the current "
               "version 8 (the bound is 4); pull the weights and send a fresh one")
    trailers = _status_details("STALE_GRADIENT", current_version="8", base_version="3", staleness="5",
                               max_staleness="4", client_id="w1")
    error = from_rpc_error(_Failed(grpc.StatusCode.FAILED_PRECONDITION, details, trailers), "step 7 of model 'm'",
                           "x:1")
    assert isinstance(error, StaleGradient)
    assert (error.current_version, error.base_version, error.staleness, error.max_staleness) == (8, 3, 5, 4)
    assert (error.reason, error.metadata["client_id"]) == ("STALE_GRADIENT", "w1")
    # The versions come from the details, never from the message.
    bare = from_rpc_error(_Failed(grpc.StatusCode.FAILED_PRECONDITION, details), "step", "x:1")
    assert type(bare) is FailedPrecondition and bare.reason is None
    other = from_rpc_error(_Failed(grpc.StatusCode.FAILED_PRECONDITION, "commit: 3 chunks missing"), "step", "x:1")
    assert type(other) is FailedPrecondition


def test_a_state_dict_keeps_the_coordination_settings(target):
    settings = dict(mode="async", max_staleness=3, stale="downweight")
    model = make_mlp(8)
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="SGD", lr=0.1, coordination=settings)
    other_model = make_mlp(9)
    other = RemoteOptimizer(other_model.named_parameters(), target=target, algorithm="SGD", lr=0.1)
    try:
        step_on(model, opt, 1)
        other.load_state_dict(opt.state_dict())
        assert other.coordination().config == make_coordination(settings)
        assert other.version == 1
    finally:
        opt.delete()
        other.delete()


def test_sync_sum_and_a_trainer_leaving_while_another_waits(target, client):
    """combine="sum" steps the sum of the gradients; with k=0, a trainer that detaches while
    another waits lets the waiting step go ahead with the trainers still attached."""
    name = unique("sync-sum")
    initial = make_mlp(10)
    a_model, b_model, reference_model = (copy.deepcopy(initial) for _ in range(3))
    a = RemoteOptimizer(a_model.named_parameters(), target=target, algorithm="SGD", model=name, client_id="a",
                        coordination=dict(mode="sync", combine="sum"), lr=0.05)
    b = RemoteOptimizer(b_model.named_parameters(), target=target, model=name, client_id="b", attach=True)
    reference = RemoteOptimizer(reference_model.named_parameters(), target=target, algorithm="SGD", lr=0.05)
    try:
        a.join()
        b.join()
        client.wait_for_trainers(name, 2)
        done = threading.Thread(target=step_on, args=(a_model, a, 1))
        done.start()
        step_on(b_model, b, 2)
        done.join(10)
        grads = [gradient(reference_model, 1), gradient(reference_model, 2)]
        for i, p in enumerate(reference_model.parameters()):
            p.grad = grads[0][i] + grads[1][i]
        reference.step()
        for ours in (a_model, b_model):
            for got, want in zip(ours.parameters(), reference_model.parameters()):
                assert torch.equal(got, want)
        assert a.last_result.contributions == (Contribution("a", 1), Contribution("b", 1))

        # a waits for b, which leaves instead: a's step goes ahead alone.
        waiting = threading.Thread(target=step_on, args=(a_model, a, 3))
        waiting.start()
        waiting.join(0.3)  # a's contribution arrives and waits for b's
        assert waiting.is_alive() and client.describe(name).version == 1
        b.close()
        waiting.join(10)
        assert not waiting.is_alive()
        assert (a.last_result.version, a.last_result.contributions) == (2, (Contribution("a", 2),))
        assert client.coordination(name).trainers == ("a",)
    finally:
        b.close()
        a.delete()
        reference.delete()


def test_replayed_journal_keeps_the_staleness_of_each_step(start_server, tmp_path):
    """A stale, down-weighted step replayed from the journal after a crash is answered to a retry
    with the staleness and lr scale it was applied with, and counts at that staleness."""
    server = start_server("--state-dir", str(tmp_path / "state"))
    name = unique("journal-stale")
    a_model, b_model = make_mlp(11), make_mlp(11)
    a = RemoteOptimizer(a_model.named_parameters(), target=server.target, algorithm="SGD", model=name, client_id="a",
                        coordination=dict(mode="async", max_staleness=1, stale="downweight"), lr=0.05)
    b = RemoteOptimizer(b_model.named_parameters(), target=server.target, model=name, client_id="b", attach=True)
    try:
        for t in range(1, 4):
            step_on(a_model, a, t)
        stale = step_on(b_model, b, 4)
        assert (stale.version, stale.staleness, stale.lr_scale) == (4, 3, 0.25)

        server.restart(crash=True, args=["--state-dir", str(tmp_path / "state"), "--restore", "latest"])
        info = a.client.describe(name)
        assert info.version == 4
        stored = {c.client_id: c.last_result for c in info.state.clients}
        assert (stored["b"].staleness, stored["b"].lr_scale) == (3, 0.25)
        # Counted since the restart: the steps replayed after the latest snapshot, b's at staleness 3.
        assert a.coordination().staleness_histogram[3:] == (1,)
        # The retry of b's step (sent again with its sequence number) gets the figures it had.
        with a.client.step_stream(name, "b") as retry:
            retry.next_step_id = 1
            again = retry.step([p.grad for p in b_model.parameters()], view="none", base_version=0)
        assert (again.replayed, again.version, again.staleness, again.lr_scale) == (True, 4, 3, 0.25)
    finally:
        b.close()
        a.close()


def test_history_larger_than_a_message_is_read_in_pages(start_server):
    """Ten megabytes of History (client ids of 60 kB, one per version) pass a client's default
    4 MiB receive limit only in pages: each under a megabyte, each starting where the previous
    one said, together every version the steps reported."""
    server = start_server("--max-client-id-bytes", "65536")
    name = unique("long-history")
    spec = pb.ModelSpec(name=name, tensors=[pb.TensorSpec(name="w", shape=[4])],
                        optimizer=pb.OptimizerConfig(algorithm="SGD"))
    spec.optimizer.hyperparameters.update({"lr": 0.1})
    with Client(server.target) as client:
        client.register(spec, [np.zeros(4, dtype=np.float32)])
        streams = [client.step_stream(name, f"{i}-" + "x" * 60_000) for i in range(8)]
        reported = []
        for _ in range(20):
            for s in streams:
                figures = s.step([np.ones(4, dtype=np.float32)], view="none")
                reported.append(VersionContributions(figures.version, figures.contributions))
        for s in streams:
            s.close()
        assert [v.version for v in reported] == list(range(1, 161))

        assert client.history(name) == reported
        assert client.history(name, 150) == reported[149:]

        # The same pages through a plain channel with gRPC's default limits.
        with grpc.insecure_channel(server.target) as channel:
            stub = optimizer_pb2_grpc.OptimizerStub(channel)
            pages, start = [], 0
            while True:
                page = stub.History(pb.HistoryRequest(model=name, from_version=start))
                assert page.ByteSize() <= 1 << 20
                pages.append([v.version for v in page.versions])
                if not page.next_from_version:
                    break
                assert page.next_from_version == pages[-1][-1] + 1
                start = page.next_from_version
            # 17 versions of 60 kB fit in a megabyte.
            assert pages == [list(range(v, min(v + 17, 161))) for v in range(1, 161, 17)]
            five = stub.History(pb.HistoryRequest(model=name, from_version=40, max_versions=5))
            assert ([v.version for v in five.versions], five.next_from_version) == ([40, 41, 42, 43, 44], 45)
