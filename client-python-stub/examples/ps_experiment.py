#!/usr/bin/env python3
"""Several trainer processes on one model: synchronous against asynchronous steps.

A small MLP (64-64-10) learns scikit-learn's bundled digits (1797 8x8 images, no download). Its
weights and optimizer state live on an optsidecar server; N trainer processes (multiprocessing,
spawn) each train on their own shard of the training set with a ``RemoteOptimizer`` attached to
the shared model. The same run is made twice, from the same initial weights on the same shards:

- sync: a step is applied once every attached trainer has sent its gradient for it (``k=0``),
  their mean; each trainer's ``step()`` waits for the others, and all receive the same weights;
- async: each gradient is applied when it arrives, however many versions behind the weights it
  was computed at are (its staleness); past ``--max-staleness`` it is rejected (the trainer
  pulls the current weights and computes it again) or down-weighted (lr x 1/(1 + staleness)).

This process evaluates: it pulls the eval view (Schedule-Free's x; the train view for algorithms
without one) and measures test accuracy. It prints a table (steps applied, steps and
contributions per second, accuracy, late and rejected contributions, staleness) and writes a PNG
with the final accuracy and steps/s per mode and the async staleness distribution::

    /usr/bin/python3 client-python-stub/examples/ps_experiment.py --out ps_experiment.png

Without ``--target`` it starts the server jar (``--jar``, by default the one the Maven build
makes in server/target) on a free port and stops it at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import queue
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

try:
    import optsidecar  # noqa: F401
except ImportError:  # running from the source tree without PYTHONPATH
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_JAR = Path(__file__).resolve().parents[2] / "server" / "target" / "optsidecar-server.jar"
MODES = ("sync", "async")
HIDDEN = 64


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    server = parser.add_mutually_exclusive_group()
    server.add_argument("--target", help="host:port of a running server (default: start the jar)")
    server.add_argument("--jar", default=os.environ.get("OPTSIDECAR_SERVER_JAR", str(DEFAULT_JAR)),
                        help="server jar to start when no --target is given")
    parser.add_argument("--trainers", type=int, default=4, help="trainer processes (default 4)")
    parser.add_argument("--epochs", type=int, default=20, help="passes of each trainer over its shard")
    parser.add_argument("--algorithm", default="RAdamScheduleFree",
                        help="the server's optimizer: RAdamScheduleFree (default), AdamW, ...")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=32, help="each trainer's mini-batch")
    parser.add_argument("--max-staleness", type=int, default=4,
                        help="async: largest staleness accepted as is (0: no bound)")
    parser.add_argument("--stale", choices=("reject", "downweight"), default="downweight",
                        help="async: what happens to a gradient past the bound")
    parser.add_argument("--warmup-epochs", type=int, default=1,
                        help="an unmeasured run of each mode first, so the server's JIT is warm for both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="ps_experiment.png", help="where to write the figure (PNG)")
    args = parser.parse_args(argv)
    if args.trainers < 1 or args.epochs < 1 or args.batch_size < 1 or args.warmup_epochs < 0:
        parser.error("--trainers, --epochs and --batch-size must be at least 1, --warmup-epochs at least 0")
    return args


# -- data and model ------------------------------------------------------------------------------

class Data(NamedTuple):
    """Standardized digits: float32 features and int64 labels, split into train and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_data(seed: int) -> Data:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(x_train)
    return Data(scaler.transform(x_train).astype(np.float32), y_train.astype(np.int64),
                scaler.transform(x_test).astype(np.float32), y_test.astype(np.int64))


def shards(n_samples: int, trainers: int, seed: int) -> List[np.ndarray]:
    """Each trainer's sample indexes: a seeded permutation of the training set cut in equal parts
    (the few left over are dropped, so every trainer makes as many steps)."""
    order = np.random.RandomState(seed).permutation(n_samples)
    size = n_samples // trainers
    return [order[r * size:(r + 1) * size] for r in range(trainers)]


def make_model(seed: int):
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10))


# -- trainers ------------------------------------------------------------------------------------

class Job(NamedTuple):
    mode: str
    model: str
    epochs: int


def trainer(rank: int, target: str, x: np.ndarray, y: np.ndarray, settings: Dict[str, Any],
            jobs: "mp.Queue", results: "mp.Queue") -> None:
    """A trainer process: for each job, attaches to the job's model, reports ready, waits for the
    go, trains the job's epochs over its shard, and reports what its steps did."""
    try:
        import torch
        import torch.nn.functional as F

        from optsidecar import RemoteOptimizer, StaleGradient

        torch.set_num_threads(1)
        features, labels = torch.from_numpy(x), torch.from_numpy(y)
        batch_size = settings["batch_size"]
        for job in iter(jobs.get, None):
            model = make_model(settings["seed"])  # the weights come from the server on attach
            opt = RemoteOptimizer(model.named_parameters(), target=target, model=job.model, client_id=f"trainer-{rank}",
                                  attach=True)
            counts = dict(steps=0, late=0, rejected=0)
            try:
                opt.join()
                results.put(("ready", rank, None))
                assert jobs.get() == "go"
                for epoch in range(job.epochs):
                    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(
                        settings["seed"] * 100_003 + rank * 1_009 + epoch))
                    for batch in order.split(batch_size):
                        xb, yb = features[batch], labels[batch]
                        while True:
                            opt.zero_grad()
                            F.cross_entropy(model(xb), yb).backward()
                            try:
                                opt.step()
                                break
                            except StaleGradient:
                                counts["rejected"] += 1
                                opt.pull()  # the current weights; the gradient is taken again there
                        counts["steps"] += 1
                        counts["late"] += opt.last_result.late
            finally:
                opt.close()
            results.put(("done", rank, counts))
    except BaseException:
        results.put(("error", rank, traceback.format_exc()))


class Trainers:
    """The trainer processes, started once (spawn) and given one job per mode."""

    def __init__(self, count: int, target: str, data: Data, settings: Dict[str, Any]):
        context = mp.get_context("spawn")
        self.results = context.Queue()
        self.jobs = [context.Queue() for _ in range(count)]
        self.processes = []
        for rank, indexes in enumerate(shards(len(data.y_train), count, settings["seed"])):
            p = context.Process(target=trainer, name=f"trainer-{rank}", daemon=True,
                                args=(rank, target, data.x_train[indexes], data.y_train[indexes], settings,
                                      self.jobs[rank], self.results))
            p.start()
            self.processes.append(p)

    def collect(self, kind: str, timeout: float = 120.0) -> Dict[int, Any]:
        """Waits for a ``kind`` message from every trainer; an error in one is raised here."""
        got: Dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self.processes):
            try:
                what, rank, payload = self.results.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"trainers {sorted(set(range(len(self.processes))) - set(got))} did not "
                                   f"report {kind!r} in time") from None
            if what == "error":
                raise RuntimeError(f"trainer {rank} failed:\n{payload}")
            got[rank] = payload
        return got

    def send(self, message: Any) -> None:
        for q in self.jobs:
            q.put(message)

    def stop(self) -> None:
        self.send(None)
        for p in self.processes:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join()


# -- one run per mode ----------------------------------------------------------------------------

class Outcome(NamedTuple):
    mode: str
    trainers: int
    steps: int
    seconds: float
    contributions: int
    accuracy: float
    late: int
    rejected: int
    staleness_mean: float
    staleness_max: int
    staleness_histogram: Tuple[int, ...]

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds

    @property
    def contributions_per_second(self) -> float:
        return self.contributions / self.seconds


def coordination(mode: str, args: argparse.Namespace) -> Dict[str, Any]:
    if mode == "sync":
        return dict(mode="sync", k=0, combine="mean")
    return dict(mode="async", max_staleness=args.max_staleness, stale=args.stale)


def run_mode(mode: str, args: argparse.Namespace, target: str, data: Data, trainers: Trainers,
             epochs: int) -> Outcome:
    """Registers a fresh model in ``mode``, lets the trainers train it ``epochs`` epochs, and
    evaluates it."""
    import torch

    from optsidecar import Client, RemoteOptimizer
    from optsidecar.v1 import optimizer_pb2 as pb

    name = f"ps-{mode}-{os.getpid()}-{int(time.time() * 1000)}"
    model = make_model(args.seed)
    registrar = RemoteOptimizer(model.named_parameters(), target=target, algorithm=args.algorithm, model=name,
                                coordination=coordination(mode, args), lr=args.lr)
    registrar.close()  # it only registered the model; the trainers attach to it
    with Client(target) as client:
        try:
            trainers.send(Job(mode, name, epochs))
            trainers.collect("ready")
            client.wait_for_trainers(name, args.trainers)  # every trainer counts in the first sync step
            start = time.perf_counter()
            trainers.send("go")
            done = trainers.collect("done")
            seconds = time.perf_counter() - start

            info = client.describe(name)
            view = "eval" if any(v.kind == pb.VIEW_EVAL for v in info.views) else "train"
            client.pull(name, view, list(model.parameters()))
            with torch.no_grad():
                predicted = model(torch.from_numpy(data.x_test)).argmax(dim=1).numpy()
            accuracy = float((predicted == data.y_test).mean())
            # What the trainers saw and what the server counted agree.
            status = client.coordination(name)
            history = client.history(name, 1)
            assert len(history) == info.version
            assert sum(len(v.contributions) for v in history) == status.contributions_applied
            assert sum(c["steps"] for c in done.values()) == status.contributions_applied + status.contributions_late
            assert sum(c["late"] for c in done.values()) == status.contributions_late
            assert sum(c["rejected"] for c in done.values()) == status.contributions_rejected
        finally:
            client.delete(name)
    return Outcome(mode, args.trainers, info.version, seconds, status.contributions_applied, accuracy,
                   status.contributions_late, status.contributions_rejected, status.staleness_mean,
                   status.staleness_max, status.staleness_histogram)


# -- report --------------------------------------------------------------------------------------

def table(outcomes: Sequence[Outcome]) -> str:
    header = (f"{'mode':<6} {'trainers':>8} {'steps':>6} {'steps/s':>8} {'contrib/s':>9} {'test acc':>8} "
              f"{'late':>5} {'rejected':>8} {'stale mean':>10} {'stale max':>9}")
    lines = [header, "-" * len(header)]
    for o in outcomes:
        # The server's last histogram bucket counts staleness 16 and above.
        open_ended = len(o.staleness_histogram) == 17 and o.staleness_max == 16
        most = f"{o.staleness_max}+" if open_ended else str(o.staleness_max)
        lines.append(f"{o.mode:<6} {o.trainers:>8} {o.steps:>6} {o.steps_per_second:>8.1f} "
                     f"{o.contributions_per_second:>9.1f} {o.accuracy:>8.4f} {o.late:>5} {o.rejected:>8} "
                     f"{o.staleness_mean:>10.2f} {most:>9}")
    return "\n".join(lines)


def plot(outcomes: Sequence[Outcome], path: str, title: str, max_staleness: int, stale: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [o.mode for o in outcomes]
    colors = {"sync": "tab:blue", "async": "tab:orange"}
    fig, (acc, speed, staleness) = plt.subplots(1, 3, figsize=(14, 4.2))

    bars = acc.bar(modes, [o.accuracy for o in outcomes], color=[colors[m] for m in modes])
    acc.bar_label(bars, fmt="%.3f")
    acc.set(title="Final test accuracy (eval view)", ylabel="accuracy",
            ylim=(max(0.0, min(o.accuracy for o in outcomes) - 0.15), 1.02))

    positions = np.arange(len(outcomes))
    steps = speed.bar(positions - 0.2, [o.steps_per_second for o in outcomes], 0.4,
                      color=[colors[m] for m in modes])
    contributions = speed.bar(positions + 0.2, [o.contributions_per_second for o in outcomes], 0.4,
                              color=[colors[m] for m in modes], alpha=0.45, hatch="//")
    speed.bar_label(steps, fmt="%.0f")
    speed.bar_label(contributions, fmt="%.0f")
    speed.set_xticks(positions, modes)
    speed.set(title="Throughput", ylabel="per second",
              ylim=(0, 1.45 * max(max(o.steps_per_second, o.contributions_per_second) for o in outcomes)))
    from matplotlib.patches import Patch

    speed.legend(handles=[Patch(color="gray", label="steps applied/s"),
                          Patch(facecolor="gray", alpha=0.45, hatch="//", label="gradients applied/s")],
                 loc="upper center", ncol=2)

    asynchronous = next(o for o in outcomes if o.mode == "async")
    histogram = list(asynchronous.staleness_histogram) or [0]
    labels = [str(s) for s in range(len(histogram))]
    if len(histogram) == 17:  # the server's last bucket holds 16 and above
        labels[-1] = "16+"
    beyond = [bool(max_staleness) and s > max_staleness for s in range(len(histogram))]
    staleness.bar(labels, histogram, color=["tab:red" if b else colors["async"] for b in beyond])
    if max_staleness and any(beyond):
        staleness.axvline(max_staleness + 0.5, color="gray", linestyle="--", linewidth=1)
        staleness.text(max_staleness + 0.6, max(histogram) * 0.9,
                       "down-weighted" if stale == "downweight" else "rejected", color="tab:red")
    staleness.set_ylim(0, 1.2 * max(max(histogram), 1))
    if asynchronous.rejected:  # rejected gradients were never applied: not in the histogram
        staleness.text(0.97, 0.95, f"{asynchronous.rejected} rejected (staleness > {max_staleness})",
                       transform=staleness.transAxes, ha="right", va="top", color="tab:red")
    staleness.set(title=f"Async staleness (mean {asynchronous.staleness_mean:.2f}, "
                        f"bound {max_staleness or 'none'})",
                  xlabel="staleness of an applied gradient (versions)", ylabel="applied gradients")
    for ax in (acc, speed, staleness):
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    data = load_data(args.seed)
    settings = dict(seed=args.seed, batch_size=args.batch_size)
    with contextlib.ExitStack() as stack:
        target = args.target
        if target is None:
            from optsidecar.launch import LocalServer

            target = stack.enter_context(LocalServer(args.jar, server_args=["--threads", "1"])).target
        trainers = Trainers(args.trainers, target, data, settings)
        stack.callback(trainers.stop)
        shard = len(data.y_train) // args.trainers
        print(f"digits: {args.trainers} trainers x {shard} training images ({-(-shard // args.batch_size)} "
              f"batches of {args.batch_size} per epoch), {args.epochs} epochs, {args.algorithm} lr {args.lr}, "
              f"{len(data.y_test)} test images; server {target}", flush=True)
        if args.warmup_epochs:
            for mode in MODES:
                run_mode(mode, args, target, data, trainers, args.warmup_epochs)
        outcomes = [run_mode(mode, args, target, data, trainers, args.epochs) for mode in MODES]
    print(table(outcomes))
    print(f"async: max_staleness {args.max_staleness or 'unbounded'}, stale policy {args.stale}; "
          f"sync: k = all attached trainers, mean of their gradients")
    plot(outcomes, args.out, f"{args.trainers} trainer processes on digits, {args.algorithm} lr {args.lr}, "
                             f"{args.epochs} epochs", args.max_staleness, args.stale)
    print(f"figure written to {args.out} ({time.perf_counter() - started:.1f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
