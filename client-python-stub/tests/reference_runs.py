"""Small real networks, their data, and each algorithm's reference optimizer (torch.optim or
schedulefree) with the hyperparameters and lr schedulers the comparisons use."""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch

try:
    import schedulefree
except ImportError:  # only the Schedule-Free cases need it
    schedulefree = None

needs_schedulefree = pytest.mark.skipif(schedulefree is None, reason="the Schedule-Free references need "
                                        "schedulefree: pip install schedulefree==1.4.1")

#: schedulefree's foreach step needs torch._foreach_lerp_, which torch 1.13 lacks: use its
#: per-tensor loop there (the same arithmetic).
SCHEDULE_FREE_FOREACH = hasattr(torch, "_foreach_lerp_")
SCHEDULE_FREE = ("SGDScheduleFree", "AdamWScheduleFree", "RAdamScheduleFree")
#: Relative agreement of the double-precision group counters, as the reference vectors require.
SCALAR_RTOL = 1e-12

#: Hyperparameters for each algorithm, the same for RemoteOptimizer and its reference.
HYPERPARAMETERS: Dict[str, Dict[str, Any]] = {
    "SGD": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "Adam": dict(lr=1e-2, weight_decay=1e-2, amsgrad=True),
    "AdamW": dict(lr=1e-2, weight_decay=0.1),
    "RAdam": dict(lr=1e-2, weight_decay=1e-2),
    "SGDScheduleFree": dict(lr=0.05, momentum=0.9, weight_decay=1e-2, warmup_steps=3),
    "AdamWScheduleFree": dict(lr=1e-2, weight_decay=1e-2, warmup_steps=3),
    "RAdamScheduleFree": dict(lr=1e-2, weight_decay=1e-2),
}


def reference_optimizer(algorithm: str, params: Any, **hyperparameters: Any) -> torch.optim.Optimizer:
    """The reference implementation of ``algorithm`` over ``params``."""
    settings = dict(HYPERPARAMETERS[algorithm], **hyperparameters)
    if algorithm in SCHEDULE_FREE:
        return getattr(schedulefree, algorithm)(params, foreach=SCHEDULE_FREE_FOREACH, **settings)
    return getattr(torch.optim, algorithm)(params, **settings)


def make_scheduler(kind: Optional[str], opt: torch.optim.Optimizer):
    """A torch lr scheduler: cosine annealing, linear warmup (LambdaLR) or step decay."""
    if kind is None:
        return None
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20, eta_min=1e-4)
    if kind == "warmup":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    raise ValueError(f"unknown scheduler {kind!r}")


class SmallCnn(torch.nn.Module):
    """Conv, BatchNorm, ReLU, Linear: 1x8x8 images into 3 classes. The conv has no bias, as usual
    before BatchNorm: its gradient would be rounding noise, which Adam's normalisation amplifies."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, bias=False)
        self.norm = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))).flatten(1))


def build(architecture: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if architecture == "cnn_batchnorm":
        return SmallCnn()
    if architecture == "mlp_layernorm":
        return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.LayerNorm(16), torch.nn.Tanh(),
                                   torch.nn.Linear(16, 3))
    raise ValueError(f"unknown architecture {architecture!r}")


def loss_at(model: torch.nn.Module, architecture: str, t: int) -> torch.Tensor:
    """The loss on step t's mini-batch, the same for every model and process."""
    g = torch.Generator().manual_seed(2000 + t)
    if architecture == "cnn_batchnorm":
        x = torch.randn(16, 1, 8, 8, generator=g)
        y = torch.randint(0, 3, (16,), generator=g)
        return torch.nn.functional.cross_entropy(model(x), y)
    x = torch.randn(32, 6, generator=g)
    y = torch.sin(x[:, :3]) + 0.1 * torch.randn(32, 3, generator=g)
    return torch.nn.functional.mse_loss(model(x), y)


def no_decay_groups(model: torch.nn.Module, named: bool) -> List[Dict[str, Any]]:
    """The usual recipe: weight decay on conv and linear weights, none on norms and biases."""
    decay = [(n, p) for n, p in model.named_parameters() if p.dim() > 1]
    rest = [(n, p) for n, p in model.named_parameters() if p.dim() <= 1]
    pick = (lambda items: items) if named else (lambda items: [p for _, p in items])
    return [{"params": pick(decay)}, {"params": pick(rest), "weight_decay": 0.0}]


def train_step(model: torch.nn.Module, architecture: str, opt: torch.optim.Optimizer, scheduler, t: int) -> None:
    opt.zero_grad()
    loss_at(model, architecture, t).backward()
    opt.step()
    if scheduler is not None:
        scheduler.step()


def assert_group_counters_match(ours: List[Dict[str, Any]], theirs: List[Dict[str, Any]], what: str) -> None:
    """lr, and Schedule-Free's k, train_mode, weight_sum, lr_max and scheduled_lr, group by group."""
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert math.isclose(a["lr"], b["lr"], rel_tol=SCALAR_RTOL), f"{what}: group {i} lr {a['lr']} != {b['lr']}"
        for key in ("k", "train_mode"):
            if key in b:
                assert a[key] == b[key], f"{what}: group {i} {key} {a[key]} != {b[key]}"
        for key in ("weight_sum", "lr_max", "scheduled_lr"):
            if key in b:
                assert math.isclose(a[key], b[key], rel_tol=SCALAR_RTOL), \
                    f"{what}: group {i} {key} {a[key]!r} != {b[key]!r}"


def snapshot(model: torch.nn.Module, opt: torch.optim.Optimizer, scheduler) -> Dict[str, Any]:
    """Copies of what a checkpoint holds (the reference's state dicts alias its live tensors)."""
    return copy.deepcopy({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": scheduler.state_dict() if scheduler is not None else None})


def pair(architecture: str) -> Tuple[torch.nn.Module, torch.nn.Module]:
    """Two identical networks."""
    model = build(architecture)
    return model, copy.deepcopy(model)


SCHEDULER_FOR: Dict[str, Optional[str]] = {
    "SGD": "cosine", "Adam": "step", "AdamW": "warmup", "RAdam": "cosine",
    "SGDScheduleFree": "step", "AdamWScheduleFree": None, "RAdamScheduleFree": "warmup",
}



def cases(*columns: Any) -> List[Any]:
    """pytest parameters (algorithm, ...) for every algorithm, the Schedule-Free ones marked to
    skip where schedulefree is not installed; ``columns`` name more values per algorithm
    (``"scheduler"``: its :data:`SCHEDULER_FOR`)."""
    out = []
    for algorithm in HYPERPARAMETERS:
        values = [algorithm] + [SCHEDULER_FOR[algorithm] if c == "scheduler" else c for c in columns]
        marks = [needs_schedulefree] if algorithm in SCHEDULE_FREE else []
        out.append(pytest.param(*values, marks=marks, id="-".join(str(v) for v in values)))
    return out
