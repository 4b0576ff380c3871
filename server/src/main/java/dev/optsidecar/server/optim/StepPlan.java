package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.kernel.KernelCall;

import java.util.function.LongFunction;

/**
 * One group's step, its scalars computed once in double and rounded to the kernel's floats: the
 * kernel call for each tensor (given that tensor's 1-based step count), the group scalars after
 * the step, and the figures a step reports.
 *
 * @param forTensor       the kernel call for a tensor at its step t, over the algorithm's own slots
 * @param after           group scalars once the step is applied
 * @param effectiveLr     the lr the update used (Schedule-Free: lr × warmup or rectification)
 * @param averagingWeight Schedule-Free's c_t, NaN for other algorithms
 */
public record StepPlan(LongFunction<KernelCall> forTensor, GroupScalars after, double effectiveLr,
                       double averagingWeight) {}
