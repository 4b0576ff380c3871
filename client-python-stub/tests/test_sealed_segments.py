"""Sealed segments: a memfd sealed against shrinking, handed to the server over its segment socket
(SCM_RIGHTS) and mapped by it. What the socket refuses, what a token names, that a client can
neither shrink the memory under the server nor slip a non-finite gradient past its check by
rewriting it mid-step, and that the server lets go of the memory when the trainer closes or dies."""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from helpers import make_mlp, train_step
from optsidecar import Client, FailedPrecondition, InvalidArgument, RemoteOptimizer
from optsidecar.shm import sealed_segments_work
from optsidecar.v1 import optimizer_pb2 as pb

pytestmark = pytest.mark.skipif(not sealed_segments_work(), reason="sealed segments need Linux (memfd, SCM_RIGHTS)")

ALL_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def segment_socket(server) -> str:
    with Client(server.target) as c:
        name = c.server_info().segment_socket
    assert name.startswith("segments-") and name.endswith(".sock")
    return os.path.join(server.shm_dir, name)


def memfd(size: int, seals: int = ALL_SEALS) -> int:
    fd = os.memfd_create("optsidecar-segment", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def hand_over(path: str, fds, token: bytes = None, payload: bytes = None):
    """Sends a token (or ``payload``) with ``fds``; returns the open connection and the reply."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(10)
    connection.connect(path)
    if payload is None:
        token = token if token is not None else secrets.token_bytes(32)
        payload = bytes([len(token)]) + token
    socket.send_fds(connection, [payload], list(fds))
    header = connection.recv(4)
    if len(header) < 4:
        return connection, None
    body = b""
    length = struct.unpack("<I", header)[0]
    while len(body) < length:
        body += connection.recv(length - len(body))
    return connection, pb.SegmentHandoffReply.FromString(body)


def mapped_memfds(server) -> int:
    """How many mappings of our memfds the server process holds."""
    with open(f"/proc/{server.process.pid}/maps") as maps:
        return sum("memfd:optsidecar-segment" in line for line in maps)


class Named:
    """A SharedSegment as a client's segment would give it, for pulls the server refuses."""

    def __init__(self, **fields):
        self.fields = fields

    def message(self):
        return pb.SharedSegment(**self.fields)


def grpc_model(server, numels):
    """A model with float32 tensors of ``numels`` elements, registered over gRPC."""
    params = [torch.nn.Parameter(torch.zeros(n)) for n in numels]
    return RemoteOptimizer(params, target=server.target, algorithm="SGD", lr=0.1, transport="grpc")


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_the_socket_is_private_named_by_server_info_and_removed_at_shutdown(shm_server):
    path = segment_socket(shm_server)
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and mode & 0o777 == 0o600
    shm_server.stop()
    assert not os.path.exists(path)


def _pipe_end():
    read_end, write_end = os.pipe()
    os.close(write_end)
    return read_end


@pytest.mark.parametrize("case,why", [
    ("unsealed", "not sealed against shrinking"),
    ("sealed against writes", "sealed against writes"),
    ("a regular file", "not a memfd"),
    ("a pipe", "not a memfd"),
    ("no descriptor", "exactly one file descriptor"),
    ("two descriptors", "exactly one file descriptor"),
    ("a short token", "a token holds 16 to 64"),
])
def test_a_refused_handoff_says_why_and_leaves_nothing_held(shm_server, tmp_path, case, why):
    path = segment_socket(shm_server)
    token = secrets.token_bytes(32)
    fds = {
        "unsealed": lambda: [memfd(1 << 16, seals=0)],
        "sealed against writes": lambda: [memfd(1 << 16, seals=ALL_SEALS | fcntl.F_SEAL_WRITE)],
        "a regular file": lambda: [os.open(tmp_path / "plain", os.O_CREAT | os.O_RDWR, 0o600)],
        "a pipe": lambda: [_pipe_end()],
        "no descriptor": lambda: [],
        "two descriptors": lambda: [memfd(1 << 16), memfd(1 << 16)],
        "a short token": lambda: [memfd(1 << 16)],
    }[case]()
    if case == "a short token":
        token = secrets.token_bytes(8)
    try:
        connection, reply = hand_over(path, fds, token)
        assert reply is not None and why in reply.refused, reply
        assert connection.recv(1) == b"", "the server closes a refused connection"
        connection.close()
        # Nothing was kept: the token names no segment, and the server maps none of ours.
        opt = grpc_model(shm_server, [4])
        try:
            with pytest.raises(FailedPrecondition) as unknown:
                opt.client.pull(opt.model, "train", [None], segment=Named(
                    handoff_token=token, weights_offsets=[0], gradient_offsets=[64]))
            assert unknown.value.reason == "SHARED_MEMORY_UNAVAILABLE"
            assert unknown.value.field == "shared.handoff_token"
        finally:
            opt.close()
        assert mapped_memfds(shm_server) == 0
    finally:
        for fd in fds:
            os.close(fd)
    # The socket still takes a good segment.
    good = memfd(1 << 16)
    try:
        connection, reply = hand_over(path, [good])
        assert reply is not None and not reply.refused
        connection.close()
    finally:
        os.close(good)


def test_garbage_and_silence_on_the_socket_are_closed(shm_server):
    path = segment_socket(shm_server)
    fd = memfd(1 << 16)
    try:
        # A length byte promising fewer bytes than came: refused.
        connection, reply = hand_over(path, [fd], payload=bytes([16]) + secrets.token_bytes(40))
        assert reply is not None and "a token holds" in reply.refused
        connection.close()
        # Nothing at all within the wait: closed without a reply.
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        silent.settimeout(15)
        silent.connect(path)
        started = time.monotonic()
        assert silent.recv(1) == b""
        assert 4 <= time.monotonic() - started < 12
        silent.close()
        assert mapped_memfds(shm_server) == 0
    finally:
        os.close(fd)


def test_a_token_names_only_its_own_segment(shm_server):
    path = segment_socket(shm_server)
    fd = memfd(4096)
    token = secrets.token_bytes(32)
    connection, reply = hand_over(path, [fd], token)
    try:
        assert not reply.refused
        # The same token again: refused, the first one stays held.
        again, second = hand_over(path, [fd], token)
        assert "another sealed segment is held under this token" in second.refused
        again.close()
        opt = grpc_model(shm_server, [4, 2000])
        try:
            pull = lambda **fields: opt.client.pull(opt.model, "train", [None, None], segment=Named(**fields))  # noqa: E731
            offsets = dict(weights_offsets=[0, 64], gradient_offsets=[8064, 16064])
            with pytest.raises(FailedPrecondition) as small:  # 4 KiB cannot hold these regions
                pull(handoff_token=token, **offsets)
            assert small.value.reason == "SHARED_MEMORY_UNAVAILABLE" and "holds 4096 bytes" in str(small.value)
            with pytest.raises(InvalidArgument) as both:
                pull(name="optsidecar-" + "0" * 32, handoff_token=token, **offsets)
            assert both.value.field == "shared.name"
            with pytest.raises(InvalidArgument):  # overlapping regions are refused as for files
                pull(handoff_token=token, weights_offsets=[0, 64], gradient_offsets=[0, 0])
            with pytest.raises(FailedPrecondition) as other:  # a token nobody handed over
                pull(handoff_token=secrets.token_bytes(32), **offsets)
            assert other.value.field == "shared.handoff_token"
        finally:
            opt.close()
    finally:
        connection.close()
        os.close(fd)


def test_views_land_in_the_clients_memory_and_the_client_cannot_shrink_it(shm_server):
    model = make_mlp(21)
    opt = RemoteOptimizer(model.parameters(), target=shm_server.target, algorithm="RAdam", lr=1e-2,
                          shm_segment="sealed", transport="shm")
    try:
        assert opt.shm_segment == "sealed"
        train_step(model, opt, 0)
        assert mapped_memfds(shm_server) >= 1
        with Client(shm_server.target) as c:
            expected = [torch.zeros(p.numel()) for p in model.parameters()]
            c.pull(opt.model, "train", expected)
        for p, e in zip(model.parameters(), expected):
            assert torch.equal(p.detach().reshape(-1), e)
        with pytest.raises(PermissionError):
            os.ftruncate(opt._segment._fd, 64)
        with pytest.raises(PermissionError):
            fcntl.fcntl(opt._segment._fd, fcntl.F_ADD_SEALS, 0)  # sealed for good: no seal comes off or on
    finally:
        opt.close()


def test_rewriting_the_gradient_mid_step_never_slips_a_nan_past_the_check(shm_server):
    """A client scribbling NaN over its gradient while steps run: each step reads every value once,
    so it is either applied with finite values or refused; the weights stay finite."""
    model = torch.nn.Linear(512, 512)
    opt = RemoteOptimizer(model.parameters(), target=shm_server.target, algorithm="AdamW", lr=1e-3,
                          shm_segment="sealed", transport="shm", retry_for=0)
    stop = threading.Event()
    try:
        opt.zero_grad()
        model(torch.ones(1, 512)).sum().backward()
        gradient = opt._segment.gradient(0)

        def scribble():
            # A NaN at one place about a fifth of the time, at another place each round: reads
            # catch it whole, or not at all, or while it is being written.
            at = 0
            while not stop.is_set():
                at = (at + 997) % gradient.size
                gradient[at] = float("nan")
                time.sleep(0.0002)
                gradient[at] = 0.5
                time.sleep(0.0008)

        scribbler = threading.Thread(target=scribble)
        scribbler.start()
        applied = refused = 0
        for _ in range(60):
            try:
                opt.step()
                applied += 1
            except InvalidArgument as e:
                assert e.reason == "NON_FINITE_GRADIENT"
                refused += 1
        stop.set()
        scribbler.join()
        assert applied + refused == 60 and applied > 0
        with Client(shm_server.target) as c:
            weights = [torch.zeros(p.numel()) for p in model.parameters()]
            version = c.pull(opt.model, "train", weights).version
        assert version == applied
        assert all(torch.isfinite(w).all() for w in weights)
    finally:
        stop.set()
        opt.close()


def test_the_server_lets_go_of_the_memory_when_the_trainer_closes(shm_server):
    model = make_mlp(22)
    opt = RemoteOptimizer(model.parameters(), target=shm_server.target, algorithm="AdamW", lr=1e-2,
                          shm_segment="sealed", transport="shm")
    try:
        train_step(model, opt, 0)
        assert wait_for(lambda: mapped_memfds(shm_server) == 1)
        # The connection it was handed over on ends: the open stream keeps it.
        opt._segment._connection.close()
        opt._segment._connection = None
        train_step(model, opt, 1)
        assert opt.version == 2 and mapped_memfds(shm_server) == 1
    finally:
        opt.close()
    assert wait_for(lambda: mapped_memfds(shm_server) == 0)


def test_the_server_lets_go_of_the_memory_when_the_trainer_is_killed(shm_server):
    here = os.path.dirname(os.path.abspath(__file__))
    script = textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{os.path.dirname(here)!r}, {here!r}]
        from helpers import make_mlp, train_step
        from optsidecar import RemoteOptimizer
        model = make_mlp(23)
        opt = RemoteOptimizer(model.parameters(), target={shm_server.target!r}, algorithm="AdamW", lr=1e-2,
                              shm_segment="sealed", transport="shm")
        train_step(model, opt, 0)
        print("stepped", flush=True)
        time.sleep(120)
    """)
    trainer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert trainer.stdout.readline().strip() == "stepped"
        assert mapped_memfds(shm_server) >= 1
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(10)
        assert wait_for(lambda: mapped_memfds(shm_server) == 0, 20), "the killed trainer's memory is still mapped"
    finally:
        if trainer.poll() is None:
            trainer.kill()


def test_random_bytes_and_descriptors_on_the_socket_leave_the_server_whole(shm_server, tmp_path):
    """A hostile client's worth of random handoffs: random lengths and bytes, zero to three
    descriptors of every kind. Each is refused or taken (then let go); the server holds nothing
    afterwards and still serves a trainer."""
    import random

    path = segment_socket(shm_server)
    rng = random.Random(20261206)
    plain = os.open(tmp_path / "plain", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        for _ in range(120):
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 90)))
            if rng.random() < 0.4 and payload:
                payload = bytes([len(payload) - 1]) + payload[1:]  # a plausible length byte
            fds = []
            for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
                kind = rng.choice(["sealed", "unsealed", "plain", "pipe"])
                fds.append(memfd(4096 * rng.randrange(1, 4), ALL_SEALS if kind == "sealed" else 0)
                           if kind in ("sealed", "unsealed") else os.dup(plain) if kind == "plain" else _pipe_end())
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            connection.settimeout(10)
            try:
                connection.connect(path)
                if payload or fds:
                    socket.send_fds(connection, [payload or b"\0"], fds)
                if rng.random() < 0.5:
                    connection.shutdown(socket.SHUT_WR)  # some say no more; the rest just leave
                    try:
                        connection.recv(1 << 16)
                    except OSError:
                        pass
            finally:
                connection.close()
                for fd in fds:
                    os.close(fd)
    finally:
        os.close(plain)
    assert wait_for(lambda: mapped_memfds(shm_server) == 0)
    assert not [line for line in shm_server.log if "Exception" in line or "SEVERE" in line]
    model = make_mlp(24)
    opt = RemoteOptimizer(model.parameters(), target=shm_server.target, algorithm="AdamW", lr=1e-2,
                          shm_segment="sealed", transport="shm")
    try:
        train_step(model, opt, 0)
        assert opt.version == 1
    finally:
        opt.close()
