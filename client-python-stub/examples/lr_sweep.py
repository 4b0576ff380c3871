#!/usr/bin/env python3
"""Learning-rate sweep: Adam, RAdam, AdamW + cosine and Schedule-Free RAdam on one server.

Trains a small CNN on scikit-learn's bundled digits dataset (8x8 images as 1x8x8, the split and
batches of ``digits.py``) with each optimizer at each learning rate and seed, every run its own
model on the same optsidecar server (``sweep/radam/lr=0.003/seed=1``, ...), all runs at once in
threads, so they train side by side. Then it writes, under ``--out-dir``:

- ``runs.csv``: one row per run (final test accuracy, last epoch's training loss, divergence);
- ``table.csv`` and ``table.md``: final test accuracy per optimizer and lr, mean ± sample standard
  deviation over the seeds, with min and max;
- ``accuracy_vs_lr.png``: final test accuracy against lr (log axis) per optimizer, the mean with a
  min-max band over the seeds, in full and zoomed to the top.

The optimizers, all run by the server:

- ``adam``: ``Adam`` (torch's), constant lr, no weight decay;
- ``radam``: ``RAdam`` (torch's), constant lr, no weight decay;
- ``adamw_cosine``: ``AdamW``, weight decay 0.01, the server's ``cosine`` schedule from the lr to 0
  over the whole run (``--cosine-warmup-steps`` of linear warmup first, 0 by default);
- ``radam_sf``: ``RAdamScheduleFree``, constant lr, evaluated at its eval view x.

A seed fixes the initial weights and the batch order; the train/test split is the same for all
runs. Each run is deterministic given its seed (the CNN has no dropout or BatchNorm, torch runs
single-threaded)::

    java -jar server/target/optsidecar-server.jar &       # or: --start-server server/target/optsidecar-server.jar
    /usr/bin/python3 client-python-stub/examples/lr_sweep.py --out-dir lr_sweep
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

try:
    import optsidecar  # noqa: F401
except ImportError:  # running from the source tree without PYTHONPATH
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from digits import Data, accuracy, epoch_batches, load_data  # noqa: E402 - the example beside this one

from optsidecar import RemoteOptimizer  # noqa: E402
from optsidecar.errors import InvalidArgument  # noqa: E402
from optsidecar.launch import LocalServer  # noqa: E402

#: The train/test split of every run (seeds vary the initial weights and the batch order only).
SPLIT_SEED = 0
DEFAULT_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


class Setup(NamedTuple):
    """How one optimizer of the sweep is configured on the server."""

    label: str
    algorithm: str
    weight_decay: float
    cosine: bool
    eval_view: bool


OPTIMIZERS: Dict[str, Setup] = {
    "adam": Setup("Adam", "Adam", 0.0, cosine=False, eval_view=False),
    "radam": Setup("RAdam", "RAdam", 0.0, cosine=False, eval_view=False),
    "adamw_cosine": Setup("AdamW + cosine", "AdamW", 0.01, cosine=True, eval_view=False),
    "radam_sf": Setup("RAdamScheduleFree (x)", "RAdamScheduleFree", 0.0, cosine=False, eval_view=True),
}


class RunKey(NamedTuple):
    optimizer: str
    lr: float
    seed: int


class RunResult(NamedTuple):
    key: RunKey
    accuracy: float
    train_loss: float
    diverged: bool
    seconds: float


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    server = parser.add_mutually_exclusive_group()
    server.add_argument("--target", default="127.0.0.1:50051", help="host:port of a running server")
    server.add_argument("--start-server", metavar="JAR", help="start this server jar on a free port, stop it at the end")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                        help=f"comma-separated, from {', '.join(OPTIMIZERS)} (default: all)")
    parser.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in DEFAULT_LRS),
                        help="comma-separated learning rates (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per optimizer and lr (default: 3)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cosine-warmup-steps", type=int, default=0, help="linear warmup before AdamW's cosine")
    parser.add_argument("--workers", type=int, default=0,
                        help="runs training at once (default 0: all of them)")
    parser.add_argument("--name-prefix", default="sweep", help="model names are PREFIX/optimizer/lr=../seed=..")
    parser.add_argument("--out-dir", default="lr_sweep", help="where the tables and the plot go")
    args = parser.parse_args(argv)
    args.optimizers = [name.strip() for name in args.optimizers.split(",") if name.strip()]
    unknown = [name for name in args.optimizers if name not in OPTIMIZERS]
    if unknown or not args.optimizers:
        parser.error(f"--optimizers: unknown {unknown}; choose from {list(OPTIMIZERS)}")
    try:
        args.lrs = sorted({float(lr) for lr in args.lrs.split(",") if lr.strip()})
    except ValueError as e:
        parser.error(f"--lrs: {e}")
    if not args.lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in args.lrs):
        parser.error("--lrs: give positive, finite learning rates")
    for flag in ("seeds", "epochs", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def make_cnn() -> torch.nn.Module:
    """Two 3x3 convolutions (8 and 16 channels) and a linear head: 3,818 parameters."""
    return torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, 8, 8)),
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 10))


def seeded_cnn(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return make_cnn()


def model_name(prefix: str, key: RunKey) -> str:
    return f"{prefix}/{key.optimizer.replace('_', '-')}/lr={key.lr:g}/seed={key.seed}"


def open_optimizer(key: RunKey, model: torch.nn.Module, args: argparse.Namespace, target: str,
                   steps: int) -> RemoteOptimizer:
    """The run's optimizer, registering its model on the server (ephemeral: deleted on close, or
    when its lease lapses if this process dies)."""
    setup = OPTIMIZERS[key.optimizer]
    decayed = [(n, p) for n, p in model.named_parameters() if p.dim() > 1]
    others = [(n, p) for n, p in model.named_parameters() if p.dim() <= 1]
    groups = [{"params": decayed, "weight_decay": setup.weight_decay}, {"params": others, "weight_decay": 0.0}]
    schedule = (dict(type="cosine", warmup_steps=args.cosine_warmup_steps, total_steps=steps)
                if setup.cosine else None)
    return RemoteOptimizer(groups, key.lr, target=target, algorithm=setup.algorithm,
                           model=model_name(args.name_prefix, key), ephemeral=True, schedule=schedule)


def evaluate(model: torch.nn.Module, opt: RemoteOptimizer, key: RunKey, data: Data) -> float:
    """Test accuracy at the optimizer's eval view (Schedule-Free's x), then back to the train view."""
    if OPTIMIZERS[key.optimizer].eval_view:
        opt.eval()
    try:
        return accuracy(model, data.x_test, data.y_test)
    finally:
        opt.train()
        model.train()


def train_run(key: RunKey, model: torch.nn.Module, opt: RemoteOptimizer, data: Data,
              args: argparse.Namespace) -> RunResult:
    """One run to the end. A run whose loss or gradient turns non-finite stops there and is scored
    as it stands."""
    started = time.monotonic()
    diverged = False
    losses: List[float] = []
    model.train()
    for epoch in range(1, args.epochs + 1):
        losses = []
        for x, y in epoch_batches(data, args.batch_size, key.seed, epoch):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            if not torch.isfinite(loss):
                diverged = True
                break
            loss.backward()
            opt.log(loss=loss.item())  # the run's curve, live in the server's dashboard
            try:
                opt.step()
            except InvalidArgument as e:
                if e.reason != "NON_FINITE_GRADIENT":
                    raise
                diverged = True
                break
            losses.append(loss.item())
        if diverged:
            break
        if epoch < args.epochs:
            opt.client.log_figures(opt.model, eval_accuracy=evaluate(model, opt, key, data))
    test_accuracy = evaluate(model, opt, key, data)
    opt.client.log_figures(opt.model, eval_accuracy=test_accuracy)
    train_loss = statistics.fmean(losses) if losses else math.nan
    return RunResult(key, test_accuracy, train_loss, diverged, time.monotonic() - started)


def sweep(args: argparse.Namespace, target: str) -> List[RunResult]:
    """Registers every run's model (one after the other: a server takes a bounded number of
    registrations at once), then trains all runs at once (or ``--workers`` at a time), printing one
    line per finished run. The models stay on the server side by side until every run is done."""
    torch.set_num_threads(1)  # the same arithmetic on any machine, and the cores left to the server
    data = load_data(SPLIT_SEED)
    keys = [RunKey(o, lr, s) for o in args.optimizers for lr in args.lrs for s in range(args.seeds)]
    workers = args.workers if args.workers > 0 else len(keys)
    steps_per_epoch = len(data.y_train) // args.batch_size
    print(f"lr sweep: {len(keys)} runs ({len(args.optimizers)} optimizers x {len(args.lrs)} lrs x {args.seeds} "
          f"seeds), {args.epochs} epochs of {steps_per_epoch} steps, {workers} at a time, on {target}; "
          f"{len(data.y_train)} train / {len(data.y_test)} test images", flush=True)
    opened: Dict[RunKey, RemoteOptimizer] = {}
    results: List[RunResult] = []
    try:
        models = {}
        for key in keys:
            models[key] = seeded_cnn(key.seed)
            opened[key] = open_optimizer(key, models[key], args, target, args.epochs * steps_per_epoch)
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="run") as pool:
            futures = [pool.submit(train_run, key, models[key], opened[key], data, args) for key in keys]
            for future in concurrent.futures.as_completed(futures):
                result = future.result()
                results.append(result)
                print(f"{model_name(args.name_prefix, result.key):<40} test accuracy {result.accuracy:.4f}  "
                      f"train loss {result.train_loss:.4f}{'  diverged' if result.diverged else ''}  "
                      f"({result.seconds:.1f} s)", flush=True)
    finally:
        for opt in opened.values():
            opt.close()
    return sorted(results, key=lambda r: r.key)


class Cell(NamedTuple):
    """Final test accuracy of one optimizer at one lr, over its seeds."""

    optimizer: str
    lr: float
    mean: float
    std: float
    low: float
    high: float
    seeds: int
    diverged: int


def summarize(results: Sequence[RunResult]) -> List[Cell]:
    groups: Dict[tuple, List[RunResult]] = {}
    for r in results:
        groups.setdefault((r.key.optimizer, r.key.lr), []).append(r)
    cells = []
    for (optimizer, lr), runs in groups.items():
        accuracies = [r.accuracy for r in runs]
        std = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        cells.append(Cell(optimizer, lr, statistics.fmean(accuracies), std, min(accuracies), max(accuracies),
                          len(runs), sum(r.diverged for r in runs)))
    order = list(OPTIMIZERS)
    return sorted(cells, key=lambda c: (order.index(c.optimizer), c.lr))


def near_best(cells: Sequence[Cell], optimizer: str, within: float = 0.01) -> List[float]:
    """The lrs at which ``optimizer``'s mean accuracy is within ``within`` of its best mean."""
    own = [c for c in cells if c.optimizer == optimizer]
    best = max(c.mean for c in own)
    return [c.lr for c in own if c.mean >= best - within]


def write_runs_csv(results: Sequence[RunResult], path: Path) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["optimizer", "lr", "seed", "test_accuracy", "train_loss", "diverged", "seconds"])
        for r in results:
            out.writerow([r.key.optimizer, f"{r.key.lr:g}", r.key.seed, f"{r.accuracy:.4f}", f"{r.train_loss:.5f}",
                          int(r.diverged), f"{r.seconds:.1f}"])


def write_table_csv(cells: Sequence[Cell], path: Path) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["optimizer", "lr", "mean", "std", "min", "max", "seeds", "diverged"])
        for c in cells:
            out.writerow([c.optimizer, f"{c.lr:g}", f"{c.mean:.4f}", f"{c.std:.4f}", f"{c.low:.4f}", f"{c.high:.4f}",
                          c.seeds, c.diverged])


def markdown_table(cells: Sequence[Cell], optimizers: Sequence[str]) -> str:
    """lr down, optimizers across, mean ± std per cell (the best mean of each optimizer in bold),
    then a row with the lrs within one point of each optimizer's best."""
    lrs = sorted({c.lr for c in cells})
    by_key = {(c.optimizer, c.lr): c for c in cells}
    best = {o: max(by_key[o, lr].mean for lr in lrs) for o in optimizers}
    lines = ["| lr | " + " | ".join(OPTIMIZERS[o].label for o in optimizers) + " |",
             "|---|" + "---|" * len(optimizers)]
    for lr in lrs:
        row = []
        for o in optimizers:
            c = by_key[o, lr]
            text = f"{c.mean:.3f} ± {c.std:.3f}"
            text = f"**{text}**" if c.mean == best[o] else text
            row.append(text + (f" ({c.diverged} diverged)" if c.diverged else ""))
        lines.append(f"| {lr:g} | " + " | ".join(row) + " |")
    spans = []
    for o in optimizers:
        good = near_best(cells, o)
        spans.append(f"{len(good)}: {min(good):g} to {max(good):g}")
    lines.append("| lrs within 0.01 of best | " + " | ".join(spans) + " |")
    return "\n".join(lines) + "\n"


def plot(cells: Sequence[Cell], optimizers: Sequence[str], path: Path, title: str) -> None:
    """Mean final accuracy against lr with the seeds' min-max band: the whole range, and zoomed to
    where the good runs differ (from a bit below the lowest of the optimizers' best lows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, 2, figsize=(10, 4.2))
    markers = "osD^v"
    for index, o in enumerate(optimizers):
        own = [c for c in cells if c.optimizer == o]
        lrs = [c.lr for c in own]
        for ax in panels:
            line, = ax.plot(lrs, [c.mean for c in own], marker=markers[index % len(markers)], ms=4,
                            label=OPTIMIZERS[o].label)
            ax.fill_between(lrs, [c.low for c in own], [c.high for c in own], color=line.get_color(), alpha=0.18,
                            linewidth=0)
    best_lows = [max(c.low for c in cells if c.optimizer == o) for o in optimizers]
    zoom_floor = max(0.0, math.floor((min(best_lows) - 0.03) * 100) / 100)
    panels[0].set(ylim=(0.0, 1.0), title="final test accuracy")
    panels[1].set(ylim=(zoom_floor, 1.0), title=f"zoomed: {zoom_floor:.2f} to 1")
    for ax in panels:
        ax.set(xscale="log", xlabel="learning rate", ylabel="test accuracy")
        ax.grid(alpha=0.3, which="both")
    fig.legend(*panels[0].get_legend_handles_labels(), loc="lower center", ncol=len(optimizers), fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        target = args.target
        if args.start_server:
            target = stack.enter_context(LocalServer(args.start_server)).target
        started = time.monotonic()
        results = sweep(args, target)
        elapsed = time.monotonic() - started
    cells = summarize(results)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_runs_csv(results, out / "runs.csv")
    write_table_csv(cells, out / "table.csv")
    table = markdown_table(cells, args.optimizers)
    (out / "table.md").write_text(table)
    plot(cells, args.optimizers, out / "accuracy_vs_lr.png",
         f"digits CNN, {args.epochs} epochs: final test accuracy over {args.seeds} seed(s), mean and min-max")
    print(f"\nfinal test accuracy after {args.epochs} epochs, mean ± std over {args.seeds} seed(s):\n")
    print(table)
    print(f"{len(results)} runs in {elapsed:.0f} s; written to {out}: runs.csv, table.csv, table.md, accuracy_vs_lr.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
