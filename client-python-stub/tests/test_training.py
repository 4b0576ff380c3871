"""RemoteOptimizer against torch.optim run locally: the same model, data and steps."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_moved, assert_within_tolerance, batch, decay_groups, make_mlp, train_step, twin
from optsidecar import InvalidArgument, RemoteOptimizer

STEPS = 50


@pytest.mark.parametrize("algorithm, local, hyperparameters", [
    ("AdamW", torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05)),
    ("RAdam", torch.optim.RAdam, dict(lr=1e-2, betas=(0.9, 0.99))),
])
def test_matches_local_torch(target, algorithm, local, hyperparameters):
    remote_model = make_mlp()
    local_model = twin(remote_model)
    initial = [p.detach().clone() for p in remote_model.parameters()]
    opt = RemoteOptimizer(remote_model.named_parameters(), target=target, algorithm=algorithm, **hyperparameters)
    reference = local(local_model.parameters(), foreach=False, **hyperparameters)
    try:
        for t in range(1, STEPS + 1):
            train_step(remote_model, opt, t)
            train_step(local_model, reference, t)
        assert opt.version == STEPS and opt.last_result.version == STEPS
        figures = opt.last_result.groups[0]  # these algorithms keep no group scalars
        assert figures.scalars == {} and figures.k is figures.weight_sum is figures.lr_max is None
        assert_moved(initial, list(remote_model.parameters()))
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()),
                                f"{algorithm} after {STEPS} steps")
    finally:
        opt.delete()


def test_named_parameters_name_the_server_tensors(client, target):
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="SGD", lr=0.1)
    try:
        info = client.describe(opt.model)
        assert [t.name for t in info.tensors] == [n for n, _ in model.named_parameters()]
        assert [list(t.shape) for t in info.tensors] == [list(p.shape) for p in model.parameters()]
    finally:
        opt.delete()


def test_param_groups_with_per_group_weight_decay(client, target):
    remote_model = make_mlp()
    local_model = twin(remote_model)
    opt = RemoteOptimizer(decay_groups(remote_model), target=target, algorithm="AdamW", lr=1e-2, weight_decay=0.2)
    reference = torch.optim.AdamW(decay_groups(local_model, named=False), lr=1e-2, weight_decay=0.2, foreach=False)
    try:
        assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]
        info = client.describe(opt.model)
        assert [g.name for g in info.groups] == ["group0", "group1"]
        assert [g.hyperparameters["weight_decay"] for g in info.groups] == [0.2, 0.0]
        assert {t.name: t.group for t in info.tensors} == {
            "0.weight": "group0", "2.weight": "group0", "0.bias": "group1", "2.bias": "group1"}
        for t in range(1, 31):
            train_step(remote_model, opt, t)
            train_step(local_model, reference, t)
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()),
                                "AdamW with a no-decay group")
        # The same run with decay on the biases too must differ: the override is what made it match.
        uniform_model = twin(make_mlp())
        uniform = torch.optim.AdamW(uniform_model.parameters(), lr=1e-2, weight_decay=0.2, foreach=False)
        for t in range(1, 31):
            train_step(uniform_model, uniform, t)
        biases = [p for n, p in remote_model.named_parameters() if n.endswith("bias")]
        uniform_biases = [p for n, p in uniform_model.named_parameters() if n.endswith("bias")]
        assert any(not torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(biases, uniform_biases))
    finally:
        opt.delete()


def test_changing_a_hyperparameter_that_changes_the_state_slots_raises(client, target):
    """amsgrad adds a state slot: the server refuses the change, naming the group and the key,
    and nothing is applied; set back, training goes on."""
    model = make_mlp()
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="Adam")
    try:
        opt.param_groups[0]["amsgrad"] = True
        with pytest.raises(InvalidArgument, match=r"group 'group0' .* param_groups\[0\]\['amsgrad'\] from False to True"):
            train_step(model, opt, 1)
        assert opt.version == 0 and client.describe(opt.model).version == 0
        opt.param_groups[0]["amsgrad"] = False
        train_step(model, opt, 1)
        assert opt.version == 1
    finally:
        opt.delete()


def test_torch_lr_scheduler_drives_the_server_lr(target):
    remote_model = make_mlp()
    local_model = twin(remote_model)
    decay = lambda epoch: 0.9 ** epoch  # noqa: E731
    opt = RemoteOptimizer(remote_model.parameters(), target=target, algorithm="Adam", lr=2e-2)
    reference = torch.optim.Adam(local_model.parameters(), lr=2e-2, foreach=False)
    remote_schedule = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    local_schedule = torch.optim.lr_scheduler.LambdaLR(reference, decay)
    try:
        for t in range(1, 21):
            used = reference.param_groups[0]["lr"]
            train_step(remote_model, opt, t)
            train_step(local_model, reference, t)
            assert opt.last_result.lr == {"group0": used}, f"step {t}"
            remote_schedule.step()
            local_schedule.step()
        assert opt.last_result.lr["group0"] < 2e-2 * 0.9 ** 18
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()), "Adam + LambdaLR")
    finally:
        opt.delete()


def test_server_schedule_multiplies_the_client_base_lr(target):
    """Which lr wins: the client's group lr is the base, a server-side schedule scales it."""
    model = make_mlp()
    warmup = 4
    opt = RemoteOptimizer(model.parameters(), target=target, algorithm="SGD", lr=0.1,
                          schedule=dict(type="linear_warmup", warmup_steps=warmup))
    try:
        for t in range(1, 9):
            base = 0.1 / t  # the client changes its base lr every step, as a scheduler would
            opt.param_groups[0]["lr"] = base
            train_step(model, opt, t)
            factor = min(1.0, (t - 1) / warmup)  # algorithms.md §8.2: f(s) = s / W, s = t − 1
            assert opt.last_result.lr["group0"] == pytest.approx(base * factor, rel=1e-12, abs=0), f"step {t}"
    finally:
        opt.delete()


def test_closure_loss_and_skipped_gradients(client, target):
    model = make_mlp()
    frozen = model[0].bias
    before = frozen.detach().clone()
    opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="SGD", lr=0.1, momentum=0.9)
    try:
        x, y = torch.randn(8, 6), torch.randn(8, 3)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            frozen.grad = None  # as torch does for a parameter without a gradient: skip it
            return loss

        loss = opt.step(closure)
        assert isinstance(loss, torch.Tensor) and loss.item() > 0
        assert torch.equal(frozen.detach(), before)
        steps = {t.name: t.steps for t in client.describe(opt.model).tensors}
        assert steps == {"0.weight": 1, "0.bias": 0, "2.weight": 1, "2.bias": 1}
        opt.zero_grad()
        assert all(p.grad is None for p in model.parameters())
    finally:
        opt.delete()


def test_server_side_clipping_matches_torch_clip_grad_norm(target):
    remote_model = make_mlp()
    local_model = twin(remote_model)
    opt = RemoteOptimizer(remote_model.parameters(), target=target, algorithm="SGD", lr=0.1, momentum=0.9,
                          clip_grad_norm=0.5,
                          report_update_norm=True)
    reference = torch.optim.SGD(local_model.parameters(), lr=0.1, momentum=0.9, foreach=False)
    try:
        clipped = 0
        for t in range(1, 21):
            before = [p.detach().clone() for p in remote_model.parameters()]
            train_step(remote_model, opt, t)
            x, y = batch(t)
            reference.zero_grad()
            torch.nn.functional.mse_loss(local_model(x), y).backward()
            norm = torch.nn.utils.clip_grad_norm_(local_model.parameters(), 0.5)
            reference.step()
            figures = opt.last_result
            assert figures.grad_norm == pytest.approx(norm.item(), rel=1e-5)
            clipped += figures.clip_coefficient < 1
            update = torch.sqrt(sum(((p.detach().double() - b.double()) ** 2).sum()
                                    for p, b in zip(remote_model.parameters(), before)))
            assert figures.update_norm == pytest.approx(update.item(), rel=1e-6)
        assert clipped > 0, "the test never clipped"
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()), "SGD + clipping")
    finally:
        opt.delete()


def test_non_finite_gradients_can_be_skipped(client, target):
    model = make_mlp()
    opt = RemoteOptimizer(model.parameters(), target=target, algorithm="Adam", lr=1e-2, non_finite="skip")
    try:
        train_step(model, opt, 1)
        before = [p.detach().clone() for p in model.parameters()]
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        model[0].weight.grad[0, 0] = float("inf")
        opt.step()
        assert opt.last_result.skipped and opt.version == 1
        assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))
        assert [t.steps for t in client.describe(opt.model).tensors] == [1, 1, 1, 1]
    finally:
        opt.delete()
