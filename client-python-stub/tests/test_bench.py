"""The benchmark's own decisions (its measurements are run by hand: see README)."""

from __future__ import annotations

import sys

from optsidecar.bench import parse_args, restart_for_omp_policy


def test_the_bench_restarts_itself_under_a_passive_openmp_wait_policy_by_default():
    args = parse_args(["--sizes", "1M"])
    command, environ = restart_for_omp_policy(args.omp_wait_policy, {"PATH": "/bin"}, ["--sizes", "1M"])
    assert command == [sys.executable, "-m", "optsidecar.bench", "--sizes", "1M"]
    assert environ == {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE"}
    # Once restarted, or when the caller asks for the environment's policy, it runs as it is.
    assert restart_for_omp_policy("PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}, []) is None
    assert restart_for_omp_policy(parse_args(["--omp-wait-policy", "inherit"]).omp_wait_policy, {}, []) is None
    assert restart_for_omp_policy("ACTIVE", {"OMP_WAIT_POLICY": "PASSIVE"}, [])[1]["OMP_WAIT_POLICY"] == "ACTIVE"
