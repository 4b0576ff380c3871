package dev.optsidecar.server.bench;

import dev.optsidecar.server.engine.cpu.CpuEngine;

import java.util.List;
import java.util.Locale;

/**
 * The engine table: each kernel against the memory-pass ceiling over the arrays it touches, both
 * on the same engine, sizes and threads, timed alternately. A fused Adam-family step on CPU is
 * bound by memory bandwidth, so "of ceiling" says how close the kernel comes to the best a pass
 * over its arrays can do on this machine.
 */
final class EngineBench {
    private final int threads;
    private final int warmup;
    private final int iterations;

    EngineBench(int threads, int warmup, int iterations) {
        this.threads = threads;
        this.warmup = warmup;
        this.iterations = iterations;
    }

    void run(List<Long> sizes) {
        List<BenchKernel> kernels = BenchKernel.all();
        System.out.printf(Locale.ROOT, "%nEngine: each kernel vs a memory-pass ceiling over the same arrays (in place,"
                + " trivial arithmetic), timed alternately, %d threads%n", threads);
        for (BenchKernel k : kernels) {
            System.out.printf(Locale.ROOT, "  %-12s %s; %s: %d x 4 bytes per param%n", k.name(), k.about(),
                    k.arrays(), k.reads() + k.writes());
        }
        System.out.println("  GB/s = bytes per param x params / time; of ceiling = ceiling ms / kernel ms");
        String format = "%-12s  %8s  %10s  %11s  %10s  %12s  %10s%n";
        System.out.printf(Locale.ROOT, format, "kernel", "params", "kernel ms", "kernel GB/s", "ceiling ms",
                "ceiling GB/s", "of ceiling");
        try (CpuEngine engine = new CpuEngine(threads)) {
            kernels.forEach(k -> k.warmUpJit(engine));
            for (BenchKernel k : kernels) {
                for (long n : sizes) {
                    row(engine, k, n);
                }
            }
        }
    }

    private void row(CpuEngine engine, BenchKernel k, long n) {
        String shortfall = Measure.heapShortfall(2L * k.heapPerElement() * n);
        if (shortfall != null) {
            System.out.printf(Locale.ROOT, "%-12s  %8s  %s%n", k.name(), Measure.count(n), shortfall);
            return;
        }
        double[] ms;
        try (BenchTensor kernel = k.kernelTensor(engine, n); BenchTensor ceiling = k.ceilingTensor(engine, n)) {
            ms = Measure.interleaved(warmup, iterations, kernel::timeStep, ceiling::timeStep);
        }
        double gb = (double) k.bytesPerElement() * n / 1e9;
        System.out.printf(Locale.ROOT, "%-12s  %8s  %10.2f  %11.1f  %10.2f  %12.1f  %10.3f%n", k.name(),
                Measure.count(n), ms[0], gb / (ms[0] / 1e3), ms[1], gb / (ms[1] / 1e3), ms[1] / ms[0]);
    }
}
