package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;

/**
 * An EMA shadow of the train weights (torch AveragedModel with get_ema_avg_fn; algorithms.md §6):
 * after the optimizer step, on every step t with t % every == 0,
 * <pre>
 *   e = θ                              (first update: a copy, no blend)
 *   e = decay·e + (1 − decay)·θ        (afterwards)
 * </pre>
 */
public record EmaShadow(double decay, long every) {
    /** Slot name of shadow {@code index}. */
    public static String slotName(int index) {
        return "ema:" + index;
    }

    /** Whether model step t (1-based) updates the shadow. */
    public boolean updatesAt(long t) {
        return t % every == 0;
    }

    /** The update of the shadow in state slot {@code slot}, given how many updates it has had. */
    public KernelCall update(long updatesBefore, int slot) {
        if (updatesBefore == 0) {
            return Kernel.COPY_PARAMS.call().slots(slot).build();
        }
        return Kernel.EMA_BLEND.call()
                .scalar("keep", (float) decay)
                .scalar("take", (float) (1 - decay))
                .slots(slot)
                .build();
    }
}
