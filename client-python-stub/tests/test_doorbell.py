"""The doorbell socket beside the shared segments, against the real server: steps commit over it,
errors on it are the Step stream's errors, and nobody without a stream's secret can use it."""

import hashlib
import json
import os
import socket
import stat
import struct

import pytest
import torch

from helpers import make_mlp, train_step
from optsidecar import Client, InvalidArgument, PermissionDenied, RemoteOptimizer
from optsidecar.v1 import optimizer_pb2 as pb

LENGTH = struct.Struct("<I")


def socket_path(server):
    name = Client(server.target).server_info().doorbell_socket
    assert name.startswith("doorbell-") and name.endswith(".sock")
    return os.path.join(server.shm_dir, name)


def ring(path, *frames, raw=b""):
    """Connects to the doorbell, sends ``frames`` (and ``raw`` bytes), and returns what the server
    sent before it closed the connection, as DoorbellFrames."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        for frame in frames:
            body = frame.SerializeToString()
            s.sendall(LENGTH.pack(len(body)) + body)
        if raw:
            s.sendall(raw)
        received = b""
        while True:
            data = s.recv(65536)
            if not data:
                break
            received += data
    answers = []
    while received:
        (n,) = LENGTH.unpack_from(received)
        answers.append(pb.DoorbellFrame.FromString(received[4:4 + n]))
        received = received[4 + n:]
    return answers


def test_the_socket_is_private_named_by_server_info_and_removed_at_shutdown(shm_server):
    path = socket_path(shm_server)
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    shm_server.stop()
    assert not os.path.exists(path)


def test_an_error_on_the_doorbell_is_the_streams_error_and_changes_nothing(shm_server):
    model = make_mlp(3)
    opt = RemoteOptimizer(model.parameters(), target=shm_server.target, algorithm="RAdam", lr=1e-2)
    try:
        train_step(model, opt, 0)
        assert opt.transport == "shm" and opt.doorbell
        before = [p.detach().clone() for p in model.parameters()]
        version = opt.version
        opt.zero_grad()
        model(torch.ones(1, 6)).sum().backward()
        next(model.parameters()).grad.view(-1)[0] = float("nan")
        with pytest.raises(InvalidArgument) as refused:
            opt.step()
        assert refused.value.reason == "NON_FINITE_GRADIENT"
        assert refused.value.field == "open.shared.gradient_offsets"
        assert Client(shm_server.target).describe(opt.model).version == version
        for p, b in zip(model.parameters(), before):
            assert torch.equal(p.detach(), b)
        train_step(model, opt, 1)  # a fresh stream, with a doorbell of its own
        assert opt.doorbell and opt.version == version + 1
    finally:
        opt.close()


def test_a_connection_without_a_streams_secret_is_refused_and_harms_no_trainer(shm_server):
    path = socket_path(shm_server)
    model = make_mlp(4)
    opt = RemoteOptimizer(model.parameters(), target=shm_server.target, algorithm="AdamW", lr=1e-2)
    try:
        train_step(model, opt, 0)
        assert opt.doorbell

        # A secret no stream opened with: refused once the server has waited for its StepOpen.
        [answer] = ring(path, pb.DoorbellFrame(secret=os.urandom(32)))
        assert answer.error.code == 9  # FAILED_PRECONDITION
        assert "no open Step stream has this secret" in answer.error.message
        # A commit before any secret, a short secret, a frame too long, bytes that do not parse.
        [answer] = ring(path, pb.DoorbellFrame(commit=pb.StepCommit(step_id=7)))
        assert answer.error.code == 3 and "first frame must be the stream's secret" in answer.error.message
        [answer] = ring(path, pb.DoorbellFrame(secret=b"short"))
        assert answer.error.code == 3 and "16 to 64 bytes" in answer.error.message
        [answer] = ring(path, raw=LENGTH.pack(0xFFFFFFF0))
        assert answer.error.code == 3 and "at most 1048576" in answer.error.message
        [answer] = ring(path, raw=LENGTH.pack(3) + b"\xff\xff\xff")
        assert answer.error.code == 3 and "not a DoorbellFrame" in answer.error.message

        for t in range(1, 4):
            train_step(model, opt, t)
        assert opt.doorbell and opt.version == 4
    finally:
        opt.close()


def test_with_tokens_only_a_stream_the_token_opened_gets_a_doorbell(start_server, tmp_path):
    entries = [{"name": "ci", "sha256": hashlib.sha256(b"ci-secret").hexdigest(), "role": "trainer", "models": ["ci-*"]},
               {"name": "dash", "sha256": hashlib.sha256(b"dash-secret").hexdigest(), "role": "reader",
                "models": ["*"]}]
    (tmp_path / "tokens.json").write_text(json.dumps({"tokens": entries}))
    (tmp_path / "shm").mkdir()
    server = start_server("--auth-tokens", tmp_path / "tokens.json", "--shm-dir", tmp_path / "shm")
    model = make_mlp(5)
    opt = RemoteOptimizer(model.parameters(), 1e-2, target=server.target, algorithm="AdamW", model="ci-bell",
                          token="ci-secret")
    try:
        train_step(model, opt, 0)
        assert opt.transport == "shm" and opt.doorbell
        # A reader's token may not open a Step stream, so it never gets a secret to ring with.
        reader_model = make_mlp(5)
        reader = RemoteOptimizer(reader_model.parameters(), target=server.target, model="ci-bell", attach=True,
                                 token="dash-secret")
        try:
            reader_model(torch.ones(2, 6)).sum().backward()
            with pytest.raises(PermissionDenied):
                reader.step()
            assert not reader.doorbell
        finally:
            reader.close()
        train_step(model, opt, 1)
        assert opt.version == 2
    finally:
        opt.close()
