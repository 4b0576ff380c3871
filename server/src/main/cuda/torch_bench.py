"""torch's own optimizer steps on the GPU, to set the CUDA engine's bench beside: the time of one
AdamW(fused=True) step and one RAdam (foreach) step over one float32 tensor of n elements, the
median of 11 after a warm-up, and the bandwidth a device-to-device copy of n floats reaches.
Usage: python3 torch_bench.py N1,N2,..."""
import statistics
import sys
import time

import torch


def timed(fn):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(11):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    if not torch.cuda.is_available():
        print("SKIP torch sees no CUDA device")
        return
    print("torch " + torch.__version__ + " on " + torch.cuda.get_device_name(0))
    print("n, AdamW fused ms, RAdam ms, copy GB/s")
    for n in [int(s) for s in sys.argv[1].split(",")]:
        if 5 * 4 * n > torch.cuda.mem_get_info()[0] * 0.9:
            print(f"{n}, skipped: too large for the free memory")
            continue
        p = torch.nn.Parameter(torch.randn(n, device="cuda"))
        p.grad = torch.randn(n, device="cuda")
        adamw = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.01, fused=True)
        t_adamw = timed(adamw.step)
        del adamw
        radam = torch.optim.RAdam([p], lr=1e-3)
        t_radam = timed(radam.step)
        del radam
        dst = torch.empty_like(p.grad)
        t_copy = timed(lambda: dst.copy_(p.grad))
        print(f"{n}, {t_adamw * 1e3:.3f}, {t_radam * 1e3:.3f}, {8 * n / t_copy / 1e9:.0f}")
        del p, dst
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
