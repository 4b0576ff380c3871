"""Tokens against the packaged server with ``--auth-tokens``: a trainer's token trains, a reader's
is refused a step with the client's usual error, and a call without a token is refused."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from helpers import assert_within_tolerance, make_mlp, train_step, twin
from optsidecar import Client, OptSidecarError, PermissionDenied, RemoteOptimizer, Unauthenticated

TOKENS = {"ops": ("ops-secret", "admin", ["*"]),
          "ci": ("ci-secret", "trainer", ["ci-*"]),
          "dashboard": ("dashboard-secret", "reader", ["*"])}


@pytest.fixture
def token_server(start_server, tmp_path):
    entries = [{"name": name, "sha256": hashlib.sha256(token.encode()).hexdigest(), "role": role, "models": models}
               for name, (token, role, models) in TOKENS.items()]
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": entries}))
    return start_server("--auth-tokens", str(path))


def test_a_trainer_token_trains_as_torch_does(token_server):
    remote_model = make_mlp()
    local_model = twin(remote_model)
    opt = RemoteOptimizer(remote_model.named_parameters(), 1e-2, target=token_server.target, algorithm="AdamW",
                          model="ci-run", token="ci-secret")
    reference = torch.optim.AdamW(local_model.parameters(), 1e-2, foreach=False)
    try:
        for t in range(1, 6):
            train_step(remote_model, opt, t)
            train_step(local_model, reference, t)
        assert opt.version == 5
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()), "AdamW with a token")
    finally:
        opt.close()
    with Client(token_server.target, token="ops-secret") as ops:
        assert ops.describe("ci-run").version == 5
        ops.delete("ci-run")


def test_a_reader_token_is_refused_a_step(token_server):
    with Client(token_server.target, token="ci-secret") as ci:
        model = make_mlp()
        RemoteOptimizer(model.named_parameters(), 1e-2, client=ci, algorithm="AdamW", model="ci-shared").close()
    reader_model = make_mlp()
    opt = RemoteOptimizer(reader_model.named_parameters(), target=token_server.target, model="ci-shared",
                          attach=True, token="dashboard-secret")
    try:
        assert opt.version == 0  # a reader may read the model
        reader_model(torch.ones(2, 6)).sum().backward()
        with pytest.raises(PermissionDenied) as refused:
            opt.step()
        error = refused.value
        assert isinstance(error, OptSidecarError) and isinstance(error, PermissionError)
        assert error.reason == "ACCESS_DENIED" and error.field == "open.model"
        assert error.metadata["model"] == "ci-shared" and error.metadata["required_role"] == "trainer"
        assert "needs role trainer" in str(error)
    finally:
        opt.close()
    with Client(token_server.target, token="ops-secret") as ops:
        assert ops.describe("ci-shared").version == 0, "the refused step applied nothing"


def test_a_call_without_a_known_token_is_unauthenticated(token_server, monkeypatch):
    monkeypatch.delenv("OPTSIDECAR_TOKEN", raising=False)
    with Client(token_server.target, timeout=20) as anonymous:
        with pytest.raises(Unauthenticated) as missing:
            anonymous.list()
        assert missing.value.reason == "TOKEN_MISSING"
    with Client(token_server.target, timeout=20, token="guess") as guessing:
        with pytest.raises(Unauthenticated) as unknown:
            guessing.list()
        assert unknown.value.reason == "TOKEN_UNKNOWN"
