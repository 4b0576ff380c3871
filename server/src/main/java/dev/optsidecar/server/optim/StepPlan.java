package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.FusedStep;

import java.util.function.LongFunction;

/**
 * One group's step, its scalars computed once: the kernel for each tensor (given that tensor's
 * 1-based step count), the group scalars after the step, and the figures a step reports.
 *
 * @param forTensor       the fused step for a tensor at its step t
 * @param after           group scalars once the step is applied
 * @param effectiveLr     the lr the update used (Schedule-Free: lr × warmup or rectification)
 * @param averagingWeight Schedule-Free's c_t, NaN for other algorithms
 * @param withEma         the kernel with an EMA blend folded into its loop, or null if the
 *                        algorithm offers none (then the blend is chained after it)
 */
public record StepPlan(LongFunction<FusedStep> forTensor, GroupScalars after, double effectiveLr,
                       double averagingWeight, WithEma withEma) {
    public StepPlan(LongFunction<FusedStep> forTensor, GroupScalars after, double effectiveLr, double averagingWeight) {
        this(forTensor, after, effectiveLr, averagingWeight, null);
    }

    /**
     * An algorithm's loop that also blends an EMA shadow, e = keep·e + take·θ_new, while θ_new is
     * still in a register: the most common composition (Schedule-Free or Adam plus one shadow)
     * then reads and writes each array once, as one pass should.
     */
    @FunctionalInterface
    public interface WithEma {
        /** The fused step for a tensor at its step t, or null where this algorithm does not fuse. */
        FusedStep forTensor(long t, int emaSlot, float keep, float take);
    }
}
