"""The server on a Unix domain socket beside its TCP port (``--listen unix:PATH``): a co-located
trainer's control traffic without TCP, on the same models."""

from __future__ import annotations

import os

import torch

from helpers import assert_within_tolerance, make_mlp, train_step, twin
from optsidecar import Client, RemoteOptimizer


def test_a_trainer_on_the_unix_socket_trains_the_model_tcp_clients_see(start_server, tmp_path):
    socket_path = tmp_path / "run" / "optsidecar.sock"
    server = start_server("--listen", f"unix:{socket_path}")
    assert socket_path.exists()
    remote_model = make_mlp()
    local_model = twin(remote_model)
    opt = RemoteOptimizer(remote_model.named_parameters(), 1e-2, target=f"unix://{socket_path}", algorithm="AdamW",
                          model="over-uds")
    reference = torch.optim.AdamW(local_model.parameters(), 1e-2, foreach=False)
    try:
        for t in range(1, 6):
            train_step(remote_model, opt, t)
            train_step(local_model, reference, t)
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()),
                                "AdamW over a Unix socket")
        with Client(server.target) as over_tcp:
            assert over_tcp.describe("over-uds").version == 5
        # A relative unix: target names the same socket.
        here = os.getcwd()
        os.chdir(socket_path.parent)
        try:
            with Client("unix:optsidecar.sock") as relative:
                assert "over-uds" in relative.list()
        finally:
            os.chdir(here)
    finally:
        opt.delete()
    server.stop()
    assert not socket_path.exists(), "the server removes its socket when it stops"
