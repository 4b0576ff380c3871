package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.FusedStep;

import java.util.List;

/**
 * An optimizer for one parameter group: validated hyperparameters, the named state slots each
 * tensor carries, and a fused kernel whose scalars are computed once per step.
 */
public interface Algorithm {
    /** State buffers per tensor, in the order the kernel receives them (e.g. exp_avg, exp_avg_sq). */
    List<String> stateSlots();

    /**
     * The step for one tensor.
     *
     * @param t  1-based count of steps this tensor has taken, including this one
     * @param lr the group's learning rate for this step
     */
    FusedStep step(long t, double lr);
}
