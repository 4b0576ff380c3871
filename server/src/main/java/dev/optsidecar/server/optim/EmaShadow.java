package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.FusedStep;

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

    /** decay as the float the blend multiplies by. */
    public float keep() {
        return (float) decay;
    }

    /** 1 − decay as the float the blend multiplies by. */
    public float take() {
        return (float) (1 - decay);
    }

    /** The update of the shadow in state slot {@code s}, given how many updates it has had. */
    public FusedStep update(long updatesBefore, int s) {
        if (updatesBefore == 0) {
            return (p, g, state, from, to) -> System.arraycopy(p, from, state[s], from, to - from);
        }
        float keep = keep();
        float take = take();
        return (p, g, state, from, to) -> {
            float[] e = state[s];
            for (int i = from; i < to; i++) {
                e[i] = Math.fma(take, p[i], keep * e[i]);
            }
        };
    }
}
