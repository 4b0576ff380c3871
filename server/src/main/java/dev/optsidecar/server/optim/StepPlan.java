package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.FusedStep;

import java.util.function.LongFunction;

/**
 * One group's step, its scalars computed once: the kernel for each tensor (given that tensor's
 * 1-based step count), the group counters after the step, and the figures a step reports.
 *
 * @param forTensor       the fused step for a tensor at its step t
 * @param after           group counters once the step is applied
 * @param effectiveLr     the lr the update used (Schedule-Free: lr × warmup or rectification)
 * @param averagingWeight Schedule-Free's c_t, NaN for other algorithms
 */
public record StepPlan(LongFunction<FusedStep> forTensor, GroupCounters after, double effectiveLr,
                       double averagingWeight) {}
