package dev.optsidecar.server.engine.cpu;

import java.util.concurrent.atomic.DoubleAdder;

/**
 * Wraps a step to measure |θ_new − θ_old|² over everything it touches: each small tile of θ is
 * copied to a per-thread buffer before the step and compared after it, while both are in L1. A
 * sum inside the fused loops would stop them from vectorising, so the measurement is kept apart
 * and used only when asked for.
 */
final class UpdateNorm implements BlockLoop {
    /** 2048 floats: θ's tile and its copy take 16 KiB of L1. */
    private static final int TILE = 2048;
    private static final ThreadLocal<float[]> BEFORE = ThreadLocal.withInitial(() -> new float[TILE]);

    private final BlockLoop step;
    private final DoubleAdder sumOfSquares;

    UpdateNorm(BlockLoop step, DoubleAdder sumOfSquares) {
        this.step = step;
        this.sumOfSquares = sumOfSquares;
    }

    @Override
    public void apply(float[] p, float[] g, float[][] state, int from, int to) {
        float[] before = BEFORE.get();
        double total = 0;
        for (int tile = from; tile < to; tile += TILE) {
            int end = Math.min(to, tile + TILE);
            System.arraycopy(p, tile, before, 0, end - tile);
            step.apply(p, g, state, tile, end);
            // A plain loop: the JIT compiles it better than hand-unrolled partial sums.
            double sum = 0;
            for (int i = tile; i < end; i++) {
                double d = (double) p[i] - before[i - tile];
                sum += d * d;
            }
            total += sum;
        }
        sumOfSquares.add(total);
    }
}
