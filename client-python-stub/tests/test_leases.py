"""Ephemeral models: an auto-named optimizer's model is leased, renewed while the optimizer lives,
deleted when it closes, and expires on the server when its process dies; named models persist."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import subprocess_env
from helpers import make_mlp, train_step
from optsidecar import RemoteOptimizer
from optsidecar.errors import NotFound
from optsidecar.optimizer import DEFAULT_LEASE_SECONDS


def wait_until_gone(client, model: str, seconds: float) -> float:
    """Polls until ``model`` is no longer listed; returns how long that took."""
    start = time.monotonic()
    while model in client.list():
        if time.monotonic() - start > seconds:
            pytest.fail(f"model {model!r} still on the server after {seconds} s")
        time.sleep(0.05)
    return time.monotonic() - start


def test_auto_named_model_is_deleted_on_close(target, client):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="SGD", lr=0.1)
    assert opt.lease_seconds == DEFAULT_LEASE_SECONDS
    train_step(model, opt, 1)
    assert opt.model in client.list()
    opt.close()
    assert opt.model not in client.list()
    opt.close()  # a second close does nothing


def test_auto_named_model_is_deleted_when_the_optimizer_is_collected(target, client):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="SGD", lr=0.1)
    train_step(model, opt, 1)
    name = opt.model
    del opt
    gc.collect()
    assert name not in client.list()


def test_renewals_keep_an_ephemeral_model_alive(target, client):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="SGD", lr=0.1, model=f"leased-{id(model)}",
                          ephemeral=True, lease_seconds=1)
    try:
        time.sleep(2.5)  # idle, well past the grace period: only the background renewals keep it
        assert opt.model in client.list()
        train_step(model, opt, 1)
    finally:
        opt.close()
    assert opt.model not in client.list()


def test_named_model_persists(target, client):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="SGD", lr=0.1, model=f"kept-{id(model)}")
    try:
        assert opt.lease_seconds == 0
        train_step(model, opt, 1)
        opt.close()
        assert client.renew_lease(opt.model) == 0  # no lease: nothing to expire
        assert client.describe(opt.model).version == 1
    finally:
        client.delete(opt.model)


WORKER = textwrap.dedent("""
    import sys, time
    from helpers import make_mlp, train_step
    from optsidecar import RemoteOptimizer

    model = make_mlp()
    # torch 2.x imports much of itself at an optimizer's first step, holding the GIL for seconds:
    # done first, it cannot starve the renewals of a 2 s lease.
    import torch
    warm = make_mlp()
    train_step(warm, torch.optim.SGD(warm.parameters(), 0.1), 1)
    opt = RemoteOptimizer(model.named_parameters(), 0.1, target=sys.argv[1], algorithm="SGD",
                          lease_seconds=int(sys.argv[2]))
    train_step(model, opt, 1)
    print(opt.model, flush=True)
    time.sleep(600)
""")


def test_a_killed_process_leaves_its_model_to_expire_after_the_grace(target, client):
    grace = 2
    worker = subprocess.Popen([sys.executable, "-c", WORKER, target, str(grace)], env=subprocess_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        name = worker.stdout.readline().strip()
        assert name.startswith("torch-"), worker.stderr.read() if worker.poll() is not None else name
        time.sleep(grace * 1.5)
        assert name in client.list(), "the live process's renewals did not keep its model"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        worker.stdout.close()
        worker.stderr.close()
    took = wait_until_gone(client, name, grace + 10)
    assert took <= grace + 2, f"expired {took:.1f} s after the kill, grace {grace} s"
    with pytest.raises(NotFound, match="lease expired"):
        client.describe(name)
