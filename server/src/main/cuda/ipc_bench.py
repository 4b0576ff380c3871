"""The optimizer step a torch trainer on the same GPU sees through CUDA IPC, beside torch's own:
for each size n, a float32 parameter of n elements on the GPU with a random gradient, stepped by
torch's AdamW(fused=True) and RAdam (foreach) in this process and by RemoteOptimizer (AdamW and
RAdam, transport="cuda-ipc") against a server on the cuda engine, the median of 11 calls of
step() after 3 warm-up steps (each timed call synchronised on both sides: RemoteOptimizer.step
returns once the weights are in the parameters). The remote AdamW step is also timed with the
edit check's content comparison off (version counters only). The last line gives the ratio of the
remote AdamW step to fused AdamW at the largest size against the 1.5 target.

Usage: python3 ipc_bench.py SERVER_JAR N1,N2,... (java on the PATH; the optsidecar package importable)."""
import os
import statistics
import sys
import tempfile
import time

import torch

TARGET_RATIO = 1.5


def timed(step):
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(11):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


DOORBELL = []  # whether each remote run committed over the doorbell socket


def remote_step(target, n, algorithm, compare_contents=True):
    from optsidecar import RemoteOptimizer

    p = torch.nn.Parameter(torch.randn(n, device="cuda"))
    opt = RemoteOptimizer([p], target=target, algorithm=algorithm, lr=1e-3, weight_decay=0.01, transport="cuda-ipc")
    opt.edits.compare_contents = compare_contents
    opt.zero_grad()
    p.grad.copy_(torch.randn(n, device="cuda"))
    try:
        took = timed(opt.step)
        DOORBELL.append(opt.doorbell)
        return took
    finally:
        opt.delete()
        del p
        torch.cuda.empty_cache()


def local_step(n, make):
    p = torch.nn.Parameter(torch.randn(n, device="cuda"))
    p.grad = torch.randn(n, device="cuda")
    opt = make([p])
    try:
        return timed(opt.step)
    finally:
        del opt, p
        torch.cuda.empty_cache()


def main():
    if not torch.cuda.is_available():
        print("FAIL torch sees no CUDA device")
        return 1
    from optsidecar.launch import LocalServer

    jar, sizes = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    print("n, AdamW fused ms, RAdam ms, remote AdamW ms, remote AdamW (no content check) ms, remote RAdam ms, "
          "remote AdamW / fused")
    ratio = None
    # A --shm-dir gives the server its doorbell socket: commits and results skip gRPC.
    shm_dir = tempfile.mkdtemp(prefix="optsidecar-ipc-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    with LocalServer(jar, java_options=["-Xmx8g"], server_args=["--engine", "cuda", "--shm-dir", shm_dir]) as server:
        for n in sizes:
            if 10 * 4 * n > torch.cuda.mem_get_info()[0] * 0.9:
                print(f"{n}, skipped: too large for the free memory")
                continue
            fused = local_step(n, lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, fused=True))
            radam = local_step(n, lambda ps: torch.optim.RAdam(ps, lr=1e-3, weight_decay=0.01))
            remote = remote_step(server.target, n, "AdamW")
            remote_unchecked = remote_step(server.target, n, "AdamW", compare_contents=False)
            remote_radam = remote_step(server.target, n, "RAdam")
            ratio = remote / fused
            print(f"{n}, {fused * 1e3:.3f}, {radam * 1e3:.3f}, {remote * 1e3:.3f}, {remote_unchecked * 1e3:.3f}, "
                  f"{remote_radam * 1e3:.3f}, {ratio:.2f}")
    print(f"doorbell: {'yes' if DOORBELL and all(DOORBELL) else 'no'} (commits and results over the Unix socket)")
    if ratio is not None:
        verdict = "meets" if ratio <= TARGET_RATIO else "misses"
        print(f"target: the CUDA IPC remote AdamW step at n={sizes[-1]} is {ratio:.2f} x fused AdamW; "
              f"{verdict} the {TARGET_RATIO} x target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
