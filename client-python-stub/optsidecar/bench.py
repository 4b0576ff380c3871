"""``python -m optsidecar.bench``: a PyTorch trainer's optimizer step, remote against local.

For each size, one float32 parameter tensor gets the same random gradients on ``.grad`` in two
copies: one stepped by ``torch.optim.RAdam`` in this process, the other by
``RemoteOptimizer(algorithm="RAdam")`` on an optsidecar server (gradients streamed there, the new
weights streamed back into the parameter). Only ``opt.step()`` is timed; the two optimizers
alternate step by step (and which goes first), so that a busy machine slows both alike. After
the warm-up steps, the median of the timed steps is reported, with the remote step's transfer
rate (2 x parameter bytes per step: gradient in, weights out) and, as a check, the largest
difference between the two copies' weights at the end::

    java -Xmx8g -jar server/target/optsidecar-server.jar &
    python3 -m optsidecar.bench --sizes 1M,10M,50M --repeats 10
    python3 -m optsidecar.bench --start-server server/target/optsidecar-server.jar
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from typing import List, NamedTuple, Optional, Sequence

import torch

from .launch import LocalServer
from .optimizer import RemoteOptimizer

__all__ = ["Row", "parse_size", "bench_size", "format_row", "main"]

_SUFFIXES = {"K": 10**3, "M": 10**6, "G": 10**9}

#: Distinct random gradients cycled through the steps (drawing a new 50M one per step is slow).
_GRADIENTS = 3


class Row(NamedTuple):
    """One size's result: median step times in seconds and the final weight difference."""

    params: int
    local_s: float
    remote_s: float
    max_diff: float

    @property
    def ratio(self) -> float:
        return self.remote_s / self.local_s

    @property
    def transfer_mb_s(self) -> float:
        """The remote step's effective transfer rate: 2 x parameter bytes / step time, in MB/s."""
        return 2 * 4 * self.params / self.remote_s / 1e6


def parse_size(text: str) -> int:
    """``"50M"`` -> 50_000_000; also ``K``, ``G`` and plain integers (decimal multiples)."""
    text = text.strip().upper()
    if text and text[-1] in _SUFFIXES:
        return int(float(text[:-1]) * _SUFFIXES[text[-1]])
    return int(text)


def size_label(n: int) -> str:
    """``50_000_000`` -> ``"50M"``: the inverse of :func:`parse_size` where it is exact."""
    for suffix, factor in sorted(_SUFFIXES.items(), key=lambda kv: -kv[1]):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{suffix}"
    return str(n)


def timed_step(opt: torch.optim.Optimizer) -> float:
    """Seconds one ``opt.step()`` takes."""
    start = time.perf_counter()
    opt.step()
    return time.perf_counter() - start


def bench_size(n: int, target: str, repeats: int, warmup: int, lr: float = 1e-3, seed: int = 0) -> Row:
    """Times local and remote RAdam steps on one tensor of ``n`` parameters, interleaved."""
    generator = torch.Generator().manual_seed(seed)
    local = torch.nn.Parameter(torch.randn(n, generator=generator))
    remote = torch.nn.Parameter(local.detach().clone())
    grads = [torch.randn(n, generator=generator) for _ in range(_GRADIENTS)]
    local_opt = torch.optim.RAdam([local], lr=lr)
    remote_opt = RemoteOptimizer([remote], target=target, algorithm="RAdam",
                                 model=f"bench-{size_label(n)}-{os.getpid()}", lr=lr)
    local_times: List[float] = []
    remote_times: List[float] = []
    try:
        for i in range(warmup + repeats):
            local.grad = remote.grad = grads[i % _GRADIENTS]
            if i % 2 == 0:
                local_s = timed_step(local_opt)
                remote_s = timed_step(remote_opt)
            else:
                remote_s = timed_step(remote_opt)
                local_s = timed_step(local_opt)
            if i >= warmup:
                local_times.append(local_s)
                remote_times.append(remote_s)
        max_diff = (local.detach() - remote.detach()).abs().max().item()
    finally:
        remote_opt.delete()
    return Row(n, statistics.median(local_times), statistics.median(remote_times), max_diff)


def warm_up_server(target: str, steps: int, n: int = 10**6) -> None:
    """Untimed remote steps on a throwaway model, so that the server's JIT compiler has done its
    work before anything is measured (a fresh JVM needs a few dozen steps)."""
    if steps <= 0:
        return
    param = torch.nn.Parameter(torch.zeros(n))
    param.grad = torch.randn(n, generator=torch.Generator().manual_seed(1))
    opt = RemoteOptimizer([param], target=target, algorithm="RAdam", model=f"bench-warmup-{os.getpid()}")
    try:
        for _ in range(steps):
            opt.step()
    finally:
        opt.delete()


def header(target: str, started: bool, repeats: int, warmup: int, server_warmup: int, lr: float) -> str:
    """What the numbers depend on: torch, the cores and threads, the server, the protocol."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return "\n".join([
        f"optsidecar bench: torch {torch.__version__}, {os.cpu_count()} CPUs ({usable} usable), torch threads "
        f"{torch.get_num_threads()} (interop {torch.get_num_interop_threads()})",
        f"  server {target} ({'started here' if started else 'running'}); RAdam lr {lr:g}, one float32 tensor per size",
        f"  opt.step() only: median of {repeats} after {warmup} warm-up steps per size, local and remote alternating "
        f"(server first warmed by {server_warmup} steps of a 1M model)",
        "  MB/s = 2 x params x 4 bytes / remote step time (gradient in, weights out), MB = 10^6 bytes; "
        "max|dw| = largest |local - remote| weight at the end",
    ])


TABLE_HEADER = (f"{'params':>8}  {'local ms':>10}  {'remote ms':>10}  {'remote/local':>12}  {'remote MB/s':>11}  "
                f"{'max|dw|':>8}")


def format_row(r: Row) -> str:
    """One fixed-width line of the result table (columns as :data:`TABLE_HEADER`)."""
    return (f"{size_label(r.params):>8}  {r.local_s * 1e3:>10.2f}  {r.remote_s * 1e3:>10.2f}  "
            f"{r.ratio:>12.2f}  {r.transfer_mb_s:>11.1f}  {r.max_diff:>8.1e}")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m optsidecar.bench", description=__doc__.split("\n\n")[0])
    server = parser.add_mutually_exclusive_group()
    server.add_argument("--target", default="127.0.0.1:50051", help="host:port of a running server")
    server.add_argument("--start-server", metavar="JAR", help="start this server jar on a free port, stop it at the end")
    parser.add_argument("--server-heap", default="8g", help="-Xmx for --start-server (default 8g)")
    parser.add_argument("--sizes", default="1M,10M,50M", help="comma-separated parameter counts (K, M, G suffixes)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per size and optimizer")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per size first")
    parser.add_argument("--server-warmup", type=int, default=40,
                        help="untimed remote steps of a 1M model before all sizes (JIT warm-up)")
    parser.add_argument("--lr", type=float, default=1e-3)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    with contextlib.ExitStack() as stack:
        target = args.target
        if args.start_server:
            server = LocalServer(args.start_server, java_options=[f"-Xmx{args.server_heap}"])
            target = stack.enter_context(server).target
        print(header(target, bool(args.start_server), args.repeats, args.warmup, args.server_warmup, args.lr), flush=True)
        warm_up_server(target, args.server_warmup)
        print(TABLE_HEADER, flush=True)
        for n in sizes:
            print(format_row(bench_size(n, target, args.repeats, args.warmup, args.lr)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
