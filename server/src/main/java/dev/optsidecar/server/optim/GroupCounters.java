package dev.optsidecar.server.optim;

/**
 * A parameter group's step counters, kept as exact doubles: Schedule-Free's k (steps taken),
 * weight_sum and lr_max (−1 before the first step). Algorithms without group counters carry them
 * through unchanged.
 */
public record GroupCounters(long k, double weightSum, double lrMax) {
    public static final GroupCounters INITIAL = new GroupCounters(0, 0.0, -1.0);
}
