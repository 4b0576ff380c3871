"""``python -m optsidecar.bench``: a PyTorch trainer's optimizer step, remote against local.

For each size, float32 parameter tensors of that many elements get the same random gradients on
``.grad``: one stepped by ``torch.optim.RAdam`` in this process, one by the fastest local step
torch offers (``AdamW(fused=True)`` where torch has it, else foreach AdamW), and one by
``RemoteOptimizer(algorithm="RAdam")`` for each way of reaching the server (``--transports``):

- ``grpc``: gradients and weights as float32 chunks over TCP; ``grpc-bf16``: as bfloat16 chunks;
- ``uds``, ``uds-bf16``: the same over the server's Unix domain socket;
- ``shm``: through a sealed shared-memory segment the server maps (the commit and the result over
  the server's doorbell socket); ``shm-file``: through a segment file the server reads and writes.

Only ``opt.step()`` is timed. Each remote variant runs in turn beside the two local optimizers,
the three alternating step by step (and which goes first) so that a busy machine slows all
alike; after the warm-up steps the median of the timed steps is reported, with the remote step's
transfer rate (2 x parameter bytes per step: gradient in, weights out, at the wire's width) and,
as a check, the largest difference between the remote weights and local RAdam's at the end. Where
a 16-bit variant and its float32 twin (``grpc-bf16`` and ``grpc``, ``uds-bf16`` and ``uds``) are
both chosen, a second table times the two stepped in turn against each other, for their ratio, and
counts the CPU time each step used here and (with ``--start-server``) in the server. torch
and the server use the same number of threads (``--threads``; the header prints both), torch's
OpenMP threads sleeping between parallel operations (``--omp-wait-policy``, PASSIVE by default, as a
trainer beside its server should run; the header prints it too)::

    python3 -m optsidecar.bench --start-server server/target/optsidecar-server.jar
    python3 -m optsidecar.bench --start-server JAR --sizes 1M,10M,50M,100M --transports grpc,uds,shm
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from .launch import LocalServer
from .optimizer import RemoteOptimizer

__all__ = ["Row", "PairRow", "Variant", "VARIANTS", "WIRE_PAIRS", "parse_size", "bench_size", "bench_pair", "format_row",
           "format_pair", "wire_pairs", "process_cpu_seconds", "main"]

_SUFFIXES = {"K": 10**3, "M": 10**6, "G": 10**9}

#: Distinct random gradients cycled through the steps (drawing a new 50M one per step is slow).
_GRADIENTS = 3


class Variant(NamedTuple):
    """A way of reaching the server: which address, and the RemoteOptimizer options."""

    name: str
    unix_socket: bool
    options: Dict[str, str]
    #: Bytes per element on the wire (each way), for the transfer rate; 0 where nothing is copied.
    wire_bytes: int


VARIANTS = {v.name: v for v in [
    Variant("grpc", False, {"transport": "grpc"}, 4),
    Variant("grpc-bf16", False, {"transport": "grpc", "wire_dtype": "bfloat16"}, 2),
    Variant("uds", True, {"transport": "grpc"}, 4),
    Variant("uds-bf16", True, {"transport": "grpc", "wire_dtype": "bfloat16"}, 2),
    Variant("shm", True, {"transport": "shm", "shm_segment": "sealed"}, 0),
    Variant("shm-file", True, {"transport": "shm", "shm_segment": "file"}, 0),
]}


class Row(NamedTuple):
    """One size and variant: median step times in seconds and the final weight difference."""

    params: int
    variant: str
    radam_s: float
    fastest_s: float
    remote_s: float
    wire_bytes: int
    max_diff: float

    @property
    def transfer_mb_s(self) -> Optional[float]:
        """The remote step's effective transfer rate: 2 x params x wire bytes / step time, in MB/s."""
        return 2 * self.wire_bytes * self.params / self.remote_s / 1e6 if self.wire_bytes else None


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


def fastest_local(params: List[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """torch's fastest CPU step: fused AdamW (torch 2.4+), else foreach AdamW."""
    try:
        return torch.optim.AdamW(params, lr=lr, fused=True)
    except (TypeError, RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, foreach=True)


def fastest_label() -> str:
    probe = fastest_local([torch.nn.Parameter(torch.zeros(1))], 1e-3)
    return "AdamW fused" if probe.defaults.get("fused") else "AdamW foreach"


#: Small sizes get more steps (this many over the parameter count, up to MAX_STEPS): a step of
#: a millisecond or less needs hundreds of samples for a stable median, and the timed loop stays
#: short.
SMALL_SIZE_STEPS = 2e8
MAX_STEPS = 400


def steps_for(n: int, repeats: int, warmup: int) -> Tuple[int, int]:
    """Timed and warm-up steps for ``n`` parameters: at least those asked for."""
    timed = max(repeats, min(MAX_STEPS, int(SMALL_SIZE_STEPS // max(n, 1))))
    return timed, max(warmup, timed // 10)


def timed_step(opt: torch.optim.Optimizer) -> float:
    """Seconds one ``opt.step()`` takes."""
    start = time.perf_counter()
    opt.step()
    return time.perf_counter() - start


def bench_size(n: int, variant: Variant, target: str, repeats: int, warmup: int, lr: float = 1e-3,
               seed: int = 0) -> Row:
    """Times local RAdam, the fastest local step and one remote variant on ``n`` parameters, interleaved."""
    generator = torch.Generator().manual_seed(seed)
    radam = torch.nn.Parameter(torch.randn(n, generator=generator))
    fastest = torch.nn.Parameter(radam.detach().clone())
    remote = torch.nn.Parameter(radam.detach().clone())
    grads = [torch.randn(n, generator=generator) for _ in range(_GRADIENTS)]
    optimizers: List[torch.optim.Optimizer] = [torch.optim.RAdam([radam], lr=lr), fastest_local([fastest], lr)]
    remote_opt = RemoteOptimizer([remote], lr, target=target, algorithm="RAdam",
                                 model=f"bench-{size_label(n)}-{variant.name}-{os.getpid()}", **variant.options)
    optimizers.append(remote_opt)
    times: List[List[float]] = [[], [], []]
    try:
        for i in range(warmup + repeats):
            for p, g in ((radam, grads[i % _GRADIENTS]), (fastest, grads[i % _GRADIENTS])):
                p.grad = g
            if remote.grad is None or remote.grad.data_ptr() != grads[i % _GRADIENTS].data_ptr():
                # Over shared memory .grad lives in the segment: fill it rather than replace it.
                if remote.grad is not None and variant.name.startswith("shm"):
                    remote.grad.copy_(grads[i % _GRADIENTS])
                else:
                    remote.grad = grads[i % _GRADIENTS]
            order = range(3) if i % 2 == 0 else reversed(range(3))
            for k in order:
                seconds = timed_step(optimizers[k])
                if i >= warmup:
                    times[k].append(seconds)
        max_diff = (radam.detach() - remote.detach()).abs().max().item()
    finally:
        remote_opt.delete()
    return Row(n, variant.name, statistics.median(times[0]), statistics.median(times[1]),
               statistics.median(times[2]), variant.wire_bytes, max_diff)


#: Each 16-bit variant and the float32 one it halves the bytes of, compared step by step.
WIRE_PAIRS = (("grpc", "grpc-bf16"), ("uds", "uds-bf16"))


class PairRow(NamedTuple):
    """One size and wire pair: median remote step times in seconds, the two stepped in turn, and
    the mean CPU seconds a step of each used in this process and in the server (None where the
    server's could not be read)."""

    params: int
    wide: str
    narrow: str
    wide_s: float
    narrow_s: float
    wide_cpu_s: Optional[Tuple[float, Optional[float]]] = None
    narrow_cpu_s: Optional[Tuple[float, Optional[float]]] = None

    def cpu_ratio(self) -> Optional[float]:
        """The 16-bit step's CPU time (client and server) over the float32 step's, where both are known."""
        if self.wide_cpu_s is None or self.narrow_cpu_s is None or None in (self.wide_cpu_s[1], self.narrow_cpu_s[1]):
            return None
        return sum(self.narrow_cpu_s) / sum(self.wide_cpu_s)


def process_cpu_seconds(pid: int) -> Optional[float]:
    """CPU time (user and system, every thread) process ``pid`` has used, from ``/proc``; None
    where it cannot be read (no ``/proc``, or the process has gone). It is counted in clock ticks
    (10 ms): its mean over many steps is what means something."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def wire_pairs(variants: Sequence[Variant]) -> List[Tuple[Variant, Variant]]:
    """The pairs of :data:`WIRE_PAIRS` whose both variants were chosen."""
    chosen = {v.name for v in variants}
    return [(VARIANTS[w], VARIANTS[n]) for w, n in WIRE_PAIRS if w in chosen and n in chosen]


def bench_pair(n: int, wide: Variant, narrow: Variant, target: str, repeats: int, warmup: int, lr: float = 1e-3,
               seed: int = 0, server_pid: Optional[int] = None) -> PairRow:
    """Times a float32 and a 16-bit remote variant on ``n`` parameters, stepped in turn (which one
    first alternating) with the same gradients: a busy machine slows both alike, so their ratio is
    steadier than that of two rows measured one after the other. Each step's CPU time is counted
    too, in this process and, given ``server_pid``, in the server: with both on the same cores, a
    step takes at least its CPU time over the cores, whatever overlaps."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(n, generator=generator)) for _ in range(2)]
    grads = [torch.randn(n, generator=generator) for _ in range(_GRADIENTS)]
    optimizers = [RemoteOptimizer([p], lr, target=target, algorithm="RAdam",
                                  model=f"bench-{size_label(n)}-{v.name}-pair-{os.getpid()}", **v.options)
                  for p, v in zip(params, (wide, narrow))]
    times: List[List[float]] = [[], []]

    def cpu_now() -> Tuple[float, Optional[float]]:
        return time.process_time(), None if server_pid is None else process_cpu_seconds(server_pid)

    client_cpu: List[List[float]] = [[], []]
    server_cpu: List[List[Optional[float]]] = [[], []]
    try:
        for i in range(warmup + repeats):
            for p in params:
                p.grad = grads[i % _GRADIENTS]
            for k in ((0, 1) if i % 2 == 0 else (1, 0)):
                client_before, server_before = cpu_now()
                seconds = timed_step(optimizers[k])
                client_after, server_after = cpu_now()
                if i >= warmup:
                    times[k].append(seconds)
                    client_cpu[k].append(client_after - client_before)
                    server_cpu[k].append(None if server_before is None or server_after is None
                                         else server_after - server_before)
    finally:
        for opt in optimizers:
            opt.delete()

    def cpu(k: int) -> Tuple[float, Optional[float]]:
        server = None if None in server_cpu[k] else statistics.fmean(server_cpu[k])
        return statistics.fmean(client_cpu[k]), server

    return PairRow(n, wide.name, narrow.name, statistics.median(times[0]), statistics.median(times[1]), cpu(0), cpu(1))


#: Untimed steps of a 1K model per transport in the warm-up: a step's fixed-cost code (parsing,
#: bookkeeping, the doorbell) runs once per step, so the JIT compiler reaches it only after
#: thousands of steps, where the big loops need a few dozen.
SMALL_WARMUP_STEPS = 3000


def warm_up_server(target: str, steps: int, n: int = 10**6) -> None:
    """Untimed remote steps on throwaway models, so that the server's JIT compiler has done its
    work before anything is measured: ``steps`` of an ``n``-parameter model, then (with ``steps``)
    SMALL_WARMUP_STEPS of a 1K one over shared memory (where the server offers it) and over gRPC."""
    if steps <= 0:
        return
    for size, count, transports in ((n, steps, ("auto",)), (1000, SMALL_WARMUP_STEPS, ("auto", "grpc"))):
        for transport in transports:
            param = torch.nn.Parameter(torch.zeros(size))
            param.grad = torch.randn(size, generator=torch.Generator().manual_seed(1))
            opt = RemoteOptimizer([param], target=target, algorithm="RAdam", transport=transport,
                                  model=f"bench-warmup-{size}-{transport}-{os.getpid()}")
            try:
                for _ in range(count):
                    opt.step()
            finally:
                opt.delete()


def header(target: str, started: bool, threads: int, repeats: int, warmup: int, server_warmup: int,
           lr: float) -> str:
    """What the numbers depend on: torch, the cores and threads, the server, the protocol."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return "\n".join([
        f"optsidecar bench: torch {torch.__version__}, {os.cpu_count()} CPUs ({usable} usable), torch threads "
        f"{torch.get_num_threads()} (OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}), server engine "
        f"threads {threads if started else '(as started)'}",
        f"  server {target} ({'started here' if started else 'running'}); RAdam lr {lr:g}, one float32 tensor per size; "
        f"fastest local step: {fastest_label()}",
        f"  opt.step() only: median of {repeats} after {warmup} warm-up steps per size and variant (more for small "
        f"sizes: {SMALL_SIZE_STEPS:g} / params, at most {MAX_STEPS}, a tenth of them warm-up), local RAdam, "
        f"local fastest and remote alternating (server first warmed by {server_warmup} steps of a 1M model and "
        f"{SMALL_WARMUP_STEPS} of a 1K one over shm and gRPC each)",
        "  /RAdam, /fastest: remote step time over local RAdam's, over the fastest local step's; MB/s = 2 x params x "
        "wire bytes / remote step time; max|dw| = largest |RAdam - remote| weight at the end",
    ])


TABLE_HEADER = (f"{'params':>7}  {'variant':<10}  {'RAdam ms':>9}  {'fastest ms':>10}  {'remote ms':>10}  "
                f"{'/RAdam':>7}  {'/fastest':>8}  {'MB/s':>7}  {'max|dw|':>8}")


def format_row(r: Row) -> str:
    """One fixed-width line of the result table (columns as :data:`TABLE_HEADER`)."""
    rate = f"{r.transfer_mb_s:>7.0f}" if r.transfer_mb_s is not None else f"{'-':>7}"
    return (f"{size_label(r.params):>7}  {r.variant:<10}  {r.radam_s * 1e3:>9.2f}  {r.fastest_s * 1e3:>10.2f}  "
            f"{r.remote_s * 1e3:>10.2f}  {r.remote_s / r.radam_s:>7.2f}  {r.remote_s / r.fastest_s:>8.2f}  "
            f"{rate}  {r.max_diff:>8.1e}")


PAIR_HEADER = (f"{'params':>7}  {'float32':<10}  {'16-bit':<10}  {'float32 ms':>10}  {'16-bit ms':>10}  "
               f"{'16-bit/float32':>14}  {'float32 CPU ms':>14}  {'16-bit CPU ms':>14}  {'CPU ratio':>9}")


def _format_cpu(cpu: Optional[Tuple[float, Optional[float]]]) -> str:
    if cpu is None:
        return "-"
    client, server = cpu
    return f"{client * 1e3:.1f}+{'?' if server is None else f'{server * 1e3:.1f}'}"


def format_pair(r: PairRow) -> str:
    """One fixed-width line of the wire-pair table (columns as :data:`PAIR_HEADER`)."""
    ratio = r.cpu_ratio()
    return (f"{size_label(r.params):>7}  {r.wide:<10}  {r.narrow:<10}  {r.wide_s * 1e3:>10.2f}  "
            f"{r.narrow_s * 1e3:>10.2f}  {r.narrow_s / r.wide_s:>14.2f}  {_format_cpu(r.wide_cpu_s):>14}  "
            f"{_format_cpu(r.narrow_cpu_s):>14}  {'-' if ratio is None else f'{ratio:.2f}':>9}")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m optsidecar.bench", description=__doc__.split("\n\n")[0])
    server = parser.add_mutually_exclusive_group()
    server.add_argument("--target", default="127.0.0.1:50051",
                        help="host:port of a running server (its Unix socket, if any: --unix-socket)")
    server.add_argument("--start-server", metavar="JAR",
                        help="start this server jar (TCP, a Unix socket and a shared-memory directory), stop it at the end")
    parser.add_argument("--unix-socket", metavar="PATH", help="with --target: the running server's Unix socket")
    parser.add_argument("--server-heap", default="8g", help="-Xmx for --start-server (default 8g)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch's threads and, with --start-server, the server's engine threads (default: all CPUs)")
    parser.add_argument("--sizes", default="1M,10M,50M", help="comma-separated parameter counts (K, M, G suffixes)")
    parser.add_argument("--transports", default="grpc,grpc-bf16,uds,shm",
                        help=f"comma-separated remote variants: {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per size, variant and optimizer")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per size and variant first")
    parser.add_argument("--server-warmup", type=int, default=40,
                        help="untimed remote steps of a 1M model before all sizes (JIT warm-up)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "inherit"],
                        help="OMP_WAIT_POLICY for torch's OpenMP threads (read when torch loads: the bench restarts "
                             "itself to set it). PASSIVE (default), as a trainer beside its server should run: "
                             "threads that spin after each parallel operation hold the cores the server's step needs. "
                             "inherit: the environment's")
    args = parser.parse_args(argv)
    unknown = [t for t in args.transports.split(",") if t.strip() and t.strip() not in VARIANTS]
    if unknown:
        parser.error(f"--transports: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    return args


def restart_for_omp_policy(policy: str, environ: Dict[str, str],
                           argv: Sequence[str]) -> Optional[Tuple[List[str], Dict[str, str]]]:
    """The command and environment that rerun the bench under OMP_WAIT_POLICY ``policy``; None when
    it already runs so (or ``policy`` is ``inherit``)."""
    if policy == "inherit" or environ.get("OMP_WAIT_POLICY") == policy:
        return None
    return [sys.executable, "-m", "optsidecar.bench", *argv], dict(environ, OMP_WAIT_POLICY=policy)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    restart = restart_for_omp_policy(args.omp_wait_policy, dict(os.environ),
                                     list(sys.argv[1:] if argv is None else argv))
    if restart is not None:
        command, environ = restart
        os.execve(command[0], command, environ)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    variants = [VARIANTS[t.strip()] for t in args.transports.split(",") if t.strip()]
    torch.set_num_threads(args.threads)
    with contextlib.ExitStack() as stack:
        target, socket_path, server_pid = args.target, args.unix_socket, None
        if args.start_server:
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="optsidecar-bench-"))
            socket_path = os.path.join(scratch, "server.sock")
            shm_dir = tempfile.mkdtemp(prefix="optsidecar-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
            stack.callback(lambda: os.path.isdir(shm_dir) and os.rmdir(shm_dir))
            server_args = ["--threads", str(args.threads), "--listen", f"unix:{socket_path}"]
            if any(v.name.startswith("shm") for v in variants):
                server_args += ["--shm-dir", shm_dir]
            server = LocalServer(args.start_server, java_options=[f"-Xmx{args.server_heap}"], server_args=server_args)
            target = stack.enter_context(server).target
            server_pid = server.process.pid
        print(header(target, bool(args.start_server), args.threads, args.repeats, args.warmup, args.server_warmup,
                     args.lr), flush=True)
        warm_up_server(target, args.server_warmup)
        print(TABLE_HEADER, flush=True)
        for n in sizes:
            for variant in variants:
                if variant.unix_socket and not socket_path:
                    print(f"{size_label(n):>7}  {variant.name:<10}  skipped: no Unix socket (--unix-socket)", flush=True)
                    continue
                where = f"unix:{socket_path}" if variant.unix_socket else target
                print(format_row(bench_size(n, variant, where, *steps_for(n, args.repeats, args.warmup), args.lr)),
                      flush=True)
        pairs = [(w, v) for w, v in wire_pairs(variants) if socket_path or not w.unix_socket]
        if pairs:
            print("\n16-bit against float32 chunks, the two remote optimizers stepped in turn (no local ones between);"
                  "\n  CPU ms: mean CPU time per step, this process's + the server's (? unless started here); CPU ratio:"
                  " 16-bit's total over float32's", flush=True)
            print(PAIR_HEADER, flush=True)
        for n in sizes:
            for wide, narrow in pairs:
                where = f"unix:{socket_path}" if wide.unix_socket else target
                print(format_pair(bench_pair(n, wide, narrow, where, *steps_for(n, args.repeats, args.warmup),
                                             args.lr, server_pid=server_pid)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
