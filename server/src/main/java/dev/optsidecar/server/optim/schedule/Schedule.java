package dev.optsidecar.server.optim.schedule;

import com.google.protobuf.Struct;

/**
 * A learning-rate schedule (algorithms.md §8), with torch {@code LambdaLR} semantics: the scheduler
 * is stepped after each optimizer step, so the optimizer step with 1-based number t uses
 * {@code lr(baseLr, t - 1)}. The first optimizer step therefore sees s = 0.
 *
 * <p>Implementations are immutable, and {@link #lr} is a pure function of its arguments.
 */
public interface Schedule {
    /**
     * The learning rate for the optimizer step taken after {@code s} scheduler steps.
     *
     * @param baseLr the parameter group's base learning rate (LambdaLR {@code initial_lr})
     * @param s      scheduler steps taken so far, {@code >= 0} (LambdaLR {@code last_epoch})
     */
    double lr(double baseLr, long s);

    /** The schedule's type name, as {@link Schedules#parse} accepts it. */
    String type();

    /** The effective parameters, defaults included; {@link Schedules#parse} accepts them back. */
    Struct parameters();

    /** Rejects a negative scheduler step count, which is a caller bug. */
    static void checkStep(long s) {
        if (s < 0) {
            throw new IllegalArgumentException("scheduler step must be >= 0, got " + s);
        }
    }
}
