package dev.optsidecar.server.optim.schedule;

import com.google.protobuf.Struct;

import java.util.List;

/**
 * algorithms.md §8.2 (hf {@code get_constant_schedule_with_warmup}): f(s) = s/max(1,W) for s &lt; W,
 * else 1. The first step has lr 0.
 */
public record LinearWarmup(long warmupSteps) implements Schedule {
    public static final String TYPE = "linear_warmup";
    static final List<String> PARAMETERS = List.of("warmup_steps");

    static LinearWarmup from(ScheduleParameters p) {
        return new LinearWarmup(p.steps("warmup_steps"));
    }

    @Override
    public double lr(double baseLr, long s) {
        Schedule.checkStep(s);
        double f = s < warmupSteps ? (double) s / Math.max(1, warmupSteps) : 1; // s/max(1,W), else 1
        return baseLr * f;
    }

    @Override
    public String type() {
        return TYPE;
    }

    @Override
    public Struct parameters() {
        return ScheduleParameters.struct("warmup_steps", warmupSteps);
    }
}
