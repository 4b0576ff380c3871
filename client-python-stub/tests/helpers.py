"""A small model, deterministic data and the reference tolerance, shared by the tests and by the
resume worker that runs in a fresh process."""

from __future__ import annotations

import copy
from typing import Iterable, Sequence, Tuple

import torch

#: The reference vectors' check for runs of up to 60 steps: |a − b| ≤ ATOL + RTOL·|b|.
ATOL = 1e-5
RTOL = 1e-4


def make_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def twin(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model)


def batch(t: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The mini-batch of step t: the same in every process."""
    g = torch.Generator().manual_seed(1000 + t)
    x = torch.randn(32, 6, generator=g)
    y = torch.sin(x[:, :3]) + 0.1 * torch.randn(32, 3, generator=g)
    return x, y


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, t: int) -> float:
    x, y = batch(t)
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def decay_groups(model: torch.nn.Module, named: bool = True) -> list:
    """Weights with the optimizer's weight decay, biases without (a common torch recipe)."""
    weights = [(n, p) for n, p in model.named_parameters() if not n.endswith("bias")]
    biases = [(n, p) for n, p in model.named_parameters() if n.endswith("bias")]
    if not named:
        weights = [p for _, p in weights]
        biases = [p for _, p in biases]
    return [{"params": weights}, {"params": biases, "weight_decay": 0.0}]


def worst_fraction(actual: Iterable[torch.Tensor], expected: Iterable[torch.Tensor]) -> float:
    """The largest |a − b| / (ATOL + RTOL·|b|) over all elements."""
    worst = 0.0
    for a, b in zip(actual, expected):
        a64, b64 = a.detach().double(), b.detach().double()
        worst = max(worst, ((a64 - b64).abs() / (ATOL + RTOL * b64.abs())).max().item())
    return worst


def assert_within_tolerance(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], what: str) -> None:
    actual, expected = list(actual), list(expected)
    assert len(actual) == len(expected)
    fraction = worst_fraction(actual, expected)
    assert fraction <= 1.0, f"{what}: worst error is {fraction:.3g} of the tolerance {ATOL} + {RTOL}|ref|"


def assert_moved(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]) -> None:
    """Guards comparisons against passing because nothing happened."""
    assert any(not torch.equal(b, a) for b, a in zip(before, after)), "training did not change the parameters"


def build_run(config: str, target: str, seed: int):
    """A model, its RemoteOptimizer and torch lr scheduler (or None) for a named configuration,
    as both the test and the fresh-process resume worker build them."""
    from optsidecar import RemoteOptimizer

    model = make_mlp(seed)
    if config == "adamw_groups_lambdalr_server_schedule_ema_lookahead":
        opt = RemoteOptimizer(decay_groups(model), target=target, algorithm="AdamW", lr=2e-2, weight_decay=0.1,
                              schedule=dict(type="cosine", warmup_steps=3, total_steps=30),
                              ema=[0.9], lookahead=dict(k=3, alpha=0.5), clip_grad_norm=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.97 ** epoch)
        return model, opt, scheduler
    if config == "adam_amsgrad_in_one_group":
        # The biases' group has a state slot (max_exp_avg_sq) the weights' group lacks.
        weights = [p for n, p in model.named_parameters() if not n.endswith("bias")]
        biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
        opt = RemoteOptimizer([{"params": weights}, {"params": biases, "amsgrad": True}], target=target,
                              algorithm="Adam", lr=1e-2)
        return model, opt, None
    if config == "radam_schedulefree_saved_in_eval_mode":
        opt = RemoteOptimizer(model.named_parameters(), target=target, algorithm="RAdamScheduleFree", lr=2e-2,
                              weight_decay=0.01)
        return model, opt, None
    raise ValueError(f"unknown configuration {config!r}")


RESUME_CONFIGS = ["adamw_groups_lambdalr_server_schedule_ema_lookahead", "radam_schedulefree_saved_in_eval_mode",
                  "adam_amsgrad_in_one_group"]


def run_steps(model, opt, scheduler, first: int, last: int) -> None:
    for t in range(first, last + 1):
        train_step(model, opt, t)
        if scheduler is not None:
            scheduler.step()
