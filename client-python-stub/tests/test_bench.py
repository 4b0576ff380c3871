"""The benchmark's own decisions (its measurements are run by hand: see README)."""

from __future__ import annotations

import sys

from optsidecar.bench import VARIANTS, PairRow, format_pair, parse_args, restart_for_omp_policy, wire_pairs


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
        "10M", "uds", "uds-bf16", "100.00", "65.00", "0.65"]
