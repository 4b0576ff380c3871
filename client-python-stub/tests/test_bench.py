"""The benchmark's own decisions (its measurements are run by hand: see README)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from optsidecar.bench import (VARIANTS, PairRow, bench_pair, format_pair, parse_args, process_cpu_seconds,
                              restart_for_omp_policy, wire_pairs)


def test_the_bench_restarts_itself_under_a_passive_openmp_wait_policy_by_default():
    args = parse_args(["--sizes", "1M"])
    command, environ = restart_for_omp_policy(args.omp_wait_policy, {"PATH": "/bin"}, ["--sizes", "1M"])
    assert command == [sys.executable, "-m", "optsidecar.bench", "--sizes", "1M"]
    assert environ == {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE"}
    # Once restarted, or when the caller asks for the environment's policy, it runs as it is.
    assert restart_for_omp_policy("PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}, []) is None
    assert restart_for_omp_policy(parse_args(["--omp-wait-policy", "inherit"]).omp_wait_policy, {}, []) is None
    assert restart_for_omp_policy("ACTIVE", {"OMP_WAIT_POLICY": "PASSIVE"}, [])[1]["OMP_WAIT_POLICY"] == "ACTIVE"


def test_a_sixteen_bit_variant_is_paired_with_its_float32_twin_only_when_both_are_chosen():
    pairs = wire_pairs([VARIANTS[v] for v in ("grpc", "uds-bf16", "grpc-bf16", "shm")])
    assert [(w.name, n.name) for w, n in pairs] == [("grpc", "grpc-bf16")]
    assert all(w.wire_bytes == 2 * n.wire_bytes and w.unix_socket == n.unix_socket for w, n in
               wire_pairs(list(VARIANTS.values())))
    assert wire_pairs([VARIANTS["uds"], VARIANTS["shm"]]) == []
    assert format_pair(PairRow(10**7, "uds", "uds-bf16", 0.1, 0.065)).split() == [
        "10M", "uds", "uds-bf16", "100.00", "65.00", "0.65", "-", "-", "-"]


def test_the_pair_table_counts_client_and_server_cpu_and_their_ratio_only_where_both_are_known():
    row = PairRow(10**7, "grpc", "grpc-bf16", 0.103, 0.077, (0.079, 0.108), (0.050, 0.070))
    assert format_pair(row).split()[6:] == ["79.0+108.0", "50.0+70.0", f"{120 / 187:.2f}"]
    unknown_server = row._replace(wide_cpu_s=(0.079, None))
    assert unknown_server.cpu_ratio() is None
    assert format_pair(unknown_server).split()[6:] == ["79.0+?", "50.0+70.0", "-"]


def test_cpu_time_is_read_for_this_process_and_for_another_one_while_it_lives():
    # Spinning until the process's own clock says 0.2 s of CPU went by: counted in 10 ms ticks,
    # /proc shows at least 0.18 of it, however busy the machine.
    before = process_cpu_seconds(os.getpid())
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    assert process_cpu_seconds(os.getpid()) - before >= 0.18
    # A child that spins for 0.5 s of CPU, then waits to be read.
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nend = time.process_time() + 0.5\n"
                              "while time.process_time() < end: pass\nprint('spun', flush=True)\nsys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "spun\n"
        assert 0.48 <= process_cpu_seconds(child.pid) <= 5
    finally:
        child.communicate("")
    assert process_cpu_seconds(child.pid) is None  # reaped: nothing to read


def test_a_pair_run_against_the_server_counts_both_sides_cpu(server, target):
    row = bench_pair(10**5, VARIANTS["grpc"], VARIANTS["grpc-bf16"], target, repeats=4, warmup=1,
                     server_pid=server.process.pid)
    assert (row.params, row.wide, row.narrow) == (10**5, "grpc", "grpc-bf16")
    assert row.wide_s > 0 and row.narrow_s > 0
    for client, server_cpu in (row.wide_cpu_s, row.narrow_cpu_s):
        assert client > 0 and server_cpu is not None and server_cpu >= 0
    assert row.cpu_ratio() is not None
    # Without the server's process id only this process's share is known.
    assert bench_pair(10**5, VARIANTS["grpc"], VARIANTS["grpc-bf16"], target, repeats=2, warmup=1).cpu_ratio() is None
