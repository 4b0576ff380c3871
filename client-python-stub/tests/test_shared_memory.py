"""Training over shared memory (``--shm-dir``, ``transport="shm"``): the same weights bit for bit as
chunks over gRPC, zero copies on the trainer's side, falling back when the segment cannot be
shared, and a segment spoiled by the client failing only its own steps."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time

import pytest
import torch

from helpers import assert_moved, assert_within_tolerance, batch, make_mlp, train_step, twin
from optsidecar import Client, FailedPrecondition, InvalidArgument, RemoteOptimizer, edits
from optsidecar.shm import Segment


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_bits_equal(a, b, what):
    for i, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x.view(torch.int32), y.view(torch.int32)), f"{what}: tensor {i} differs"


def segment_range(opt):
    buffer = opt._segment.mmap
    start = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    return start, start + len(buffer)


@pytest.mark.parametrize("segment", ["sealed", "file"])
@pytest.mark.parametrize("algorithm,reference", [("AdamW", torch.optim.AdamW), ("RAdam", torch.optim.RAdam)])
def test_shm_training_matches_grpc_bit_for_bit_and_torch(shm_server, algorithm, reference, segment):
    model = make_mlp(1)
    over_grpc, local = twin(model), twin(model)
    shm = RemoteOptimizer(model.parameters(), target=shm_server.target, algorithm=algorithm, lr=1e-2,
                          weight_decay=0.05, shm_segment=segment)
    chunks = RemoteOptimizer(over_grpc.parameters(), target=shm_server.target, algorithm=algorithm, lr=1e-2,
                             weight_decay=0.05, transport="grpc")
    torch_opt = reference(local.parameters(), lr=1e-2, weight_decay=0.05)
    assert (shm.transport, chunks.transport) == ("shm", "grpc")
    assert shm.shm_segment == segment and chunks.shm_segment is None
    before = params_of(model)
    try:
        for t in range(8):
            train_step(model, shm, t)
            train_step(over_grpc, chunks, t)
            train_step(local, torch_opt, t)
        assert shm.doorbell and not chunks.doorbell  # commits over the socket beside the segment
        assert_moved(before, params_of(model))
        assert_bits_equal(params_of(model), params_of(over_grpc), "shm vs grpc")
        assert_within_tolerance(params_of(model), params_of(local), f"{algorithm} over shm vs torch")
        assert shm.version == chunks.version == 8
    finally:
        shm.close()
        chunks.close()


def test_schedule_free_eval_and_train_through_the_segment(shm_server):
    model = make_mlp(2)
    over_grpc = twin(model)
    shm = RemoteOptimizer(model.parameters(), target=shm_server.target, algorithm="AdamWScheduleFree", lr=2e-2)
    chunks = RemoteOptimizer(over_grpc.parameters(), target=shm_server.target, algorithm="AdamWScheduleFree",
                             lr=2e-2, transport="grpc")
    try:
        for t in range(5):
            train_step(model, shm, t)
            train_step(over_grpc, chunks, t)
        shm.eval()
        chunks.eval()
        assert_bits_equal(params_of(model), params_of(over_grpc), "eval view")
        shm.train()
        chunks.train()
        assert_bits_equal(params_of(model), params_of(over_grpc), "train view")
        train_step(model, shm, 5)
        train_step(over_grpc, chunks, 5)
        assert_bits_equal(params_of(model), params_of(over_grpc), "after eval and train")
    finally:
        shm.close()
        chunks.close()


def test_parameters_and_gradients_live_in_the_segment(shm_server):
    model = make_mlp(3)
    opt = RemoteOptimizer(model.parameters(), target=shm_server.target, algorithm="AdamW", lr=1e-2)
    try:
        start, end = segment_range(opt)
        x, y = batch(0)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()  # autograd adds into the existing .grad
        for p in model.parameters():
            assert start <= p.data_ptr() < end
            assert start <= p.grad.data_ptr() < end
            assert p.grad.abs().sum() > 0
        opt.step()
        for p in model.parameters():
            assert start <= p.data_ptr() < end, "the step rebound a parameter elsewhere"
    finally:
        opt.close()


def test_auto_falls_back_to_grpc(start_server, shm_server, tmp_path, caplog):
    plain = start_server()
    model = make_mlp(4)
    with caplog.at_level("INFO", logger="optsidecar"):
        without_dir = RemoteOptimizer(model.parameters(), target=plain.target, algorithm="AdamW", lr=1e-2)
    try:
        assert without_dir.transport == "grpc"
        assert "without --shm-dir" in caplog.text
        train_step(model, without_dir, 0)
        assert without_dir.version == 1
    finally:
        without_dir.close()
    unseen = RemoteOptimizer(make_mlp(4).parameters(), target=shm_server.target, algorithm="AdamW", lr=1e-2,
                             shm_dir=str(tmp_path / "not-here"))
    try:
        assert unseen.transport == "grpc"
    finally:
        unseen.close()
    # A directory this process sees but the server does not: the server cannot map the segment.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other = RemoteOptimizer(make_mlp(4).parameters(), target=shm_server.target, algorithm="AdamW", lr=1e-2,
                            shm_dir=str(elsewhere))
    try:
        assert other.transport == "grpc"
        assert os.listdir(elsewhere) == [], "the refused segment was left behind"
    finally:
        other.close()
    with pytest.raises(FailedPrecondition) as refused:
        RemoteOptimizer(make_mlp(4).parameters(), target=plain.target, algorithm="AdamW", lr=1e-2, transport="shm")
    assert refused.value.reason == "SHARED_MEMORY_UNAVAILABLE"


def test_edits_and_parameters_without_gradients_go_through_the_segment(shm_server):
    model = make_mlp(5)
    over_grpc = twin(model)
    extra, extra_twin = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
    shm = RemoteOptimizer(list(model.parameters()) + [extra], target=shm_server.target, algorithm="Adam", lr=1e-2)
    chunks = RemoteOptimizer(list(over_grpc.parameters()) + [extra_twin], target=shm_server.target,
                             algorithm="Adam", lr=1e-2, transport="grpc")
    try:
        for t in range(3):
            train_step(model, shm, t)  # extra takes no part in the loss: no gradient, as torch skips it
            train_step(over_grpc, chunks, t)
        assert torch.equal(extra.detach(), torch.ones(4))
        with torch.no_grad():
            model[0].weight.mul_(0.5)
            over_grpc[0].weight.mul_(0.5)
            extra.data = torch.full((4,), 3.0)  # .data replaced: copied into the segment and rebound
            extra_twin.data = torch.full((4,), 3.0)
        train_step(model, shm, 3)
        train_step(over_grpc, chunks, 3)
        assert shm.last_push is not None and chunks.last_push is not None
        assert shm.last_push.tensors == chunks.last_push.tensors
        assert_bits_equal(params_of(model) + [extra.detach()], params_of(over_grpc) + [extra_twin.detach()],
                          "after edits")
        start, end = segment_range(shm)
        assert start <= extra.data_ptr() < end
        assert shm.client.describe(shm.model).version == chunks.client.describe(chunks.model).version
    finally:
        shm.close()
        chunks.close()


@pytest.mark.parametrize("segment", ["sealed", "file"])
def test_the_server_checks_the_parameters_so_the_trainer_reads_none_and_still_sees_data_writes(
        shm_server, monkeypatch, segment):
    crc32c = pytest.importorskip("crc32c")
    torch.manual_seed(6)  # the middle weight spans two pieces of 1 MiB
    model = torch.nn.Sequential(torch.nn.Linear(6, 512), torch.nn.Tanh(), torch.nn.Linear(512, 600), torch.nn.Tanh(),
                                torch.nn.Linear(600, 3))
    over_grpc = twin(model)
    shm = RemoteOptimizer(model.parameters(), target=shm_server.target, algorithm="AdamW", lr=1e-2,
                          transport="shm", shm_segment=segment)
    chunks = RemoteOptimizer(over_grpc.parameters(), target=shm_server.target, algorithm="AdamW", lr=1e-2,
                             transport="grpc")
    try:
        train_step(model, shm, 0)
        train_step(over_grpc, chunks, 0)
        params = list(model.parameters())
        piece = 1 << 20
        pieces = [p.detach().numpy().tobytes() for p in params]
        assert shm.last_result.weights_crc32c == tuple(
            crc32c.crc32c(b[at:at + piece]) for b in pieces for at in range(0, len(b), piece))
        hashed = []
        fingerprint = edits._fingerprint
        monkeypatch.setattr(edits, "_fingerprint", lambda p: hashed.append(p) or fingerprint(p))
        train_step(model, shm, 1)
        train_step(over_grpc, chunks, 1)
        # The gRPC trainer hashes every parameter before the step (what it received it hashed
        # chunk by chunk as it arrived); over the segment the server checks the weights against
        # the trainer's records, and the trainer reads none of its parameters.
        assert len(hashed) == len(params) and all(any(h is p for p in over_grpc.parameters()) for h in hashed)
        assert chunks.edits.recorded_crc32c() == list(shm.last_result.weights_crc32c)  # the same weights
        hashed.clear()
        with torch.no_grad():
            model[2].weight.data[-1].mul_(0.5)  # bumps no version counter: only the contents tell
            over_grpc[2].weight.data[-1].mul_(0.5)
        train_step(model, shm, 2)
        train_step(over_grpc, chunks, 2)
        assert shm.last_push is not None and shm.last_push.tensors == chunks.last_push.tensors == ("p2",)
        assert_bits_equal(params_of(model), params_of(over_grpc), "after a write through .data")
        # The server found the write, the trainer sent that parameter and stepped again: it hashed
        # only the parameter it sent (its record), nothing before the step.
        assert [h is model[2].weight for h in hashed if not any(h is p for p in over_grpc.parameters())] == [True]
    finally:
        shm.close()
        chunks.close()


@pytest.mark.parametrize("segment", ["sealed", "file"])
def test_a_step_whose_segment_weights_differ_from_the_records_applies_nothing(shm_server, segment):
    model = make_mlp()
    opt = RemoteOptimizer(model.parameters(), target=shm_server.target, algorithm="AdamW", lr=1e-2,
                          transport="shm", shm_segment=segment)
    over_grpc = RemoteOptimizer(twin(model).parameters(), target=shm_server.target, algorithm="AdamW", lr=1e-2,
                                transport="grpc")
    try:
        train_step(model, opt, 0)
        recorded = opt._edits.recorded_crc32c()
        assert recorded is not None and tuple(recorded) == opt.last_result.weights_crc32c
        version = opt.client.describe(opt.model).version
        weights = params_of(model)
        x, _ = batch(1)
        model(x).sum().backward()

        def step(crc32c, **kwargs):
            return opt._stream.step(opt._shared.gradients(), opt._destinations(), weights_crc32c=crc32c, **kwargs)

        with pytest.raises(InvalidArgument) as too_few:
            step(recorded[:-1])
        assert too_few.value.field == "commit.weights_crc32c" and "pieces" in str(too_few.value)
        with pytest.raises(FailedPrecondition) as edited:
            step([recorded[0]] + [recorded[1] ^ 1] + recorded[2:])
        assert edited.value.reason == "WEIGHTS_EDITED" and edited.value.metadata["tensors"] == "1"
        assert edited.value.field == "commit.weights_crc32c"
        with pytest.raises(InvalidArgument) as set_weights:  # the parameters are the segment's weights
            opt._stream.step(list(model.parameters()), None, view="none", kind="set_weights", weights_crc32c=recorded)
        assert set_weights.value.field == "commit.weights_crc32c"
        with pytest.raises(InvalidArgument) as without_segment:
            over_grpc._stream.step([p.grad for p in model.parameters()], None, view="none", weights_crc32c=recorded)
        assert without_segment.value.field == "commit.weights_crc32c"
        assert opt.client.describe(opt.model).version == version, "a refused step applied something"
        assert_bits_equal(params_of(model), weights, "after refused steps")
        step(recorded)  # the records are right: the step goes through
        assert opt.client.describe(opt.model).version == version + 1
    finally:
        opt.close()
        over_grpc.close()


def test_a_gradient_replaced_by_another_tensor_is_copied_in(shm_server):
    model = make_mlp(6)
    over_grpc = twin(model)
    shm = RemoteOptimizer(model.parameters(), target=shm_server.target, algorithm="SGD", lr=0.1)
    chunks = RemoteOptimizer(over_grpc.parameters(), target=shm_server.target, algorithm="SGD", lr=0.1,
                             transport="grpc")
    try:
        for opt, m in ((shm, model), (chunks, over_grpc)):
            opt.zero_grad()
            for i, p in enumerate(m.parameters()):
                p.grad = torch.full_like(p, 0.25 * (i + 1))
            opt.step()
        assert_bits_equal(params_of(model), params_of(over_grpc), "replaced gradients")
    finally:
        shm.close()
        chunks.close()


@pytest.mark.parametrize("spoil", ["truncate", "delete", "replace"])
def test_a_spoiled_segment_fails_only_that_trainer(shm_server, spoil):
    model = make_mlp(7)
    opt = RemoteOptimizer(model.parameters(), target=shm_server.target, algorithm="AdamW", lr=1e-2, retry_for=0,
                          shm_segment="file")
    try:
        train_step(model, opt, 0)
        with Client(shm_server.target) as c:
            reference = [torch.zeros(p.numel()) for p in model.parameters()]
            c.pull(opt.model, "train", reference)
            path = opt._segment.path
            if spoil == "truncate":
                os.truncate(path, 64)
            elif spoil == "delete":
                os.unlink(path)
            else:
                os.unlink(path)
                with open(path, "wb") as f:  # another file under the same name
                    f.truncate(1 << 20)
            with pytest.raises(FailedPrecondition) as failed:
                train_step(model, opt, 1)
            assert failed.value.reason in ("SHARED_MEMORY_FAULT", "SHARED_MEMORY_UNAVAILABLE")
            assert c.describe(opt.model).version == 1
            after = [torch.zeros(p.numel()) for p in model.parameters()]
            c.pull(opt.model, "train", after)
            assert_bits_equal(after, reference, "the model after a failed step")
            # The server is fine: another trainer steps.
            healthy_model = make_mlp(8)
            healthy = RemoteOptimizer(healthy_model.parameters(), target=shm_server.target, algorithm="AdamW",
                                      lr=1e-2)
            try:
                assert healthy.transport == "shm"
                train_step(healthy_model, healthy, 0)
                assert healthy.version == 1
            finally:
                healthy.close()
    finally:
        opt.close()


def test_several_trainers_each_with_its_own_segment_in_sync_mode(shm_server):
    name = f"sync-shm-{os.getpid()}-{time.monotonic_ns()}"
    model = make_mlp(9)
    first = RemoteOptimizer(model.named_parameters(), target=shm_server.target, algorithm="SGD", lr=0.1,
                            model=name, coordination={"mode": "sync", "k": 2})
    replica = twin(model)
    second = RemoteOptimizer(replica.named_parameters(), target=shm_server.target, model=name, attach=True)
    try:
        assert first.transport == second.transport == "shm"
        assert first._segment.sealed and second._segment.sealed
        assert first._segment.name != second._segment.name
        errors = []

        def run(m, opt, offset):
            try:
                for t in range(3):
                    train_step(m, opt, 2 * t + offset)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(model, first, 0)),
                   threading.Thread(target=run, args=(replica, second, 1))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not errors, errors
        assert first.client.describe(name).version == 3
        assert_bits_equal(params_of(model), params_of(replica), "both trainers hold the synced weights")
    finally:
        second.close()
        first.close()
        Client(shm_server.target).delete(name)


def test_exactly_once_over_shared_memory_through_a_killed_server(start_server, tmp_path):
    directory = tmp_path / "shm"
    directory.mkdir()
    durable = start_server("--state-dir", tmp_path / "state", "--restore", "latest", "--shm-dir", directory)
    model = make_mlp(10)
    over_grpc = twin(model)
    shm = RemoteOptimizer(model.parameters(), target=durable.target, algorithm="RAdam", lr=1e-2, model="shm-run")
    assert shm._segment.sealed  # handed to the restarted server again below
    chunks = RemoteOptimizer(over_grpc.parameters(), target=durable.target, algorithm="RAdam", lr=1e-2,
                             model="grpc-run", transport="grpc")
    try:
        assert shm.transport == "shm"
        for t in range(3):
            train_step(model, shm, t)
            train_step(over_grpc, chunks, t)
        assert shm.doorbell
        durable.restart(crash=True)
        for t in range(3, 6):
            train_step(model, shm, t)
            train_step(over_grpc, chunks, t)
        assert shm.version == chunks.version == 6
        # The restarted server has a doorbell of its own, found again; the dead one's was removed.
        assert shm.doorbell
        assert len([n for n in os.listdir(directory) if n.startswith("doorbell-")]) == 1
        assert len([n for n in os.listdir(directory) if n.startswith("segments-")]) == 1
        assert_bits_equal(params_of(model), params_of(over_grpc), "after a SIGKILL and restore")
    finally:
        shm.close()
        chunks.close()


def test_the_segment_is_removed_on_close_and_on_garbage_collection(shm_server):
    opt = RemoteOptimizer(make_mlp(11).parameters(), target=shm_server.target, algorithm="AdamW", lr=1e-2,
                          shm_segment="file")
    path = opt._segment.path
    assert os.path.exists(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    opt.close()
    assert not os.path.exists(path)
    segment = Segment(shm_server.shm_dir, [10, 3])
    path = segment.path
    assert os.path.basename(path).startswith("optsidecar-") and len(os.path.basename(path)) == len("optsidecar-") + 32
    del segment
    gc.collect()
    assert not os.path.exists(path)


def test_added_parameters_and_a_loaded_state_dict_get_a_new_segment(shm_server):
    """add_param_group and load_state_dict rebuild the model: the parameters move to a segment laid
    out for the new tensors, and training goes on exactly as over gRPC."""
    runs = {}
    for transport in ("shm", "grpc"):
        model = make_mlp(13)
        head = list(model[2].parameters())
        for p in head:
            p.requires_grad_(False)
        opt = RemoteOptimizer(list(model[0].parameters()), target=shm_server.target, algorithm="AdamW", lr=1e-2,
                              transport=transport)
        try:
            first_segment = opt._segment if transport == "shm" else None
            for t in range(3):
                train_step(model, opt, t)
            for p in head:
                p.requires_grad_(True)
            opt.add_param_group({"params": head, "lr": 1e-3})
            if transport == "shm":
                assert opt._segment is not first_segment and first_segment.removed and opt._segment.sealed
                start, end = segment_range(opt)
                assert all(start <= p.data_ptr() < end for p in model.parameters())
            for t in range(3, 6):
                train_step(model, opt, t)
            saved = opt.state_dict()
            for t in range(6, 8):
                train_step(model, opt, t)
            opt.load_state_dict(saved)
            for t in range(6, 8):
                train_step(model, opt, t)
            assert opt.transport == transport and opt.version == 8
        finally:
            opt.close()
        runs[transport] = params_of(model)
    assert_bits_equal(runs["shm"], runs["grpc"], "after add_param_group and load_state_dict")
    assert [n for n in os.listdir(shm_server.shm_dir) if n.startswith("optsidecar-")] == []
