#!/usr/bin/env python3
"""Handwritten digits: remote Schedule-Free RAdam against local AdamW with a cosine schedule.

Trains the same small MLP (64-128-10 with BatchNorm) twice on scikit-learn's bundled digits
dataset (1797 8x8 images, no download), from the same initial weights on the same batches:

- with ``RemoteOptimizer(algorithm="RAdamScheduleFree")``, the optimizer running on an optsidecar
  server, evaluated at its eval view x (``opt.eval()`` before evaluating, ``opt.train()`` after,
  BatchNorm statistics recomputed at x with ``recalibrate_batchnorm``);
- with ``torch.optim.AdamW`` and ``CosineAnnealingLR`` stepped every batch, in this process.

Prints the test accuracy of both after every epoch and a final summary, and plots the curves
(``--wire-dtype bfloat16`` sends gradients and weights as bfloat16, the server keeping float32)::

    java -jar server/target/optsidecar-server.jar &       # or: --start-server server/target/optsidecar-server.jar
    /usr/bin/python3 client-python-stub/examples/digits.py --plot digits.png
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

try:
    import optsidecar  # noqa: F401
except ImportError:  # running from the source tree without PYTHONPATH
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optsidecar import RemoteOptimizer, recalibrate_batchnorm
from optsidecar.launch import LocalServer

Batch = Tuple[torch.Tensor, torch.Tensor]


class Data(NamedTuple):
    """The standardized digits, split into training and test sets."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


class History(NamedTuple):
    """Per-epoch figures of both runs."""

    sf_accuracy: List[float]
    adamw_accuracy: List[float]
    sf_loss: List[float]
    adamw_loss: List[float]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    server = parser.add_mutually_exclusive_group()
    server.add_argument("--target", default="127.0.0.1:50051", help="host:port of a running server")
    server.add_argument("--start-server", metavar="JAR", help="start this server jar on a free port, stop it at the end")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sf-lr", type=float, default=0.01, help="RAdamScheduleFree learning rate")
    parser.add_argument("--sf-weight-decay", type=float, default=0.0, help="RAdamScheduleFree weight decay (at y)")
    parser.add_argument("--adamw-lr", type=float, default=0.005, help="AdamW peak learning rate (cosine to 0)")
    parser.add_argument("--adamw-weight-decay", type=float, default=0.01, help="AdamW decoupled weight decay")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wire-dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="element type of gradients and weights between this process and the server "
                             "(the server keeps float32 master weights and state)")
    parser.add_argument("--plot", default="digits.png", help="where to write the accuracy plot (PNG)")
    return parser.parse_args(argv)


def load_data(seed: int, test_size: float = 0.25) -> Data:
    """The digits, split stratified into train and test, standardized with the training set's
    mean and deviation."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(x_train)

    def features(a) -> torch.Tensor:
        return torch.tensor(scaler.transform(a), dtype=torch.float32)

    return Data(features(x_train), torch.tensor(y_train), features(x_test), torch.tensor(y_test))


def make_model(seed: int, hidden: int = 128) -> torch.nn.Module:
    """A 64-hidden-10 MLP with BatchNorm, its weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.BatchNorm1d(hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10))


def decay_groups(model: torch.nn.Module, weight_decay: float, named: bool = True) -> List[Dict]:
    """Linear weights with weight decay; biases and BatchNorm's affine parameters without. With
    ``named``, parameters come as (name, tensor) pairs, which RemoteOptimizer uses as tensor names."""
    params = list(model.named_parameters()) if named else [(None, p) for p in model.parameters()]
    decayed = [(n, p) if named else p for n, p in params if p.dim() > 1]
    others = [(n, p) if named else p for n, p in params if p.dim() <= 1]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]


def epoch_batches(data: Data, batch_size: int, seed: int, epoch: int) -> List[Batch]:
    """The epoch's shuffled mini-batches, the same for every optimizer; the last incomplete
    batch is dropped (BatchNorm needs more than one sample, and equal batches keep it simple)."""
    order = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    count = len(order) // batch_size
    return [(data.x_train[i], data.y_train[i]) for i in order[:count * batch_size].split(batch_size)]


def in_order(data: Data, batch_size: int) -> Iterator[Batch]:
    """The whole training set in order, for recomputing BatchNorm statistics."""
    return zip(data.x_train.split(batch_size), data.y_train.split(batch_size))


def train_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: List[Batch],
                scheduler: Optional[torch.optim.lr_scheduler._LRScheduler] = None) -> float:
    """One pass over ``batches``; returns the mean training loss."""
    model.train()
    total = 0.0
    for x, y in batches:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item()
    return total / len(batches)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` classified as ``y``, with the model in eval mode."""
    model.eval()
    return (model(x).argmax(dim=1) == y).float().mean().item()


def schedule_free_accuracy(model: torch.nn.Module, opt: RemoteOptimizer, data: Data, batch_size: int) -> float:
    """Test accuracy at the eval view x: x into the parameters and BatchNorm statistics recomputed
    there, evaluation, then y back into the parameters for training."""
    model.eval()
    recalibrate_batchnorm(model, opt, in_order(data, batch_size), num_batches=None)  # also does opt.eval()
    try:
        return accuracy(model, data.x_test, data.y_test)
    finally:
        opt.train()
        model.train()


def train(args: argparse.Namespace, target: str) -> History:
    """Both runs, epoch by epoch, printing one line per epoch."""
    data = load_data(args.seed)
    sf_model = make_model(args.seed)
    adamw_model = copy.deepcopy(sf_model)
    sf_opt = RemoteOptimizer(decay_groups(sf_model, args.sf_weight_decay), target=target, algorithm="RAdamScheduleFree",
                             model=f"digits-{int(time.time() * 1000)}", lr=args.sf_lr, wire_dtype=args.wire_dtype)
    adamw_opt = torch.optim.AdamW(decay_groups(adamw_model, args.adamw_weight_decay, named=False), lr=args.adamw_lr)
    steps_per_epoch = len(data.y_train) // args.batch_size
    adamw_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(adamw_opt, T_max=args.epochs * steps_per_epoch)

    print(f"digits: {len(data.y_train)} train / {len(data.y_test)} test images, {steps_per_epoch} steps per epoch; "
          f"RAdamScheduleFree lr {args.sf_lr} on {target} ({args.wire_dtype} on the wire) vs local AdamW "
          f"lr {args.adamw_lr} with cosine decay")
    print(f"{'epoch':>5}  {'loss SF':>8}  {'loss AdamW':>10}  {'acc SF(x)':>9}  {'acc AdamW':>9}  {'lr AdamW':>9}")
    history = History([], [], [], [])
    try:
        for epoch in range(1, args.epochs + 1):
            batches = epoch_batches(data, args.batch_size, args.seed, epoch)
            history.sf_loss.append(train_epoch(sf_model, sf_opt, batches))
            history.adamw_loss.append(train_epoch(adamw_model, adamw_opt, batches, adamw_schedule))
            history.sf_accuracy.append(schedule_free_accuracy(sf_model, sf_opt, data, args.batch_size))
            history.adamw_accuracy.append(accuracy(adamw_model, data.x_test, data.y_test))
            print(f"{epoch:>5}  {history.sf_loss[-1]:>8.4f}  {history.adamw_loss[-1]:>10.4f}  "
                  f"{history.sf_accuracy[-1]:>9.4f}  {history.adamw_accuracy[-1]:>9.4f}  "
                  f"{adamw_schedule.get_last_lr()[0]:>9.2e}", flush=True)
    finally:
        sf_opt.delete()
    return history


def zoom_start(epochs: int) -> int:
    """The first epoch of the zoomed accuracy panel: past the first fifth of the run (at least
    epoch 2), when both runs have left their steep start."""
    return min(epochs, max(2, round(epochs / 5)))


def plot(history: History, path: str, title: str) -> None:
    """Test accuracy (whole run, and zoomed to the later epochs, where the runs differ by a few test
    images) and training loss of both runs per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = list(range(1, len(history.sf_accuracy) + 1))
    first = zoom_start(len(epochs))
    later = history.sf_accuracy[first - 1:] + history.adamw_accuracy[first - 1:]
    floor = max(0.0, math.floor((min(later) - 0.005) * 100) / 100)
    fig, (acc, zoom, loss) = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax in (acc, zoom):
        ax.plot(epochs, history.sf_accuracy, "o-", ms=3, label="RAdamScheduleFree, remote (eval view x)")
        ax.plot(epochs, history.adamw_accuracy, "s-", ms=3, label="AdamW + cosine, local")
        ax.set(xlabel="epoch", ylabel="test accuracy")
    acc.set(title="Test accuracy", ylim=(0.0, 1.0))
    zoom.set(title=f"Test accuracy from epoch {first}", xlim=(first - 0.5, len(epochs) + 0.5), ylim=(floor, 1.0))
    loss.plot(epochs, history.sf_loss, "o-", ms=3, label="RAdamScheduleFree (at y)")
    loss.plot(epochs, history.adamw_loss, "s-", ms=3, label="AdamW + cosine")
    loss.set(xlabel="epoch", ylabel="mean cross-entropy", title="Training loss", yscale="log")
    for ax in (acc, zoom, loss):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is not loss else "upper right", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        target = args.target
        if args.start_server:
            target = stack.enter_context(LocalServer(args.start_server)).target
        history = train(args, target)
    sf, adamw = history.sf_accuracy[-1], history.adamw_accuracy[-1]
    summary = (f"final test accuracy after {args.epochs} epochs: RAdamScheduleFree (remote, eval view) {sf:.4f}, "
               f"AdamW + cosine (local) {adamw:.4f}; {args.wire_dtype} on the wire")
    plot(history, args.plot, f"digits, 64-128-10 MLP: RAdamScheduleFree {sf:.4f} vs AdamW + cosine {adamw:.4f}")
    print(summary)
    print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
