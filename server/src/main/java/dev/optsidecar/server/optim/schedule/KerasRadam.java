package dev.optsidecar.server.optim.schedule;

import com.google.protobuf.Struct;

import java.util.List;

/**
 * algorithms.md §8.6, keras-radam's {@code total_steps/warmup_proportion/min_lr} schedule: a linear
 * warmup to the base lr over the first {@code T·warmup_proportion} steps, then a linear decay that
 * reaches the absolute {@code min_lr} at t = T and stays there. Unlike the other schedules this one
 * is not a multiple of the base lr: min_lr is an absolute learning rate.
 *
 * <p>An optional {@code base_lr} parameter (the reference vectors record one) must be a number > 0
 * and is otherwise ignored: {@link #lr} uses the group's base lr it is given, and {@link #parameters}
 * leaves base_lr out.
 */
public record KerasRadam(long totalSteps, double warmupProportion, double minLr) implements Schedule {
    public static final String TYPE = "keras_radam";
    static final List<String> PARAMETERS = List.of("total_steps", "warmup_proportion", "min_lr", "base_lr");

    static KerasRadam from(ScheduleParameters p) {
        long total = p.steps("total_steps");
        p.check(total > 0, "total_steps", "must be > 0", total);
        double proportion = p.fraction("warmup_proportion", 0.1);
        double minLr = p.number("min_lr", 0);
        p.check(minLr >= 0, "min_lr", "must be >= 0", minLr);
        if (p.has("base_lr")) {
            double informational = p.number("base_lr");
            p.check(informational > 0, "base_lr", "must be > 0", informational);
        }
        return new KerasRadam(total, proportion, minLr);
    }

    @Override
    public double lr(double baseLr, long s) {
        Schedule.checkStep(s);
        long t = s + 1;                                            // t = s + 1
        double warmup = totalSteps * warmupProportion;             // Wk = T·warmup_proportion
        if (t <= warmup) {
            return baseLr * t / warmup;                            // lr·t/Wk
        }
        double d = Math.max(totalSteps - warmup, 1);               // d = max(T − Wk, 1)
        return baseLr + (minLr - baseLr) / d * Math.min(t - warmup, d); // lr + (min_lr − lr)/d·min(t − Wk, d)
    }

    @Override
    public String type() {
        return TYPE;
    }

    @Override
    public Struct parameters() {
        return ScheduleParameters.struct("total_steps", totalSteps, "warmup_proportion", warmupProportion,
                "min_lr", minLr);
    }
}
