"""Figures: the loss a closure returns, what opt.log reports and what log_figures sends, kept by the
server per version beside the step's own figures; and the HTTP endpoint and JSON logs of the
packaged server."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest
import torch

from conftest import free_port
from helpers import batch, make_mlp
from optsidecar import Client, InvalidArgument, RemoteOptimizer


def closure_step(model, opt, t):
    x, y = batch(t)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    return opt.step(closure)


def test_closure_loss_and_logged_figures_are_kept_per_version(target):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="RAdamScheduleFree", lr=0.01)
    try:
        losses, results = [], []
        for t in range(1, 5):
            if t == 2:
                opt.log(accuracy=0.25, lr_seen=torch.tensor(0.5))
            if t == 3:
                opt.log(loss=7.0)  # an explicitly logged loss wins over the closure's
            losses.append(closure_step(model, opt, t).item())
            results.append(opt.last_result)
        figures = opt.figures()
        assert [v.version for v in figures] == [1, 2, 3, 4]
        assert [v.figures.get("loss") for v in figures] == [losses[0], losses[1], 7.0, losses[3]]
        assert figures[1].figures["accuracy"] == 0.25 and figures[1].figures["lr_seen"] == 0.5
        assert "accuracy" not in figures[2].figures, "logged figures go with one step"
        for v, r in zip(figures, results):
            assert v.kind == "gradient" and v.contributions == 1
            assert v.grad_norm == r.grad_norm and v.staleness == r.staleness
            group = r.groups[0]
            assert v.lr[group.name] == group.lr and v.effective_lr[group.name] == group.effective_lr
            assert v.averaging_weight[group.name] == group.averaging_weight  # Schedule-Free's c_t
            assert v.step_seconds >= 0 and v.time > 0
        assert opt.figures(from_version=4) == figures[3:]
    finally:
        opt.delete()


def test_log_figures_without_a_step_joins_the_current_version(client, target):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="Adam", lr=0.01)
    try:
        assert client.log_figures(opt.model, eval_accuracy=0.5) == 0
        loss = closure_step(model, opt, 1).item()
        assert client.log_figures(opt.model, {"loss": 1.0}, eval_accuracy=0.75) == 1
        first, second = opt.figures()
        assert first.version == 0 and first.figures == {"eval_accuracy": 0.5}
        assert second.figures == {"eval_accuracy": 0.75, "loss": (loss + 1.0) / 2}
    finally:
        opt.delete()


def test_bad_figures_are_refused_and_change_nothing(client, target):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="Adam", lr=0.01)
    try:
        opt.log(**{"bad name": 1.0})
        with pytest.raises(InvalidArgument, match="commit.figures"):
            closure_step(model, opt, 1)
        with pytest.raises(InvalidArgument, match="figures"):
            client.log_figures(opt.model, loss=float("nan"))
        with pytest.raises(TypeError, match="'loss'"):
            opt.log(loss="low")
        assert client.describe(opt.model).version == 0 and opt.figures() == []
    finally:
        opt.delete()


def test_a_non_finite_closure_loss_is_not_reported(target):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="Adam", lr=0.01)
    try:
        x, y = batch(1)

        def closure():
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            return torch.tensor(float("inf"))

        opt.step(closure)
        (only,) = opt.figures()
        assert only.version == 1 and only.figures == {}
    finally:
        opt.delete()


def http_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


def sample(samples, name, **labels):
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [v for k, v in samples.items() if re.fullmatch(re.escape(name) + r"(\{.*\})?", k)
             and all(f'{label}="{value}"' in k for label, value in labels.items())]
    assert len(found) == 1, f"{name} {labels}: {found}"
    return found[0]


def test_packaged_server_serves_metrics_figures_and_json_logs(start_server):
    http_port = free_port()
    server = start_server("--http-port", str(http_port), "--log-format", "json")
    base = f"http://127.0.0.1:{http_port}"
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=server.target, algorithm="AdamW", lr=0.01,
                          model="curves", client_id="trainer-1")
    losses = [closure_step(model, opt, t).item() for t in range(1, 6)]
    samples = scrape(base + "/metrics")
    assert sample(samples, "optsidecar_steps_applied_total", model="curves") == 5
    assert sample(samples, "optsidecar_learning_rate", model="curves", group="group0") == 0.01
    assert sample(samples, "optsidecar_trainers_attached", model="curves") == 1
    numel = sum(p.numel() for p in model.parameters())
    assert sample(samples, "optsidecar_step_received_bytes_total", model="curves") == 5 * numel * 4.0  # float32

    listed = http_json(base + "/api/models")
    assert [m["name"] for m in listed["models"]] == ["curves"]
    page = http_json(base + "/api/models/curves/figures?from_version=1")
    assert [v["figures"]["loss"] for v in page["versions"]] == losses
    assert [int(v["version"]) for v in page["versions"]] == [1, 2, 3, 4, 5]
    opt.delete()

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any('"event":"delete"' in line for line in server.log):
        time.sleep(0.05)  # the last lines are still being read from the process's output
    lines = [json.loads(line) for line in list(server.log) if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    events = {(line.get("event"), line.get("model")) for line in lines}
    for expected in [("register", "curves"), ("trainer_join", "curves"), ("trainer_leave", "curves"),
                     ("delete", "curves")]:
        assert expected in events, f"{expected} in {sorted(events, key=str)}"
    join = next(line for line in lines if line.get("event") == "trainer_join")
    assert join["client_id"] == "trainer-1"
