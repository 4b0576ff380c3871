"""Exactly-once steps: sequence numbers, retried steps answered from the server's ledger, and
training that rides through a server killed and restarted from its state directory."""

from __future__ import annotations

import dataclasses
import random
import socket
import threading
import time
import uuid

import numpy as np
import pytest
import torch

from optsidecar import Client, FailedPrecondition, RemoteOptimizer
from optsidecar.spec import model_spec, optimizer_config


def sgd_model(client: Client, sizes, lr: float = 0.5):
    name = f"exactly-once-{uuid.uuid4().hex[:8]}"
    spec = model_spec(name, [(f"t{i}", (n,)) for i, n in enumerate(sizes)], [], optimizer_config("SGD", {"lr": lr}))
    rng = np.random.default_rng(3)
    weights = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    client.register(spec, weights)
    return name, weights


def gradients(sizes, seed: int):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) for n in sizes]


def figures_repr(figures) -> str:
    # repr compares SGD's NaN averaging weights as equal
    return repr(dataclasses.asdict(dataclasses.replace(figures, replayed=False)))


# -- the ledger, at the StepStream level -----------------------------------------------------------

def test_a_step_sent_twice_is_replayed_not_applied_twice(client):
    sizes = [300, 7]
    name, w0 = sgd_model(client, sizes)
    try:
        g1, g2 = gradients(sizes, 1), gradients(sizes, 2)
        out = [np.zeros(n, np.float32) for n in sizes]
        with client.step_stream(name, "sends-twice") as stream:
            first = stream.step(g1, out)
            assert (first.step_id, first.version, first.replayed) == (1, 1, False)
            after_first = [o.copy() for o in out]
            # The same step again: same sequence number, same gradients.
            stream.next_step_id = first.step_id
            again_out = [np.full(n, 7.0, np.float32) for n in sizes]
            again = stream.step(g1, again_out)
            assert again.replayed and (again.step_id, again.version) == (1, 1)
            assert figures_repr(again) == figures_repr(first)  # the figures stored when it was applied
            assert all(np.array_equal(a, b) for a, b in zip(again_out, after_first))  # the current weights
            assert client.describe(name).version == 1
            # Also with figures only, and then the next step is applied as usual.
            stream.next_step_id = first.step_id
            assert stream.step(g1, view="none").replayed
            second = stream.step(g2, out)
            assert (second.step_id, second.version, second.replayed) == (2, 2, False)
            # θ − 0.5·g is exact in float32: the first step counted once.
            for o, w, a, b in zip(out, w0, g1, g2):
                assert np.array_equal(o, (w - np.float32(0.5) * a) - np.float32(0.5) * b)
            # A step older than the last applied one is refused; nothing changes.
            stream.next_step_id = 1
            with pytest.raises(FailedPrecondition, match="older than its last applied step 2"):
                stream.step(g2, out)
        assert client.describe(name).version == 2
        assert [(c.client_id, c.last_step_id) for c in client.describe(name).state.clients] == [("sends-twice", 2)]
    finally:
        client.delete(name)


def test_a_known_client_id_continues_its_sequence(client, target):
    sizes = [5]
    name, _ = sgd_model(client, sizes)
    try:
        with client.step_stream(name, "trainer-a") as stream:
            for seed in range(3):
                stream.step(gradients(sizes, seed), view="none")
        # A new stream under the same client id continues after step 3; another id starts at 1.
        with client.step_stream(name, "trainer-a") as stream:
            assert stream.next_step_id == 4
            figures = stream.step(gradients(sizes, 9), view="none")
            assert (figures.step_id, figures.version, figures.replayed) == (4, 4, False)
        assert client.step_stream(name, "trainer-b").next_step_id == 1
        # So does an optimizer attached under that id.
        param = torch.nn.Parameter(torch.zeros(5))
        opt = RemoteOptimizer([param], target=target, model=name, client_id="trainer-a", attach=True)
        try:
            param.grad = torch.ones(5)
            opt.step()
            assert (opt.last_result.step_id, opt.version, opt.last_result.replayed) == (5, 5, False)
        finally:
            opt.close()
    finally:
        client.delete(name)


# -- a reply lost with the connection ----------------------------------------------------------------

class Proxy:
    """A TCP relay to a server that can lose the server's replies and cut its connections."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        self.connections: list = []  # [client socket, server socket, replies dropped]
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            connection = [downstream, upstream, False]
            with self.lock:
                self.connections.append(connection)
            threading.Thread(target=self._pump, args=(downstream, upstream, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, connection), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, replies_of) -> None:
        while True:
            try:
                data = source.recv(1 << 16)
                if not data:
                    break
                if replies_of is not None and replies_of[2]:
                    continue  # lost on the way
                sink.sendall(data)
            except OSError:
                break
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def drop_replies(self) -> None:
        """From now on, the open connections lose everything the server sends (new ones do not)."""
        with self.lock:
            for connection in self.connections:
                connection[2] = True

    def cut(self) -> None:
        """Closes every open connection, as a network failure would."""
        with self.lock:
            connections, self.connections = self.connections, []
        for downstream, upstream, _ in connections:
            for s in (downstream, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


def test_a_step_whose_reply_is_lost_is_retried_and_answered_from_the_ledger(client, server):
    """The server applies the step, the connection dies before the reply arrives: the client sends
    the step again on a new connection, and the server answers it from its ledger."""
    sizes = [1000, 3]
    name, w0 = sgd_model(client, sizes)
    proxy = Proxy(server.port)
    try:
        with Client(proxy.target) as lossy:
            stream = lossy.step_stream(name, "lossy", retry_for=30)
            out = [np.zeros(n, np.float32) for n in sizes]
            g1, g2, g3 = gradients(sizes, 1), gradients(sizes, 2), gradients(sizes, 3)
            assert stream.step(g1, out).version == 1

            def cut_once_applied() -> None:
                deadline = time.monotonic() + 20
                while client.describe(name).version < 2 and time.monotonic() < deadline:
                    time.sleep(0.005)
                proxy.cut()

            proxy.drop_replies()
            cutter = threading.Thread(target=cut_once_applied)
            cutter.start()
            second = stream.step(g2, out)
            cutter.join()
            assert stream.retries >= 1
            assert second.replayed and (second.step_id, second.version) == (2, 2)
            expected = [(w - np.float32(0.5) * a) - np.float32(0.5) * b for w, a, b in zip(w0, g1, g2)]
            assert all(np.array_equal(o, e) for o, e in zip(out, expected))
            assert client.describe(name).version == 2
            third = stream.step(g3, out)
            assert (third.step_id, third.version, third.replayed) == (3, 3, False)
            stream.close()
    finally:
        proxy.close()
        client.delete(name)


# -- a server killed and restarted mid-run -------------------------------------------------------------

STEPS = 30
KILLS = 4


def crash_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.Tanh(), torch.nn.Linear(256, 256), torch.nn.Tanh(),
                               torch.nn.Linear(256, 4))


def crash_batch(t: int):
    g = torch.Generator().manual_seed(5000 + t)
    x = torch.randn(64, 32, generator=g)
    return x, torch.cos(x[:, :4]) + 0.05 * torch.randn(64, 4, generator=g)


def crash_optimizer(model: torch.nn.Module, target: str) -> RemoteOptimizer:
    return RemoteOptimizer(model.named_parameters(), target=target, algorithm="RAdam", lr=3e-3, weight_decay=0.01,
                           schedule=dict(type="cosine", warmup_steps=5, total_steps=STEPS), retry_for=60)


def crash_train(model, opt, t: int) -> None:
    x, y = crash_batch(t)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("crash", [True, False], ids=["killed", "shut-down"])
def test_training_rides_through_server_restarts_bit_for_bit(target, start_server, tmp_path, crash):
    """The server is stopped (SIGKILL, or SIGTERM) at random moments and restarted on its port
    from its state directory; the run goes on by itself, loses and doubles no step, and ends with
    the same weights as an uninterrupted run on another server."""
    reference = crash_model()
    opt = crash_optimizer(reference, target)
    try:
        for t in range(1, STEPS + 1):
            crash_train(reference, opt, t)
    finally:
        opt.delete()

    durable = start_server("--state-dir", tmp_path / "state", "--restore", "latest")
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    kill_after = sorted(rng.sample(range(2, STEPS - 1), KILLS))
    done = [0]
    events: list = []
    failures: list = []
    quit = threading.Event()

    def stop_and_restart() -> None:
        try:
            at = 0
            for after in kill_after:
                # At least one step between two restarts, so that the trainer sees each of them.
                while done[0] < min(max(after, at + 1), STEPS - 1):
                    if quit.wait(0.0005):
                        return
                time.sleep(rng.uniform(0, 0.004))  # lands between steps or anywhere within one
                at = done[0]
                stopped = time.monotonic()
                durable.restart(crash=crash)
                events.append((at, stopped, time.monotonic()))
        except BaseException as e:  # reported by the test thread
            failures.append(e)

    model = crash_model()
    opt = crash_optimizer(model, durable.target)
    restarter = threading.Thread(target=stop_and_restart, name="restarter")
    replayed = 0
    finished_at = []
    started = time.monotonic()
    try:
        restarter.start()
        for t in range(1, STEPS + 1):
            if t == STEPS:
                restarter.join()  # every restart happens while the run is still going
            crash_train(model, opt, t)
            replayed += opt.last_result.replayed
            finished_at.append(time.monotonic())
            done[0] = t
        elapsed = time.monotonic() - started
        assert not failures, failures
        info = opt.client.describe(opt.model)
        assert info.version == STEPS, f"seed {seed}: {info.version} steps applied for {STEPS} sent ({events})"
        assert [(c.client_id, c.last_step_id) for c in info.state.clients] == [(opt.client_id, STEPS)]
        # Each restart broke the stream of a step that was then sent again (two restarts with no
        # step in between, which only the last steps can see, may break just one).
        assert len(events) == KILLS and opt._stream.retries >= len({at for at, _, _ in events})
        for i, (a, b) in enumerate(zip(model.parameters(), reference.parameters())):
            assert torch.equal(a, b), f"seed {seed}: parameter {i} differs by {(a - b).abs().max().item():.3g}"
        # How long the server was away, and how soon after it was back the step in wait got through.
        down = [back - stopped for _, stopped, back in events]
        resumed = [min(f for f in finished_at if f > back) - back for _, _, back in events]
        print(f"\n{'killed' if crash else 'shut down'} after steps {[at for at, _, _ in events]}; away "
              f"{', '.join(f'{d:.2f}' for d in down)} s; next step done {', '.join(f'{r:.3f}' for r in resumed)} s "
              f"after the server was back; {opt._stream.retries} retries, {replayed} replayed; {STEPS} steps in "
              f"{elapsed:.2f} s")
    finally:
        quit.set()
        restarter.join()
        opt.close()


def test_backoff_doubles_from_50_ms_to_a_2_s_cap():
    from optsidecar.client import StepStream, backoff_ceilings

    ceilings = backoff_ceilings(StepStream.FIRST_PAUSE, StepStream.MAX_PAUSE)
    assert [next(ceilings) for _ in range(9)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]


def test_retrying_through_a_restart_is_logged_once_when_it_starts_and_once_when_it_recovers(
        start_server, tmp_path, caplog):
    """The server is shut down between two steps and comes back a second later: the step sent
    meanwhile is retried, with one WARNING when the retrying starts and one INFO when it is over."""
    import logging

    durable = start_server("--state-dir", tmp_path / "state", "--restore", "latest")
    model = crash_model()
    opt = crash_optimizer(model, durable.target)
    try:
        crash_train(model, opt, 1)
        durable.stop()
        back = threading.Timer(1.0, durable.start)
        back.start()
        try:
            with caplog.at_level(logging.INFO, logger="optsidecar"):
                crash_train(model, opt, 2)
        finally:
            back.join()
        records = [r for r in caplog.records if r.name == "optsidecar"]
        assert [r.levelno for r in records] == [logging.WARNING, logging.INFO], [r.getMessage() for r in records]
        started, recovered = (r.getMessage() for r in records)
        assert started.startswith(f"step 2 of model {opt.model!r}: ") and "unavailable" in started
        assert started.endswith("retrying for up to 60 s"), started
        assert f"step 2 of model {opt.model!r}: the server at {durable.target} answered again after " in recovered
        assert opt.client.describe(opt.model).version == 2
    finally:
        opt.close()


def test_a_pause_longer_than_the_idle_timeout_does_not_break_training(target, start_server):
    """The server closes a Step stream idle past --idle-stream-timeout (an evaluation pass, a
    checkpoint between steps); the next step opens a new stream, and the run is the same as one
    without the pause."""
    reference = crash_model()
    opt = crash_optimizer(reference, target)
    try:
        for t in range(1, 5):
            crash_train(reference, opt, t)
    finally:
        opt.delete()

    strict = start_server("--idle-stream-timeout", "1")
    model = crash_model()
    opt = crash_optimizer(model, strict.target)
    try:
        for t in range(1, 5):
            crash_train(model, opt, t)
            if t == 2:
                time.sleep(2.5)  # the server closes the idle stream meanwhile
        for a, b in zip(model.parameters(), reference.parameters()):
            assert torch.equal(a, b)
    finally:
        opt.delete()
