package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.kernel.KernelCall;

import java.util.function.LongFunction;

/**
 * An algorithm with torch's per-parameter step count and no group scalars (SGD, Adam, RAdam):
 * each tensor's kernel depends only on its own t and the group's lr.
 */
abstract class TensorwiseAlgorithm implements Algorithm {
    /** The kernel call for one tensor at its 1-based step t. */
    abstract KernelCall step(long t, double lr, float gradScale);

    @Override
    public final StepPlan plan(GroupScalars scalars, double lr, float gradScale) {
        // Tensors of a group are mostly at the same t: build each t's call once.
        LongFunction<KernelCall> calls = new LongFunction<>() {
            private long lastT = -1;
            private KernelCall last;

            @Override
            public KernelCall apply(long t) {
                if (t != lastT) {
                    last = step(t, lr, gradScale);
                    lastT = t;
                }
                return last;
            }
        };
        return new StepPlan(calls, scalars, lr, Double.NaN);
    }
}
