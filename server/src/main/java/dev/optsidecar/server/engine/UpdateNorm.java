package dev.optsidecar.server.engine;

import java.util.concurrent.atomic.DoubleAdder;

/**
 * Wraps a step to measure |θ_new − θ_old|² over everything it touches: each tile of θ is copied to
 * a small per-thread buffer before the step and compared after it, while both are in L1. A sum
 * inside the fused loops would stop them from vectorising, so the measurement is kept apart and
 * used only when asked for.
 */
public final class UpdateNorm implements FusedStep {
    private static final ThreadLocal<float[]> BEFORE = ThreadLocal.withInitial(() -> new float[Chain.TILE]);

    private final FusedStep step;
    private final DoubleAdder sumOfSquares;

    public UpdateNorm(FusedStep step, DoubleAdder sumOfSquares) {
        this.step = step;
        this.sumOfSquares = sumOfSquares;
    }

    @Override
    public void apply(float[] p, float[] g, float[][] state, int from, int to) {
        float[] before = BEFORE.get();
        double total = 0;
        for (int tile = from; tile < to; tile += Chain.TILE) {
            int end = Math.min(to, tile + Chain.TILE);
            System.arraycopy(p, tile, before, 0, end - tile);
            step.apply(p, g, state, tile, end);
            double s0 = 0, s1 = 0;
            int i = tile;
            for (; i + 1 < end; i += 2) {
                double d0 = (double) p[i] - before[i - tile];
                double d1 = (double) p[i + 1] - before[i + 1 - tile];
                s0 += d0 * d0;
                s1 += d1 * d1;
            }
            if (i < end) {
                double d = (double) p[i] - before[i - tile];
                s0 += d * d;
            }
            total += s0 + s1;
        }
        sumOfSquares.add(total);
    }
}
