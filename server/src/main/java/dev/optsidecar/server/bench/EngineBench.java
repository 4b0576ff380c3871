package dev.optsidecar.server.bench;

import dev.optsidecar.server.engine.cpu.CpuEngine;

import java.util.List;
import java.util.Locale;

/**
 * The engine table: the RAdam step against the memory-pass ceiling, both on the same engine, sizes
 * and threads, timed alternately. A fused Adam-family step on CPU is bound by memory bandwidth,
 * so "fraction of ceiling" says how close the kernel comes to the best a pass over its 7 arrays
 * can do on this machine.
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
        System.out.printf(Locale.ROOT, "%nEngine: RAdam step (rectified, t >= 6) vs memory-pass ceiling (read p,g,m,v;"
                + " write p,m,v), %d threads; GB/s = 7 x 4 bytes x params / time%n", threads);
        String format = "%10s  %10s  %10s  %12s  %12s  %10s%n";
        System.out.printf(Locale.ROOT, format, "params", "RAdam ms", "RAdam GB/s", "ceiling ms", "ceiling GB/s",
                "of ceiling");
        try (CpuEngine engine = new CpuEngine(threads)) {
            BenchTensor.warmUpJit(engine);
            for (long n : sizes) {
                String shortfall = Measure.heapShortfall(2 * BenchTensor.HEAP_PER_ELEMENT * n);
                if (shortfall != null) {
                    System.out.printf(Locale.ROOT, "%10s  %s%n", Measure.count(n), shortfall);
                    continue;
                }
                double[] ms;
                try (BenchTensor radam = BenchTensor.radam(engine, n);
                     BenchTensor ceiling = BenchTensor.ceiling(engine, n)) {
                    ms = Measure.interleaved(warmup, iterations, radam::timeStep, ceiling::timeStep);
                }
                double gb = (double) BenchTensor.BYTES_PER_ELEMENT * n / 1e9;
                System.out.printf(Locale.ROOT, "%10s  %10.2f  %10.1f  %12.2f  %12.1f  %10.3f%n", Measure.count(n),
                        ms[0], gb / (ms[0] / 1e3), ms[1], gb / (ms[1] / 1e3), ms[1] / ms[0]);
            }
        }
    }
}
