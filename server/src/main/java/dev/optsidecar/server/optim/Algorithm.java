package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.kernel.KernelCall;

import java.util.List;

/**
 * An optimizer for one parameter group: validated hyperparameters, the named state slots each
 * tensor carries, the named scalars the group keeps, and per step a call of a catalogue kernel
 * whose scalars are computed once. Pure: it holds no tensor data and touches none.
 */
public interface Algorithm {
    /** State buffers per tensor, in the order the kernel receives them (e.g. exp_avg, exp_avg_sq). */
    List<String> stateSlots();

    /** Scalars the group keeps between steps (Schedule-Free's k, weight_sum, lr_max); none by default. */
    default List<GroupScalar> groupScalars() {
        return List.of();
    }

    /**
     * Plans one step of the group. Pure: the group scalars after the step are returned, not stored.
     *
     * @param scalars   the group's declared scalars before the step
     * @param lr        the group's learning rate for this step (base lr under the schedule)
     * @param gradScale factor on every gradient element (gradient clipping); 1 when none
     */
    StepPlan plan(GroupScalars scalars, double lr, float gradScale);

    /** The view kernel call of the algorithm's own eval point, computed from θ and state, or null if it has none. */
    default KernelCall evalView() {
        return null;
    }

    /** The kernel call that turns eval-point weights back into train weights (Schedule-Free's train()), or null. */
    default KernelCall trainFromEval() {
        return null;
    }

    /** Slot index of SGD's momentum buffer, for Lookahead's momentum handling; -1 if none. */
    default int momentumSlot() {
        return -1;
    }
}
