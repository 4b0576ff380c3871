package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.FusedStep;

/**
 * An algorithm with torch's per-parameter step count and no group scalars (SGD, Adam, RAdam):
 * each tensor's kernel depends only on its own t and the group's lr.
 */
abstract class TensorwiseAlgorithm implements Algorithm {
    /** The step for one tensor at its 1-based step t. */
    abstract FusedStep step(long t, double lr, float gradScale);

    @Override
    public final StepPlan plan(GroupScalars scalars, double lr, float gradScale) {
        return new StepPlan(t -> step(t, lr, gradScale), scalars, lr, Double.NaN);
    }
}
